//! The FreeBSD worker on Linux: a stand-in holder (a shell script speaking the holder
//! protocol: `frozen` or `failed` on stdout, hold until stdin closes, `thawed`, or resume
//! on its own as a real holder does when the heartbeats stop) and a given plan; what is
//! FreeBSD's (getfsstat, UFSSUSPEND) is not exercised here. [`real_holder`] runs the
//! worker over the real child side of the protocol, with a fake suspender.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hv_vss_freezer::freebsd_freeze::FreeBsdFreezeReport;
use hv_vss_freezer::freebsd_plan::{BsdVeto, FreeBsdPlan, VetoReason};
use hv_vss_freezer::holder_process::{FailKind, HolderLine, Resumed, ThawReason};
use hv_vss_freezer::suspend_set::ResumeOutcome;

use super::*;

mod real_holder;

fn line(l: &HolderLine) -> String {
    serde_json::to_string(l).unwrap()
}

fn frozen_line() -> String {
    line(&HolderLine::Frozen(FreeBsdFreezeReport {
        suspended: vec!["/var".into(), "/".into()],
        zfs_synced: vec![],
        zfs_note: None,
        skipped: vec![],
        zfs_sync_took: Duration::ZERO,
        suspend_took: Duration::from_millis(3),
    }))
}

fn thawed_line(error: Option<&str>) -> String {
    thawed_because(ThawReason::StdinClosed, error)
}

fn thawed_because(reason: ThawReason, error: Option<&str>) -> String {
    line(&HolderLine::Thawed(Resumed {
        reason,
        outcomes: vec![
            ResumeOutcome {
                name: "/".into(),
                error: error.map(str::to_owned),
            },
            ResumeOutcome {
                name: "/var".into(),
                error: None,
            },
        ],
    }))
}

/// A holder script in `dir`: `body` runs with the lines in $FROZEN / $THAWED / $FAILED and
/// writes `ended` into `dir` when it exits.
fn holder(dir: &Path, body: &str, thawed: &str) -> (HolderCommand, PathBuf) {
    let script = dir.join("holder.sh");
    let ended = dir.join("ended");
    let failed = line(&HolderLine::Failed {
        kind: FailKind::Suspend,
        message: "suspending /var failed: EDEADLK; 1 already suspended were resumed".into(),
    });
    std::fs::write(
        &script,
        format!(
            "trap 'echo done > {ended}' EXIT\nFROZEN='{}'\nTHAWED='{}'\nFAILED='{}'\n{body}\n",
            frozen_line(),
            thawed,
            failed,
            ended = ended.display()
        ),
    )
    .unwrap();
    let command: HolderCommand = Arc::new(move || {
        let mut c = Command::new("sh");
        c.arg(&script);
        c
    });
    (command, ended)
}

const HOLDS: &str = "printf '%s\\n' \"$FROZEN\"; cat >/dev/null; printf '%s\\n' \"$THAWED\"";

fn setup(plan: FreeBsdPlan, holder: HolderCommand) -> FsSetup {
    FsSetup {
        plan: Arc::new(move || Ok(plan.clone())),
        holder,
        freeze_deadline: Duration::from_secs(5),
        thaw_deadline: Duration::from_secs(5),
        link: HolderLink::default(),
        heartbeat_timeout: Duration::from_secs(5),
    }
}

/// The next outcome (waits on the wake fd, as the main loop does).
fn next(worker: &FsWorker) -> FsOutcome {
    for _ in 0..200 {
        let readable =
            hv_vss_sys::poll::poll_readable(worker.wake_fd(), Some(Duration::from_millis(50)))
                .unwrap();
        if readable == hv_vss_sys::poll::Readable::Yes {
            let mut all = worker.drain();
            if !all.is_empty() {
                assert_eq!(all.len(), 1, "{all:?}");
                return all.remove(0);
            }
        }
    }
    panic!("no outcome");
}

/// Sends FREEZE and returns its outcome.
fn freeze(worker: &FsWorker, txn: u64, epoch: u64) -> FsOutcome {
    worker.send(FsCommand::Freeze {
        txn: TxnId(txn),
        epoch: Epoch(epoch),
    });
    next(worker)
}

/// Sends FREEZE and expects it to succeed.
fn freezes(worker: &FsWorker, txn: u64, epoch: u64) {
    match freeze(worker, txn, epoch) {
        FsOutcome::Frozen { result: Ok(()), .. } => {}
        other => panic!("{other:?}"),
    }
}

