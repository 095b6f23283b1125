//! The worker over a real holder process: this test binary itself, re-executed to run only
//! [`holder_child_entry`], which runs the real child side
//! ([`hv_vss_freezer::holder_process::serve`]: its poll, its heartbeat and hard-bound
//! timers) over a fake suspender, since UFS cannot be suspended on Linux. The heartbeats
//! come from the test through the [`HolderLink`], as from the main loop.
//!
//! The child speaks the protocol on fd 3 (the worker's pipe), because libtest prints its
//! own lines on stdout (sent to /dev/null).

use std::os::fd::AsFd;
use std::sync::atomic::AtomicBool;

use hv_vss_freezer::freebsd_freeze::PoolSyncer;
use hv_vss_freezer::freebsd_plan::UfsTarget;
use hv_vss_freezer::holder_process::{HoldBounds, serve};
use hv_vss_freezer::suspend_set::Suspender;

use super::*;

/// Set only in the re-executed child: its command-line bounds.
const ARGS_VAR: &str = "HV_VSS_TEST_HOLDER_ARGS";

#[derive(Debug)]
struct Never;

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("never")
    }
}

impl std::error::Error for Never {}

/// Suspends nothing, says it did.
struct FakeUfs;

impl Suspender for FakeUfs {
    type Target = UfsTarget;
    type Held = ();
    type Error = Never;

    fn suspend(&self, _: &UfsTarget) -> Result<(), Never> {
        Ok(())
    }

    fn resume(&self, (): ()) -> Result<(), Never> {
        Ok(())
    }
}

struct NoPools;

impl PoolSyncer for NoPools {
    fn sync(&self, _: &[String]) -> Result<(), String> {
        Ok(())
    }
}

/// The value after `flag` in the child's arguments.
fn flag(args: &[&str], flag: &str) -> Option<u64> {
    let at = args.iter().position(|a| *a == flag)?;
    args.get(at + 1)?.parse().ok()
}

/// The holder's body in the re-executed test binary; in a normal test run (no
/// [`ARGS_VAR`]) it has nothing to do.
#[test]
fn holder_child_entry() {
    let Ok(args) = std::env::var(ARGS_VAR) else {
        return;
    };
    let args: Vec<&str> = args.split_whitespace().collect();
    let bounds = HoldBounds {
        max_hold: flag(&args, "--max-hold-ms").map(Duration::from_millis),
        heartbeat_timeout: Duration::from_millis(
            flag(&args, "--heartbeat-timeout-ms").expect("--heartbeat-timeout-ms"),
        ),
    };
    let plan = FreeBsdPlan {
        ufs: vec![UfsTarget {
            mount_point: "/".into(),
            device: "/dev/da0p2".into(),
            fsid: [1, 2],
        }],
        ..FreeBsdPlan::default()
    };
    let mut protocol = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/fd/3")
        .expect("fd 3");
    serve(
        Ok(plan),
        &FakeUfs,
        &NoPools,
        std::io::stdin().as_fd(),
        &mut protocol,
        &AtomicBool::new(false),
        &bounds,
    )
    .unwrap();
}

/// The worker's setup with this binary as the holder.
fn real_holder(heartbeat_timeout: Duration) -> FsSetup {
    let exe = std::env::current_exe().unwrap();
    let holder: HolderCommand = Arc::new(move || {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                "{ARGS_VAR}=\"$*\" exec \"$0\" --exact fsworker_freebsd::tests::real_holder::holder_child_entry --nocapture -q 3>&1 1>/dev/null"
            ))
            .arg(&exe);
        command
    });
    let mut s = setup(FreeBsdPlan::default(), holder);
    s.heartbeat_timeout = heartbeat_timeout;
    s
}

/// Beats every 100 ms for `how_long` (as the main loop does every second) and says
/// whether the worker reported anything meanwhile.
fn beat_for(worker: &FsWorker, link: &HolderLink, how_long: Duration) -> Vec<FsOutcome> {
    let until = std::time::Instant::now() + how_long;
    while std::time::Instant::now() < until {
        link.heartbeat();
        std::thread::sleep(Duration::from_millis(100));
    }
    worker.drain()
}

#[test]
fn a_real_holder_holds_while_the_loop_beats_and_resumes_when_it_stops() {
    let s = real_holder(Duration::from_millis(500));
    let link = s.link.clone();
    link.set_deadline(Some(Duration::from_secs(60)));
    let worker = FsWorker::start(s).unwrap();
    freezes(&worker, 1, 3);
    let meanwhile = beat_for(&worker, &link, Duration::from_secs(2));
    assert!(
        meanwhile.is_empty(),
        "resumed while heartbeats came: {meanwhile:?}"
    );
    // The loop hangs: no more heartbeats.
    match next(&worker) {
        FsOutcome::ThawedOnItsOwn {
            epoch: Epoch(3),
            cause,
        } => assert!(cause.contains("no heartbeat from hv-vssd"), "{cause}"),
        other => panic!("{other:?}"),
    }
    let (_, error) = thaw_fails(&worker, 1);
    assert!(error.contains("undone before THAW"), "{error}");
    // The next backup is served, and a THAW that comes in time succeeds.
    freezes(&worker, 2, 4);
    link.heartbeat();
    worker.send(FsCommand::Thaw { txn: TxnId(2) });
    assert!(matches!(
        next(&worker),
        FsOutcome::Thawed { result: Ok(()), .. }
    ));
}

#[test]
fn a_real_holder_resumes_at_its_hard_bound_though_the_loop_beats() {
    let s = real_holder(Duration::from_secs(5));
    let link = s.link.clone();
    // The deadline the main loop gives before FREEZE.
    link.set_deadline(Some(Duration::from_millis(1500)));
    let worker = FsWorker::start(s).unwrap();
    freezes(&worker, 1, 1);
    let outcomes = beat_for(&worker, &link, Duration::from_secs(4));
    match &outcomes[..] {
        [FsOutcome::ThawedOnItsOwn { cause, .. }] => {
            assert!(cause.contains("hard bound"), "{cause}")
        }
        other => panic!("{other:?}"),
    }
}
