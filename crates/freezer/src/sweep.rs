//! The "thaw everything frozen" sweep (`hv-vss thaw --all-frozen`, R64): FITHAW on every
//! superblock in the mount table, or on those mounted at listed paths, whoever froze them.
//!
//! # Kernel contract
//!
//! A freeze belongs to no process: FITHAW on any fd of a frozen superblock thaws it, and
//! says EINVAL if it is not frozen. So a sweep cannot tell our freezes from those of a
//! backup agent or `fsfreeze -f`: it thaws them all. That is why it is a separate,
//! explicit action and never what hv-vss does by default (R37, R38, R65): [`recover`]
//! thaws exactly what a journal lists. The sweep is for a machine left frozen by a tool
//! that is gone; if it cannot thaw something, SysRq-j (emergency thaw) is the last resort.
//!
//! `thaw_super` writes the superblock on some filesystems (ext4 commits it), so thawing a
//! loop-backed filesystem while the filesystem holding its image is still frozen blocks
//! until that one is thawed.
//!
//! # Mechanism
//!
//! 1. The mount table is read and parsed ([`parse_mountinfo`]) and the freeze planner's
//!    dependency closure (block stacking, loop backing files, nesting) is built from it.
//! 2. Mounts are grouped by superblock (mountinfo `major:minor`). Without a list, every
//!    superblock is swept except pseudo, remote, unfreezable-type and non-block-backed
//!    ones ([`classify`]; read-only ones *are* swept: a read-only superblock can be frozen).
//!    With a list, exactly the superblocks mounted at the listed paths are, through those
//!    paths only.
//! 3. Order: a superblock is thawed before every superblock that depends on it (hosts
//!    before the loop filesystems whose images they hold), the reverse of the freeze order.
//! 4. One FITHAW per superblock, through the first of its mounts whose opened path is that
//!    mount (statx mount id, else `st_dev`, as the freezer checks): an over-mounted path
//!    leads elsewhere and is not used. Each attempt (open, check, FITHAW) runs on its own
//!    thread with a deadline; one that misses it is reported and left running, and the
//!    sweep goes on.
//!
//! Nothing is written or logged while the sweep runs: the caller prints the report after
//! (its output may go to a frozen filesystem).
//!
//! # Limitations
//!
//! - A superblock none of whose mounts is reachable (all over-mounted) is reported
//!   unreachable, not thawed.
//! - A FITHAW that blocks (its storage is frozen and not swept) keeps its thread, and the
//!   process cannot exit until it returns.
//!
//! [`recover`]: crate::recover

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use hv_vss_sys::fs::{DevNum, ThawError};
use serde::{Deserialize, Serialize};

use crate::config::FreezerConfig;
use crate::engine::{FsOps, KernelOps};
use crate::mountinfo::MountEntry;
use crate::plan::{PlanError, Selection, SkipReason, build_plan, classify};
use crate::topology::{SysfsTopology, Topology};
use crate::{MakePlanError, MountSource, serde_util};

/// How long one superblock's open + FITHAW may take before the sweep moves on.
pub const SWEEP_THAW_DEADLINE: Duration = Duration::from_secs(10);

/// What FITHAW did to one superblock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SweepOutcome {
    /// It was frozen (by anyone) and is now thawed.
    Thawed,
    /// EINVAL: it was not frozen.
    NotFrozen,
    /// EOPNOTSUPP: its filesystem cannot freeze, so it is not frozen.
    Unsupported,
    /// No listed mount of it could be opened as itself (unmounted, over-mounted, open
    /// failed): not thawed.
    Unreachable {
        /// Why, for the last mount tried.
        error: String,
    },
    /// FITHAW failed otherwise: not thawed.
    Failed {
        /// The error.
        error: String,
    },
    /// Open and FITHAW did not return within the deadline (blocked, e.g. on a frozen
    /// filesystem below it); the call goes on in the background.
    TimedOut {
        /// The deadline.
        deadline_ms: u64,
    },
}

impl SweepOutcome {
    /// Known not frozen now (thawed, or never was).
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Thawed | Self::NotFrozen | Self::Unsupported)
    }
}

