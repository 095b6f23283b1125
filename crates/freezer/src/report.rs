//! The freezer's reports as data: per filesystem and per freeze/thaw, what the daemon
//! logs and keeps in its report history. They are worded for Linux's FIFREEZE/FITHAW
//! engine, which makes them; they are plain serde data with no platform in them, so the
//! history and its readers (`hv-vss history`, `metrics`) build on FreeBSD too.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::DevNum;
use crate::serde_util;

/// The outcome of FIFREEZE on one filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum FsFreezeOutcome {
    /// Not attempted (an earlier step failed).
    NotAttempted,
    /// Frozen by us.
    Frozen,
    /// Frozen by someone else (EBUSY), and left to them.
    ForeignFrozen,
    /// EOPNOTSUPP, skipped by policy.
    Unsupported,
    /// FIFREEZE failed.
    Failed {
        /// The error.
        error: String,
    },
    /// FIFREEZE missed its deadline; the worker thaws it if it ever returns success.
    TimedOut,
    /// FIFREEZE was still running when the freeze was cancelled (a thaw overtook it); its
    /// thread thaws it if it ever returns success.
    Abandoned,
}

/// Per-filesystem facts of one freeze.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsReport {
    /// Mount point.
    #[serde(with = "serde_util::path")]
    pub mount_point: PathBuf,
    /// Device as seen through the opened fd.
    #[serde(with = "serde_util::dev")]
    pub dev: DevNum,
    /// Type.
    pub fs_type: String,
    /// Level.
    pub level: usize,
    /// Duration of `syncfs`.
    pub sync_us: Option<u64>,
    /// `syncfs` error, if any (the freeze goes on: FIFREEZE writes back again).
    pub sync_error: Option<String>,
    /// When FIFREEZE was called, from the first FIFREEZE call.
    pub freeze_start_us: Option<u64>,
    /// Duration of FIFREEZE.
    pub freeze_us: Option<u64>,
    /// Outcome.
    pub outcome: FsFreezeOutcome,
}

/// Report of a freeze.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeReport {
    /// Wall-clock start (Unix milliseconds).
    pub started_unix_ms: u64,
    /// Opening, checking and journaling.
    pub prepare_us: u64,
    /// The parallel `syncfs` phase.
    pub sync_us: u64,
    /// From the first FIFREEZE call to the last FIFREEZE return.
    pub freeze_us: u64,
    /// One entry per planned filesystem, in plan order.
    pub filesystems: Vec<FsReport>,
    /// The rollback, if the freeze failed after freezing something.
    pub rollback: Option<ThawReport>,
    /// The plan was the one made at the check (HOT_BACKUP), the mount table unchanged since;
    /// set by the caller, which knows.
    #[serde(default)]
    pub plan_reused: bool,
    /// Duration of each parallel flush pass before the first FIFREEZE (none if skipped).
    #[serde(default)]
    pub flush_passes_us: Vec<u64>,
    /// Time the caller waited, before this freeze began, for its own flush ahead to stop
    /// (a `syncfs` still running when FREEZE came); set by the caller, which knows.
    #[serde(default)]
    pub flush_ahead_wait_us: u64,
    /// What the freeze did with the kernel's expedited RCU grace periods (Linux).
    #[serde(default)]
    pub expedite: Expedite,
}

/// What a freeze did with the kernel's expedited RCU grace periods (Linux,
/// `crate::expedite`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Expedite {
    /// Not asked for (configuration), or nothing was frozen.
    #[default]
    Off,
    /// Turned on for the FIFREEZE calls, off again after.
    Expedited,
    /// Already on (someone else's setting): used, left as found.
    AlreadyOn,
    /// Could not be used: the freeze ran with normal grace periods.
    Unavailable {
        /// Why (no such file, read-only sysfs, `rcu_normal` set).
        reason: String,
    },
}

/// Outcome of FITHAW on one filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum FsThawOutcome {
    /// Thawed.
    Thawed,
    /// EINVAL: someone else thawed it already (e.g. SysRq-j).
    WasNotFrozen,
    /// FITHAW failed; it stays in the frozen set.
    Failed {
        /// The error.
        error: String,
    },
}

/// Per-filesystem facts of one thaw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsThawReport {
    /// Mount point.
    #[serde(with = "serde_util::path")]
    pub mount_point: PathBuf,
    /// Device.
    #[serde(with = "serde_util::dev")]
    pub dev: DevNum,
    /// Duration of FITHAW.
    pub thaw_us: u64,
    /// Outcome.
    pub outcome: FsThawOutcome,
}

/// Report of a thaw (or rollback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThawReport {
    /// In the order thawed (reverse of the order frozen).
    pub filesystems: Vec<FsThawReport>,
    /// The whole thaw.
    pub thaw_us: u64,
    /// From the first FIFREEZE call to the last FITHAW return.
    pub frozen_window_us: u64,
    /// Every member is thawed; the journal is removed and the lock released.
    pub complete: bool,
    /// Removing the journal failed (after a complete thaw).
    pub journal_error: Option<String>,
    /// Filesystems whose FIFREEZE missed its deadline and has not returned yet: it may
    /// still freeze (its thread then thaws it), so the thaw is not complete and the
    /// journal and lock stay until it has returned (R39).
    #[serde(default, with = "serde_util::paths")]
    pub freezes_pending: Vec<PathBuf>,
}
