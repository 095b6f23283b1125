//! The engine on a fake kernel ([`super::fake`]): order, parallelism, policies, deadlines,
//! cancellation, rollback, late returns and the journal, each forced where the real kernel
//! cannot be made to misbehave on demand.

use super::fake::{Fake, Rendezvous};
use super::frozen_set::InFlight;
use super::job::{Job, JobState};
use super::*;
use crate::config::{ForeignFreezePolicy, FreezerConfig, UnsupportedPolicy};
use crate::journal::{Journal, StateLock};
use crate::mountinfo::parse_mountinfo;
use crate::plan::{Selection, build_plan};
use crate::topology::{Lower, Topology};
use hv_vss_sys::fs::DevNum;
use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

struct NoTopology(BTreeMap<DevNum, Vec<Lower>>);
impl Topology for NoTopology {
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

const TABLE: &str = "\
1 0 8:1 / / rw - ext4 /dev/sda1 rw
2 1 8:2 / /host rw - xfs /dev/sda2 rw
3 1 7:0 / /img rw - ext4 /dev/loop0 rw
4 1 8:3 / /other rw - ext4 /dev/sda3 rw
5 1 0:20 / /run rw - tmpfs tmpfs rw
";

pub(super) fn setup(sel: Vec<&str>) -> (Plan, Fake, tempfile::TempDir) {
    let mounts = parse_mountinfo(TABLE.as_bytes()).unwrap();
    let topo = NoTopology(BTreeMap::from([(
        DevNum { major: 7, minor: 0 },
        vec![Lower::BackingFile("/host/a.img".into())],
    )]));
    let plan = build_plan(
        &mounts,
        &topo,
        &Selection::Explicit(sel.iter().map(PathBuf::from).collect()),
        &FreezerConfig::default().compile().unwrap(),
        None,
    )
    .unwrap();
    let mut fake = Fake::default();
    for m in &mounts {
        fake.mounts
            .insert(m.mount_point.clone(), (m.mount_id, m.dev));
    }
    fake.state_dev = Some(DevNum {
        major: 0,
        minor: 20,
    });
    (plan, fake, tempfile::tempdir().unwrap())
}

/// Options with a short deadline and a stand-in for the kernel's expedited-RCU switch in
/// `dir` (off): tests must not turn the machine's switch.
pub(super) fn opts(dir: &tempfile::TempDir) -> FreezeOptions {
    let mut o = FreezeOptions::new(&FreezerConfig::default(), dir.path().join("state"));
    o.freeze_deadline = Duration::from_millis(100);
    let switch = dir.path().join("rcu_expedited");
    std::fs::write(&switch, "0\n").unwrap();
    o.expedite = Some(switch);
    o
}

#[test]
fn freezes_dependents_first_and_thaws_in_reverse() {
    let (plan, fake, dir) = setup(vec!["/host", "/img", "/other"]);
    let fake = Arc::new(fake);
    let mut set = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap();
    assert_eq!(set.fds().len(), 3);
    // The journal lists every superblock while frozen.
    let j = Journal::read(&dir.path().join("state")).unwrap().unwrap();
    assert_eq!(j.filesystems.len(), 3);
    assert_eq!(j.pid, std::process::id() as i32);
    let frozen_order: Vec<PathBuf> = set
        .members()
        .iter()
        .map(|m| m.mount_point.clone())
        .collect();
    let host_pos = frozen_order
        .iter()
        .position(|p| p == Path::new("/host"))
        .unwrap();
    let img_pos = frozen_order
        .iter()
        .position(|p| p == Path::new("/img"))
        .unwrap();
    assert!(img_pos < host_pos);
    let report = set.thaw();
    assert!(report.complete);
    let thawed: Vec<PathBuf> = report
        .filesystems
        .iter()
        .map(|f| f.mount_point.clone())
        .collect();
    let mut expected = frozen_order.clone();
    expected.reverse();
    assert_eq!(thawed, expected);
    assert!(set.is_empty());
    assert!(fake.frozen.lock().unwrap().is_empty());
    assert!(Journal::read(&dir.path().join("state")).unwrap().is_none());
    // All syncs happen before the first freeze.
    let calls = fake.calls();
    let last_sync = calls.iter().rposition(|c| c.starts_with("sync")).unwrap();
    let first_freeze = calls.iter().position(|c| c.starts_with("freeze")).unwrap();
    assert!(last_sync < first_freeze);
}

/// The flush is repeated while it converges: a long pass, a pass a tenth as long, then
/// passes that find nothing (below the floor) end it. A pass no shorter than half the
/// one before (writers dirtying as fast as it writes) ends it too; a zero budget is one
/// pass; `Skip` flushes nothing and still freezes, journals and thaws.
#[test]
fn the_flush_repeats_while_it_converges_and_skip_leaves_it_to_fifreeze() {
    let ms = Duration::from_millis;
    let run = |durations: &[Duration], flush: FlushPolicy| {
        let (plan, fake, dir) = setup(vec!["/other"]);
        fake.sync_durations
            .lock()
            .unwrap()
            .extend(durations.iter().copied());
        let fake = Arc::new(fake);
        let mut o = opts(&dir);
        o.freeze_deadline = Duration::from_secs(30);
        o.flush = flush;
        let mut set = freeze_with(&plan, &o, fake.clone(), &|| false).unwrap();
        let passes = set.report().flush_passes_us.clone();
        let syncs = fake
            .calls()
            .iter()
            .filter(|c| c.starts_with("sync"))
            .count();
        assert_eq!(passes.len(), syncs, "one syncfs per pass (one filesystem)");
        assert!(Journal::read(&dir.path().join("state")).unwrap().is_some());
        assert_eq!(set.members().len(), 1);
        assert!(set.thaw().complete);
        passes
    };
    let converge = FlushPolicy::Converge { budget: ms(1000) };
    let passes = run(&[ms(300), ms(30)], converge);
    assert!(
        (3..=6).contains(&passes.len()),
        "300 ms, 30 ms, then nothing: {passes:?}"
    );
    assert_eq!(
        run(&[ms(100), ms(100)], converge).len(),
        2,
        "not converging"
    );
    assert_eq!(
        run(&[ms(300), ms(30)], FlushPolicy::Converge { budget: ms(0) }).len(),
        1
    );
    assert!(run(&[], FlushPolicy::Skip).is_empty());
}

/// /img and /other are independent (both level 0): their FIFREEZE calls must run at the
/// same time, so each fake call waits until the other has started. A serial engine makes
/// the first call wait out the rendezvous timeout.
#[test]
fn freezes_within_a_level_run_concurrently() {
    let (plan, mut fake, dir) = setup(vec!["/img", "/other"]);
    assert_eq!(plan.levels.len(), 1, "{:?}", plan.levels);
    assert_eq!(plan.levels[0].len(), 2);
    fake.freeze_rendezvous = Some(Rendezvous::new(2));
    let fake = Arc::new(fake);
    let mut o = opts(&dir);
    o.freeze_deadline = Duration::from_secs(10);
    let mut set = freeze_with(&plan, &o, fake.clone(), &|| false).unwrap();
    assert_eq!(set.members().len(), 2);
    let r = fake.freeze_rendezvous.as_ref().unwrap();
    assert_eq!(
        r.timed_out(),
        0,
        "a FIFREEZE waited alone for the other: the level was frozen serially"
    );
    assert!(set.thaw().complete);
}

/// The flush before the first freeze runs every syncfs at the same time.
#[test]
fn flushes_run_concurrently() {
    let (plan, mut fake, dir) = setup(vec!["/img", "/other"]);
    fake.sync_rendezvous = Some(Rendezvous::new(2));
    let fake = Arc::new(fake);
    let mut o = opts(&dir);
    o.freeze_deadline = Duration::from_secs(10);
    let mut set = freeze_with(&plan, &o, fake.clone(), &|| false).unwrap();
    let r = fake.sync_rendezvous.as_ref().unwrap();
    assert_eq!(
        r.timed_out(),
        0,
        "a syncfs waited alone for the other: the flush ran serially"
    );
    assert!(
        set.report()
            .filesystems
            .iter()
            .all(|f| f.sync_error.is_none())
    );
    assert!(set.thaw().complete);
}

#[test]
fn foreign_freeze_fails_rolls_back_ours_and_leaves_theirs() {
    let (plan, mut fake, dir) = setup(vec!["/host", "/img", "/other"]);
    fake.foreign = vec!["/host".into()];
    let fake = Arc::new(fake);
    let err = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap_err();
    assert!(
        matches!(err.error, FreezeError::ForeignFreeze { ref mount_point } if mount_point == Path::new("/host"))
    );
    assert!(fake.frozen.lock().unwrap().is_empty(), "ours rolled back");
    assert!(
        !fake.calls().contains(&"thaw /host".to_string()),
        "theirs never thawed"
    );
    let rollback = err.report.rollback.unwrap();
    assert!(rollback.complete);
    assert_eq!(rollback.filesystems.len(), 2);
    assert!(Journal::read(&dir.path().join("state")).unwrap().is_none());
}

#[test]
fn foreign_freeze_ignored_by_policy_is_not_ours() {
    let (plan, mut fake, dir) = setup(vec!["/host", "/img"]);
    fake.foreign = vec!["/host".into()];
    let fake = Arc::new(fake);
    let mut o = opts(&dir);
    o.on_foreign_freeze = ForeignFreezePolicy::Ignore;
    let mut set = freeze_with(&plan, &o, fake.clone(), &|| false).unwrap();
    assert_eq!(set.members().len(), 1);
    // Regression (issue 8, item 3): the journal listed every planned filesystem, so a
    // crash now made recovery thaw /host, someone else's freeze.
    let j = Journal::read(&dir.path().join("state")).unwrap().unwrap();
    let listed: Vec<&Path> = j.filesystems.iter().map(|e| e.path.as_path()).collect();
    assert_eq!(listed, vec![Path::new("/img")], "only what we froze");
    set.thaw();
    assert!(!fake.calls().contains(&"thaw /host".to_string()));
}

/// Regression (issue 8, item 3): a partial thaw left the journal listing what it had
/// thawed; recovery after a crash would thaw it again, maybe after someone else froze it.
#[test]
fn a_partial_thaw_narrows_the_journal_to_what_is_still_frozen() {
    let (plan, mut fake, dir) = setup(vec!["/img", "/other"]);
    fake.stuck = vec!["/other".into()];
    fake.stuck_on
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let fake = Arc::new(fake);
    let state = dir.path().join("state");
    let mut set = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap();
    assert_eq!(Journal::read(&state).unwrap().unwrap().filesystems.len(), 2);
    let report = set.thaw();
    assert!(!report.complete);
    let j = Journal::read(&state).unwrap().unwrap();
    let listed: Vec<&Path> = j.filesystems.iter().map(|e| e.path.as_path()).collect();
    assert_eq!(listed, vec![Path::new("/other")]);
    fake.stuck_on
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(set.thaw().complete);
    assert!(Journal::read(&state).unwrap().is_none());
}

#[test]
fn unsupported_skip_or_fail() {
    let (plan, mut fake, dir) = setup(vec!["/other", "/img"]);
    fake.unsupported = vec!["/other".into()];
    let fake = Arc::new(fake);
    let set = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap();
    assert_eq!(set.members().len(), 1);
    assert!(
        set.report()
            .filesystems
            .iter()
            .any(|f| f.outcome == FsFreezeOutcome::Unsupported)
    );
    drop(set);
    assert!(fake.frozen.lock().unwrap().is_empty(), "drop thaws");
    let mut o = opts(&dir);
    o.on_unsupported = UnsupportedPolicy::Fail;
    let err = freeze_with(&plan, &o, fake.clone(), &|| false).unwrap_err();
    assert!(matches!(err.error, FreezeError::Unsupported { .. }));
    assert!(fake.frozen.lock().unwrap().is_empty());
}

#[test]
fn a_hung_freeze_fails_and_is_thawed_when_it_returns() {
    let (plan, mut fake, dir) = setup(vec!["/other", "/img"]);
    fake.hang = vec!["/other".into()];
    let fake = Arc::new(fake);
    let err = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap_err();
    assert!(matches!(err.error, FreezeError::Deadline { .. }));
    // The hung call returns after 300 ms, freezes, and its worker thaws it.
    std::thread::sleep(Duration::from_millis(600));
    assert!(fake.frozen.lock().unwrap().is_empty());
    assert!(fake.calls().contains(&"thaw /other".to_string()));
}

/// Regression: syncfs had no deadline, so a hung flush wedged the caller (the daemon's
/// fs worker: coordinator stuck, every later FREEZE refused as busy). It now fails the
/// freeze at the per-filesystem deadline, before anything is frozen.
#[test]
fn a_hung_flush_fails_the_freeze_at_the_deadline_with_nothing_frozen() {
    let (plan, mut fake, dir) = setup(vec!["/other", "/img"]);
    fake.sync_hang = vec!["/img".into()];
    let fake = Arc::new(fake);
    let state = dir.path().join("state");
    let started = Instant::now();
    let err = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false)
        .expect_err("the flush of /img hangs past the deadline");
    let took = started.elapsed();
    assert!(
        matches!(err.error, FreezeError::FlushDeadline { ref mount_point, .. } if mount_point == Path::new("/img")),
        "{}",
        err.error
    );
    assert!(
        took < Duration::from_millis(1200),
        "waited for the hung syncfs ({took:?})"
    );
    assert!(err.unthawed.is_none());
    assert!(
        !fake.calls().iter().any(|c| c.starts_with("freeze")),
        "{:?}",
        fake.calls()
    );
    assert!(Journal::read(&state).unwrap().is_none());
    assert!(StateLock::try_acquire(&state).unwrap().is_some());
    // The abandoned flush finishes on its own later; nothing to undo.
    std::thread::sleep(Duration::from_millis(1600));
    assert!(fake.calls().contains(&"sync /img".to_string()));
    assert!(fake.frozen.lock().unwrap().is_empty());
}

