//! The holder record with real processes and real locks (flock and signals work the same
//! on Linux, where these tests run, as on FreeBSD).

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::*;

/// A shell that takes the record's lock the way [`claim`] does (read-only descriptor,
/// `flock`), writes its pid, and becomes `sleep` (same pid, same locked descriptor).
/// `trap` makes it ignore SIGTERM when `ignore_term`.
fn holder_process(dir: &Path, ignore_term: bool) -> Child {
    let path = dir.join(HOLDER_FILE);
    std::fs::write(&path, b"").unwrap();
    let trap = if ignore_term { "trap '' TERM; " } else { "" };
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{trap}exec 9<\"$1\" && flock -x 9 && echo $$ > \"$1\" && exec sleep 60"
        ))
        .arg("sh")
        .arg(&path)
        .spawn()
        .unwrap();
    // Wait until it has written its pid (and so holds the lock).
    let until = Instant::now() + Duration::from_secs(10);
    while read_pid(&path) != Some(child.id() as i32) {
        assert!(Instant::now() < until, "holder did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

#[test]
fn a_claim_records_our_pid_and_a_second_claim_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let first = claim(dir.path()).unwrap();
    assert_eq!(read_pid(first.path()), Some(std::process::id() as i32));
    // A second open file description cannot take the lock, even in this process.
    let err = claim(dir.path()).unwrap_err();
    assert!(
        matches!(err, HolderError::Busy { pid: Some(p), .. } if p == std::process::id() as i32),
        "{err}"
    );
    drop(first);
    assert!(!dir.path().join(HOLDER_FILE).exists(), "removed on drop");
    drop(claim(dir.path()).unwrap());
}

#[test]
fn no_record_or_a_stale_one_means_nothing_held() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        end_holder(dir.path(), Duration::from_secs(1)).unwrap(),
        EndOutcome::NothingHeld
    );
    // A record whose holder died: its pid may be anyone's now, and must not be signalled.
    std::fs::write(dir.path().join(HOLDER_FILE), "1\n").unwrap();
    assert_eq!(
        end_holder(dir.path(), Duration::from_secs(1)).unwrap(),
        EndOutcome::NothingHeld
    );
    assert!(
        !dir.path().join(HOLDER_FILE).exists(),
        "stale record removed"
    );
}

#[test]
fn a_live_holder_is_ended_by_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut holder = holder_process(dir.path(), false);
    let pid = holder.id() as i32;
    assert!(matches!(claim(dir.path()), Err(HolderError::Busy { .. })));
    let outcome = end_holder(dir.path(), Duration::from_secs(10)).unwrap();
    assert_eq!(outcome, EndOutcome::Ended { pid, killed: false });
    let status = holder.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(15)
    );
}

#[test]
fn a_holder_ignoring_sigterm_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut holder = holder_process(dir.path(), true);
    let pid = holder.id() as i32;
    let outcome = end_holder(dir.path(), Duration::from_millis(300)).unwrap();
    assert_eq!(outcome, EndOutcome::Ended { pid, killed: true });
    let status = holder.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
}
