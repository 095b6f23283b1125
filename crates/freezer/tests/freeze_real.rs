//! The freezer on real loop-mounted ext4, xfs and btrfs filesystems that these tests create.
//! Root only (skipped otherwise); every freezing body runs under a timeout; the guards thaw,
//! unmount and detach on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hv_vss_freezer::{
    FreezeError, FreezeOptions, FreezerConfig, FsFreezeOutcome, Journal, MakePlanError,
    MountSource, Plan, PlanError, RecoverOptions, RecoverOutcome, Selection, SkipReason, freeze,
    make_plan, preflight, recover,
};
use hv_vss_testutil::{
    FsKind, LoopFs, TestMount, WriteProbe, freeze_from_other_process, freezing_test,
    skip_unless_root, state_dir, thaw_path,
};

const TIMEOUT: Duration = Duration::from_secs(120);

fn plan_for(paths: &[&Path]) -> Result<Plan, MakePlanError> {
    make_plan(
        &MountSource::current(),
        &Selection::Explicit(paths.iter().map(|p| p.to_path_buf()).collect()),
        &FreezerConfig::default().compile().unwrap(),
    )
}

fn options(state: &Path) -> FreezeOptions {
    FreezeOptions::new(&FreezerConfig::default(), state)
}

fn dirty(dir: &Path, name: &str, mib: usize) {
    std::fs::write(dir.join(name), vec![0xa5u8; mib * 1024 * 1024]).unwrap();
}

#[test]
fn a_write_blocks_while_frozen_and_completes_after_thaw() {
    freezing_test(TIMEOUT, || {
        for kind in [FsKind::Ext4, FsKind::Xfs, FsKind::Btrfs] {
            let fs = LoopFs::new(kind).unwrap();
            let state = state_dir().unwrap();
            dirty(fs.mount_point(), "before", 4);
            let plan = plan_for(&[fs.mount_point()]).unwrap();
            assert_eq!(plan.len(), 1);
            preflight(&plan, &options(state.path())).unwrap();
            let mut frozen = freeze(&plan, &options(state.path())).unwrap();
            assert_eq!(frozen.fds().len(), 1);
            assert!(
                Journal::read(state.path()).unwrap().is_some(),
                "journal while frozen"
            );
            let probe = WriteProbe::start(&fs.mount_point().join("during"), b"x");
            assert!(
                !probe.wait(Duration::from_millis(300)),
                "{kind:?}: write must block while frozen"
            );
            let report = frozen.thaw();
            assert!(report.complete, "{report:?}");
            assert!(
                probe.wait(Duration::from_secs(10)),
                "{kind:?}: write completes after thaw"
            );
            assert_eq!(probe.result(), Some(Ok(())));
            assert!(
                Journal::read(state.path()).unwrap().is_none(),
                "journal removed after thaw"
            );
            let r = frozen.report();
            assert_eq!(r.filesystems[0].outcome, FsFreezeOutcome::Frozen);
            assert!(r.filesystems[0].sync_us.is_some() && r.filesystems[0].freeze_us.is_some());
            assert!(report.frozen_window_us >= 300_000);
        }
    });
}

#[test]
fn a_bind_mount_and_its_original_are_frozen_once() {
    freezing_test(TIMEOUT, || {
        let fs = LoopFs::new(FsKind::Ext4).unwrap();
        std::fs::create_dir(fs.mount_point().join("sub")).unwrap();
        let bind = TestMount::bind(&fs.mount_point().join("sub")).unwrap();
        let state = state_dir().unwrap();
        let plan = plan_for(&[bind.mount_point(), fs.mount_point()]).unwrap();
        assert_eq!(plan.len(), 1);
        let only = plan.filesystems().next().unwrap();
        assert_eq!(
            only.mount_point,
            fs.mount_point(),
            "frozen through the root mount"
        );
        assert!(
            plan.skipped
                .iter()
                .any(|s| s.mount_point == bind.mount_point()
                    && matches!(s.reason, SkipReason::SameFilesystemAs { .. }))
        );
        // Only the bind mount listed: still the one superblock, frozen without EBUSY.
        let plan = plan_for(&[bind.mount_point()]).unwrap();
        assert_eq!(plan.len(), 1);
        let mut frozen = freeze(&plan, &options(state.path())).unwrap();
        assert_eq!(frozen.members().len(), 1);
        let probe = WriteProbe::start(&bind.mount_point().join("f"), b"x");
        assert!(!probe.wait(Duration::from_millis(200)));
        assert!(frozen.thaw().complete);
        assert!(probe.wait(Duration::from_secs(10)));
    });
}

