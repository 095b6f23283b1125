//! End-to-end: bad configuration, flags and environments make the real binary exit at once
//! with the documented code and a message naming the key, flag or cause.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::with_timeout;
use hv_vss_sim::kernel::{EmulatorConfig, KernelEmulator};

const LIMIT: Duration = Duration::from_secs(60);

fn run(config: &str, args: &[&str]) -> Output {
    let dir = common::state_dir();
    let file = dir.path().join("hv-vss.toml");
    std::fs::write(&file, config).unwrap();
    let state = dir.path().join("state");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hv-vssd"));
    cmd.arg("--config").arg(&file);
    if !args.contains(&"--state-dir") {
        cmd.arg("--state-dir").arg(&state);
    }
    cmd.args(args);
    // Bounded: every case here must fail at start-up.
    common::run_to_exit(&mut cmd, Duration::from_secs(20))
}

fn assert_fails(config: &str, args: &[&str], code: i32, needle: &str) {
    let out = run(config, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{config:?} {args:?}: {stderr}"
    );
    assert!(
        stderr.contains(needle),
        "{config:?} {args:?}: stderr should name {needle:?}: {stderr}"
    );
}

#[test]
fn bad_config_keys_and_values_name_the_key_and_exit_2() {
    with_timeout(LIMIT, || {
        let fs = common::ext4();
        let m = fs.mount_point().to_str().unwrap();
        let cases = [
            ("bogus = 1", "bogus"),
            ("auto_thaw_seconds = 0", "auto_thaw_seconds: must be > 0"),
            (
                "[limits]\nthaw_deadline_seconds = 31",
                "limits.thaw_deadline_seconds",
            ),
            ("[limits]\nunknown = 3", "unknown"),
            (
                "[freezer]\nfreeze_deadline_secs = 0",
                "freezer.freeze_deadline_secs",
            ),
            ("log_level = \"loud\"", "log_level"),
            ("mounts = 3", "mounts"),
            ("auto_thaw_seconds = [", "hv-vss.toml"),
        ];
        for (config, needle) in cases {
            let out = run(config, &["--mount", m, "--device", "/nonexistent"]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{config:?}: {stderr}");
            assert!(stderr.contains(needle), "{config:?}: {stderr}");
        }
    });
}

#[test]
fn bad_flags_name_the_flag_and_exit_2() {
    with_timeout(LIMIT, || {
        let fs = common::ext4();
        let m = fs.mount_point().to_str().unwrap();
        assert_fails(
            "",
            &["--mount", m, "--auto-thaw", "0"],
            2,
            "--auto-thaw: must be > 0",
        );
        assert_fails("", &["--mount", m, "--auto-thaw", "soon"], 2, "--auto-thaw");
        assert_fails("", &["--mount", m, "--state-dir", "rel"], 2, "--state-dir");
        assert_fails("", &["--device", "/a", "--uio", "/b"], 2, "--uio");
        assert_fails("", &["--bogus"], 2, "--bogus");
        assert_fails("", &["--mount", "/nonexistent/mnt"], 2, "--mount");
        // A directory that is not a mount point.
        let dir = tempfile::tempdir().unwrap();
        assert_fails(
            "",
            &["--mount", dir.path().to_str().unwrap()],
            2,
            "not a mount point",
        );
        let missing = "/nonexistent/hv-vss.toml";
        let out = Command::new(env!("CARGO_BIN_EXE_hv-vssd"))
            .args(["--config", missing])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains(missing));
    });
}

#[test]
fn unusable_environment_gets_its_own_exit_code() {
    with_timeout(LIMIT, || {
        let fs = common::ext4();
        let m = fs.mount_point().to_str().unwrap();
        // No device: 3.
        assert_fails(
            "",
            &["--mount", m, "--device", "/nonexistent/hv_vss"],
            3,
            "/nonexistent/hv_vss",
        );
        // State directory on the filesystem to be frozen: 5.
        let state = fs.mount_point().join("state");
        assert_fails(
            "",
            &[
                "--mount",
                m,
                "--state-dir",
                state.to_str().unwrap(),
                "--device",
                "/nonexistent",
            ],
            5,
            "may be frozen",
        );
        // No UIO node or socket there: 3.
        assert_fails("", &["--mount", m, "--uio", "/nonexistent/uio"], 3, "--uio");
    });
}

#[test]
fn second_instance_on_the_same_state_dir_exits_4() {
    with_timeout(LIMIT, || {
        let fs = common::ext4();
        let state = common::state_dir();
        let emu = KernelEmulator::start(EmulatorConfig::default()).unwrap();
        let args = [
            std::ffi::OsStr::new("--device"),
            emu.socket_path().as_os_str(),
            std::ffi::OsStr::new("--state-dir"),
            state.path().as_os_str(),
            std::ffi::OsStr::new("--mount"),
            fs.mount_point().as_os_str(),
        ];
        let _first = common::Daemon::start(&args);
        assert!(emu.wait_ready(Duration::from_secs(15)));
        let second = common::Daemon::start(&args);
        let mut second = second;
        let status = second.wait_exit(Duration::from_secs(15)).expect("exits");
        assert_eq!(status.code(), Some(4), "{}", second.log());
        assert!(
            second
                .log()
                .contains("another hv-vssd uses the state directory")
        );
    });
}
