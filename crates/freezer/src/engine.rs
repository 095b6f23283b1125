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

use std::collections::BTreeSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hv_vss_sys::fs::{DevNum, FileIdentity, FreezeError as SysFreezeError, ThawError};
use serde::{Deserialize, Serialize};

use crate::config::{ForeignFreezePolicy, FreezerConfig, UnsupportedPolicy};
use crate::exit_gate::{ExitGate, OpenOnDrop};
use crate::journal::{Journal, JournalEntry, StateLock};
use crate::plan::{Plan, PlannedFs};

pub use crate::report::{
    FreezeReport, FsFreezeOutcome, FsReport, FsThawOutcome, FsThawReport, ThawReport,
};

/// What the freeze engine does to the kernel; real syscalls in production, fakes in tests.
pub(crate) trait FsOps: Send + Sync + 'static {
    fn open(&self, path: &Path) -> std::io::Result<OwnedFd>;
    fn identify(&self, fd: BorrowedFd<'_>) -> std::io::Result<FileIdentity>;
    fn identify_path(&self, path: &Path) -> std::io::Result<FileIdentity>;
    fn syncfs(&self, fd: BorrowedFd<'_>) -> std::io::Result<()>;
    fn freeze(&self, fd: BorrowedFd<'_>) -> Result<(), SysFreezeError>;
    fn thaw(&self, fd: BorrowedFd<'_>) -> Result<(), ThawError>;
    /// Filesystems whose `syncfs` (from this or an earlier freeze) has not returned: at
    /// most one flush thread runs per filesystem, so a hung `syncfs` costs one thread and
    /// one fd, not one per FREEZE.
    fn flushing(&self) -> &Mutex<BTreeSet<DevNum>>;
}

/// [`FsOps::flushing`] of the real kernel: process-wide.
static KERNEL_FLUSHING: Mutex<BTreeSet<DevNum>> = Mutex::new(BTreeSet::new());

/// The real syscalls.
#[derive(Debug)]
pub(crate) struct KernelOps;

impl FsOps for KernelOps {
    fn open(&self, path: &Path) -> std::io::Result<OwnedFd> {
        hv_vss_sys::fs::open_mount_point(path)
    }
    fn identify(&self, fd: BorrowedFd<'_>) -> std::io::Result<FileIdentity> {
        hv_vss_sys::fs::identify(fd)
    }
    fn identify_path(&self, path: &Path) -> std::io::Result<FileIdentity> {
        let dir = std::fs::File::open(path)?;
        hv_vss_sys::fs::identify(dir.as_fd())
    }
    fn syncfs(&self, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        hv_vss_sys::fs::syncfs(fd)
    }
    fn freeze(&self, fd: BorrowedFd<'_>) -> Result<(), SysFreezeError> {
        hv_vss_sys::fs::freeze(fd)
    }
    fn thaw(&self, fd: BorrowedFd<'_>) -> Result<(), ThawError> {
        hv_vss_sys::fs::thaw(fd)
    }
    fn flushing(&self) -> &Mutex<BTreeSet<DevNum>> {
        &KERNEL_FLUSHING
    }
}

/// Told about each filesystem the moment it may become ours to thaw (before its FIFREEZE
/// is called) and the moment it no longer is (thawed, found not frozen, someone else's
/// freeze, or a late FIFREEZE undone by its thread). The daemon passes the fds to its
/// guardian this way, so the guardian holds exactly what the freeze may have frozen.
pub trait FreezeWatch: Send + Sync {
    /// Before FIFREEZE on `fd`. An error fails the freeze before that call is made.
    fn arm(&self, dev: DevNum, fd: BorrowedFd<'_>) -> std::io::Result<()>;
    /// `dev` is not ours to thaw any more.
    fn disarm(&self, dev: DevNum);
    /// FIFREEZE on `dev` returned success: it is frozen, by us. Called by the thread that
    /// made the call, the moment it returns (before anything else it does), so a watcher
    /// can tell a frozen filesystem from one whose FIFREEZE is still in flight even when
    /// the rest of the process is hung.
    fn frozen(&self, dev: DevNum) {
        let _ = dev;
    }
}

/// The name of the threads that make the FIFREEZE calls (one per filesystem and call;
/// the thread ends when its call has returned). A watcher outside the process (the
/// daemon's guardian) looks for live threads of this name to learn whether a FIFREEZE may
/// still be in flight.
pub const FREEZE_THREAD_NAME: &str = "hv-vss-freeze";

/// How often a wait inside the freeze (flush, level) looks at its caller's cancel.
const CANCEL_POLL: Duration = Duration::from_millis(10);

/// How to run a freeze.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreezeOptions {
    /// State directory (journal and lock); must not be on a filesystem the plan may freeze.
    pub state_dir: PathBuf,
    /// EOPNOTSUPP policy.
    pub on_unsupported: UnsupportedPolicy,
    /// EBUSY policy.
    pub on_foreign_freeze: ForeignFreezePolicy,
    /// Deadline of each FIFREEZE call.
    pub freeze_deadline: Duration,
    /// How to flush before the first FIFREEZE.
    pub flush: FlushPolicy,
}

/// How [`freeze`] flushes before its first FIFREEZE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// A parallel `syncfs` of every filesystem, repeated while each pass takes at least
    /// [`CONVERGE_FLOOR`] and at most half the time of the one before, and the repeats have
    /// not used up `budget`; so FIFREEZE finds almost nothing left to write even with
    /// writers running. A zero budget is one pass.
    Converge {
        /// Time for passes after the first.
        budget: Duration,
    },
    /// No flush: FIFREEZE writes back what is left itself. For a caller that has just
    /// measured that there is nothing worth flushing (a flush-ahead pass that found the
    /// filesystems clean): a pass would only add its own cost to the answer.
    Skip,
}

/// Default time for repeated flush passes ([`FlushPolicy::Converge`]).
pub const DEFAULT_CONVERGE_BUDGET: Duration = Duration::from_millis(100);

/// A flush pass shorter than this found almost nothing to write: no further pass.
pub const CONVERGE_FLOOR: Duration = Duration::from_millis(5);

impl FreezeOptions {
    /// Options from the config, with a state directory.
    pub fn new(config: &FreezerConfig, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            on_unsupported: config.on_unsupported,
            on_foreign_freeze: config.on_foreign_freeze,
            freeze_deadline: config.freeze_deadline(),
            flush: FlushPolicy::Converge {
                budget: DEFAULT_CONVERGE_BUDGET,
            },
        }
    }
}

/// Why a freeze (or preflight) failed. Nothing of ours stays frozen after one, except what
/// a failed rollback hands back in [`FreezeFailure::unthawed`].
#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    /// The plan is empty.
    #[error("nothing to freeze")]
    NothingToFreeze,
    /// The state directory is on (or depends on) a filesystem the plan may freeze.
    #[error("state directory {} is on a filesystem that may be frozen ({reason}); use a tmpfs such as /run", .state_dir.display())]
    StateDirUnsafe {
        /// The directory.
        state_dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// The state directory cannot be created, locked or inspected.
    #[error("state directory {}: {source}", .state_dir.display())]
    StateDir {
        /// The directory.
        state_dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Another freezer holds the state directory's lock.
    #[error("another freezer holds {}", .lock_path.display())]
    LockHeld {
        /// The lock file.
        lock_path: PathBuf,
    },
    /// A journal from an earlier freeze is still there.
    #[error("journal {} from an earlier freeze (pid {pid}) is still present; run `hv-vss thaw --recover` first", .path.display())]
    JournalPresent {
        /// The journal.
        path: PathBuf,
        /// The pid it names.
        pid: i32,
    },
    /// Writing or reading the journal failed.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    /// A planned mount cannot be opened or stat'ed (R40).
    #[error("{}: cannot open mount point: {source}", .mount_point.display())]
    Open {
        /// The mount point.
        mount_point: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The path no longer leads to the planned mount.
    #[error("{}: mount changed since planning (expected {expected}, found {found})", .mount_point.display())]
    MountChanged {
        /// The mount point.
        mount_point: PathBuf,
        /// What the plan says.
        expected: String,
        /// What the open found.
        found: String,
    },
    /// Someone else froze it (EBUSY) and policy is to fail.
    #[error("{}: already frozen by another freezer", .mount_point.display())]
    ForeignFreeze {
        /// The mount point.
        mount_point: PathBuf,
    },
    /// EOPNOTSUPP and policy is to fail.
    #[error("{}: filesystem does not support freezing", .mount_point.display())]
    Unsupported {
        /// The mount point.
        mount_point: PathBuf,
    },
    /// FIFREEZE failed otherwise.
    #[error("{}: {error}", .mount_point.display())]
    Freeze {
        /// The mount point.
        mount_point: PathBuf,
        /// The error.
        error: SysFreezeError,
    },
    /// The caller cancelled the freeze (a thaw overtook it); what froze was rolled back.
    #[error("freeze cancelled: a thaw was asked for while freezing")]
    Cancelled,
    /// The guardian could not be handed a filesystem before its FIFREEZE.
    #[error("{}: cannot hand it to the guardian: {source}", .mount_point.display())]
    Guardian {
        /// The mount point.
        mount_point: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `syncfs` did not return within the freeze deadline: nothing was frozen (the flush
    /// thread is abandoned and finishes on its own).
    #[error("{}: syncfs did not return within {deadline:?}; nothing was frozen", .mount_point.display())]
    FlushDeadline {
        /// The mount point.
        mount_point: PathBuf,
        /// The deadline.
        deadline: Duration,
    },
    /// FIFREEZE did not return within the deadline.
    #[error("{}: FIFREEZE did not return within {deadline:?}", .mount_point.display())]
    Deadline {
        /// The mount point.
        mount_point: PathBuf,
        /// The deadline.
        deadline: Duration,
    },
}

/// A failed freeze: the error and the report of what happened (rollback included).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct FreezeFailure {
    /// The first error.
    #[source]
    pub error: FreezeError,
    /// Timings, outcomes and the rollback.
    pub report: Box<FreezeReport>,
    /// What the rollback could not thaw (FITHAW failed) or what may still freeze (a
    /// FIFREEZE abandoned at its deadline that has not returned), still owned, still
    /// holding the state lock and the journal: retry with [`FrozenSet::thaw`] until it is
    /// complete (R39, R41). `None` when the rollback was complete, i.e. nothing of ours is
    /// or may become frozen.
    pub unthawed: Option<Box<FrozenSet>>,
}

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
    open_path: PathBuf,
    fd: Arc<OwnedFd>,
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
    members: Vec<FrozenFs>,
    window_start: Instant,
    state_dir: PathBuf,
    lock: Option<StateLock>,
    report: FreezeReport,
    ops: Arc<dyn FsOps>,
    /// FIFREEZE calls that have not been collected: while freezing, the level running;
    /// after a deadline, the abandoned calls until they return (R39).
    in_flight: Vec<InFlight>,
    /// When the freeze started (the journal's `created_unix_ms`).
    started_unix_ms: u64,
    /// Told what becomes and stops being ours to thaw.
    watch: Option<Arc<dyn FreezeWatch>>,
    /// What the journal on disk lists now (empty: no journal).
    journal_listed: Vec<JournalEntry>,
}

/// A FIFREEZE call not yet collected, and the member it becomes if it froze.
struct InFlight {
    /// Index in the plan (and the report).
    index: usize,
    job: Arc<Job>,
    member: FrozenFs,
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
    fn write_journal(&mut self) -> Result<(), crate::journal::JournalError> {
        let pid = std::process::id() as i32;
        let listed: Vec<JournalEntry> = self
            .members
            .iter()
            .chain(self.in_flight.iter().map(|f| &f.member))
            .map(|m| m.journal_entry(pid))
            .collect();
        if listed == self.journal_listed {
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
            }
            .write(&self.state_dir)?;
        }
        self.journal_listed = listed;
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

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
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

/// Facts gathered by the preflight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightReport {
    /// Filesystems checked.
    pub checked: usize,
}

/// R42 preflight: the state directory is safe and free (no lock holder, no journal), and
/// every planned mount opens and is the planned mount. Nothing is frozen or written except
/// creating the state directory and lock file.
///
/// A freeze by another tool cannot be seen without freezing (the kernel offers no query);
/// it is detected by FIFREEZE's EBUSY at freeze time and handled by policy (R38).
pub fn preflight(plan: &Plan, options: &FreezeOptions) -> Result<PreflightReport, FreezeError> {
    let ops = KernelOps;
    let lock = prepare_state_dir(plan, options, &ops)?;
    drop(lock);
    let handles = open_all(plan, &ops)?;
    Ok(PreflightReport {
        checked: handles.len(),
    })
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

fn prepare_state_dir(
    plan: &Plan,
    options: &FreezeOptions,
    ops: &dyn FsOps,
) -> Result<StateLock, FreezeError> {
    let state_dir = &options.state_dir;
    let state_err = |source| FreezeError::StateDir {
        state_dir: state_dir.clone(),
        source,
    };
    let lock = StateLock::try_acquire(state_dir)
        .map_err(state_err)?
        .ok_or_else(|| FreezeError::LockHeld {
            lock_path: state_dir.join(crate::journal::LOCK_FILE),
        })?;
    let id = ops.identify_path(state_dir).map_err(state_err)?;
    let dev = id
        .mount_id
        .and_then(|m| plan.dev_of_mount_id(m))
        .unwrap_or(id.dev);
    if plan.may_freeze(dev) {
        return Err(FreezeError::StateDirUnsafe {
            state_dir: state_dir.clone(),
            reason: format!("device {dev} is in the freeze set or built on it"),
        });
    }
    if let Some(j) = Journal::read(state_dir)? {
        return Err(FreezeError::JournalPresent {
            path: Journal::path_in(state_dir),
            pid: j.pid,
        });
    }
    Ok(lock)
}

struct Handle {
    planned: PlannedFs,
    dev: DevNum,
    fd: Arc<OwnedFd>,
}

impl Handle {
    /// The member this filesystem becomes once frozen.
    fn member(&self) -> FrozenFs {
        FrozenFs {
            mount_point: self.planned.mount_point.clone(),
            dev: self.dev,
            fs_type: self.planned.fs_type.clone(),
            level: self.planned.level,
            open_path: self.planned.open_path.clone(),
            fd: self.fd.clone(),
        }
    }
}

fn open_all(plan: &Plan, ops: &dyn FsOps) -> Result<Vec<Handle>, FreezeError> {
    plan.filesystems()
        .map(|p| {
            let open_err = |source| FreezeError::Open {
                mount_point: p.mount_point.clone(),
                source,
            };
            let fd = ops.open(&p.open_path).map_err(open_err)?;
            let id = ops.identify(fd.as_fd()).map_err(open_err)?;
            let matches = match id.mount_id {
                Some(mnt) => mnt == p.mount_id,
                None => id.dev == p.dev,
            };
            if !matches {
                return Err(FreezeError::MountChanged {
                    mount_point: p.mount_point.clone(),
                    expected: format!("mount {} on {}", p.mount_id, p.dev),
                    found: format!(
                        "mount {} on {}",
                        id.mount_id.map_or("?".into(), |m| m.to_string()),
                        id.dev
                    ),
                });
            }
            Ok(Handle {
                planned: p.clone(),
                dev: id.dev,
                fd: Arc::new(fd),
            })
        })
        .collect()
}

#[derive(Debug)]
enum JobState {
    Running,
    /// The caller gave up at the deadline; the thread undoes a late success itself.
    Abandoned,
    /// Returned and sent its result to the caller, which may not have recorded it yet
    /// (`frozen`: the result was a success, so the filesystem is ours until thawed).
    Delivered {
        frozen: bool,
    },
    /// Collected, or returned after being abandoned and left nothing frozen.
    Done,
    /// Returned after being abandoned, froze, and its FITHAW failed: still frozen, ours.
    StillFrozen,
}

struct Job {
    state: Mutex<JobState>,
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

/// Marks the jobs still running as abandoned if a panic unwinds past them, so that a
/// FIFREEZE returning later thaws its filesystem instead of leaving it frozen unowned.
struct AbandonOnUnwind<'a>(&'a [(usize, Arc<Job>)]);

impl Drop for AbandonOnUnwind<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (_, job) in self.0 {
            let mut state = job.state.lock().unwrap_or_else(|p| p.into_inner());
            if matches!(*state, JobState::Running) {
                *state = JobState::Abandoned;
            }
        }
    }
}

/// Flush, then freeze level by level into `set`. `Err`: the first failure; the caller
/// rolls back what `set` holds.
fn freeze_levels(
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
    set.report.freeze_us = micros(window_start.elapsed());
    match failure {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FreezerConfig;
    use crate::mountinfo::parse_mountinfo;
    use crate::plan::{Selection, build_plan};
    use crate::topology::{Lower, Topology};
    use std::collections::BTreeMap;
    use std::os::fd::AsRawFd;

    /// Fake kernel: each fd maps to a mount (by the temp dir it opened); calls are recorded.
    #[derive(Default)]
    struct Fake {
        /// path -> (mount id, dev)
        mounts: BTreeMap<PathBuf, (u64, DevNum)>,
        /// raw fd -> path
        fds: Mutex<BTreeMap<i32, PathBuf>>,
        calls: Mutex<Vec<String>>,
        frozen: Mutex<Vec<PathBuf>>,
        foreign: Vec<PathBuf>,
        unsupported: Vec<PathBuf>,
        hang: Vec<PathBuf>,
        /// syncfs takes 1.5 s on these.
        sync_hang: Vec<PathBuf>,
        /// FITHAW fails (EIO) on these while the flag is set.
        stuck: Vec<PathBuf>,
        stuck_on: std::sync::atomic::AtomicBool,
        state_dev: Option<DevNum>,
        /// Every FIFREEZE waits here until `parties` calls have started (or it times out).
        freeze_rendezvous: Option<Rendezvous>,
        /// Every syncfs waits here likewise.
        sync_rendezvous: Option<Rendezvous>,
        flushing: Mutex<BTreeSet<DevNum>>,
        /// The n-th syncfs call (any filesystem) takes the n-th of these; later ones none.
        sync_durations: Mutex<std::collections::VecDeque<Duration>>,
    }

    /// A barrier with a timeout: a serial caller makes the test fail instead of hang.
    struct Rendezvous {
        parties: usize,
        arrived: Mutex<usize>,
        all_here: std::sync::Condvar,
        timeout: Duration,
        /// Calls that gave up waiting: they ran while no other call had started.
        timed_out: std::sync::atomic::AtomicUsize,
    }

    impl Rendezvous {
        fn new(parties: usize) -> Self {
            Self {
                parties,
                arrived: Mutex::new(0),
                all_here: std::sync::Condvar::new(),
                timeout: Duration::from_secs(2),
                timed_out: 0.into(),
            }
        }

        /// Arrive and wait until every party has arrived, or the timeout.
        fn meet(&self) {
            let mut arrived = self.arrived.lock().unwrap();
            *arrived += 1;
            self.all_here.notify_all();
            let (_arrived, waited) = self
                .all_here
                .wait_timeout_while(arrived, self.timeout, |n| *n < self.parties)
                .unwrap();
            if waited.timed_out() {
                self.timed_out
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }

        fn timed_out(&self) -> usize {
            self.timed_out.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl Fake {
        fn path(&self, fd: BorrowedFd<'_>) -> PathBuf {
            self.fds.lock().unwrap()[&fd.as_raw_fd()].clone()
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl FsOps for Fake {
        fn open(&self, path: &Path) -> std::io::Result<OwnedFd> {
            if !self.mounts.contains_key(path) {
                return Err(std::io::Error::from_raw_os_error(2));
            }
            let fd: OwnedFd = std::fs::File::open("/").unwrap().into();
            self.fds
                .lock()
                .unwrap()
                .insert(fd.as_raw_fd(), path.to_path_buf());
            Ok(fd)
        }
        fn identify(&self, fd: BorrowedFd<'_>) -> std::io::Result<FileIdentity> {
            let (mount_id, dev) = self.mounts[&self.path(fd)];
            Ok(FileIdentity {
                dev,
                mount_id: Some(mount_id),
            })
        }
        fn identify_path(&self, _: &Path) -> std::io::Result<FileIdentity> {
            Ok(FileIdentity {
                dev: self.state_dev.unwrap_or(DevNum {
                    major: 0,
                    minor: 99,
                }),
                mount_id: None,
            })
        }
        fn syncfs(&self, fd: BorrowedFd<'_>) -> std::io::Result<()> {
            let p = self.path(fd);
            if let Some(r) = &self.sync_rendezvous {
                r.meet();
            }
            if self.sync_hang.contains(&p) {
                std::thread::sleep(Duration::from_millis(1500));
            }
            let took = self.sync_durations.lock().unwrap().pop_front();
            if let Some(d) = took {
                std::thread::sleep(d);
            }
            self.calls
                .lock()
                .unwrap()
                .push(format!("sync {}", p.display()));
            Ok(())
        }
        fn freeze(&self, fd: BorrowedFd<'_>) -> Result<(), SysFreezeError> {
            let p = self.path(fd);
            if let Some(r) = &self.freeze_rendezvous {
                r.meet();
            }
            if self.hang.contains(&p) {
                std::thread::sleep(Duration::from_millis(300));
            }
            self.calls
                .lock()
                .unwrap()
                .push(format!("freeze {}", p.display()));
            if self.foreign.contains(&p) {
                return Err(SysFreezeError::AlreadyFrozen);
            }
            if self.unsupported.contains(&p) {
                return Err(SysFreezeError::Unsupported);
            }
            self.frozen.lock().unwrap().push(p);
            Ok(())
        }
        fn flushing(&self) -> &Mutex<BTreeSet<DevNum>> {
            &self.flushing
        }
        fn thaw(&self, fd: BorrowedFd<'_>) -> Result<(), ThawError> {
            let p = self.path(fd);
            self.calls
                .lock()
                .unwrap()
                .push(format!("thaw {}", p.display()));
            if self.stuck.contains(&p) && self.stuck_on.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(ThawError::Other(rustix::io::Errno::IO));
            }
            let mut frozen = self.frozen.lock().unwrap();
            match frozen.iter().position(|f| *f == p) {
                Some(i) => {
                    frozen.remove(i);
                    Ok(())
                }
                None => Err(ThawError::NotFrozen),
            }
        }
    }

    struct NoTopology(BTreeMap<DevNum, Vec<Lower>>);
    impl Topology for NoTopology {
        fn lower(&self, dev: DevNum) -> Vec<Lower> {
            self.0.get(&dev).cloned().unwrap_or_default()
        }
        fn dev_of_path(&self, _: &Path) -> Option<DevNum> {
            None
        }
        fn block_device(&self, _: &Path) -> Option<DevNum> {
            None
        }
    }

    const TABLE: &str = "\
1 0 8:1 / / rw - ext4 /dev/sda1 rw
2 1 8:2 / /host rw - xfs /dev/sda2 rw
3 1 7:0 / /img rw - ext4 /dev/loop0 rw
4 1 8:3 / /other rw - ext4 /dev/sda3 rw
5 1 0:20 / /run rw - tmpfs tmpfs rw
";

    fn setup(sel: Vec<&str>) -> (Plan, Fake, tempfile::TempDir) {
        let mounts = parse_mountinfo(TABLE.as_bytes()).unwrap();
        let topo = NoTopology(BTreeMap::from([(
            DevNum { major: 7, minor: 0 },
            vec![Lower::BackingFile("/host/a.img".into())],
        )]));
        let plan = build_plan(
            &mounts,
            &topo,
            &Selection::Explicit(sel.iter().map(PathBuf::from).collect()),
            &FreezerConfig::default().compile().unwrap(),
            None,
        )
        .unwrap();
        let mut fake = Fake::default();
        for m in &mounts {
            fake.mounts
                .insert(m.mount_point.clone(), (m.mount_id, m.dev));
        }
        fake.state_dev = Some(DevNum {
            major: 0,
            minor: 20,
        });
        (plan, fake, tempfile::tempdir().unwrap())
    }

    fn opts(dir: &tempfile::TempDir) -> FreezeOptions {
        let mut o = FreezeOptions::new(&FreezerConfig::default(), dir.path().join("state"));
        o.freeze_deadline = Duration::from_millis(100);
        o
    }

    #[test]
    fn freezes_dependents_first_and_thaws_in_reverse() {
        let (plan, fake, dir) = setup(vec!["/host", "/img", "/other"]);
        let fake = Arc::new(fake);
        let mut set = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap();
        assert_eq!(set.fds().len(), 3);
        // The journal lists every superblock while frozen.
        let j = Journal::read(&dir.path().join("state")).unwrap().unwrap();
        assert_eq!(j.filesystems.len(), 3);
        assert_eq!(j.pid, std::process::id() as i32);
        let frozen_order: Vec<PathBuf> = set
            .members()
            .iter()
            .map(|m| m.mount_point.clone())
            .collect();
        let host_pos = frozen_order
            .iter()
            .position(|p| p == Path::new("/host"))
            .unwrap();
        let img_pos = frozen_order
            .iter()
            .position(|p| p == Path::new("/img"))
            .unwrap();
        assert!(img_pos < host_pos);
        let report = set.thaw();
        assert!(report.complete);
        let thawed: Vec<PathBuf> = report
            .filesystems
            .iter()
            .map(|f| f.mount_point.clone())
            .collect();
        let mut expected = frozen_order.clone();
        expected.reverse();
        assert_eq!(thawed, expected);
        assert!(set.is_empty());
        assert!(fake.frozen.lock().unwrap().is_empty());
        assert!(Journal::read(&dir.path().join("state")).unwrap().is_none());
        // All syncs happen before the first freeze.
        let calls = fake.calls();
        let last_sync = calls.iter().rposition(|c| c.starts_with("sync")).unwrap();
        let first_freeze = calls.iter().position(|c| c.starts_with("freeze")).unwrap();
        assert!(last_sync < first_freeze);
    }

    /// The flush is repeated while it converges: a long pass, a pass a tenth as long, then
    /// passes that find nothing (below the floor) end it. A pass no shorter than half the
    /// one before (writers dirtying as fast as it writes) ends it too; a zero budget is one
    /// pass; `Skip` flushes nothing and still freezes, journals and thaws.
    #[test]
    fn the_flush_repeats_while_it_converges_and_skip_leaves_it_to_fifreeze() {
        let ms = Duration::from_millis;
        let run = |durations: &[Duration], flush: FlushPolicy| {
            let (plan, fake, dir) = setup(vec!["/other"]);
            fake.sync_durations
                .lock()
                .unwrap()
                .extend(durations.iter().copied());
            let fake = Arc::new(fake);
            let mut o = opts(&dir);
            o.freeze_deadline = Duration::from_secs(30);
            o.flush = flush;
            let mut set = freeze_with(&plan, &o, fake.clone(), &|| false).unwrap();
            let passes = set.report().flush_passes_us.clone();
            let syncs = fake
                .calls()
                .iter()
                .filter(|c| c.starts_with("sync"))
                .count();
            assert_eq!(passes.len(), syncs, "one syncfs per pass (one filesystem)");
            assert!(Journal::read(&dir.path().join("state")).unwrap().is_some());
            assert_eq!(set.members().len(), 1);
            assert!(set.thaw().complete);
            passes
        };
        let converge = FlushPolicy::Converge { budget: ms(1000) };
        let passes = run(&[ms(300), ms(30)], converge);
        assert!(
            (3..=6).contains(&passes.len()),
            "300 ms, 30 ms, then nothing: {passes:?}"
        );
        assert_eq!(
            run(&[ms(100), ms(100)], converge).len(),
            2,
            "not converging"
        );
        assert_eq!(
            run(&[ms(300), ms(30)], FlushPolicy::Converge { budget: ms(0) }).len(),
            1
        );
        assert!(run(&[], FlushPolicy::Skip).is_empty());
    }

    /// /img and /other are independent (both level 0): their FIFREEZE calls must run at the
    /// same time, so each fake call waits until the other has started. A serial engine makes
    /// the first call wait out the rendezvous timeout.
    #[test]
    fn freezes_within_a_level_run_concurrently() {
        let (plan, mut fake, dir) = setup(vec!["/img", "/other"]);
        assert_eq!(plan.levels.len(), 1, "{:?}", plan.levels);
        assert_eq!(plan.levels[0].len(), 2);
        fake.freeze_rendezvous = Some(Rendezvous::new(2));
        let fake = Arc::new(fake);
        let mut o = opts(&dir);
        o.freeze_deadline = Duration::from_secs(10);
        let mut set = freeze_with(&plan, &o, fake.clone(), &|| false).unwrap();
        assert_eq!(set.members().len(), 2);
        let r = fake.freeze_rendezvous.as_ref().unwrap();
        assert_eq!(
            r.timed_out(),
            0,
            "a FIFREEZE waited alone for the other: the level was frozen serially"
        );
        assert!(set.thaw().complete);
    }

    /// The flush before the first freeze runs every syncfs at the same time.
    #[test]
    fn flushes_run_concurrently() {
        let (plan, mut fake, dir) = setup(vec!["/img", "/other"]);
        fake.sync_rendezvous = Some(Rendezvous::new(2));
        let fake = Arc::new(fake);
        let mut o = opts(&dir);
        o.freeze_deadline = Duration::from_secs(10);
        let mut set = freeze_with(&plan, &o, fake.clone(), &|| false).unwrap();
        let r = fake.sync_rendezvous.as_ref().unwrap();
        assert_eq!(
            r.timed_out(),
            0,
            "a syncfs waited alone for the other: the flush ran serially"
        );
        assert!(
            set.report()
                .filesystems
                .iter()
                .all(|f| f.sync_error.is_none())
        );
        assert!(set.thaw().complete);
    }

    #[test]
    fn foreign_freeze_fails_rolls_back_ours_and_leaves_theirs() {
        let (plan, mut fake, dir) = setup(vec!["/host", "/img", "/other"]);
        fake.foreign = vec!["/host".into()];
        let fake = Arc::new(fake);
        let err = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap_err();
        assert!(
            matches!(err.error, FreezeError::ForeignFreeze { ref mount_point } if mount_point == Path::new("/host"))
        );
        assert!(fake.frozen.lock().unwrap().is_empty(), "ours rolled back");
        assert!(
            !fake.calls().contains(&"thaw /host".to_string()),
            "theirs never thawed"
        );
        let rollback = err.report.rollback.unwrap();
        assert!(rollback.complete);
        assert_eq!(rollback.filesystems.len(), 2);
        assert!(Journal::read(&dir.path().join("state")).unwrap().is_none());
    }

    #[test]
    fn foreign_freeze_ignored_by_policy_is_not_ours() {
        let (plan, mut fake, dir) = setup(vec!["/host", "/img"]);
        fake.foreign = vec!["/host".into()];
        let fake = Arc::new(fake);
        let mut o = opts(&dir);
        o.on_foreign_freeze = ForeignFreezePolicy::Ignore;
        let mut set = freeze_with(&plan, &o, fake.clone(), &|| false).unwrap();
        assert_eq!(set.members().len(), 1);
        // Regression (issue 8, item 3): the journal listed every planned filesystem, so a
        // crash now made recovery thaw /host, someone else's freeze.
        let j = Journal::read(&dir.path().join("state")).unwrap().unwrap();
        let listed: Vec<&Path> = j.filesystems.iter().map(|e| e.path.as_path()).collect();
        assert_eq!(listed, vec![Path::new("/img")], "only what we froze");
        set.thaw();
        assert!(!fake.calls().contains(&"thaw /host".to_string()));
    }

    /// Regression (issue 8, item 3): a partial thaw left the journal listing what it had
    /// thawed; recovery after a crash would thaw it again, maybe after someone else froze it.
    #[test]
    fn a_partial_thaw_narrows_the_journal_to_what_is_still_frozen() {
        let (plan, mut fake, dir) = setup(vec!["/img", "/other"]);
        fake.stuck = vec!["/other".into()];
        fake.stuck_on
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let fake = Arc::new(fake);
        let state = dir.path().join("state");
        let mut set = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap();
        assert_eq!(Journal::read(&state).unwrap().unwrap().filesystems.len(), 2);
        let report = set.thaw();
        assert!(!report.complete);
        let j = Journal::read(&state).unwrap().unwrap();
        let listed: Vec<&Path> = j.filesystems.iter().map(|e| e.path.as_path()).collect();
        assert_eq!(listed, vec![Path::new("/other")]);
        fake.stuck_on
            .store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(set.thaw().complete);
        assert!(Journal::read(&state).unwrap().is_none());
    }

    #[test]
    fn unsupported_skip_or_fail() {
        let (plan, mut fake, dir) = setup(vec!["/other", "/img"]);
        fake.unsupported = vec!["/other".into()];
        let fake = Arc::new(fake);
        let set = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap();
        assert_eq!(set.members().len(), 1);
        assert!(
            set.report()
                .filesystems
                .iter()
                .any(|f| f.outcome == FsFreezeOutcome::Unsupported)
        );
        drop(set);
        assert!(fake.frozen.lock().unwrap().is_empty(), "drop thaws");
        let mut o = opts(&dir);
        o.on_unsupported = UnsupportedPolicy::Fail;
        let err = freeze_with(&plan, &o, fake.clone(), &|| false).unwrap_err();
        assert!(matches!(err.error, FreezeError::Unsupported { .. }));
        assert!(fake.frozen.lock().unwrap().is_empty());
    }

    #[test]
    fn a_hung_freeze_fails_and_is_thawed_when_it_returns() {
        let (plan, mut fake, dir) = setup(vec!["/other", "/img"]);
        fake.hang = vec!["/other".into()];
        let fake = Arc::new(fake);
        let err = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap_err();
        assert!(matches!(err.error, FreezeError::Deadline { .. }));
        // The hung call returns after 300 ms, freezes, and its worker thaws it.
        std::thread::sleep(Duration::from_millis(600));
        assert!(fake.frozen.lock().unwrap().is_empty());
        assert!(fake.calls().contains(&"thaw /other".to_string()));
    }

    /// Regression: syncfs had no deadline, so a hung flush wedged the caller (the daemon's
    /// fs worker: coordinator stuck, every later FREEZE refused as busy). It now fails the
    /// freeze at the per-filesystem deadline, before anything is frozen.
    #[test]
    fn a_hung_flush_fails_the_freeze_at_the_deadline_with_nothing_frozen() {
        let (plan, mut fake, dir) = setup(vec!["/other", "/img"]);
        fake.sync_hang = vec!["/img".into()];
        let fake = Arc::new(fake);
        let state = dir.path().join("state");
        let started = Instant::now();
        let err = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false)
            .expect_err("the flush of /img hangs past the deadline");
        let took = started.elapsed();
        assert!(
            matches!(err.error, FreezeError::FlushDeadline { ref mount_point, .. } if mount_point == Path::new("/img")),
            "{}",
            err.error
        );
        assert!(
            took < Duration::from_millis(1200),
            "waited for the hung syncfs ({took:?})"
        );
        assert!(err.unthawed.is_none());
        assert!(
            !fake.calls().iter().any(|c| c.starts_with("freeze")),
            "{:?}",
            fake.calls()
        );
        assert!(Journal::read(&state).unwrap().is_none());
        assert!(StateLock::try_acquire(&state).unwrap().is_some());
        // The abandoned flush finishes on its own later; nothing to undo.
        std::thread::sleep(Duration::from_millis(1600));
        assert!(fake.calls().contains(&"sync /img".to_string()));
        assert!(fake.frozen.lock().unwrap().is_empty());
    }

    /// Regression (issue 8, item 8): every FREEZE on a filesystem whose syncfs hangs left
    /// one more thread (and fd) behind. A second freeze while the first flush still hangs
    /// now fails at once without a new flush thread.
    #[test]
    fn a_hung_flush_is_not_started_again_while_it_hangs() {
        let (plan, mut fake, dir) = setup(vec!["/img"]);
        fake.sync_hang = vec!["/img".into()];
        let fake = Arc::new(fake);
        let err = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap_err();
        assert!(matches!(err.error, FreezeError::FlushDeadline { .. }));
        let started = Instant::now();
        for _ in 0..20 {
            let err = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap_err();
            assert!(
                matches!(err.error, FreezeError::FlushDeadline { .. }),
                "{}",
                err.error
            );
        }
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "each freeze waited for its own flush: {:?}",
            started.elapsed()
        );
        // Once the first flush returns, freezing works again.
        std::thread::sleep(Duration::from_millis(1600));
        assert_eq!(
            fake.calls().iter().filter(|c| *c == "sync /img").count(),
            1,
            "one flush thread in all: {:?}",
            fake.calls()
        );
        let mut fake_ok = Arc::try_unwrap(fake).ok().expect("no other user");
        fake_ok.sync_hang.clear();
        let fake_ok = Arc::new(fake_ok);
        let mut set = freeze_with(&plan, &opts(&dir), fake_ok, &|| false).unwrap();
        assert!(set.thaw().complete);
    }

    #[test]
    fn a_cancel_while_freezing_stops_before_the_next_level_and_rolls_back() {
        // /img (level 0, its image is on /host) is slow; /host is level 1.
        let (plan, mut fake, dir) = setup(vec!["/host", "/img"]);
        fake.hang = vec!["/img".into()];
        let fake = Arc::new(fake);
        let cancel = std::sync::atomic::AtomicBool::new(false);
        let err = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                cancel.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            let mut o = opts(&dir);
            o.freeze_deadline = Duration::from_secs(5);
            freeze_with(&plan, &o, fake.clone(), &|| {
                cancel.load(std::sync::atomic::Ordering::SeqCst)
            })
            .unwrap_err()
        });
        assert!(matches!(err.error, FreezeError::Cancelled), "{}", err.error);
        // /img's FIFREEZE was abandoned inside level 0; its thread thaws it on return.
        std::thread::sleep(Duration::from_millis(500));
        let calls = fake.calls();
        assert!(
            !calls.contains(&"freeze /host".to_string()),
            "the next level was frozen after the cancel: {calls:?}"
        );
        assert!(calls.contains(&"thaw /img".to_string()), "{calls:?}");
        assert!(fake.frozen.lock().unwrap().is_empty());
        let mut rest = err
            .unthawed
            .expect("kept until the abandoned call returned");
        assert!(rest.thaw().complete);
        assert!(Journal::read(&dir.path().join("state")).unwrap().is_none());
        assert!(
            StateLock::try_acquire(&dir.path().join("state"))
                .unwrap()
                .is_some()
        );
    }

    /// Regression (issue 8, item 1): a cancel was only looked at between levels, so a
    /// THAW, SIGTERM or deadline waited for a slow FIFREEZE (up to the per-filesystem
    /// deadline) before anything was rolled back. Now the call is abandoned at once and
    /// thawed by its thread when it returns.
    #[test]
    fn a_cancel_inside_a_level_abandons_the_running_fifreeze_at_once() {
        let (plan, mut fake, dir) = setup(vec!["/other"]);
        fake.hang = vec!["/other".into()];
        let fake = Arc::new(fake);
        let cancel = std::sync::atomic::AtomicBool::new(false);
        let started = Instant::now();
        let err = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(30));
                cancel.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            let mut o = opts(&dir);
            o.freeze_deadline = Duration::from_secs(30);
            freeze_with(&plan, &o, fake.clone(), &|| {
                cancel.load(std::sync::atomic::Ordering::SeqCst)
            })
            .unwrap_err()
        });
        let took = started.elapsed();
        assert!(matches!(err.error, FreezeError::Cancelled), "{}", err.error);
        // The hung call takes 300 ms; the cancel came after 30.
        assert!(
            took < Duration::from_millis(250),
            "waited for the running FIFREEZE: {took:?}"
        );
        assert_eq!(
            err.report.filesystems[0].outcome,
            FsFreezeOutcome::Abandoned
        );
        let mut rest = err
            .unthawed
            .expect("the abandoned call may still freeze: kept");
        assert_eq!(rest.freezes_pending(), vec![PathBuf::from("/other")]);
        let state = dir.path().join("state");
        assert!(
            Journal::read(&state).unwrap().is_some(),
            "listed while in flight"
        );
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            fake.frozen.lock().unwrap().is_empty(),
            "its thread thawed it"
        );
        assert!(rest.thaw().complete);
        assert!(Journal::read(&state).unwrap().is_none());
    }

    /// Regression (issue 8, item 7): a FIFREEZE that succeeded and sent its result was
    /// marked done before the caller recorded it; if the caller never did (a panic or an
    /// early exit between the two), the set forgot a frozen filesystem.
    #[test]
    fn a_delivered_but_unrecorded_freeze_is_adopted_and_thawed() {
        let (plan, fake, dir) = setup(vec!["/other"]);
        let fake = Arc::new(fake);
        let mut set = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap();
        // Recreate the window: the member's result delivered, not recorded.
        let member = set.members.pop().unwrap();
        set.in_flight.push(InFlight {
            index: 0,
            job: Arc::new(Job {
                state: Mutex::new(JobState::Delivered { frozen: true }),
            }),
            member,
        });
        assert!(set.thaw().complete);
        assert!(fake.frozen.lock().unwrap().is_empty(), "{:?}", fake.calls());
    }

    /// What a guardian would be told.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl FreezeWatch for Recorder {
        fn arm(&self, dev: DevNum, _: BorrowedFd<'_>) -> std::io::Result<()> {
            self.0.lock().unwrap().push(format!("arm {dev}"));
            Ok(())
        }
        fn disarm(&self, dev: DevNum) {
            self.0.lock().unwrap().push(format!("disarm {dev}"));
        }
    }

    /// The watch holds each filesystem before its FIFREEZE and lets go of a foreign one
    /// (EBUSY) at once and of ours when thawed.
    #[test]
    fn the_watch_is_armed_before_each_fifreeze_and_disarmed_when_not_ours() {
        let (plan, mut fake, dir) = setup(vec!["/host", "/img"]);
        fake.foreign = vec!["/host".into()];
        let fake = Arc::new(fake);
        let mut o = opts(&dir);
        o.on_foreign_freeze = ForeignFreezePolicy::Ignore;
        let rec = Arc::new(Recorder::default());
        let mut set =
            freeze_with_watch(&plan, &o, fake.clone(), &|| false, Some(rec.clone())).unwrap();
        let img = DevNum { major: 7, minor: 0 };
        let host = DevNum { major: 8, minor: 2 };
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![
                format!("arm {img}"),
                format!("arm {host}"),
                format!("disarm {host}")
            ]
        );
        assert!(set.thaw().complete);
        assert_eq!(
            rec.0.lock().unwrap().last().unwrap(),
            &format!("disarm {img}")
        );
    }

    #[test]
    fn a_freeze_cancelled_before_it_starts_touches_nothing() {
        let (plan, fake, dir) = setup(vec!["/other"]);
        let fake = Arc::new(fake);
        let err = freeze_with(&plan, &opts(&dir), fake.clone(), &|| true).unwrap_err();
        assert!(matches!(err.error, FreezeError::Cancelled));
        assert!(fake.calls().is_empty(), "{:?}", fake.calls());
        assert!(Journal::read(&dir.path().join("state")).unwrap().is_none());
    }

    #[test]
    fn a_deadline_too_large_for_the_clock_means_no_deadline() {
        let (plan, fake, dir) = setup(vec!["/other", "/img"]);
        let fake = Arc::new(fake);
        let mut o = opts(&dir);
        o.freeze_deadline = Duration::MAX;
        let mut set = freeze_with(&plan, &o, fake.clone(), &|| false).unwrap();
        assert_eq!(set.members().len(), 2);
        assert!(set.thaw().complete);
    }

    /// A panic while freezing (here injected through the cancel check) unwinds through the
    /// set, whose Drop thaws what froze (recorded or only delivered) and removes the journal.
    #[test]
    fn a_panic_while_freezing_thaws_what_froze() {
        let (plan, fake, dir) = setup(vec!["/host", "/img"]);
        let fake = Arc::new(fake);
        let panicked = std::sync::atomic::AtomicBool::new(false);
        let cancelled = || {
            // Once /img has frozen (level 0), the next look at the cancel panics: inside
            // level 0's wait or before level 1, depending on timing; both must thaw /img.
            if fake
                .frozen
                .lock()
                .unwrap()
                .iter()
                .any(|p| p == Path::new("/img"))
                && !panicked.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                panic!("injected");
            }
            false
        };
        let o = opts(&dir);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            freeze_with(&plan, &o, fake.clone(), &cancelled)
        }));
        assert!(result.is_err());
        assert!(fake.calls().contains(&"freeze /img".to_string()));
        assert!(fake.frozen.lock().unwrap().is_empty(), "{:?}", fake.calls());
        assert!(Journal::read(&dir.path().join("state")).unwrap().is_none());
    }

    /// Regression (R39): after a FIFREEZE missed its deadline, the rollback removed the
    /// journal and released the lock while the abandoned call could still succeed; a daemon
    /// dying in that window left a frozen filesystem that nothing listed. The journal and
    /// lock now stay (in the set handed back) until the call returned and was undone.
    #[test]
    fn a_timed_out_freeze_keeps_journal_and_lock_until_the_abandoned_call_returns() {
        let (plan, mut fake, dir) = setup(vec!["/other", "/img"]);
        fake.hang = vec!["/other".into()];
        let fake = Arc::new(fake);
        let state = dir.path().join("state");
        let err = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap_err();
        assert!(
            matches!(err.error, FreezeError::Deadline { .. }),
            "{}",
            err.error
        );
        let rollback = err.report.rollback.as_ref().unwrap();
        assert!(!rollback.complete);
        assert_eq!(rollback.freezes_pending, vec![PathBuf::from("/other")]);
        let journal = Journal::read(&state).unwrap();
        assert!(
            journal.is_some_and(|j| j.filesystems.iter().any(|e| e.path == Path::new("/other"))),
            "the journal no longer lists /other while its FIFREEZE may still succeed"
        );
        let listed = Journal::read(&state).unwrap().unwrap().filesystems;
        assert!(
            !listed.iter().any(|e| e.path == Path::new("/img")),
            "the journal still lists /img, thawed by the rollback: {listed:?}"
        );
        assert!(
            StateLock::try_acquire(&state).unwrap().is_none(),
            "the state lock was released while a FIFREEZE was still running"
        );
        let mut rest = err.unthawed.expect("the pending freeze is handed back");
        assert!(!rest.is_empty());
        // The hung call returns after 300 ms, freezes, and its thread thaws it.
        std::thread::sleep(Duration::from_millis(600));
        assert!(fake.frozen.lock().unwrap().is_empty());
        let report = rest.thaw();
        assert!(report.complete, "{report:?}");
        assert!(report.freezes_pending.is_empty());
        assert!(rest.is_empty());
        assert!(Journal::read(&state).unwrap().is_none());
        assert!(StateLock::try_acquire(&state).unwrap().is_some());
    }

    /// An abandoned FIFREEZE that succeeds late and whose own thaw fails is adopted by the
    /// set, so the caller's retries thaw it; journal and lock stay until then.
    #[test]
    fn a_late_freeze_whose_thaw_fails_is_adopted_and_retried() {
        let (plan, mut fake, dir) = setup(vec!["/other"]);
        fake.hang = vec!["/other".into()];
        fake.stuck = vec!["/other".into()];
        fake.stuck_on = true.into();
        let fake = Arc::new(fake);
        let state = dir.path().join("state");
        let err = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap_err();
        let mut rest = err.unthawed.expect("the pending freeze is handed back");
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(*fake.frozen.lock().unwrap(), vec![PathBuf::from("/other")]);
        let report = rest.thaw();
        assert!(!report.complete);
        assert_eq!(rest.members().len(), 1, "the late freeze was not adopted");
        assert!(Journal::read(&state).unwrap().is_some());
        fake.stuck_on
            .store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(rest.thaw().complete);
        assert!(fake.frozen.lock().unwrap().is_empty());
        assert!(Journal::read(&state).unwrap().is_none());
        assert!(StateLock::try_acquire(&state).unwrap().is_some());
    }

    /// Regression: when the rollback of a failed freeze could not thaw a member, the set
    /// was dropped anyway: the member stayed frozen with nobody owning it, the state lock
    /// was released (so nothing showed a freeze in progress) and the caller was told
    /// nothing of ours was frozen. The rest now comes back to the caller, still locked.
    #[test]
    fn a_rollback_that_cannot_thaw_hands_the_rest_back_still_locked() {
        let (plan, mut fake, dir) = setup(vec!["/host", "/img", "/other"]);
        fake.foreign = vec!["/host".into()];
        fake.stuck = vec!["/img".into()];
        fake.stuck_on = true.into();
        let fake = Arc::new(fake);
        let state = dir.path().join("state");
        let err = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap_err();
        assert!(matches!(err.error, FreezeError::ForeignFreeze { .. }));
        assert!(!err.report.rollback.as_ref().unwrap().complete);
        assert_eq!(*fake.frozen.lock().unwrap(), vec![PathBuf::from("/img")]);
        assert!(
            StateLock::try_acquire(&state).unwrap().is_none(),
            "the state lock was released while /img is still frozen by us"
        );
        assert!(Journal::read(&state).unwrap().is_some());
        let mut rest = err.unthawed.expect("the unthawed rest is handed back");
        let members: Vec<&Path> = rest
            .members()
            .iter()
            .map(|m| m.mount_point.as_path())
            .collect();
        assert_eq!(members, vec![Path::new("/img")]);
        // Once FITHAW works again, a retry finishes the job and releases everything.
        fake.stuck_on
            .store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(rest.thaw().complete);
        assert!(fake.frozen.lock().unwrap().is_empty());
        assert!(Journal::read(&state).unwrap().is_none());
        assert!(StateLock::try_acquire(&state).unwrap().is_some());
    }

    #[test]
    fn state_dir_on_a_planned_filesystem_is_refused() {
        let (plan, mut fake, dir) = setup(vec!["/host", "/img"]);
        fake.state_dev = Some(DevNum { major: 8, minor: 2 });
        let err = freeze_with(&plan, &opts(&dir), Arc::new(fake), &|| false).unwrap_err();
        assert!(
            matches!(err.error, FreezeError::StateDirUnsafe { .. }),
            "{}",
            err.error
        );
        // Also one built on a planned filesystem (the loop fs whose image is on /host).
        let (plan, mut fake, dir) = setup(vec!["/host"]);
        fake.state_dev = Some(DevNum { major: 7, minor: 0 });
        let err = freeze_with(&plan, &opts(&dir), Arc::new(fake), &|| false).unwrap_err();
        assert!(matches!(err.error, FreezeError::StateDirUnsafe { .. }));
    }

    #[test]
    fn lock_and_journal_refuse_a_second_freeze() {
        let (plan, fake, dir) = setup(vec!["/other"]);
        let fake = Arc::new(fake);
        let set = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap();
        let err = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap_err();
        assert!(matches!(err.error, FreezeError::LockHeld { .. }));
        std::mem::forget(set); // simulated crash: journal stays, lock fd leaks...
        // ...but a leaked fd still holds the lock in this process, so only check the journal.
        let j = Journal::read(&dir.path().join("state")).unwrap().unwrap();
        assert_eq!(j.filesystems[0].path, PathBuf::from("/other"));
    }

    #[test]
    fn mount_changed_is_detected_before_freezing() {
        let (plan, mut fake, dir) = setup(vec!["/other"]);
        fake.mounts
            .insert("/other".into(), (42, DevNum { major: 8, minor: 3 }));
        let fake = Arc::new(fake);
        let err = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap_err();
        assert!(matches!(err.error, FreezeError::MountChanged { .. }));
        assert!(!fake.calls().iter().any(|c| c.starts_with("freeze")));
    }
}