/// One superblock of the sweep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweptFs {
    /// Mount point FITHAW went through (or, if none could be used, the first one tried).
    #[serde(with = "serde_util::path")]
    pub mount_point: PathBuf,
    /// Superblock device (mountinfo `major:minor`).
    #[serde(with = "serde_util::dev")]
    pub dev: DevNum,
    /// Filesystem type.
    pub fs_type: String,
    /// Mount source.
    #[serde(with = "serde_util::os_string")]
    pub source: OsString,
    /// Its other mount points in the table (bind mounts, subvolumes).
    #[serde(with = "serde_util::paths")]
    pub also_mounted_at: Vec<PathBuf>,
    /// What happened.
    #[serde(flatten)]
    pub outcome: SweepOutcome,
}

/// What [`thaw_all_frozen`] did, in the order it thawed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepReport {
    /// Every swept superblock, hosts before what is stored on them.
    pub filesystems: Vec<SweptFs>,
    /// Mounts of superblocks not swept (pseudo, remote, unfreezable, not block-backed, or
    /// not listed).
    pub not_swept: usize,
}

impl SweepReport {
    /// No failure: every swept superblock is known not to be frozen now.
    pub fn complete(&self) -> bool {
        self.filesystems.iter().all(|f| f.outcome.is_ok())
    }

    /// The superblocks that were frozen and are now thawed.
    pub fn thawed(&self) -> impl Iterator<Item = &SweptFs> {
        self.filesystems
            .iter()
            .filter(|f| f.outcome == SweepOutcome::Thawed)
    }
}

/// One superblock to thaw and the mounts it may be reached through, in preference order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SweepTarget {
    dev: DevNum,
    fs_type: String,
    source: OsString,
    /// (mount point, path to open, mount id).
    via: Vec<(PathBuf, PathBuf, u64)>,
    also_mounted_at: Vec<PathBuf>,
}

/// Thaw every frozen superblock of `source`'s mount table ([`Selection::Discover`]), or of
/// the listed mount points ([`Selection::Explicit`]), whoever froze it. One FITHAW per
/// superblock, storage before what is stored on it. Listed paths are made canonical first;
/// a listed path that is not a mount point is an error and nothing is thawed.
///
/// This also thaws freezes taken by other tools (backup agents, `fsfreeze`): use
/// [`recover`](crate::recover) to thaw only what an hv-vss journal lists.
pub fn thaw_all_frozen(
    source: &MountSource,
    selection: &Selection,
) -> Result<SweepReport, MakePlanError> {
    let (mounts, selection) = crate::mount_source::read_mount_table(source, selection)?;
    let topology = SysfsTopology::new(&source.sysfs_root);
    let (targets, not_swept) = sweep_targets(
        &mounts,
        &topology,
        &selection,
        source.open_prefix.as_deref(),
    )?;
    Ok(SweepReport {
        filesystems: sweep(&targets, Arc::new(KernelOps), SWEEP_THAW_DEADLINE),
        not_swept,
    })
}

