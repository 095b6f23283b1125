//! How a freeze fails: [`FreezeError`] (the first error, one variant per cause) and
//! [`FreezeFailure`] (that error, the report with its rollback, and whatever the rollback
//! could not thaw, still owned).

use std::path::PathBuf;
use std::time::Duration;

use hv_vss_sys::fs::FreezeError as SysFreezeError;

use super::FrozenSet;
use crate::report::FreezeReport;

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
