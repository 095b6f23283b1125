//! The freeze plan: which superblocks to freeze, through which path, in which levels, and
//! why every other mount is left alone.
//!
//! # Mechanism
//!
//! 1. Mounts are grouped by superblock (mountinfo `major:minor`). Bind mounts, duplicate
//!    mounts and btrfs subvolumes of one filesystem share a superblock and are frozen once
//!    (R30), through a *visible* mount (one no later mount hides), preferring a writable
//!    mount, then the mount of the filesystem's root, then the shortest mount point. The freezer later checks that
//!    the opened path reaches exactly that mount (statx mount id, else `st_dev`).
//! 2. Each superblock is classified (R31): pseudo, remote, unfreezable types, read-only
//!    (the superblock's `ro`, never a mount's: a `-o ro` bind mount of a writable
//!    filesystem leaves it writable through its other mounts), or
//!    not block-backed (device major 0, except btrfs/bcachefs whose source is a block
//!    device) are skipped with that reason; config include/exclude rules then apply (R32).
//!    An explicit list of mount points replaces discovery; a listed mount that cannot be
//!    frozen is an error, not a skip.
//! 3. A dependency graph over *all* superblocks (R34): a superblock depends on the one it is
//!    mounted inside (nesting), and on every filesystem holding a file that its block device
//!    is built on (loop `backing_file`, walking dm/md `slaves` and partition parents). The
//!    graph is closed transitively, so a dependency through an unselected filesystem still
//!    orders the selected ones.
//! 4. Levels: level 0 holds what nothing selected depends on; a superblock's level is one
//!    more than the highest level of any selected superblock depending on it. Freezing runs
//!    level 0 first, in parallel within a level, so a loop-backed filesystem is frozen (its
//!    dirty data written through to its image) before the filesystem holding the image. `/`
//!    is always alone in the last level.
//!
//! # Limitations
//!
//! - Multi-device btrfs is walked through its mount source only (one device).
//! - Loop images are resolved by `stat` of the backing path in the reader's namespace,
//!   falling back to the longest mount-point prefix.
//! - Hidden-mount detection follows the mount tree (a mount is hidden if a mount that is
//!   not its ancestor sits on its mount point or a directory above it); exotic `--move`
//!   histories can fool it, which the statx mount-id check at open time then catches.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use hv_vss_sys::fs::DevNum;
use serde::{Deserialize, Serialize};

use crate::config::CompiledConfig;
use crate::mountinfo::MountEntry;
use crate::serde_util;
use crate::topology::{Lower, Topology};

/// How the set of filesystems is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every writable, local, block-backed filesystem, filtered by the config.
    Discover,
    /// Exactly these mount points (absolute, as they appear in mountinfo).
    Explicit(Vec<PathBuf>),
}

/// Why a mount is not in the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SkipReason {
    /// Kernel-internal or memory-backed (proc, sysfs, tmpfs, overlay, ...).
    Pseudo,
    /// Network filesystem (nfs, cifs, ...): its server's consistency is not ours to make.
    Remote,
    /// A type that cannot freeze (vfat, exfat, iso9660, squashfs, fuse, ...).
    Unfreezable,
    /// The filesystem (its superblock) is read-only: nothing to flush.
    ReadOnly,
    /// Not backed by a block device (major 0, and not a known block filesystem).
    NotBlockBacked,
    /// Another mount of the same superblock is the one frozen (bind mount, subvolume).
    SameFilesystemAs {
        /// The mount point that is frozen instead.
        #[serde(with = "serde_util::path")]
        frozen_via: PathBuf,
    },
    /// Over-mounted: its path leads to another mount, so it cannot be reached (R30).
    Hidden {
        /// Mount id of the mount on top.
        by_mount_id: u64,
    },
    /// Removed by a config rule (`exclude.*`, or no `include` rule matched).
    Config {
        /// Which rule.
        rule: String,
    },
    /// An explicit list was given and this mount is not on it.
    NotListed,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pseudo => f.write_str("pseudo filesystem"),
            Self::Remote => f.write_str("remote filesystem"),
            Self::Unfreezable => f.write_str("filesystem type cannot freeze"),
            Self::ReadOnly => f.write_str("read-only"),
            Self::NotBlockBacked => f.write_str("not block-backed"),
            Self::SameFilesystemAs { frozen_via } => {
                write!(
                    f,
                    "same filesystem as {} (frozen once)",
                    frozen_via.display()
                )
            }
            Self::Hidden { by_mount_id } => write!(f, "hidden under mount {by_mount_id}"),
            Self::Config { rule } => write!(f, "config: {rule}"),
            Self::NotListed => f.write_str("not in the --mount list"),
        }
    }
}

