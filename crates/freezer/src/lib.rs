//! The filesystem freezer of hv-vss: plan, preflight, flush, dependency-ordered parallel
//! FIFREEZE with deadlines, ownership of what was frozen, reverse thaw, rollback, and a
//! crash journal with recovery.
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

pub mod config;
pub mod engine;
pub mod exit_gate;
pub mod flush_ahead;
pub mod freebsd_plan;
pub mod guardian_wire;
pub mod hold;
pub mod journal;
pub mod mount_watch;
pub mod mountinfo;
pub mod plan;
pub mod serde_util;
pub mod sweep;
pub mod topology;

use std::path::PathBuf;

pub use config::{
    CompiledConfig, ConfigError, ForeignFreezePolicy, FreezerConfig, MountFilter, UnsupportedPolicy,
};
pub use engine::{
    CONVERGE_FLOOR, DEFAULT_CONVERGE_BUDGET, FREEZE_THREAD_NAME, FlushPolicy, FreezeError,
    FreezeFailure, FreezeOptions, FreezeReport, FreezeWatch, FrozenFs, FrozenSet, FsFreezeOutcome,
    FsReport, FsThawOutcome, FsThawReport, PreflightReport, ThawReport, freeze, freeze_cancellable,
    freeze_watched, preflight,
};
pub use flush_ahead::{FlushAhead, FlushAheadStart, HungFlush};
pub use hv_vss_sys::fs::DevNum;
pub use journal::{
    DEFAULT_RECOVER_THAW_DEADLINE, DEFAULT_STATE_DIR, Journal, JournalEntry, JournalError,
    RecoverError, RecoverOptions, RecoverOutcome, RecoverReport, RecoveredFs, recover,
};
pub use mount_watch::{MountTableWatch, make_plan_watched};
pub use mountinfo::{MountEntry, MountInfoError, parse_mountinfo};
pub use plan::{Plan, PlanError, PlannedFs, Selection, SkipReason, SkippedMount, build_plan};
pub use sweep::{SweepOutcome, SweepReport, SweptFs, thaw_all_frozen};
pub use topology::{SysfsTopology, Topology};

/// Where the mount table and block topology come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSource {
    /// mountinfo file, normally `/proc/self/mountinfo`.
    pub mountinfo: PathBuf,
    /// sysfs root, normally `/sys`.
    pub sysfs_root: PathBuf,
    /// Prefix for opening mount points (`/proc/1/root` when reading pid 1's table from
    /// another mount namespace).
    pub open_prefix: Option<PathBuf>,
}

impl MountSource {
    /// This process's mount namespace.
    pub fn current() -> Self {
        Self {
            mountinfo: "/proc/self/mountinfo".into(),
            sysfs_root: "/sys".into(),
            open_prefix: None,
        }
    }

    /// Pid 1's mount namespace (R29), opened through `/proc/1/root`.
    pub fn pid1() -> Self {
        Self {
            mountinfo: "/proc/1/mountinfo".into(),
            sysfs_root: "/sys".into(),
            open_prefix: Some("/proc/1/root".into()),
        }
    }
}

/// Why [`make_plan`] failed.
#[derive(Debug, thiserror::Error)]
pub enum MakePlanError {
    /// The mount table cannot be read.
    #[error("{}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The mount table is malformed.
    #[error(transparent)]
    Parse(#[from] MountInfoError),
    /// A listed path does not exist.
    #[error("{}: {source}", .path.display())]
    NoSuchPath {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The plan cannot be made.
    #[error(transparent)]
    Plan(#[from] PlanError),
}

/// Reads and parses `source`'s mount table, and makes the paths of an explicit selection
/// absolute and canonical (so `mnt/` and `/tmp/x/../mnt` name their mount). Shared by
/// planning and the sweep.
pub(crate) fn read_mount_table(
    source: &MountSource,
    selection: &Selection,
) -> Result<(Vec<MountEntry>, Selection), MakePlanError> {
    let data = std::fs::read(&source.mountinfo).map_err(|e| MakePlanError::Read {
        path: source.mountinfo.clone(),
        source: e,
    })?;
    parse_mount_table(source, &data, selection)
}

/// [`read_mount_table`] of a table already read.
fn parse_mount_table(
    source: &MountSource,
    data: &[u8],
    selection: &Selection,
) -> Result<(Vec<MountEntry>, Selection), MakePlanError> {
    let mounts = parse_mountinfo(data)?;
    let selection = match selection {
        Selection::Explicit(paths) if source.open_prefix.is_none() => Selection::Explicit(
            paths
                .iter()
                .map(|p| {
                    std::fs::canonicalize(p).map_err(|e| MakePlanError::NoSuchPath {
                        path: p.clone(),
                        source: e,
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    };
    Ok((mounts, selection))
}

/// The plan from `source`'s mount table, already read into `data`.
pub(crate) fn plan_from_table(
    source: &MountSource,
    data: &[u8],
    selection: &Selection,
    config: &CompiledConfig,
) -> Result<Plan, MakePlanError> {
    let (mounts, selection) = parse_mount_table(source, data, selection)?;
    let topology = SysfsTopology::new(&source.sysfs_root);
    Ok(build_plan(
        &mounts,
        &topology,
        &selection,
        config,
        source.open_prefix.as_deref(),
    )?)
}

/// Read the mount table and sysfs, and build the plan. Listed paths are made absolute and
/// canonical first (so `mnt/` and `/tmp/x/../mnt` name their mount).
pub fn make_plan(
    source: &MountSource,
    selection: &Selection,
    config: &CompiledConfig,
) -> Result<Plan, MakePlanError> {
    make_plan_watched(source, selection, config).map(|(plan, _)| plan)
}
