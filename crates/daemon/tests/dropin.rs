//! End-to-end: the real `hv-vssd` binary in drop-in mode against the kernel emulator
//! (hv-vss-sim, modelled on Linux's hv_snapshot.c) over the socket form of `--device`, on
//! loop-mounted filesystems made by each test. Frozen means "a write really blocks";
//! thawed means "that write completes".

mod common;

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use common::{Daemon, LoopFs, kill, with_timeout};
use hv_vss_protocol::{HvStatus, VssOperation};
use hv_vss_sim::kernel::{EmulatorConfig, EventKind, FailReason, HostOutcome, KernelEmulator};
use hv_vss_testutil::WriteProbe;
use rustix::process::Signal;

const READY: Duration = Duration::from_secs(15);
const BLOCKED: Duration = Duration::from_millis(400);
const THAWED: Duration = Duration::from_secs(5);
const TEST_LIMIT: Duration = Duration::from_secs(120);

fn emulator() -> KernelEmulator {
    KernelEmulator::start(EmulatorConfig::default()).unwrap()
}

struct Setup {
    fs: Vec<LoopFs>,
    state: tempfile::TempDir,
    emu: KernelEmulator,
}

impl Setup {
    fn new(filesystems: usize) -> Self {
        Self::with_emulator(filesystems, emulator())
    }

    fn with_emulator(filesystems: usize, emu: KernelEmulator) -> Self {
        Self {
            fs: (0..filesystems).map(|_| common::ext4()).collect(),
            state: common::state_dir(),
            emu,
        }
    }