/// A superblock that will be frozen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedFs {
    /// Mount point it is frozen through.
    #[serde(with = "serde_util::path")]
    pub mount_point: PathBuf,
    /// Path actually opened (the mount point, under `/proc/1/root` when planning from pid
    /// 1's mount table).
    #[serde(with = "serde_util::path")]
    pub open_path: PathBuf,
    /// Mount id of that mount (checked with statx at open time).
    pub mount_id: u64,
    /// Superblock device (`major:minor` from mountinfo).
    #[serde(with = "serde_util::dev")]
    pub dev: DevNum,
    /// Filesystem type.
    pub fs_type: String,
    /// Mount source.
    #[serde(with = "serde_util::os_string")]
    pub source: OsString,
    /// Level: 0 is frozen first.
    pub level: usize,
    /// Other mount points of the same superblock (bind mounts, subvolumes).
    #[serde(with = "serde_util::paths")]
    pub also_mounted_at: Vec<PathBuf>,
    /// Selected filesystems this one depends on (frozen after it, thawed before it).
    #[serde(with = "serde_util::paths")]
    pub depends_on: Vec<PathBuf>,
}

/// A mount that will not be frozen, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedMount {
    /// Where it is mounted.
    #[serde(with = "serde_util::path")]
    pub mount_point: PathBuf,
    /// Mount id.
    pub mount_id: u64,
    /// Superblock device.
    #[serde(with = "serde_util::dev")]
    pub dev: DevNum,
    /// Filesystem type.
    pub fs_type: String,
    /// Mount source.
    #[serde(with = "serde_util::os_string")]
    pub source: OsString,
    /// Why it is skipped.
    pub reason: SkipReason,
}

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// An explicitly listed path is not a mount point.
    #[error("{}: not a mount point", .0.display())]
    NotAMountPoint(PathBuf),
    /// An explicitly listed mount cannot be frozen.
    #[error("{}: {fs_type} cannot be frozen ({reason})", .mount_point.display())]
    NotFreezable {
        /// The listed path.
        mount_point: PathBuf,
        /// Its type.
        fs_type: String,
        /// Why.
        reason: SkipReason,
    },
}

/// The plan: frozen level by level, `levels[0]` first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Superblocks to freeze, by level.
    pub levels: Vec<Vec<PlannedFs>>,
    /// Every other mount, with its reason.
    pub skipped: Vec<SkippedMount>,
    /// For each superblock in the mount table: the superblocks it depends on (transitively),
    /// by storage or by nesting. Orders the levels.
    #[serde(skip)]
    pub(crate) closure: BTreeMap<DevNum, BTreeSet<DevNum>>,
    /// The same, by storage only (block-device stacking and loop backing files): the
    /// superblocks whose freeze blocks writes to this one. Used to refuse a state directory
    /// that could be frozen. Nesting does not count: a tmpfs mounted on `/run` stays
    /// writable while `/` is frozen.
    #[serde(skip)]
    pub(crate) storage_closure: BTreeMap<DevNum, BTreeSet<DevNum>>,
    /// The mount table the plan was made from.
    #[serde(skip)]
    pub(crate) mounts: Vec<MountEntry>,
}

