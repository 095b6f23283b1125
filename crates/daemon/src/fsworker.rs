//! The filesystem worker: runs the freezer's preflight, freeze and thaw on its own thread,
//! so a hung FIFREEZE never blocks the main loop, the watchdog or signal handling.
//!
//! # Contract with the coordinator
//!
//! Commands run one at a time, in the order sent. A `Thaw` sent while a `Freeze` of the same
//! transaction still runs also *cancels* that freeze at once (the core's `ThawFs` contract:
//! the request was given up, so nothing more may be frozen for it): the freezer stops before
//! its flush, its first FIFREEZE or its next level and rolls back; the queued `Thaw` then
//! runs and answers (the coordinator ignores the late `FsFrozen`). Each command produces one
//! [`FsOutcome`], sent on a channel, and the wake fd is written so the main loop's `poll`
//! returns. A panic in the freezer is caught and answered as a failure (what froze is
//! thawed by unwinding), so the coordinator is never left waiting for an answer.
//!
//! The plan is made from the mount table at each check (reading `/proc` and `/sys` only),
//! so mounts made after start are seen. FREEZE reuses the check's plan when the mount table
//! has not changed since (one `poll` of the still open mountinfo file,
//! [`hv_vss_freezer::MountTableWatch`]) and plans again otherwise, before the first FIFREEZE
//! either way; [`FreezeReport::plan_reused`] says which.
//!
//! A passing check also starts flushing the planned filesystems ahead of FREEZE
//! ([`hv_vss_freezer::FlushAhead`], for at most [`FLUSH_AHEAD_BUDGET`]) after its answer is
//! sent; a failing check stops it. `Freeze` stops it and waits for its running `syncfs`
//! calls (bounded by the freeze deadline: a flush that misses it fails the freeze, nothing
//! frozen, and its device is not flushed ahead again until that call returns), so no flush
//! of ours ever runs beside a freeze. The flush threads it stopped exit only once the
//! freeze has returned ([`FlushAhead::release`]): an exit beside a FIFREEZE slows it
//! ([`hv_vss_freezer::exit_gate`]).
//!
//! A thaw that leaves members frozen (FITHAW failing) is retried every
//! [`THAW_RETRY_INTERVAL`] until it completes; [`FsOutcome::Thawed::all_thawed`] (or a later
//! [`FsOutcome::RetryThawed`]) tells the main loop when nothing of ours is frozen any more,
//! which is when it may write logs and files again (R60). Every outcome carries the
//! [`Epoch`] of the last `Freeze` the worker had taken, so the main loop's
//! [`crate::safety::FreezeSafety`] can tell a stale "nothing frozen" from a current one.
//! Thaws are panic-guarded like freezes: a panic in one is answered as a failed thaw and
//! the set is kept and retried, never dropped unanswered.
//!
//! With a [`FreezeWatch`] in the setup (the daemon's guardian link), the freezer arms it
//! with each filesystem's fd before its FIFREEZE and disarms it when it is not ours any
//! more; a freeze whose arm fails fails before that FIFREEZE.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use hv_vss_core::{FsError, FsResult};
use hv_vss_freezer::{
    CompiledConfig, FlushAhead, FlushPolicy, FreezeOptions, FreezeReport, FreezeWatch, FrozenSet,
    MountSource, MountTableWatch, Plan, Selection, ThawReport,
};
use rustix::event::EventfdFlags;

use crate::safety::Epoch;

/// How long a passing check's flush-ahead keeps repeating its passes when no FREEZE comes.
pub const FLUSH_AHEAD_BUDGET: Duration = Duration::from_secs(10);

/// How recent a flush-ahead pass must be for FREEZE to trust that it found the filesystems
/// clean (two pass intervals: the last pass before FREEZE was cancelled).
pub const FOUND_CLEAN_WITHIN: Duration = Duration::from_millis(200);

/// How often a set with only abandoned FIFREEZE calls in flight looks whether they returned.
const ABANDONED_POLL: Duration = Duration::from_millis(20);

use crate::fswork::THAW_RETRY_INTERVAL;
pub use crate::fswork::{FsCommand, FsOutcome};

/// What the worker needs to plan and freeze.
#[derive(Clone)]
pub struct FsSetup {
    pub source: MountSource,
    pub selection: Selection,
    pub config: CompiledConfig,
    pub options: FreezeOptions,
    /// Told what may be frozen before each FIFREEZE (the guardian link).
    pub watch: Option<Arc<dyn FreezeWatch>>,
}

impl std::fmt::Debug for FsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsSetup")
            .field("selection", &self.selection)
            .field("options", &self.options)
            .field("watched", &self.watch.is_some())
            .finish_non_exhaustive()
    }
}

/// Handle to the worker thread.
#[derive(Debug)]
pub struct FsWorker {
    commands: Option<Sender<FsCommand>>,
    outcomes: Receiver<FsOutcome>,
    wake: Arc<OwnedFd>,
    /// Highest transaction a `Thaw` was sent for: a freeze of that or an earlier
    /// transaction is cancelled.
    thaw_sent_through: Arc<AtomicU64>,
    /// The worker's flusher, for tests to observe.
    #[cfg(test)]
    flusher: Arc<FlushAhead>,
    thread: Option<JoinHandle<()>>,
}

