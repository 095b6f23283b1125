use super::*;

/// The defaults named here are the crates' own on Linux.
#[cfg(target_os = "linux")]
#[test]
fn linux_defaults_are_the_vmbus_and_freezer_ones() {
    assert_eq!(
        LINUX_DROP_IN_DEVICE,
        hv_vss_vmbus::kernel_dev::DEFAULT_DEVICE_PATH
    );
    assert_eq!(
        Platform::Linux.default_state_dir(),
        hv_vss_freezer::DEFAULT_STATE_DIR
    );
}

fn resolve(text: &str, cli: Overrides) -> Result<Settings, ConfigError> {
    Settings::resolve_on(
        Platform::Linux,
        FileConfig::parse(text, Path::new("test.toml"))?,
        cli,
    )
}

fn err(text: &str, cli: Overrides) -> String {
    resolve(text, cli).unwrap_err().to_string()
}

#[test]
fn defaults_follow_the_spec() {
    let s = resolve("", Overrides::default()).unwrap();
    assert_eq!(
        s.transport,
        TransportChoice::DropIn("/dev/vmbus/hv_vss".into())
    );
    assert_eq!(s.state_dir, PathBuf::from("/run/hv-vss"));
    assert_eq!(s.app_socket, PathBuf::from("/run/hv-vss/app.sock"));
    assert_eq!(s.limits, Limits::default());
    assert_eq!(s.log_level, LogLevel::Info);
    assert!(s.mounts.is_empty());
}

#[test]
fn full_file_is_accepted() {
    let s = resolve(
        r#"
        uio = "/dev/uio3"
        state_dir = "/run/x"
        app_socket = "/run/x/a.sock"
        mounts = ["/srv"]
        auto_thaw_seconds = 12
        log_level = "debug"
        log_ring_capacity = 10
        history_limit = 5
        [limits]
        check_deadline_seconds = 20
        freeze_deadline_seconds = 100.5
        thaw_deadline_seconds = 20
        client_timeout_seconds = 10
        [apps]
        socket_mode = "0600"
        socket_owner = "root"
        socket_group = 0
        allowed_users = ["root", 1000]
        allowed_groups = ["0"]
        max_clients = 8
        max_pending_bytes = 4096
        [[hooks]]
        dir = "/etc/qemu/fsfreeze-hook.d"
        style = "qemu-ga"
        tier = 20
        timeout_secs = 5.5
        [[hooks]]
        dir = "/etc/vmware-tools/backupScripts.d"
        style = "vmware"
        [freezer]
        on_unsupported = "fail"
        "#,
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.transport, TransportChoice::Uio("/dev/uio3".into()));
    assert_eq!(s.limits.auto_thaw, AutoThaw::After(Duration::from_secs(12)));
    assert_eq!(s.limits.freeze_deadline, Duration::from_millis(100_500));
    assert_eq!(s.mounts, vec![PathBuf::from("/srv")]);
    assert_eq!(s.history_limit, 5);
    assert_eq!(
        s.apps,
        AppSettings {
            socket: "/run/x/a.sock".into(),
            mode: 0o600,
            owner: Some(0),
            group: Some(0),
            allowed_uids: vec![0, 1000],
            allowed_gids: vec![0],
            max_clients: 8,
            max_pending_bytes: 4096,
        }
    );
    assert_eq!(
        s.hooks,
        vec![
            HookDirSettings {
                dir: "/etc/qemu/fsfreeze-hook.d".into(),
                style: HookStyle::QemuGa,
                tier: 20,
                timeout: Duration::from_millis(5500),
            },
            HookDirSettings {
                dir: "/etc/vmware-tools/backupScripts.d".into(),
                style: HookStyle::Vmware,
                tier: hv_vss_core::DEFAULT_TIER,
                timeout: HookDir::DEFAULT_TIMEOUT,
            },
        ]
    );
}

