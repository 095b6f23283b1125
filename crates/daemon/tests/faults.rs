//! The fault-injection suite: the real `hv-vssd` (drop-in mode, kernel emulator) on real
//! loop-mounted filesystems made here, killed, stopped and starved at every process
//! boundary. For each case: nothing of ours stays frozen past the case's bound, the host
//! gets exactly one answer per request, the daemon (or its next start) serves the next
//! backup, and where the daemon lives on, its fds and threads do not grow.
//!
//! Each case records its row of `docs/RELIABILITY.md` (case, bound, measured, result) as
//! it ends (see `reliability`: the guardian cases of `faults_guardian.rs` record theirs
//! the same way, into the same table); the suite fails if any case failed. Cases run one
//! after another in one test. Root only (skipped otherwise).

mod common;
mod reliability;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::app_client::{AppClient, Silence};
use common::{Daemon, LoopFs, kill, with_timeout};
use hv_vss_app_protocol::{DaemonMessage, EventKind};
use hv_vss_protocol::{HvStatus, VssOperation};
use hv_vss_sim::host::{HandoverListener, HostConfig, HostSimulator, RingCorruption};
use hv_vss_sim::kernel::{EmulatorConfig, HostOutcome, KernelEmulator};
use hv_vss_testutil::{SlowFreezeFs, TestMount, WriteProbe, freeze_from_other_process, thaw_path};
use hv_vss_vmbus::shm::{InterruptMaskModel, ShmRings};
use reliability::Suite;
use rustix::process::Signal;

const READY: Duration = Duration::from_secs(15);
const BLOCKED: Duration = Duration::from_millis(400);
const SUITE_LIMIT: Duration = Duration::from_secs(290);

/// Filesystems, a state directory, the kernel emulator.
struct Setup {
    fs: Vec<LoopFs>,
    /// A filesystem whose FIFREEZE the case makes slow (frozen with the others).
    slow: Option<SlowFreezeFs>,
    state: tempfile::TempDir,
    emu: KernelEmulator,
}

impl Setup {
    fn new(filesystems: usize) -> Self {
        Self {
            fs: (0..filesystems).map(|_| common::ext4()).collect(),
            slow: None,
            state: common::state_dir(),
            emu: KernelEmulator::start(EmulatorConfig::default()).unwrap(),
        }
    }

    /// Only a [`SlowFreezeFs`] to freeze.
    fn slow() -> Self {
        Self {
            slow: Some(SlowFreezeFs::new().unwrap()),
            ..Self::new(0)
        }
    }

    fn slow_fs(&self) -> &SlowFreezeFs {
        self.slow.as_ref().unwrap()
    }

    fn args(&self, mounts: &[&Path], extra: &[&str]) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec![
            "--device".into(),
            self.emu.socket_path().into(),
            "--state-dir".into(),
            self.state.path().into(),
        ];
        for m in mounts {
            args.push("--mount".into());
            args.push(m.into());
        }
        args.extend(extra.iter().map(Into::into));
        args
    }

    /// What the daemon freezes.
    fn targets(&self) -> Vec<&LoopFs> {
        self.fs
            .iter()
            .chain(self.slow.as_ref().map(|s| &s.inner))
            .collect()
    }

    fn own_mounts(&self) -> Vec<&Path> {
        self.targets()
            .into_iter()
            .map(LoopFs::mount_point)
            .collect()
    }

    fn start(&self, extra: &[&str]) -> Daemon {
        let args = self.args(&self.own_mounts(), extra);
        let refs: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        self.registered(Daemon::start(&refs))
    }

    /// Starts the daemon on this setup's filesystems with `config` as its config file.
    fn start_with_config(&self, config: &str) -> Daemon {
        let args = self.args(&self.own_mounts(), &[]);
        let refs: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        self.registered(Daemon::start_with_config(&refs, config))
    }

    fn registered(&self, d: Daemon) -> Daemon {
        assert!(
            self.emu.wait_ready(READY),
            "daemon never registered:\n{}",
            d.log()
        );
        d
    }

    fn request(&self, op: VssOperation) -> HostOutcome {
        self.emu.host_request(op)
    }

    fn assert_reply(&self, op: VssOperation, status: HvStatus) {
        assert_eq!(self.request(op), HostOutcome::Replied(status), "{op:?}");
    }

    /// `n` requests `op`, each answered `status`: how long they took.
    fn repeat_reply(&self, n: usize, op: VssOperation, status: HvStatus) -> Duration {
        let t = Instant::now();
        for _ in 0..n {
            self.assert_reply(op, status);
        }
        t.elapsed()
    }

    /// FREEZE answered S_OK and a write to every filesystem really blocks.
    fn freeze_held(&self) -> Vec<WriteProbe> {
        self.assert_reply(VssOperation::FREEZE, HvStatus::S_OK);
        let probes: Vec<_> = self
            .targets()
            .into_iter()
            .map(LoopFs::write_probe)
            .collect();
        for p in &probes {
            assert!(!p.wait_ok(BLOCKED), "a write went through while frozen");
        }
        probes
    }

    /// A whole backup works and leaves everything writable.
    fn backup_works(&self) {
        self.assert_reply(VssOperation::HOT_BACKUP, HvStatus::S_OK);
        self.assert_reply(VssOperation::FREEZE, HvStatus::S_OK);
        self.assert_reply(VssOperation::THAW, HvStatus::S_OK);
        for f in self.targets() {
            assert!(f.writable_within(Duration::from_secs(5)));
        }
    }

    /// Sends FREEZE on another thread while the slow filesystem is held, waits until its
    /// FIFREEZE is in flight (the journal lists it before the call), runs `fault`, then
    /// returns the host's one answer and what `fault` returned.
    fn during_slow_fifreeze<T: Send>(&self, fault: impl FnOnce() -> T + Send) -> (HostOutcome, T) {
        self.slow_fs().hold().unwrap();
        std::thread::scope(|scope| {
            let host = scope.spawn(|| self.request(VssOperation::FREEZE));
            let end = Instant::now() + Duration::from_secs(10);
            while !self.journal().exists() {
                assert!(Instant::now() < end, "the freeze never started");
                std::thread::sleep(Duration::from_millis(10));
            }
            std::thread::sleep(Duration::from_millis(300));
            let out = fault();
            (host.join().unwrap(), out)
        })
    }

    fn journal(&self) -> PathBuf {
        self.state.path().join("freeze-journal.json")
    }
}