/// Types never frozen because they are not disk filesystems.
const PSEUDO: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "tmpfs",
    "ramfs",
    "rootfs",
    "cgroup",
    "cgroup2",
    "securityfs",
    "debugfs",
    "tracefs",
    "configfs",
    "pstore",
    "bpf",
    "mqueue",
    "hugetlbfs",
    "autofs",
    "fusectl",
    "binfmt_misc",
    "efivarfs",
    "nsfs",
    "rpc_pipefs",
    "selinuxfs",
    "overlay",
    "aufs",
    "nfsd",
    "sockfs",
    "pipefs",
    "zonefs",
    "shiftfs",
];
/// Network and host-shared filesystems.
const REMOTE: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ceph",
    "glusterfs",
    "9p",
    "virtiofs",
    "afs",
    "lustre",
    "ncpfs",
    "coda",
    "gfs",
    "davfs",
    "fuse.sshfs",
    "fuse.glusterfs",
    "fuse.s3fs",
    "fuse.rclone",
    "vboxsf",
    "vmhgfs",
    "fuse.vmhgfs-fuse",
    "beegfs",
    "gpfs",
    "ocfs2_dlmfs",
];
/// Types whose kernel driver has no freeze support (FIFREEZE would say EOPNOTSUPP).
const UNFREEZABLE: &[&str] = &[
    "vfat", "msdos", "fat", "exfat", "iso9660", "udf", "squashfs", "erofs", "cramfs", "romfs",
    "fuseblk", "ntfs", "ntfs3", "hfs", "hfsplus", "minix", "sysv", "zfs",
];
/// Block filesystems whose mountinfo device is an anonymous (major 0) number.
const ANON_DEV_BLOCK_FS: &[&str] = &["btrfs", "bcachefs"];

/// Classify one mount by type, options and device; `None` means freezable.
pub fn classify(entry: &MountEntry) -> Option<SkipReason> {
    let t = entry.fs_type.as_str();
    if PSEUDO.contains(&t) {
        return Some(SkipReason::Pseudo);
    }
    if REMOTE.contains(&t) {
        return Some(SkipReason::Remote);
    }
    if UNFREEZABLE.contains(&t) || t == "fuse" || t.starts_with("fuse.") {
        return Some(SkipReason::Unfreezable);
    }
    // By superblock only: a read-only bind mount of a writable filesystem does not make the
    // filesystem read-only (other mounts still write to it).
    if entry.superblock_read_only() {
        return Some(SkipReason::ReadOnly);
    }
    if entry.dev.major == 0 && !ANON_DEV_BLOCK_FS.contains(&t) {
        return Some(SkipReason::NotBlockBacked);
    }
    None
}

fn is_prefix(prefix: &Path, path: &Path) -> bool {
    path.starts_with(prefix)
}

/// The mount table indexed by mount id and by mount point, so that every question the plan
/// asks about a mount costs a lookup per component of its path, not a pass over the table.
struct Table<'a> {
    mounts: &'a [MountEntry],
    by_id: HashMap<u64, usize>,
    /// Indices of the mounts at each mount point, in table order (stacked mounts share one).
    by_point: HashMap<&'a Path, Vec<usize>>,
}

impl<'a> Table<'a> {
    fn new(mounts: &'a [MountEntry]) -> Self {
        let by_id = mounts
            .iter()
            .enumerate()
            .map(|(i, m)| (m.mount_id, i))
            .collect();
        let mut by_point: HashMap<&Path, Vec<usize>> = HashMap::with_capacity(mounts.len());
        for (i, m) in mounts.iter().enumerate() {
            by_point.entry(m.mount_point.as_path()).or_default().push(i);
        }
        Self {
            mounts,
            by_id,
            by_point,
        }
    }

    /// The strict ancestors of `b` in the mount tree, nearest first. Bounded by the table's
    /// size, so a parent cycle (impossible in a real table) cannot loop.
    fn ancestors(&self, b: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut cur = b;
        for _ in 0..self.mounts.len() {
            match self.by_id.get(&self.mounts[cur].parent_id) {
                Some(&p) if p != cur => {
                    out.push(p);
                    cur = p;
                }
                _ => break,
            }
        }
        out
    }

    /// Is `a` a (strict) ancestor of `b` in the mount tree?
    fn is_ancestor(&self, a: usize, b: usize) -> bool {
        self.ancestors(b).contains(&a)
    }