/// Regression (issue 8, item 2): with a writable ext4 at A and `mount --bind -o ro A B`
/// (B the shorter path), the plan skipped the filesystem as read-only, so a writable
/// filesystem was never frozen while the host was told "consistent".
#[test]
fn a_read_only_bind_mount_of_a_writable_filesystem_is_frozen_through_the_writable_mount() {
    freezing_test(TIMEOUT, || {
        let fs = LoopFs::new(FsKind::Ext4).unwrap();
        let ro = TestMount::bind_read_only(fs.mount_point()).unwrap();
        assert!(
            ro.mount_point().as_os_str().len() < fs.mount_point().as_os_str().len(),
            "the read-only bind mount must be the shorter path to exercise the choice"
        );
        let state = state_dir().unwrap();
        for listed in [
            vec![ro.mount_point()],
            vec![fs.mount_point(), ro.mount_point()],
        ] {
            let plan = plan_for(&listed).unwrap();
            assert_eq!(plan.len(), 1, "{listed:?}");
            let only = plan.filesystems().next().unwrap();
            assert_eq!(only.mount_point, fs.mount_point(), "via the writable mount");
            let mut frozen = freeze(&plan, &options(state.path())).unwrap();
            assert!(fs.is_frozen().unwrap(), "the writable filesystem is frozen");
            let probe = WriteProbe::start(&fs.mount_point().join("f"), b"x");
            assert!(!probe.wait(Duration::from_millis(200)));
            assert!(frozen.thaw().complete);
            assert!(probe.wait(Duration::from_secs(10)));
        }
        // Discovery plans it too (planning only: nothing else is frozen).
        let plan = make_plan(
            &MountSource::current(),
            &Selection::Discover,
            &FreezerConfig::default().compile().unwrap(),
        )
        .unwrap();
        let dev = fs.dev().unwrap();
        let planned = plan.filesystems().find(|f| f.dev == dev);
        assert_eq!(
            planned.map(|f| f.mount_point.as_path()),
            Some(fs.mount_point()),
            "skipped: {:?}",
            plan.skipped
                .iter()
                .filter(|s| s.dev == dev)
                .collect::<Vec<_>>()
        );
    });
}

fn stacked(order_outer_first: bool) {
    let outer = LoopFs::new(FsKind::Xfs).unwrap();
    let inner = LoopFs::new_in(FsKind::Ext4, outer.mount_point()).unwrap();
    let state = state_dir().unwrap();
    // Lots of dirty data in the inner fs: freezing the outer first would deadlock the
    // inner's writeback through its loop device.
    dirty(inner.mount_point(), "big", 16);
    let list: Vec<&Path> = if order_outer_first {
        vec![outer.mount_point(), inner.mount_point()]
    } else {
        vec![inner.mount_point(), outer.mount_point()]
    };
    let plan = plan_for(&list).unwrap();
    let levels: Vec<Vec<PathBuf>> = plan
        .levels
        .iter()
        .map(|l| l.iter().map(|f| f.mount_point.clone()).collect())
        .collect();
    assert_eq!(
        levels,
        vec![
            vec![inner.mount_point().to_path_buf()],
            vec![outer.mount_point().to_path_buf()]
        ]
    );
    let mut frozen = freeze(&plan, &options(state.path())).unwrap();
    let order: Vec<&Path> = frozen
        .members()
        .iter()
        .map(|m| m.mount_point.as_path())
        .collect();
    assert_eq!(order, vec![inner.mount_point(), outer.mount_point()]);
    let report = frozen.thaw();
    assert!(report.complete);
    let thawed: Vec<&Path> = report
        .filesystems
        .iter()
        .map(|f| f.mount_point.as_path())
        .collect();
    assert_eq!(thawed, vec![outer.mount_point(), inner.mount_point()]);
    drop(inner);
    drop(outer);
}

#[test]
fn stacked_loop_filesystems_freeze_in_dependency_order_listed_outer_first() {
    freezing_test(TIMEOUT, || stacked(true));
}