/// The suite's application client, registered as `name` on the daemon's socket
/// (`app.sock` in the state directory).
fn app_client(s: &Setup, name: &str) -> AppClient {
    AppClient::register(&s.state.path().join("app.sock"), name, None, None)
}

/// Sends `op` as the host on another thread; once `app` got the event `kind` (and holds
/// its ack), SIGKILLs the daemon: the host's one answer and the event's txn.
fn sigkill_while_an_app_holds(
    s: &Setup,
    d: &Daemon,
    app: &mut AppClient,
    op: VssOperation,
    kind: EventKind,
) -> (HostOutcome, u64) {
    std::thread::scope(|scope| {
        let host = scope.spawn(|| s.request(op));
        let txn = app.expect_event_within(kind, READY).0;
        kill(d.pid(), Signal::KILL);
        (host.join().unwrap(), txn)
    })
}

/// A whole backup works with `app` registered, acking each of its events ok.
fn backup_works_with(s: &Setup, app: &mut AppClient) {
    std::thread::scope(|scope| {
        let backup = scope.spawn(|| s.backup_works());
        for kind in [EventKind::Check, EventKind::Freeze, EventKind::Thaw] {
            let txn = app.expect_event_within(kind, READY).0;
            app.ack(txn, true);
        }
        backup.join().unwrap();
    });
}

/// The host's answer to a request the daemon died in is not S_OK, and nothing is frozen:
/// how long until a write went through.
fn failed_and_nothing_frozen(s: &Setup, answer: &HostOutcome) -> Duration {
    assert_ne!(*answer, HostOutcome::Replied(HvStatus::S_OK), "{answer:?}");
    let t = Instant::now();
    assert!(
        s.fs[0].writable_within(Duration::from_secs(2)),
        "frozen after the daemon died"
    );
    t.elapsed()
}

/// How long until every probe completed (the writes that blocked while frozen), failing
/// past `bound`.
fn thawed_within(probes: &[WriteProbe], from: Instant, bound: Duration) -> Duration {
    for p in probes {
        let left = bound.saturating_sub(from.elapsed());
        assert!(
            p.wait_ok(left),
            "still frozen {:?} after the fault (bound {bound:?})",
            from.elapsed()
        );
    }
    from.elapsed()
}

/// The daemon's (fds, threads) did not grow from `before` to `after`.
fn assert_no_growth(before: (usize, usize), after: (usize, usize)) {
    assert!(
        after.0 <= before.0 && after.1 <= before.1,
        "fds/threads grew: {before:?} -> {after:?}"
    );
}

/// The five most frequent log lines, told apart by their text after the level (numbers
/// blanked).
fn most_frequent_lines(log: &str) -> Vec<(usize, String)> {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for line in log.lines() {
        let text: String = line
            .split_once("hv_vssd")
            .map_or(line, |(_, rest)| rest)
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect();
        *counts.entry(text).or_default() += 1;
    }
    let mut by_count: Vec<_> = counts.into_iter().map(|(l, n)| (n, l)).collect();
    by_count.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    by_count.truncate(5);
    by_count
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

// ---- the cases ------------------------------------------------------------------------

/// SIGKILL of the daemon while frozen: the guardian sees its socket close and thaws the fds
/// it holds.
fn sigkill_while_frozen() -> String {
    let s = Setup::new(2);
    let d = s.start(&[]);
    let probes = s.freeze_held();
    let t = Instant::now();
    kill(d.pid(), Signal::KILL);
    let took = thawed_within(&probes, t, Duration::from_secs(2));
    assert!(
        !s.journal().exists(),
        "the guardian narrowed the journal away"
    );
    drop(d);
    let _d = s.start(&[]);
    s.backup_works();
    ms(took)
}

/// SIGKILL of daemon and guardian together (both stopped first, so neither can react):
/// the filesystems stay frozen and listed; the next start thaws them before serving (R59).
fn sigkill_of_daemon_and_guardian() -> String {
    let s = Setup::new(1);
    let d = s.start(&[]);
    let probes = s.freeze_held();
    let guardian = d.guardian_pid().expect("a guardian");
    kill(guardian, Signal::STOP);
    kill(d.pid(), Signal::STOP);
    kill(d.pid(), Signal::KILL);
    kill(guardian, Signal::KILL);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !probes[0].is_done(),
        "nothing left to thaw it, yet it thawed"
    );
    assert!(s.journal().exists(), "listed for the next start");
    drop(d);
    let t = Instant::now();
    let _d = s.start(&[]);
    let took = thawed_within(&probes, t, READY);
    s.backup_works();
    format!("{} (next start)", ms(took))
}

/// SIGSTOP of the daemon while frozen: no heartbeat, so the guardian thaws within its
/// bound; on SIGCONT the daemon finds its freeze undone, answers the THAW E_FAIL (R25) and
/// serves the next backup with a new guardian, without fd or thread growth.
fn sigstop_while_frozen() -> String {
    let s = Setup::new(1);
    let d = s.start(&[]);
    s.backup_works();
    let before = d.fds_and_threads();
    let probes = s.freeze_held();
    let t = Instant::now();
    kill(d.pid(), Signal::STOP);
    let took = thawed_within(&probes, t, Duration::from_secs(10));
    kill(d.pid(), Signal::CONT);
    s.assert_reply(VssOperation::THAW, HvStatus::E_FAIL);
    assert!(
        d.wait_log("guardian started", Duration::from_secs(10)),
        "no new guardian:\n{}",
        d.log()
    );
    assert!(s.emu.wait_ready(READY));
    s.backup_works();
    let after = d.fds_and_threads();
    assert_no_growth(before, after);
    ms(took)
}

