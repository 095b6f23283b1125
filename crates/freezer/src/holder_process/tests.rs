//! Both sides of the holder protocol on Linux: the child's [`serve`] with a fake suspender
//! (UFS cannot be suspended on Linux, where these tests run), and the parent's
//! [`HeldByChild`] against stand-in children written in sh that speak the protocol, stay
//! silent, or break it.

use std::cell::RefCell;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::rc::Rc;

use super::*;
use crate::freebsd_plan::tests::rec;
use crate::freebsd_plan::{FreeBsdPolicy, MNT_LOCAL, plan_freebsd};

#[derive(Debug)]
struct FakeError;

impl std::fmt::Display for FakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EBUSY")
    }
}

impl std::error::Error for FakeError {}

/// Logs suspends and resumes; fails to suspend `fail`.
struct FakeUfs {
    log: Rc<RefCell<Vec<String>>>,
    fail: Option<&'static str>,
}

impl Suspender for FakeUfs {
    type Target = UfsTarget;
    type Held = String;
    type Error = FakeError;

    fn suspend(&self, target: &UfsTarget) -> Result<String, FakeError> {
        if self.fail == Some(target.mount_point.as_str()) {
            return Err(FakeError);
        }
        self.log
            .borrow_mut()
            .push(format!("suspend {}", target.mount_point));
        Ok(target.mount_point.clone())
    }

    fn resume(&self, held: String) -> Result<(), FakeError> {
        self.log.borrow_mut().push(format!("resume {held}"));
        Ok(())
    }
}

struct NoPools;

impl PoolSyncer for NoPools {
    fn sync(&self, _: &[String]) -> Result<(), String> {
        Ok(())
    }
}

fn two_ufs() -> FreeBsdPlan {
    let records = [
        rec("ufs", "/", "/dev/da1", MNT_LOCAL, 1),
        rec("ufs", "/data", "/dev/da2", MNT_LOCAL, 2),
    ];
    plan_freebsd(&records, &FreeBsdPolicy::default())
}

#[test]
fn the_child_holds_until_its_stdin_closes_then_resumes() {
    let (parent_end, child_end) = UnixStream::pair().unwrap();
    let (stop_parent, child_stdin) = UnixStream::pair().unwrap();
    let log = Rc::new(RefCell::new(Vec::new()));
    let ufs = FakeUfs {
        log: log.clone(),
        fail: None,
    };
    let stop = AtomicBool::new(false);
    // The parent's part runs in a thread: it reads "frozen", checks that the child still
    // holds, then closes the child's stdin and reads "thawed".
    let parent = std::thread::spawn(move || {
        let mut lines = BufReader::new(parent_end).lines();
        let frozen = parse_line(lines.next().unwrap().unwrap().as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        drop(stop_parent);
        let thawed = parse_line(lines.next().unwrap().unwrap().as_bytes()).unwrap();
        (frozen, thawed)
    });
    let mut output = &child_end;
    serve(
        Ok(two_ufs()),
        &ufs,
        &NoPools,
        child_stdin.as_fd(),
        &mut output,
        &stop,
    )
    .unwrap();
    drop(child_end);
    let (frozen, thawed) = parent.join().unwrap();
    let HolderLine::Frozen(report) = frozen else {
        panic!("{frozen:?}");
    };
    assert_eq!(report.suspended, ["/data", "/"]);
    let HolderLine::Thawed(outcomes) = thawed else {
        panic!("{thawed:?}");
    };
    assert_eq!(outcomes.len(), 2);
    assert_eq!(
        *log.borrow(),
        ["suspend /data", "suspend /", "resume /", "resume /data"]
    );
}

/// Runs [`serve`] over [`two_ufs`] with its stdin held open (so only a failure or `stop`
/// ends it) and returns what it wrote.
fn serve_with_stdin_open(ufs: &FakeUfs, stop: bool) -> Vec<u8> {
    let (_keep_open, child_stdin) = UnixStream::pair().unwrap();
    let mut output = Vec::new();
    let stop = AtomicBool::new(stop);
    serve(
        Ok(two_ufs()),
        ufs,
        &NoPools,
        child_stdin.as_fd(),
        &mut output,
        &stop,
    )
    .unwrap();
    output
}

#[test]
fn the_child_reports_a_failure_and_holds_nothing() {
    let log = Rc::new(RefCell::new(Vec::new()));
    let ufs = FakeUfs {
        log: log.clone(),
        fail: Some("/"),
    };
    let output = serve_with_stdin_open(&ufs, false);
    let line = parse_line(output.strip_suffix(b"\n").unwrap()).unwrap();
    assert!(
        matches!(&line, HolderLine::Failed { kind: FailKind::Suspend, message } if message.contains("suspending / failed")),
        "{line:?}"
    );
    assert_eq!(*log.borrow(), ["suspend /data", "resume /data"]);
}

#[test]
fn a_stop_signal_ends_the_hold() {
    let ufs = FakeUfs {
        log: Rc::default(),
        fail: None,
    };
    let output = serve_with_stdin_open(&ufs, true);
    let text = String::from_utf8(output).unwrap();
    let kinds: Vec<_> = text
        .lines()
        .map(|l| match parse_line(l.as_bytes()).unwrap() {
            HolderLine::Frozen(_) => "frozen",
            HolderLine::Failed { .. } => "failed",
            HolderLine::Thawed(_) => "thawed",
        })
        .collect();
    assert_eq!(kinds, ["frozen", "thawed"]);
}

fn frozen_line() -> String {
    serde_json::to_string(&HolderLine::Frozen(FreeBsdFreezeReport {
        suspended: vec!["/".into()],
        zfs_synced: vec![],
        zfs_note: None,
        skipped: vec![],
        zfs_sync_took: Duration::ZERO,
        suspend_took: Duration::from_millis(3),
    }))
    .unwrap()
}

fn stand_in(script: &str) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(frozen_line())
        .arg(serde_json::to_string(&HolderLine::Thawed(vec![])).unwrap());
    command
}

