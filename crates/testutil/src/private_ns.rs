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

/// Re-runs the current program (a benchmark) with its arguments under
/// `unshare -m --propagation private`; its exit status.
pub fn rerun_in_private_mount_namespace() -> anyhow::Result<std::process::ExitStatus> {
    let exe = std::env::current_exe()?;
    Command::new("unshare")
        .args(["-m", "--propagation", "private"])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(INSIDE, "1")
        .status()
        .context("running unshare")
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