/// SIGABRT while frozen, with cores enabled and the working directory on the frozen
/// filesystem: not dumpable while frozen, so no core is written to it, the process ends at
/// once and the guardian thaws.
fn sigabrt_while_frozen() -> String {
    let s = Setup::new(1);
    let args = s.args(&s.own_mounts(), &[]);
    let refs: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let mut d = s.registered(Daemon::start_in(&refs, s.fs[0].mount_point()));
    let prlimit = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(d.pid().to_string())
        .arg("--core=unlimited")
        .status()
        .unwrap();
    assert!(prlimit.success());
    let probes = s.freeze_held();
    let t = Instant::now();
    kill(d.pid(), Signal::ABORT);
    let took = thawed_within(&probes, t, Duration::from_secs(2));
    let status = d.wait_exit(Duration::from_secs(10)).expect("exited");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(6), "{status:?}");
    assert!(!status.core_dumped(), "a core was dumped while frozen");
    drop(d);
    let _d = s.start(&[]);
    s.backup_works();
    ms(took)
}

/// A filesystem someone else froze, default policy (`fail`): FREEZE E_FAIL, ours rolled
/// back, theirs left frozen.
fn foreign_freeze_policy_fail() -> String {
    let s = Setup::new(2);
    let d = s.start(&[]);
    freeze_from_other_process(s.fs[1].mount_point()).unwrap();
    s.assert_reply(VssOperation::FREEZE, HvStatus::E_FAIL);
    assert!(s.fs[0].writable_within(Duration::from_secs(2)));
    assert!(
        thaw_path(s.fs[1].mount_point()).unwrap(),
        "theirs stayed frozen"
    );
    drop(d);
    let _d = s.start(&[]);
    s.backup_works();
    "E_FAIL, theirs kept".into()
}

/// The same with `on_foreign_freeze = "ignore"`, then SIGKILL: the guardian thaws ours
/// only, and nothing lists theirs.
fn foreign_freeze_policy_ignore_then_sigkill() -> String {
    let s = Setup::new(2);
    let d = s.start_with_config("[freezer]\non_foreign_freeze = \"ignore\"\n");
    freeze_from_other_process(s.fs[1].mount_point()).unwrap();
    s.assert_reply(VssOperation::FREEZE, HvStatus::S_OK);
    let ours = s.fs[0].write_probe();
    assert!(!ours.wait_ok(BLOCKED));
    let t = Instant::now();
    kill(d.pid(), Signal::KILL);
    let took = thawed_within(&[ours], t, Duration::from_secs(2));
    assert!(!s.journal().exists());
    assert!(
        thaw_path(s.fs[1].mount_point()).unwrap(),
        "the foreign freeze was thawed"
    );
    ms(took)
}

/// A read-only bind mount of a writable filesystem, listed alone: the filesystem is frozen
/// (through its writable mount), not skipped as read-only.
fn read_only_bind_mount() -> String {
    let s = Setup::new(1);
    let ro = TestMount::bind_read_only(s.fs[0].mount_point()).unwrap();
    let args = s.args(&[ro.mount_point()], &[]);
    let refs: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let _d = s.registered(Daemon::start(&refs));
    let probes = s.freeze_held();
    s.assert_reply(VssOperation::THAW, HvStatus::S_OK);
    let took = thawed_within(&probes, Instant::now(), Duration::from_secs(5));
    format!("frozen; thawed {}", ms(took))
}

/// The state directory deleted while idle: the next FREEZE still journals (it is made
/// again) or fails cleanly; either way nothing stays frozen and the daemon serves on.
fn state_dir_deleted() -> String {
    let s = Setup::new(1);
    let _d = s.start(&[]);
    std::fs::remove_dir_all(s.state.path()).unwrap();
    let outcome = s.request(VssOperation::FREEZE);
    let answered = match outcome {
        HostOutcome::Replied(HvStatus::S_OK) => {
            s.assert_reply(VssOperation::THAW, HvStatus::S_OK);
            "S_OK"
        }
        HostOutcome::Replied(HvStatus::E_FAIL) => "E_FAIL",
        other => panic!("{other:?}"),
    };
    assert!(s.fs[0].writable_within(Duration::from_secs(5)));
    s.backup_works();
    format!("FREEZE {answered}, then served")
}

/// A read-only state directory (a read-only tmpfs mounted over it while the daemon runs):
/// neither lock nor journal can be written, so FREEZE fails before any FIFREEZE; the
/// daemon serves again once it is writable.
fn state_dir_read_only() -> String {
    let s = Setup::new(1);
    let _d = s.start(&[]);
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "hv-vss-ro-state"])
        .arg(s.state.path())
        .status()
        .unwrap();
    assert!(mount.success());
    let answered = s.request(VssOperation::FREEZE);
    let writable = s.fs[0].writable_within(Duration::from_secs(2));
    let umount = std::process::Command::new("umount")
        .arg(s.state.path())
        .status()
        .unwrap();
    assert!(umount.success());
    assert_eq!(answered, HostOutcome::Replied(HvStatus::E_FAIL));
    assert!(writable, "frozen although FREEZE failed");
    s.backup_works();
    "E_FAIL, nothing frozen".into()
}

