//! Both sides of the holder protocol on Linux: the child's [`serve`] with a fake suspender
//! (UFS cannot be suspended on Linux, where these tests run; the protocol, the poll and the
//! timers are the real ones, and its parent is a real process where one is needed), and the
//! parent's [`HeldByChild`] against stand-in children written in sh that speak the
//! protocol, stay silent, or break it.

use std::cell::RefCell;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::process::{Child, ChildStdout};
use std::rc::Rc;
use std::sync::Mutex;

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
        &HoldBounds::default(),
    )
    .unwrap();
    drop(child_end);
    let (frozen, thawed) = parent.join().unwrap();
    let HolderLine::Frozen(report) = frozen else {
        panic!("{frozen:?}");
    };
    assert_eq!(report.suspended, ["/data", "/"]);
    let HolderLine::Thawed(Resumed { reason, outcomes }) = thawed else {
        panic!("{thawed:?}");
    };
    assert_eq!(reason, ThawReason::StdinClosed);
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
        &HoldBounds::default(),
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

fn thawed_line(reason: ThawReason) -> String {
    serde_json::to_string(&HolderLine::Thawed(Resumed {
        reason,
        outcomes: vec![],
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
        .arg(thawed_line(ThawReason::StdinClosed));
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
    let resumed = held.thaw(Duration::from_secs(10)).unwrap();
    assert_eq!(resumed.reason, ThawReason::StdinClosed);
    assert!(resumed.outcomes.is_empty());
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
    assert!(
        parse_line(b"{\"thawed\":[]}").is_err(),
        "the reason is required"
    );
    assert_eq!(
        parse_line(
            b"{\"thawed\":{\"reason\":{\"no_heartbeat\":{\"waited_ms\":5001}},\"outcomes\":[]}}"
        )
        .unwrap(),
        HolderLine::Thawed(Resumed {
            reason: ThawReason::NoHeartbeat { waited_ms: 5001 },
            outcomes: vec![]
        })
    );
}

/// The child's lines as they arrive, each with the instant it was read.
fn read_lines_timed(stream: UnixStream) -> std::sync::mpsc::Receiver<(Instant, HolderLine)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            let parsed = parse_line(line.as_bytes()).unwrap();
            if tx.send((Instant::now(), parsed)).is_err() {
                return;
            }
        }
    });
    rx
}

/// A stand-in parent: a real process that writes a heartbeat line every 100 ms to the
/// pipe it returns (the child's stdin).
fn heartbeating_parent() -> (Child, ChildStdout) {
    let mut parent = Command::new("sh")
        .arg("-c")
        .arg("while :; do printf '%s\\n' '\"heartbeat\"' || exit; sleep 0.1; done")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pipe = parent.stdout.take().unwrap();
    (parent, pipe)
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Runs [`serve`] over [`two_ufs`] with `input` as its stdin and `bounds`, while `watch`
/// gets its lines; returns what `watch` returned and what the fake suspender did.
fn serve_watched<T: Send + 'static>(
    input: BorrowedFd<'_>,
    bounds: HoldBounds,
    watch: impl FnOnce(std::sync::mpsc::Receiver<(Instant, HolderLine)>) -> T + Send + 'static,
) -> (T, Vec<String>) {
    let (parent_end, child_end) = UnixStream::pair().unwrap();
    let log = Rc::new(RefCell::new(Vec::new()));
    let ufs = FakeUfs {
        log: log.clone(),
        fail: None,
    };
    let watcher = std::thread::spawn(move || watch(read_lines_timed(parent_end)));
    let mut output = &child_end;
    serve(
        Ok(two_ufs()),
        &ufs,
        &NoPools,
        input,
        &mut output,
        &AtomicBool::new(false),
        &bounds,
    )
    .unwrap();
    drop(child_end);
    let watched = watcher.join().unwrap();
    let log = log.borrow().clone();
    (watched, log)
}

/// The next line within 10 s (longer than any bound these tests set).
fn next_line(
    lines: &std::sync::mpsc::Receiver<(Instant, HolderLine)>,
) -> Option<(Instant, HolderLine)> {
    lines.recv_timeout(Duration::from_secs(10)).ok()
}

