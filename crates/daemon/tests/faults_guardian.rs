//! Guardian faults at process boundaries that need a FIFREEZE made slow on purpose (a
//! loop filesystem whose image lives on another loop filesystem the test holds frozen:
//! testutil's `SlowFreezeFs`), with the real `hv-vssd` in drop-in mode against the kernel
//! emulator. Root only (skipped otherwise).

mod common;
mod reliability;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Daemon, LoopFs, kill, with_timeout};
use hv_vss_protocol::{HvStatus, VssOperation};
use hv_vss_sim::kernel::{EmulatorConfig, HostOutcome, KernelEmulator};
use hv_vss_testutil::SlowFreezeFs;
use reliability::Suite;
use rustix::process::Signal;

const READY: Duration = Duration::from_secs(15);

const SIGSTOP_SLOW: &str = "SIGSTOP of the daemon during a slow FIFREEZE (nested loop fs)";
const SYSTEMD_STOP: &str = "stop as systemd does it (SIGTERM, TimeoutStopSec, SIGKILL of the main pid, ExecStopPost) during a slow FIFREEZE";
const HELD_LINES: &str = "fatal exit while frozen: the held log lines";
const BLOCKING_FITHAW: &str =
    "SIGKILL while frozen, one fs's FITHAW blocked (its image on a frozen fs)";

/// These cases' rows of docs/RELIABILITY.md (see `reliability`).
fn suite() -> Suite {
    Suite::new(
        "faults_guardian",
        [
            (
                SIGSTOP_SLOW,
                "confirmed fs 10 s; in-flight fs 2 s after its FIFREEZE returns",
            ),
            (
                SYSTEMD_STOP,
                "nothing frozen or listed after ExecStopPost; next start serves",
            ),
            (
                HELD_LINES,
                "no stderr while frozen; the held lines written after the thaw",
            ),
            (
                BLOCKING_FITHAW,
                "the other fs 2 s; the blocked one once its storage thaws",
            ),
        ],
    )
}
/// FITHAW's ioctl request number, as /proc/PID/syscall shows it.
const FITHAW_ARG: &str = "0xc0045878";
/// How long the guardian waits for its FITHAWs before reporting the late ones (its
/// `THAW_DEADLINE`, recovery's per-filesystem deadline).
const GUARDIAN_THAW_DEADLINE: Duration = hv_vss_freezer::DEFAULT_RECOVER_THAW_DEADLINE;

/// A normal filesystem, a slow one, a state directory, the kernel emulator.
struct Setup {
    fast: LoopFs,
    slow: SlowFreezeFs,
    state: tempfile::TempDir,
    emu: KernelEmulator,
}

impl Setup {
    fn new() -> Self {
        Self {
            fast: common::ext4(),
            slow: SlowFreezeFs::new().unwrap(),
            state: common::state_dir(),
            emu: KernelEmulator::start(EmulatorConfig::default()).unwrap(),
        }
    }

    fn start(&self) -> Daemon {
        self.start_with_config("")
    }

    fn start_with_config(&self, config: &str) -> Daemon {
        let args: Vec<&OsStr> = vec![
            "--device".as_ref(),
            self.emu.socket_path().as_os_str(),
            "--state-dir".as_ref(),
            self.state.path().as_os_str(),
            "--mount".as_ref(),
            self.fast.mount_point().as_os_str(),
            "--mount".as_ref(),
            self.slow.inner.mount_point().as_os_str(),
        ];
        let d = Daemon::start_with_config(&args, config);
        assert!(
            self.emu.wait_ready(READY),
            "daemon never registered:\n{}",
            d.log()
        );
        d
    }

    fn journal(&self) -> PathBuf {
        self.state.path().join("freeze-journal.json")
    }

