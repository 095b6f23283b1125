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
//! either way; [`hv_vss_freezer::FreezeReport::plan_reused`] says which.
//!
//! A passing check also starts flushing the planned filesystems ahead of FREEZE
//! ([`hv_vss_freezer::FlushAhead`], for at most [`FLUSH_AHEAD_BUDGET`]) after its answer is
//! sent; a failing check stops it. `Freeze` stops it and waits for its running `syncfs`
//! calls (bounded by the freeze deadline: a flush that misses it fails the freeze, nothing
//! frozen, and its device is not flushed ahead again until that call returns), so no flush
//! of ours ever runs beside a freeze. The flush threads it stopped exit only once the
//! freeze has returned ([`hv_vss_freezer::FlushAhead::release`]): an exit beside a
//! FIFREEZE slows it ([`hv_vss_freezer::exit_gate`]).
//!
//! A thaw that leaves members frozen (FITHAW failing) is retried every
//! [`THAW_RETRY_INTERVAL`] until it completes; [`FsOutcome::Thawed::all_thawed`] (or a later
//! [`FsOutcome::RetryThawed`]) tells the main loop when nothing of ours is frozen any more,
//! which is when it may write logs and files again (R60). Every outcome carries the
//! [`crate::safety::Epoch`] of the last `Freeze` the worker had taken, so the main loop's
//! [`crate::safety::FreezeSafety`] can tell a stale "nothing frozen" from a current one.
//! Thaws are panic-guarded like freezes: a panic in one is answered as a failed thaw and
//! the set is kept and retried, never dropped unanswered.
//!
//! With a [`FreezeWatch`] in the setup (the daemon's guardian link), the freezer arms it
//! with each filesystem's fd before its FIFREEZE and disarms it when it is not ours any
//! more; a freeze whose arm fails fails before that FIFREEZE.
//!
//! # Layout
//!
//! This file holds what the daemon sets the worker up with ([`FsSetup`], [`selection`])
//! and its timings; `handle` is the main loop's side ([`FsWorker`]: start, send, drain),
//! `command_loop` the worker thread's (one command at a time, the held set, the thaw
//! retries, the panic guard), and `freezer_calls` its calls into the freezer (plan,
//! preflight, freeze with plan reuse and the clean fast path, the thaw's answer).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hv_vss_freezer::{CompiledConfig, FreezeOptions, FreezeWatch, MountSource, Selection};

mod command_loop;
mod freezer_calls;
mod handle;
#[cfg(test)]
mod tests;

pub use handle::FsWorker;

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

/// The selection for the configured mounts (explicit list or discovery).
pub fn selection(mounts: &[PathBuf]) -> Selection {
    if mounts.is_empty() {
        Selection::Discover
    } else {
        Selection::Explicit(mounts.to_vec())
    }
}