/// Regression (issue 8, item 8): every FREEZE on a filesystem whose syncfs hangs left
/// one more thread (and fd) behind. A second freeze while the first flush still hangs
/// now fails at once without a new flush thread.
#[test]
fn a_hung_flush_is_not_started_again_while_it_hangs() {
    let (plan, mut fake, dir) = setup(vec!["/img"]);
    fake.sync_hang = vec!["/img".into()];
    let fake = Arc::new(fake);
    let err = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap_err();
    assert!(matches!(err.error, FreezeError::FlushDeadline { .. }));
    let started = Instant::now();
    for _ in 0..20 {
        let err = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap_err();
        assert!(
            matches!(err.error, FreezeError::FlushDeadline { .. }),
            "{}",
            err.error
        );
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "each freeze waited for its own flush: {:?}",
        started.elapsed()
    );
    // Once the first flush returns, freezing works again.
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(
        fake.calls().iter().filter(|c| *c == "sync /img").count(),
        1,
        "one flush thread in all: {:?}",
        fake.calls()
    );
    let mut fake_ok = Arc::try_unwrap(fake).ok().expect("no other user");
    fake_ok.sync_hang.clear();
    let fake_ok = Arc::new(fake_ok);
    let mut set = freeze_with(&plan, &opts(&dir), fake_ok, &|| false).unwrap();
    assert!(set.thaw().complete);
}

