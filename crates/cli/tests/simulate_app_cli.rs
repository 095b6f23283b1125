//! `hv-vss simulate` with the real hv-vssd and its demo application client: the client is
//! told check, freeze and thaw in every cycle and the verdict says application-consistent;
//! without it the verdict says filesystem-consistent. Needs root (simulate makes a scratch
//! ext4) and hv-vssd built next to hv-vss (`cargo test --workspace` builds it).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn runnable() -> bool {
    if hv_vss_testutil::skip_unless_root("simulate demo client test") {
        return false;
    }
    if !Path::new(env!("CARGO_BIN_EXE_hv-vss"))
        .with_file_name("hv-vssd")
        .exists()
    {
        eprintln!("skipped: hv-vssd is not built next to hv-vss (cargo build -p hv-vssd)");
        return false;
    }
    true
}

fn simulate(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hv-vss"))
        .arg("simulate")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            panic!("hv-vss simulate did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    remove_daemon_log(&String::from_utf8_lossy(&out.stdout));
    out
}

/// simulate keeps the daemon's log for the user and names it in its output (text or
/// JSON); the test removes it.
fn remove_daemon_log(stdout: &str) {
    let path = match serde_json::from_str::<serde_json::Value>(stdout) {
        Ok(doc) => doc["daemon_log"].as_str().map(str::to_owned),
        Err(_) => stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("daemon log: "))
            .map(str::to_owned),
    };
    let path = path.expect("simulate names the daemon's log");
    std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
}

/// The event after "told" on each of the demo client's timeline lines.
fn told_events(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter(|l| l.contains(" demo client ") && l.contains(" told "))
        .filter_map(|l| l.split(" told ").nth(1)?.split_whitespace().next())
        .collect()
}

#[test]
fn the_demo_client_is_told_each_stage_and_the_backup_is_application_consistent() {
    if !runnable() {
        return;
    }
    let out = simulate(&["--cycles", "2", "--hold", "100ms"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("demo client      registered as hv-vss-simulate-demo on "),
        "{stdout}"
    );
    assert_eq!(
        told_events(&stdout),
        ["check", "freeze", "thaw", "check", "freeze", "thaw"],
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .filter(|l| l.contains(" demo client ") && l.contains(" told "))
            .all(|l| l.ends_with("acked ok")),
        "{stdout}"
    );
    for cycle in [1, 2] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("  cycle {cycle}: "))
                    && l.contains(
                        "daemon's verdict: application-consistent (every registered client acked)"
                    )),
            "{stdout}"
        );
    }
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("verdict: consistent (checked), application-consistent: "),
        "{stdout}"
    );
}

#[test]
fn without_the_demo_client_the_backup_is_filesystem_consistent() {
    if !runnable() {
        return;
    }
    let out = simulate(&["--cycles", "1", "--hold", "50ms", "--no-demo-client"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(!stdout.contains("hv-vss-simulate-demo"), "{stdout}");
    assert!(told_events(&stdout).is_empty(), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("  cycle 1: ")
            && l.contains("daemon's verdict: filesystem-consistent")),
        "{stdout}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("verdict: consistent (checked), filesystem-consistent: ")
            && last.contains("--no-demo-client"),
        "{stdout}"
    );
}

#[test]
fn json_lists_what_the_demo_client_was_told_and_the_verdicts() {
    if !runnable() {
        return;
    }
    let out = simulate(&["--cycles", "1", "--hold", "50ms", "--json"]);
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(doc["verdicts"], serde_json::json!(["app_consistent"]));
    assert_eq!(doc["consistency"], "application-consistent");
    let demo = &doc["demo_client"];
    assert_eq!(demo["name"], "hv-vss-simulate-demo");
    assert!(demo["error"].is_null(), "{demo}");
    let told = demo["told"].as_array().unwrap();
    let events: Vec<&str> = told.iter().map(|t| t["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["check", "freeze", "thaw"]);
    assert!(told.iter().all(|t| t["acked"] == true));
    assert_eq!(
        told[1]["txn"], told[2]["txn"],
        "thaw names the freeze's txn"
    );
    let at: Vec<f64> = told.iter().map(|t| t["at_ms"].as_f64().unwrap()).collect();
    assert!(at.windows(2).all(|w| w[0] <= w[1]), "{at:?}");
    // On the timeline, as its own "who": the client is told to freeze after the host sent
    // FREEZE and before the daemon answered it.
    let timeline = doc["timeline"].as_array().unwrap();
    let when = |who: &str, what: &str| {
        timeline
            .iter()
            .find(|e| e["who"] == who && e["what"].as_str().unwrap().starts_with(what))
            .unwrap_or_else(|| panic!("{who}: {what} in {timeline:#?}"))["at_ms"]
            .as_f64()
            .unwrap()
    };
    let freeze_sent = when("host → daemon", "FREEZE");
    let told_freeze = when("demo client", "told freeze");
    let freeze_answered = when("daemon → host", "FREEZE S_OK");
    assert!(
        freeze_sent <= told_freeze && told_freeze <= freeze_answered,
        "{freeze_sent} {told_freeze} {freeze_answered}"
    );
    assert_eq!(
        timeline
            .iter()
            .filter(|e| e["who"] == "demo client")
            .count(),
        4,
        "registered, check, freeze, thaw: {timeline:#?}"
    );
}