#[test]
fn stacked_loop_filesystems_freeze_in_dependency_order_listed_inner_first() {
    freezing_test(TIMEOUT, || stacked(false));
}

#[test]
fn a_foreign_freeze_fails_ours_roll_back_and_theirs_stays() {
    freezing_test(TIMEOUT, || {
        let a = LoopFs::new(FsKind::Ext4).unwrap();
        let b = LoopFs::new(FsKind::Xfs).unwrap();
        let c = LoopFs::new(FsKind::Btrfs).unwrap();
        let state = state_dir().unwrap();
        freeze_from_other_process(b.mount_point()).unwrap();
        let plan = plan_for(&[a.mount_point(), b.mount_point(), c.mount_point()]).unwrap();
        let failure = freeze(&plan, &options(state.path())).unwrap_err();
        assert!(
            matches!(failure.error, FreezeError::ForeignFreeze { ref mount_point } if mount_point == b.mount_point()),
            "{}",
            failure.error
        );
        let rollback = failure.report.rollback.as_ref().unwrap();
        assert!(rollback.complete);
        assert!(
            rollback
                .filesystems
                .iter()
                .all(|f| f.mount_point != b.mount_point())
        );
        // Ours are writable again.
        for fs in [&a, &c] {
            let probe = WriteProbe::start(&fs.mount_point().join("after"), b"x");
            assert!(
                probe.wait(Duration::from_secs(10)),
                "{:?} thawed",
                fs.kind()
            );
        }
        // Theirs is still frozen: a write blocks, and FITHAW finds it frozen.
        let probe = WriteProbe::start(&b.mount_point().join("after"), b"x");
        assert!(!probe.wait(Duration::from_millis(300)));
        assert!(
            thaw_path(b.mount_point()).unwrap(),
            "foreign freeze left in place"
        );
        assert!(probe.wait(Duration::from_secs(10)));
        assert!(Journal::read(state.path()).unwrap().is_none());
    });
}

