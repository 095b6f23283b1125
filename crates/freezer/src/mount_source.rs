//! Where Linux's mount table comes from (`/proc/self/mountinfo` or pid 1's) and the plan
//! made from it: reading the table, making an explicit selection's paths canonical, and
//! building the plan with sysfs's block topology.

use std::path::PathBuf;

use crate::{
    CompiledConfig, MountEntry, MountInfoError, Plan, PlanError, Selection, SysfsTopology,
    build_plan, make_plan_watched, parse_mountinfo,
};

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
