use super::*;
use crate::config::FreezerConfig;
use crate::mountinfo::parse_mountinfo;

#[derive(Default)]
struct FakeTopology {
    lower: BTreeMap<DevNum, Vec<Lower>>,
    files: BTreeMap<PathBuf, DevNum>,
    block: BTreeMap<PathBuf, DevNum>,
}

impl Topology for FakeTopology {
    fn lower(&self, dev: DevNum) -> Vec<Lower> {
        self.lower.get(&dev).cloned().unwrap_or_default()
    }
    fn dev_of_path(&self, path: &Path) -> Option<DevNum> {
        self.files.get(path).copied()
    }
    fn block_device(&self, path: &Path) -> Option<DevNum> {
        self.block.get(path).copied()
    }
}

fn dev(major: u32, minor: u32) -> DevNum {
    DevNum { major, minor }
}

const TABLE: &str = "\
1 0 8:1 / / rw,relatime - ext4 /dev/sda1 rw
2 1 0:5 / /proc rw - proc proc rw
3 1 0:20 / /run rw - tmpfs tmpfs rw
4 1 8:2 / /boot/efi rw - vfat /dev/sda2 rw
5 1 8:3 / /data rw - xfs /dev/sda3 rw
6 1 8:3 /sub /srv/bind rw - xfs /dev/sda3 rw
7 5 7:0 / /data/inner rw - ext4 /dev/loop0 rw
8 1 0:40 / /mnt/nfs rw - nfs4 server:/x rw
9 1 8:4 / /ro ro - ext4 /dev/sda4 ro
10 1 0:41 / /bt rw - btrfs /dev/loop1 rw
11 1 0:41 /@home /home rw - btrfs /dev/loop1 rw
12 1 8:5 / /mnt/iso ro - iso9660 /dev/sr0 ro
13 1 0:42 / /fuse rw - fuse.sshfs me@h:/ rw
";

fn topo() -> FakeTopology {
    let mut t = FakeTopology::default();
    // loop0 (inside /data): its image lies on /bt (btrfs, itself on loop1 whose image
    // lies on /).
    t.lower.insert(
        dev(7, 0),
        vec![Lower::BackingFile("/bt/images/a.img".into())],
    );
    t.lower
        .insert(dev(7, 1), vec![Lower::BackingFile("/var/b.img".into())]);
    t.files.insert("/var/b.img".into(), dev(8, 1));
    t.block.insert("/dev/loop1".into(), dev(7, 1));
    t
}

fn plan(sel: Selection, cfg: FreezerConfig) -> Result<Plan, PlanError> {
    let mounts = parse_mountinfo(TABLE.as_bytes()).unwrap();
    build_plan(&mounts, &topo(), &sel, &cfg.compile().unwrap(), None)
}

fn names(p: &Plan) -> Vec<Vec<String>> {
    p.levels
        .iter()
        .map(|l| {
            l.iter()
                .map(|f| f.mount_point.display().to_string())
                .collect()
        })
        .collect()
}

fn reason(p: &Plan, mp: &str) -> SkipReason {
    p.skipped
        .iter()
        .find(|s| s.mount_point == Path::new(mp))
        .unwrap()
        .reason
        .clone()
}

#[test]
fn discovery_selects_levels_and_states_every_skip() {
    let p = plan(Selection::Discover, FreezerConfig::default()).unwrap();
    // loop0's fs (/data/inner) depends on /data (nesting) and /bt (image); /bt depends on
    // / (image and nesting); /data on /. / is last.
    assert_eq!(
        names(&p),
        vec![vec!["/data/inner"], vec!["/bt", "/data"], vec!["/"]],
    );
    assert_eq!(reason(&p, "/proc"), SkipReason::Pseudo);
    assert_eq!(reason(&p, "/run"), SkipReason::Pseudo);
    assert_eq!(reason(&p, "/boot/efi"), SkipReason::Unfreezable);
    assert_eq!(reason(&p, "/mnt/nfs"), SkipReason::Remote);
    assert_eq!(reason(&p, "/ro"), SkipReason::ReadOnly);
    assert_eq!(reason(&p, "/mnt/iso"), SkipReason::Unfreezable);
    assert_eq!(reason(&p, "/fuse"), SkipReason::Remote);
    assert_eq!(
        reason(&p, "/srv/bind"),
        SkipReason::SameFilesystemAs {
            frozen_via: "/data".into()
        }
    );
    assert_eq!(
        reason(&p, "/home"),
        SkipReason::SameFilesystemAs {
            frozen_via: "/bt".into()
        }
    );
    let inner = p
        .filesystems()
        .find(|f| f.mount_point == Path::new("/data/inner"))
        .unwrap();
    assert_eq!(
        inner.depends_on,
        vec![PathBuf::from("/"), "/bt".into(), "/data".into()]
    );
    let data = p
        .filesystems()
        .find(|f| f.mount_point == Path::new("/data"))
        .unwrap();
    assert_eq!(data.also_mounted_at, vec![PathBuf::from("/srv/bind")]);
    assert_eq!(p.len(), 4);
    // JSON is stable and serialisable.
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["levels"][0][0]["dev"], "7:0");
    assert_eq!(json["skipped"][0]["reason"]["kind"], "pseudo");
}

