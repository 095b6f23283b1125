//! The flush before the first FIFREEZE: parallel `syncfs` passes over every planned
//! filesystem, one thread per filesystem, under the freeze deadline, repeated while they
//! converge ([`FlushPolicy::Converge`]).
//!
//! # Kernel contract
//!
//! `syncfs` writes back one filesystem and may block as long as its device does. Nothing is
//! frozen yet, so a pass that misses the deadline fails the freeze and its threads are
//! abandoned (they end when their call returns); a filesystem whose earlier `syncfs` has not
//! returned gets no second thread ([`super::FsOps::flushing`]).

use std::os::fd::AsFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::prepare::Handle;
use super::{
    CANCEL_POLL, CONVERGE_FLOOR, FlushPolicy, FreezeError, FreezeOptions, FrozenSet, micros,
};
use crate::exit_gate::ExitGate;

/// Flushes every planned filesystem before the first FIFREEZE: passes as `options.flush`
/// says. `Err`: a pass failed (deadline, cancel); nothing is frozen yet.
pub(super) fn flush(
    options: &FreezeOptions,
    handles: &[Handle],
    set: &mut FrozenSet,
    cancelled: &(dyn Fn() -> bool + Sync),
    gate: &ExitGate,
) -> Result<(), FreezeError> {
    // Flush everything in parallel before the first freeze, under the freeze deadline
    // (counted from the first pass), converging as `options.flush` says.
    let sync_start = Instant::now();
    let sync_deadline = sync_start.checked_add(options.freeze_deadline);
    if let FlushPolicy::Converge { budget } = options.flush {
        let mut previous: Option<Duration> = None;
        let mut first: Option<Duration> = None;
        loop {
            let took = flush_pass(
                options,
                handles,
                set,
                cancelled,
                (sync_start, sync_deadline),
                gate,
            )?;
            set.report.flush_passes_us.push(micros(took));
            let first = *first.get_or_insert(took);
            // Another pass only while the last one still had real work (above the floor),
            // took at most half as long as the one before it (converging, not chasing
            // writers as fast as they write), and the passes after the first have not used
            // up the budget (so they stop within it plus one pass, itself shorter than
            // half the one before).
            let shrinking = previous.is_none_or(|p| took <= p / 2);
            let extra = sync_start.elapsed().saturating_sub(first);
            if took < CONVERGE_FLOOR || !shrinking || extra >= budget {
                break;
            }
            previous = Some(took);
        }
    }
    set.report.sync_us = micros(sync_start.elapsed());
    Ok(())
}

/// One parallel `syncfs` pass over every planned filesystem, bounded by `sync_deadline`: a
/// hung syncfs must not wedge the caller. Nothing is frozen yet, so a flush that misses the
/// deadline is simply abandoned (its thread finishes on its own) and fails the freeze.
/// Ok: how long the pass took.
fn flush_pass(
    options: &FreezeOptions,
    handles: &[Handle],
    set: &mut FrozenSet,
    cancelled: &(dyn Fn() -> bool + Sync),
    (sync_start, sync_deadline): (Instant, Option<Instant>),
    gate: &ExitGate,
) -> Result<Duration, FreezeError> {
    let ops = set.ops.clone();
    let pass_start = Instant::now();
    let (tx, rx) = mpsc::channel::<(usize, Duration, std::io::Result<()>)>();
    let mut flushing = vec![false; handles.len()];
    for (i, h) in handles.iter().enumerate() {
        let started = ops
            .flushing()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(h.dev);
        if !started {
            // An earlier freeze's syncfs on it never returned: this one would hang the same
            // way, so fail now instead of leaving another thread behind.
            set.report.sync_us = micros(sync_start.elapsed());
            set.report.filesystems[i].sync_error =
                Some("an earlier syncfs on it has not returned".into());
            return Err(FreezeError::FlushDeadline {
                mount_point: h.planned.mount_point.clone(),
                deadline: options.freeze_deadline,
            });
        }
        let fd = h.fd.clone();
        let thread_ops = ops.clone();
        let tx = tx.clone();
        let dev = h.dev;
        let thread_gate = gate.clone();
        let spawned = std::thread::Builder::new()
            .name("hv-vss-syncfs".into())
            .spawn(move || {
                let ops = thread_ops;
                let t = Instant::now();
                let r = ops.syncfs(fd.as_fd());
                ops.flushing()
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&dev);
                let _ = tx.send((i, t.elapsed(), r));
                drop(tx);
                // Not exiting before the FIFREEZE calls that follow have returned.
                thread_gate.wait();
            });
        match spawned {
            Ok(_) => flushing[i] = true,
            Err(e) => {
                ops.flushing()
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&dev);
                set.report.filesystems[i].sync_error = Some(format!("no flush thread: {e}"));
            }
        }
    }
    drop(tx);
    while flushing.iter().any(|&f| f) {
        if cancelled() {
            // Nothing is frozen yet: the flush threads finish on their own.
            set.report.sync_us = micros(sync_start.elapsed());
            return Err(FreezeError::Cancelled);
        }
        let now = Instant::now();
        let received = match sync_deadline {
            Some(d) if now >= d => Err(mpsc::RecvTimeoutError::Timeout),
            Some(d) => match rx.recv_timeout((d - now).min(CANCEL_POLL)) {
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                other => other,
            },
            None => match rx.recv_timeout(CANCEL_POLL) {
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                other => other,
            },
        };
        match received {
            Ok((i, took, result)) => {
                flushing[i] = false;
                let r = &mut set.report.filesystems[i];
                r.sync_us = Some(r.sync_us.unwrap_or(0) + micros(took));
                r.sync_error = result.err().map(|e| e.to_string());
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // A flush thread died without answering (a panic in syncfs).
                for (i, f) in flushing.iter_mut().enumerate() {
                    if std::mem::take(f) {
                        set.report.filesystems[i].sync_error =
                            Some("syncfs worker panicked".into());
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                set.report.sync_us = micros(sync_start.elapsed());
                let i = flushing.iter().position(|&f| f).unwrap_or(0);
                for (r, _) in set
                    .report
                    .filesystems
                    .iter_mut()
                    .zip(&flushing)
                    .filter(|(_, f)| **f)
                {
                    r.sync_error = Some(format!(
                        "syncfs did not return within {:?}",
                        options.freeze_deadline
                    ));
                }
                return Err(FreezeError::FlushDeadline {
                    mount_point: handles[i].planned.mount_point.clone(),
                    deadline: options.freeze_deadline,
                });
            }
        }
    }
    Ok(pass_start.elapsed())
}
