//! The files under dist/: systemd units (verified by `systemd-analyze verify` when present,
//! and checked against R68/R69), the udev rule (parsed and matched against uevents), and the
//! example config (valid TOML once uncommented).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist")
}

const UNITS: [&str; 2] = ["hv-vssd.service", "hv-vssd-uio.service"];

fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok()
}

/// Copies the units to `dir` with the two installed binaries pointed at an executable stub
/// (verify checks that every Exec*= program exists); nothing else changes.
fn staged_units(dir: &Path, extra: &str) -> Vec<PathBuf> {
    let stub = dir.join("stub");
    fs::write(&stub, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&stub, fs::Permissions::from_mode(0o755)).unwrap();
    UNITS
        .iter()
        .map(|name| {
            let text = fs::read_to_string(dist().join("systemd").join(name)).unwrap();
            let text = text
                .replace("/usr/sbin/hv-vssd", stub.to_str().unwrap())
                .replace("/usr/bin/hv-vss", stub.to_str().unwrap())
                .replace("[Service]\n", &format!("[Service]\n{extra}"));
            let path = dir.join(name);
            fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

/// Runs `systemd-analyze verify` and returns the complaints about our units.
fn verify(units: &[PathBuf]) -> (bool, Vec<String>) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(units)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints = stderr
        .lines()
        .filter(|line| UNITS.iter().any(|u| line.contains(u)))
        .map(str::to_owned)
        .collect();
    (out.status.success(), complaints)
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    if !have("systemd-analyze") {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (ok, complaints) = verify(&staged_units(tmp.path(), ""));
    assert!(ok && complaints.is_empty(), "{complaints:#?}");

    // The check can fail: a misspelled key in the same files is reported.
    let tmp = tempfile::tempdir().unwrap();
    let (_, complaints) = verify(&staged_units(tmp.path(), "WatchdogSecs=30s\n"));
    assert_eq!(complaints.len(), 2, "{complaints:#?}");
}

/// `[section] key=value` pairs; repeated keys keep every value in order.
type Unit = BTreeMap<(String, String), Vec<String>>;

fn parse_unit(text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line.split_once('=').expect("key=value");
        unit.entry((section.clone(), key.trim().to_owned()))
            .or_default()
            .push(value.trim().to_owned());
    }
    unit
}

fn values<'u>(unit: &'u Unit, section: &str, key: &str) -> &'u [String] {
    unit.get(&(section.to_owned(), key.to_owned()))
        .map_or(&[], Vec::as_slice)
}

fn one<'u>(unit: &'u Unit, section: &str, key: &str) -> &'u str {
    match values(unit, section, key) {
        [value] => value,
        other => panic!("{section}.{key}: expected one value, got {other:?}"),
    }
}

fn load(name: &str) -> Unit {
    parse_unit(&fs::read_to_string(dist().join("systemd").join(name)).unwrap())
}

#[test]
fn both_units_meet_r68() {
    for name in UNITS {
        let unit = load(name);
        assert_eq!(one(&unit, "Service", "Type"), "notify", "{name}");
        assert_eq!(one(&unit, "Service", "NotifyAccess"), "main", "{name}");
        assert_eq!(one(&unit, "Service", "WatchdogSec"), "30s", "{name}");
        assert_eq!(one(&unit, "Service", "Restart"), "on-failure", "{name}");
        // The guardian must outlive a stop or crash of the daemon (issue 8).
        assert_eq!(one(&unit, "Service", "KillMode"), "process", "{name}");
        // The journal must survive a stop (a late FIFREEZE stays listed).
        assert_eq!(
            one(&unit, "Service", "RuntimeDirectoryPreserve"),
            "yes",
            "{name}"
        );
        assert_eq!(
            one(&unit, "Service", "RuntimeDirectory"),
            "hv-vss",
            "{name}"
        );
        assert_eq!(
            one(&unit, "Unit", "ConditionVirtualization"),
            "microsoft",
            "{name}"
        );
        let conflicts: Vec<&str> = values(&unit, "Unit", "Conflicts")
            .iter()
            .flat_map(|v| v.split_whitespace())
            .collect();
        for stock in ["hypervvssd.service", "hv-vss-daemon.service"] {
            assert!(
                conflicts.contains(&stock),
                "{name} must conflict with {stock}"
            );
        }
        let start = one(&unit, "Service", "ExecStart");
        assert!(start.starts_with("/usr/sbin/hv-vssd -n"), "{name}: {start}");
        let stop_post = values(&unit, "Service", "ExecStopPost");
        assert!(
            stop_post[0].trim_start_matches('-') == "/usr/bin/hv-vss thaw --recover --wait 20s",
            "{name}: recovery (waiting for a lingering daemon) must be the first stop step: {stop_post:?}"
        );
        let stop_timeout: u32 = one(&unit, "Service", "TimeoutStopSec")
            .trim_end_matches('s')
            .parse()
            .unwrap();
        // The daemon's default stop_timeout_seconds: it checks the THAW budget against it,
        // and the ExecStopPost wait (20 s) must fit in it too.
        assert_eq!(stop_timeout, 45, "{name}");
        for sandbox in [
            "ProtectSystem",
            "ProtectHome",
            "PrivateTmp",
            "PrivateMounts",
            "PrivateDevices",
            "ReadOnlyPaths",
            "InaccessiblePaths",
            "TemporaryFileSystem",
            "MountFlags",
            "RootDirectory",
        ] {
            assert!(
                values(&unit, "Service", sandbox).is_empty(),
                "{name}: {sandbox}= puts the daemon in its own mount namespace"
            );
        }
    }
}