    /// The mount that hides `e`, if any: the first, in table order, of the mounts that are
    /// not its ancestors and sit on its mount point (on top of it) or on a directory above
    /// it. Only the mount points that are prefixes of `e`'s are looked up.
    fn hidden_by(&self, e: usize) -> Option<u64> {
        let me = &self.mounts[e];
        let ancestors = self.ancestors(e);
        let mut first: Option<usize> = None;
        for point in me.mount_point.ancestors() {
            let Some(at) = self.by_point.get(point) else {
                continue;
            };
            let same_point = point == me.mount_point;
            for &f in at {
                if f == e || ancestors.contains(&f) {
                    continue;
                }
                if !same_point || f > e || self.is_ancestor(e, f) {
                    first = Some(first.map_or(f, |b| b.min(f)));
                }
            }
        }
        first.map(|f| self.mounts[f].mount_id)
    }

    /// The visible mount at `point` (the last in table order, among stacked ones).
    fn visible_at(&self, point: &Path, hidden: &[Option<u64>]) -> Option<usize> {
        self.by_point
            .get(point)?
            .iter()
            .rev()
            .copied()
            .find(|&i| hidden[i].is_none())
    }
}

/// For each mount of `mounts`, the id of the mount hiding it, by the original pairwise
/// comparison of every mount with every other: O(N²). The reference the indexed planning is
/// checked against (unit tests) and measured against (`benches/plan_scale.rs`).
#[doc(hidden)]
pub fn hidden_by_pairwise(mounts: &[MountEntry]) -> Vec<Option<u64>> {
    let table = Table::new(mounts);
    (0..mounts.len())
        .map(|e| {
            let me = &mounts[e];
            mounts.iter().enumerate().find_map(|(f, other)| {
                if f == e
                    || table.is_ancestor(f, e)
                    || !is_prefix(&other.mount_point, &me.mount_point)
                {
                    return None;
                }
                let same_point = other.mount_point == me.mount_point;
                let on_top = !same_point || table.is_ancestor(e, f) || f > e;
                on_top.then_some(other.mount_id)
            })
        })
        .collect()
}

/// For each mount of `mounts`, the id of the mount hiding it (R30), by the mount-point
/// index: O(N · depth).
#[doc(hidden)]
pub fn hidden_by_indexed(mounts: &[MountEntry]) -> Vec<Option<u64>> {
    let table = Table::new(mounts);
    (0..mounts.len()).map(|i| table.hidden_by(i)).collect()
}