#[test]
fn the_parent_gets_the_report_and_thaws_by_closing_stdin() {
    // Prints frozen, holds until its stdin closes, prints thawed.
    let held = HeldByChild::spawn(
        stand_in("echo \"$1\"; cat >/dev/null; echo \"$2\""),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(held.report.suspended, ["/"]);
    let pid = held.pid() as i32;
    assert!(hv_vss_sys::process::process_alive(pid), "it holds");
    let outcomes = held.thaw(Duration::from_secs(10)).unwrap();
    assert!(outcomes.is_empty());
    assert!(
        !hv_vss_sys::process::process_alive(pid),
        "exited and reaped"
    );
}

#[test]
fn a_silent_holder_is_killed_at_the_deadline() {
    let started = Instant::now();
    let err =
        HeldByChild::spawn(stand_in("exec sleep 60"), Duration::from_millis(200)).unwrap_err();
    assert!(matches!(err, HolderProcessError::TimedOut(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_failed_freeze_is_a_typed_error() {
    let failed = serde_json::to_string(&HolderLine::Failed {
        kind: FailKind::Vetoed,
        message: "vetoed by /boot/efi (msdosfs)".into(),
    })
    .unwrap();
    let mut command = Command::new("sh");
    command.arg("-c").arg("echo \"$1\"").arg("sh").arg(failed);
    let err = HeldByChild::spawn(command, Duration::from_secs(10)).unwrap_err();
    assert!(
        matches!(
            &err,
            HolderProcessError::Failed {
                kind: FailKind::Vetoed,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.to_string(), "vetoed by /boot/efi (msdosfs)");
}

#[test]
fn garbage_or_silence_after_frozen_is_a_protocol_error_and_the_child_is_killed() {
    let err = HeldByChild::spawn(stand_in("echo not-json; sleep 60"), Duration::from_secs(10))
        .unwrap_err();
    assert!(matches!(err, HolderProcessError::Protocol(_)), "{err}");
    // Frozen, then never answers the thaw: killed at the thaw's deadline.
    let held = HeldByChild::spawn(
        stand_in("trap '' TERM; echo \"$1\"; exec sleep 60"),
        Duration::from_secs(10),
    )
    .unwrap();
    let pid = held.pid() as i32;
    let err = held.thaw(Duration::from_millis(200)).unwrap_err();
    assert!(matches!(err, HolderProcessError::TimedOut(_)), "{err}");
    assert!(
        !hv_vss_sys::process::process_alive(pid),
        "killed and reaped"
    );
}

#[test]
fn dropping_an_unthawed_holder_kills_it() {
    let held = HeldByChild::spawn(
        stand_in("echo \"$1\"; exec sleep 60"),
        Duration::from_secs(10),
    )
    .unwrap();
    let pid = held.pid() as i32;
    drop(held);
    assert!(!hv_vss_sys::process::process_alive(pid));
}

#[test]
fn parse_line_refuses_what_is_not_a_message() {
    assert!(parse_line(b"").is_err());
    assert!(parse_line(b"{\"frozen\":1}").is_err());
    assert!(parse_line(&vec![b' '; MAX_LINE + 1]).is_err());
    assert_eq!(
        parse_line(b"{\"thawed\":[]}").unwrap(),
        HolderLine::Thawed(vec![])
    );
}
