//! dist/systemd/hv-vss-postgres.service and hv-vss-mariadb.service: verified by
//! `systemd-analyze verify` when present, and checked for what docs/integrations.md says.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const UNITS: [(&str, &str); 2] = [
    ("hv-vss-postgres.service", "postgresql.service"),
    ("hv-vss-mariadb.service", "mariadb.service"),
];

fn unit_text(name: &str) -> String {
    fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../dist/systemd")
            .join(name),
    )
    .unwrap()
}

/// `key=value` lines of `section`.
fn values(text: &str, section: &str, key: &str) -> Vec<String> {
    let mut current = "";
    let mut found = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            current = line;
        } else if current == format!("[{section}]")
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            found.push(v.trim().to_owned());
        }
    }
    found
}

#[test]
fn units_start_after_the_daemon_and_the_database_and_restart_on_failure() {
    for (name, db) in UNITS {
        let text = unit_text(name);
        let after: Vec<String> = values(&text, "Unit", "After")
            .iter()
            .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .collect();
        for want in ["hv-vssd.service", "hv-vssd-uio.service", db] {
            assert!(
                after.iter().any(|a| a == want),
                "{name}: After= lacks {want}"
            );
        }
        assert_eq!(
            values(&text, "Service", "Restart"),
            ["on-failure"],
            "{name}"
        );
        let binary = name.trim_end_matches(".service");
        assert_eq!(
            values(&text, "Service", "ExecStart"),
            [format!("/usr/bin/{binary}")],
            "{name}"
        );
        assert_eq!(values(&text, "Install", "WantedBy"), ["multi-user.target"]);
    }
}

fn staged(dir: &Path, extra: &str) -> Vec<PathBuf> {
    let stub = dir.join("stub");
    fs::write(&stub, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&stub, fs::Permissions::from_mode(0o755)).unwrap();
    UNITS
        .iter()
        .map(|(name, _)| {
            let binary = name.trim_end_matches(".service");
            let text = unit_text(name)
                .replace(&format!("/usr/bin/{binary}"), stub.to_str().unwrap())
                .replace("[Service]\n", &format!("[Service]\n{extra}"));
            let path = dir.join(name);
            fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

fn verify(units: &[PathBuf]) -> Vec<String> {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(units)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| UNITS.iter().any(|(u, _)| l.contains(u)))
        .map(str::to_owned)
        .collect()
}

#[test]
fn units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let complaints = verify(&staged(tmp.path(), ""));
    assert!(complaints.is_empty(), "{complaints:#?}");
    // The check can fail: a misspelled key is reported.
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(verify(&staged(tmp.path(), "Restrat=always\n")).len(), 2);
}