/// SIGKILL while a FIFREEZE is still running (made slow on purpose): the daemon lingers
/// until the call returns and froze; the guardian, which was handed the fd before the call,
/// thaws it as soon as the daemon is gone.
/// The daemon's expedited-RCU switch (a stand-in file here: the machine's is shared with
/// every other test) is on during the call; the guardian turns it off.
fn sigkill_inside_a_slow_fifreeze() -> String {
    let s = Setup::slow();
    let switch_dir = tempfile::tempdir().unwrap();
    let switch = switch_dir.path().join("rcu_expedited");
    std::fs::write(&switch, "0\n").unwrap();
    let d = s.start_with_config(&format!(
        "[freezer]\nrcu_expedited_switch = {:?}\n",
        switch.display().to_string()
    ));
    let (answer, ()) = s.during_slow_fifreeze(|| {
        assert_eq!(
            std::fs::read_to_string(&switch).unwrap(),
            "1",
            "the switch is on during the FIFREEZE"
        );
        kill(d.pid(), Signal::KILL);
        // The host's answer comes when the daemon is gone, after the release below.
        std::thread::sleep(Duration::from_millis(300));
        assert!(s.slow_fs().release().unwrap());
    });
    assert_ne!(answer, HostOutcome::Replied(HvStatus::S_OK), "{answer:?}");
    let probe = s.slow_fs().inner.write_probe();
    let took = thawed_within(&[probe], Instant::now(), Duration::from_secs(2));
    let end = Instant::now() + Duration::from_secs(2);
    while s.journal().exists() {
        assert!(
            Instant::now() < end,
            "still listed after the guardian thawed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        std::fs::read_to_string(&switch).unwrap(),
        "0",
        "the guardian turned the expedited-RCU switch off"
    );
    drop(d);
    let _d = s.start(&[]);
    s.backup_works();
    format!(
        "{} after the FIFREEZE returned, expedited RCU off again; host: {answer:?}",
        ms(took)
    )
}

/// SIGTERM while a FIFREEZE does not return, with a THAW budget of 2 s: the FREEZE is
/// answered E_FAIL at once, the daemon gives up waiting after the budget and exits with an
/// error, and writes nothing to stderr while the FIFREEZE may still freeze (R60). When the
/// call returns, the guardian thaws it.
fn fatal_exit_during_a_slow_fifreeze_writes_nothing() -> String {
    let s = Setup::slow();
    let d = s.start_with_config("stop_timeout_seconds = 7\n[limits]\nthaw_deadline_seconds = 2\n");
    let (answer, log_after_exit) = s.during_slow_fifreeze(|| {
        kill(d.pid(), Signal::TERM);
        // The budget (2 s) runs out; the daemon exits with its error (and waits up to 2 s
        // for its guardian, which waits for the daemon to be gone).
        std::thread::sleep(Duration::from_secs(5));
        let log = d.log();
        assert!(s.slow_fs().release().unwrap(), "the outer fs was not held");
        log
    });
    assert_eq!(answer, HostOutcome::Replied(HvStatus::E_FAIL));
    assert!(
        !log_after_exit.contains("still frozen") && !log_after_exit.contains("answered"),
        "written to stderr while a FIFREEZE could still freeze:\n{log_after_exit}"
    );
    let probe = s.slow_fs().inner.write_probe();
    let took = thawed_within(&[probe], Instant::now(), Duration::from_secs(2));
    drop(d);
    let _d = s.start(&[]);
    s.backup_works();
    format!(
        "nothing written; thawed {} after the FIFREEZE returned",
        ms(took)
    )
}

/// A syncfs that does not return (dirty data on the nested loop fs, outer held) across 50
/// FREEZEs: each is answered E_FAIL, only the first waits for the per-filesystem deadline,
/// and the daemon's threads and fds do not grow (one flush thread in all). Once the outer
/// is released, the flush thread and its fd are gone and backups work again.
fn hung_syncfs_across_50_freezes() -> String {
    let s = Setup::slow();
    let d = s.start_with_config("[freezer]\nfreeze_deadline_secs = 1\n");
    s.slow_fs().hold().unwrap();
    s.slow_fs().dirty_inner(4 << 20).unwrap();
    let idle = d.fds_and_threads();
    let t = Instant::now();
    s.assert_reply(VssOperation::FREEZE, HvStatus::E_FAIL);
    let first = t.elapsed();
    // The first FREEZE leaves its flush thread (`hv-vss-syncfs`) blocked in the hung
    // syncfs, holding its fd of the inner filesystem's mount point (seen in /proc/PID/fd
    // and /proc/PID/task): one thread and one fd per filesystem whose flush has not
    // returned, as the engine starts no second flush of it meanwhile. Not a leak: both go
    // when the call returns (checked below). So counted from the second FREEZE on, 48 more
    // FREEZEs must add nothing.
    s.assert_reply(VssOperation::FREEZE, HvStatus::E_FAIL);
    let before = d.fds_and_threads();
    let rest = s.repeat_reply(48, VssOperation::FREEZE, HvStatus::E_FAIL);
    let after = d.fds_and_threads();
    // Released before asserting, so that a failure here does not hang the cases after it.
    assert!(s.slow_fs().release().unwrap(), "the outer fs was not held");
    assert_no_growth(before, after);
    let end = Instant::now() + Duration::from_secs(5);
    let mut returned = d.fds_and_threads();
    while (returned.0 > idle.0 || returned.1 > idle.1) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
        returned = d.fds_and_threads();
    }
    assert_no_growth(idle, returned);
    s.backup_works();
    format!(
        "first {}, last 48 in {}; fds/threads {idle:?} idle, {before:?} -> {after:?} over 48 FREEZEs, {returned:?} once the syncfs returned",
        ms(first),
        ms(rest)
    )
}

