//! The runner thread: jobs reported through the eventfd and drain, with their ids.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Fixture, lines};
use hv_vss_hooks::{HookOp, HookRunner, HookSet, HookStyle, RunReport};
use rustix::event::{PollFd, PollFlags, Timespec};

/// Wait on the wake fd like a daemon's poll loop, draining until `count` reports came.
fn collect(runner: &HookRunner, count: usize) -> Vec<(u64, RunReport)> {
    let give_up = Instant::now() + Duration::from_secs(20);
    let mut reports = Vec::new();
    while reports.len() < count {
        assert!(
            Instant::now() < give_up,
            "only {} of {count} reports",
            reports.len()
        );
        let wake = runner.wake_fd();
        let mut fds = [PollFd::new(&wake, PollFlags::IN)];
        let timeout = Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        rustix::event::poll(&mut fds, Some(&timeout)).unwrap();
        if fds[0].revents().contains(PollFlags::IN) {
            reports.extend(runner.drain());
        }
    }
    reports
}

fn wake_is_readable(runner: &HookRunner) -> bool {
    let wake = runner.wake_fd();
    let mut fds = [PollFd::new(&wake, PollFlags::IN)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&zero)).unwrap() == 1
}

#[test]
fn reports_arrive_through_the_wake_fd_with_their_job_ids() {
    let Some(fx) = Fixture::for_root("reports_arrive_through_the_wake_fd_with_their_job_ids")
    else {
        return;
    };
    fx.logging("10-a", "exit 0");
    fx.logging("20-b", "exit 0");
    let set = Arc::new(HookSet::load(&fx.dir(HookStyle::Native, Duration::from_secs(20))).unwrap());
    let runner = HookRunner::spawn().unwrap();
    assert!(!wake_is_readable(&runner));
    assert!(runner.drain().is_empty());

    let deadline = Instant::now() + Duration::from_secs(60);
    runner.start(41, Arc::clone(&set), HookOp::Freeze, deadline);
    runner.start(42, Arc::clone(&set), HookOp::Thaw, deadline);
    let reports = collect(&runner, 2);
    let ids: Vec<u64> = reports.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [41, 42], "jobs run in order");
    assert_eq!(reports[0].1.op, HookOp::Freeze);
    assert!(reports[0].1.ok && reports[1].1.ok);
    let mut expected = lines(&["10-a", "20-b"], "freeze");
    expected.extend(lines(&["20-b", "10-a"], "thaw"));
    assert_eq!(fx.log_lines(), expected);

    // Drained: the fd is quiet again.
    assert!(!wake_is_readable(&runner));
    assert!(runner.drain().is_empty());
}

#[test]
fn abort_job_after_a_veto_reaches_the_hooks_told_to_freeze() {
    let Some(fx) = Fixture::for_root("abort_job_after_a_veto_reaches_the_hooks_told_to_freeze")
    else {
        return;
    };
    fx.logging("10-a", "exit 0");
    fx.logging("20-veto", "[ \"$1\" = freeze ] && exit 1; exit 0");
    fx.logging("30-c", "exit 0");
    let set = Arc::new(HookSet::load(&fx.dir(HookStyle::Native, Duration::from_secs(20))).unwrap());
    let runner = HookRunner::spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);

    runner.start(1, Arc::clone(&set), HookOp::Freeze, deadline);
    let (id, freeze) = collect(&runner, 1).remove(0);
    assert_eq!(id, 1);
    assert!(!freeze.ok);

    fx.clear_log();
    runner.start_abort(2, Arc::clone(&set), freeze, deadline);
    let (id, abort) = collect(&runner, 1).remove(0);
    assert_eq!((id, abort.op, abort.ok), (2, HookOp::Abort, true));
    assert_eq!(fx.log_lines(), lines(&["20-veto", "10-a"], "abort"));
}

/// Defence in depth (R60): a gated runner asks before every hook, so a hook due while the
/// caller says "no exec" (a daemon with frozen filesystems) is never started, even in the
/// middle of a run, and a freeze it refuses is a veto.
#[test]
fn a_gated_runner_starts_no_hook_while_exec_is_refused() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(fx) = Fixture::for_root("a_gated_runner_starts_no_hook_while_exec_is_refused") else {
        return;
    };
    fx.logging("10-a", "exit 0");
    fx.logging("20-b", "exit 0");
    let set = Arc::new(HookSet::load(&fx.dir(HookStyle::Native, Duration::from_secs(20))).unwrap());
    let permitted = Arc::new(AtomicBool::new(false));
    let gate = Arc::clone(&permitted);
    let runner = HookRunner::spawn_gated(Arc::new(move || gate.load(Ordering::SeqCst))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);

    runner.start(1, Arc::clone(&set), HookOp::Freeze, deadline);
    let refused = collect(&runner, 1).remove(0).1;
    assert!(!refused.ok, "a refused freeze is a veto: {refused:?}");
    assert_eq!(refused.started().count(), 0);
    assert!(
        refused
            .failures()
            .all(|r| r.outcome.to_string().contains(hv_vss_hooks::REFUSED))
    );
    assert!(
        fx.log_lines().is_empty(),
        "a hook ran: {:?}",
        fx.log_lines()
    );

    permitted.store(true, Ordering::SeqCst);
    runner.start(2, Arc::clone(&set), HookOp::Freeze, deadline);
    assert!(collect(&runner, 1)[0].1.ok);
    assert_eq!(fx.log_lines(), lines(&["10-a", "20-b"], "freeze"));
}