impl FsWorker {
    /// Starts the worker thread.
    pub fn start(setup: FsSetup) -> std::io::Result<Self> {
        let wake = Arc::new(rustix::event::eventfd(
            0,
            EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
        )?);
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (out_tx, out_rx) = mpsc::channel();
        let thread_wake = Arc::clone(&wake);
        let thaw_sent_through = Arc::new(AtomicU64::new(0));
        let cancel = Arc::clone(&thaw_sent_through);
        let worker_flusher = Arc::new(FlushAhead::new());
        #[cfg(test)]
        let flusher = Arc::clone(&worker_flusher);
        let thread = std::thread::Builder::new()
            .name("hv-vss-fs".into())
            .spawn(move || {
                run(
                    setup,
                    &cmd_rx,
                    &out_tx,
                    &thread_wake,
                    &cancel,
                    &worker_flusher,
                );
            })?;
        Ok(Self {
            commands: Some(cmd_tx),
            outcomes: out_rx,
            wake,
            thaw_sent_through,
            #[cfg(test)]
            flusher,
            thread: Some(thread),
        })
    }

    /// Queues a command. A `Thaw` also cancels a running freeze of its transaction.
    pub fn send(&self, command: FsCommand) {
        if let FsCommand::Thaw { txn } = command {
            self.thaw_sent_through.fetch_max(txn.0, Ordering::SeqCst);
        }
        if let Some(tx) = &self.commands {
            // The worker only exits when the sender is dropped.
            let _ = tx.send(command);
        }
    }

    /// The flush-ahead of this worker (its counters).
    #[cfg(test)]
    pub fn flusher(&self) -> &FlushAhead {
        &self.flusher
    }

    /// The fd that becomes readable when outcomes are waiting.
    pub fn wake_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Takes every outcome waiting (and resets the wake fd).
    pub fn drain(&self) -> Vec<FsOutcome> {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&*self.wake, &mut buf);
        self.outcomes.try_iter().collect()
    }
}

impl Drop for FsWorker {
    fn drop(&mut self) {
        // Dropping the sender ends the worker's loop; it thaws anything it still holds
        // (FrozenSet's Drop) before exiting.
        self.commands = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `work`, turning a panic into an error: the worker thread must outlive any bug in the
/// freezer, or the coordinator would wait forever for an answer.
fn guarded<T>(what: &str, work: impl FnOnce() -> Result<T, FsError>) -> Result<T, FsError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|panic| {
        let detail = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(FsError::new(format!(
            "internal error during {what}: {detail}"
        )))
    })
}

fn run(
    setup: FsSetup,
    commands: &Receiver<FsCommand>,
    out: &Sender<FsOutcome>,
    wake: &OwnedFd,
    thaw_sent_through: &AtomicU64,
    flusher: &FlushAhead,
) {
    let emit = |o: FsOutcome| {
        let _ = out.send(o);
        let _ = rustix::io::write(wake, &1u64.to_ne_bytes());
    };
    let mut held: Option<FrozenSet> = None;
    // The last passing check's plan and the mount table it was made from.
    let mut checked: Option<(Plan, MountTableWatch)> = None;
    // Set only when a `Thaw` left members frozen: a set held between FREEZE and THAW is
    // frozen on purpose and must never be thawed by the retry timer.
    let mut thaw_incomplete = false;
    // The last `Freeze` taken: every outcome says what it is up to date with.
    let mut epoch = Epoch::default();
    loop {
        // (An empty set still held is one whose thaw panicked after its last FITHAW: one
        // more `thaw` finishes it, removing journal and lock.)
        let retrying = thaw_incomplete && held.is_some();
        // Only abandoned FIFREEZE calls left (no FITHAW failing): look again soon, so the
        // journal and the log gate are let go as soon as they have returned.
        let only_abandoned = held
            .as_ref()
            .is_some_and(|s| s.members().is_empty() && !s.freezes_pending().is_empty());
        let interval = if only_abandoned {
            ABANDONED_POLL
        } else {
            THAW_RETRY_INTERVAL
        };
        let command = if retrying {
            match commands.recv_timeout(interval) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match commands.recv() {
                Ok(c) => Some(c),
                Err(_) => return,
            }
        };
        match command {
            None => {
                // Background retry of an incomplete thaw (R41).
                if let Some(set) = held.as_mut()
                    && let Ok(report) = guarded("the retried thaw", || Ok(set.thaw()))
                    && report.complete
                {
                    held = None;
                    thaw_incomplete = false;
                    emit(FsOutcome::RetryThawed { epoch, report });
                }
            }
            Some(FsCommand::Check { txn }) => {
                checked = None;
                let result = guarded("the preflight", || check(&setup)).map(|prepared| {
                    checked = Some(prepared);
                });
                let passed = result.is_ok();
                emit(FsOutcome::Checked { txn, result });
                // After the answer: flushing ahead never delays it. Never while anything of
                // ours is frozen (a check between FREEZE and THAW, or a thaw being retried).
                match &checked {
                    Some((plan, _)) if passed && held.is_none() => {
                        flusher.start(plan, FLUSH_AHEAD_BUDGET);
                    }
                    _ => flusher.cancel(),
                }
            }
            Some(FsCommand::Freeze {
                txn,
                epoch: freeze_epoch,
            }) => {
                epoch = freeze_epoch;
                if held.is_some() {
                    emit(FsOutcome::Frozen {
                        txn,
                        epoch,
                        result: Err(FsError::new(
                            "an earlier freeze is not fully thawed yet; retrying its thaw",
                        )),
                        report: None,
                        nothing_frozen: false,
                    });
                    continue;
                }
                // No flush of ours may run beside the freeze; one that does not return in
                // time fails it before anything is frozen.
                let waited = std::time::Instant::now();
                if let Err(hung) = flusher.cancel_and_wait(setup.options.freeze_deadline) {
                    flusher.release();
                    emit(FsOutcome::Frozen {
                        txn,
                        epoch,
                        result: Err(FsError::new(format!(
                            "not freezing: the flush ahead of the freeze is stuck ({hung}); FIFREEZE would wait for it"
                        ))),
                        report: None,
                        nothing_frozen: true,
                    });
                    continue;
                }
                let flush_ahead_wait_us =
                    u64::try_from(waited.elapsed().as_micros()).unwrap_or(u64::MAX);
                let cancelled = || thaw_sent_through.load(Ordering::SeqCst) >= txn.0;
                let mut failed_report = None;
                let prepared = checked.take();
                let frozen = guarded("the freeze", || {
                    freeze(&setup, prepared, flusher, &cancelled).map_err(|f| {
                        failed_report = f.report.map(|r| *r);
                        if let Some(rest) = f.unthawed {
                            // Still ours and still frozen: keep it and retry its thaw.
                            held = Some(*rest);
                            thaw_incomplete = true;
                        }
                        f.error
                    })
                });
                // Every FIFREEZE has returned: the stopped flush threads may exit now.
                flusher.release();
                let (result, report) = match frozen {
                    Ok(mut set) => {
                        set.report_mut().flush_ahead_wait_us = flush_ahead_wait_us;
                        let report = set.report().clone();
                        held = Some(set);
                        (Ok(()), Some(report))
                    }
                    Err(e) => (Err(e), failed_report),
                };
                emit(FsOutcome::Frozen {
                    txn,
                    epoch,
                    result,
                    report,
                    nothing_frozen: held.is_none(),
                });
            }
            Some(FsCommand::Thaw { txn }) => {
                let Some(set) = held.as_mut() else {
                    emit(FsOutcome::Thawed {
                        txn,
                        epoch,
                        result: Ok(()),
                        report: None,
                        all_thawed: true,
                    });
                    continue;
                };
                // A panic inside the thaw leaves the set held: answered as a failed thaw
                // and retried, never a coordinator waiting for ever.
                let (result, report) = match guarded("the thaw", || Ok(set.thaw())) {
                    Ok(report) => (thaw_result(&report), Some(report)),
                    Err(e) => (Err(e), None),
                };
                let all_thawed = report.as_ref().is_some_and(|r| r.complete);
                thaw_incomplete = !all_thawed;
                if all_thawed {
                    held = None;
                }
                emit(FsOutcome::Thawed {
                    txn,
                    epoch,
                    result,
                    report,
                    all_thawed,
                });
            }
        }
    }
}