#[test]
fn app_socket_defaults() {
    let s = resolve("", Overrides::default()).unwrap();
    assert_eq!(s.apps.mode, DEFAULT_SOCKET_MODE);
    assert_eq!((s.apps.owner, s.apps.group), (None, None));
    assert!(s.apps.allowed_uids.is_empty() && s.apps.allowed_gids.is_empty());
    assert_eq!(s.apps.max_clients, DEFAULT_MAX_CLIENTS);
    assert_eq!(s.apps.max_pending_bytes, DEFAULT_MAX_PENDING_BYTES);
    // Anyone allowed besides root: the file mode lets them connect unless set.
    for allowed in ["allowed_users = [65534]", "allowed_groups = [65534]"] {
        let s = resolve(&format!("[apps]\n{allowed}"), Overrides::default()).unwrap();
        assert_eq!(s.apps.mode, OPEN_SOCKET_MODE, "{allowed}");
        let text = format!("[apps]\n{allowed}\nsocket_mode = \"0660\"");
        let s = resolve(&text, Overrides::default()).unwrap();
        assert_eq!(s.apps.mode, 0o660, "{allowed}, explicit mode");
    }
    // No [[hooks]]: the default directory, only if it exists on this machine.
    let default_exists = Path::new(HookDir::DEFAULT_PATH).is_dir();
    assert_eq!(s.hooks.len(), usize::from(default_exists));
    // An empty list means no hooks at all.
    assert!(
        resolve("hooks = []", Overrides::default())
            .unwrap()
            .hooks
            .is_empty()
    );
}

#[test]
fn flags_override_the_file() {
    let cli = Overrides {
        device: Some("/tmp/sock".into()),
        state_dir: Some("/dev/shm/s".into()),
        mounts: vec!["/mnt/a".into()],
        auto_thaw: Some("1.5".into()),
        debug: true,
        ..Overrides::default()
    };
    let s = resolve(
        "uio = \"/dev/uio0\"\nmounts = [\"/srv\"]\nauto_thaw_seconds = 9\nlog_level = \"warn\"",
        cli,
    )
    .unwrap();
    assert_eq!(s.transport, TransportChoice::DropIn("/tmp/sock".into()));
    assert_eq!(s.mounts, vec![PathBuf::from("/mnt/a")]);
    assert_eq!(
        s.limits.auto_thaw,
        AutoThaw::After(Duration::from_millis(1500))
    );
    assert_eq!(s.log_level, LogLevel::Debug);
    assert_eq!(s.app_socket, PathBuf::from("/dev/shm/s/app.sock"));
}

#[test]
fn every_error_names_its_key() {
    let cases: &[(&str, Overrides, &str)] = &[
        ("bogus = 1", Overrides::default(), "bogus"),
        ("[limits]\nfoo = 1", Overrides::default(), "foo"),
        ("[freezer]\nfoo = 1", Overrides::default(), "foo"),
        (
            "auto_thaw_seconds = 0",
            Overrides::default(),
            "auto_thaw_seconds: must be > 0; use auto_thaw = false",
        ),
        (
            "auto_thaw_seconds = -3",
            Overrides::default(),
            "auto_thaw_seconds",
        ),
        (
            "auto_thaw = false\nauto_thaw_seconds = 3",
            Overrides::default(),
            "auto_thaw_seconds",
        ),
        (
            "state_dir = \"rel\"",
            Overrides::default(),
            "state_dir: must be an absolute path",
        ),
        (
            "app_socket = \"x.sock\"",
            Overrides::default(),
            "app_socket",
        ),
        ("log_level = \"loud\"", Overrides::default(), "log_level"),
        (
            "log_ring_capacity = 0",
            Overrides::default(),
            "log_ring_capacity",
        ),
        ("history_limit = 0", Overrides::default(), "history_limit"),
        (
            "control_group = \"no-such-group-hv\"",
            Overrides::default(),
            "control_group: no group named",
        ),
        ("[apps]\nsocket = 1", Overrides::default(), "socket"),
        (
            "[apps]\nsocket_mode = \"rw\"",
            Overrides::default(),
            "apps.socket_mode",
        ),
        (
            "[apps]\nsocket_mode = \"1777\"",
            Overrides::default(),
            "apps.socket_mode",
        ),
        (
            "[apps]\nsocket_owner = \"no-such-user-hv\"",
            Overrides::default(),
            "apps.socket_owner: no user named",
        ),
        (
            "[apps]\nallowed_groups = [\"no-such-group-hv\"]",
            Overrides::default(),
            "apps.allowed_groups",
        ),
        (
            "[apps]\nmax_clients = 0",
            Overrides::default(),
            "apps.max_clients",
        ),
        (
            "[apps]\nmax_pending_bytes = 0",
            Overrides::default(),
            "apps.max_pending_bytes",
        ),
        (
            "[[hooks]]\ndir = \"rel\"",
            Overrides::default(),
            "hooks.dir",
        ),
        (
            "[[hooks]]\ndir = \"/a\"\n[[hooks]]\ndir = \"/a\"",
            Overrides::default(),
            "hooks.dir: /a is listed twice",
        ),
        (
            "[[hooks]]\ndir = \"/a\"\nstyle = \"bash\"",
            Overrides::default(),
            "hooks.style",
        ),
        (
            "[[hooks]]\ndir = \"/a\"\ntimeout_secs = 0",
            Overrides::default(),
            "hooks.timeout_secs",
        ),
        (
            "[[hooks]]\ndir = \"/a\"\ntier = 256",
            Overrides::default(),
            "tier",
        ),
        (
            "[[hooks]]\ndir = \"/a\"\nargs = 1",
            Overrides::default(),
            "args",
        ),
        (
            "[limits]\ncheck_deadline_seconds = 0",
            Overrides::default(),
            "limits.check_deadline_seconds",
        ),
        (
            "[limits]\nthaw_deadline_seconds = 30",
            Overrides::default(),
            "limits.thaw_deadline_seconds: 30 s must stay below",
        ),
        (
            "[limits]\nfreeze_deadline_seconds = 900",
            Overrides::default(),
            "limits.freeze_deadline_seconds",
        ),
        (
            "[limits]\nclient_timeout_seconds = nan",
            Overrides::default(),
            "limits.client_timeout_seconds",
        ),
        (
            "[freezer]\nfreeze_deadline_secs = 0",
            Overrides::default(),
            "freezer.freeze_deadline_secs",
        ),
        (
            "[freezer]\nexclude = { mount_points = [\"[\"] }",
            Overrides::default(),
            "freezer.exclude.mount_points",
        ),
        (
            "device = \"/a\"\nuio = \"/b\"",
            Overrides::default(),
            "device: conflicts with uio",
        ),
        (
            "auto_thaw_seconds = \"x\"",
            Overrides::default(),
            "auto_thaw_seconds",
        ),
        (
            "",
            Overrides {
                auto_thaw: Some("0".into()),
                ..Overrides::default()
            },
            "--auto-thaw: must be > 0",
        ),
        (
            "",
            Overrides {
                auto_thaw: Some("soon".into()),
                ..Overrides::default()
            },
            "--auto-thaw",
        ),
        (
            "",
            Overrides {
                state_dir: Some("x".into()),
                ..Overrides::default()
            },
            "--state-dir",
        ),
        (
            "",
            Overrides {
                device: Some("/a".into()),
                uio: Some("/b".into()),
                ..Overrides::default()
            },
            "--device: conflicts with --uio",
        ),
    ];
    for (text, cli, want) in cases {
        let got = err(text, cli.clone());
        assert!(
            got.contains(want),
            "{text:?}: {got:?} should contain {want:?}"
        );
    }
}

