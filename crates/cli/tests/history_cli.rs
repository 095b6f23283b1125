//! `hv-vss history` and `hv-vss metrics` on a state directory holding lines hv-vssd wrote
//! (crates/history/tests/data/history.jsonl), damaged copies of it, and none at all.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const SAMPLE: &str = include_str!("../../history/tests/data/history.jsonl");

fn hv_vss() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hv-vss"));
    c.stdin(Stdio::null());
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn state_with(history: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("history.jsonl"), history).unwrap();
    dir
}

fn in_state(cmd: &str, dir: &Path, extra: &[&str]) -> Output {
    run(hv_vss().arg(cmd).args(extra).arg("--state-dir").arg(dir))
}

#[test]
fn history_lists_each_transaction_with_verdict_window_stages_and_reason() {
    let dir = state_with(SAMPLE);
    let out = in_state("history", dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    assert!(lines[0].contains("check   check_passed"), "{stdout}");
    assert!(lines[1].contains("backup  fs_consistent"), "{stdout}");
    assert!(lines[1].contains("frozen 1564.2 ms"), "{stdout}");
    assert!(
        lines[1].contains("freeze_fs 70 ms, thaw_fs 1 ms"),
        "{stdout}"
    );
    assert!(lines[1].contains("BU_COMPLETE after 0 ms"), "{stdout}");
    assert!(
        lines[3].contains("failed") && lines[3].contains("auto-thawed"),
        "{stdout}"
    );
    assert!(
        lines[4].contains("reason: FreezeFs: FIFREEZE /srv: EBUSY"),
        "{stdout}"
    );
    assert!(out.stderr.is_empty());

    let out = in_state("history", dir.path(), &["--last", "2"]);
    assert_eq!(text(&out.stdout).lines().count(), 2);
    let out = in_state("history", dir.path(), &["--json", "--last", "3"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = doc["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["report"]["txn"], 3);
    assert_eq!(doc["skipped"].as_array().unwrap().len(), 0);
}

#[test]
fn damaged_lines_are_skipped_with_a_warning_naming_each_one() {
    let lines: Vec<&str> = SAMPLE.lines().collect();
    let damaged = format!(
        "{}\n{{\"unix_ms\": \"garbage\n\u{0}\u{1}\n{}\n{}",
        lines[0],
        lines[1],
        &lines[2][..40]
    );
    let dir = state_with(&damaged);
    for cmd in ["history", "metrics"] {
        let out = in_state(cmd, dir.path(), &[]);
        assert!(out.status.success(), "{cmd}: {}", text(&out.stderr));
        let stderr = text(&out.stderr);
        let warnings: Vec<&str> = stderr.lines().collect();
        assert_eq!(warnings.len(), 3, "{cmd}: {stderr}");
        assert!(warnings[0].contains("line 2 skipped"), "{stderr}");
        assert!(warnings[1].contains("line 3 skipped"), "{stderr}");
        assert!(
            warnings[2].contains("line 5 skipped: truncated"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let out = in_state("history", dir.path(), &["--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["entries"].as_array().unwrap().len(), 2);
    assert_eq!(doc["skipped"].as_array().unwrap().len(), 3);
}

#[test]
fn no_history_yet_is_said_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let out = in_state("history", dir.path(), &[]);
    assert!(out.status.success());
    assert!(text(&out.stdout).starts_with("no transactions recorded in "));
    let out = in_state("metrics", dir.path(), &[]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("hv_vss_up 0"));
}

fn scrape(out: &Output) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text(&out.stdout).lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text format")
}

fn sample(s: &prometheus_parse::Scrape, name: &str) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name)
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

/// `up` follows the instance lock: held by a process (here this test, as hv-vssd does for
/// its whole life), the daemon is up.
#[test]
fn metrics_parse_as_prometheus_text_and_up_follows_the_daemon_lock() {
    let dir = state_with(SAMPLE);
    let out = in_state("metrics", dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = scrape(&out);
    assert_eq!(sample(&s, "hv_vss_up"), Some(0.0));
    assert_eq!(sample(&s, "hv_vss_auto_thaws_total"), Some(1.0));
    let families: std::collections::BTreeSet<&str> =
        s.samples.iter().map(|x| x.metric.as_str()).collect();
    for f in [
        "hv_vss_backups_total",
        "hv_vss_failures_total",
        "hv_vss_guardian_thaws_total",
        "hv_vss_frozen_window_seconds",
        "hv_vss_stage_duration_seconds",
        "hv_vss_last_success_timestamp_seconds",
        "hv_vss_history_entries",
        "hv_vss_freezes_total",
    ] {
        assert!(families.contains(f), "{f} in {families:?}");
    }
    let lock = hv_vss_freezer::journal::try_lock_file(&dir.path().join("hv-vssd.lock"))
        .unwrap()
        .unwrap();
    let s = scrape(&in_state("metrics", dir.path(), &[]));
    assert_eq!(sample(&s, "hv_vss_up"), Some(1.0));
    drop(lock);
    let s = scrape(&in_state("metrics", dir.path(), &[]));
    assert_eq!(sample(&s, "hv_vss_up"), Some(0.0));
}

#[test]
fn bad_input_gets_one_line_and_its_exit_code() {
    let dir = state_with(SAMPLE);
    // Unknown flag, bad value: clap, exit 2.
    for args in [
        &["history", "--bogus"][..],
        &["history", "--last", "0"],
        &["history", "--last", "x"],
        &["metrics", "--json"],
    ] {
        let out = run(hv_vss().args(args));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!text(&out.stderr).contains("panicked"));
    }
    // A file far larger than any history: exit 11, one line.
    let big = tempfile::tempdir().unwrap();
    std::fs::File::create(big.path().join("history.jsonl"))
        .unwrap()
        .set_len(hv_vss_history::MAX_HISTORY_BYTES + 1)
        .unwrap();
    for cmd in ["history", "metrics"] {
        let out = in_state(cmd, big.path(), &[]);
        assert_eq!(out.status.code(), Some(11), "{}", text(&out.stderr));
        assert_eq!(text(&out.stderr).lines().count(), 1);
    }
    // A directory where the file should be: exit 11.
    let odd = tempfile::tempdir().unwrap();
    std::fs::create_dir(odd.path().join("history.jsonl")).unwrap();
    let out = in_state("history", odd.path(), &[]);
    assert_eq!(out.status.code(), Some(11), "{}", text(&out.stderr));
    // Output into a closed pipe: no panic, no message.
    let mut child = hv_vss()
        .args(["history", "--state-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
}

/// The state directory is root's (0700): another user gets exit 3 and one line.
#[test]
fn permission_denied_exits_3() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: needs root to drop to uid 65534");
        return;
    }
    let dir = state_with(SAMPLE);
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    for cmd in ["history", "metrics"] {
        let out = run(hv_vss()
            .arg(cmd)
            .arg("--state-dir")
            .arg(dir.path())
            .uid(65534)
            .gid(65534));
        assert_eq!(out.status.code(), Some(3), "{cmd}: {}", text(&out.stderr));
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("permission denied"), "{stderr}");
    }
}
