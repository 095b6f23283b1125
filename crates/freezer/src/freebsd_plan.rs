//! FreeBSD mount selection: which mounts a backup suspends, syncs, skips or is vetoed by,
//! as a pure function over `statfs`-shaped records (what `getmntinfo(3)` returns).
//!
//! Kernel contract (sys/ufs/ffs/ffs_suspend.c, sys/sys/mount.h):
//!
//! - UFS is the only filesystem FreeBSD can suspend: `UFSSUSPEND` on `/dev/ufssuspend` with
//!   the mount's `f_fsid`; the suspension belongs to that fd and one fd holds one. Every
//!   writable UFS mount is therefore a target of its own.
//! - ZFS cannot be suspended. Its on-disk state is always consistent at a transaction-group
//!   boundary, so `zpool sync` on its pools before answering the host makes a crash-consistent
//!   image as current as it can be; it is consistent by ZFS's design, not frozen. The
//!   [`ZfsPolicy`] says whether to do that, to veto, or to leave ZFS out.
//! - Pseudo filesystems (devfs, fdescfs, procfs, tmpfs, ...) hold nothing a disk snapshot
//!   contains; read-only mounts (`MNT_RDONLY`) have nothing to flush; mounts without
//!   `MNT_LOCAL` are another machine's to make consistent; a nullfs mount shows a directory of
//!   another listed mount, which is handled through that mount.
//! - Any other writable local filesystem (msdosfs, ext2fs, fusefs, ...) can be neither
//!   suspended nor synced to a consistent state: it vetoes the backup unless configured to
//!   be skipped ([`OtherFsPolicy`]).
//!
//! Nothing here touches the system; the FreeBSD backend turns records from `getmntinfo` into
//! [`StatfsRecord`]s and acts on the [`FreeBsdPlan`].

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// `MNT_RDONLY` from sys/sys/mount.h.
pub const MNT_RDONLY: u64 = 0x0000_0001;
/// `MNT_LOCAL` from sys/sys/mount.h.
pub const MNT_LOCAL: u64 = 0x0000_1000;

/// Filesystem types that hold no data of their own.
pub const PSEUDO_FS_TYPES: &[&str] = &[
    "devfs",
    "fdescfs",
    "procfs",
    "linprocfs",
    "linsysfs",
    "tmpfs",
    "mqueuefs",
    "autofs",
];

/// What the report says of ZFS pools that were synced.
pub const ZFS_CONSISTENCY_NOTE: &str = "ZFS is not frozen: its pools were synced (zpool sync) and are consistent by ZFS's transactional design";

/// The fields of `struct statfs` the selection reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatfsRecord {
    /// `f_fstypename`, e.g. `ufs`, `zfs`, `devfs`.
    pub fstypename: String,
    /// `f_mntonname`: the mount point.
    pub mntonname: String,
    /// `f_mntfromname`: the device (`/dev/ada0p2`), the dataset (`zroot/usr/home`) or, for
    /// nullfs, the lower directory.
    pub mntfromname: String,
    /// `f_flags` (`MNT_RDONLY`, `MNT_LOCAL`, ...).
    pub flags: u64,
    /// `f_fsid.val`.
    pub fsid: [i32; 2],
}

/// What to do with writable ZFS datasets (`zfs = "sync" | "veto" | "ignore"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZfsPolicy {
    /// `zpool sync` their pools before answering (default).
    #[default]
    Sync,
    /// Veto the backup.
    Veto,
    /// Leave them out; the report says they were neither frozen nor synced.
    Ignore,
}

/// What to do with a writable local filesystem that is neither UFS nor ZFS
/// (`other_local = "veto" | "skip"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtherFsPolicy {
    /// Veto the backup (default).
    #[default]
    Veto,
    /// Leave it out, with a warning in the report.
    Skip,
}

/// The FreeBSD policy keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FreeBsdPolicy {
    /// Writable ZFS datasets.
    pub zfs: ZfsPolicy,
    /// Other writable local filesystems.
    pub other_local: OtherFsPolicy,
}

/// Why a mount is not acted on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum BsdSkipReason {
    /// A pseudo filesystem ([`PSEUDO_FS_TYPES`]).
    Pseudo,
    /// Mounted read-only: nothing to flush.
    ReadOnly,
    /// Not `MNT_LOCAL` (nfs, smbfs, ...).
    Remote,
    /// nullfs over a directory of this listed mount, which is handled itself.
    NullfsOver {
        /// The mount point holding the lower directory.
        covered_by: String,
    },
    /// The same UFS (same fsid) as this mount, which is suspended instead.
    SameFilesystemAs {
        /// The mount point suspended.
        suspended_via: String,
    },
    /// ZFS with `zfs = "ignore"`: neither frozen nor synced.
    ZfsIgnored,
    /// Another local filesystem with `other_local = "skip"`: neither frozen nor synced.
    OtherSkipped,
}

/// Why the backup is vetoed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum VetoReason {
    /// A writable ZFS dataset with `zfs = "veto"`.
    ZfsVeto,
    /// A writable local filesystem that can be neither suspended nor synced.
    CannotQuiesce,
    /// nullfs whose lower directory lies on no listed mount.
    NullfsUnknownLower,
}

/// A mount that is skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BsdSkipped {
    /// The mount point.
    pub mount_point: String,
    /// Its type.
    pub fstype: String,
    /// Why.
    #[serde(flatten)]
    pub reason: BsdSkipReason,
}

/// A mount that vetoes the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BsdVeto {
    /// The mount point.
    pub mount_point: String,
    /// Its type.
    pub fstype: String,
    /// Why.
    #[serde(flatten)]
    pub reason: VetoReason,
}