#[test]
fn uio_unit_binds_on_start_unbinds_on_stop_and_passes_the_node() {
    let unit = load("hv-vssd-uio.service");
    let pre = one(&unit, "Service", "ExecStartPre");
    let words: Vec<&str> = pre.split_whitespace().collect();
    assert_eq!(&words[..3], ["/usr/bin/hv-vss", "uio", "bind"], "{pre}");
    let env_file = words
        .windows(2)
        .find(|w| w[0] == "--env-file")
        .map(|w| w[1])
        .expect("bind writes the node path for ExecStart");
    assert_eq!(
        one(&unit, "Service", "EnvironmentFile").trim_start_matches('-'),
        env_file
    );
    assert!(
        env_file.starts_with("/run/hv-vss/"),
        "inside RuntimeDirectory"
    );

    // ExecStart takes `--uio ${VAR}` where VAR is what `hv-vss uio bind --env-file` writes.
    let start = one(&unit, "Service", "ExecStart");
    let var = start
        .split_once("--uio ${")
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(var, _)| var)
        .expect("ExecStart passes --uio ${VAR}");
    let help = Command::new(env!("CARGO_BIN_EXE_hv-vss"))
        .args(["uio", "bind", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains(&format!("{var}=/dev/uioN")),
        "{var} vs {help}"
    );

    let stop_post = values(&unit, "Service", "ExecStopPost");
    assert_eq!(stop_post.len(), 2, "{stop_post:?}");
    assert!(
        stop_post[1].starts_with("/usr/bin/hv-vss uio unbind"),
        "{stop_post:?}"
    );
    assert!(stop_post[1].contains(&format!("--env-file {env_file}")));
    // "Not supported here" (exit 3 of `hv-vss uio bind`) is not retried.
    assert_eq!(one(&unit, "Service", "RestartPreventExitStatus"), "3");

    let dropin = load("hv-vssd.service");
    assert!(
        values(&dropin, "Unit", "Conflicts")
            .iter()
            .any(|v| v.split_whitespace().any(|u| u == "hv-vssd-uio.service"))
    );
}

/// One `KEY{attr}OP"value"` token of a udev rule.
#[derive(Debug, PartialEq)]
struct Token {
    key: String,
    op: String,
    value: String,
}

fn parse_udev_line(line: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let key_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || "_{}".contains(c)))
            .expect("operator after key");
        let key = &rest[..key_len];
        rest = &rest[key_len..];
        let op = ["==", "!=", "+=", "-=", ":=", "="]
            .into_iter()
            .find(|op| rest.starts_with(op))
            .unwrap_or_else(|| panic!("bad operator after {key}: {rest}"));
        rest = rest[op.len()..].strip_prefix('"').expect("quoted value");
        let end = rest.find('"').expect("closing quote");
        tokens.push(Token {
            key: key.to_owned(),
            op: op.to_owned(),
            value: rest[..end].to_owned(),
        });
        rest = rest[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    tokens
}

/// udev's glob: `*`, `?`, and `|` alternatives.
fn glob(pattern: &str, text: &str) -> bool {
    fn one(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => one(&p[1..], t) || (!t.is_empty() && one(p, &t[1..])),
            (Some(b'?'), Some(_)) => one(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => one(&p[1..], &t[1..]),
            _ => false,
        }
    }
    pattern
        .split('|')
        .any(|p| one(p.as_bytes(), text.as_bytes()))
}

/// Applies a rule's match keys to a uevent; `Some(assignments)` when it matches.
fn apply(rule: &[Token], event: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
    let prop = |k: &str| event.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let mut assigned = Vec::new();
    for token in rule {
        match token.op.as_str() {
            "==" | "!=" => {
                let matched = glob(&token.value, prop(&token.key).unwrap_or(""));
                if matched != (token.op == "==") {
                    return None;
                }
            }
            _ => assigned.push((token.key.clone(), token.value.clone())),
        }
    }
    Some(assigned)
}