#[test]
fn heartbeats_keep_the_child_holding_and_a_stopped_parent_makes_it_resume() {
    let (mut parent, pipe) = heartbeating_parent();
    let timeout = Duration::from_millis(500);
    let bounds = HoldBounds {
        max_hold: None,
        heartbeat_timeout: timeout,
    };
    let stopper = Arc::new(Mutex::new(None::<Instant>));
    let stopped_at = stopper.clone();
    let pid = parent.id();
    let ((frozen, early, thawed), log) = serve_watched(pipe.as_fd(), bounds, move |lines| {
        let frozen = next_line(&lines);
        // Six heartbeat timeouts with heartbeats coming: it must still hold.
        let early = lines.recv_timeout(6 * timeout).ok();
        let stop = Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(stop.success());
        *stopper.lock().unwrap() = Some(Instant::now());
        let thawed = next_line(&lines);
        if thawed.is_none() {
            // Without a heartbeat bound the child would hold for ever: end the test.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        (frozen, early, thawed)
    });
    signal(&parent, "KILL");
    signal(&parent, "CONT");
    let _ = parent.wait();
    assert!(
        matches!(frozen, Some((_, HolderLine::Frozen(_)))),
        "{frozen:?}"
    );
    assert!(early.is_none(), "resumed while heartbeats came: {early:?}");
    let (at, line) = thawed.expect("no thawed line within 10 s of SIGSTOP");
    let HolderLine::Thawed(Resumed { reason, outcomes }) = line else {
        panic!("{line:?}");
    };
    assert!(
        matches!(reason, ThawReason::NoHeartbeat { waited_ms } if waited_ms >= 500),
        "{reason:?}"
    );
    assert_eq!(outcomes.len(), 2);
    let stopped = stopped_at.lock().unwrap().unwrap();
    assert!(
        at.duration_since(stopped) < Duration::from_secs(5),
        "resumed {:?} after the parent stopped, with a bound of {timeout:?}",
        at.duration_since(stopped)
    );
    assert_eq!(
        log,
        ["suspend /data", "suspend /", "resume /", "resume /data"]
    );
}

#[test]
fn past_its_hard_bound_the_child_resumes_though_heartbeats_come() {
    let (mut parent, pipe) = heartbeating_parent();
    let bounds = HoldBounds {
        max_hold: Some(Duration::from_millis(700)),
        heartbeat_timeout: Duration::from_secs(5),
    };
    let pid = parent.id();
    let ((frozen, thawed), log) = serve_watched(pipe.as_fd(), bounds, move |lines| {
        let frozen = next_line(&lines);
        let thawed = next_line(&lines);
        if thawed.is_none() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        (frozen, thawed)
    });
    signal(&parent, "KILL");
    let _ = parent.wait();
    assert!(
        matches!(frozen, Some((_, HolderLine::Frozen(_)))),
        "{frozen:?}"
    );
    let (at, line) = thawed.expect("no thawed line");
    assert_eq!(
        line,
        HolderLine::Thawed(Resumed {
            reason: ThawReason::HoldLimit { limit_ms: 700 },
            outcomes: vec![
                ResumeOutcome {
                    name: "/".into(),
                    error: None
                },
                ResumeOutcome {
                    name: "/data".into(),
                    error: None
                }
            ],
        })
    );
    let frozen_at = frozen.unwrap().0;
    assert!(at.duration_since(frozen_at) < Duration::from_secs(5));
    assert_eq!(log.len(), 4, "{log:?}");
}

#[test]
fn a_parent_that_writes_nothing_gets_the_child_resumed() {
    // The parent's end stays open and silent, as a hung daemon's would.
    let (silent_parent, child_stdin) = UnixStream::pair().unwrap();
    let bounds = HoldBounds {
        max_hold: None,
        heartbeat_timeout: Duration::from_millis(300),
    };
    let (lines, _) = serve_watched(child_stdin.as_fd(), bounds, move |lines| {
        let frozen = next_line(&lines);
        let thawed = next_line(&lines);
        // Closing it ends a hold that the missing heartbeats did not.
        drop(silent_parent);
        (frozen, thawed)
    });
    if lines.1.is_none() {
        panic!("still holding after 10 s without a heartbeat");
    }
    let (_, thawed) = lines.1.unwrap();
    assert!(
        matches!(
            thawed,
            HolderLine::Thawed(Resumed {
                reason: ThawReason::NoHeartbeat { .. },
                ..
            })
        ),
        "{thawed:?}"
    );
}

#[test]
fn a_malformed_line_on_stdin_resumes_with_the_error() {
    let bad: [&[u8]; 6] = [
        b"heartbeat\n",
        b"\"thaw\"\n",
        b"{\"heartbeat\":1}\n",
        b"\"heartbeat\"\n\xff\xfe\n",
        b"\n",
        &[b'x'; MAX_PARENT_LINE + 10],
    ];
    for input in bad {
        let (mut writer, child_stdin) = UnixStream::pair().unwrap();
        std::io::Write::write_all(&mut writer, input).unwrap();
        let (lines, log) = serve_watched(child_stdin.as_fd(), HoldBounds::default(), |lines| {
            let frozen = next_line(&lines);
            let thawed = next_line(&lines);
            (frozen, thawed)
        });
        let thawed = lines.1.map(|(_, l)| l);
        assert!(
            matches!(
                &thawed,
                Some(HolderLine::Thawed(Resumed {
                    reason: ThawReason::BadInput { .. },
                    ..
                }))
            ),
            "{:?}: {thawed:?}",
            String::from_utf8_lossy(&input[..input.len().min(40)])
        );
        assert_eq!(log.len(), 4, "{log:?}");
        drop(writer);
    }
}

#[test]
fn parse_parent_line_takes_only_a_heartbeat() {
    assert_eq!(
        parse_parent_line(b"\"heartbeat\"").unwrap(),
        ParentLine::Heartbeat
    );
    assert_eq!(
        serde_json::to_vec(&ParentLine::Heartbeat).unwrap(),
        b"\"heartbeat\""
    );
    for bad in [&b""[..], b"null", b"\"Heartbeat\"", b"[\"heartbeat\"]"] {
        assert!(parse_parent_line(bad).is_err(), "{bad:?}");
    }
    assert!(parse_parent_line(&vec![b' '; MAX_PARENT_LINE + 1]).is_err());
}

#[test]
fn hold_bounds_go_on_the_command_line_in_milliseconds() {
    let bounds = HoldBounds {
        max_hold: Some(Duration::from_millis(25_500)),
        heartbeat_timeout: HEARTBEAT_TIMEOUT,
    };
    assert_eq!(
        bounds.args(),
        ["--heartbeat-timeout-ms", "5000", "--max-hold-ms", "25500"]
    );
    assert_eq!(
        HoldBounds::default().args(),
        ["--heartbeat-timeout-ms", "5000"]
    );
}

#[test]
fn heartbeats_reach_the_child_and_its_own_resume_is_seen() {
    // Reads two lines; if both are heartbeats, says it resumed on its own (as a child
    // whose parent then went quiet would).
    let script = format!(
        "echo \"$1\"; read -r a; read -r b; [ \"$a\" = '\"heartbeat\"' ] && [ \"$b\" = '\"heartbeat\"' ] && echo '{}'; exec sleep 60",
        thawed_line(ThawReason::NoHeartbeat { waited_ms: 5000 })
    );
    let mut held = HeldByChild::spawn(stand_in(&script), Duration::from_secs(10)).unwrap();
    let pid = held.pid() as i32;
    assert!(held.resumed_on_its_own().is_none(), "it holds");
    let sender = held.heartbeat_sender();
    sender.beat().unwrap();
    sender.beat().unwrap();
    let resumed = (0..500)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(10));
            held.resumed_on_its_own()
        })
        .expect("the child's own resume was not seen")
        .unwrap();
    assert_eq!(resumed.reason, ThawReason::NoHeartbeat { waited_ms: 5000 });
    assert!(!resumed.reason.was_asked());
    assert!(!hv_vss_sys::process::process_alive(pid), "reaped");
    assert!(sender.beat().is_err(), "its stdin is closed");
}

#[test]
fn a_holder_that_dies_is_seen_as_resumed_by_the_kernel() {
    let mut held = HeldByChild::spawn(
        stand_in("echo \"$1\"; read -r a; exit 3"),
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(held.resumed_on_its_own().is_none());
    held.heartbeat_sender().beat().unwrap();
    let ended = (0..500)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(10));
            held.resumed_on_its_own()
        })
        .expect("its death was not seen");
    assert!(
        matches!(&ended, Err(HolderProcessError::Protocol(m)) if m.contains("closed its stdout")),
        "{ended:?}"
    );
}