/// A UFS mount to suspend through its own `/dev/ufssuspend` fd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UfsTarget {
    /// The mount point.
    pub mount_point: String,
    /// The device.
    pub device: String,
    /// The fsid `UFSSUSPEND` takes.
    pub fsid: [i32; 2],
}

/// A ZFS pool to `zpool sync`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ZfsPool {
    /// The pool's name.
    pub name: String,
    /// Its writable mounted datasets' mount points, in mount order.
    pub mount_points: Vec<String>,
}

/// The outcome of the selection.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct FreeBsdPlan {
    /// UFS mounts to suspend, in mount order.
    pub ufs: Vec<UfsTarget>,
    /// ZFS pools to sync, sorted by name.
    pub zfs_sync: Vec<ZfsPool>,
    /// Mounts left alone, with the reason.
    pub skipped: Vec<BsdSkipped>,
    /// Mounts that veto the backup; when non-empty nothing is suspended or synced.
    pub vetoes: Vec<BsdVeto>,
}

impl FreeBsdPlan {
    /// True if the backup must be refused.
    pub fn is_vetoed(&self) -> bool {
        !self.vetoes.is_empty()
    }

    /// How many mounts the plan accounts for: each record lands in exactly one place.
    pub fn mount_count(&self) -> usize {
        self.ufs.len()
            + self
                .zfs_sync
                .iter()
                .map(|pool| pool.mount_points.len())
                .sum::<usize>()
            + self.skipped.len()
            + self.vetoes.len()
    }
}

/// The pool of a ZFS `f_mntfromname` (`zroot/usr/home` → `zroot`).
pub fn zfs_pool_name(mntfromname: &str) -> &str {
    mntfromname.split(['/', '@']).next().unwrap_or(mntfromname)
}

/// The mount point (other than `nullfs_mount` itself) holding `path`: the longest listed
/// mount point that is `path` or a directory above it.
fn mount_holding<'a>(
    records: &'a [StatfsRecord],
    nullfs_mount: &str,
    path: &str,
) -> Option<&'a str> {
    records
        .iter()
        .filter(|record| record.fstypename != "nullfs" && record.mntonname != nullfs_mount)
        .map(|record| record.mntonname.as_str())
        .filter(|mount| is_at_or_below(path, mount))
        .max_by_key(|mount| mount.len())
}

fn is_at_or_below(path: &str, dir: &str) -> bool {
    if dir == "/" {
        return path.starts_with('/');
    }
    path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Selects what a backup does with each mount under `policy`.
pub fn plan_freebsd(records: &[StatfsRecord], policy: &FreeBsdPolicy) -> FreeBsdPlan {
    let mut plan = FreeBsdPlan::default();
    let mut pool_names = BTreeSet::new();
    let mut pools: Vec<ZfsPool> = Vec::new();
    for record in records {
        let skip = |reason| BsdSkipped {
            mount_point: record.mntonname.clone(),
            fstype: record.fstypename.clone(),
            reason,
        };
        let veto = |reason| BsdVeto {
            mount_point: record.mntonname.clone(),
            fstype: record.fstypename.clone(),
            reason,
        };
        let fstype = record.fstypename.as_str();
        if PSEUDO_FS_TYPES.contains(&fstype) {
            plan.skipped.push(skip(BsdSkipReason::Pseudo));
        } else if record.flags & MNT_RDONLY != 0 {
            plan.skipped.push(skip(BsdSkipReason::ReadOnly));
        } else if record.flags & MNT_LOCAL == 0 {
            plan.skipped.push(skip(BsdSkipReason::Remote));
        } else if fstype == "nullfs" {
            match mount_holding(records, &record.mntonname, &record.mntfromname) {
                Some(covered_by) => plan.skipped.push(skip(BsdSkipReason::NullfsOver {
                    covered_by: covered_by.to_owned(),
                })),
                None => plan.vetoes.push(veto(VetoReason::NullfsUnknownLower)),
            }
        } else if fstype == "ufs" {
            match plan.ufs.iter().find(|target| target.fsid == record.fsid) {
                Some(first) => plan.skipped.push(skip(BsdSkipReason::SameFilesystemAs {
                    suspended_via: first.mount_point.clone(),
                })),
                None => plan.ufs.push(UfsTarget {
                    mount_point: record.mntonname.clone(),
                    device: record.mntfromname.clone(),
                    fsid: record.fsid,
                }),
            }
        } else if fstype == "zfs" {
            match policy.zfs {
                ZfsPolicy::Sync => {
                    let name = zfs_pool_name(&record.mntfromname);
                    if pool_names.insert(name.to_owned()) {
                        pools.push(ZfsPool {
                            name: name.to_owned(),
                            mount_points: Vec::new(),
                        });
                    }
                    if let Some(pool) = pools.iter_mut().find(|pool| pool.name == name) {
                        pool.mount_points.push(record.mntonname.clone());
                    }
                }
                ZfsPolicy::Veto => plan.vetoes.push(veto(VetoReason::ZfsVeto)),
                ZfsPolicy::Ignore => plan.skipped.push(skip(BsdSkipReason::ZfsIgnored)),
            }
        } else {
            match policy.other_local {
                OtherFsPolicy::Veto => plan.vetoes.push(veto(VetoReason::CannotQuiesce)),
                OtherFsPolicy::Skip => plan.skipped.push(skip(BsdSkipReason::OtherSkipped)),
            }
        }
    }
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    plan.zfs_sync = pools;
    plan
}

#[cfg(test)]
pub(crate) mod tests;