/// Sends THAW, expects it to fail with nothing left held, and returns its epoch and error.
fn thaw_fails(worker: &FsWorker, txn: u64) -> (Epoch, String) {
    worker.send(FsCommand::Thaw { txn: TxnId(txn) });
    match next(worker) {
        FsOutcome::Thawed {
            result: Err(e),
            all_thawed: true,
            epoch,
            ..
        } => (epoch, e.detail),
        other => panic!("{other:?}"),
    }
}

fn wait_for(path: &Path) -> bool {
    (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        path.exists()
    })
}

#[test]
fn freeze_is_held_by_the_child_until_thaw_closes_its_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let (command, ended) = holder(dir.path(), HOLDS, &thawed_line(None));
    let worker = FsWorker::start(setup(FreeBsdPlan::default(), command)).unwrap();
    worker.send(FsCommand::Check { txn: TxnId(1) });
    assert!(matches!(
        next(&worker),
        FsOutcome::Checked { result: Ok(()), .. }
    ));
    match freeze(&worker, 1, 4) {
        FsOutcome::Frozen {
            result: Ok(()),
            epoch: Epoch(4),
            nothing_frozen: false,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(!ended.exists(), "the holder did not hold");
    worker.send(FsCommand::Thaw { txn: TxnId(1) });
    match next(&worker) {
        FsOutcome::Thawed {
            result: Ok(()),
            all_thawed: true,
            epoch: Epoch(4),
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert!(wait_for(&ended));
}

#[test]
fn a_failed_freeze_says_why_and_that_nothing_is_frozen() {
    let dir = tempfile::tempdir().unwrap();
    let (command, _) = holder(dir.path(), "printf '%s\\n' \"$FAILED\"", "");
    let worker = FsWorker::start(setup(FreeBsdPlan::default(), command)).unwrap();
    match freeze(&worker, 2, 1) {
        FsOutcome::Frozen {
            result: Err(e),
            nothing_frozen: true,
            ..
        } => assert!(e.detail.contains("EDEADLK"), "{e:?}"),
        other => panic!("{other:?}"),
    }
    // THAW with nothing held: nothing to do.
    worker.send(FsCommand::Thaw { txn: TxnId(2) });
    assert!(matches!(
        next(&worker),
        FsOutcome::Thawed { result: Ok(()), .. }
    ));
}

#[test]
fn a_holder_that_never_answers_is_killed_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (command, _) = holder(dir.path(), "sleep 30", "");
    let mut s = setup(FreeBsdPlan::default(), command);
    s.freeze_deadline = Duration::from_millis(300);
    let worker = FsWorker::start(s).unwrap();
    match freeze(&worker, 3, 1) {
        FsOutcome::Frozen {
            result: Err(e),
            nothing_frozen: true,
            ..
        } => assert!(e.detail.contains("did not answer"), "{e:?}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_resume_error_is_reported_and_the_worker_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (command, _) = holder(dir.path(), HOLDS, &thawed_line(Some("UFSRESUME: EINVAL")));
    let worker = FsWorker::start(setup(FreeBsdPlan::default(), command)).unwrap();
    freezes(&worker, 1, 1);
    let (_, error) = thaw_fails(&worker, 1);
    assert!(error.contains("/: UFSRESUME: EINVAL"), "{error}");
    freezes(&worker, 2, 2);
}

#[test]
fn a_vetoed_plan_fails_the_check_naming_the_mount() {
    let dir = tempfile::tempdir().unwrap();
    let (command, _) = holder(dir.path(), HOLDS, &thawed_line(None));
    let plan = FreeBsdPlan {
        vetoes: vec![BsdVeto {
            mount_point: "/data".into(),
            fstype: "ext2fs".into(),
            reason: VetoReason::CannotQuiesce,
        }],
        ..FreeBsdPlan::default()
    };
    let worker = FsWorker::start(setup(plan, command)).unwrap();
    worker.send(FsCommand::Check { txn: TxnId(1) });
    match next(&worker) {
        FsOutcome::Checked { result: Err(e), .. } => {
            assert!(e.detail.contains("/data (ext2fs)"), "{e:?}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_worker_dropped_while_holding_ends_the_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (command, ended) = holder(dir.path(), HOLDS, &thawed_line(None));
    let worker = FsWorker::start(setup(FreeBsdPlan::default(), command)).unwrap();
    freezes(&worker, 1, 1);
    drop(worker);
    assert!(wait_for(&ended), "the holder still holds");
}

#[test]
fn the_holder_gets_its_bounds_and_the_loops_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let args = dir.path().join("args");
    let beats = dir.path().join("beats");
    // Records its arguments and the first two lines on its stdin, then holds.
    let body = format!(
        "printf '%s\\n' \"$@\" > {args}; printf '%s\\n' \"$FROZEN\"; read -r a; read -r b; printf '%s\\n' \"$a\" \"$b\" > {beats}.tmp; mv {beats}.tmp {beats}; cat >/dev/null; printf '%s\\n' \"$THAWED\"",
        args = args.display(),
        beats = beats.display()
    );
    let (command, _) = holder(dir.path(), &body, &thawed_line(None));
    let s = setup(FreeBsdPlan::default(), command);
    let link = s.link.clone();
    // What the main loop does before it sends FREEZE.
    link.set_deadline(Some(Duration::from_secs(30)));
    let worker = FsWorker::start(s).unwrap();
    freezes(&worker, 1, 1);
    link.heartbeat();
    link.heartbeat();
    assert!(wait_for(&beats), "no heartbeats reached the holder");
    assert_eq!(
        std::fs::read_to_string(&beats).unwrap(),
        "\"heartbeat\"\n\"heartbeat\"\n"
    );
    let args = std::fs::read_to_string(&args).unwrap();
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(
        args[..3],
        ["--heartbeat-timeout-ms", "5000", "--max-hold-ms"]
    );
    let max_hold: u64 = args[3].parse().unwrap();
    assert!((25_000..=30_000).contains(&max_hold), "{max_hold}");
    worker.send(FsCommand::Thaw { txn: TxnId(1) });
    assert!(matches!(
        next(&worker),
        FsOutcome::Thawed { result: Ok(()), .. }
    ));
}

#[test]
fn a_holder_that_resumed_on_its_own_is_reported_and_the_thaw_fails() {
    let dir = tempfile::tempdir().unwrap();
    // Holds a moment, then resumes as a real holder does when no heartbeat comes.
    let (command, ended) = holder(
        dir.path(),
        "printf '%s\\n' \"$FROZEN\"; sleep 0.3; printf '%s\\n' \"$THAWED\"",
        &thawed_because(ThawReason::NoHeartbeat { waited_ms: 5003 }, None),
    );
    let worker = FsWorker::start(setup(FreeBsdPlan::default(), command)).unwrap();
    freezes(&worker, 1, 7);
    match next(&worker) {
        FsOutcome::ThawedOnItsOwn {
            epoch: Epoch(7),
            cause,
        } => assert!(
            cause.contains("no heartbeat from hv-vssd for 5003 ms"),
            "{cause}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(wait_for(&ended), "the holder was not reaped");
    // The host's THAW (or the compensation's) must fail: the snapshot may be unfrozen.
    let (epoch, error) = thaw_fails(&worker, 1);
    assert_eq!(epoch, Epoch(7));
    assert!(error.contains("undone before THAW"), "{error}");
    // And the worker goes on serving.
    freezes(&worker, 2, 8);
}

#[test]
fn a_holder_that_dies_while_holding_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (command, _) = holder(
        dir.path(),
        "printf '%s\\n' \"$FROZEN\"; sleep 0.3; exit 9",
        "",
    );
    let worker = FsWorker::start(setup(FreeBsdPlan::default(), command)).unwrap();
    freezes(&worker, 1, 1);
    match next(&worker) {
        FsOutcome::ThawedOnItsOwn { cause, .. } => {
            assert!(cause.contains("the kernel resumed what it held"), "{cause}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_thaw_that_finds_the_holder_already_resumed_fails() {
    let dir = tempfile::tempdir().unwrap();
    // Says at THAW that it had resumed on its own before (its line not yet seen).
    let (command, _) = holder(
        dir.path(),
        HOLDS,
        &thawed_because(ThawReason::HoldLimit { limit_ms: 25_000 }, None),
    );
    let worker = FsWorker::start(setup(FreeBsdPlan::default(), command)).unwrap();
    freezes(&worker, 1, 1);
    let (_, error) = thaw_fails(&worker, 1);
    assert!(
        error.contains("already resumed on its own before THAW: its hard bound of 25000 ms passed"),
        "{error}"
    );
}