#[test]
fn a_cancel_while_freezing_stops_before_the_next_level_and_rolls_back() {
    // /img (level 0, its image is on /host) is slow; /host is level 1.
    let (plan, mut fake, dir) = setup(vec!["/host", "/img"]);
    fake.hang = vec!["/img".into()];
    let fake = Arc::new(fake);
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let err = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            cancel.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut o = opts(&dir);
        o.freeze_deadline = Duration::from_secs(5);
        freeze_with(&plan, &o, fake.clone(), &|| {
            cancel.load(std::sync::atomic::Ordering::SeqCst)
        })
        .unwrap_err()
    });
    assert!(matches!(err.error, FreezeError::Cancelled), "{}", err.error);
    // /img's FIFREEZE was abandoned inside level 0; its thread thaws it on return.
    std::thread::sleep(Duration::from_millis(500));
    let calls = fake.calls();
    assert!(
        !calls.contains(&"freeze /host".to_string()),
        "the next level was frozen after the cancel: {calls:?}"
    );
    assert!(calls.contains(&"thaw /img".to_string()), "{calls:?}");
    assert!(fake.frozen.lock().unwrap().is_empty());
    let mut rest = err
        .unthawed
        .expect("kept until the abandoned call returned");
    assert!(rest.thaw().complete);
    assert!(Journal::read(&dir.path().join("state")).unwrap().is_none());
    assert!(
        StateLock::try_acquire(&dir.path().join("state"))
            .unwrap()
            .is_some()
    );
}

