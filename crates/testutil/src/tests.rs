use super::*;

#[test]
fn timeout_returns_value_and_propagates_panics() {
    // An expiring timeout thaws every registered filesystem, also another test's.
    let _serial = serial();
    assert_eq!(run_with_timeout(Duration::from_secs(5), || 7), 7);
    let r =
        std::panic::catch_unwind(|| run_with_timeout(Duration::from_secs(5), || panic!("boom")));
    assert!(r.is_err());
    let r = std::panic::catch_unwind(|| {
        run_with_timeout(Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_millis(300))
        })
    });
    assert!(r.is_err());
}

#[test]
fn timeout_cleanup_runs_only_when_time_is_up() {
    // An expiring timeout thaws every registered filesystem, also another test's.
    let _serial = serial();
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let v = run_with_timeout_and_cleanup(
        Duration::from_secs(5),
        move || r.store(true, Ordering::SeqCst),
        || 3,
    );
    assert_eq!(v, 3);
    assert!(!ran.load(Ordering::SeqCst));
    let r = ran.clone();
    let out = std::panic::catch_unwind(|| {
        run_with_timeout_and_cleanup(
            Duration::from_millis(50),
            move || r.store(true, Ordering::SeqCst),
            || std::thread::sleep(Duration::from_millis(300)),
        )
    });
    assert!(out.is_err());
    assert!(ran.load(Ordering::SeqCst));
}

/// A body that never returns (its thread dies with the process, its guards never
/// dropped) still leaves no test filesystem mounted: the timeout releases them.
#[test]
fn a_body_that_never_returns_leaves_no_mount_behind() {
    if skip_unless_root("loop-mounts an ext4 image") {
        return;
    }
    let _serial = serial();
    let (tx, rx) = mpsc::channel();
    let out = std::panic::catch_unwind(|| {
        run_with_timeout(Duration::from_millis(500), move || {
            let fs = LoopFs::new(FsKind::Ext4).unwrap();
            tx.send(fs.mount_point().to_path_buf()).unwrap();
            // Blocked for good, holding the guard (as a test stuck in a syscall).
            loop {
                std::thread::park();
            }
        })
    });
    let message = *out.unwrap_err().downcast::<String>().unwrap();
    assert!(message.contains("were unmounted"), "{message}");
    let mount_point = rx.recv().unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*mount_point.to_string_lossy()),
        "{} is still mounted",
        mount_point.display()
    );
    assert!(registry().iter().all(|m| m.mount_point != mount_point));
}

/// The child of [`a_sigterm_leaves_no_mount_behind`]: a test process holding a frozen
/// test filesystem, blocked for good. Runs only when that test starts it.
#[test]
#[ignore = "started by a_sigterm_leaves_no_mount_behind"]
fn child_holding_a_frozen_loop_fs() {
    if std::env::var_os(SIGNAL_CHILD_ENV).is_none() {
        return;
    }
    let fs = LoopFs::new(FsKind::Ext4).unwrap();
    freeze_path(fs.mount_point()).unwrap();
    // libtest has printed "test NAME ... " without a newline: mark the path.
    println!("\nmount-point={}", fs.mount_point().display());
    std::io::Write::flush(&mut std::io::stdout()).unwrap();
    loop {
        std::thread::park();
    }
}

const SIGNAL_CHILD_ENV: &str = "HV_VSS_TESTUTIL_SIGNAL_CHILD";

/// A test process ended by SIGTERM (an outer `timeout`) leaves no test filesystem
/// mounted or frozen, and still dies of SIGTERM.
#[test]
fn a_sigterm_leaves_no_mount_behind() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    if skip_unless_root("loop-mounts an ext4 image") {
        return;
    }
    // The child's loop device must not be taken between another test's detach and
    // its check that the device is gone.
    let _serial = serial();
    run_with_timeout(Duration::from_secs(60), || {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::child_holding_a_frozen_loop_fs",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(SIGNAL_CHILD_ENV, "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mount_point = lines
            .by_ref()
            .map(|l| l.unwrap())
            .find_map(|l| l.strip_prefix("mount-point=").map(str::to_string))
            .expect("the child names its mount point");
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc_sigterm()), "{status:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&format!(" {mount_point} ")),
            "{mount_point} is still mounted after SIGTERM"
        );
    });
}

