//! The filesystem freezer of hv-vss: plan, preflight, flush, dependency-ordered parallel
//! FIFREEZE with deadlines, ownership of what was frozen, reverse thaw, rollback, and a
//! crash journal with recovery (Linux); UFS suspension and `zpool sync` (FreeBSD, module
//! `freebsd`, over the platform-neutral [`freebsd_plan`], [`freebsd_freeze`] and
//! [`suspend_set`]).
//!
//! The platform is chosen by the module list below and nowhere else: the Linux engine's
//! modules exist on Linux only, the FreeBSD backend on FreeBSD only; configuration, the
//! hold, the FreeBSD selection and the suspend-with-rollback logic build on both.
//!
//! # Kernel contract
//!
//! FIFREEZE freezes a whole superblock; it is not tied to a process or fd, so a freezer
//! that dies leaves the filesystem frozen, and a second FIFREEZE says EBUSY whoever froze
//! first. Writes block while frozen, including the writeback of any loop device whose image
//! lies on the frozen filesystem. Hence: plan by superblock, freeze dependents first, keep
//! the fds, journal before freezing, never thaw what EBUSY said belongs to someone else,
//! and touch no frozen filesystem (no logging, no file writes) until the last thaw.
//!
//! # Use
//!
//! ```no_run
//! use hv_vss_freezer::{FreezerConfig, FreezeOptions, MountSource, Selection, freeze, make_plan};
//! let config = FreezerConfig::default().compile()?;
//! let plan = make_plan(&MountSource::current(), &Selection::Discover, &config)?;
//! let options = FreezeOptions::new(config.config(), "/run/hv-vss");
//! hv_vss_freezer::preflight(&plan, &options)?;            // HOT_BACKUP / CHECK
//! let mut frozen = freeze(&plan, &options)?;              // FREEZE
//! let _fds = frozen.fds();                                // to the guardian
//! let thaw_report = frozen.thaw();                        // THAW; log both reports now
//! # let _ = thaw_report;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! After a crash: [`recover`] (`hv-vss thaw --recover`, the daemon at start, the guardian).
//! To thaw whatever is frozen, whoever froze it (an explicit, separate action):
//! [`thaw_all_frozen`] (`hv-vss thaw --all-frozen`).

// Both platforms.
pub mod bounded_call;
pub mod config;
pub mod freebsd_freeze;
pub mod freebsd_plan;
pub mod hold;
pub mod holder;
pub mod holder_process;
pub mod report;
pub mod serde_util;
pub mod suspend_set;

// Linux: FIFREEZE on superblocks from mountinfo and sysfs.
#[cfg(target_os = "linux")]
pub mod engine;
#[cfg(target_os = "linux")]
pub mod exit_gate;
#[cfg(target_os = "linux")]
pub mod expedite;
#[cfg(target_os = "linux")]
pub mod flush_ahead;
#[cfg(target_os = "linux")]
pub mod guardian_wire;
#[cfg(target_os = "linux")]
pub mod journal;
#[cfg(target_os = "linux")]
pub mod mount_source;
#[cfg(target_os = "linux")]
pub mod mount_watch;
#[cfg(target_os = "linux")]
pub mod mountinfo;
#[cfg(target_os = "linux")]
pub mod plan;
#[cfg(target_os = "linux")]
pub mod sweep;
#[cfg(target_os = "linux")]
pub mod topology;

// FreeBSD: UFS suspension and zpool sync from getfsstat.
#[cfg(target_os = "freebsd")]
pub mod freebsd;

pub use crate::bounded_call::{BoundedCall, Waited};
pub use crate::config::{
    CompiledConfig, ConfigError, DEFAULT_STATE_DIR, ForeignFreezePolicy, FreezerConfig,
    MountFilter, UnsupportedPolicy,
};
pub use crate::report::{
    Expedite, FreezeReport, FsFreezeOutcome, FsReport, FsThawOutcome, FsThawReport, ThawReport,
};
pub use hv_vss_sys::fs::DevNum;

#[cfg(target_os = "linux")]
pub use linux_exports::*;

/// Linux's public names, re-exported at the crate root.
#[cfg(target_os = "linux")]
mod linux_exports {
    pub use crate::engine::{
        CONVERGE_FLOOR, DEFAULT_CONVERGE_BUDGET, FREEZE_THREAD_NAME, FlushPolicy, FreezeError,
        FreezeFailure, FreezeOptions, FreezeWatch, FrozenFs, FrozenSet, PreflightReport, freeze,
        freeze_cancellable, freeze_watched, preflight,
    };
    pub use crate::flush_ahead::{FlushAhead, FlushAheadStart, HungFlush};
    pub use crate::journal::{
        DEFAULT_RECOVER_THAW_DEADLINE, Journal, JournalEntry, JournalError, RecoverError,
        RecoverOptions, RecoverOutcome, RecoverReport, RecoveredFs, SwitchRestore, recover,
    };
    pub use crate::mount_source::{MakePlanError, MountSource, make_plan};
    pub use crate::mount_watch::{MountTableWatch, make_plan_watched};
    pub use crate::mountinfo::{MountEntry, MountInfoError, parse_mountinfo};
    pub use crate::plan::{
        Plan, PlanError, PlannedFs, Selection, SkipReason, SkippedMount, build_plan,
    };
    pub use crate::sweep::{SweepOutcome, SweepReport, SweptFs, thaw_all_frozen};
    pub use crate::topology::{SysfsTopology, Topology};
}