/// Build the plan from a parsed mount table and a topology. Pure apart from the topology's
/// lookups. `open_prefix` is prepended to mount points when opening (e.g. `/proc/1/root`).
pub fn build_plan(
    mounts: &[MountEntry],
    topology: &dyn Topology,
    selection: &Selection,
    config: &CompiledConfig,
    open_prefix: Option<&Path>,
) -> Result<Plan, PlanError> {
    let table = Table::new(mounts);
    let hidden: Vec<Option<u64>> = (0..mounts.len()).map(|i| table.hidden_by(i)).collect();

    // Group mounts by superblock, in table order.
    let mut groups: BTreeMap<DevNum, Vec<usize>> = BTreeMap::new();
    for (i, m) in mounts.iter().enumerate() {
        groups.entry(m.dev).or_default().push(i);
    }
    // The mount each superblock is reached through.
    let primary: BTreeMap<DevNum, usize> = groups
        .iter()
        .map(|(&dev, idx)| {
            let best = idx
                .iter()
                .copied()
                .min_by_key(|&i| {
                    let m = &mounts[i];
                    (
                        hidden[i].is_some(),
                        m.mount_read_only(),
                        m.root != Path::new("/"),
                        m.mount_point.as_os_str().len(),
                        i,
                    )
                })
                .expect("groups are non-empty");
            (dev, best)
        })
        .collect();

    let Dependencies {
        closure,
        storage_closure,
    } = dependency_closure(mounts, &table, &hidden, &groups, &primary, topology);

    let mut selected: Vec<DevNum> = Vec::new();
    let mut skipped = Vec::new();
    let skip = |i: usize, reason: SkipReason| {
        let m = &mounts[i];
        SkippedMount {
            mount_point: m.mount_point.clone(),
            mount_id: m.mount_id,
            dev: m.dev,
            fs_type: m.fs_type.clone(),
            source: m.source.clone(),
            reason,
        }
    };

    match selection {
        Selection::Discover => {
            for (&dev, idx) in &groups {
                let p = primary[&dev];
                let reason = if let Some(by) = hidden[p] {
                    Some(SkipReason::Hidden { by_mount_id: by })
                } else if let Some(r) = classify(&mounts[p]) {
                    Some(r)
                } else {
                    let mps: Vec<&Path> = idx
                        .iter()
                        .map(|&i| mounts[i].mount_point.as_path())
                        .collect();
                    config
                        .filter_out(&mps, &mounts[p].fs_type, Path::new(&mounts[p].source))
                        .map(|rule| SkipReason::Config { rule })
                };
                match reason {
                    Some(r) => idx.iter().for_each(|&i| skipped.push(skip(i, r.clone()))),
                    None => {
                        selected.push(dev);
                        for &i in idx.iter().filter(|&&i| i != p) {
                            let frozen_via = mounts[p].mount_point.clone();
                            skipped.push(skip(i, SkipReason::SameFilesystemAs { frozen_via }));
                        }
                    }
                }
            }
        }
        Selection::Explicit(paths) => {
            let mut listed: BTreeSet<usize> = BTreeSet::new();
            for path in paths {
                // The visible mount at that path; among stacked ones, the top one.
                let candidates: &[usize] = table
                    .by_point
                    .get(path.as_path())
                    .map_or(&[], Vec::as_slice);
                let Some(&i) = candidates
                    .iter()
                    .find(|&&i| hidden[i].is_none())
                    .or(candidates.last())
                else {
                    return Err(PlanError::NotAMountPoint(path.clone()));
                };
                if let Some(reason) = hidden[i]
                    .map(|by| SkipReason::Hidden { by_mount_id: by })
                    .or_else(|| classify(&mounts[i]))
                {
                    return Err(PlanError::NotFreezable {
                        mount_point: path.clone(),
                        fs_type: mounts[i].fs_type.clone(),
                        reason,
                    });
                }
                listed.insert(i);
                if !selected.contains(&mounts[i].dev) {
                    selected.push(mounts[i].dev);
                }
            }
            let chosen: BTreeSet<DevNum> = selected.iter().copied().collect();
            for (&dev, idx) in &groups {
                let p = primary[&dev];
                for &i in idx {
                    if chosen.contains(&dev) && i != p {
                        let frozen_via = mounts[p].mount_point.clone();
                        skipped.push(skip(i, SkipReason::SameFilesystemAs { frozen_via }));
                    } else if !chosen.contains(&dev) {
                        skipped.push(skip(i, SkipReason::NotListed));
                    }
                }
            }
            // A listed bind mount whose superblock is reached through an unlisted primary is
            // fine: the superblock is frozen once, via the primary.
        }
    }

    let selected_set: BTreeSet<DevNum> = selected.iter().copied().collect();
    // The selected superblocks each selected one depends on, and the reverse.
    let deps: BTreeMap<DevNum, BTreeSet<DevNum>> = selected
        .iter()
        .map(|&dev| {
            let on = closure
                .get(&dev)
                .map(|d| {
                    d.iter()
                        .copied()
                        .filter(|x| *x != dev && selected_set.contains(x))
                        .collect()
                })
                .unwrap_or_default();
            (dev, on)
        })
        .collect();
    let mut dependents: BTreeMap<DevNum, Vec<DevNum>> = BTreeMap::new();
    for (&dev, on) in &deps {
        for &d in on {
            dependents.entry(d).or_default().push(dev);
        }
    }

    // level(x) = 0 if no selected superblock depends on x, else 1 + max level of those.
    let mut level: BTreeMap<DevNum, usize> = BTreeMap::new();
    fn level_of(
        dev: DevNum,
        dependents: &BTreeMap<DevNum, Vec<DevNum>>,
        memo: &mut BTreeMap<DevNum, usize>,
        visiting: &mut BTreeSet<DevNum>,
    ) -> usize {
        if let Some(&l) = memo.get(&dev) {
            return l;
        }
        if !visiting.insert(dev) {
            return 0; // a cycle cannot happen in a real mount table; do not loop on one
        }
        let l = dependents
            .get(&dev)
            .into_iter()
            .flatten()
            .map(|&other| 1 + level_of(other, dependents, memo, visiting))
            .max()
            .unwrap_or(0);
        visiting.remove(&dev);
        memo.insert(dev, l);
        l
    }
    for &dev in &selected {
        level_of(dev, &dependents, &mut level, &mut BTreeSet::new());
    }
    // `/` alone in the last level.
    let root_dev = selected
        .iter()
        .copied()
        .find(|d| mounts[primary[d]].mount_point == Path::new("/"));
    if let Some(root) = root_dev {
        let max_other = selected
            .iter()
            .filter(|&&d| d != root)
            .map(|d| level[d])
            .max();
        if let Some(m) = max_other {
            let l = level[&root].max(m + 1);
            level.insert(root, l);
        }
    }
    // Compact level numbers (0, 1, 2, ... with no gaps).
    let distinct: BTreeSet<usize> = level.values().copied().collect();
    let renumber: BTreeMap<usize, usize> =
        distinct.iter().enumerate().map(|(n, &l)| (l, n)).collect();

    let mut levels: Vec<Vec<PlannedFs>> = vec![Vec::new(); distinct.len()];
    for &dev in &selected {
        let p = primary[&dev];
        let m = &mounts[p];
        let lvl = renumber[&level[&dev]];
        let mut depends_on: Vec<PathBuf> = deps[&dev]
            .iter()
            .map(|d| mounts[primary[d]].mount_point.clone())
            .collect();
        depends_on.sort();
        let open_path = match open_prefix {
            Some(prefix) => {
                let rel = m.mount_point.strip_prefix("/").unwrap_or(&m.mount_point);
                prefix.join(rel)
            }
            None => m.mount_point.clone(),
        };
        levels[lvl].push(PlannedFs {
            mount_point: m.mount_point.clone(),
            open_path,
            mount_id: m.mount_id,
            dev,
            fs_type: m.fs_type.clone(),
            source: m.source.clone(),
            level: lvl,
            also_mounted_at: groups[&dev]
                .iter()
                .filter(|&&i| i != p)
                .map(|&i| mounts[i].mount_point.clone())
                .collect(),
            depends_on,
        });
    }
    for l in &mut levels {
        l.sort_by(|a, b| {
            a.mount_point
                .as_os_str()
                .as_bytes()
                .cmp(b.mount_point.as_os_str().as_bytes())
        });
    }
    skipped.sort_by_key(|s| s.mount_id);
    Ok(Plan {
        levels,
        skipped,
        closure,
        storage_closure,
        mounts: mounts.to_vec(),
    })
}

