//! Tests and benchmarks that mount many things, or need the mount table to hold still, run
//! in a private mount namespace: `unshare -m --propagation private` re-runs the current test
//! binary for just that test, so its mounts never reach the machine (they vanish with the
//! namespace) and mounts made by other processes never reach it.

use std::path::Path;
use std::process::Command;

use anyhow::Context;

/// Set in the re-run child: it is the one inside the namespace.
const INSIDE: &str = "HV_VSS_PRIVATE_MOUNT_NS";

/// True inside the private mount namespace: run the test body. Outside, re-runs the test
/// binary for `test` (its full path, `module::tests::name`) under
/// `unshare -m --propagation private`, panics if that run fails, and returns false (the
/// body already ran in the child). Needs root.
pub fn in_private_mount_namespace(test: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("current test binary");
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private"])
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .output()
        .expect("running unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} in a private mount namespace: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

/// Is this process in the private mount namespace of [`in_private_mount_namespace`] (or of
/// a benchmark that re-ran itself the same way)?
pub fn inside_private_mount_namespace() -> bool {
    std::env::var_os(INSIDE).is_some()
}

/// For a benchmark's `main`: returns at once inside the private mount namespace; outside,
/// re-runs the current program with its arguments under `unshare -m --propagation private`
/// and exits with its status (`name` says who failed).
pub fn enter_private_mount_namespace(name: &str) {
    if inside_private_mount_namespace() {
        return;
    }
    let status = std::env::current_exe()
        .context("current program")
        .and_then(|exe| {
            Command::new("unshare")
                .args(["-m", "--propagation", "private"])
                .arg(exe)
                .args(std::env::args_os().skip(1))
                .env(INSIDE, "1")
                .status()
                .context("running unshare")
        });
    match status {
        Ok(s) if s.success() => std::process::exit(0),
        Ok(s) => {
            eprintln!("{name}: {s}");
            std::process::exit(s.code().unwrap_or(1))
        }
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::exit(1)
        }
    }
}

/// `mount -t tmpfs` on `dir` (no unmount on drop: for a private namespace, or pair it with
/// [`unmount`]).
pub fn mount_tmpfs(dir: &Path) -> anyhow::Result<()> {
    crate::run(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "hv-vss-test"])
            .arg(dir),
    )
    .map(drop)
}

/// `umount` of `dir`.
pub fn unmount(dir: &Path) -> anyhow::Result<()> {
    crate::run(Command::new("umount").arg(dir)).map(drop)
}
