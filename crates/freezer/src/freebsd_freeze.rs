//! A FreeBSD freeze as platform-neutral logic: refuse a vetoed plan, `zpool sync` the
//! pools, suspend the UFS mounts all or nothing through a [`Suspender`], and report. The
//! real suspender and the mount table are FreeBSD's (`crate::freebsd`); this part builds
//! and is tested on Linux too, with a fake suspender (UFS cannot be suspended on Linux).
//!
//! # Order
//!
//! ZFS pools are synced before any UFS is suspended, so the sync does not lengthen the
//! suspension. UFS mounts are suspended newest mount first: a UFS on an `md(4)` image file
//! is mounted after the filesystem holding the image, and must be suspended before it
//! (its writeback goes through it). They resume oldest first. ZFS cannot be suspended:
//! `zpool sync POOL...` forces a transaction group to disk, after which the pool's on-disk
//! state is consistent by ZFS's design, and the report says so rather than "frozen".

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::freebsd_plan::{BsdSkipped, FreeBsdPlan, UfsTarget, ZFS_CONSISTENCY_NOTE};
use crate::suspend_set::{ResumeOutcome, SuspendSetError, SuspendedSet, Suspender};

/// Why a FreeBSD freeze failed. Nothing is left suspended after any of them.
#[derive(Debug, thiserror::Error)]
pub enum FreeBsdFreezeError<E: std::error::Error + 'static> {
    /// `getfsstat` failed.
    #[error("reading the mount table (getfsstat): {0}")]
    MountTable(#[source] std::io::Error),
    /// The plan has vetoes: nothing was synced or suspended.
    #[error("vetoed by {}", .0.iter().map(|v| format!("{} ({})", v.mount_point, v.fstype)).collect::<Vec<_>>().join(", "))]
    Vetoed(Vec<crate::freebsd_plan::BsdVeto>),
    /// `zpool sync` failed: nothing was suspended.
    #[error("zpool sync {pools}: {reason}")]
    ZpoolSync {
        /// The pools, space separated.
        pools: String,
        /// What went wrong.
        reason: String,
    },
    /// A UFS suspension failed; the ones before it were resumed.
    #[error(transparent)]
    Suspend(#[from] SuspendSetError<E>),
}

/// Runs `zpool sync` on pools.
pub trait PoolSyncer {
    /// Syncs `pools`; the error says why not.
    fn sync(&self, pools: &[String]) -> Result<(), String>;
}

/// `zpool sync POOL...` from `PATH` (or the given binary).
#[derive(Debug, Clone)]
pub struct ZpoolCommand {
    /// The `zpool` binary.
    pub program: PathBuf,
}

impl Default for ZpoolCommand {
    fn default() -> Self {
        Self {
            program: "zpool".into(),
        }
    }
}

impl PoolSyncer for ZpoolCommand {
    fn sync(&self, pools: &[String]) -> Result<(), String> {
        let out = Command::new(&self.program)
            .arg("sync")
            .args(pools)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.program.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

/// What a freeze did, for the log and `hv-vss freeze`'s output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreeBsdFreezeReport {
    /// UFS mount points suspended, in suspension order.
    pub suspended: Vec<String>,
    /// ZFS pools synced.
    pub zfs_synced: Vec<String>,
    /// Said when pools were synced: ZFS is consistent by design, not frozen.
    pub zfs_note: Option<String>,
    /// Mounts left alone, with the reason.
    pub skipped: Vec<BsdSkipped>,
    /// How long the `zpool sync` took.
    pub zfs_sync_took: Duration,
    /// How long suspending took.
    pub suspend_took: Duration,
}

/// A frozen FreeBSD system: the UFS suspensions, held until [`FreeBsdFrozen::thaw`] or
/// drop (each holder closes its fd).
pub struct FreeBsdFrozen<'s, S: Suspender<Target = UfsTarget>> {
    set: SuspendedSet<'s, S>,
    /// What was done.
    pub report: FreeBsdFreezeReport,
}

impl<S: Suspender<Target = UfsTarget>> std::fmt::Debug for FreeBsdFrozen<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreeBsdFrozen")
            .field("set", &self.set)
            .field("report", &self.report)
            .finish()
    }
}

impl<S: Suspender<Target = UfsTarget>> FreeBsdFrozen<'_, S> {
    /// Resumes every UFS, oldest mount first.
    pub fn thaw(self) -> Vec<ResumeOutcome> {
        self.set.resume()
    }
}

/// Freezes what `plan` says: refuses a vetoed plan, syncs the ZFS pools, then suspends the
/// UFS mounts newest first, all or nothing.
pub fn freeze<'s, S: Suspender<Target = UfsTarget>>(
    plan: &FreeBsdPlan,
    suspender: &'s S,
    pools: &dyn PoolSyncer,
) -> Result<FreeBsdFrozen<'s, S>, FreeBsdFreezeError<S::Error>> {
    let (zfs_synced, zfs_sync_took) = sync_pools(plan, pools)?;
    let set = SuspendedSet::suspend_all(suspender, plan.ufs.iter().rev(), |target| {
        target.mount_point.clone()
    })?;
    Ok(FreeBsdFrozen {
        report: FreeBsdFreezeReport {
            suspended: set.names().map(str::to_owned).collect(),
            zfs_note: (!zfs_synced.is_empty()).then(|| ZFS_CONSISTENCY_NOTE.to_owned()),
            zfs_synced,
            skipped: plan.skipped.clone(),
            zfs_sync_took,
            suspend_took: set.took,
        },
        set,
    })
}

/// The part of a freeze before any suspension: the veto check and the pool sync.
pub fn sync_pools<E: std::error::Error + 'static>(
    plan: &FreeBsdPlan,
    pools: &dyn PoolSyncer,
) -> Result<(Vec<String>, Duration), FreeBsdFreezeError<E>> {
    if plan.is_vetoed() {
        return Err(FreeBsdFreezeError::Vetoed(plan.vetoes.clone()));
    }
    let names: Vec<String> = plan.zfs_sync.iter().map(|pool| pool.name.clone()).collect();
    let start = Instant::now();
    if !names.is_empty() {
        pools
            .sync(&names)
            .map_err(|reason| FreeBsdFreezeError::ZpoolSync {
                pools: names.join(" "),
                reason,
            })?;
    }
    Ok((names, start.elapsed()))
}

#[cfg(test)]
mod tests;
