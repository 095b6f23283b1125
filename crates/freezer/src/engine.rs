//! Freezing and thawing a [`Plan`]: preflight, flush, dependency-ordered parallel freeze
//! with deadlines, ownership of what we froze, rollback, and reports.
//!
//! # Kernel contract
//!
//! FIFREEZE blocks until the superblock is frozen (writeback included) and fails with EBUSY
//! if it already is; a freeze is owned by nobody, so whoever froze must thaw (see
//! `hv_vss_sys::fs`). Writes to a frozen filesystem block; so do writes to any filesystem
//! whose block device writes into a file on it (loop), which is why dependents freeze first.
//!
//! # Sequence of [`freeze`]
//!
//! 1. State directory: refused if the plan may freeze it ([`Plan::may_freeze`]); its flock
//!    is taken (held by the returned [`FrozenSet`]); an existing journal refuses the freeze
//!    (an earlier freeze was never thawed: run recovery).
//! 2. Every planned mount is opened (`O_RDONLY|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC|O_NONBLOCK`)
//!    and checked to be the planned mount (statx mount id, else `st_dev`).
//! 3. `syncfs` on every filesystem in parallel, so FIFREEZE finds little left to write,
//!    under the same deadline: a flush that misses it fails the freeze before anything is
//!    frozen (its thread is abandoned and ends when the call returns).
//!    The pass is repeated while it converges ([`FlushPolicy::Converge`]: writers dirty data
//!    during each pass, the next finds less), or left out ([`FlushPolicy::Skip`]) when the
//!    caller has just measured the filesystems clean.
//! 4. Level by level, FIFREEZE on one thread per filesystem, each with the configured
//!    deadline. Before a level's first FIFREEZE the journal (temp + fsync + rename) is
//!    rewritten to list what is frozen so far plus the level (in flight); each result that
//!    leaves a filesystem not ours (EBUSY, EOPNOTSUPP, an error) takes it off at once, and
//!    every partial thaw narrows it to what is still frozen. So the journal lists exactly
//!    what is frozen or in flight, never someone else's freeze once its EBUSY is known. A call that misses it fails the freeze; its thread thaws the filesystem if
//!    the call ever succeeds (R39). Until it has returned (and that thaw worked), the
//!    journal (narrowed to what may still be ours) and the lock stay, held by the set that
//!    [`FreezeFailure::unthawed`] hands back: a crash in that window leaves the filesystem
//!    listed for the guardian and the next start.
//! 5. On any failure: everything we froze is thawed in exact reverse of the order the
//!    freezes completed, and the journal is removed once all are thawed. A filesystem that
//!    answered EBUSY was frozen by someone else and is never thawed by us.
//!
//! [`freeze_cancellable`] also stops (and rolls back) when its caller says the freeze was
//! overtaken by a thaw, checked before the flush, before the first FIFREEZE and between
//! levels. From the opening on, the [`FrozenSet`] under construction owns the lock,
//! the journal and every member the moment it freezes, so even a panic unwinding through
//! the freeze thaws what froze (and FIFREEZE calls still running are abandoned: they thaw
//! their filesystem when they return).
//!
//! Between the first FIFREEZE and the last FITHAW nothing here writes a file, logs, or
//! spawns a process (R60): events are collected into the report, which the caller logs
//! after the thaw. The only writes are the journal's, in the state directory, which is
//! checked not to be on or built on anything the plan freezes (R59), so they cannot block
//! on our own freeze.
//!
//! # Layout
//!
//! This file runs the sequence above and holds the public entry points; each step has its
//! own file: `prepare` (state directory, open and check, the preflight), `flush` (the
//! `syncfs` passes), `levels` (the parallel FIFREEZE of each level, deadline and cancel),
//! `job` (one FIFREEZE call as its thread and the freeze see it), `frozen_set` (what we
//! own: thaw, rollback, journal, adoption of late returns). The seams are `ops` (the
//! syscalls, `FsOps`; `fake` stands in for the kernel in `tests`) and `watch`
//! ([`FreezeWatch`]); `options` and `error` are the types of the calls.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::exit_gate::{ExitGate, OpenOnDrop};
use crate::plan::Plan;

mod error;
#[cfg(test)]
mod expedite_tests;
#[cfg(test)]
mod fake;
mod flush;
mod frozen_set;
mod job;
mod levels;
mod ops;
mod options;
mod prepare;
#[cfg(test)]
mod tests;
mod watch;

pub use error::{FreezeError, FreezeFailure};
pub use frozen_set::{FrozenFs, FrozenSet};
pub use levels::FREEZE_THREAD_NAME;
pub(crate) use ops::{FsOps, KernelOps};
pub use options::{CONVERGE_FLOOR, DEFAULT_CONVERGE_BUDGET, FlushPolicy, FreezeOptions};
pub use prepare::{PreflightReport, preflight};
pub use watch::FreezeWatch;

pub use crate::report::{
    FreezeReport, FsFreezeOutcome, FsReport, FsThawOutcome, FsThawReport, ThawReport,
};

use levels::freeze_levels;
use prepare::{open_all, prepare_state_dir};