fn libc_sigterm() -> i32 {
    rustix::process::Signal::TERM.as_raw()
}

#[test]
fn synced_probe_writes_and_wait_ok_panics_on_a_failed_write() {
    let dir = tempfile::tempdir().unwrap();
    let probe = WriteProbe::start_synced(&dir.path().join("f"), b"abc");
    assert!(probe.wait_ok(Duration::from_secs(5)));
    assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"abc");
    let bad = WriteProbe::start_synced(&dir.path().join("no/such/dir/f"), b"x");
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        bad.wait_ok(Duration::from_secs(5))
    }));
    assert!(r.is_err(), "a failed write is not reported as unblocked");
}

#[test]
fn shared_buf_clones_see_one_buffer() {
    use std::io::Write;
    let buf = SharedBuf::default();
    let mut writer = buf.clone();
    writer.write_all(b"one ").unwrap();
    write!(writer, "two").unwrap();
    assert_eq!(buf.text(), "one two");
    assert_eq!(buf.bytes(), b"one two");
}

#[test]
fn uncomment_toml_example_keeps_prose() {
    let text = "# Prose, with a = sign.\n# key_a = 1   # note\n#   \"skip\": x\n# [t.u]\n#x = 2";
    assert_eq!(
        uncomment_toml_example(text),
        "# Prose, with a = sign.\nkey_a = 1   # note\n#   \"skip\": x\n[t.u]\n#x = 2"
    );
}

#[test]
fn tmpfs_state_dir_is_on_tmpfs() {
    let dir = tmpfs_state_dir().unwrap();
    let fs = rustix::fs::statfs(dir.path()).unwrap();
    assert_eq!(fs.f_type as i64, 0x0102_1994, "TMPFS_MAGIC");
}

#[test]
fn write_probe_completes_on_an_unfrozen_fs() {
    let dir = tempfile::tempdir().unwrap();
    let probe = WriteProbe::start(&dir.path().join("f"), b"hello");
    assert!(probe.wait(Duration::from_secs(5)));
    assert_eq!(probe.result(), Some(Ok(())));
    assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"hello");
}

#[test]
fn loop_fs_each_kind_mounts_freezes_and_cleans_up() {
    if skip_unless_root("loop_fs test") {
        return;
    }
    let _serial = serial();
    for kind in [FsKind::Ext4, FsKind::Xfs, FsKind::Btrfs] {
        let fs = LoopFs::new(kind).unwrap();
        let mp = fs.mount_point().to_path_buf();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            mounts.contains(&format!(" {} ", mp.display())),
            "{kind:?} mounted"
        );
        assert!(mounts.contains(&format!(" - {} ", kind.name())));
        assert!(!fs.is_frozen().unwrap());
        assert!(fs.writable_within(Duration::from_secs(10)));
        freeze_path(&mp).unwrap();
        assert!(fs.is_frozen().unwrap());
        let probe = fs.write_probe();
        assert!(
            !probe.wait_ok(Duration::from_millis(300)),
            "{kind:?}: blocked while frozen"
        );
        thaw_path(&mp).unwrap();
        assert!(probe.wait_ok(Duration::from_secs(10)), "done after thaw");
        freeze_path(&mp).unwrap();
        let dev = fs.loop_device().to_path_buf();
        drop(fs); // frozen: Drop must thaw, unmount, detach
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&format!(" {} ", mp.display())));
        let list = run(Command::new("losetup").arg("-a")).unwrap();
        assert!(!list.contains(&format!("{}:", dev.display())), "{list}");
    }
}
