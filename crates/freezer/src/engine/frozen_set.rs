//! What a freeze owns: the [`FrozenSet`] of filesystems it froze (with the state lock, the
//! journal and the FIFREEZE calls still in flight), its thaw in exact reverse of freeze
//! order, the journal kept equal to what is frozen or in flight, the adoption of calls
//! that returned late, and the thaw on Drop.
//!
//! # Kernel contract
//!
//! A freeze is owned by nobody: whoever froze must thaw, with FITHAW on any fd of the
//! filesystem. FITHAW on a filesystem that is not frozen fails (EINVAL): it was thawed by
//! someone else and leaves the set like a thawed one. A FITHAW that fails otherwise keeps
//! the member (and the journal entry) for the next try (R41).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use hv_vss_sys::fs::{DevNum, ThawError};

use super::job::{Job, JobState};
use super::{FreezeWatch, FsOps, micros};
use crate::journal::{Journal, JournalEntry, StateLock};
use crate::report::{FreezeReport, FsThawOutcome, FsThawReport, ThawReport};

/// A filesystem we froze.
#[derive(Debug)]
pub struct FrozenFs {
    /// Mount point.
    pub mount_point: PathBuf,
    /// Device as seen through the fd.
    pub dev: DevNum,
    /// Type.
    pub fs_type: String,
    /// Level.
    pub level: usize,
    /// Path it was opened through (what the journal lists).
    pub(super) open_path: PathBuf,
    pub(super) fd: Arc<OwnedFd>,
}

impl FrozenFs {
    fn journal_entry(&self, pid: i32) -> JournalEntry {
        JournalEntry {
            path: self.open_path.clone(),
            dev: self.dev,
            fs_type: self.fs_type.clone(),
            pid,
        }
    }

    /// The fd it was frozen through (hand it to a guardian over SCM_RIGHTS; FITHAW on any
    /// fd of the filesystem thaws it).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What we froze, in freeze order. Thaw with [`FrozenSet::thaw`]; dropping a non-empty set
/// thaws it too (reverse order), so a panic never leaves our freezes behind.
pub struct FrozenSet {
    pub(super) members: Vec<FrozenFs>,
    pub(super) window_start: Instant,
    pub(super) state_dir: PathBuf,
    pub(super) lock: Option<StateLock>,
    pub(super) report: FreezeReport,
    pub(super) ops: Arc<dyn FsOps>,
    /// FIFREEZE calls that have not been collected: while freezing, the level running;
    /// after a deadline, the abandoned calls until they return (R39).
    pub(super) in_flight: Vec<InFlight>,
    /// When the freeze started (the journal's `created_unix_ms`).
    pub(super) started_unix_ms: u64,
    /// Told what becomes and stops being ours to thaw.
    pub(super) watch: Option<Arc<dyn FreezeWatch>>,
    /// What the journal on disk lists now (empty: no journal).
    pub(super) journal_listed: Vec<JournalEntry>,
    /// The expedited-RCU switch this freeze turns on for its FIFREEZE calls: the next
    /// journal names it (before it is turned on), so that recovery after a crash turns it
    /// off. Left named once it is off again: rewriting the journal for that alone would put
    /// a file write into the frozen window, and turning an off switch off is harmless.
    pub(super) rcu_expedited: Option<PathBuf>,
    /// What the journal on disk names.
    pub(super) journal_rcu_expedited: Option<PathBuf>,
}

/// A FIFREEZE call not yet collected, and the member it becomes if it froze.
pub(super) struct InFlight {
    /// Index in the plan (and the report).
    pub(super) index: usize,
    pub(super) job: Arc<Job>,
    pub(super) member: FrozenFs,
}

impl std::fmt::Debug for FrozenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrozenSet")
            .field("members", &self.members)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

impl FrozenSet {
    /// Members still frozen, in freeze order.
    pub fn members(&self) -> &[FrozenFs] {
        &self.members
    }

    /// Their fds, in freeze order.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.members.iter().map(FrozenFs::fd).collect()
    }