/// Regression (issue 8, item 1): a cancel was only looked at between levels, so a
/// THAW, SIGTERM or deadline waited for a slow FIFREEZE (up to the per-filesystem
/// deadline) before anything was rolled back. Now the call is abandoned at once and
/// thawed by its thread when it returns.
#[test]
fn a_cancel_inside_a_level_abandons_the_running_fifreeze_at_once() {
    let (plan, mut fake, dir) = setup(vec!["/other"]);
    fake.hang = vec!["/other".into()];
    let fake = Arc::new(fake);
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let started = Instant::now();
    let err = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(30));
            cancel.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut o = opts(&dir);
        o.freeze_deadline = Duration::from_secs(30);
        freeze_with(&plan, &o, fake.clone(), &|| {
            cancel.load(std::sync::atomic::Ordering::SeqCst)
        })
        .unwrap_err()
    });
    let took = started.elapsed();
    assert!(matches!(err.error, FreezeError::Cancelled), "{}", err.error);
    // The hung call takes 300 ms; the cancel came after 30.
    assert!(
        took < Duration::from_millis(250),
        "waited for the running FIFREEZE: {took:?}"
    );
    assert_eq!(
        err.report.filesystems[0].outcome,
        FsFreezeOutcome::Abandoned
    );
    let mut rest = err
        .unthawed
        .expect("the abandoned call may still freeze: kept");
    assert_eq!(rest.freezes_pending(), vec![PathBuf::from("/other")]);
    let state = dir.path().join("state");
    assert!(
        Journal::read(&state).unwrap().is_some(),
        "listed while in flight"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        fake.frozen.lock().unwrap().is_empty(),
        "its thread thawed it"
    );
    assert!(rest.thaw().complete);
    assert!(Journal::read(&state).unwrap().is_none());
}

