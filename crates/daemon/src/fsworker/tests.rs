//! The worker on real loop-mounted filesystems: cancellation by a THAW, plan reuse, the
//! flush ahead and its fast path, a hung flush, an enormous deadline, a panic in a thaw,
//! and a set held frozen until THAW.

use super::*;
use crate::fswork::THAW_RETRY_INTERVAL;
use crate::safety::Epoch;
use hv_vss_core::{FsResult, TxnId};
use hv_vss_freezer::{FreezeReport, FreezerConfig};
use hv_vss_testutil::{FsKind, LoopFs, WriteProbe};
use std::sync::atomic::Ordering;

fn wait_outcome(worker: &FsWorker) -> FsOutcome {
    for _ in 0..600 {
        if let Some(o) = worker.drain().into_iter().next() {
            return o;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the worker gave no outcome within 30 s");
}

/// The next `n` outcomes, in order (a drain may return several at once).
fn wait_outcomes(worker: &FsWorker, n: usize, within: Duration) -> Vec<FsOutcome> {
    let mut got = Vec::new();
    let end = std::time::Instant::now() + within;
    while got.len() < n {
        got.extend(worker.drain());
        if std::time::Instant::now() > end {
            panic!(
                "the worker gave {} of {n} outcomes within {within:?}: {got:?}",
                got.len()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    got
}

fn setup_for(fs: &LoopFs, state: &std::path::Path, config: &FreezerConfig) -> FsSetup {
    FsSetup {
        source: hv_vss_freezer::MountSource::current(),
        selection: Selection::Explicit(vec![fs.mount_point().to_path_buf()]),
        config: config.compile().expect("config"),
        options: FreezeOptions::new(config, state),
        watch: None,
    }
}

/// Regression: a THAW (or deadline, or SIGTERM) that reaches the worker while it is
/// still freezing must stop the freeze (the core's `ThawFs` contract): the host has
/// already been told E_FAIL, so nothing may be frozen on its behalf any more. The worker
/// used to finish the whole freeze first, then thaw.
#[test]
fn thaw_sent_while_freezing_stops_the_freeze() {
    if hv_vss_testutil::skip_unless_root("fsworker cancel test") {
        return;
    }
    let _serial = hv_vss_testutil::serial();
    hv_vss_testutil::run_with_timeout(Duration::from_secs(120), || {
        let fs = LoopFs::new(FsKind::Ext4).expect("loop fs");
        let state = hv_vss_testutil::state_dir().expect("state dir");
        let worker = FsWorker::start(setup_for(&fs, state.path(), &FreezerConfig::default()))
            .expect("worker");
        let txn = TxnId(7);
        worker.send(FsCommand::Freeze {
            txn,
            epoch: Epoch(1),
        });
        worker.send(FsCommand::Thaw { txn });
        let outcomes = wait_outcomes(&worker, 2, Duration::from_secs(30));
        match &outcomes[0] {
            FsOutcome::Frozen {
                result,
                report,
                nothing_frozen,
                ..
            } => {
                assert!(
                    result.is_err(),
                    "the freeze went ahead after its thaw: {report:?}"
                );
                let froze_any = report.as_ref().is_some_and(|r| {
                    r.filesystems
                        .iter()
                        .any(|f| f.outcome == hv_vss_freezer::FsFreezeOutcome::Frozen)
                });
                assert!(
                    !froze_any,
                    "a filesystem was frozen after the thaw was asked: {report:?}"
                );
                assert!(nothing_frozen);
            }
            other => panic!("expected Frozen, got {other:?}"),
        }
        match &outcomes[1] {
            FsOutcome::Thawed {
                txn: t, all_thawed, ..
            } => {
                assert_eq!(*t, txn);
                assert!(all_thawed);
            }
            other => panic!("expected Thawed, got {other:?}"),
        }
        assert!(fs.writable_within(Duration::from_secs(5)));
        // A later transaction freezes normally: the cancel was for txn 7 only.
        let next = TxnId(8);
        worker.send(FsCommand::Freeze {
            txn: next,
            epoch: Epoch(2),
        });
        match wait_outcomes(&worker, 1, Duration::from_secs(30)).remove(0) {
            FsOutcome::Frozen { result, .. } => result.expect("freeze of the next txn"),
            other => panic!("expected Frozen, got {other:?}"),
        }
        worker.send(FsCommand::Thaw { txn: next });
        let _ = wait_outcomes(&worker, 1, Duration::from_secs(30));
        assert!(fs.writable_within(Duration::from_secs(5)));
    });
}

/// The freeze of the next transaction, thawed again; its report.
fn freeze_and_thaw(worker: &FsWorker, txn: TxnId) -> FreezeReport {
    worker.send(FsCommand::Check { txn });
    expect_checked(worker).expect("check");
    let report = freeze_ok(worker, txn, "freeze");
    worker.send(FsCommand::Thaw { txn });
    match wait_outcomes(worker, 1, Duration::from_secs(30)).remove(0) {
        FsOutcome::Thawed { all_thawed, .. } => assert!(all_thawed),
        other => panic!("expected Thawed, got {other:?}"),
    }
    report
}

/// Sends `Freeze` for `txn` and expects it to succeed; its report.
fn freeze_ok(worker: &FsWorker, txn: TxnId, what: &str) -> FreezeReport {
    worker.send(FsCommand::Freeze {
        txn,
        epoch: Epoch(txn.0),
    });
    match wait_outcomes(worker, 1, Duration::from_secs(30)).remove(0) {
        FsOutcome::Frozen { result, report, .. } => {
            result.unwrap_or_else(|e| panic!("{what}: {e:?}"));
            report.expect("report")
        }
        other => panic!("expected Frozen, got {other:?}"),
    }
}

fn frozen_devs(report: &FreezeReport) -> Vec<hv_vss_freezer::DevNum> {
    report
        .filesystems
        .iter()
        .filter(|f| f.outcome == hv_vss_freezer::FsFreezeOutcome::Frozen)
        .map(|f| f.dev)
        .collect()
}

/// FREEZE reuses the plan of the check before it when the mount table has not changed,
/// and plans again when a mount or an unmount came in between: the listed directory is
/// over-mounted by another filesystem after the check, so the freeze must freeze that
/// one (the stale plan's mount is no longer reachable there); then the over-mount is
/// removed after the check, and the freeze must freeze the first one again. In a private
/// mount namespace, so that no other process's mounts count and nothing leaks.
#[test]
fn freeze_reuses_the_checked_plan_unless_a_mount_or_unmount_came_in_between() {
    if hv_vss_testutil::skip_unless_root("plan reuse test")
        || !hv_vss_testutil::in_private_mount_namespace(
            "fsworker::tests::freeze_reuses_the_checked_plan_unless_a_mount_or_unmount_came_in_between",
        )
    {
        return;
    }
    let _serial = hv_vss_testutil::serial();
    hv_vss_testutil::run_with_timeout(Duration::from_secs(120), || {
        let listed = LoopFs::new(FsKind::Ext4).expect("loop fs");
        let other = LoopFs::new(FsKind::Ext4).expect("second loop fs");
        let state = hv_vss_testutil::state_dir().expect("state dir");
        let worker = FsWorker::start(setup_for(&listed, state.path(), &FreezerConfig::default()))
            .expect("worker");

        let report = freeze_and_thaw(&worker, TxnId(1));
        assert!(
            report.plan_reused,
            "nothing changed, yet FREEZE planned again"
        );
        assert_eq!(frozen_devs(&report), vec![listed.dev().unwrap()]);

        // A mount between check and freeze: `other` over-mounts the listed directory.
        worker.send(FsCommand::Check { txn: TxnId(2) });
        match wait_outcomes(&worker, 1, Duration::from_secs(30)).remove(0) {
            FsOutcome::Checked { result, .. } => result.expect("check"),
            o => panic!("expected Checked, got {o:?}"),
        }
        let over = listed.mount_point();
        std::process::Command::new("mount")
            .arg(other.loop_device())
            .arg(over)
            .status()
            .expect("mount")
            .success()
            .then_some(())
            .expect("over-mount");
        let report = freeze_ok(&worker, TxnId(2), "freeze after a mount");
        assert!(!report.plan_reused);
        assert_eq!(frozen_devs(&report), vec![other.dev().unwrap()]);
        // (The listed filesystem's own path now leads to `other`: only the report can
        // say it was left alone.)
        assert!(other.is_frozen().unwrap());
        worker.send(FsCommand::Thaw { txn: TxnId(2) });
        let _ = wait_outcomes(&worker, 1, Duration::from_secs(30));

        // An unmount between check and freeze: the listed filesystem is back.
        worker.send(FsCommand::Check { txn: TxnId(3) });
        let _ = wait_outcomes(&worker, 1, Duration::from_secs(30));
        hv_vss_testutil::unmount(over).expect("unmount the over-mount");
        let report = freeze_ok(&worker, TxnId(3), "freeze after an unmount");
        assert!(!report.plan_reused);
        assert_eq!(frozen_devs(&report), vec![listed.dev().unwrap()]);
        worker.send(FsCommand::Thaw { txn: TxnId(3) });
        let _ = wait_outcomes(&worker, 1, Duration::from_secs(30));
        assert!(listed.writable_within(Duration::from_secs(5)));
        assert!(other.writable_within(Duration::from_secs(5)));
    });
}

fn image_bytes(fs: &LoopFs) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(fs.image()).unwrap().blocks() * 512
}

fn write_dirty(fs: &LoopFs, mib: usize) {
    use std::io::Write;
    let mut f = std::fs::File::create(fs.mount_point().join("dirty")).unwrap();
    for _ in 0..mib {
        f.write_all(&[0x5a; 1 << 20]).unwrap();
    }
}

fn expect_checked(worker: &FsWorker) -> FsResult {
    match wait_outcomes(worker, 1, Duration::from_secs(30)).remove(0) {
        FsOutcome::Checked { result, .. } => result,
        other => panic!("expected Checked, got {other:?}"),
    }
}

/// Flush ahead: nothing is flushed after a failing check; a passing check writes the
/// dirty data back with nothing frozen (writeback would otherwise wait 30 s for
/// dirty_expire); FREEZE stops it: no flush call starts while frozen, nor after.
#[test]
fn a_passing_check_flushes_ahead_until_freeze() {
    hv_vss_testutil::freezing_test(Duration::from_secs(120), || {
        let fs = LoopFs::new(FsKind::Ext4).expect("loop fs");
        let dev = fs.dev().unwrap();
        let state = hv_vss_testutil::state_dir().expect("state dir");
        let config = FreezerConfig::default();

        // A check that fails (its state directory is a regular file) flushes nothing.
        let not_a_dir = state.path().join("file");
        std::fs::write(&not_a_dir, b"").unwrap();
        let failing = FsWorker::start(setup_for(&fs, &not_a_dir, &config)).unwrap();
        write_dirty(&fs, 8);
        let before = image_bytes(&fs);
        failing.send(FsCommand::Check { txn: TxnId(1) });
        assert!(expect_checked(&failing).is_err());
        std::thread::sleep(hv_vss_freezer::flush_ahead::PASS_INTERVAL * 5);
        assert_eq!(
            failing.flusher().calls(dev),
            0,
            "flushed after a failing check"
        );
        drop(failing);

        let worker = FsWorker::start(setup_for(&fs, state.path(), &config)).unwrap();
        worker.send(FsCommand::Check { txn: TxnId(2) });
        expect_checked(&worker).expect("check");
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while image_bytes(&fs) < before + (8 << 20) {
            assert!(
                std::time::Instant::now() < end,
                "the dirty data was not written back after the check"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(worker.flusher().calls(dev) >= 1);

        worker.send(FsCommand::Freeze {
            txn: TxnId(2),
            epoch: Epoch(2),
        });
        match wait_outcomes(&worker, 1, Duration::from_secs(30)).remove(0) {
            FsOutcome::Frozen { result, .. } => result.expect("freeze"),
            other => panic!("expected Frozen, got {other:?}"),
        }
        assert_eq!(
            worker.flusher().in_flight(),
            0,
            "a flush runs beside the freeze"
        );
        let calls = worker.flusher().calls(dev);
        // A check while frozen starts no flush either.
        worker.send(FsCommand::Check { txn: TxnId(3) });
        let _ = expect_checked(&worker);
        std::thread::sleep(hv_vss_freezer::flush_ahead::PASS_INTERVAL * 5);
        assert_eq!(
            worker.flusher().calls(dev),
            calls,
            "a flush started while frozen"
        );
        worker.send(FsCommand::Thaw { txn: TxnId(2) });
        let _ = wait_outcomes(&worker, 1, Duration::from_secs(30));
        std::thread::sleep(hv_vss_freezer::flush_ahead::PASS_INTERVAL * 5);
        assert_eq!(
            worker.flusher().calls(dev),
            calls,
            "the flush resumed after FREEZE"
        );
    });
}

/// The fast path: one clean filesystem, found clean by the flush ahead, is frozen with
/// no flush pass of the freeze's own, and still journaled while frozen (exactly that
/// filesystem), thawed exactly, and the journal removed.
#[test]
fn the_fast_path_for_one_clean_filesystem_still_journals_and_thaws_it() {
    hv_vss_testutil::freezing_test(Duration::from_secs(120), || {
        let fs = LoopFs::new(FsKind::Ext4).expect("loop fs");
        let dev = fs.dev().unwrap();
        let state = hv_vss_testutil::state_dir().expect("state dir");
        let worker =
            FsWorker::start(setup_for(&fs, state.path(), &FreezerConfig::default())).unwrap();
        // The fast path is decided from pass times measured at run time; on a loaded
        // machine one pass may be slow enough to refuse it. A few tries, each thawed
        // exactly, and the fast path must be taken in one of them.
        let mut txn = 0;
        let mut refused = Vec::new();
        loop {
            txn += 1;
            worker.send(FsCommand::Check { txn: TxnId(txn) });
            expect_checked(&worker).expect("check");
            let calls = worker.flusher().calls(dev);
            let end = std::time::Instant::now() + Duration::from_secs(20);
            while worker.flusher().calls(dev) < calls + 4 {
                assert!(std::time::Instant::now() < end, "no flush-ahead passes");
                std::thread::sleep(Duration::from_millis(20));
            }
            let report = freeze_ok(&worker, TxnId(txn), "freeze");
            if report.flush_passes_us.is_empty() {
                break;
            }
            refused.push(report);
            assert!(
                refused.len() < 5,
                "the fast path was never taken: {refused:?}"
            );
            worker.send(FsCommand::Thaw { txn: TxnId(txn) });
            match wait_outcomes(&worker, 1, Duration::from_secs(30)).remove(0) {
                FsOutcome::Thawed { result, .. } => result.expect("thaw"),
                other => panic!("expected Thawed, got {other:?}"),
            }
        }
        assert!(fs.is_frozen().unwrap());
        let journal = hv_vss_freezer::Journal::read(state.path())
            .expect("journal")
            .expect("a journal while frozen");
        let listed: Vec<_> = journal.filesystems.iter().map(|e| e.dev).collect();
        assert_eq!(listed, vec![dev]);
        worker.send(FsCommand::Thaw { txn: TxnId(txn) });
        match wait_outcomes(&worker, 1, Duration::from_secs(30)).remove(0) {
            FsOutcome::Thawed {
                result,
                report,
                all_thawed,
                ..
            } => {
                result.expect("thaw");
                assert!(all_thawed);
                let thawed: Vec<_> = report
                    .expect("thaw report")
                    .filesystems
                    .iter()
                    .map(|f| f.dev)
                    .collect();
                assert_eq!(thawed, vec![dev]);
            }
            other => panic!("expected Thawed, got {other:?}"),
        }
        assert!(fs.writable_within(Duration::from_secs(5)));
        assert!(
            hv_vss_freezer::Journal::read(state.path())
                .unwrap()
                .is_none()
        );
    });
}

/// A flush ahead that hangs (the filesystem's loop image lies on a filesystem this test
/// froze) makes FREEZE fail at its deadline with nothing frozen, and the next check does
/// not start another flush of that device.
#[test]
fn a_hung_flush_fails_the_freeze_and_is_not_restarted() {
    hv_vss_testutil::freezing_test(Duration::from_secs(120), || {
        let lower = LoopFs::create(FsKind::Ext4, 128, None).expect("lower");
        let upper = LoopFs::new_in(FsKind::Ext4, lower.mount_point()).expect("upper");
        let dev = upper.dev().unwrap();
        let state = hv_vss_testutil::state_dir().expect("state dir");
        let config = FreezerConfig {
            freeze_deadline_secs: 1,
            ..FreezerConfig::default()
        };
        let worker = FsWorker::start(setup_for(&upper, state.path(), &config)).unwrap();
        hv_vss_testutil::freeze_path(lower.mount_point()).unwrap();
        write_dirty(&upper, 4);
        worker.send(FsCommand::Check { txn: TxnId(1) });
        expect_checked(&worker).expect("check");
        worker.send(FsCommand::Freeze {
            txn: TxnId(1),
            epoch: Epoch(1),
        });
        match wait_outcomes(&worker, 1, Duration::from_secs(30)).remove(0) {
            FsOutcome::Frozen {
                result,
                nothing_frozen,
                ..
            } => {
                let e = result.expect_err("froze beside a stuck flush");
                assert!(e.detail.contains("stuck"), "{e:?}");
                assert!(nothing_frozen);
            }
            other => panic!("expected Frozen, got {other:?}"),
        }
        assert_eq!(worker.flusher().hung(), vec![dev]);
        worker.send(FsCommand::Check { txn: TxnId(2) });
        expect_checked(&worker).expect("check");
        std::thread::sleep(hv_vss_freezer::flush_ahead::PASS_INTERVAL * 5);
        assert_eq!(
            worker.flusher().calls(dev),
            1,
            "a hung flush was started again"
        );
        assert!(hv_vss_testutil::thaw_path(lower.mount_point()).unwrap());
        let end = std::time::Instant::now() + Duration::from_secs(30);
        while !worker.flusher().hung().is_empty() {
            assert!(
                std::time::Instant::now() < end,
                "the stuck flush never returned"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(worker);
    });
}

/// Regression: a per-filesystem deadline from the config too large to add to the clock
/// (`freezer.freeze_deadline_secs = 9223372036854775807` is valid TOML) panicked the
/// freeze after FIFREEZE had started: the filesystem stayed frozen, the worker thread
/// died, and the daemon never answered or thawed.
#[test]
fn an_enormous_freeze_deadline_neither_panics_nor_strands_a_freeze() {
    if hv_vss_testutil::skip_unless_root("fsworker deadline test") {
        return;
    }
    let _serial = hv_vss_testutil::serial();
    hv_vss_testutil::run_with_timeout(Duration::from_secs(120), || {
        let fs = LoopFs::new(FsKind::Ext4).expect("loop fs");
        let state = hv_vss_testutil::state_dir().expect("state dir");
        let config = FreezerConfig {
            freeze_deadline_secs: i64::MAX as u64,
            ..FreezerConfig::default()
        };
        let worker = FsWorker::start(setup_for(&fs, state.path(), &config)).expect("worker");
        let txn = TxnId(1);
        worker.send(FsCommand::Freeze {
            txn,
            epoch: Epoch(1),
        });
        match wait_outcomes(&worker, 1, Duration::from_secs(20)).remove(0) {
            FsOutcome::Frozen { result, .. } => result.expect("freeze"),
            other => panic!("expected Frozen, got {other:?}"),
        }
        worker.send(FsCommand::Thaw { txn });
        match wait_outcomes(&worker, 1, Duration::from_secs(20)).remove(0) {
            FsOutcome::Thawed { all_thawed, .. } => assert!(all_thawed),
            other => panic!("expected Thawed, got {other:?}"),
        }
        assert!(fs.writable_within(Duration::from_secs(5)));
    });
}

/// A watch whose first disarm panics: a bug inside the thaw.
#[derive(Default)]
struct PanicOnFirstDisarm(std::sync::atomic::AtomicBool);

impl FreezeWatch for PanicOnFirstDisarm {
    fn arm(
        &self,
        _: hv_vss_freezer::DevNum,
        _: std::os::fd::BorrowedFd<'_>,
    ) -> std::io::Result<()> {
        Ok(())
    }
    fn disarm(&self, _: hv_vss_freezer::DevNum) {
        if !self.0.swap(true, Ordering::SeqCst) {
            panic!("injected panic inside the thaw");
        }
    }
}

/// Regression (issue 8, item 6): the worker's thaw paths were not panic-guarded, so a
/// panic there killed the worker: the coordinator waited for ever and every later
/// request was refused as busy. The thaw is now answered (as failed) and the next
/// commands still are.
#[test]
fn a_panic_inside_a_thaw_is_answered_and_the_worker_goes_on() {
    if hv_vss_testutil::skip_unless_root("fsworker thaw panic test") {
        return;
    }
    let _serial = hv_vss_testutil::serial();
    hv_vss_testutil::run_with_timeout(Duration::from_secs(120), || {
        let fs = LoopFs::new(FsKind::Ext4).expect("loop fs");
        let state = hv_vss_testutil::state_dir().expect("state dir");
        let mut setup = setup_for(&fs, state.path(), &FreezerConfig::default());
        setup.watch = Some(Arc::new(PanicOnFirstDisarm::default()));
        let worker = FsWorker::start(setup).expect("worker");
        let txn = TxnId(1);
        worker.send(FsCommand::Freeze {
            txn,
            epoch: Epoch(1),
        });
        match wait_outcomes(&worker, 1, Duration::from_secs(30)).remove(0) {
            FsOutcome::Frozen { result, .. } => result.expect("freeze"),
            other => panic!("expected Frozen, got {other:?}"),
        }
        worker.send(FsCommand::Thaw { txn });
        match wait_outcomes(&worker, 1, Duration::from_secs(30)).remove(0) {
            FsOutcome::Thawed { result, .. } => {
                let e = result.expect_err("the thaw panicked");
                assert!(e.detail.contains("internal error"), "{e:?}");
            }
            other => panic!("expected Thawed, got {other:?}"),
        }
        // The retry finishes the set; the worker lives on and freezes again.
        match wait_outcomes(&worker, 1, Duration::from_secs(30)).remove(0) {
            FsOutcome::RetryThawed { .. } => {}
            other => panic!("expected RetryThawed, got {other:?}"),
        }
        assert!(fs.writable_within(Duration::from_secs(5)));
        let next = TxnId(2);
        worker.send(FsCommand::Freeze {
            txn: next,
            epoch: Epoch(2),
        });
        match wait_outcomes(&worker, 1, Duration::from_secs(30)).remove(0) {
            FsOutcome::Frozen { result, .. } => result.expect("the next freeze"),
            other => panic!("expected Frozen, got {other:?}"),
        }
        worker.send(FsCommand::Thaw { txn: next });
        match wait_outcomes(&worker, 1, Duration::from_secs(30)).remove(0) {
            FsOutcome::Thawed { all_thawed, .. } => assert!(all_thawed),
            other => panic!("expected Thawed, got {other:?}"),
        }
        assert!(fs.writable_within(Duration::from_secs(5)));
    });
}

/// Regression: the worker once treated a set held between FREEZE and THAW as an
/// incomplete thaw and "retried" it after one second, thawing behind the host's back.
#[test]
fn held_set_stays_frozen_until_thaw_however_long_the_host_waits() {
    if hv_vss_testutil::skip_unless_root("fsworker hold test") {
        return;
    }
    let _serial = hv_vss_testutil::serial();
    hv_vss_testutil::run_with_timeout(Duration::from_secs(120), || {
        let fs = LoopFs::new(FsKind::Ext4).expect("loop fs");
        let state = hv_vss_testutil::state_dir().expect("state dir");
        let config = FreezerConfig::default();
        let setup = FsSetup {
            source: hv_vss_freezer::MountSource::current(),
            selection: Selection::Explicit(vec![fs.mount_point().to_path_buf()]),
            config: config.compile().expect("config"),
            options: FreezeOptions::new(&config, state.path()),
            watch: None,
        };
        let worker = FsWorker::start(setup).expect("worker");
        let txn = TxnId(1);
        worker.send(FsCommand::Freeze {
            txn,
            epoch: Epoch(1),
        });
        match wait_outcome(&worker) {
            FsOutcome::Frozen { result, .. } => result.expect("freeze"),
            other => panic!("expected Frozen, got {other:?}"),
        }
        let probe = WriteProbe::start(&fs.mount_point().join("probe"), b"x");
        // Well past THAW_RETRY_INTERVAL: nothing may thaw on its own.
        std::thread::sleep(THAW_RETRY_INTERVAL * 3);
        assert!(
            !probe.is_done(),
            "a write completed while the host still held the freeze"
        );
        assert!(
            worker.drain().is_empty(),
            "the worker acted without a command"
        );
        worker.send(FsCommand::Thaw { txn });
        match wait_outcome(&worker) {
            FsOutcome::Thawed {
                result, all_thawed, ..
            } => {
                result.expect("thaw");
                assert!(all_thawed);
            }
            other => panic!("expected Thawed, got {other:?}"),
        }
        assert!(
            probe.wait(Duration::from_secs(10)),
            "the write did not complete after thaw"
        );
    });
}