    fn args<'a>(&'a self, extra: &'a [&'a str]) -> Vec<&'a OsStr> {
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("--device"),
            self.emu.socket_path().as_os_str(),
            OsStr::new("--state-dir"),
            self.state.path().as_os_str(),
        ];
        for fs in &self.fs {
            args.push(OsStr::new("--mount"));
            args.push(fs.mount_point().as_os_str());
        }
        args.extend(extra.iter().map(OsStr::new));
        args
    }

    /// Starts the daemon and waits until it is registered.
    fn daemon(&self, extra: &[&str]) -> Daemon {
        let d = Daemon::start(&self.args(extra));
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

    fn assert_ok(&self, op: VssOperation) {
        let outcome = self.request(op);
        assert_eq!(outcome, HostOutcome::Replied(HvStatus::S_OK), "{op:?}");
    }

    /// FREEZE answered S_OK, and a write to every filesystem really blocks; the probes
    /// complete once thawed.
    fn freeze_held(&self) -> Vec<WriteProbe> {
        self.assert_ok(VssOperation::FREEZE);
        let probes: Vec<_> = self.fs.iter().map(LoopFs::write_probe).collect();
        for p in &probes {
            assert!(!p.wait_ok(BLOCKED), "a write went through while frozen");
        }
        probes
    }

    /// A whole FREEZE/THAW works and leaves every filesystem writable.
    fn assert_backup_works(&self) {
        self.assert_ok(VssOperation::FREEZE);
        self.assert_ok(VssOperation::THAW);
        assert!(self.all_writable());
    }

    fn all_writable(&self) -> bool {
        self.fs.iter().all(|f| f.writable_within(THAWED))
    }

    fn journal_exists(&self) -> bool {
        self.state.path().join("freeze-journal.json").exists()
    }

    /// The journal is gone, or goes within `bound` (an abandoned FIFREEZE stays listed
    /// until its thread has returned and been collected).
    fn journal_gone_within(&self, bound: Duration) -> bool {
        let end = std::time::Instant::now() + bound;
        while self.journal_exists() {
            if std::time::Instant::now() > end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    fn registrations(&self) -> usize {
        self.emu
            .events()
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Registered { .. }))
            .count()
    }

    fn wait_registrations(&self, n: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.registrations() >= n && self.emu.wait_ready(Duration::from_millis(50)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn history(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.state.path().join("history.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

#[test]
fn hot_backup_freeze_thaw_really_freeze_and_thaw() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new(2);
        let d = s.daemon(&[]);
        s.assert_ok(VssOperation::HOT_BACKUP);
        assert!(s.all_writable(), "HOT_BACKUP must not freeze");

        let probes = s.freeze_held();
        assert!(s.journal_exists(), "the journal lists the frozen set");
        // R60/R61: nothing reaches stderr while frozen; the FREEZE line is held in memory.
        let frozen_log = d.log();
        assert!(frozen_log.contains("op=Check status=Ok"), "{frozen_log}");
        assert!(!frozen_log.contains("op=Freeze status=Ok"), "{frozen_log}");

        s.assert_ok(VssOperation::THAW);
        for p in &probes {
            assert!(
                p.wait_ok(THAWED),
                "the blocked write did not complete after THAW"
            );
        }
        assert!(s.journal_gone_within(Duration::from_secs(2)));
        assert!(
            d.wait_log("op=Freeze status=Ok", THAWED),
            "held lines are flushed after thaw"
        );

        // The report is stored after the thaw: a check and a backup.
        assert!(d.wait_log("transaction report", THAWED));
        let deadline = Instant::now() + THAWED;
        while s.history().len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let history = s.history();
        assert_eq!(history.len(), 2, "{history:?}");
        assert_eq!(history[0]["report"]["verdict"]["kind"], "check_passed");
        assert_eq!(history[1]["report"]["verdict"]["kind"], "fs_consistent");
        // Drop-in mode never sees BU_COMPLETE (the kernel answers it): stored at once, unknown.
        assert!(history[1]["host_completion"].is_null(), "{history:?}");
        assert_eq!(
            history[1]["freeze"]["filesystems"].as_array().map(Vec::len),
            Some(2)
        );
    });
}

#[test]
fn hundred_cycles_in_a_row() {
    with_timeout(Duration::from_secs(300), || {
        let s = Setup::new(1);
        let _d = s.daemon(&[]);
        for i in 0..100 {
            for op in [
                VssOperation::HOT_BACKUP,
                VssOperation::FREEZE,
                VssOperation::THAW,
            ] {
                let outcome = s.request(op);
                assert_eq!(
                    outcome,
                    HostOutcome::Replied(HvStatus::S_OK),
                    "cycle {i} {op:?}"
                );
            }
        }
        assert!(s.all_writable());
        assert!(s.journal_gone_within(Duration::from_secs(2)));
        assert_eq!(s.registrations(), 1, "no reopen was needed");
    });
}

#[test]
fn unknown_op_gets_e_fail_and_the_daemon_keeps_serving() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new(1);
        let d = s.daemon(&[]);
        for op in [42u8, 0, 7, 200] {
            assert_eq!(
                s.emu.forward_request(VssOperation(op)),
                HostOutcome::Replied(HvStatus::E_FAIL),
                "op {op}"
            );
        }
        s.freeze_held();
        s.assert_ok(VssOperation::THAW);
        assert!(s.all_writable());
        assert_eq!(s.registrations(), 1);
        assert!(d.log().contains("unknown VSS operation answered E_FAIL"));
    });
}

#[test]
fn thaw_without_freeze_is_s_ok_and_second_freeze_stays_frozen() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new(1);
        let _d = s.daemon(&[]);
        s.assert_ok(VssOperation::THAW);
        s.assert_ok(VssOperation::FREEZE);
        s.assert_ok(VssOperation::FREEZE);
        let probe = s.fs[0].write_probe();
        assert!(!probe.wait_ok(BLOCKED), "second FREEZE must keep it frozen");
        s.assert_ok(VssOperation::THAW);
        assert!(probe.wait_ok(THAWED));
        s.assert_ok(VssOperation::THAW);
        assert!(s.all_writable());
    });
}

#[test]
fn wrong_length_message_reopens_and_nothing_stays_frozen() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new(1);
        let _d = s.daemon(&[]);
        // While frozen, a malformed message arrives: thaw, reopen, register again (R13).
        s.freeze_held();
        assert!(s.emu.send_raw(&[5, 0, 0]));
        assert!(
            s.wait_registrations(2, READY),
            "the daemon did not re-register"
        );
        assert!(s.all_writable(), "transport loss must thaw");
        assert!(s.emu.send_raw(&[6; 20]));
        assert!(s.wait_registrations(3, READY));
        s.assert_backup_works();
        assert!(s.journal_gone_within(Duration::from_secs(2)));
    });
}

