//! The real `hv-vss simulate` binary: the transport self-test (`--guest-loopback`) in text
//! and JSON, refusals with a clear reason, and, when an `hv-vssd` with UIO support has been
//! built next to it, the real daemon freezing a scratch filesystem that `simulate` creates.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn hv_vss() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hv-vss"))
}

/// Runs `cmd`, killing it after `limit` (a hung simulation must fail the test, not hang it).
fn run_with_timeout(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        stdout.read_to_end(&mut s).unwrap();
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        stderr.read_to_end(&mut s).unwrap();
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn loopback_self_test_prints_a_timeline_and_a_summary() {
    let mut cmd = hv_vss();
    cmd.args([
        "simulate",
        "--guest-loopback",
        "--cycles",
        "2",
        "--hold",
        "50ms",
    ]);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("transport self-test"), "{stdout}");
    assert!(stdout.contains("nothing is frozen"), "{stdout}");
    for op in ["NEGOTIATE", "HOT_BACKUP", "FREEZE", "THAW", "BU_COMPLETE"] {
        let want = if op == "NEGOTIATE" { 1 } else { 2 };
        let sent = stdout
            .lines()
            .filter(|l| l.contains("host → guest") && l.contains(&format!(" {op} (trans_id")))
            .count();
        let replied = stdout
            .lines()
            .filter(|l| l.contains("guest → host") && l.contains(&format!(" {op} S_OK after")))
            .count();
        assert_eq!((sent, replied), (want, want), "{op} in\n{stdout}");
    }
    assert!(
        stdout.contains("cycle 1 of 2") && stdout.contains("cycle 2 of 2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("summary: negotiated framework 3.0, VSS 5.0; 2/2 cycles"),
        "{stdout}"
    );
    assert!(
        stdout.contains("frozen window as seen by the host"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("frozen window (host)") && l.contains(" median ")),
        "{stdout}"
    );
    assert!(
        stdout.contains("loopback guest: exited with exit status: 0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("verdict: not checked: all 2 cycles: transport self-test"),
        "{stdout}"
    );
    // Not a terminal: no progress line.
    assert!(
        !stderr.contains('\r') && !stderr.contains('…'),
        "{stderr:?}"
    );
}

#[test]
fn loopback_self_test_json_is_one_document() {
    let mut cmd = hv_vss();
    cmd.args([
        "simulate",
        "--guest-loopback",
        "--json",
        "--cycles",
        "3",
        "--hold",
        "30ms",
    ]);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(doc["mode"], "guest-loopback");
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["negotiated"]["framework"], "3.0");
    assert_eq!(doc["negotiated"]["message"], "5.0");
    assert_eq!(doc["negotiation"]["status"], "S_OK");
    let cycles = doc["cycles"].as_array().unwrap();
    assert_eq!(cycles.len(), 3);
    let mut ids = std::collections::HashSet::new();
    for c in cycles {
        let ops: Vec<&str> = c["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                assert_eq!(s["status"], "S_OK", "{s}");
                assert!(ids.insert(s["trans_id"].as_str().unwrap().to_string()));
                s["op"].as_str().unwrap()
            })
            .collect();
        assert_eq!(ops, ["HOT_BACKUP", "FREEZE", "THAW", "BU_COMPLETE"]);
        let frozen = c["frozen_window_ms"].as_f64().unwrap();
        assert!(
            frozen >= 30.0,
            "the hold is inside the frozen window: {frozen}"
        );
        assert!(c["snapshot_window_ms"].as_f64().unwrap() <= frozen);
        assert_eq!(c["verdict"], "not checked");
    }
    for stat in ["min", "median", "max"] {
        assert!(
            doc["summary"]["frozen_window_host_ms"][stat]
                .as_f64()
                .is_some(),
            "{doc:#}"
        );
    }
    assert!(doc["timeline"].as_array().unwrap().len() >= 13, "{doc:#}");
}

#[test]
fn a_daemon_without_uio_support_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("hv-vssd");
    std::fs::write(&fake, "#!/bin/sh\necho 'Usage: hv-vssd [--device PATH]'\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = hv_vss();
    cmd.args(["simulate", "--mount", "/nonexistent-mount", "--daemon"])
        .arg(&fake);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(12), "setup failure");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("does not support --uio"), "{stderr}");
    assert!(stderr.contains("--guest-loopback"), "{stderr}");

    let mut cmd = hv_vss();
    cmd.args([
        "simulate",
        "--daemon",
        "/nonexistent/hv-vssd",
        "--mount",
        "/x",
    ]);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(12), "setup failure");
    assert!(text(&out.stderr).contains("/nonexistent/hv-vssd"));
}