/// For every superblock: every superblock it depends on, transitively.
/// Transitive dependencies of every superblock in the mount table.
struct Dependencies {
    /// By storage or nesting.
    closure: BTreeMap<DevNum, BTreeSet<DevNum>>,
    /// By storage only.
    storage_closure: BTreeMap<DevNum, BTreeSet<DevNum>>,
}

fn dependency_closure(
    mounts: &[MountEntry],
    table: &Table<'_>,
    hidden: &[Option<u64>],
    groups: &BTreeMap<DevNum, Vec<usize>>,
    primary: &BTreeMap<DevNum, usize>,
    topology: &dyn Topology,
) -> Dependencies {
    // The superblock holding a path: by st_dev if it names a mounted superblock, else the
    // longest visible mount point that is a prefix of the path.
    let holder_of = |path: &Path| -> Option<DevNum> {
        if let Some(dev) = topology.dev_of_path(path)
            && groups.contains_key(&dev)
        {
            return Some(dev);
        }
        path.ancestors()
            .find_map(|point| table.visible_at(point, hidden))
            .map(|i| mounts[i].dev)
    };

    let mut direct: BTreeMap<DevNum, BTreeSet<DevNum>> = BTreeMap::new();
    let mut direct_storage: BTreeMap<DevNum, BTreeSet<DevNum>> = BTreeMap::new();
    for (&dev, idx) in groups {
        let mut nesting = BTreeSet::new();
        // Nesting: the superblock of the parent mount of every mount of this superblock.
        for &i in idx {
            if let Some(&p) = table.by_id.get(&mounts[i].parent_id)
                && p != i
                && mounts[p].dev != dev
            {
                nesting.insert(mounts[p].dev);
            }
        }
        let mut deps = BTreeSet::new();
        // Block devices: the superblock's own device, and its source if a block device.
        let mut devices: Vec<DevNum> = Vec::new();
        if dev.major != 0 {
            devices.push(dev);
        }
        let m = &mounts[primary[&dev]];
        if let Some(rdev) = topology.block_device(Path::new(&m.source))
            && !devices.contains(&rdev)
        {
            devices.push(rdev);
        }
        let mut seen: BTreeSet<DevNum> = BTreeSet::new();
        while let Some(d) = devices.pop() {
            if !seen.insert(d) || seen.len() > 4096 {
                continue;
            }
            for lower in topology.lower(d) {
                match lower {
                    Lower::Device(l) => devices.push(l),
                    Lower::BackingFile(path) => {
                        if let Some(h) = holder_of(&path)
                            && h != dev
                        {
                            deps.insert(h);
                        }
                    }
                }
            }
        }
        direct.insert(dev, deps.union(&nesting).copied().collect());
        direct_storage.insert(dev, deps);
    }
    Dependencies {
        closure: transitive_closure(&direct),
        storage_closure: transitive_closure(&direct_storage),
    }
}

