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
    child.wait_with_output().unwrap()
}

#[test]
fn the_demo_client_is_told_each_stage_and_the_backup_is_application_consistent() {
    if !runnable() {
        return;
    }
    let out = simulate(&["--cycles", "2", "--hold", "100ms"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let told: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("hv-vss-simulate-demo told"))
        .map(|l| l.split_whitespace().nth(3).unwrap())
        .collect();
    assert_eq!(
        told,
        ["check", "freeze", "thaw", "check", "freeze", "thaw"],
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .filter(|l| l.contains("hv-vss-simulate-demo told"))
            .all(|l| l.contains("acked ok")),
        "{stdout}"
    );
    for cycle in [1, 2] {
        assert!(
            stdout.contains(&format!(
                "cycle {cycle}: verdict application-consistent (every registered client acked)"
            )),
            "{stdout}"
        );
    }
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
    assert!(
        stdout.contains("cycle 1: verdict filesystem-consistent"),
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
}