/// How often a wait inside the freeze (flush, level) looks at its caller's cancel.
const CANCEL_POLL: Duration = Duration::from_millis(10);

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Freeze the plan. On success every planned filesystem is frozen (except those skipped by
/// policy, see the report) and owned by the returned set.
pub fn freeze(plan: &Plan, options: &FreezeOptions) -> Result<FrozenSet, FreezeFailure> {
    freeze_with(plan, options, Arc::new(KernelOps), &|| false)
}

/// [`freeze`] that stops as soon as `cancelled` returns true: checked before the flush,
/// while waiting for the flush and for each level's FIFREEZE calls (every
/// [`CANCEL_POLL`]), and before each level. FIFREEZE calls still running are abandoned to
/// their threads, which thaw what they froze when they return (the set keeps journal and
/// lock until then); everything frozen is rolled back and the error is
/// [`FreezeError::Cancelled`]. For a caller whose freeze was overtaken by a thaw (a THAW,
/// a deadline or a shutdown while freezing): nothing more is frozen for a request that
/// has already been given up, and the caller is not held up by a slow FIFREEZE.
pub fn freeze_cancellable(
    plan: &Plan,
    options: &FreezeOptions,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<FrozenSet, FreezeFailure> {
    freeze_with(plan, options, Arc::new(KernelOps), cancelled)
}

/// [`freeze_cancellable`] that tells `watch` what may become ours before each FIFREEZE and
/// what stops being ours, for as long as the returned set (or a failure's `unthawed`) lives.
pub fn freeze_watched(
    plan: &Plan,
    options: &FreezeOptions,
    cancelled: &(dyn Fn() -> bool + Sync),
    watch: Arc<dyn FreezeWatch>,
) -> Result<FrozenSet, FreezeFailure> {
    freeze_with_watch(plan, options, Arc::new(KernelOps), cancelled, Some(watch))
}

pub(crate) fn freeze_with(
    plan: &Plan,
    options: &FreezeOptions,
    ops: Arc<dyn FsOps>,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<FrozenSet, FreezeFailure> {
    freeze_with_watch(plan, options, ops, cancelled, None)
}

fn freeze_with_watch(
    plan: &Plan,
    options: &FreezeOptions,
    ops: Arc<dyn FsOps>,
    cancelled: &(dyn Fn() -> bool + Sync),
    watch: Option<Arc<dyn FreezeWatch>>,
) -> Result<FrozenSet, FreezeFailure> {
    let started = Instant::now();
    let mut report = FreezeReport {
        started_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0)),
        prepare_us: 0,
        sync_us: 0,
        freeze_us: 0,
        filesystems: plan
            .filesystems()
            .map(|p| FsReport {
                mount_point: p.mount_point.clone(),
                dev: p.dev,
                fs_type: p.fs_type.clone(),
                level: p.level,
                sync_us: None,
                sync_error: None,
                freeze_start_us: None,
                freeze_us: None,
                outcome: FsFreezeOutcome::NotAttempted,
            })
            .collect(),
        rollback: None,
        expedite: crate::report::Expedite::Off,
        plan_reused: false,
        flush_passes_us: Vec::new(),
        flush_ahead_wait_us: 0,
    };
    macro_rules! fail {
        ($e:expr) => {
            return Err(FreezeFailure {
                error: $e,
                report: Box::new(report),
                unthawed: None,
            })
        };
    }
    if plan.is_empty() {
        fail!(FreezeError::NothingToFreeze);
    }
    if cancelled() {
        fail!(FreezeError::Cancelled);
    }
    let lock = match prepare_state_dir(plan, options, ops.as_ref()) {
        Ok(l) => l,
        Err(e) => fail!(e),
    };
    let handles = match open_all(plan, ops.as_ref()) {
        Ok(h) => h,
        Err(e) => fail!(e),
    };
    for (r, h) in report.filesystems.iter_mut().zip(&handles) {
        r.dev = h.dev;
    }
    report.prepare_us = micros(started.elapsed());

    // From here the set owns the lock and the journal, and every member the moment it is
    // frozen: whatever ends the freeze (failure, cancel, even a panic unwinding through
    // here), its thaw or its Drop thaws what froze and removes the journal. The journal is
    // written per level, before its FIFREEZE calls, and narrowed as results come in.
    let mut set = FrozenSet {
        members: Vec::new(),
        window_start: Instant::now(),
        state_dir: options.state_dir.clone(),
        lock: Some(lock),
        started_unix_ms: report.started_unix_ms,
        report,
        ops,
        in_flight: Vec::new(),
        journal_listed: Vec::new(),
        rcu_expedited: None,
        journal_rcu_expedited: None,
        watch,
    };
    // The threads of the freeze wait for this gate before they exit: an exit just before
    // or during a FIFREEZE makes its RCU grace periods longer (`exit_gate`). It opens as
    // soon as the last FIFREEZE has returned, however the levels end.
    let gate = ExitGate::new();
    let levels = {
        let _open = OpenOnDrop(gate.clone());
        freeze_levels(plan, options, &handles, &mut set, cancelled, &gate)
    };
    match levels {
        Ok(()) => Ok(set),
        Err(error) => {
            // The rollback narrows the journal to what it could not thaw.
            let rollback = set.thaw();
            let complete = rollback.complete;
            let mut report = Box::new(set.report.clone());
            report.rollback = Some(rollback);
            // Whatever could not be thawed, or may still freeze (an abandoned FIFREEZE),
            // stays owned (lock and journal included) and goes back to the caller to retry;
            // dropping it would leave it frozen unowned.
            let unthawed = (!complete).then(|| Box::new(set));
            Err(FreezeFailure {
                error,
                report,
                unthawed,
            })
        }
    }
}