#[test]
fn tmpfs_in_the_explicit_list_is_a_clear_error() {
    if skip_unless_root("mount test") {
        return;
    }
    let tmp = TestMount::tmpfs().unwrap();
    let err = plan_for(&[tmp.mount_point()]).unwrap_err();
    assert!(
        matches!(err, MakePlanError::Plan(PlanError::NotFreezable { ref fs_type, reason: SkipReason::Pseudo, .. }) if fs_type == "tmpfs"),
        "{err}"
    );
    assert!(err.to_string().contains("tmpfs cannot be frozen"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let err = plan_for(&[dir.path()]).unwrap_err();
    assert!(
        matches!(err, MakePlanError::Plan(PlanError::NotAMountPoint(_))),
        "{err}"
    );
}

#[test]
fn an_image_copied_while_frozen_is_clean() {
    freezing_test(TIMEOUT, || {
        for kind in [FsKind::Ext4, FsKind::Xfs, FsKind::Btrfs] {
            let fs = LoopFs::new(kind).unwrap();
            let state = state_dir().unwrap();
            for i in 0..50 {
                std::fs::create_dir_all(fs.mount_point().join(format!("d{}", i % 7))).unwrap();
                std::fs::write(
                    fs.mount_point().join(format!("d{}/f{i}", i % 7)),
                    vec![i as u8; 64 * 1024],
                )
                .unwrap();
            }
            let copy_dir = tempfile::tempdir().unwrap();
            let copy = copy_dir.path().join("copy.img");
            let plan = plan_for(&[fs.mount_point()]).unwrap();
            let mut frozen = freeze(&plan, &options(state.path())).unwrap();
            std::fs::copy(fs.image(), &copy).unwrap();
            assert!(frozen.thaw().complete);
            let out = match kind {
                FsKind::Ext4 => Command::new("e2fsck")
                    .arg("-fn")
                    .arg(&copy)
                    .output()
                    .unwrap(),
                FsKind::Btrfs => Command::new("btrfs")
                    .args(["check", "--readonly"])
                    .arg(&copy)
                    .output()
                    .unwrap(),
                FsKind::Xfs => {
                    // An XFS freeze leaves its log to be replayed, as a restored snapshot
                    // does at mount. Do the same, then check the result.
                    replay_xfs_log(&copy);
                    Command::new("xfs_repair")
                        .args(["-n", "-f"])
                        .arg(&copy)
                        .output()
                        .unwrap()
                }
            };
            assert!(
                out.status.success(),
                "{kind:?} fsck of the frozen copy: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
}

fn replay_xfs_log(image: &Path) {
    let mnt = tempfile::tempdir().unwrap();
    // nouuid: the copy has the same UUID as the still-mounted original.
    let ok = Command::new("mount")
        .args(["-o", "loop,nouuid"])
        .arg(image)
        .arg(mnt.path())
        .status()
        .unwrap()
        .success();
    assert!(ok, "mounting the xfs copy to replay its log");
    assert!(
        Command::new("umount")
            .arg(mnt.path())
            .status()
            .unwrap()
            .success()
    );
}

/// Child half of the crash test: freeze what `HV_VSS_CRASH_MOUNTS` lists with state dir
/// `HV_VSS_CRASH_STATE`, say so through the `HV_VSS_CRASH_MARKER` file, and wait to be killed.
#[test]
#[ignore = "run only as the crash test's child process"]
fn crash_child() {
    let (Ok(mounts), Ok(state)) = (
        std::env::var("HV_VSS_CRASH_MOUNTS"),
        std::env::var("HV_VSS_CRASH_STATE"),
    ) else {
        return;
    };
    let paths: Vec<PathBuf> = mounts.split(':').map(PathBuf::from).collect();
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let plan = plan_for(&refs).unwrap();
    let frozen = freeze(&plan, &options(Path::new(&state))).unwrap();
    // Test-only signal to the parent, on the root fs (never frozen by these tests).
    std::fs::write(
        std::env::var("HV_VSS_CRASH_MARKER").unwrap(),
        frozen.members().len().to_string(),
    )
    .unwrap();
    std::mem::forget(frozen);
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn recover_after_a_crash_thaws_exactly_the_journal() {
    freezing_test(TIMEOUT, || {
        let a = LoopFs::new(FsKind::Ext4).unwrap();
        let b = LoopFs::new(FsKind::Btrfs).unwrap();
        let other = LoopFs::new(FsKind::Ext4).unwrap();
        let state = state_dir().unwrap();
        let marker = state.path().join("child-frozen");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--ignored", "--test-threads=1"])
            .env(
                "HV_VSS_CRASH_MOUNTS",
                format!(
                    "{}:{}",
                    a.mount_point().display(),
                    b.mount_point().display()
                ),
            )
            .env("HV_VSS_CRASH_STATE", state.path())
            .env("HV_VSS_CRASH_MARKER", &marker)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The child writes a marker (on the root fs, not frozen) once frozen.
        while !marker.exists() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("child exited before freezing: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "2");
        child.kill().unwrap(); // SIGKILL: no cleanup runs
        child.wait().unwrap();
        // Someone else freezes an unrelated filesystem meanwhile; recovery must not touch it.
        freeze_from_other_process(other.mount_point()).unwrap();

        let journal = Journal::read(state.path())
            .unwrap()
            .expect("journal survives the crash");
        assert_eq!(journal.filesystems.len(), 2);
        let probe = WriteProbe::start(&a.mount_point().join("x"), b"x");
        assert!(
            !probe.wait(Duration::from_millis(200)),
            "still frozen after the crash"
        );

        let report = recover(state.path(), RecoverOptions::default()).unwrap();
        assert!(
            report.journal_found && report.journal_removed && report.complete(),
            "{report:?}"
        );
        let mut thawed: Vec<PathBuf> = report
            .filesystems
            .iter()
            .filter(|f| f.outcome == RecoverOutcome::Thawed)
            .map(|f| f.entry.path.clone())
            .collect();
        thawed.sort();
        let mut expected = vec![a.mount_point().to_path_buf(), b.mount_point().to_path_buf()];
        expected.sort();
        assert_eq!(thawed, expected);
        assert!(probe.wait(Duration::from_secs(10)));
        assert!(Journal::read(state.path()).unwrap().is_none());
        assert!(
            thaw_path(other.mount_point()).unwrap(),
            "the unlisted filesystem stayed frozen"
        );
        // A second recovery finds nothing to do.
        assert!(
            !recover(state.path(), RecoverOptions::default())
                .unwrap()
                .journal_found
        );
    });
}

#[test]
fn a_state_dir_on_a_filesystem_being_frozen_is_refused() {
    freezing_test(TIMEOUT, || {
        let fs = LoopFs::new(FsKind::Ext4).unwrap();
        let inner = LoopFs::new_in(FsKind::Ext4, fs.mount_point()).unwrap();
        let plan = plan_for(&[fs.mount_point()]).unwrap();
        let err = freeze(&plan, &options(&fs.mount_point().join("state"))).unwrap_err();
        assert!(
            matches!(err.error, FreezeError::StateDirUnsafe { .. }),
            "{}",
            err.error
        );
        // On a loop filesystem whose image lies on a frozen one: refused too.
        let err = freeze(&plan, &options(&inner.mount_point().join("state"))).unwrap_err();
        assert!(
            matches!(err.error, FreezeError::StateDirUnsafe { .. }),
            "{}",
            err.error
        );
        assert!(preflight(&plan, &options(&inner.mount_point().join("state"))).is_err());
        let probe = WriteProbe::start(&fs.mount_point().join("f"), b"x");
        assert!(probe.wait(Duration::from_secs(10)), "nothing was frozen");
        drop(inner);
    });
}

/// A btrfs subvolume mounted at a second mount point this test owns; unmounted on drop.
struct SubvolMount {
    dir: tempfile::TempDir,
}

impl SubvolMount {
    fn new(fs: &LoopFs, name: &str) -> Self {
        let status = Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(fs.mount_point().join(name))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "btrfs subvolume create");
        let dir = tempfile::Builder::new()
            .prefix("hv-vss-subvol-")
            .tempdir()
            .unwrap();
        let status = Command::new("mount")
            .args(["-o", &format!("subvol={name}")])
            .arg(fs.loop_device())
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount -o subvol={name}");
        Self { dir }
    }

    fn mount_point(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SubvolMount {
    fn drop(&mut self) {
        // The superblock may still be frozen if the test failed: thaw first.
        hv_vss_testutil::thaw_all_test_filesystems();
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// A btrfs filesystem and one of its subvolumes mounted elsewhere are one superblock: one
/// plan entry (the subvolume under also_mounted_at), one FIFREEZE (a second one would fail
/// with EBUSY), writes through both mounts block, and both complete after the thaw. The
/// subvolume's st_dev differs from mountinfo's major:minor; grouping is by the latter.
#[test]
fn a_btrfs_subvolume_mount_and_its_filesystem_are_frozen_once() {
    freezing_test(TIMEOUT, || {
        let fs = LoopFs::new(FsKind::Btrfs).unwrap();
        let sub = SubvolMount::new(&fs, "vol");
        let (sub_dev, _) = hv_vss_sys::fs::stat_path(sub.mount_point()).unwrap();
        let state = state_dir().unwrap();
        for list in [
            vec![sub.mount_point(), fs.mount_point()],
            vec![fs.mount_point(), sub.mount_point()],
            vec![sub.mount_point()],
        ] {
            let plan = plan_for(&list).unwrap();
            assert_eq!(plan.len(), 1, "{list:?}: {:?}", plan.levels);
            let only = plan.filesystems().next().unwrap();
            assert_eq!(only.mount_point, fs.mount_point(), "{list:?}");
            assert_eq!(
                only.also_mounted_at,
                vec![sub.mount_point().to_path_buf()],
                "{list:?}"
            );
            assert_ne!(only.dev, sub_dev, "subvolume st_dev vs mountinfo");
            let mut frozen = freeze(&plan, &options(state.path())).unwrap();
            assert_eq!(frozen.members().len(), 1);
            assert_eq!(frozen.report().filesystems.len(), 1);
            assert_eq!(
                frozen.report().filesystems[0].outcome,
                FsFreezeOutcome::Frozen
            );
            let in_sub = WriteProbe::start_synced(&sub.mount_point().join("s"), b"x");
            let in_top = fs.write_probe();
            assert!(
                !in_sub.wait(Duration::from_millis(300)),
                "{list:?}: write to the subvolume mount must block"
            );
            assert!(
                !in_top.wait(Duration::from_millis(100)),
                "{list:?}: write to the top-level mount must block"
            );
            assert!(frozen.thaw().complete);
            assert!(in_sub.wait_ok(Duration::from_secs(10)), "{list:?}");
            assert!(in_top.wait_ok(Duration::from_secs(10)), "{list:?}");
            assert!(Journal::read(state.path()).unwrap().is_none());
        }
        drop(sub);
        drop(fs);
    });
}