/// Regression (issue 8, item 7): a FIFREEZE that succeeded and sent its result was
/// marked done before the caller recorded it; if the caller never did (a panic or an
/// early exit between the two), the set forgot a frozen filesystem.
#[test]
fn a_delivered_but_unrecorded_freeze_is_adopted_and_thawed() {
    let (plan, fake, dir) = setup(vec!["/other"]);
    let fake = Arc::new(fake);
    let mut set = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap();
    // Recreate the window: the member's result delivered, not recorded.
    let member = set.members.pop().unwrap();
    set.in_flight.push(InFlight {
        index: 0,
        job: Arc::new(Job {
            state: Mutex::new(JobState::Delivered { frozen: true }),
        }),
        member,
    });
    assert!(set.thaw().complete);
    assert!(fake.frozen.lock().unwrap().is_empty(), "{:?}", fake.calls());
}

/// What a guardian would be told.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl FreezeWatch for Recorder {
    fn arm(&self, dev: DevNum, _: BorrowedFd<'_>) -> std::io::Result<()> {
        self.0.lock().unwrap().push(format!("arm {dev}"));
        Ok(())
    }
    fn disarm(&self, dev: DevNum) {
        self.0.lock().unwrap().push(format!("disarm {dev}"));
    }
}

/// The watch holds each filesystem before its FIFREEZE and lets go of a foreign one
/// (EBUSY) at once and of ours when thawed.
#[test]
fn the_watch_is_armed_before_each_fifreeze_and_disarmed_when_not_ours() {
    let (plan, mut fake, dir) = setup(vec!["/host", "/img"]);
    fake.foreign = vec!["/host".into()];
    let fake = Arc::new(fake);
    let mut o = opts(&dir);
    o.on_foreign_freeze = ForeignFreezePolicy::Ignore;
    let rec = Arc::new(Recorder::default());
    let mut set = freeze_with_watch(&plan, &o, fake.clone(), &|| false, Some(rec.clone())).unwrap();
    let img = DevNum { major: 7, minor: 0 };
    let host = DevNum { major: 8, minor: 2 };
    assert_eq!(
        *rec.0.lock().unwrap(),
        vec![
            format!("arm {img}"),
            format!("arm {host}"),
            format!("disarm {host}")
        ]
    );
    assert!(set.thaw().complete);
    assert_eq!(
        rec.0.lock().unwrap().last().unwrap(),
        &format!("disarm {img}")
    );
}

#[test]
fn a_freeze_cancelled_before_it_starts_touches_nothing() {
    let (plan, fake, dir) = setup(vec!["/other"]);
    let fake = Arc::new(fake);
    let err = freeze_with(&plan, &opts(&dir), fake.clone(), &|| true).unwrap_err();
    assert!(matches!(err.error, FreezeError::Cancelled));
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    assert!(Journal::read(&dir.path().join("state")).unwrap().is_none());
}

