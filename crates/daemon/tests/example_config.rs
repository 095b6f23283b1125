//! dist/hv-vss.toml against the real daemon: with every key uncommented, the real `hv-vssd`
//! accepts the file (it gets past configuration and fails only at the transport, exit 3,
//! not 2), and the file lists every key the daemon knows.
//!
//! The daemon has no "check the config and exit" mode, so the test points the transport at
//! a path that does not exist: configuration is validated completely before the transport
//! opens (docs/daemon.md, "What happens at start"), so exit 3 means the file was accepted.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::with_timeout;

const LIMIT: Duration = Duration::from_secs(60);

/// Every key of the daemon's config file (crates/daemon/src/config.rs `FileConfig`, and the
/// freezer's `FreezerConfig` / `MountFilter`), as dotted paths.
const DAEMON_KEYS: &[&str] = &[
    "device",
    "uio",
    "state_dir",
    "app_socket",
    "mounts",
    "auto_thaw",
    "auto_thaw_seconds",
    "log_level",
    "log_ring_capacity",
    "history_limit",
    "metrics_textfile",
    "control_group",
    "stop_timeout_seconds",
    "limits.check_deadline_seconds",
    "limits.freeze_deadline_seconds",
    "limits.thaw_deadline_seconds",
    "limits.client_timeout_seconds",
    "apps.socket_mode",
    "apps.socket_owner",
    "apps.socket_group",
    "apps.allowed_users",
    "apps.allowed_groups",
    "apps.max_clients",
    "apps.max_pending_bytes",
    "hooks.dir",
    "hooks.style",
    "hooks.tier",
    "hooks.timeout_secs",
    "freezer.on_unsupported",
    "freezer.on_foreign_freeze",
    "freezer.freeze_deadline_secs",
    "freezer.expedite_grace_periods",
    "freezer.rcu_expedited_switch",
    "freezer.include.mount_points",
    "freezer.include.fs_types",
    "freezer.include.sources",
    "freezer.exclude.mount_points",
    "freezer.exclude.fs_types",
    "freezer.exclude.sources",
    "freebsd.zfs",
    "freebsd.other_local",
    "freebsd.hv_vss",
];

fn example() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/hv-vss.toml");
    std::fs::read_to_string(path).unwrap()
}

/// Dotted paths of every non-table value (the tables of an array of tables share their
/// array's path).
fn leaf_keys(table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
    for (key, value) in table {
        let path = format!("{prefix}{key}");
        let tables: Vec<&toml::Table> = match value {
            toml::Value::Table(t) => vec![t],
            toml::Value::Array(items) if items.iter().all(toml::Value::is_table) => {
                items.iter().filter_map(toml::Value::as_table).collect()
            }
            _ => Vec::new(),
        };
        for t in &tables {
            leaf_keys(t, &format!("{path}."), out);
        }
        if tables.is_empty() {
            out.insert(path);
        }
    }
}

/// Runs the real daemon with `config` and a transport that does not exist. `--device`
/// overrides the file's transport (so `device` and `uio`, both set once uncommented, do not
/// conflict), `--state-dir` and `--app-socket` keep it out of /run/hv-vss, `--mount` keeps
/// the plan to a filesystem this test made.
fn run_daemon(config: &Path, state: &Path, mount: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hv-vssd"));
    cmd.arg("--config")
        .arg(config)
        .args(["--device", "/nonexistent/hv_vss"])
        .arg("--state-dir")
        .arg(state)
        .arg("--app-socket")
        .arg(state.join("app.sock"))
        .arg("--mount")
        .arg(mount);
    // Bounded: the daemon must exit at start-up.
    common::run_to_exit(&mut cmd, Duration::from_secs(20))
}

#[test]
fn every_key_of_the_example_config_is_accepted_by_the_daemon() {
    with_timeout(LIMIT, || {
        let text = example();
        let uncommented = hv_vss_testutil::uncomment_toml_example(&text);
        let table: toml::Table = toml::from_str(&uncommented).unwrap_or_else(|e| panic!("{e}"));
        let mut keys = BTreeSet::new();
        leaf_keys(&table, "", &mut keys);
        let want: BTreeSet<String> = DAEMON_KEYS.iter().map(|k| k.to_string()).collect();
        // Every key of the daemon is in the file, and uncommenting reached every one.
        assert_eq!(keys, want, "dist/hv-vss.toml vs the daemon's keys");

        let fs = common::ext4();
        let dir = common::state_dir();
        let config: PathBuf = dir.path().join("hv-vss.toml");
        std::fs::write(&config, &uncommented).unwrap();
        let state = dir.path().join("state");
        let out = run_daemon(&config, &state, fs.mount_point());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(3),
            "exit 2 means a key or value of dist/hv-vss.toml was refused:\n{stderr}"
        );
        assert!(stderr.contains("/nonexistent/hv_vss"), "{stderr}");
        // The file was really read (the start line names it).
        assert!(stderr.contains(config.to_str().unwrap()), "{stderr}");

        // The same check catches a key the daemon does not know.
        for (table, line) in [("", "bogus_key = 1"), ("[freezer]", "uuids = []")] {
            let bad = if table.is_empty() {
                format!("{line}\n{uncommented}")
            } else {
                uncommented.replacen(table, &format!("{table}\n{line}"), 1)
            };
            std::fs::write(&config, bad).unwrap();
            let out = run_daemon(&config, &state, fs.mount_point());
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{line}: {stderr}");
            let key = line.split_once(" = ").unwrap().0;
            assert!(stderr.contains(key), "{line}: {stderr}");
        }
    });
}

#[test]
fn the_example_config_as_shipped_sets_nothing() {
    with_timeout(LIMIT, || {
        let table: toml::Table = toml::from_str(&example()).unwrap();
        let mut keys = BTreeSet::new();
        leaf_keys(&table, "", &mut keys);
        assert!(keys.is_empty(), "set as shipped: {keys:?}");

        // And the daemon reads it as it would /etc/hv-vss/hv-vss.toml.
        let fs = common::ext4();
        let dir = common::state_dir();
        let config = dir.path().join("hv-vss.toml");
        std::fs::write(&config, example()).unwrap();
        let out = run_daemon(&config, &dir.path().join("state"), fs.mount_point());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
    });
}