#[test]
fn dependency_through_an_excluded_filesystem_still_orders() {
    let mut cfg = FreezerConfig::default();
    cfg.exclude.mount_points = vec!["/bt".into()];
    let p = plan(Selection::Discover, cfg).unwrap();
    assert_eq!(
        names(&p),
        vec![vec!["/data/inner"], vec!["/data"], vec!["/"]]
    );
    assert_eq!(
        reason(&p, "/bt"),
        SkipReason::Config {
            rule: "exclude.mount_points".into()
        }
    );
}

#[test]
fn explicit_list_any_order_gives_the_same_levels() {
    let a = plan(
        Selection::Explicit(vec!["/bt".into(), "/data/inner".into()]),
        FreezerConfig::default(),
    )
    .unwrap();
    let b = plan(
        Selection::Explicit(vec!["/data/inner".into(), "/bt".into()]),
        FreezerConfig::default(),
    )
    .unwrap();
    assert_eq!(names(&a), vec![vec!["/data/inner"], vec!["/bt"]]);
    assert_eq!(a.levels, b.levels);
    assert_eq!(reason(&a, "/data"), SkipReason::NotListed);
}

#[test]
fn explicit_list_errors() {
    let e = plan(
        Selection::Explicit(vec!["/run".into()]),
        FreezerConfig::default(),
    )
    .unwrap_err();
    assert!(
        matches!(e, PlanError::NotFreezable { ref fs_type, reason: SkipReason::Pseudo, .. } if fs_type == "tmpfs")
    );
    assert!(e.to_string().contains("tmpfs cannot be frozen"), "{e}");
    let e = plan(
        Selection::Explicit(vec!["/nowhere".into()]),
        FreezerConfig::default(),
    )
    .unwrap_err();
    assert_eq!(e, PlanError::NotAMountPoint("/nowhere".into()));
    // A bind mount and its original listed together: one superblock, frozen once.
    let p = plan(
        Selection::Explicit(vec!["/srv/bind".into(), "/data".into()]),
        FreezerConfig::default(),
    )
    .unwrap();
    assert_eq!(names(&p), vec![vec!["/data"]]);
}

/// Regression (issue 8, item 2): a `-o ro` bind mount with a shorter path became the
/// mount the filesystem was reached through, and its per-mount `ro` made the plan skip a
/// writable filesystem as read-only; the host was still told "consistent".
#[test]
fn a_read_only_bind_mount_does_not_make_a_writable_filesystem_read_only() {
    let table = "\
1 0 8:1 / / rw - ext4 /dev/sda1 ro
2 1 8:2 / /srv/data/a rw,relatime - ext4 /dev/sda2 rw
3 1 8:2 / /b ro,relatime - ext4 /dev/sda2 rw
";
    let mounts = parse_mountinfo(table.as_bytes()).unwrap();
    let cfg = FreezerConfig::default().compile().unwrap();
    let build =
        |sel: Selection| build_plan(&mounts, &FakeTopology::default(), &sel, &cfg, None).unwrap();
    let p = build(Selection::Discover);
    assert_eq!(
        names(&p),
        vec![vec!["/srv/data/a"]],
        "frozen via the writable mount"
    );
    assert_eq!(
        reason(&p, "/b"),
        SkipReason::SameFilesystemAs {
            frozen_via: "/srv/data/a".into()
        }
    );
    // A superblock mounted read-only everywhere is still skipped, whatever its mounts say.
    assert_eq!(reason(&p, "/"), SkipReason::ReadOnly);
    // Listing only the read-only bind mount freezes the filesystem behind it.
    let p = build(Selection::Explicit(vec!["/b".into()]));
    assert_eq!(names(&p), vec![vec!["/srv/data/a"]]);
}

#[test]
fn hidden_mounts_are_reported_not_frozen() {
    let table = "\
1 0 8:1 / / rw - ext4 /dev/sda1 rw
2 1 8:2 / /mnt/a rw - ext4 /dev/sda2 rw
3 1 8:3 / /mnt rw - xfs /dev/sda3 rw
4 3 8:5 / /mnt/b rw - ext4 /dev/sda5 rw
5 4 8:6 / /mnt/b rw - ext4 /dev/sda6 rw
";
    let mounts = parse_mountinfo(table.as_bytes()).unwrap();
    let cfg = FreezerConfig::default().compile().unwrap();
    let p = build_plan(
        &mounts,
        &FakeTopology::default(),
        &Selection::Discover,
        &cfg,
        None,
    )
    .unwrap();
    assert_eq!(reason(&p, "/mnt/a"), SkipReason::Hidden { by_mount_id: 3 });
    // 8:5 is over-mounted at the same point by 8:6.
    let hidden_b = p.skipped.iter().find(|s| s.dev == dev(8, 5)).unwrap();
    assert_eq!(hidden_b.reason, SkipReason::Hidden { by_mount_id: 5 });
    assert_eq!(names(&p), vec![vec!["/mnt/b"], vec!["/mnt"], vec!["/"]]);
    assert_eq!(
        p.filesystems()
            .find(|f| f.mount_point == Path::new("/mnt/b"))
            .unwrap()
            .dev,
        dev(8, 6)
    );
}