#[test]
fn udev_rule_starts_the_unit_when_vmbus_hv_vss_appears() {
    let path = dist().join("udev/70-hv-vss.rules");
    if have("udevadm") {
        let out = Command::new("udevadm")
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        if out.status.success() {
            eprintln!("udevadm verify: ok");
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            // `verify` appeared in systemd 254; older udevadm does not know it.
            assert!(
                stderr.contains("Unknown command"),
                "udevadm verify: {stderr}"
            );
        }
    } else {
        eprintln!("udevadm not installed: checking the rule with the parser below only");
    }
    let text = fs::read_to_string(&path).unwrap();
    let rules: Vec<Vec<Token>> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(parse_udev_line)
        .collect();
    assert_eq!(rules.len(), 1);
    let known = ["ACTION", "SUBSYSTEM", "KERNEL", "TAG", "ENV{SYSTEMD_WANTS}"];
    for token in &rules[0] {
        assert!(
            known.contains(&token.key.as_str()),
            "unexpected key {token:?}"
        );
    }

    let add = [
        ("ACTION", "add"),
        ("SUBSYSTEM", "misc"),
        ("KERNEL", "vmbus/hv_vss"),
    ];
    let assigned = apply(&rules[0], &add).expect("matches the hv_vss add uevent");
    assert!(
        assigned.contains(&("TAG".into(), "systemd".into())),
        "{assigned:?}"
    );
    let wants: Vec<String> = assigned
        .iter()
        .filter(|(k, _)| k == "ENV{SYSTEMD_WANTS}")
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(wants, ["hv-vssd.service"]);
    assert!(dist().join("systemd").join(&wants[0]).exists());

    for other in [
        [
            ("ACTION", "add"),
            ("SUBSYSTEM", "misc"),
            ("KERNEL", "vmbus/hv_kvp"),
        ],
        [
            ("ACTION", "add"),
            ("SUBSYSTEM", "misc"),
            ("KERNEL", "vmbus/hv_vss2"),
        ],
        [
            ("ACTION", "remove"),
            ("SUBSYSTEM", "misc"),
            ("KERNEL", "vmbus/hv_vss"),
        ],
    ] {
        assert_eq!(apply(&rules[0], &other), None, "{other:?}");
    }
}

/// The real daemon accepting every key is proven in crates/daemon/tests/example_config.rs;
/// here: as shipped nothing is set, and once uncommented each key shows the daemon's
/// default.
#[test]
fn example_config_is_valid_toml_once_uncommented() {
    let text = fs::read_to_string(dist().join("hv-vss.toml")).unwrap();
    assert!(
        text.contains("hv-vssd reads /etc/hv-vss/hv-vss.toml at start when that file exists"),
        "the header says when the file is read"
    );
    // As shipped, nothing is set.
    let shipped: toml::Table = toml::from_str(&text).unwrap();
    assert!(
        shipped
            .values()
            .all(|v| v.as_table().is_some_and(|t| t.is_empty())),
        "{shipped:?}"
    );
    let uncommented = hv_vss_testutil::uncomment_toml_example(&text);
    let full: toml::Table = toml::from_str(&uncommented).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(full["device"].as_str(), Some("/dev/vmbus/hv_vss"));
    assert!(
        full["uio"]
            .as_str()
            .is_some_and(|u| u.starts_with("/dev/uio"))
    );
    assert_eq!(full["state_dir"].as_str(), Some("/run/hv-vss"));
    assert_eq!(full["app_socket"].as_str(), Some("/run/hv-vss/app.sock"));
    assert_eq!(full["mounts"].as_array().map(Vec::len), Some(0));
    assert_eq!(full["auto_thaw"].as_bool(), Some(true));
    assert_eq!(full["auto_thaw_seconds"].as_integer(), Some(60));
    assert_eq!(full["log_level"].as_str(), Some("info"));
    assert_eq!(full["log_ring_capacity"].as_integer(), Some(4096));
    assert_eq!(full["history_limit"].as_integer(), Some(100));
    let freezer = full["freezer"].as_table().unwrap();
    assert_eq!(freezer["on_unsupported"].as_str(), Some("skip"));
    assert_eq!(freezer["on_foreign_freeze"].as_str(), Some("fail"));
    assert_eq!(freezer["freeze_deadline_secs"].as_integer(), Some(60));
    for list in ["include", "exclude"] {
        let table = freezer[list].as_table().unwrap();
        let mut keys: Vec<&str> = table.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["fs_types", "mount_points", "sources"],
            "freezer.{list}"
        );
        assert!(
            table
                .values()
                .all(|v| v.as_array().is_some_and(Vec::is_empty))
        );
    }
    let limits = full["limits"].as_table().unwrap();
    assert_eq!(limits["check_deadline_seconds"].as_integer(), Some(25));
    assert_eq!(limits["freeze_deadline_seconds"].as_integer(), Some(300));
    assert_eq!(limits["thaw_deadline_seconds"].as_integer(), Some(25));
    assert_eq!(limits["client_timeout_seconds"].as_integer(), Some(30));
}