/// 10,000 FREEZE-while-frozen requests: each answered S_OK once, the FREEZE-while-frozen
/// notice logged at a bounded rate, the stored report bounded, no fd or thread growth; the
/// THAW then thaws and the next backup works. The per-request lines ("host request",
/// "answered") are rate-limited while frozen, so the held log ring does not overflow.
fn ten_thousand_freezes_while_frozen() -> String {
    let s = Setup::new(1);
    let d = s.start(&[]);
    s.backup_works();
    let before = d.fds_and_threads();
    let probes = s.freeze_held();
    let took = s.repeat_reply(10_000, VssOperation::FREEZE, HvStatus::S_OK);
    s.assert_reply(VssOperation::THAW, HvStatus::S_OK);
    thawed_within(&probes, Instant::now(), Duration::from_secs(5));
    assert!(d.wait_log("transaction report", Duration::from_secs(5)));
    let log = d.log();
    let lines = log.matches("FREEZE while frozen").count();
    assert!(lines <= 3, "{lines} FREEZE-while-frozen lines");
    // The per-request lines are rate-limited while frozen, so the held ring keeps every
    // line that matters (nothing dropped from it).
    let ring_overflowed = log.contains("were dropped");
    assert!(
        !ring_overflowed,
        "the held log ring overflowed; most frequent lines: {:?}",
        most_frequent_lines(&log)
    );
    let answered = log.matches("answered").count();
    assert!(
        answered < 100,
        "{answered} answered lines for 10,000 requests"
    );
    let history = std::fs::read_to_string(s.state.path().join("history.jsonl")).unwrap();
    let longest = history.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 64 * 1024, "a report line of {longest} bytes");
    let after = d.fds_and_threads();
    assert_no_growth(before, after);
    s.backup_works();
    format!(
        "10,000 answered in {}; {lines} notice line(s); {answered} answered line(s); report line {longest} bytes; held ring overflowed: {ring_overflowed}",
        ms(took)
    )
}

/// SIGKILL during the check (HOT_BACKUP in flight: a client holds its check ack): nothing
/// was frozen and nothing is, the host gets one answer that is not S_OK, the next start
/// serves the next backup and owes the client nothing.
fn sigkill_during_the_check() -> String {
    let s = Setup::new(1);
    let d = s.start(&[]);
    let mut app = app_client(&s, "db");
    let (answer, _) =
        sigkill_while_an_app_holds(&s, &d, &mut app, VssOperation::HOT_BACKUP, EventKind::Check);
    let took = failed_and_nothing_frozen(&s, &answer);
    assert!(!s.journal().exists(), "a check lists nothing");
    drop(d);
    let _d = s.start(&[]);
    let mut app = app_client(&s, "db");
    backup_works_with(&s, &mut app);
    assert_eq!(
        app.next(BLOCKED),
        Err(Silence::Timeout),
        "a check is owed no abort"
    );
    format!("host: {answer:?}; writable {}", ms(took))
}

/// SIGKILL during the application freeze (a client told to freeze holds its ack, so no
/// filesystem is frozen yet): nothing is frozen, the host gets one answer that is not
/// S_OK, and the client, reconnecting under its name to the next start, gets exactly one
/// abort for that transaction; the next backup works.
fn sigkill_during_an_app_freeze() -> String {
    let s = Setup::new(1);
    let d = s.start(&[]);
    let mut app = app_client(&s, "db");
    std::thread::scope(|scope| {
        let check = scope.spawn(|| s.request(VssOperation::HOT_BACKUP));
        let txn = app.expect_event_within(EventKind::Check, READY).0;
        app.ack(txn, true);
        assert_eq!(check.join().unwrap(), HostOutcome::Replied(HvStatus::S_OK));
    });
    let (answer, txn) =
        sigkill_while_an_app_holds(&s, &d, &mut app, VssOperation::FREEZE, EventKind::Freeze);
    let took = failed_and_nothing_frozen(&s, &answer);
    assert_eq!(
        app.next(READY),
        Err(Silence::Closed),
        "the daemon is gone: the connection ends"
    );
    drop(app);
    drop(d);
    let _d = s.start(&[]);
    let mut app = app_client(&s, "db");
    match app.next(READY) {
        Ok(DaemonMessage::Abort { txn: t, .. }) => assert_eq!(t, txn),
        other => panic!("expected the owed abort, got {other:?}"),
    }
    assert_eq!(
        app.next(BLOCKED),
        Err(Silence::Timeout),
        "a second message after the abort"
    );
    drop(app);
    let mut app = app_client(&s, "db");
    assert_eq!(
        app.next(BLOCKED),
        Err(Silence::Timeout),
        "the abort came again"
    );
    backup_works_with(&s, &mut app);
    format!(
        "host: {answer:?}; writable {}; one abort after the restart",
        ms(took)
    )
}

