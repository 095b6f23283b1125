//! The freeze proper: level by level (dependents first), one thread per filesystem and
//! FIFREEZE, each level waited for under the deadline and the caller's cancel, results
//! recorded into the [`FrozenSet`] as they come in.
//!
//! # Kernel contract
//!
//! FIFREEZE blocks until the superblock is frozen (writeback included); EBUSY means someone
//! else froze it (never ours to thaw), EOPNOTSUPP that the filesystem cannot freeze. A call
//! that misses its deadline cannot be interrupted: its thread is abandoned and thaws the
//! filesystem itself if the call ever succeeds (R39).

use std::os::fd::AsFd;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hv_vss_sys::fs::{FreezeError as SysFreezeError, ThawError};

use super::flush::flush;
use super::frozen_set::InFlight;
use super::job::{AbandonOnUnwind, Job, JobState};
use super::prepare::Handle;
use super::{CANCEL_POLL, FreezeError, FreezeOptions, FrozenSet, micros};
use crate::config::{ForeignFreezePolicy, UnsupportedPolicy};
use crate::exit_gate::ExitGate;
use crate::expedite::{self, Expedite, ExpeditedGracePeriods};
use crate::plan::Plan;
use crate::report::FsFreezeOutcome;

/// The name of the threads that make the FIFREEZE calls (one per filesystem and call;
/// the thread ends when its call has returned). A watcher outside the process (the
/// daemon's guardian) looks for live threads of this name to learn whether a FIFREEZE may
/// still be in flight.
pub const FREEZE_THREAD_NAME: &str = "hv-vss-freeze";