    /// Holds the slow filesystem, sends FREEZE on another thread, waits until its FIFREEZE
    /// is in flight (the journal lists it before the call), runs `fault`, then returns the
    /// host's one answer and what `fault` returned.
    fn during_slow_fifreeze<T: Send>(&self, fault: impl FnOnce() -> T + Send) -> (HostOutcome, T) {
        self.slow.hold().unwrap();
        std::thread::scope(|scope| {
            let host = scope.spawn(|| self.emu.host_request(VssOperation::FREEZE));
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

    /// Waits (at most 2 s) until the journal is gone.
    fn wait_unlisted(&self, when: &str) {
        let end = Instant::now() + Duration::from_secs(2);
        while self.journal().exists() {
            assert!(Instant::now() < end, "still listed {when}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn backup_works(&self) {
        for op in [VssOperation::FREEZE, VssOperation::THAW] {
            assert_eq!(
                self.emu.host_request(op),
                HostOutcome::Replied(HvStatus::S_OK),
                "{op:?}"
            );
        }
        for f in [&self.fast, &self.slow.inner] {
            assert!(f.writable_within(Duration::from_secs(5)));
        }
    }
}

/// Whether any thread of `pid` is inside a FITHAW call.
fn in_fithaw(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("syscall"))
            .is_ok_and(|line| line.split_whitespace().nth(2) == Some(FITHAW_ARG))
    })
}

/// SIGSTOP of the daemon while one filesystem is frozen (its FIFREEZE confirmed) and
/// another's FIFREEZE is still blocked: once the heartbeat is lost the guardian thaws the
/// confirmed one, but issues no FITHAW under the blocked call (which was seen to hang, and
/// to thaw the filesystem holding the image, on kernel 6.18). Once the call returns (the
/// test releases the outer filesystem) the guardian thaws that one too, although the
/// stopped daemon could not confirm it; on SIGCONT the daemon answers E_FAIL and serves the
/// next backup.
#[test]
fn sigstop_during_a_slow_fifreeze_thaws_the_confirmed_at_once_and_the_rest_once_returned() {
    guardian_case(SIGSTOP_SLOW, || {
        let s = Setup::new();
        let d = s.start();
        let guardian = d.guardian_pid().expect("a guardian");
        let (answer, (fast_thawed, slow_thawed)) = s.during_slow_fifreeze(|| {
            let fast_probe = s.fast.write_probe();
            assert!(
                !fast_probe.wait_ok(Duration::from_millis(300)),
                "the fast filesystem was not frozen"
            );
            let stopped = Instant::now();
            kill(d.pid(), Signal::STOP);
            assert!(
                fast_probe.wait_ok(Duration::from_secs(10)),
                "the confirmed filesystem was not thawed within 10 s of the SIGSTOP"
            );
            let fast_thawed = stopped.elapsed();
            // The guardian stays away from the filesystem whose FIFREEZE is blocked.
            let end = Instant::now() + Duration::from_secs(1);
            while Instant::now() < end {
                assert!(
                    !in_fithaw(guardian),
                    "the guardian called FITHAW under a FIFREEZE still in flight"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                s.slow.release().unwrap(),
                "the outer filesystem, frozen by this test, was thawed by someone else"
            );
            let released = Instant::now();
            assert!(
                s.slow.inner.writable_within(Duration::from_secs(2)),
                "the filesystem whose FIFREEZE returned while the daemon was stopped stayed frozen"
            );
            let slow_thawed = released.elapsed();
            s.wait_unlisted("after the guardian thawed");
            kill(d.pid(), Signal::CONT);
            (fast_thawed, slow_thawed)
        });
        assert_ne!(answer, HostOutcome::Replied(HvStatus::S_OK), "{answer:?}");
        assert!(
            d.wait_log("guardian started", Duration::from_secs(10)),
            "no new guardian:\n{}",
            d.log()
        );
        assert!(s.emu.wait_ready(READY));
        s.backup_works();
        format!(
            "confirmed fs {} after the SIGSTOP; in-flight fs {} after its FIFREEZE returned; host: {answer:?}; served on",
            ms(fast_thawed),
            ms(slow_thawed)
        )
    });
}

/// The `hv-vss` binary (the units' `ExecStopPost=`), built beside `hv-vssd` by
/// `cargo test --workspace` or `cargo build`.
fn hv_vss() -> PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_hv-vssd")).with_file_name("hv-vss");
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build -p hv-vss)",
        path.display()
    );
    path
}

/// The daemon's config for the stop cases: a THAW budget of 2 s and a stop timeout of 7 s
/// (the unit's `TimeoutStopSec=` in these tests).
const SHORT_STOP: &str = "stop_timeout_seconds = 7\n[limits]\nthaw_deadline_seconds = 2\n";