/// SIGKILL during the thaw (the filesystems are thawed, a client holds its thaw ack):
/// nothing stays frozen, the host gets one answer, and the next start serves the next
/// backup.
fn sigkill_during_the_thaw() -> String {
    let s = Setup::new(2);
    let d = s.start(&[]);
    let mut app = app_client(&s, "db");
    let probes = std::thread::scope(|scope| {
        let freeze = scope.spawn(|| s.freeze_held());
        let txn = app.expect_event_within(EventKind::Freeze, READY).0;
        app.ack(txn, true);
        freeze.join().unwrap()
    });
    let t = Instant::now();
    let (answer, _) =
        sigkill_while_an_app_holds(&s, &d, &mut app, VssOperation::THAW, EventKind::Thaw);
    let took = thawed_within(&probes, t, Duration::from_secs(2));
    assert!(
        matches!(answer, HostOutcome::Replied(_) | HostOutcome::Failed(_)),
        "{answer:?}"
    );
    let end = Instant::now() + Duration::from_secs(2);
    while s.journal().exists() {
        assert!(Instant::now() < end, "still listed after the thaw");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(app);
    drop(d);
    let _d = s.start(&[]);
    s.backup_works();
    format!("host: {answer:?}; thawed {}", ms(took))
}

/// 10,000 HOT_BACKUPs while frozen (each refused E_FAIL): each answered once, the refusal
/// line logged at a bounded rate so the held log ring does not overflow, no report stored
/// per refusal; the THAW thaws, no fd or thread growth, the next backup works.
fn ten_thousand_checks_while_frozen() -> String {
    let s = Setup::new(1);
    let d = s.start(&[]);
    s.backup_works();
    let entries = || {
        std::fs::read_to_string(s.state.path().join("history.jsonl"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert!(d.wait_log("transaction report", Duration::from_secs(5)));
    let stored_before = entries();
    let before = d.fds_and_threads();
    let probes = s.freeze_held();
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..10_000 {
        *statuses
            .entry(format!("{:?}", s.request(VssOperation::HOT_BACKUP)))
            .or_default() += 1;
    }
    s.assert_reply(VssOperation::THAW, HvStatus::S_OK);
    thawed_within(&probes, Instant::now(), Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    let stored = entries() - stored_before;
    let log = d.log();
    assert!(
        !log.contains("were dropped"),
        "the held log ring overflowed; most frequent lines: {:?}",
        most_frequent_lines(&log)
    );
    assert!(stored <= 2, "{stored} reports stored for one backup");
    let refusals = log.matches("request refused").count();
    assert!(refusals <= 3, "{refusals} refusal lines");
    let after = d.fds_and_threads();
    assert_no_growth(before, after);
    s.backup_works();
    format!(
        "answers {statuses:?}; {refusals} refusal line(s); {stored} report(s) stored; fds/threads {before:?} -> {after:?}"
    )
}

/// Start-up recovery meets a FITHAW that blocks (the journal of a killed instance lists a
/// filesystem whose FIFREEZE, started by someone else, is still blocked): the other listed
/// filesystem is thawed at once, start-up gives up with its error (exit 6) instead of
/// hanging, and once the FIFREEZE has returned the next start recovers and serves the next
/// backup.
fn startup_recovery_with_a_fithaw_that_blocks() -> String {
    let mut s = Setup::slow();
    s.fs.push(common::ext4());
    // A freezer pid that cannot be running (above any pid_max).
    const GONE: i32 = i32::MAX - 1;
    let entry = |fs: &LoopFs| hv_vss_freezer::JournalEntry {
        path: fs.mount_point().to_path_buf(),
        dev: fs.dev().unwrap(),
        fs_type: "ext4".into(),
        pid: GONE,
    };
    hv_vss_freezer::Journal {
        version: 1,
        pid: GONE,
        created_unix_ms: 1,
        filesystems: vec![entry(&s.fs[0]), entry(&s.slow_fs().inner)],
        rcu_expedited: None,
    }
    .write(s.state.path())
    .unwrap();
    freeze_from_other_process(s.fs[0].mount_point()).unwrap();
    let probe = s.fs[0].write_probe();
    s.slow_fs().hold().unwrap();
    let mut blocked_freeze = std::process::Command::new("fsfreeze")
        .arg("-f")
        .arg(s.slow_fs().inner.mount_point())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let args = s.args(&s.own_mounts(), &[]);
    let refs: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let t = Instant::now();
    let mut d = Daemon::start(&refs);
    let thawed = thawed_within(&[probe], t, Duration::from_secs(8));
    let gave_up = d.wait_log("could not be fully thawed", Duration::from_secs(20));
    let ended = t.elapsed();
    let log = d.log();
    // The process itself ends only once the FITHAW left to its thread returns: a thread in
    // uninterruptible sleep holds the exit (kernel behaviour).
    assert!(s.slow_fs().release().unwrap(), "the outer fs was not held");
    assert!(blocked_freeze.wait().unwrap().success());
    assert!(gave_up, "start-up hung in recovery:\n{log}");
    assert!(log.contains("timed_out"), "{log}");
    let status = d
        .wait_exit(Duration::from_secs(10))
        .expect("exits once it returned");
    assert_eq!(status.code(), Some(6), "{}", d.log());
    drop(d);
    let _d = s.start(&[]);
    s.backup_works();
    format!(
        "the other fs thawed {}; gave up (exit 6) after {}; next start recovered and served",
        ms(thawed),
        ms(ended)
    )
}

// ---- host faults over UIO -------------------------------------------------------------

/// The real daemon in UIO mode (`--uio`) against the simulated host in this process, on
/// one loop filesystem: the same hand-over as `tests/uio.rs`.
struct Uio {
    fs: LoopFs,
    state: tempfile::TempDir,
    _dir: tempfile::TempDir,
    listener: HandoverListener,
    daemon: Daemon,
}

impl Uio {
    fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vss.sock");
        let listener = HandoverListener::bind(&path).unwrap();
        let fs = common::ext4();
        let state = common::state_dir();
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("--uio"),
            path.as_os_str(),
            OsStr::new("--state-dir"),
            state.path().as_os_str(),
            OsStr::new("--mount"),
            fs.mount_point().as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        let daemon = Daemon::start(&args);
        Self {
            fs,
            state,
            _dir: dir,
            listener,
            daemon,
        }
    }

    /// Waits for the daemon to connect, hands it a ring pair and negotiates.
    fn channel(&self) -> (HostSimulator, std::os::fd::OwnedFd) {
        let conn = self
            .listener
            .accept(READY)
            .unwrap()
            .unwrap_or_else(|| panic!("the daemon never connected:\n{}", self.daemon.log()));
        let rings = ShmRings::create(256 * 1024).unwrap();
        rings.send_over(&conn).unwrap();
        let mut sim = HostSimulator::new(
            rings,
            HostConfig::default()
                .with_reply_timeout(Duration::from_secs(20))
                .with_mask_model(InterruptMaskModel::UserspaceOwned),
        )
        .unwrap();
        sim.negotiate().unwrap();
        (sim, conn)
    }

    /// HOT_BACKUP and FREEZE answered S_OK, and a write really blocks.
    fn freeze(&self, sim: &mut HostSimulator) -> WriteProbe {
        assert!(sim.hot_backup().unwrap().is_ok());
        assert!(sim.freeze().unwrap().is_ok());
        let probe = self.fs.write_probe();
        assert!(!probe.wait_ok(BLOCKED), "FREEZE over UIO must freeze");
        probe
    }

    fn journal_gone_within(&self, bound: Duration) {
        let end = Instant::now() + bound;
        while self.state.path().join("freeze-journal.json").exists() {
            assert!(Instant::now() < end, "still listed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A UIO case: the daemon started with `extra`, a channel negotiated and a backup done;
/// then `body` (which may replace the channel); then the next backup works and the
/// daemon's fds and threads have not grown. What `body` measured, with the counts.
fn uio_case(
    extra: &[&str],
    body: impl FnOnce(&Uio, &mut (HostSimulator, std::os::fd::OwnedFd)) -> String,
) -> String {
    let u = Uio::start(extra);
    let mut channel = u.channel();
    uio_backup_works(&mut channel.0, &u.fs);
    let before = u.daemon.fds_and_threads();
    let measured = body(&u, &mut channel);
    uio_backup_works(&mut channel.0, &u.fs);
    let after = u.daemon.fds_and_threads();
    assert_no_growth(before, after);
    format!("{measured}; fds/threads {before:?} -> {after:?}")
}

/// A whole backup on `sim` works and leaves the filesystem writable.
fn uio_backup_works(sim: &mut HostSimulator, fs: &LoopFs) {
    let cycle = sim.backup_cycle(Duration::from_millis(5));
    assert!(cycle.all_ok, "{cycle:?}");
    assert!(fs.writable_within(Duration::from_secs(5)));
}

/// Posts as a host does when the ring to the guest is full: waits (bounded) for the guest
/// to read and make room. 400 packets sent back to back can outrun a daemon on a loaded
/// machine; that is not the fault under test.
fn post_when_room(
    mut post: impl FnMut() -> Result<hv_vss_sim::host::Ticket, hv_vss_sim::host::SimError>,
) -> hv_vss_sim::host::Ticket {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match post() {
            Err(e) if e.is_ring_full() && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other.unwrap(),
        }
    }
}

/// Garbage and truncated packets while frozen: none is answered (R10), the freeze is kept,
/// the THAW behind them thaws, no fd or thread growth, the next backup works.
fn uio_garbage_and_truncated_packets() -> String {
    uio_case(&[], |u, (sim, _)| {
        let probe = u.freeze(sim);
        let mut bad = Vec::new();
        for i in 0..200u64 {
            bad.push(post_when_room(|| {
                sim.post_garbage(1 + (i as usize * 37) % 4096, i)
            }));
            bad.push(post_when_room(|| {
                sim.post_truncated_vss(VssOperation::THAW, 28 + (i as usize % 5))
            }));
        }
        assert!(!probe.wait_ok(BLOCKED), "bad input thawed");
        let thaw = sim.post_vss(VssOperation::THAW, 0, &[]).unwrap();
        assert!(sim.await_vss(thaw).unwrap().is_ok());
        let t = Instant::now();
        let took = thawed_within(&[probe], t, Duration::from_secs(5));
        for (i, ticket) in bad.into_iter().enumerate() {
            let window = if i == 0 { BLOCKED } else { Duration::ZERO };
            if let Err(e) = sim.expect_no_reply(ticket, window) {
                panic!("bad packet {i} was answered: {e}");
            }
        }
        assert!(sim.unmatched_replies().is_empty());
        u.journal_gone_within(Duration::from_secs(2));
        assert!(sim.bu_complete().unwrap().is_ok());
        format!(
            "400 bad packets unanswered, freeze kept; THAW thawed in {}",
            ms(took)
        )
    })
}

/// A corrupted ring index (and a bad descriptor) while frozen: the daemon gives up the
/// channel, thaws at once, and comes back for a new one that serves the next backup; its
/// fds and threads do not grow over four such faults.
fn uio_corrupted_ring_indices() -> String {
    uio_case(&[], |u, channel| {
        let mut worst = Duration::ZERO;
        for how in [
            RingCorruption::WriteIndexPastEnd,
            RingCorruption::WriteIndexUnaligned,
            RingCorruption::DescriptorOffset,
            RingCorruption::LengthPastWriteIndex,
        ] {
            let probe = u.freeze(&mut channel.0);
            channel.0.corrupt_ring(how).unwrap();
            let t = Instant::now();
            worst = worst.max(thawed_within(&[probe], t, Duration::from_secs(5)));
            u.journal_gone_within(Duration::from_secs(2));
            *channel = u.channel();
            uio_backup_works(&mut channel.0, &u.fs);
        }
        format!(
            "4 corruptions: thawed within {}, new channel each",
            ms(worst)
        )
    })
}

/// Duplicate (same trans_id) and out-of-order requests (THAW before FREEZE, FREEZE without
/// HOT_BACKUP, BU_COMPLETE first, a second THAW): each answered exactly once, nothing stays
/// frozen, no fd or thread growth, the next backup works.
fn uio_duplicate_and_out_of_order_requests() -> String {
    uio_case(&[], |u, (sim, _)| {
        let mut answered = 0;
        for _ in 0..20 {
            for op in [
                VssOperation::HOT_BACKUP,
                VssOperation::FREEZE,
                VssOperation::THAW,
            ] {
                let (a, b) = sim.post_duplicate(op).unwrap();
                sim.await_vss(a).unwrap();
                sim.await_vss(b).unwrap();
                answered += 2;
            }
            for op in [
                VssOperation::THAW,
                VssOperation::BU_COMPLETE,
                VssOperation::FREEZE,
                VssOperation::THAW,
                VssOperation::THAW,
                VssOperation::HOT_BACKUP,
            ] {
                sim.request(op).unwrap();
                answered += 1;
            }
        }
        assert!(sim.unmatched_replies().is_empty(), "an answer too many");
        assert!(
            u.fs.writable_within(Duration::from_secs(5)),
            "frozen after the last THAW"
        );
        u.journal_gone_within(Duration::from_secs(2));
        format!("{answered} requests, one answer each")
    })
}

/// No THAW ever: the auto-thaw (0.5 s here) thaws, the late THAW is answered E_FAIL (R25),
/// no fd or thread growth, the next backup works.
fn uio_no_thaw_ever() -> String {
    uio_case(&["--auto-thaw", "0.5"], |u, (sim, _)| {
        assert!(sim.hot_backup().unwrap().is_ok());
        assert!(sim.freeze().unwrap().is_ok());
        let t = Instant::now();
        let probe = u.fs.write_probe();
        assert!(!probe.wait_ok(Duration::from_millis(200)), "not frozen");
        let took = thawed_within(&[probe], t, Duration::from_secs(3));
        u.journal_gone_within(Duration::from_secs(2));
        assert_eq!(sim.thaw().unwrap().status, HvStatus::E_FAIL);
        format!(
            "auto-thawed {} after the FREEZE answer (auto-thaw 0.5 s); late THAW E_FAIL",
            ms(took)
        )
    })
}

// ---- the suite ------------------------------------------------------------------------

type Case = (&'static str, &'static str, fn() -> String);

const CASES: &[Case] = &[
    (
        "SIGKILL of the daemon while frozen",
        "2 s",
        sigkill_while_frozen,
    ),
    (
        "SIGKILL during the check (an app holds its check ack)",
        "answer; nothing frozen",
        sigkill_during_the_check,
    ),
    (
        "SIGKILL during the application freeze (an app holds its freeze ack)",
        "2 s; one abort after the restart",
        sigkill_during_an_app_freeze,
    ),
    (
        "SIGKILL during the thaw (an app holds its thaw ack)",
        "2 s",
        sigkill_during_the_thaw,
    ),
    (
        "SIGKILL of daemon and guardian together while frozen",
        "next start",
        sigkill_of_daemon_and_guardian,
    ),
    (
        "SIGSTOP of the daemon while frozen (heartbeat)",
        "10 s",
        sigstop_while_frozen,
    ),
    (
        "SIGABRT while frozen, cores on, cwd on the frozen fs",
        "2 s",
        sigabrt_while_frozen,
    ),
    (
        "foreign freeze, on_foreign_freeze = fail",
        "answer",
        foreign_freeze_policy_fail,
    ),
    (
        "foreign freeze, on_foreign_freeze = ignore, then SIGKILL",
        "2 s",
        foreign_freeze_policy_ignore_then_sigkill,
    ),
    (
        "read-only bind mount of a writable fs listed",
        "answer",
        read_only_bind_mount,
    ),
    (
        "state directory deleted while idle",
        "answer",
        state_dir_deleted,
    ),
    ("state directory read-only", "answer", state_dir_read_only),
    (
        "SIGKILL inside a level, FIFREEZE made slow (nested loop fs)",
        "2 s after it returns",
        sigkill_inside_a_slow_fifreeze,
    ),
    (
        "fatal exit (SIGTERM, THAW budget spent) during a slow FIFREEZE",
        "no stderr while frozen; 2 s after it returns",
        fatal_exit_during_a_slow_fifreeze_writes_nothing,
    ),
    (
        "syncfs that never returns, across 50 FREEZEs",
        "E_FAIL each; no fd/thread growth; none left once it returns",
        hung_syncfs_across_50_freezes,
    ),
    (
        "10,000 FREEZE-while-frozen requests",
        "one answer each; bounded notices and report",
        ten_thousand_freezes_while_frozen,
    ),
    (
        "10,000 HOT_BACKUPs while frozen",
        "one answer each; bounded log lines",
        ten_thousand_checks_while_frozen,
    ),
    (
        "start-up recovery with a FITHAW that blocks",
        "the others thawed; start-up gives up, no hang",
        startup_recovery_with_a_fithaw_that_blocks,
    ),
    (
        "UIO: garbage and truncated packets while frozen",
        "no answer, freeze kept; no fd/thread growth",
        uio_garbage_and_truncated_packets,
    ),
    (
        "UIO: corrupted ring indices while frozen",
        "5 s; new channel",
        uio_corrupted_ring_indices,
    ),
    (
        "UIO: duplicate and out-of-order requests",
        "one answer each; no fd/thread growth",
        uio_duplicate_and_out_of_order_requests,
    ),
    ("UIO: no THAW ever", "auto-thaw + 2.5 s", uio_no_thaw_ever),
];

#[test]
fn fault_injection_suite() {
    if hv_vss_testutil::skip_unless_root("fault-injection suite") {
        return;
    }
    with_timeout(SUITE_LIMIT, || {
        // HV_VSS_FAULT_CASE=text runs only the cases whose name contains it (no rows).
        let only = std::env::var("HV_VSS_FAULT_CASE").ok();
        let suite = Suite::new(
            "faults",
            CASES.iter().map(|&(case, bound, _)| (case, bound)),
        );
        let mut failed = Vec::new();
        for &(case, _, run) in CASES {
            if only.as_deref().is_some_and(|o| !case.contains(o)) {
                continue;
            }
            let row = if only.is_some() {
                suite.measure(case, run)
            } else {
                suite.run(case, run)
            };
            eprintln!("{case}: {:?} ({} ms)", row.result, row.ran_ms);
            if let Err(e) = row.result {
                failed.push(format!("{case}: {e}"));
            }
        }
        assert!(failed.is_empty(), "failed cases:\n{}", failed.join("\n"));
    });
}
