//! The freezer and the machine's own expedited-RCU switch (`/sys/kernel/rcu_expedited`), on
//! real loop-mounted ext4, xfs and btrfs filesystems that this test creates: the switch is
//! used for the FIFREEZE calls and is back as it was found once the freeze returns, frozen
//! or not. A test binary of its own with one test: tests in one binary run side by side,
//! and another freeze would turn the same switch. Root only (skipped otherwise).

use std::path::Path;
use std::time::Duration;

use hv_vss_freezer::expedite::RCU_EXPEDITED;
use hv_vss_freezer::{
    Expedite, FreezeOptions, FreezerConfig, FsFreezeOutcome, MountSource, Selection, freeze,
    make_plan,
};
use hv_vss_testutil::{FsKind, LoopFs, freezing_test, skip_unless_root, state_dir};

fn switch() -> Option<String> {
    std::fs::read_to_string(RCU_EXPEDITED).ok()
}

#[test]
fn the_kernels_switch_is_used_for_the_freeze_and_left_as_found() {
    if skip_unless_root("the_kernels_switch_is_used_for_the_freeze_and_left_as_found") {
        return;
    }
    freezing_test(Duration::from_secs(120), || {
        for kind in [FsKind::Ext4, FsKind::Xfs, FsKind::Btrfs] {
            let fs = LoopFs::new(kind).unwrap();
            let state = state_dir().unwrap();
            let plan = make_plan(
                &MountSource::current(),
                &Selection::Explicit(vec![fs.mount_point().to_path_buf()]),
                &FreezerConfig::default().compile().unwrap(),
            )
            .unwrap();
            let options = FreezeOptions::new(&FreezerConfig::default(), state.path());
            assert_eq!(options.expedite.as_deref(), Some(Path::new(RCU_EXPEDITED)));
            let before = switch();
            let mut frozen = freeze(&plan, &options).unwrap();
            let during_freeze_answer = switch();
            let report = frozen.report().clone();
            assert!(frozen.thaw().complete);
            assert_eq!(report.filesystems[0].outcome, FsFreezeOutcome::Frozen);
            match before.as_deref().map(str::trim) {
                Some("0") => assert_eq!(report.expedite, Expedite::Expedited, "{kind:?}"),
                Some("1") => assert_eq!(report.expedite, Expedite::AlreadyOn, "{kind:?}"),
                _ => assert!(
                    matches!(report.expedite, Expedite::Unavailable { .. }),
                    "{kind:?}: {:?}",
                    report.expedite
                ),
            }
            // Off again as soon as the FIFREEZE calls returned, while still frozen.
            assert_eq!(during_freeze_answer, before, "{kind:?}");
            assert_eq!(switch(), before, "{kind:?}");
        }
    });
}