#[test]
fn bad_durations_are_rejected_by_the_parser() {
    let out = run_with_timeout(
        {
            let mut c = hv_vss();
            c.args(["simulate", "--guest-loopback", "--hold", "soon"]);
            c
        },
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2), "usage error");
    assert!(text(&out.stderr).contains("not a duration"));
}

fn built_daemon() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_BIN_EXE_hv-vss")).with_file_name("hv-vssd");
    path.exists().then_some(path)
}

/// Runs simulate with the built daemon as root; `None` (with the reason printed) when not
/// root or when hv-vssd has not been built next to hv-vss (`cargo build -p hv-vssd`;
/// `cargo test -p hv-vss` does not build it).
fn simulate_as_root(extra: &[&str]) -> Option<Output> {
    let Some(daemon) = built_daemon() else {
        eprintln!("SKIPPED: hv-vssd is not built next to hv-vss (cargo build -p hv-vssd)");
        return None;
    };
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: needs root to loop-mount the scratch filesystem");
        return None;
    }
    let mut cmd = hv_vss();
    cmd.args(["simulate", "--json"])
        .args(["--auto-thaw", "20", "--reply-timeout", "30s", "--daemon"])
        .arg(&daemon)
        .args(extra);
    Some(run_with_timeout(cmd, Duration::from_secs(180)))
}

/// The daemon's log file named in the document (removed here: simulate keeps it for the
/// user).
fn take_daemon_log(doc: &serde_json::Value) -> String {
    let path = doc["daemon_log"].as_str().expect("daemon_log named");
    let log = std::fs::read_to_string(path).unwrap();
    std::fs::remove_file(path).unwrap();
    log
}

/// The real daemon over the simulator, freezing only the scratch ext4 image `simulate`
/// creates, while the host copies the image as its snapshot and checks the copy. A built
/// hv-vssd must serve `--uio` sockets: it does since its UIO mode landed, so a refusal
/// fails the test.
#[test]
fn real_daemon_backup_is_consistent_checked_and_ends_without_a_warning() {
    let Some(out) = simulate_as_root(&["--cycles", "2", "--hold", "100ms"]) else {
        return;
    };
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{}\n{stderr}", text(&out.stdout));
    // The daemon's log is in its file, not on our stderr.
    assert!(!stderr.contains("INFO"), "{stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let log = take_daemon_log(&doc);
    assert_eq!(doc["mode"], "daemon");
    assert_eq!(doc["ok"], true, "{doc:#}");
    assert_eq!(doc["verdict"], "consistent (checked)", "{doc:#}");
    assert_eq!(doc["consistency"], "application-consistent", "{doc:#}");
    assert_eq!(doc["guest_exit"]["clean"], true, "{doc:#}");
    assert!(
        doc["mounts"][0]
            .as_str()
            .is_some_and(|m| m.ends_with("/scratch")),
        "{doc:#}"
    );
    let cycles = doc["cycles"].as_array().unwrap();
    assert_eq!(cycles.len(), 2, "{doc:#}");
    for c in cycles {
        let ops: Vec<&str> = c["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                assert_eq!(s["status"], "S_OK", "{s}");
                s["op"].as_str().unwrap()
            })
            .collect();
        assert_eq!(ops, ["HOT_BACKUP", "FREEZE", "THAW", "BU_COMPLETE"]);
        assert_eq!(c["verdict"], "consistent (checked)", "{c:#}");
        assert!(
            c["verdict_detail"].as_str().unwrap().contains("e2fsck -fn"),
            "{c:#}"
        );
        // simulate's demo client took part in the backup.
        assert_eq!(c["daemon_verdict"], "app_consistent", "{c:#}");
        assert_eq!(c["snapshots"][0]["bytes"], 64 << 20, "{c:#}");
        // The writer on the frozen filesystem was held for most of the window.
        let blocked = c["writer_blocked_ms"]
            .as_f64()
            .expect("the writer was blocked");
        assert!(
            blocked <= c["frozen_window_ms"].as_f64().unwrap() + 5.0,
            "{c:#}"
        );
    }
    let whats: Vec<&str> = doc["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    for needle in [
        "FIFREEZE /",
        "FITHAW /",
        "snapshot taken",
        "check of the snapshot",
    ] {
        assert_eq!(
            whats.iter().filter(|w| w.contains(needle)).count(),
            2,
            "{needle} in {whats:#?}"
        );
    }
    // The daemon's own reports: each backup really froze the one scratch filesystem and
    // thawed it, with simulate's demo client taking part; and a clean end is not a warning.
    let frozen = log
        .lines()
        .filter(|l| {
            l.contains("transaction report")
                && l.contains("verdict=AppConsistent")
                && l.contains("filesystems=1")
        })
        .count();
    assert_eq!(frozen, 2, "{log}");
    assert!(!log.contains(" WARN ") && !log.contains(" ERROR "), "{log}");
    assert!(log.contains("stopped: nothing of ours is frozen"), "{log}");
}