#[test]
fn a_tmpfs_mounted_inside_a_planned_fs_is_a_safe_state_dir() {
    // /run is a tmpfs mounted on /; /srv/img.ext4 is a loop image on /, mounted at
    // /srv/inner. Freezing / blocks writes to /srv/inner but not to /run.
    let table = "\
1 0 8:1 / / rw - ext4 /dev/sda1 rw
2 1 0:27 / /run rw - tmpfs tmpfs rw
3 1 7:0 / /srv/inner rw - ext4 /dev/loop0 rw
";
    let mut t = FakeTopology::default();
    t.lower
        .insert(dev(7, 0), vec![Lower::BackingFile("/srv/img.ext4".into())]);
    let mounts = parse_mountinfo(table.as_bytes()).unwrap();
    let cfg = FreezerConfig::default().compile().unwrap();
    let p = build_plan(
        &mounts,
        &t,
        &Selection::Explicit(vec!["/".into()]),
        &cfg,
        None,
    )
    .unwrap();
    assert_eq!(names(&p), vec![vec!["/"]]);
    assert!(
        !p.may_freeze(dev(0, 27)),
        "a tmpfs on /run stays writable while / is frozen"
    );
    assert!(
        p.may_freeze(dev(7, 0)),
        "a loop fs whose image is on / is blocked by it"
    );
    assert!(p.may_freeze(dev(8, 1)));
}

#[test]
fn loop_partition_walks_to_the_parent_disk() {
    let table = "\
1 0 8:1 / / rw - ext4 /dev/sda1 rw
2 1 8:3 / /host rw - xfs /dev/sda3 rw
3 1 259:0 / /part rw - ext4 /dev/loop0p1 rw
";
    let mut t = FakeTopology::default();
    t.lower.insert(dev(259, 0), vec![Lower::Device(dev(7, 0))]);
    t.lower
        .insert(dev(7, 0), vec![Lower::BackingFile("/host/disk.img".into())]);
    let mounts = parse_mountinfo(table.as_bytes()).unwrap();
    let cfg = FreezerConfig::default().compile().unwrap();
    let p = build_plan(
        &mounts,
        &t,
        &Selection::Explicit(vec!["/host".into(), "/part".into()]),
        &cfg,
        None,
    )
    .unwrap();
    assert_eq!(names(&p), vec![vec!["/part"], vec!["/host"]]);
    // A state directory on /part may be frozen (its image is on /host); one on / not.
    assert!(p.may_freeze(dev(259, 0)));
    assert!(!p.may_freeze(dev(8, 1)));
    assert!(p.may_freeze(dev(99, 9)));
}

#[test]
fn open_prefix_for_pid1() {
    let p = build_plan(
        &parse_mountinfo(TABLE.as_bytes()).unwrap(),
        &topo(),
        &Selection::Explicit(vec!["/data".into()]),
        &FreezerConfig::default().compile().unwrap(),
        Some(Path::new("/proc/1/root")),
    )
    .unwrap();
    assert_eq!(p.levels[0][0].open_path, PathBuf::from("/proc/1/root/data"));
}

/// Random mount trees over a few nested paths, with stacking, over-mounts and moves
/// (a parent anywhere in the table): the indexed hidden-mount detection answers exactly
/// what the pairwise reference does, for every mount.
fn random_table() -> impl proptest::strategy::Strategy<Value = Vec<MountEntry>> {
    use proptest::prelude::*;
    const POINTS: &[&str] = &["/", "/a", "/a/b", "/a/b/c", "/b", "/a/bc", "/b/a"];
    proptest::collection::vec((0usize..40, 0usize..POINTS.len(), 0u32..4), 1..40).prop_map(|rows| {
        let n = rows.len();
        rows.iter()
            .enumerate()
            .map(|(i, &(parent, point, minor))| {
                let line = format!(
                    "{} {} 8:{minor} / {} rw - ext4 /dev/sda{minor} rw",
                    i + 1,
                    if i == 0 { 0 } else { parent % n + 1 },
                    POINTS[point]
                );
                crate::mountinfo::parse_line(line.as_bytes()).unwrap()
            })
            .collect()
    })
}

proptest::proptest! {
    #[test]
    fn indexed_hidden_detection_matches_the_pairwise_reference(mounts in random_table()) {
        proptest::prop_assert_eq!(hidden_by_indexed(&mounts), hidden_by_pairwise(&mounts));
    }
}

#[test]
fn empty_discovery_is_an_empty_plan() {
    let mounts = parse_mountinfo(b"1 0 0:2 / / rw - tmpfs tmpfs rw\n").unwrap();
    let cfg = FreezerConfig::default().compile().unwrap();
    let p = build_plan(
        &mounts,
        &FakeTopology::default(),
        &Selection::Discover,
        &cfg,
        None,
    )
    .unwrap();
    assert!(p.is_empty());
    assert_eq!(p.skipped.len(), 1);
}