/// Which superblocks to sweep, in thaw order, and how many mounts are left out. Pure apart
/// from the topology's lookups.
fn sweep_targets(
    mounts: &[MountEntry],
    topology: &dyn Topology,
    selection: &Selection,
    open_prefix: Option<&Path>,
) -> Result<(Vec<SweepTarget>, usize), PlanError> {
    let open_path = |mp: &Path| match open_prefix {
        Some(prefix) => prefix.join(mp.strip_prefix("/").unwrap_or(mp)),
        None => mp.to_path_buf(),
    };
    // Superblock -> its mounts, in table order.
    let mut groups: BTreeMap<DevNum, Vec<usize>> = BTreeMap::new();
    for (i, m) in mounts.iter().enumerate() {
        groups.entry(m.dev).or_default().push(i);
    }
    // Superblock -> the mounts to try, preferred first.
    let mut chosen: BTreeMap<DevNum, Vec<usize>> = BTreeMap::new();
    match selection {
        Selection::Discover => {
            for (&dev, idx) in &groups {
                let sweepable =
                    matches!(classify(&mounts[idx[0]]), None | Some(SkipReason::ReadOnly));
                if sweepable {
                    let mut via = idx.clone();
                    via.sort_by_key(|&i| {
                        let m = &mounts[i];
                        (m.root != Path::new("/"), m.mount_point.as_os_str().len(), i)
                    });
                    chosen.insert(dev, via);
                }
            }
        }
        Selection::Explicit(paths) => {
            for path in paths {
                // Stacked mounts at one path: the top one (last in the table) first.
                let at: Vec<usize> = (0..mounts.len())
                    .rev()
                    .filter(|&i| mounts[i].mount_point == *path)
                    .collect();
                if at.is_empty() {
                    return Err(PlanError::NotAMountPoint(path.clone()));
                }
                for i in at {
                    let via = chosen.entry(mounts[i].dev).or_default();
                    if !via.contains(&i) {
                        via.push(i);
                    }
                }
            }
        }
    }
    let not_swept = groups
        .iter()
        .filter(|(dev, _)| !chosen.contains_key(dev))
        .map(|(_, idx)| idx.len())
        .sum();

    // Thaw order: x before y when y depends on x. The closure is transitive and acyclic, so
    // a dependency's closure is a strict subset of its dependent's: sorting by closure size
    // is a topological order. Ties keep mount table order.
    let plan = build_plan(
        mounts,
        topology,
        &Selection::Discover,
        &FreezerConfig::default()
            .compile()
            .expect("the default config compiles"),
        open_prefix,
    )?;
    let depth = |dev: &DevNum| plan.closure.get(dev).map_or(0, BTreeSet::len);
    let mut order: Vec<DevNum> = chosen.keys().copied().collect();
    order.sort_by_key(|dev| (depth(dev), groups[dev][0]));

    let targets = order
        .into_iter()
        .map(|dev| {
            let via = &chosen[&dev];
            let first = &mounts[via[0]];
            SweepTarget {
                dev,
                fs_type: first.fs_type.clone(),
                source: first.source.clone(),
                via: via
                    .iter()
                    .map(|&i| {
                        let m = &mounts[i];
                        (m.mount_point.clone(), open_path(&m.mount_point), m.mount_id)
                    })
                    .collect(),
                also_mounted_at: groups[&dev]
                    .iter()
                    .map(|&i| mounts[i].mount_point.clone())
                    .filter(|mp| *mp != first.mount_point)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
            }
        })
        .collect();
    Ok((targets, not_swept))
}

/// FITHAW each target in order, each attempt on its own thread under `deadline`.
fn sweep(targets: &[SweepTarget], ops: Arc<dyn FsOps>, deadline: Duration) -> Vec<SweptFs> {
    targets
        .iter()
        .map(|target| {
            let (tx, rx) = mpsc::channel();
            let job_ops = ops.clone();
            let job_target = target.clone();
            std::thread::spawn(move || {
                let _ = tx.send(thaw_one(&job_target, job_ops.as_ref()));
            });
            let (mount_point, outcome) = rx.recv_timeout(deadline).unwrap_or_else(|_| {
                (
                    target.via[0].0.clone(),
                    SweepOutcome::TimedOut {
                        deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
                    },
                )
            });
            SweptFs {
                also_mounted_at: target
                    .also_mounted_at
                    .iter()
                    .chain(std::iter::once(&target.via[0].0))
                    .filter(|mp| **mp != mount_point)
                    .cloned()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                mount_point,
                dev: target.dev,
                fs_type: target.fs_type.clone(),
                source: target.source.clone(),
                outcome,
            }
        })
        .collect()
}