/// A stop the way systemd.kill(5) does it with dist/systemd/hv-vssd.service's settings,
/// while a FIFREEZE does not return: SIGTERM to the main pid; after `TimeoutStopSec` (7 s
/// here, with the daemon's `stop_timeout_seconds = 7` to match) SIGKILL to the main pid
/// only (`KillMode=process`: the guardian is left alone); then `ExecStopPost=hv-vss thaw
/// --recover --wait 20s`; the runtime directory is kept (`RuntimeDirectoryPreserve=yes`).
/// The FIFREEZE returns (the test releases the outer filesystem) while `ExecStopPost` waits
/// for the lingering pid. Then nothing of ours stays frozen (the late FIFREEZE is thawed by
/// whoever owns it by then), nothing is left listed, and the next start of the daemon
/// serves a backup.
#[test]
fn a_systemd_stop_during_a_slow_fifreeze_leaves_nothing_frozen_or_listed() {
    const TIMEOUT_STOP: Duration = Duration::from_secs(7);
    guardian_case(SYSTEMD_STOP, || {
        let hv_vss = hv_vss();
        let s = Setup::new();
        let mut d = s.start_with_config(SHORT_STOP);
        let guardian = d.guardian_pid().expect("a guardian");
        let (answer, (stop_post, stop_post_took)) = s.during_slow_fifreeze(|| {
            // systemctl stop: SIGTERM, TimeoutStopSec, SIGKILL of the main pid only.
            kill(d.pid(), Signal::TERM);
            if d.wait_exit(TIMEOUT_STOP).is_none() {
                kill(d.pid(), Signal::KILL);
            }
            assert!(
                common::process_exists(guardian),
                "the guardian did not survive the stop"
            );
            // ExecStopPost, with the FIFREEZE returning while it waits.
            std::thread::scope(|scope| {
                let post = scope.spawn(|| {
                    let t = Instant::now();
                    let out = std::process::Command::new(&hv_vss)
                        .args(["thaw", "--recover", "--wait", "20s", "--state-dir"])
                        .arg(s.state.path())
                        .output()
                        .unwrap();
                    (out, t.elapsed())
                });
                std::thread::sleep(Duration::from_secs(1));
                assert!(
                    s.slow.release().unwrap(),
                    "the outer filesystem, frozen by this test, was thawed by someone else"
                );
                post.join().unwrap()
            })
        });
        assert_ne!(answer, HostOutcome::Replied(HvStatus::S_OK), "{answer:?}");
        assert!(
            stop_post.status.success(),
            "ExecStopPost failed: {}{}",
            String::from_utf8_lossy(&stop_post.stdout),
            String::from_utf8_lossy(&stop_post.stderr)
        );
        for f in [&s.fast, &s.slow.inner] {
            assert!(
                f.writable_within(Duration::from_secs(2)),
                "{} still frozen after the stop",
                f.mount_point().display()
            );
        }
        s.wait_unlisted("after the stop");
        assert!(
            d.wait_exit(Duration::from_secs(5)).is_some(),
            "the daemon lingers"
        );
        drop(d);
        wait_gone(guardian);
        // systemctl start: the runtime directory was kept.
        let _d = s.start();
        s.backup_works();
        format!(
            "host: {answer:?}; ExecStopPost done in {} (FIFREEZE returned after 1 s of it); nothing frozen or listed; next start served",
            ms(stop_post_took)
        )
    });
}

/// A fatal exit while frozen (SIGTERM while a FIFREEZE does not return, THAW budget 2 s):
/// nothing is written while the call may still freeze, and the lines the daemon held (its
/// fatal error among them), which would die with it, are handed to the guardian, which
/// writes them to the daemon's stderr once it has thawed.
#[test]
fn the_lines_held_at_a_fatal_exit_while_frozen_are_written_after_the_thaw() {
    guardian_case(HELD_LINES, || {
        let s = Setup::new();
        let mut d = s.start_with_config(SHORT_STOP);
        let (answer, (log_while_frozen, released)) = s.during_slow_fifreeze(|| {
            kill(d.pid(), Signal::TERM);
            // The THAW budget (2 s) runs out and the daemon exits with its error.
            std::thread::sleep(Duration::from_secs(5));
            let log = d.log();
            assert!(
                s.slow.release().unwrap(),
                "the outer filesystem, frozen by this test, was thawed by someone else"
            );
            (log, Instant::now())
        });
        assert_eq!(answer, HostOutcome::Replied(HvStatus::E_FAIL));
        assert!(
            !log_while_frozen.contains("fatal error while frozen"),
            "written while a FIFREEZE could still freeze:\n{log_while_frozen}"
        );
        assert!(
            s.slow.inner.writable_within(Duration::from_secs(5)),
            "still frozen after the FIFREEZE returned"
        );
        assert!(
            d.wait_log("fatal error while frozen", Duration::from_secs(5)),
            "the held lines were lost:\n{}",
            d.log()
        );
        let written = released.elapsed();
        let log = d.log();
        let handed = log
            .find("the log lines it held follow")
            .expect("the guardian's header");
        assert!(log[handed..].contains("fatal error while frozen"), "{log}");
        assert!(d.wait_exit(Duration::from_secs(5)).is_some());
        format!(
            "host: {answer:?}; nothing written while frozen; the held lines (the fatal error among them) written within {} of the FIFREEZE returning",
            ms(written)
        )
    });
}