#[test]
fn hang_up_mid_freeze_thaws_and_re_registers() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new(1);
        let _d = s.daemon(&[]);
        s.emu.hang_up_after_next_forward();
        assert_eq!(
            s.request(VssOperation::FREEZE),
            HostOutcome::Failed(FailReason::DaemonHungUp)
        );
        assert!(s.wait_registrations(2, READY));
        assert!(s.all_writable(), "the freeze in flight must be rolled back");
        assert!(s.journal_gone_within(Duration::from_secs(2)));
        // Hang-up while frozen, too.
        s.freeze_held();
        assert!(s.emu.hang_up());
        assert!(s.wait_registrations(3, READY));
        assert!(s.all_writable());
        s.assert_ok(VssOperation::HOT_BACKUP);
    });
}

#[test]
fn kernel_timeout_and_late_reply_reopen_and_thaw() {
    with_timeout(TEST_LIMIT, || {
        // The kernel gives the daemon 1 ms for FREEZE: it answers E_FAIL itself, thaws
        // nothing, and the daemon's late reply fails.
        let emu = KernelEmulator::start(EmulatorConfig {
            freeze_timeout: Duration::from_millis(1),
            ..EmulatorConfig::default()
        })
        .unwrap();
        let s = Setup::with_emulator(1, emu);
        let _d = s.daemon(&[]);
        assert_eq!(
            s.request(VssOperation::FREEZE),
            HostOutcome::Failed(FailReason::Timeout)
        );
        assert!(s.wait_registrations(2, READY));
        assert!(
            s.all_writable(),
            "our freeze must be undone after the kernel gave up"
        );
        assert!(s.journal_gone_within(Duration::from_secs(2)));
        s.assert_ok(VssOperation::HOT_BACKUP);
    });
}

#[test]
fn hibernation_fake_thaw_thaws_and_re_registers() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new(1);
        let _d = s.daemon(&[]);
        s.freeze_held();
        assert!(s.emu.hibernate());
        assert!(s.all_writable());
        assert!(s.wait_registrations(2, READY));
        s.assert_backup_works();
    });
}

#[test]
fn auto_thaw_thaws_on_time_and_the_late_thaw_gets_e_fail() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new(1);
        let d = s.daemon(&["--auto-thaw", "1"]);
        s.assert_ok(VssOperation::FREEZE);
        let probe = s.fs[0].write_probe();
        assert!(!probe.wait_ok(Duration::from_millis(500)));
        assert!(probe.wait_ok(THAWED), "auto-thaw did not thaw");
        assert_eq!(
            s.request(VssOperation::THAW),
            HostOutcome::Replied(HvStatus::E_FAIL)
        );
        assert!(d.wait_log("AUTO-THAW", THAWED));
        // The next backup works normally.
        s.assert_backup_works();
    });
}

#[test]
fn sigkill_while_frozen_is_thawed_by_the_guardian_within_2s() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new(2);
        let mut d = s.daemon(&[]);
        let probes = s.freeze_held();
        let guardian = d.guardian_pid().expect("a guardian runs");
        d.signal(Signal::KILL);
        let killed = Instant::now();
        for p in &probes {
            let left = Duration::from_secs(2).saturating_sub(killed.elapsed());
            assert!(p.wait_ok(left), "not thawed within 2 s of SIGKILL");
        }
        assert!(d.wait_exit(THAWED).is_some());
        let deadline = Instant::now() + THAWED;
        while common::process_exists(guardian) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !common::process_exists(guardian),
            "the guardian exits after recovery"
        );
        assert!(s.journal_gone_within(Duration::from_secs(2)));
    });
}