/// Open the target through the first of its mounts that is itself, and FITHAW it.
fn thaw_one(target: &SweepTarget, ops: &dyn FsOps) -> (PathBuf, SweepOutcome) {
    let mut error = String::from("no mount to reach it through");
    for (mount_point, open_path, mount_id) in &target.via {
        let fd = match ops.open(open_path) {
            Ok(fd) => fd,
            Err(e) => {
                error = format!("{}: {e}", mount_point.display());
                continue;
            }
        };
        let id = match ops.identify(fd.as_fd()) {
            Ok(id) => id,
            Err(e) => {
                error = format!("{}: {e}", mount_point.display());
                continue;
            }
        };
        let is_it = match id.mount_id {
            Some(found) => found == *mount_id,
            None => id.dev == target.dev,
        };
        if !is_it {
            error = format!(
                "{} leads to mount {} on {}, not mount {mount_id} (over-mounted?)",
                mount_point.display(),
                id.mount_id.map_or("?".into(), |m| m.to_string()),
                id.dev
            );
            continue;
        }
        let outcome = match ops.thaw(fd.as_fd()) {
            Ok(()) => SweepOutcome::Thawed,
            Err(ThawError::NotFrozen) => SweepOutcome::NotFrozen,
            Err(ThawError::Unsupported) => SweepOutcome::Unsupported,
            Err(e) => SweepOutcome::Failed {
                error: e.to_string(),
            },
        };
        return (mount_point.clone(), outcome);
    }
    (target.via[0].0.clone(), SweepOutcome::Unreachable { error })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mountinfo::parse_mountinfo;
    use crate::topology::Lower;
    use hv_vss_sys::fs::{FileIdentity, FreezeError as SysFreezeError};
    use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
    use std::sync::Mutex;

    struct FakeTopology(BTreeMap<DevNum, Vec<Lower>>);
    impl Topology for FakeTopology {
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

    /// Fake kernel: a path opens the last mount at it; FITHAW of a loop filesystem fails
    /// (as ext4's superblock commit would block) while the filesystem under it is frozen.
    #[derive(Default)]
    struct Fake {
        mounts: BTreeMap<PathBuf, (u64, DevNum)>,
        fds: Mutex<BTreeMap<i32, PathBuf>>,
        frozen: Mutex<BTreeSet<DevNum>>,
        /// dev -> the dev its storage is on.
        stored_on: BTreeMap<DevNum, DevNum>,
        slow: Vec<PathBuf>,
        calls: Mutex<Vec<String>>,
        flushing: Mutex<BTreeSet<DevNum>>,
    }

    impl FsOps for Fake {
        fn flushing(&self) -> &Mutex<BTreeSet<DevNum>> {
            &self.flushing
        }
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
            let (mount_id, dev) = self.mounts[&self.fds.lock().unwrap()[&fd.as_raw_fd()]];
            Ok(FileIdentity {
                dev,
                mount_id: Some(mount_id),
            })
        }
        fn identify_path(&self, _: &Path) -> std::io::Result<FileIdentity> {
            unreachable!("the sweep has no state directory")
        }
        fn syncfs(&self, _: BorrowedFd<'_>) -> std::io::Result<()> {
            unreachable!("the sweep never syncs")
        }
        fn freeze(&self, _: BorrowedFd<'_>) -> Result<(), SysFreezeError> {
            unreachable!("the sweep never freezes")
        }
        fn thaw(&self, fd: BorrowedFd<'_>) -> Result<(), ThawError> {
            let path = self.fds.lock().unwrap()[&fd.as_raw_fd()].clone();
            self.calls
                .lock()
                .unwrap()
                .push(format!("thaw {}", path.display()));
            if self.slow.contains(&path) {
                std::thread::sleep(Duration::from_millis(500));
            }
            let dev = self.mounts[&path].1;
            let mut frozen = self.frozen.lock().unwrap();
            if self.stored_on.get(&dev).is_some_and(|d| frozen.contains(d)) {
                return Err(ThawError::Other(rustix::io::Errno::IO));
            }
            if frozen.remove(&dev) {
                Ok(())
            } else {
                Err(ThawError::NotFrozen)
            }
        }
    }

    const ROOT: DevNum = DevNum { major: 8, minor: 1 };
    const HOST: DevNum = DevNum { major: 8, minor: 2 };
    const IMG: DevNum = DevNum { major: 7, minor: 0 };
    const RO: DevNum = DevNum { major: 8, minor: 3 };

    // /img (loop image on /host) is listed before /host on purpose; /host is also bind
    // mounted at /bind; /hidden's first mount is covered by a tmpfs.
    const TABLE: &str = "\
1 0 8:1 / / rw - ext4 /dev/sda1 rw
3 1 7:0 / /img rw - ext4 /dev/loop0 rw
2 1 8:2 / /host rw - xfs /dev/sda2 rw
4 1 8:2 /sub /bind rw - xfs /dev/sda2 rw
5 1 8:3 / /ro ro - ext4 /dev/sda3 ro
6 1 0:20 / /run rw - tmpfs tmpfs rw
7 1 8:4 / /hidden rw - ext4 /dev/sda4 rw
8 1 0:21 / /hidden rw - tmpfs tmpfs rw
9 1 0:22 / /net rw - nfs4 srv:/x rw
";

    fn world() -> (Vec<MountEntry>, FakeTopology, Fake) {
        let mounts = parse_mountinfo(TABLE.as_bytes()).unwrap();
        let topo = FakeTopology(BTreeMap::from([(
            IMG,
            vec![Lower::BackingFile("/host/a.img".into())],
        )]));
        let mut fake = Fake::default();
        for m in &mounts {
            fake.mounts
                .insert(m.mount_point.clone(), (m.mount_id, m.dev));
        }
        fake.stored_on.insert(IMG, HOST);
        (mounts, topo, fake)
    }

    fn run(selection: &Selection, fake: Fake) -> (SweepReport, Arc<Fake>) {
        let (mounts, topo, _) = world();
        let (targets, not_swept) = sweep_targets(&mounts, &topo, selection, None).unwrap();
        let fake = Arc::new(fake);
        let report = SweepReport {
            filesystems: sweep(&targets, fake.clone(), Duration::from_millis(200)),
            not_swept,
        };
        (report, fake)
    }

    fn outcomes(report: &SweepReport) -> Vec<(String, SweepOutcome)> {
        report
            .filesystems
            .iter()
            .map(|f| (f.mount_point.display().to_string(), f.outcome.clone()))
            .collect()
    }

    #[test]
    fn discover_thaws_hosts_before_their_loop_filesystems_once_per_superblock() {
        let (_, _, fake) = world();
        fake.frozen.lock().unwrap().extend([HOST, IMG, RO]);
        let (report, fake) = run(&Selection::Discover, fake);
        let out = outcomes(&report);
        let host = out.iter().position(|(m, _)| m == "/host").unwrap();
        let img = out.iter().position(|(m, _)| m == "/img").unwrap();
        assert!(host < img, "{out:?}");
        assert_eq!(out[host].1, SweepOutcome::Thawed);
        assert_eq!(out[img].1, SweepOutcome::Thawed);
        assert!(out.contains(&("/".into(), SweepOutcome::NotFrozen)));
        assert!(
            out.contains(&("/ro".into(), SweepOutcome::Thawed)),
            "read-only superblocks are swept: {out:?}"
        );
        // Pseudo and remote are left alone; the bind mount shares /host's FITHAW.
        for skipped in ["/run", "/net", "/bind"] {
            assert!(out.iter().all(|(m, _)| m != skipped), "{out:?}");
        }
        assert_eq!(
            report.filesystems[host].also_mounted_at,
            vec![PathBuf::from("/bind")]
        );
        assert_eq!(
            fake.calls
                .lock()
                .unwrap()
                .iter()
                .filter(|c| c.contains("/host") || c.contains("/bind"))
                .count(),
            1
        );
        // /hidden's ext4 is covered by a tmpfs: its path leads elsewhere, so no FITHAW.
        let hidden = &report.filesystems[out.iter().position(|(m, _)| m == "/hidden").unwrap()];
        assert_eq!(hidden.dev, DevNum { major: 8, minor: 4 });
        assert!(
            matches!(&hidden.outcome, SweepOutcome::Unreachable { error } if error.contains("over-mounted")),
            "{hidden:?}"
        );
        assert!(!report.complete());
        assert_eq!(report.thawed().count(), 3);
        assert!(fake.frozen.lock().unwrap().is_empty());
        assert_eq!(
            report.not_swept, 3,
            "tmpfs /run, tmpfs on /hidden, nfs /net"
        );
    }

    #[test]
    fn a_list_limits_the_sweep_to_those_mount_points() {
        let (_, _, fake) = world();
        fake.frozen.lock().unwrap().extend([HOST, IMG, ROOT]);
        let sel = Selection::Explicit(vec!["/img".into(), "/bind".into()]);
        let (report, fake) = run(&sel, fake);
        // /host's superblock is thawed through the listed bind mount, before /img.
        assert_eq!(
            outcomes(&report),
            vec![
                ("/bind".into(), SweepOutcome::Thawed),
                ("/img".into(), SweepOutcome::Thawed)
            ]
        );
        assert!(report.complete());
        assert_eq!(
            *fake.frozen.lock().unwrap(),
            BTreeSet::from([ROOT]),
            "/ untouched"
        );
        assert_eq!(fake.calls.lock().unwrap().len(), 2);
    }

    #[test]
    fn an_unlisted_frozen_host_makes_its_loop_filesystem_fail_and_is_reported() {
        let (_, _, fake) = world();
        fake.frozen.lock().unwrap().extend([HOST, IMG]);
        let (report, _) = run(&Selection::Explicit(vec!["/img".into()]), fake);
        assert!(matches!(
            report.filesystems[0].outcome,
            SweepOutcome::Failed { .. }
        ));
        assert!(!report.complete());
    }

    #[test]
    fn a_listed_path_that_is_not_a_mount_point_is_an_error() {
        let (mounts, topo, _) = world();
        let sel = Selection::Explicit(vec!["/img".into(), "/nope".into()]);
        assert_eq!(
            sweep_targets(&mounts, &topo, &sel, None).unwrap_err(),
            PlanError::NotAMountPoint("/nope".into())
        );
    }

    #[test]
    fn a_fithaw_that_misses_its_deadline_is_reported_and_the_sweep_goes_on() {
        let (_, _, mut fake) = world();
        fake.slow.push("/ro".into());
        fake.frozen.lock().unwrap().extend([IMG, RO]);
        let sel = Selection::Explicit(vec!["/img".into(), "/ro".into()]);
        let (report, _) = run(&sel, fake);
        assert_eq!(
            outcomes(&report),
            vec![
                ("/ro".into(), SweepOutcome::TimedOut { deadline_ms: 200 }),
                ("/img".into(), SweepOutcome::Thawed)
            ]
        );
        assert!(!report.complete());
    }

    #[test]
    fn a_pid1_table_is_opened_through_the_prefix() {
        let (mounts, topo, _) = world();
        let (targets, _) = sweep_targets(
            &mounts,
            &topo,
            &Selection::Explicit(vec!["/host".into()]),
            Some(Path::new("/proc/1/root")),
        )
        .unwrap();
        assert_eq!(
            targets[0].via,
            vec![("/host".into(), "/proc/1/root/host".into(), 2)]
        );
    }

    /// The real thing, on a loop filesystem frozen by another process (root only).
    #[test]
    fn a_foreign_freeze_on_a_listed_loop_fs_is_thawed() {
        use hv_vss_testutil::{FsKind, LoopFs, freeze_from_other_process, freezing_test};
        freezing_test(Duration::from_secs(120), || {
            let fs = LoopFs::new(FsKind::Ext4).unwrap();
            freeze_from_other_process(fs.mount_point()).unwrap();
            assert!(fs.is_frozen().unwrap());
            let sel = Selection::Explicit(vec![fs.mount_point().to_path_buf()]);
            let report = thaw_all_frozen(&MountSource::current(), &sel).unwrap();
            assert_eq!(report.filesystems.len(), 1, "{report:?}");
            assert_eq!(report.filesystems[0].outcome, SweepOutcome::Thawed);
            assert_eq!(report.filesystems[0].dev, fs.dev().unwrap());
            assert!(fs.writable_within(Duration::from_secs(10)));
            let again = thaw_all_frozen(&MountSource::current(), &sel).unwrap();
            assert_eq!(again.filesystems[0].outcome, SweepOutcome::NotFrozen);
            assert!(again.complete());
        });
    }
}