fn plan(setup: &FsSetup) -> Result<(Plan, MountTableWatch), FsError> {
    hv_vss_freezer::make_plan_watched(&setup.source, &setup.selection, &setup.config)
        .map_err(|e| FsError::new(format!("plan: {e}")))
}

/// The preflight; its plan, for the freeze to reuse while the mount table stays unchanged.
fn check(setup: &FsSetup) -> Result<(Plan, MountTableWatch), FsError> {
    let (plan, watch) = plan(setup)?;
    hv_vss_freezer::preflight(&plan, &setup.options).map_err(|e| FsError::new(e.to_string()))?;
    Ok((plan, watch))
}

/// A failed freeze: the error, its report, and what its rollback could not thaw.
struct FreezeFailed {
    error: FsError,
    report: Option<Box<FreezeReport>>,
    unthawed: Option<Box<FrozenSet>>,
}

fn freeze(
    setup: &FsSetup,
    prepared: Option<(Plan, MountTableWatch)>,
    flusher: &FlushAhead,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<FrozenSet, FreezeFailed> {
    let early = |error| FreezeFailed {
        error,
        report: None,
        unthawed: None,
    };
    if cancelled() {
        return Err(early(FsError::new(
            "freeze cancelled: a thaw was asked for",
        )));
    }
    let reusable = prepared.and_then(|(plan, mut watch)| watch.unchanged().then_some(plan));
    let (plan, plan_reused) = match reusable {
        Some(plan) => (plan, true),
        None => (plan(setup).map_err(early)?.0, false),
    };
    // The fast path: the flush ahead has just found every filesystem clean (its last pass
    // wrote nothing to the block device, or, without I/O counters, cost no more than twice
    // a clean pass), so a flush now would only add its own cost to the answer; FIFREEZE
    // writes back the little left itself.
    let mut options = setup.options.clone();
    if flusher.found_clean(&plan, FOUND_CLEAN_WITHIN) {
        options.flush = FlushPolicy::Skip;
    }
    let mut frozen = match &setup.watch {
        Some(watch) => {
            hv_vss_freezer::freeze_watched(&plan, &options, cancelled, Arc::clone(watch))
        }
        None => hv_vss_freezer::freeze_cancellable(&plan, &options, cancelled),
    };
    match &mut frozen {
        Ok(set) => set.report_mut().plan_reused = plan_reused,
        Err(f) => f.report.plan_reused = plan_reused,
    }
    frozen.map_err(|f| {
        let pending = f
            .unthawed
            .as_ref()
            .map(|rest| rest.freezes_pending())
            .unwrap_or_default();
        let detail = if !pending.is_empty() {
            format!(
                "{} (FIFREEZE still running on {}: journal and lock kept until it returns and is thawed)",
                f.error,
                pending
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else if f.unthawed.is_some() {
            format!("{} (rollback incomplete: retrying its thaw)", f.error)
        } else {
            f.error.to_string()
        };
        FreezeFailed {
            error: FsError::new(detail),
            report: Some(f.report),
            unthawed: f.unthawed,
        }
    })
}

fn thaw_result(report: &ThawReport) -> FsResult {
    if report.complete {
        return Ok(());
    }
    let failed: Vec<String> = report
        .filesystems
        .iter()
        .filter_map(|f| match &f.outcome {
            hv_vss_freezer::FsThawOutcome::Failed { error } => {
                Some(format!("{}: {error}", f.mount_point.display()))
            }
            _ => None,
        })
        .collect();
    Err(FsError::new(format!(
        "thaw incomplete, retrying: {}",
        failed.join("; ")
    )))
}

/// The selection for the configured mounts (explicit list or discovery).
pub fn selection(mounts: &[PathBuf]) -> Selection {
    if mounts.is_empty() {
        Selection::Discover
    } else {
        Selection::Explicit(mounts.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fswork::THAW_RETRY_INTERVAL;
    use hv_vss_core::TxnId;
    use hv_vss_freezer::FreezerConfig;
    use hv_vss_testutil::{FsKind, LoopFs, WriteProbe};

    fn wait_outcome(worker: &FsWorker) -> FsOutcome {
        for _ in 0..600 {
            if let Some(o) = worker.drain().into_iter().next() {
                return o;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the worker gave no outcome within 30 s");
    }

    /// The next `n` outcomes, in order (a drain may return several at once).
    fn wait_outcomes(worker: &FsWorker, n: usize, within: Duration) -> Vec<FsOutcome> {
        let mut got = Vec::new();
        let end = std::time::Instant::now() + within;
        while got.len() < n {
            got.extend(worker.drain());
            if std::time::Instant::now() > end {
                panic!(
                    "the worker gave {} of {n} outcomes within {within:?}: {got:?}",
                    got.len()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        got
    }

    fn setup_for(fs: &LoopFs, state: &std::path::Path, config: &FreezerConfig) -> FsSetup {
        FsSetup {
            source: hv_vss_freezer::MountSource::current(),
            selection: Selection::Explicit(vec![fs.mount_point().to_path_buf()]),
            config: config.compile().expect("config"),
            options: FreezeOptions::new(config, state),
            watch: None,
        }
    }

    /// Regression: a THAW (or deadline, or SIGTERM) that reaches the worker while it is
    /// still freezing must stop the freeze (the core's `ThawFs` contract): the host has
    /// already been told E_FAIL, so nothing may be frozen on its behalf any more. The worker
    /// used to finish the whole freeze first, then thaw.
    #[test]
    fn thaw_sent_while_freezing_stops_the_freeze() {
        if hv_vss_testutil::skip_unless_root("fsworker cancel test") {
            return;
        }
        let _serial = hv_vss_testutil::serial();
        hv_vss_testutil::run_with_timeout(Duration::from_secs(120), || {
            let fs = LoopFs::new(FsKind::Ext4).expect("loop fs");
            let state = hv_vss_testutil::state_dir().expect("state dir");
            let worker = FsWorker::start(setup_for(&fs, state.path(), &FreezerConfig::default()))
                .expect("worker");
            let txn = TxnId(7);
            worker.send(FsCommand::Freeze {
                txn,
                epoch: Epoch(1),
            });
            worker.send(FsCommand::Thaw { txn });
            let outcomes = wait_outcomes(&worker, 2, Duration::from_secs(30));
            match &outcomes[0] {
                FsOutcome::Frozen {
                    result,
                    report,
                    nothing_frozen,
                    ..
                } => {
                    assert!(
                        result.is_err(),
                        "the freeze went ahead after its thaw: {report:?}"
                    );
                    let froze_any = report.as_ref().is_some_and(|r| {
                        r.filesystems
                            .iter()
                            .any(|f| f.outcome == hv_vss_freezer::FsFreezeOutcome::Frozen)
                    });
                    assert!(
                        !froze_any,
                        "a filesystem was frozen after the thaw was asked: {report:?}"
                    );
                    assert!(nothing_frozen);
                }
                other => panic!("expected Frozen, got {other:?}"),
            }
            match &outcomes[1] {
                FsOutcome::Thawed {
                    txn: t, all_thawed, ..
                } => {
                    assert_eq!(*t, txn);
                    assert!(all_thawed);
                }
                other => panic!("expected Thawed, got {other:?}"),
            }
            assert!(fs.writable_within(Duration::from_secs(5)));
            // A later transaction freezes normally: the cancel was for txn 7 only.
            let next = TxnId(8);
            worker.send(FsCommand::Freeze {
                txn: next,
                epoch: Epoch(2),
            });
            match wait_outcomes(&worker, 1, Duration::from_secs(30)).remove(0) {
                FsOutcome::Frozen { result, .. } => result.expect("freeze of the next txn"),
                other => panic!("expected Frozen, got {other:?}"),
            }
            worker.send(FsCommand::Thaw { txn: next });
            let _ = wait_outcomes(&worker, 1, Duration::from_secs(30));
            assert!(fs.writable_within(Duration::from_secs(5)));
        });
    }

    /// The freeze of the next transaction, thawed again; its report.
    fn freeze_and_thaw(worker: &FsWorker, txn: TxnId) -> FreezeReport {
        worker.send(FsCommand::Check { txn });
        expect_checked(worker).expect("check");
        let report = freeze_ok(worker, txn, "freeze");
        worker.send(FsCommand::Thaw { txn });
        match wait_outcomes(worker, 1, Duration::from_secs(30)).remove(0) {
            FsOutcome::Thawed { all_thawed, .. } => assert!(all_thawed),
            other => panic!("expected Thawed, got {other:?}"),
        }
        report
    }

    /// Sends `Freeze` for `txn` and expects it to succeed; its report.
    fn freeze_ok(worker: &FsWorker, txn: TxnId, what: &str) -> FreezeReport {
        worker.send(FsCommand::Freeze {
            txn,
            epoch: Epoch(txn.0),
        });
        match wait_outcomes(worker, 1, Duration::from_secs(30)).remove(0) {
            FsOutcome::Frozen { result, report, .. } => {
                result.unwrap_or_else(|e| panic!("{what}: {e:?}"));
                report.expect("report")
            }
            other => panic!("expected Frozen, got {other:?}"),
        }
    }

    fn frozen_devs(report: &FreezeReport) -> Vec<hv_vss_freezer::DevNum> {
        report
            .filesystems
            .iter()
            .filter(|f| f.outcome == hv_vss_freezer::FsFreezeOutcome::Frozen)
            .map(|f| f.dev)
            .collect()
    }

    /// FREEZE reuses the plan of the check before it when the mount table has not changed,
    /// and plans again when a mount or an unmount came in between: the listed directory is
    /// over-mounted by another filesystem after the check, so the freeze must freeze that
    /// one (the stale plan's mount is no longer reachable there); then the over-mount is
    /// removed after the check, and the freeze must freeze the first one again. In a private
    /// mount namespace, so that no other process's mounts count and nothing leaks.
    #[test]
    fn freeze_reuses_the_checked_plan_unless_a_mount_or_unmount_came_in_between() {
        if hv_vss_testutil::skip_unless_root("plan reuse test")
            || !hv_vss_testutil::in_private_mount_namespace(
                "fsworker::tests::freeze_reuses_the_checked_plan_unless_a_mount_or_unmount_came_in_between",
            )
        {
            return;
        }
        let _serial = hv_vss_testutil::serial();
        hv_vss_testutil::run_with_timeout(Duration::from_secs(120), || {
            let listed = LoopFs::new(FsKind::Ext4).expect("loop fs");
            let other = LoopFs::new(FsKind::Ext4).expect("second loop fs");
            let state = hv_vss_testutil::state_dir().expect("state dir");
            let worker =
                FsWorker::start(setup_for(&listed, state.path(), &FreezerConfig::default()))
                    .expect("worker");

            let report = freeze_and_thaw(&worker, TxnId(1));
            assert!(
                report.plan_reused,
                "nothing changed, yet FREEZE planned again"
            );
            assert_eq!(frozen_devs(&report), vec![listed.dev().unwrap()]);

            // A mount between check and freeze: `other` over-mounts the listed directory.
            worker.send(FsCommand::Check { txn: TxnId(2) });
            match wait_outcomes(&worker, 1, Duration::from_secs(30)).remove(0) {
                FsOutcome::Checked { result, .. } => result.expect("check"),
                o => panic!("expected Checked, got {o:?}"),
            }
            let over = listed.mount_point();
            std::process::Command::new("mount")
                .arg(other.loop_device())
                .arg(over)
                .status()
                .expect("mount")
                .success()
                .then_some(())
                .expect("over-mount");
            let report = freeze_ok(&worker, TxnId(2), "freeze after a mount");
            assert!(!report.plan_reused);
            assert_eq!(frozen_devs(&report), vec![other.dev().unwrap()]);
            // (The listed filesystem's own path now leads to `other`: only the report can
            // say it was left alone.)
            assert!(other.is_frozen().unwrap());
            worker.send(FsCommand::Thaw { txn: TxnId(2) });
            let _ = wait_outcomes(&worker, 1, Duration::from_secs(30));

            // An unmount between check and freeze: the listed filesystem is back.
            worker.send(FsCommand::Check { txn: TxnId(3) });
            let _ = wait_outcomes(&worker, 1, Duration::from_secs(30));
            hv_vss_testutil::unmount(over).expect("unmount the over-mount");
            let report = freeze_ok(&worker, TxnId(3), "freeze after an unmount");
            assert!(!report.plan_reused);
            assert_eq!(frozen_devs(&report), vec![listed.dev().unwrap()]);
            worker.send(FsCommand::Thaw { txn: TxnId(3) });
            let _ = wait_outcomes(&worker, 1, Duration::from_secs(30));
            assert!(listed.writable_within(Duration::from_secs(5)));
            assert!(other.writable_within(Duration::from_secs(5)));
        });
    }

    fn image_bytes(fs: &LoopFs) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(fs.image()).unwrap().blocks() * 512
    }

    fn write_dirty(fs: &LoopFs, mib: usize) {
        use std::io::Write;
        let mut f = std::fs::File::create(fs.mount_point().join("dirty")).unwrap();
        for _ in 0..mib {
            f.write_all(&[0x5a; 1 << 20]).unwrap();
        }
    }

    fn expect_checked(worker: &FsWorker) -> FsResult {
        match wait_outcomes(worker, 1, Duration::from_secs(30)).remove(0) {
            FsOutcome::Checked { result, .. } => result,
            other => panic!("expected Checked, got {other:?}"),
        }
    }

    /// Flush ahead: nothing is flushed after a failing check; a passing check writes the
    /// dirty data back with nothing frozen (writeback would otherwise wait 30 s for
    /// dirty_expire); FREEZE stops it: no flush call starts while frozen, nor after.
    #[test]
    fn a_passing_check_flushes_ahead_until_freeze() {
        hv_vss_testutil::freezing_test(Duration::from_secs(120), || {
            let fs = LoopFs::new(FsKind::Ext4).expect("loop fs");
            let dev = fs.dev().unwrap();
            let state = hv_vss_testutil::state_dir().expect("state dir");
            let config = FreezerConfig::default();

            // A check that fails (its state directory is a regular file) flushes nothing.
            let not_a_dir = state.path().join("file");
            std::fs::write(&not_a_dir, b"").unwrap();
            let failing = FsWorker::start(setup_for(&fs, &not_a_dir, &config)).unwrap();
            write_dirty(&fs, 8);
            let before = image_bytes(&fs);
            failing.send(FsCommand::Check { txn: TxnId(1) });
            assert!(expect_checked(&failing).is_err());
            std::thread::sleep(hv_vss_freezer::flush_ahead::PASS_INTERVAL * 5);
            assert_eq!(
                failing.flusher().calls(dev),
                0,
                "flushed after a failing check"
            );
            drop(failing);

            let worker = FsWorker::start(setup_for(&fs, state.path(), &config)).unwrap();
            worker.send(FsCommand::Check { txn: TxnId(2) });
            expect_checked(&worker).expect("check");
            let end = std::time::Instant::now() + Duration::from_secs(20);
            while image_bytes(&fs) < before + (8 << 20) {
                assert!(
                    std::time::Instant::now() < end,
                    "the dirty data was not written back after the check"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(worker.flusher().calls(dev) >= 1);

            worker.send(FsCommand::Freeze {
                txn: TxnId(2),
                epoch: Epoch(2),
            });
            match wait_outcomes(&worker, 1, Duration::from_secs(30)).remove(0) {
                FsOutcome::Frozen { result, .. } => result.expect("freeze"),
                other => panic!("expected Frozen, got {other:?}"),
            }
            assert_eq!(
                worker.flusher().in_flight(),
                0,
                "a flush runs beside the freeze"
            );
            let calls = worker.flusher().calls(dev);
            // A check while frozen starts no flush either.
            worker.send(FsCommand::Check { txn: TxnId(3) });
            let _ = expect_checked(&worker);
            std::thread::sleep(hv_vss_freezer::flush_ahead::PASS_INTERVAL * 5);
            assert_eq!(
                worker.flusher().calls(dev),
                calls,
                "a flush started while frozen"
            );
            worker.send(FsCommand::Thaw { txn: TxnId(2) });
            let _ = wait_outcomes(&worker, 1, Duration::from_secs(30));
            std::thread::sleep(hv_vss_freezer::flush_ahead::PASS_INTERVAL * 5);
            assert_eq!(
                worker.flusher().calls(dev),
                calls,
                "the flush resumed after FREEZE"
            );
        });
    }

    /// The fast path: one clean filesystem, found clean by the flush ahead, is frozen with
    /// no flush pass of the freeze's own, and still journaled while frozen (exactly that
    /// filesystem), thawed exactly, and the journal removed.
    #[test]
    fn the_fast_path_for_one_clean_filesystem_still_journals_and_thaws_it() {
        hv_vss_testutil::freezing_test(Duration::from_secs(120), || {
            let fs = LoopFs::new(FsKind::Ext4).expect("loop fs");
            let dev = fs.dev().unwrap();
            let state = hv_vss_testutil::state_dir().expect("state dir");
            let worker =
                FsWorker::start(setup_for(&fs, state.path(), &FreezerConfig::default())).unwrap();
            // The fast path is decided from pass times measured at run time; on a loaded
            // machine one pass may be slow enough to refuse it. A few tries, each thawed
            // exactly, and the fast path must be taken in one of them.
            let mut txn = 0;
            let mut refused = Vec::new();
            loop {
                txn += 1;
                worker.send(FsCommand::Check { txn: TxnId(txn) });
                expect_checked(&worker).expect("check");
                let calls = worker.flusher().calls(dev);
                let end = std::time::Instant::now() + Duration::from_secs(20);
                while worker.flusher().calls(dev) < calls + 4 {
                    assert!(std::time::Instant::now() < end, "no flush-ahead passes");
                    std::thread::sleep(Duration::from_millis(20));
                }
                let report = freeze_ok(&worker, TxnId(txn), "freeze");
                if report.flush_passes_us.is_empty() {
                    break;
                }
                refused.push(report);
                assert!(
                    refused.len() < 5,
                    "the fast path was never taken: {refused:?}"
                );
                worker.send(FsCommand::Thaw { txn: TxnId(txn) });
                match wait_outcomes(&worker, 1, Duration::from_secs(30)).remove(0) {
                    FsOutcome::Thawed { result, .. } => result.expect("thaw"),
                    other => panic!("expected Thawed, got {other:?}"),
                }
            }
            assert!(fs.is_frozen().unwrap());
            let journal = hv_vss_freezer::Journal::read(state.path())
                .expect("journal")
                .expect("a journal while frozen");
            let listed: Vec<_> = journal.filesystems.iter().map(|e| e.dev).collect();
            assert_eq!(listed, vec![dev]);
            worker.send(FsCommand::Thaw { txn: TxnId(txn) });
            match wait_outcomes(&worker, 1, Duration::from_secs(30)).remove(0) {
                FsOutcome::Thawed {
                    result,
                    report,
                    all_thawed,
                    ..
                } => {
                    result.expect("thaw");
                    assert!(all_thawed);
                    let thawed: Vec<_> = report
                        .expect("thaw report")
                        .filesystems
                        .iter()
                        .map(|f| f.dev)
                        .collect();
                    assert_eq!(thawed, vec![dev]);
                }
                other => panic!("expected Thawed, got {other:?}"),
            }
            assert!(fs.writable_within(Duration::from_secs(5)));
            assert!(
                hv_vss_freezer::Journal::read(state.path())
                    .unwrap()
                    .is_none()
            );
        });
    }

    /// A flush ahead that hangs (the filesystem's loop image lies on a filesystem this test
    /// froze) makes FREEZE fail at its deadline with nothing frozen, and the next check does
    /// not start another flush of that device.
    #[test]
    fn a_hung_flush_fails_the_freeze_and_is_not_restarted() {
        hv_vss_testutil::freezing_test(Duration::from_secs(120), || {
            let lower = LoopFs::create(FsKind::Ext4, 128, None).expect("lower");
            let upper = LoopFs::new_in(FsKind::Ext4, lower.mount_point()).expect("upper");
            let dev = upper.dev().unwrap();
            let state = hv_vss_testutil::state_dir().expect("state dir");
            let config = FreezerConfig {
                freeze_deadline_secs: 1,
                ..FreezerConfig::default()
            };
            let worker = FsWorker::start(setup_for(&upper, state.path(), &config)).unwrap();
            hv_vss_testutil::freeze_path(lower.mount_point()).unwrap();
            write_dirty(&upper, 4);
            worker.send(FsCommand::Check { txn: TxnId(1) });
            expect_checked(&worker).expect("check");
            worker.send(FsCommand::Freeze {
                txn: TxnId(1),
                epoch: Epoch(1),
            });
            match wait_outcomes(&worker, 1, Duration::from_secs(30)).remove(0) {
                FsOutcome::Frozen {
                    result,
                    nothing_frozen,
                    ..
                } => {
                    let e = result.expect_err("froze beside a stuck flush");
                    assert!(e.detail.contains("stuck"), "{e:?}");
                    assert!(nothing_frozen);
                }
                other => panic!("expected Frozen, got {other:?}"),
            }
            assert_eq!(worker.flusher().hung(), vec![dev]);
            worker.send(FsCommand::Check { txn: TxnId(2) });
            expect_checked(&worker).expect("check");
            std::thread::sleep(hv_vss_freezer::flush_ahead::PASS_INTERVAL * 5);
            assert_eq!(
                worker.flusher().calls(dev),
                1,
                "a hung flush was started again"
            );
            assert!(hv_vss_testutil::thaw_path(lower.mount_point()).unwrap());
            let end = std::time::Instant::now() + Duration::from_secs(30);
            while !worker.flusher().hung().is_empty() {
                assert!(
                    std::time::Instant::now() < end,
                    "the stuck flush never returned"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            drop(worker);
        });
    }

    /// Regression: a per-filesystem deadline from the config too large to add to the clock
    /// (`freezer.freeze_deadline_secs = 9223372036854775807` is valid TOML) panicked the
    /// freeze after FIFREEZE had started: the filesystem stayed frozen, the worker thread
    /// died, and the daemon never answered or thawed.
    #[test]
    fn an_enormous_freeze_deadline_neither_panics_nor_strands_a_freeze() {
        if hv_vss_testutil::skip_unless_root("fsworker deadline test") {
            return;
        }
        let _serial = hv_vss_testutil::serial();
        hv_vss_testutil::run_with_timeout(Duration::from_secs(120), || {
            let fs = LoopFs::new(FsKind::Ext4).expect("loop fs");
            let state = hv_vss_testutil::state_dir().expect("state dir");
            let config = FreezerConfig {
                freeze_deadline_secs: i64::MAX as u64,
                ..FreezerConfig::default()
            };
            let worker = FsWorker::start(setup_for(&fs, state.path(), &config)).expect("worker");
            let txn = TxnId(1);
            worker.send(FsCommand::Freeze {
                txn,
                epoch: Epoch(1),
            });
            match wait_outcomes(&worker, 1, Duration::from_secs(20)).remove(0) {
                FsOutcome::Frozen { result, .. } => result.expect("freeze"),
                other => panic!("expected Frozen, got {other:?}"),
            }
            worker.send(FsCommand::Thaw { txn });
            match wait_outcomes(&worker, 1, Duration::from_secs(20)).remove(0) {
                FsOutcome::Thawed { all_thawed, .. } => assert!(all_thawed),
                other => panic!("expected Thawed, got {other:?}"),
            }
            assert!(fs.writable_within(Duration::from_secs(5)));
        });
    }

    /// A watch whose first disarm panics: a bug inside the thaw.
    #[derive(Default)]
    struct PanicOnFirstDisarm(std::sync::atomic::AtomicBool);

    impl FreezeWatch for PanicOnFirstDisarm {
        fn arm(
            &self,
            _: hv_vss_freezer::DevNum,
            _: std::os::fd::BorrowedFd<'_>,
        ) -> std::io::Result<()> {
            Ok(())
        }
        fn disarm(&self, _: hv_vss_freezer::DevNum) {
            if !self.0.swap(true, Ordering::SeqCst) {
                panic!("injected panic inside the thaw");
            }
        }
    }

    /// Regression (issue 8, item 6): the worker's thaw paths were not panic-guarded, so a
    /// panic there killed the worker: the coordinator waited for ever and every later
    /// request was refused as busy. The thaw is now answered (as failed) and the next
    /// commands still are.
    #[test]
    fn a_panic_inside_a_thaw_is_answered_and_the_worker_goes_on() {
        if hv_vss_testutil::skip_unless_root("fsworker thaw panic test") {
            return;
        }
        let _serial = hv_vss_testutil::serial();
        hv_vss_testutil::run_with_timeout(Duration::from_secs(120), || {
            let fs = LoopFs::new(FsKind::Ext4).expect("loop fs");
            let state = hv_vss_testutil::state_dir().expect("state dir");
            let mut setup = setup_for(&fs, state.path(), &FreezerConfig::default());
            setup.watch = Some(Arc::new(PanicOnFirstDisarm::default()));
            let worker = FsWorker::start(setup).expect("worker");
            let txn = TxnId(1);
            worker.send(FsCommand::Freeze {
                txn,
                epoch: Epoch(1),
            });
            match wait_outcomes(&worker, 1, Duration::from_secs(30)).remove(0) {
                FsOutcome::Frozen { result, .. } => result.expect("freeze"),
                other => panic!("expected Frozen, got {other:?}"),
            }
            worker.send(FsCommand::Thaw { txn });
            match wait_outcomes(&worker, 1, Duration::from_secs(30)).remove(0) {
                FsOutcome::Thawed { result, .. } => {
                    let e = result.expect_err("the thaw panicked");
                    assert!(e.detail.contains("internal error"), "{e:?}");
                }
                other => panic!("expected Thawed, got {other:?}"),
            }
            // The retry finishes the set; the worker lives on and freezes again.
            match wait_outcomes(&worker, 1, Duration::from_secs(30)).remove(0) {
                FsOutcome::RetryThawed { .. } => {}
                other => panic!("expected RetryThawed, got {other:?}"),
            }
            assert!(fs.writable_within(Duration::from_secs(5)));
            let next = TxnId(2);
            worker.send(FsCommand::Freeze {
                txn: next,
                epoch: Epoch(2),
            });
            match wait_outcomes(&worker, 1, Duration::from_secs(30)).remove(0) {
                FsOutcome::Frozen { result, .. } => result.expect("the next freeze"),
                other => panic!("expected Frozen, got {other:?}"),
            }
            worker.send(FsCommand::Thaw { txn: next });
            match wait_outcomes(&worker, 1, Duration::from_secs(30)).remove(0) {
                FsOutcome::Thawed { all_thawed, .. } => assert!(all_thawed),
                other => panic!("expected Thawed, got {other:?}"),
            }
            assert!(fs.writable_within(Duration::from_secs(5)));
        });
    }

    /// Regression: the worker once treated a set held between FREEZE and THAW as an
    /// incomplete thaw and "retried" it after one second, thawing behind the host's back.
    #[test]
    fn held_set_stays_frozen_until_thaw_however_long_the_host_waits() {
        if hv_vss_testutil::skip_unless_root("fsworker hold test") {
            return;
        }
        let _serial = hv_vss_testutil::serial();
        hv_vss_testutil::run_with_timeout(Duration::from_secs(120), || {
            let fs = LoopFs::new(FsKind::Ext4).expect("loop fs");
            let state = hv_vss_testutil::state_dir().expect("state dir");
            let config = FreezerConfig::default();
            let setup = FsSetup {
                source: hv_vss_freezer::MountSource::current(),
                selection: Selection::Explicit(vec![fs.mount_point().to_path_buf()]),
                config: config.compile().expect("config"),
                options: FreezeOptions::new(&config, state.path()),
                watch: None,
            };
            let worker = FsWorker::start(setup).expect("worker");
            let txn = TxnId(1);
            worker.send(FsCommand::Freeze {
                txn,
                epoch: Epoch(1),
            });
            match wait_outcome(&worker) {
                FsOutcome::Frozen { result, .. } => result.expect("freeze"),
                other => panic!("expected Frozen, got {other:?}"),
            }
            let probe = WriteProbe::start(&fs.mount_point().join("probe"), b"x");
            // Well past THAW_RETRY_INTERVAL: nothing may thaw on its own.
            std::thread::sleep(THAW_RETRY_INTERVAL * 3);
            assert!(
                !probe.is_done(),
                "a write completed while the host still held the freeze"
            );
            assert!(
                worker.drain().is_empty(),
                "the worker acted without a command"
            );
            worker.send(FsCommand::Thaw { txn });
            match wait_outcome(&worker) {
                FsOutcome::Thawed {
                    result, all_thawed, ..
                } => {
                    result.expect("thaw");
                    assert!(all_thawed);
                }
                other => panic!("expected Thawed, got {other:?}"),
            }
            assert!(
                probe.wait(Duration::from_secs(10)),
                "the write did not complete after thaw"
            );
        });
    }
}