/// SIGKILL while frozen, with one filesystem's FITHAW blocked: after the FREEZE the test
/// freezes the filesystem holding the slow one's image, so that thawing the slow one
/// (ext4 commits its superblock on thaw) blocks until the test thaws it. The guardian
/// thaws the other filesystem at once anyway (each FITHAW bounded on a thread of its own),
/// reports the blocked one and keeps it listed, and thaws it when the test releases the
/// storage: nothing stays frozen or listed. The slow filesystem is the one the guardian
/// comes to first (last armed: the plan orders a level by mount point), so a guardian
/// that thaws one after the other, unbounded, never reaches the other filesystem.
#[test]
fn sigkill_with_a_blocking_fithaw_thaws_the_others_at_once() {
    guardian_case(BLOCKING_FITHAW, || {
        let mut s = Setup::new();
        while s.fast.mount_point() > s.slow.inner.mount_point() {
            s.fast = common::ext4();
        }
        let d = s.start();
        let guardian = d.guardian_pid().expect("a guardian");
        assert_eq!(
            s.emu.host_request(VssOperation::FREEZE),
            HostOutcome::Replied(HvStatus::S_OK)
        );
        let fast_probe = s.fast.write_probe();
        let slow_probe = s.slow.inner.write_probe();
        assert!(
            !fast_probe.wait_ok(Duration::from_millis(300)),
            "not frozen"
        );
        hv_vss_testutil::freeze_path(s.slow.outer.mount_point()).unwrap();
        let killed = Instant::now();
        kill(d.pid(), Signal::KILL);
        let fast_thawed = fast_probe
            .wait_ok(Duration::from_secs(2))
            .then(|| killed.elapsed());
        let guardian_blocked = in_fithaw(guardian);
        let slow_stayed_frozen = !slow_probe.is_done();
        let reported = d.wait_log(
            "FITHAW did not return within its deadline",
            GUARDIAN_THAW_DEADLINE + Duration::from_secs(3),
        );
        // The guardian narrows the journal right after it reports the late FITHAW: give
        // it a moment rather than read the file between the two.
        let want = vec![s.slow.inner.dev().unwrap()];
        let end = Instant::now() + Duration::from_secs(2);
        let mut listed = listed_devs(&s);
        while listed != want && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
            listed = listed_devs(&s);
        }
        // Released before asserting, so that a failure leaves nothing blocked.
        assert!(
            s.slow.release().unwrap(),
            "the outer filesystem, frozen by this test, was thawed by someone else"
        );
        let released = Instant::now();
        let slow_thawed = slow_probe
            .wait_ok(Duration::from_secs(5))
            .then(|| released.elapsed());
        let fast_thawed = fast_thawed.expect(
            "the other filesystem was not thawed within 2 s of the SIGKILL: the guardian hung in the blocked FITHAW",
        );
        assert!(guardian_blocked, "the guardian made no blocked FITHAW");
        assert!(
            slow_stayed_frozen,
            "the slow filesystem thawed under a frozen image"
        );
        assert!(reported, "the late FITHAW was not reported:\n{}", d.log());
        assert_eq!(listed, want, "the journal while the FITHAW blocks");
        let slow_thawed =
            slow_thawed.expect("the slow filesystem stayed frozen after its storage thawed");
        s.wait_unlisted("after the late FITHAW returned");
        wait_gone(guardian);
        assert!(d.log().contains("a late FITHAW returned"), "{}", d.log());
        drop(d);
        let _d = s.start();
        s.backup_works();
        format!(
            "other fs {} after the SIGKILL; the blocked one reported, kept listed, thawed {} after its storage; next start served",
            ms(fast_thawed),
            ms(slow_thawed)
        )
    });
}

/// Runs `body` as the guardian case `case` (root only; under a timeout) and records its
/// row.
fn guardian_case(case: &str, body: impl FnOnce() -> String + Send + 'static) {
    if hv_vss_testutil::skip_unless_root("guardian faults") {
        return;
    }
    suite().run_test(case, || with_timeout(Duration::from_secs(120), body));
}

/// Waits (at most 5 s) until the guardian `pid` has exited.
fn wait_gone(pid: u32) {
    let end = Instant::now() + Duration::from_secs(5);
    while common::process_exists(pid) {
        assert!(Instant::now() < end, "the guardian lingers");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The devices the journal lists now (none without a journal).
fn listed_devs(s: &Setup) -> Vec<hv_vss_freezer::DevNum> {
    hv_vss_freezer::Journal::read(s.state.path())
        .unwrap()
        .map(|j| j.filesystems.iter().map(|e| e.dev).collect())
        .unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}