#[test]
fn restart_recovers_what_a_killed_instance_left_frozen() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new(1);
        let mut d = s.daemon(&[]);
        let probe = s.freeze_held().remove(0);
        // Stop the daemon so it cannot react, kill its guardian, then the daemon.
        let guardian = d.guardian_pid().expect("a guardian runs");
        d.signal(Signal::STOP);
        kill(guardian, Signal::KILL);
        d.signal(Signal::KILL);
        assert!(d.wait_exit(THAWED).is_some());
        assert!(
            !probe.wait_ok(Duration::from_secs(1)),
            "nobody should have thawed"
        );
        assert!(s.journal_exists());
        drop(d);

        let d2 = s.daemon(&[]);
        assert!(probe.wait_ok(THAWED), "the new instance must thaw at start");
        assert!(s.journal_gone_within(Duration::from_secs(2)));
        assert!(
            d2.log()
                .contains("an earlier instance left filesystems frozen")
        );
        s.assert_backup_works();
    });
}

#[test]
fn sigterm_while_frozen_thaws_and_exits_cleanly() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new(1);
        let mut d = s.daemon(&[]);
        let probe = s.freeze_held().remove(0);
        d.signal(Signal::TERM);
        let status = d.wait_exit(THAWED).expect("the daemon exits after SIGTERM");
        assert_eq!(status.code(), Some(0), "{}", d.log());
        assert!(probe.wait_ok(THAWED));
        assert!(s.journal_gone_within(Duration::from_secs(2)));
        assert!(d.log().contains("stopped: nothing of ours is frozen"));
    });
}

#[test]
fn guardian_death_while_frozen_thaws_and_a_new_guardian_starts() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new(1);
        let d = s.daemon(&[]);
        let probe = s.freeze_held().remove(0);
        let guardian = d.guardian_pid().expect("a guardian runs");
        kill(guardian, Signal::KILL);
        assert!(probe.wait_ok(THAWED), "guardian loss must thaw (R57)");
        assert_eq!(
            s.request(VssOperation::THAW),
            HostOutcome::Replied(HvStatus::E_FAIL),
            "the snapshot may not be consistent"
        );
        let deadline = Instant::now() + READY;
        let mut new_guardian = None;
        while Instant::now() < deadline {
            new_guardian = d.guardian_pid().filter(|g| *g != guardian);
            if new_guardian.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(new_guardian.is_some(), "no new guardian:\n{}", d.log());
        s.assert_backup_works();
    });
}

#[test]
fn systemd_notify_ready_watchdog_and_stopping() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new(1);
        let sock_dir = common::state_dir();
        let sock_path = sock_dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut d = Daemon::start_with_env(
            &s.args(&[]),
            &[
                ("NOTIFY_SOCKET", sock_path.as_os_str()),
                ("WATCHDOG_USEC", OsStr::new("200000")),
            ],
        );
        let mut messages = Vec::new();
        let mut buf = [0u8; 512];
        while messages
            .iter()
            .filter(|m: &&String| m.contains("WATCHDOG=1"))
            .count()
            < 3
        {
            let n = sock.recv(&mut buf).expect("notify message");
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert!(messages[0].contains("READY=1"), "{messages:?}");
        // The kernel emulator sees a registered daemon when READY=1 is sent.
        assert!(s.emu.wait_ready(READY));
        d.signal(Signal::TERM);
        loop {
            let n = sock.recv(&mut buf).expect("STOPPING=1");
            if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
                break;
            }
        }
        assert_eq!(d.wait_exit(THAWED).and_then(|s| s.code()), Some(0));
    });
}

#[test]
fn failed_freeze_answers_e_fail_rolls_back_and_never_thaws_a_foreign_freeze() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new(2);
        let _d = s.daemon(&[]);
        // Someone else froze the second filesystem (R38).
        hv_vss_testutil::freeze_path(s.fs[1].mount_point()).unwrap();
        assert_eq!(
            s.request(VssOperation::FREEZE),
            HostOutcome::Replied(HvStatus::E_FAIL)
        );
        assert!(s.fs[0].writable_within(THAWED), "ours must be rolled back");
        let probe = s.fs[1].write_probe();
        assert!(
            !probe.wait_ok(BLOCKED),
            "a foreign freeze is never thawed by us"
        );
        assert!(s.journal_gone_within(Duration::from_secs(2)));
        assert!(
            hv_vss_testutil::thaw_path(s.fs[1].mount_point()).unwrap(),
            "still frozen by us, the foreign freezer"
        );
        assert!(probe.wait_ok(THAWED));
        // The daemon serves on.
        s.assert_backup_works();
    });
}