/// The checked verdict is not the daemon's word: a host that never sends FREEZE copies a
/// live filesystem, and the check says so (exit 1, the daemon's log shown).
#[test]
fn a_snapshot_taken_without_freeze_is_not_consistent() {
    let Some(out) = simulate_as_root(&["--test-skip-freeze", "--hold", "50ms"]) else {
        return;
    };
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{stderr}",
        text(&out.stdout)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let _ = take_daemon_log(&doc);
    assert_eq!(doc["verdict"], "not consistent", "{doc:#}");
    assert_eq!(doc["ok"], false);
    let c = &doc["cycles"][0];
    assert_eq!(c["freeze_skipped"], true);
    assert!(
        c["verdict_detail"]
            .as_str()
            .unwrap()
            .contains("journal needs recovery"),
        "{c:#}"
    );
    // On failure the daemon's log is shown.
    assert!(stderr.contains("---- daemon log"), "{stderr}");
}

/// An unprivileged user gets one line saying what to run instead, and exit 3; the
/// transport self-test works for them.
#[test]
fn an_unprivileged_user_is_told_to_use_sudo_or_the_self_test() {
    use std::os::unix::process::CommandExt;
    let Some(daemon) = built_daemon() else {
        eprintln!("SKIPPED: hv-vssd is not built next to hv-vss (cargo build -p hv-vssd)");
        return;
    };
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: needs root to drop to uid 65534");
        return;
    }
    let mut cmd = hv_vss();
    cmd.args(["simulate", "--daemon"])
        .arg(&daemon)
        .uid(65534)
        .gid(65534);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");
    assert!(stderr.contains("sudo hv-vss simulate"), "{stderr}");
    assert!(stderr.contains("--guest-loopback"), "{stderr}");
    assert!(out.stdout.is_empty());

    let mut cmd = hv_vss();
    cmd.args(["simulate", "--guest-loopback", "--hold", "0"])
        .uid(65534)
        .gid(65534);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("verdict: not checked"));
}

/// The daemon-mode wiring with a stand-in daemon: a script that claims `--uio`, records its
/// arguments, and serves the socket with the loopback guest (SIGTERM ignored, so it exits
/// cleanly when the host hangs up after the SIGTERM grace). Shows what simulate passes to
/// the daemon, that the scratch filesystem is created for it and unmounted afterwards, and
/// that a guest answering S_OK without freezing gets "not consistent".
#[test]
fn daemon_mode_passes_the_contract_arguments_and_cleans_up() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: needs root to loop-mount the scratch filesystem");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let args_file = dir.path().join("args");
    let fake = dir.path().join("fake-hv-vssd");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\n\
             if [ \"$1\" = --help ]; then echo '  --uio <PATH>  /dev/uioN or a socket'; exit 0; fi\n\
             echo \"$@\" > '{}'\n\
             trap '' TERM\n\
             exec '{}' simulate --loopback-guest-child \"$2\"\n",
            args_file.display(),
            env!("CARGO_BIN_EXE_hv-vss")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = hv_vss();
    cmd.args(["simulate", "--json", "--hold", "10ms", "--auto-thaw", "20"])
        .arg("--daemon")
        .arg(&fake);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    // The stand-in answers S_OK without freezing anything: every step succeeds, and the
    // check of the snapshot still catches it.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let _ = take_daemon_log(&doc);
    assert_eq!(doc["mode"], "daemon");
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["verdict"], "not consistent", "{doc:#}");
    // The stand-in serves no app socket: the demo client says so, and there is no daemon
    // verdict to report.
    assert!(
        doc["demo_client"]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("not registered")),
        "{doc:#}"
    );
    assert!(doc["consistency"].is_null(), "{doc:#}");
    assert!(
        doc["cycles"][0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "S_OK"),
        "{doc:#}"
    );

    let args = std::fs::read_to_string(&args_file).unwrap();
    let words: Vec<&str> = args.split_whitespace().collect();
    assert_eq!(words[0], "--uio");
    assert!(words[1].ends_with("/vss.sock"), "{args}");
    assert_eq!(words[2], "--state-dir");
    assert!(
        words[3].starts_with("/dev/shm/") || words[3].starts_with("/run/"),
        "state dir on tmpfs: {args}"
    );
    assert_eq!(words[4], "--mount");
    let scratch = words[5];
    assert!(scratch.ends_with("/scratch"), "{args}");
    assert_eq!(&words[6..], ["--auto-thaw", "20", "-n"]);
    assert_eq!(doc["mounts"][0], scratch);
    // Unmounted and removed afterwards; the state dir is gone too.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(scratch), "{scratch} still mounted");
    assert!(!Path::new(scratch).exists());
    assert!(!Path::new(words[3]).exists());
}