#[test]
fn a_deadline_too_large_for_the_clock_means_no_deadline() {
    let (plan, fake, dir) = setup(vec!["/other", "/img"]);
    let fake = Arc::new(fake);
    let mut o = opts(&dir);
    o.freeze_deadline = Duration::MAX;
    let mut set = freeze_with(&plan, &o, fake.clone(), &|| false).unwrap();
    assert_eq!(set.members().len(), 2);
    assert!(set.thaw().complete);
}

/// A panic while freezing (here injected through the cancel check) unwinds through the
/// set, whose Drop thaws what froze (recorded or only delivered) and removes the journal.
#[test]
fn a_panic_while_freezing_thaws_what_froze() {
    let (plan, fake, dir) = setup(vec!["/host", "/img"]);
    let fake = Arc::new(fake);
    let panicked = std::sync::atomic::AtomicBool::new(false);
    let cancelled = || {
        // Once /img has frozen (level 0), the next look at the cancel panics: inside
        // level 0's wait or before level 1, depending on timing; both must thaw /img.
        if fake
            .frozen
            .lock()
            .unwrap()
            .iter()
            .any(|p| p == Path::new("/img"))
            && !panicked.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("injected");
        }
        false
    };
    let o = opts(&dir);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        freeze_with(&plan, &o, fake.clone(), &cancelled)
    }));
    assert!(result.is_err());
    assert!(fake.calls().contains(&"freeze /img".to_string()));
    assert!(fake.frozen.lock().unwrap().is_empty(), "{:?}", fake.calls());
    assert!(Journal::read(&dir.path().join("state")).unwrap().is_none());
}

/// Regression (R39): after a FIFREEZE missed its deadline, the rollback removed the
/// journal and released the lock while the abandoned call could still succeed; a daemon
/// dying in that window left a frozen filesystem that nothing listed. The journal and
/// lock now stay (in the set handed back) until the call returned and was undone.
#[test]
fn a_timed_out_freeze_keeps_journal_and_lock_until_the_abandoned_call_returns() {
    let (plan, mut fake, dir) = setup(vec!["/other", "/img"]);
    fake.hang = vec!["/other".into()];
    let fake = Arc::new(fake);
    let state = dir.path().join("state");
    let err = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap_err();
    assert!(
        matches!(err.error, FreezeError::Deadline { .. }),
        "{}",
        err.error
    );
    let rollback = err.report.rollback.as_ref().unwrap();
    assert!(!rollback.complete);
    assert_eq!(rollback.freezes_pending, vec![PathBuf::from("/other")]);
    let journal = Journal::read(&state).unwrap();
    assert!(
        journal.is_some_and(|j| j.filesystems.iter().any(|e| e.path == Path::new("/other"))),
        "the journal no longer lists /other while its FIFREEZE may still succeed"
    );
    let listed = Journal::read(&state).unwrap().unwrap().filesystems;
    assert!(
        !listed.iter().any(|e| e.path == Path::new("/img")),
        "the journal still lists /img, thawed by the rollback: {listed:?}"
    );
    assert!(
        StateLock::try_acquire(&state).unwrap().is_none(),
        "the state lock was released while a FIFREEZE was still running"
    );
    let mut rest = err.unthawed.expect("the pending freeze is handed back");
    assert!(!rest.is_empty());
    // The hung call returns after 300 ms, freezes, and its thread thaws it.
    std::thread::sleep(Duration::from_millis(600));
    assert!(fake.frozen.lock().unwrap().is_empty());
    let report = rest.thaw();
    assert!(report.complete, "{report:?}");
    assert!(report.freezes_pending.is_empty());
    assert!(rest.is_empty());
    assert!(Journal::read(&state).unwrap().is_none());
    assert!(StateLock::try_acquire(&state).unwrap().is_some());
}