    /// Nothing of ours is frozen any more, and no abandoned FIFREEZE may still freeze.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.in_flight.is_empty()
    }

    /// Mount points whose FIFREEZE missed its deadline and has not returned yet.
    pub fn freezes_pending(&self) -> Vec<PathBuf> {
        self.in_flight
            .iter()
            .map(|f| f.member.mount_point.clone())
            .collect()
    }

    /// The freeze's report.
    pub fn report(&self) -> &FreezeReport {
        &self.report
    }

    /// The freeze report, for the caller to add what only it knows
    /// ([`FreezeReport::plan_reused`]).
    pub fn report_mut(&mut self) -> &mut FreezeReport {
        &mut self.report
    }

    /// When the first FIFREEZE was called.
    pub fn window_start(&self) -> Instant {
        self.window_start
    }

    /// The state lock's file (a guardian that inherits it keeps the lock held).
    pub fn lock_file(&self) -> Option<&std::fs::File> {
        self.lock.as_ref().map(StateLock::file)
    }

    /// Thaw every member in exact reverse of freeze order, going on past errors (R41).
    /// Members that thawed (or were found not frozen) leave the set, and the journal is
    /// narrowed to what is left; when it is empty and every abandoned FIFREEZE has returned
    /// (and been undone), the journal is removed and the lock released. Call again to retry
    /// the rest.
    pub fn thaw(&mut self) -> ThawReport {
        self.collect_abandoned();
        let mut report = thaw_members(
            &mut self.members,
            self.ops.as_ref(),
            self.watch.as_deref(),
            self.window_start,
        );
        report.freezes_pending = self.freezes_pending();
        report.complete = report.complete && report.freezes_pending.is_empty();
        if !report.complete
            && let Err(e) = self.write_journal()
        {
            report.journal_error = Some(e.to_string());
        }
        self.finish(report)
    }

    /// Makes the journal list exactly what is frozen (members) or in flight (FIFREEZE
    /// called and not collected), in freeze order; removes it when that is nothing. Only
    /// writes when the list changed. This is the one file written while frozen: the state
    /// directory is checked not to be on (or built on) anything the plan freezes (R59), so
    /// the write cannot block on our freeze, and a journal listing less than the truth
    /// would leave a freeze nobody recovers, while one listing more would thaw someone
    /// else's (R65).
    pub(super) fn write_journal(&mut self) -> Result<(), crate::journal::JournalError> {
        let pid = std::process::id() as i32;
        let listed: Vec<JournalEntry> = self
            .members
            .iter()
            .chain(self.in_flight.iter().map(|f| &f.member))
            .map(|m| m.journal_entry(pid))
            .collect();
        if listed == self.journal_listed && self.rcu_expedited == self.journal_rcu_expedited {
            return Ok(());
        }
        if listed.is_empty() {
            Journal::remove(&self.state_dir)?;
        } else {
            Journal {
                version: 1,
                pid,
                created_unix_ms: self.started_unix_ms,
                filesystems: listed.clone(),
                rcu_expedited: self.rcu_expedited.clone(),
            }
            .write(&self.state_dir)?;
        }
        self.journal_listed = listed;
        self.journal_rcu_expedited = self.rcu_expedited.clone();
        Ok(())
    }

    /// Forgets FIFREEZE calls that returned and left nothing frozen (undone by their
    /// thread, or failed), and adopts those that froze and were never collected (a result
    /// delivered but not recorded, or a late success whose FITHAW failed), so the thaw
    /// covers them.
    fn collect_abandoned(&mut self) {
        let mut still_running = Vec::new();
        for f in std::mem::take(&mut self.in_flight) {
            let (returned, frozen) = {
                let mut state = f.job.state.lock().unwrap_or_else(|p| p.into_inner());
                let seen = match *state {
                    JobState::Done | JobState::Delivered { frozen: false } => (true, false),
                    JobState::StillFrozen | JobState::Delivered { frozen: true } => (true, true),
                    JobState::Running | JobState::Abandoned => (false, false),
                };
                if seen.0 {
                    *state = JobState::Done;
                }
                seen
            };
            if frozen {
                self.members.push(f.member);
            } else if returned {
                if let Some(w) = &self.watch {
                    w.disarm(f.member.dev);
                }
            } else {
                still_running.push(f);
            }
        }
        self.in_flight = still_running;
    }

    fn finish(&mut self, mut report: ThawReport) -> ThawReport {
        if report.complete && self.lock.is_some() {
            if let Err(e) = Journal::remove(&self.state_dir) {
                report.journal_error = Some(e.to_string());
            }
            self.journal_listed.clear();
            self.journal_rcu_expedited = None;
            self.lock = None;
        }
        report
    }
}

impl Drop for FrozenSet {
    fn drop(&mut self) {
        // With an abandoned FIFREEZE still running the thaw is incomplete: the journal stays
        // for the guardian or the next start. The lock stays held until this process has
        // really ended (the kernel closes the fd when the last thread, maybe the one still
        // in FIFREEZE, exits): recovery must not run under a call that may still freeze.
        if !self.members.is_empty() || self.lock.is_some() {
            let _ = self.thaw();
        }
        if !self.in_flight.is_empty()
            && let Some(lock) = self.lock.take()
        {
            std::mem::forget(lock);
        }
    }
}

fn thaw_members(
    members: &mut Vec<FrozenFs>,
    ops: &dyn FsOps,
    watch: Option<&dyn FreezeWatch>,
    window_start: Instant,
) -> ThawReport {
    let start = Instant::now();
    let mut out = Vec::with_capacity(members.len());
    let mut kept = Vec::new();
    while let Some(m) = members.pop() {
        let t = Instant::now();
        let result = ops.thaw(m.fd());
        let thaw_us = micros(t.elapsed());
        let outcome = match result {
            Ok(()) => FsThawOutcome::Thawed,
            Err(ThawError::NotFrozen) => FsThawOutcome::WasNotFrozen,
            Err(e) => FsThawOutcome::Failed {
                error: e.to_string(),
            },
        };
        out.push(FsThawReport {
            mount_point: m.mount_point.clone(),
            dev: m.dev,
            thaw_us,
            outcome: outcome.clone(),
        });
        if matches!(outcome, FsThawOutcome::Failed { .. }) {
            kept.push(m);
        } else if let Some(w) = watch {
            w.disarm(m.dev);
        }
    }
    kept.reverse();
    *members = kept;
    ThawReport {
        filesystems: out,
        thaw_us: micros(start.elapsed()),
        frozen_window_us: micros(window_start.elapsed()),
        complete: members.is_empty(),
        journal_error: None,
        freezes_pending: Vec::new(),
    }
}