#[test]
fn auto_thaw_can_be_disabled_explicitly() {
    let s = resolve("auto_thaw = false", Overrides::default()).unwrap();
    assert_eq!(s.limits.auto_thaw, AutoThaw::Disabled);
    let cli = Overrides {
        auto_thaw: Some("off".into()),
        ..Overrides::default()
    };
    assert_eq!(
        resolve("", cli).unwrap().limits.auto_thaw,
        AutoThaw::Disabled
    );
}

/// Deadlines that do not nest are refused at start-up, naming both keys (issue 8).
#[test]
fn deadlines_that_do_not_nest_name_their_keys() {
    let cases = [
        (
            "[limits]\nfreeze_deadline_seconds = 30\n[freezer]\nfreeze_deadline_secs = 60",
            "freezer.freeze_deadline_secs: 60 s must be below limits.freeze_deadline_seconds (30 s)",
        ),
        (
            "stop_timeout_seconds = 20",
            "stop_timeout_seconds: 20 s must exceed limits.thaw_deadline_seconds (25 s)",
        ),
        (
            "stop_timeout_seconds = 40\n[limits]\nthaw_deadline_seconds = 24",
            "",
        ),
    ];
    for (text, want) in cases {
        match resolve(text, Overrides::default()) {
            Ok(_) => assert!(want.is_empty(), "{text}: accepted"),
            Err(e) => assert!(
                !want.is_empty() && e.to_string().contains(want),
                "{text}: {e}"
            ),
        }
    }
}

#[test]
fn uio_mode_may_exceed_kernel_deadlines() {
    let s = resolve(
        "uio = \"/dev/uio1\"\n[limits]\nthaw_deadline_seconds = 40",
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.limits.thaw_deadline, Duration::from_secs(40));
}

#[test]
fn missing_explicit_file_is_an_error_default_is_optional() {
    let e = Settings::load_file(Some(Path::new("/nonexistent/hv-vss.toml"))).unwrap_err();
    assert!(
        e.to_string().starts_with("/nonexistent/hv-vss.toml: "),
        "{e}"
    );
}