/// An abandoned FIFREEZE that succeeds late and whose own thaw fails is adopted by the
/// set, so the caller's retries thaw it; journal and lock stay until then.
#[test]
fn a_late_freeze_whose_thaw_fails_is_adopted_and_retried() {
    let (plan, mut fake, dir) = setup(vec!["/other"]);
    fake.hang = vec!["/other".into()];
    fake.stuck = vec!["/other".into()];
    fake.stuck_on = true.into();
    let fake = Arc::new(fake);
    let state = dir.path().join("state");
    let err = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap_err();
    let mut rest = err.unthawed.expect("the pending freeze is handed back");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(*fake.frozen.lock().unwrap(), vec![PathBuf::from("/other")]);
    let report = rest.thaw();
    assert!(!report.complete);
    assert_eq!(rest.members().len(), 1, "the late freeze was not adopted");
    assert!(Journal::read(&state).unwrap().is_some());
    fake.stuck_on
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(rest.thaw().complete);
    assert!(fake.frozen.lock().unwrap().is_empty());
    assert!(Journal::read(&state).unwrap().is_none());
    assert!(StateLock::try_acquire(&state).unwrap().is_some());
}

/// Regression: when the rollback of a failed freeze could not thaw a member, the set
/// was dropped anyway: the member stayed frozen with nobody owning it, the state lock
/// was released (so nothing showed a freeze in progress) and the caller was told
/// nothing of ours was frozen. The rest now comes back to the caller, still locked.
#[test]
fn a_rollback_that_cannot_thaw_hands_the_rest_back_still_locked() {
    let (plan, mut fake, dir) = setup(vec!["/host", "/img", "/other"]);
    fake.foreign = vec!["/host".into()];
    fake.stuck = vec!["/img".into()];
    fake.stuck_on = true.into();
    let fake = Arc::new(fake);
    let state = dir.path().join("state");
    let err = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap_err();
    assert!(matches!(err.error, FreezeError::ForeignFreeze { .. }));
    assert!(!err.report.rollback.as_ref().unwrap().complete);
    assert_eq!(*fake.frozen.lock().unwrap(), vec![PathBuf::from("/img")]);
    assert!(
        StateLock::try_acquire(&state).unwrap().is_none(),
        "the state lock was released while /img is still frozen by us"
    );
    assert!(Journal::read(&state).unwrap().is_some());
    let mut rest = err.unthawed.expect("the unthawed rest is handed back");
    let members: Vec<&Path> = rest
        .members()
        .iter()
        .map(|m| m.mount_point.as_path())
        .collect();
    assert_eq!(members, vec![Path::new("/img")]);
    // Once FITHAW works again, a retry finishes the job and releases everything.
    fake.stuck_on
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(rest.thaw().complete);
    assert!(fake.frozen.lock().unwrap().is_empty());
    assert!(Journal::read(&state).unwrap().is_none());
    assert!(StateLock::try_acquire(&state).unwrap().is_some());
}

#[test]
fn state_dir_on_a_planned_filesystem_is_refused() {
    let (plan, mut fake, dir) = setup(vec!["/host", "/img"]);
    fake.state_dev = Some(DevNum { major: 8, minor: 2 });
    let err = freeze_with(&plan, &opts(&dir), Arc::new(fake), &|| false).unwrap_err();
    assert!(
        matches!(err.error, FreezeError::StateDirUnsafe { .. }),
        "{}",
        err.error
    );
    // Also one built on a planned filesystem (the loop fs whose image is on /host).
    let (plan, mut fake, dir) = setup(vec!["/host"]);
    fake.state_dev = Some(DevNum { major: 7, minor: 0 });
    let err = freeze_with(&plan, &opts(&dir), Arc::new(fake), &|| false).unwrap_err();
    assert!(matches!(err.error, FreezeError::StateDirUnsafe { .. }));
}

#[test]
fn lock_and_journal_refuse_a_second_freeze() {
    let (plan, fake, dir) = setup(vec!["/other"]);
    let fake = Arc::new(fake);
    let set = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap();
    let err = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap_err();
    assert!(matches!(err.error, FreezeError::LockHeld { .. }));
    std::mem::forget(set); // simulated crash: journal stays, lock fd leaks...
    // ...but a leaked fd still holds the lock in this process, so only check the journal.
    let j = Journal::read(&dir.path().join("state")).unwrap().unwrap();
    assert_eq!(j.filesystems[0].path, PathBuf::from("/other"));
}

#[test]
fn mount_changed_is_detected_before_freezing() {
    let (plan, mut fake, dir) = setup(vec!["/other"]);
    fake.mounts
        .insert("/other".into(), (42, DevNum { major: 8, minor: 3 }));
    let fake = Arc::new(fake);
    let err = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap_err();
    assert!(matches!(err.error, FreezeError::MountChanged { .. }));
    assert!(!fake.calls().iter().any(|c| c.starts_with("freeze")));
}
