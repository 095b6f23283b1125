//! Bad input on every command (docs/cli.md, "Exit codes"): unknown flags and bad values are
//! usage errors (2), a closed stdout ends a command quietly (141), and no error ever shows a
//! panic or a backtrace. Root, daemon and state-file errors are tested beside each command
//! (status_cli, history_cli, simulate_cli, fs_cli, uio_cli).

use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};

fn hv_vss(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hv-vss"));
    c.args(args).stdin(Stdio::null()).env("RUST_BACKTRACE", "1");
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_no_panic(out: &Output, what: &str) {
    let stderr = text(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("stack backtrace"),
        "{what}: {stderr}"
    );
}

const COMMANDS: [&[&str]; 11] = [
    &["plan"],
    &["freeze"],
    &["thaw"],
    &["uio", "status"],
    &["uio", "bind"],
    &["uio", "unbind"],
    &["simulate"],
    &["status"],
    &["history"],
    &["metrics"],
    &["generate-docs"],
];

#[test]
fn unknown_flags_are_usage_errors_on_every_command() {
    for cmd in COMMANDS {
        let mut args = cmd.to_vec();
        args.push("--no-such-flag");
        let out = hv_vss(&args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).starts_with("error: unexpected argument '--no-such-flag'"),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_no_panic(&out, &format!("{args:?}"));
    }
    for args in [
        &[][..],
        &["no-such-command"],
        &["uio"],
        &["freeze", "--hold", "forever"],
    ] {
        let out = hv_vss(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_no_panic(&out, &format!("{args:?}"));
    }
}

/// A reader that has gone (`| head -1`): no "failed printing to stdout" panic, exit 141,
/// nothing on stderr.
#[test]
fn a_closed_stdout_ends_quietly_with_141() {
    let state = tempfile::tempdir().unwrap();
    std::fs::write(
        state.path().join("history.jsonl"),
        include_str!("../../history/tests/data/history.jsonl").repeat(200),
    )
    .unwrap();
    let dir = state.path().to_str().unwrap();
    // plan prints with println!; status, history and metrics stop writing at EPIPE and
    // exit as they would have (status: 10, no daemon).
    for (args, want) in [
        (&["plan"][..], 141),
        (&["status", "--state-dir", dir], 10),
        (&["history", "--state-dir", dir], 0),
        (&["metrics", "--state-dir", dir], 0),
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = hv_vss(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_no_panic(&out, &format!("{args:?}"));
        assert_eq!(
            out.status.code(),
            Some(want),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(out.stderr.is_empty(), "{args:?}: {}", text(&out.stderr));
    }
}

/// The daemon's state is root's: every reader says so in one line, exit 3.
#[test]
fn permission_denied_is_one_line_and_exit_3() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: needs root to drop to uid 65534");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    std::fs::write(state.path().join("hv-vssd.lock"), "").unwrap();
    std::fs::set_permissions(
        state.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let dir = state.path().to_str().unwrap();
    for cmd in ["status", "history", "metrics"] {
        let out = hv_vss(&[cmd, "--state-dir", dir])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{cmd}: {}", text(&out.stderr));
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{cmd}: {stderr}");
        assert!(stderr.contains("permission denied"), "{cmd}: {stderr}");
        assert!(stderr.contains("run as root"), "{cmd}: {stderr}");
    }
}
