//! The fault-injection suite: the real `hv-vssd` (drop-in mode, kernel emulator) on real
//! loop-mounted filesystems made here, killed, stopped and starved at every process
//! boundary. For each case: nothing of ours stays frozen past the case's bound, the host
//! gets exactly one answer per request, the daemon (or its next start) serves the next
//! backup, and where the daemon lives on, its fds and threads do not grow.
//!
//! The suite writes `docs/RELIABILITY.md` (case, bound, measured, result) from its own
//! run, then fails if any case failed. Cases run one after another in one test, so the
//! table is complete and ordered. Root only (skipped otherwise).

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Daemon, LoopFs, kill, with_timeout};
use hv_vss_protocol::{HvStatus, VssOperation};
use hv_vss_sim::kernel::{EmulatorConfig, HostOutcome, KernelEmulator};
use hv_vss_testutil::{SlowFreezeFs, TestMount, WriteProbe, freeze_from_other_process, thaw_path};
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
fn sigkill_inside_a_slow_fifreeze() -> String {
    let s = Setup::slow();
    let d = s.start(&[]);
    let (answer, ()) = s.during_slow_fifreeze(|| {
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
    drop(d);
    let _d = s.start(&[]);
    s.backup_works();
    format!("{} after the FIFREEZE returned; host: {answer:?}", ms(took))
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
/// is released, backups work again.
fn hung_syncfs_across_50_freezes() -> String {
    let s = Setup::slow();
    let d = s.start_with_config("[freezer]\nfreeze_deadline_secs = 1\n");
    s.slow_fs().hold().unwrap();
    s.slow_fs().dirty_inner(4 << 20).unwrap();
    let t = Instant::now();
    s.assert_reply(VssOperation::FREEZE, HvStatus::E_FAIL);
    let first = t.elapsed();
    let before = d.fds_and_threads();
    let rest = s.repeat_reply(49, VssOperation::FREEZE, HvStatus::E_FAIL);
    let after = d.fds_and_threads();
    assert_no_growth(before, after);
    assert!(s.slow_fs().release().unwrap(), "the outer fs was not held");
    std::thread::sleep(Duration::from_millis(500));
    s.backup_works();
    format!(
        "first {}, next 49 in {}; fds/threads {before:?} -> {after:?}",
        ms(first),
        ms(rest)
    )
}

/// 10,000 FREEZE-while-frozen requests: each answered S_OK once, the FREEZE-while-frozen
/// notice logged at a bounded rate, the stored report bounded, no fd or thread growth; the
/// THAW then thaws and the next backup works. (The per-request "answered" line and, with
/// --debug as here, the request lines still fill the held ring: reported, not asserted.)
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
    let ring_overflowed = log.contains("were dropped");
    let history = std::fs::read_to_string(s.state.path().join("history.jsonl")).unwrap();
    let longest = history.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 64 * 1024, "a report line of {longest} bytes");
    let after = d.fds_and_threads();
    assert_no_growth(before, after);
    s.backup_works();
    format!(
        "10,000 answered in {}; {lines} notice line(s); report line {longest} bytes; held ring overflowed: {ring_overflowed}",
        ms(took)
    )
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
        "E_FAIL each; no fd/thread growth",
        hung_syncfs_across_50_freezes,
    ),
    (
        "10,000 FREEZE-while-frozen requests",
        "one answer each; bounded notices and report",
        ten_thousand_freezes_while_frozen,
    ),
];

#[test]
fn fault_injection_suite() {
    if hv_vss_testutil::skip_unless_root("fault-injection suite") {
        return;
    }
    with_timeout(SUITE_LIMIT, || {
        // HV_VSS_FAULT_CASE=text runs only the cases whose name contains it (no doc).
        let only = std::env::var("HV_VSS_FAULT_CASE").ok();
        let mut rows = Vec::new();
        for &(case, bound, run) in CASES {
            if only.as_deref().is_some_and(|o| !case.contains(o)) {
                continue;
            }
            let started = Instant::now();
            let result = std::panic::catch_unwind(run);
            let outcome = match result {
                Ok(measured) => Ok(measured),
                Err(panic) => Err(panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                    .unwrap_or_default()),
            };
            rows.push((case, bound, outcome, started.elapsed()));
        }
        if only.is_none() {
            write_reliability_doc(&rows);
        }
        let failed: Vec<_> = rows
            .iter()
            .filter_map(|(case, _, r, _)| r.as_ref().err().map(|e| format!("{case}: {e}")))
            .collect();
        assert!(failed.is_empty(), "failed cases:\n{}", failed.join("\n"));
    });
}

fn write_reliability_doc(rows: &[(&str, &str, Result<String, String>, Duration)]) {
    let mut text = String::from(
        "# Reliability: the fault-injection suite\n\n\
         Written by `crates/daemon/tests/faults.rs` (`cargo test -p hv-vssd --test faults`, as\n\
         root) from its own run: the real `hv-vssd` in drop-in mode against the kernel\n\
         emulator, on loop-mounted ext4 filesystems made by the suite. *Bound* is what the\n\
         case promises (time from the fault until every write that blocked while frozen has\n\
         completed, or that the host got a clean answer); *measured* is this run.\n\n\
         | case | bound | measured | result |\n|---|---|---|---|\n",
    );
    for (case, bound, result, took) in rows {
        let (measured, verdict) = match result {
            Ok(m) => (m.clone(), "pass".to_string()),
            Err(e) => (
                format!("case ran {} ms", took.as_millis()),
                format!("**FAIL**: {}", e.replace('|', "/").replace('\n', " ")),
            ),
        };
        text.push_str(&format!("| {case} | {bound} | {measured} | {verdict} |\n"));
    }
    text.push_str(concat!(
        "\n## Not in the suite yet\n\n",
        "Cases the issue asks for that this suite does not run yet: SIGKILL during the check ",
        "and during thaw; app freeze (no applications yet); host faults over UIO (covered in ",
        "part by `tests/uio.rs`, not tabled here). A systemd-style stop (SIGTERM, ",
        "TimeoutStopSec, SIGKILL of the main pid as `KillMode=process` does, ExecStopPost, ",
        "runtime directory kept) during a FIFREEZE that does not return runs in ",
        "`tests/faults_guardian.rs`, not tabled here.\n\n",
        "Observed while building the stop case (kernel 6.18): a FITHAW on a filesystem whose ",
        "FIFREEZE is still blocked (its loop image on another frozen filesystem) blocks, and ",
        "the filesystem holding the image was found thawed afterwards. The guardian therefore ",
        "thaws a filesystem at once only when the FIFREEZE thread confirmed it, and one whose ",
        "FIFREEZE is in flight only once the call has returned, whether the daemon exited, ",
        "hung or was stopped (`tests/faults_guardian.rs`: SIGSTOP during a slow FIFREEZE; ",
        "without the confirmation the guardian blocks in that FITHAW and the confirmed ",
        "filesystem stays frozen).\n",
    ));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/RELIABILITY.md");
    std::fs::write(&path, text).unwrap();
}
