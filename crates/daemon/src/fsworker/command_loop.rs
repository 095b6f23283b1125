//! The worker thread: takes one command at a time, holds the frozen set between FREEZE and
//! THAW, retries a thaw that left members frozen, starts and stops the flush ahead around
//! checks and freezes, and answers every command, a panic in the freezer included.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};

use hv_vss_core::FsError;
use hv_vss_freezer::{FlushAhead, FrozenSet, MountTableWatch, Plan};

use super::freezer_calls::{check, freeze, thaw_result};
use super::{
    ABANDONED_POLL, FLUSH_AHEAD_BUDGET, FsCommand, FsOutcome, FsSetup, THAW_RETRY_INTERVAL,
};
use crate::safety::Epoch;

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

pub(super) fn run(
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