/// Flush, then freeze level by level into `set`. `Err`: the first failure; the caller
/// rolls back what `set` holds.
pub(super) fn freeze_levels(
    plan: &Plan,
    options: &FreezeOptions,
    handles: &[Handle],
    set: &mut FrozenSet,
    cancelled: &(dyn Fn() -> bool + Sync),
    gate: &ExitGate,
) -> Result<(), FreezeError> {
    if cancelled() {
        return Err(FreezeError::Cancelled);
    }
    let ops = set.ops.clone();
    flush(options, handles, set, cancelled, gate)?;

    // Expedited grace periods for the FIFREEZE calls (`crate::expedite`): the first
    // level's journal names the switch before it is turned on; it is turned off again as
    // soon as the last call has returned (or been given up on).
    let mut expedite_pending = None;
    match options.expedite.as_deref().map(expedite::check) {
        None => {}
        Some(Ok(Some(path))) => {
            set.rcu_expedited = Some(path.clone());
            expedite_pending = Some(path);
        }
        Some(Ok(None)) => set.report.expedite = Expedite::AlreadyOn,
        Some(Err(unavailable)) => set.report.expedite = unavailable,
    }
    let mut expedited: Option<ExpeditedGracePeriods> = None;

    // Freeze level by level. Nothing below this line may log or write files until thawed.
    let window_start = Instant::now();
    set.window_start = window_start;
    let mut failure: Option<FreezeError> = None;
    for level in 0..plan.levels.len() {
        // A thaw asked for while we freeze stops the freeze before the next level (the
        // levels already started finish, bounded by their deadline, and are rolled back).
        if cancelled() {
            failure = Some(FreezeError::Cancelled);
            break;
        }
        let indices: Vec<usize> = (0..handles.len())
            .filter(|&i| handles[i].planned.level == level)
            .collect();
        let (tx, rx) = mpsc::channel::<(usize, Instant, Duration, Result<(), SysFreezeError>)>();
        // The level is listed in the journal (as in flight) before any of its FIFREEZE
        // calls starts, so a crash from here on leaves nothing frozen that is not listed.
        let mut jobs: Vec<(usize, Arc<Job>)> = Vec::new();
        for &i in &indices {
            let job = Arc::new(Job {
                state: Mutex::new(JobState::Running),
            });
            jobs.push((i, job.clone()));
            set.in_flight.push(InFlight {
                index: i,
                job,
                member: handles[i].member(),
            });
        }
        if let Err(e) = set.write_journal() {
            set.in_flight.retain(|f| !indices.contains(&f.index));
            failure = Some(e.into());
            break;
        }
        // And the guardian holds each fd before its FIFREEZE.
        if let Some(w) = set.watch.clone() {
            let mut armed = Vec::new();
            for &i in &indices {
                match w.arm(handles[i].dev, handles[i].fd.as_fd()) {
                    Ok(()) => armed.push(i),
                    Err(e) => {
                        failure = Some(FreezeError::Guardian {
                            mount_point: handles[i].planned.mount_point.clone(),
                            source: e,
                        });
                        break;
                    }
                }
            }
            if failure.is_some() {
                for i in armed {
                    w.disarm(handles[i].dev);
                }
                set.in_flight.retain(|f| !indices.contains(&f.index));
                let _ = set.write_journal();
                break;
            }
        }
        if let Some(path) = expedite_pending.take() {
            match ExpeditedGracePeriods::turn_on(path) {
                Ok(on) => {
                    expedited = Some(on);
                    set.report.expedite = Expedite::Expedited;
                }
                Err(unavailable) => set.report.expedite = unavailable,
            }
        }
        let mut started: Vec<(usize, Arc<Job>)> = Vec::with_capacity(jobs.len());
        for (i, job) in jobs {
            let fd = handles[i].fd.clone();
            let ops = ops.clone();
            let tx = tx.clone();
            let thread_job = job.clone();
            let thread_watch = set.watch.clone();
            let dev = handles[i].dev;
            let thread_gate = gate.clone();
            let spawned = std::thread::Builder::new()
                .name(FREEZE_THREAD_NAME.into())
                .spawn(move || {
                    let job = thread_job;
                    let t = Instant::now();
                    let result = ops.freeze(fd.as_fd());
                    let took = t.elapsed();
                    if let (Ok(()), Some(w)) = (&result, &thread_watch) {
                        w.frozen(dev);
                    }
                    let mut state = job.state.lock().unwrap_or_else(|p| p.into_inner());
                    if matches!(*state, JobState::Abandoned) {
                        // The caller gave up on us and rolled back: undo our late freeze.
                        // The set keeps journal and lock until it sees us done; if FITHAW
                        // fails it adopts the filesystem and retries.
                        let frozen = result.is_ok()
                            && !matches!(ops.thaw(fd.as_fd()), Ok(()) | Err(ThawError::NotFrozen));
                        if !frozen && let Some(w) = &thread_watch {
                            w.disarm(dev);
                        }
                        *state = if frozen {
                            JobState::StillFrozen
                        } else {
                            JobState::Done
                        };
                    } else {
                        let frozen = result.is_ok();
                        let _ = tx.send((i, t, took, result));
                        *state = JobState::Delivered { frozen };
                    }
                    drop(state);
                    drop(tx);
                    // Not exiting while the other FIFREEZE calls of the freeze still run.
                    thread_gate.wait();
                });
            match spawned {
                Ok(_) => started.push((i, job)),
                Err(e) => {
                    set.in_flight.retain(|f| f.index != i);
                    if let Some(w) = &set.watch {
                        w.disarm(handles[i].dev);
                    }
                    failure.get_or_insert(FreezeError::Freeze {
                        mount_point: handles[i].planned.mount_point.clone(),
                        error: SysFreezeError::Other(
                            rustix::io::Errno::from_io_error(&e)
                                .unwrap_or(rustix::io::Errno::AGAIN),
                        ),
                    });
                }
            }
        }
        let jobs = started;
        if jobs.len() < indices.len() {
            let _ = set.write_journal();
        }
        drop(tx);
        let _abandon_on_unwind = AbandonOnUnwind(&jobs);
        // A deadline too far away to add to the clock (config input) means "no deadline".
        let deadline = Instant::now().checked_add(options.freeze_deadline);
        let mut pending = jobs.len();
        let record =
            |set: &mut FrozenSet,
             failure: &mut Option<FreezeError>,
             (i, t, took, result): (usize, Instant, Duration, Result<(), SysFreezeError>),
             after_deadline: bool| {
                let h = &handles[i];
                set.in_flight.retain(|f| f.index != i);
                let r = &mut set.report.filesystems[i];
                r.freeze_start_us = Some(micros(t.saturating_duration_since(window_start)));
                r.freeze_us = Some(micros(took));
                let mount_point = h.planned.mount_point.clone();
                if result.is_err() {
                    // Not ours (EBUSY: someone else's freeze) or not frozen: off the journal
                    // and out of the guardian at once, so recovery never thaws it.
                    let _ = set.write_journal();
                    if let Some(w) = &set.watch {
                        w.disarm(h.dev);
                    }
                }
                let r = &mut set.report.filesystems[i];
                match result {
                    Ok(()) => {
                        r.outcome = FsFreezeOutcome::Frozen;
                        set.members.push(h.member());
                    }
                    Err(SysFreezeError::AlreadyFrozen) => {
                        r.outcome = FsFreezeOutcome::ForeignFrozen;
                        if !after_deadline && options.on_foreign_freeze == ForeignFreezePolicy::Fail
                        {
                            failure.get_or_insert(FreezeError::ForeignFreeze { mount_point });
                        }
                    }
                    Err(SysFreezeError::Unsupported) => {
                        r.outcome = FsFreezeOutcome::Unsupported;
                        if !after_deadline && options.on_unsupported == UnsupportedPolicy::Fail {
                            failure.get_or_insert(FreezeError::Unsupported { mount_point });
                        }
                    }
                    Err(error) => {
                        r.outcome = FsFreezeOutcome::Failed {
                            error: error.to_string(),
                        };
                        if !after_deadline {
                            failure.get_or_insert(FreezeError::Freeze { mount_point, error });
                        }
                    }
                }
            };
        while pending > 0 {
            // Wait in short slices so a cancel is seen while FIFREEZE calls still run.
            let now = Instant::now();
            let past_deadline = deadline.is_some_and(|d| now >= d);
            let cancel = !past_deadline && cancelled();
            let received = if past_deadline || cancel {
                Err(mpsc::RecvTimeoutError::Timeout)
            } else {
                let slice = deadline.map_or(CANCEL_POLL, |d| (d - now).min(CANCEL_POLL));
                match rx.recv_timeout(slice) {
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    other => other,
                }
            };
            match received {
                Ok(msg) => {
                    pending -= 1;
                    record(set, &mut failure, msg, false);
                }
                Err(_) => {
                    // Deadline or cancel (or a thread that died without answering): abandon
                    // every job still running; its thread thaws a late success. A job that
                    // finished between the last look and our lock has already sent its
                    // result; collect it.
                    for (i, job) in &jobs {
                        let mut state = job.state.lock().unwrap_or_else(|p| p.into_inner());
                        if matches!(*state, JobState::Running) {
                            *state = JobState::Abandoned;
                            pending -= 1;
                            let mount_point = handles[*i].planned.mount_point.clone();
                            if cancel {
                                set.report.filesystems[*i].outcome = FsFreezeOutcome::Abandoned;
                                failure.get_or_insert(FreezeError::Cancelled);
                            } else {
                                set.report.filesystems[*i].outcome = FsFreezeOutcome::TimedOut;
                                failure.get_or_insert(FreezeError::Deadline {
                                    mount_point,
                                    deadline: options.freeze_deadline,
                                });
                            }
                        }
                    }
                    if cancel {
                        failure.get_or_insert(FreezeError::Cancelled);
                    }
                    while pending > 0 {
                        let Ok(msg) = rx.recv() else {
                            break;
                        };
                        pending -= 1;
                        record(set, &mut failure, msg, true);
                    }
                }
            }
        }
        if failure.is_some() {
            break;
        }
    }
    // Every FIFREEZE has returned or been given up on.
    drop(expedited);
    set.report.freeze_us = micros(window_start.elapsed());
    match failure {
        None => Ok(()),
        Some(e) => Err(e),
    }
}
