//! Recovery with a FITHAW that blocks: each journal entry gets its own deadline, so one
//! filesystem whose FITHAW does not return cannot keep recovery from thawing the others.
//! The blocking FITHAW is real: the kernel makes a FITHAW wait while a FIFREEZE of the
//! same filesystem is in progress, and [`SlowFreezeFs`] makes that FIFREEZE block (its
//! image lives on a filesystem the test holds frozen). Root only (skipped otherwise).

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hv_vss_freezer::{Journal, JournalEntry, RecoverOptions, RecoverOutcome, recover};
use hv_vss_testutil::{
    FsKind, LoopFs, SlowFreezeFs, freeze_from_other_process, freezing_test, state_dir, thaw_path,
};

const TIMEOUT: Duration = Duration::from_secs(90);

fn entry(fs: &LoopFs, pid: i32) -> JournalEntry {
    JournalEntry {
        path: fs.mount_point().to_path_buf(),
        dev: fs.dev().unwrap(),
        fs_type: "ext4".into(),
        pid,
    }
}

#[test]
fn a_fithaw_that_blocks_times_out_and_recovery_thaws_the_rest() {
    freezing_test(TIMEOUT, || {
        let slow = SlowFreezeFs::new().unwrap();
        let plain = LoopFs::new(FsKind::Ext4).unwrap();
        let state = state_dir().unwrap();
        // A freezer that is gone: the pid of a child that has exited and been reaped.
        let mut gone = Command::new("true").spawn().unwrap();
        let pid = gone.id() as i32;
        gone.wait().unwrap();
        // Freeze order: the plain filesystem, then the slow one; recovery goes in reverse,
        // so it meets the blocking FITHAW first.
        Journal {
            version: 1,
            pid,
            created_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64,
            filesystems: vec![entry(&plain, pid), entry(&slow.inner, pid)],
            rcu_expedited: None,
        }
        .write(state.path())
        .unwrap();
        freeze_from_other_process(plain.mount_point()).unwrap();
        slow.hold().unwrap();
        // A FIFREEZE of the inner filesystem that blocks until the outer is released.
        let mut blocked_freeze = Command::new("fsfreeze")
            .arg("-f")
            .arg(slow.inner.mount_point())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            blocked_freeze.try_wait().unwrap().is_none(),
            "the FIFREEZE did not block"
        );

        let report = recover(
            state.path(),
            RecoverOptions {
                thaw_deadline: Duration::from_secs(1),
                ..RecoverOptions::default()
            },
        )
        .unwrap();

        let outcomes: Vec<_> = report
            .filesystems
            .iter()
            .map(|f| (f.entry.path.clone(), f.outcome.clone()))
            .collect();
        assert_eq!(
            outcomes,
            vec![
                (
                    slow.inner.mount_point().to_path_buf(),
                    RecoverOutcome::TimedOut { after_ms: 1000 }
                ),
                (plain.mount_point().to_path_buf(), RecoverOutcome::Thawed),
            ]
        );
        assert!(plain.writable_within(Duration::from_secs(5)));
        assert!(report.ours_may_be_frozen() && !report.journal_removed);
        assert!(Journal::read(state.path()).unwrap().is_some(), "kept");

        // Let the blocked calls finish, then leave nothing frozen.
        assert!(slow.release().unwrap());
        assert!(blocked_freeze.wait().unwrap().success());
        std::thread::sleep(Duration::from_millis(200));
        let _ = thaw_path(slow.inner.mount_point());
        assert!(slow.inner.writable_within(Duration::from_secs(5)));
        // A second recovery finds everything thawed and removes the journal.
        let again = recover(state.path(), RecoverOptions::default()).unwrap();
        assert!(again.complete() && again.journal_removed, "{again:?}");
    });
}