/// Transitive closure of a dependency graph, by DFS from each node.
fn transitive_closure(
    direct: &BTreeMap<DevNum, BTreeSet<DevNum>>,
) -> BTreeMap<DevNum, BTreeSet<DevNum>> {
    let mut closure = BTreeMap::new();
    for &start in direct.keys() {
        let mut out = BTreeSet::new();
        let mut stack: Vec<DevNum> = direct[&start].iter().copied().collect();
        while let Some(d) = stack.pop() {
            if d != start && out.insert(d) {
                stack.extend(direct.get(&d).into_iter().flatten().copied());
            }
        }
        closure.insert(start, out);
    }
    closure
}

impl Plan {
    /// Every planned filesystem in freeze order (level by level).
    pub fn filesystems(&self) -> impl Iterator<Item = &PlannedFs> {
        self.levels.iter().flatten()
    }

    /// Nothing to freeze.
    pub fn is_empty(&self) -> bool {
        self.levels.iter().all(Vec::is_empty)
    }

    /// Number of superblocks to freeze.
    pub fn len(&self) -> usize {
        self.levels.iter().map(Vec::len).sum()
    }

    /// Could a file on superblock `dev` be blocked by this plan's freeze? True if `dev` is
    /// in the plan, is stored on something in it (a loop image on a planned filesystem, a
    /// device stacked on one), or is unknown to the mount table. A filesystem merely mounted
    /// inside a planned one (tmpfs on `/run` under `/`) stays writable.
    pub fn may_freeze(&self, dev: DevNum) -> bool {
        let planned: BTreeSet<DevNum> = self.filesystems().map(|f| f.dev).collect();
        if planned.contains(&dev) {
            return true;
        }
        match self.storage_closure.get(&dev) {
            Some(deps) => deps.iter().any(|d| planned.contains(d)),
            None => true,
        }
    }

    /// The superblock of the mount with this id in the plan's mount table.
    pub fn dev_of_mount_id(&self, mount_id: u64) -> Option<DevNum> {
        self.mounts
            .iter()
            .find(|m| m.mount_id == mount_id)
            .map(|m| m.dev)
    }
}

#[cfg(test)]
mod tests;
