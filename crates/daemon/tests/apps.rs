//! End-to-end: application clients of the real `hv-vssd` (drop-in mode against the kernel
//! emulator) on loop-mounted ext4 made by each test. The clients are plain `UnixStream`s
//! speaking protocol v1 through hv-vss-app-protocol; "frozen" means a write really blocks,
//! "thawed" that it completes.

mod common;

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::app_client::{AppClient as App, Silence};
use common::{Daemon, LoopFs, with_timeout};
use hv_vss_app_protocol::{Ack, ClientMessage, DaemonMessage, EventKind, MAX_LINE, Register};
use hv_vss_protocol::{HvStatus, VssOperation};
use hv_vss_sim::kernel::{EmulatorConfig, HostOutcome, KernelEmulator};
use rustix::process::Signal;

const READY: Duration = Duration::from_secs(15);
const BLOCKED: Duration = Duration::from_millis(400);
const THAWED: Duration = Duration::from_secs(5);
/// How long a client waits for a line the daemon must send.
const ANSWER: Duration = Duration::from_secs(10);
/// How long a client listens for a line the daemon must not send.
const QUIET: Duration = Duration::from_millis(500);
const TEST_LIMIT: Duration = Duration::from_secs(120);

const OK: HostOutcome = HostOutcome::Replied(HvStatus::S_OK);
const FAIL: HostOutcome = HostOutcome::Replied(HvStatus::E_FAIL);

// ---- the test client ----------------------------------------------------------------------

/// What only this suite asks of a client.
impl App {
    fn recv(&mut self) -> DaemonMessage {
        self.next(ANSWER).expect("a message from the daemon")
    }

    /// The next message must be the event `kind`: its `(txn, deadline_ms)`.
    fn expect_event(&mut self, kind: EventKind) -> (u64, u64) {
        self.expect_event_within(kind, ANSWER)
    }

    /// The next message must be an abort: its `(txn, reason)`.
    fn expect_abort(&mut self) -> (u64, String) {
        match self.recv() {
            DaemonMessage::Abort { txn, reason } => (txn, reason),
            other => panic!("expected abort, got {other:?}"),
        }
    }

    /// The next message must be `error`, then the daemon closes the connection: the error.
    fn expect_error_and_close(&mut self) -> String {
        let message = match self.recv() {
            DaemonMessage::Error { message } => message,
            other => panic!("expected error, got {other:?}"),
        };
        assert_eq!(self.next(ANSWER), Err(Silence::Closed), "after {message:?}");
        message
    }

    /// Nothing arrives for a while (and the connection stays open).
    fn assert_quiet(&mut self) {
        assert_eq!(self.next(QUIET), Err(Silence::Timeout));
    }
}

// ---- the daemon, the host and the filesystem ------------------------------------------------

struct Setup {
    fs: LoopFs,
    state: tempfile::TempDir,
    emu: KernelEmulator,
}

impl Setup {
    fn new() -> Self {
        Self {
            fs: common::ext4(),
            state: common::state_dir(),
            emu: KernelEmulator::start(EmulatorConfig::default()).unwrap(),
        }
    }

    fn socket(&self) -> PathBuf {
        self.state.path().join("app.sock")
    }

    /// Starts the daemon with `config` (and `extra` flags) and waits until it serves.
    fn daemon_with(&self, config: &str, extra: &[&OsStr]) -> Daemon {
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("--device"),
            self.emu.socket_path().as_os_str(),
            OsStr::new("--state-dir"),
            self.state.path().as_os_str(),
            OsStr::new("--mount"),
            self.fs.mount_point().as_os_str(),
        ];
        args.extend_from_slice(extra);
        let d = Daemon::start_with_config(&args, config);
        assert!(
            self.emu.wait_ready(READY),
            "daemon never registered:\n{}",
            d.log()
        );
        d
    }

    fn daemon(&self) -> Daemon {
        self.daemon_with("", &[])
    }

    fn request(&self, op: VssOperation) -> HostOutcome {
        self.emu.host_request(op)
    }

    fn writable(&self) -> bool {
        self.fs.writable_within(THAWED)
    }

    fn journal_exists(&self) -> bool {
        self.state.path().join("app-journal.json").exists()
    }

    /// The verdicts of the stored reports, once `n` are there.
    fn verdicts(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + THAWED;
        loop {
            let text = std::fs::read_to_string(self.state.path().join("history.jsonl"))
                .unwrap_or_default();
            let v: Vec<String> = text
                .lines()
                .map(|l| {
                    let j: serde_json::Value = serde_json::from_str(l).unwrap();
                    j["report"]["verdict"]["kind"].as_str().unwrap().to_owned()
                })
                .collect();
            if v.len() >= n || Instant::now() >= deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs `op` as the host on another thread while `client` plays its part; returns what
/// the host got.
fn host_while(s: &Setup, op: VssOperation, client: impl FnOnce()) -> HostOutcome {
    std::thread::scope(|sc| {
        let host = sc.spawn(|| s.request(op));
        client();
        host.join().unwrap()
    })
}

/// The host sends `op`; `app` gets the event `kind` and acks it `ok`: what the host got.
fn acked(s: &Setup, op: VssOperation, app: &mut App, kind: EventKind, ok: bool) -> HostOutcome {
    host_while(s, op, || {
        let (t, _) = app.expect_event(kind);
        app.ack(t, ok);
    })
}

// ---- the happy path -------------------------------------------------------------------------

#[test]
fn a_client_flushes_before_the_freeze_holds_through_it_and_resumes_after_the_thaw() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new();
        let _d = s.daemon();
        let mut app = App::register(&s.socket(), "db", None, Some(20_000));

        let got = host_while(&s, VssOperation::HOT_BACKUP, || {
            let (txn, deadline_ms) = app.expect_event(EventKind::Check);
            assert!(deadline_ms > 0 && deadline_ms <= 20_000, "{deadline_ms}");
            app.ack(txn, true);
        });
        assert_eq!(got, OK);
        assert!(s.writable(), "HOT_BACKUP must not freeze");

        let mut freeze_txn = 0;
        let got = std::thread::scope(|sc| {
            let host = sc.spawn(|| s.request(VssOperation::FREEZE));
            let (txn, deadline_ms) = app.expect_event(EventKind::Freeze);
            freeze_txn = txn;
            assert!(deadline_ms > 0 && deadline_ms <= 20_000, "{deadline_ms}");
            // Told to freeze, the client can still flush: nothing is frozen yet, and the
            // host waits for this client.
            assert!(s.writable(), "frozen before the client acked");
            assert!(
                !host.is_finished(),
                "FREEZE answered before the client acked"
            );
            app.ack(txn, true);
            host.join().unwrap()
        });
        assert_eq!(got, OK);
        // Right after the ack the filesystem is frozen: a write blocks.
        let blocked = s.fs.write_probe();
        assert!(
            !blocked.wait_ok(BLOCKED),
            "a write went through while frozen"
        );
        assert!(s.journal_exists(), "the client told to freeze is journaled");

        let got = host_while(&s, VssOperation::THAW, || {
            let (txn, _) = app.expect_event(EventKind::Thaw);
            assert_eq!(txn, freeze_txn, "thaw names the freeze's txn");
            // Told to thaw, the client writes at once and it succeeds.
            assert!(s.writable(), "still frozen when the client was told thaw");
            app.ack(txn, true);
        });
        assert_eq!(got, OK);
        assert!(blocked.wait_ok(THAWED));
        app.assert_quiet();
        assert!(!s.journal_exists(), "nothing is owed after the thaw");
        assert_eq!(s.verdicts(2), ["check_passed", "app_consistent"]);
    });
}

// ---- vetoes, deadlines, departures ----------------------------------------------------------

#[test]
fn a_veto_at_check_fails_the_hot_backup_and_later_tiers_are_not_asked() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new();
        let _d = s.daemon();
        let mut first = App::register(&s.socket(), "first", Some(10), None);
        let mut later = App::register(&s.socket(), "later", Some(200), None);
        let got = host_while(&s, VssOperation::HOT_BACKUP, || {
            let (txn, _) = first.expect_event(EventKind::Check);
            first.ack(txn, false);
        });
        assert_eq!(got, FAIL);
        later.assert_quiet();
        assert!(s.writable());
        assert_eq!(s.verdicts(1), ["failed"]);
    });
}

#[test]
fn a_veto_at_freeze_fails_it_freezes_nothing_and_aborts_everyone_told_to_freeze() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new();
        let _d = s.daemon();
        let mut holder = App::register(&s.socket(), "holder", Some(10), None);
        let mut vetoer = App::register(&s.socket(), "vetoer", Some(20), None);
        let mut never = App::register(&s.socket(), "never", Some(30), None);
        let mut txn = 0;
        let got = host_while(&s, VssOperation::FREEZE, || {
            let (t, _) = holder.expect_event(EventKind::Freeze);
            txn = t;
            holder.ack(t, true);
            let (t, _) = vetoer.expect_event(EventKind::Freeze);
            vetoer.ack(t, false);
        });
        assert_eq!(got, FAIL);
        for app in [&mut holder, &mut vetoer] {
            let (t, reason) = app.expect_abort();
            assert_eq!(t, txn);
            assert!(reason.contains("vetoer"), "{reason}");
            app.assert_quiet();
        }
        // Never told to freeze, never aborted.
        never.assert_quiet();
        assert!(s.writable(), "a vetoed freeze froze something");
        assert!(!s.journal_exists());
    });
}

#[test]
fn a_missed_deadline_fails_the_freeze_and_the_late_ack_is_rejected() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new();
        let _d = s.daemon();
        let mut slow = App::register(&s.socket(), "slow", None, Some(300));
        let mut txn = 0;
        let started = Instant::now();
        let got = host_while(&s, VssOperation::FREEZE, || {
            let (t, deadline_ms) = slow.expect_event(EventKind::Freeze);
            assert!(deadline_ms <= 300, "{deadline_ms}");
            txn = t;
        });
        assert_eq!(got, FAIL);
        assert!(started.elapsed() < THAWED, "{:?}", started.elapsed());
        let (t, reason) = slow.expect_abort();
        assert_eq!(t, txn);
        assert!(reason.contains("deadline"), "{reason}");
        slow.ack(txn, true);
        match slow.recv() {
            DaemonMessage::AckRejected { txn: t, reason } => {
                assert_eq!(t, txn);
                assert!(reason.starts_with("late"), "{reason}");
            }
            other => panic!("expected ack_rejected, got {other:?}"),
        }
        assert!(s.writable());
        // The daemon goes on serving the same client.
        let got = acked(&s, VssOperation::FREEZE, &mut slow, EventKind::Freeze, true);
        assert_eq!(got, OK);
        let got = acked(&s, VssOperation::THAW, &mut slow, EventKind::Thaw, true);
        assert_eq!(got, OK);
        assert!(s.writable());
    });
}

/// `timeout_ms` is the client's own bound per event, capped by the host request's deadline:
/// a client that asks for an hour is told, and waited for, only as long as the HOT_BACKUP
/// and the FREEZE may take; one that asks for less is given up on after its own bound.
#[test]
fn timeout_ms_is_the_clients_own_bound_capped_by_the_host_deadline() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new();
        let d = s.daemon_with(
            "[limits]\ncheck_deadline_seconds = 2\nfreeze_deadline_seconds = 3\n[freezer]\nfreeze_deadline_secs = 1\n",
            &[],
        );
        let hour = 3_600_000;
        let mut patient = App::register(&s.socket(), "patient", None, Some(hour));
        for (op, kind, host_ms) in [
            (VssOperation::HOT_BACKUP, EventKind::Check, 2_000),
            (VssOperation::FREEZE, EventKind::Freeze, 3_000),
        ] {
            let started = Instant::now();
            let got = host_while(&s, op, || {
                let (_, deadline_ms) = patient.expect_event(kind);
                assert!(
                    deadline_ms > 0 && deadline_ms <= host_ms,
                    "{kind:?}: deadline_ms {deadline_ms}, host deadline {host_ms} ms"
                );
            });
            // Never acked: failed when the host's deadline ran out, not after the hour.
            assert_eq!(got, FAIL, "{kind:?}\n{}", d.log());
            assert!(
                started.elapsed() < THAWED,
                "{kind:?}: {:?}",
                started.elapsed()
            );
        }
        let (_, reason) = patient.expect_abort();
        assert!(reason.contains("deadline"), "{reason}");
        assert!(s.writable());
        drop(patient);

        // A bound below the host's is the client's own.
        let mut quick = App::register(&s.socket(), "quick", None, Some(200));
        let got = host_while(&s, VssOperation::HOT_BACKUP, || {
            let (txn, deadline_ms) = quick.expect_event(EventKind::Check);
            assert!(deadline_ms > 0 && deadline_ms <= 200, "{deadline_ms}");
            // Acked after its own bound (and well within the host's): too late.
            std::thread::sleep(Duration::from_millis(600));
            quick.ack(txn, true);
        });
        assert_eq!(got, FAIL);
        match quick.recv() {
            DaemonMessage::AckRejected { reason, .. } => {
                assert!(reason.starts_with("late"), "{reason}")
            }
            other => panic!("expected ack_rejected, got {other:?}"),
        }
    });
}

/// A client that stops reading while the filesystems are frozen, and floods the daemon
/// with lines whose answers it never reads (its socket buffer full, the daemon's outbox for
/// it growing), neither delays the THAW past its deadline nor makes the daemon write
/// anywhere while frozen: the filesystems thaw at once, the other client is told, the THAW
/// is answered within its deadline, and the daemon's stderr stays untouched until then.
#[test]
fn a_stuck_client_never_delays_the_thaw_past_its_deadline_nor_makes_the_daemon_write_while_frozen()
{
    with_timeout(TEST_LIMIT, || {
        const THAW_DEADLINE: Duration = Duration::from_secs(3);
        let s = Setup::new();
        let d = s.daemon_with("[limits]\nthaw_deadline_seconds = 3\n", &[]);
        let mut stuck = App::register(&s.socket(), "stuck", Some(10), Some(3_600_000));
        let mut healthy = App::register(&s.socket(), "healthy", Some(20), None);
        let got = host_while(&s, VssOperation::FREEZE, || {
            for app in [&mut stuck, &mut healthy] {
                let (t, _) = app.expect_event(EventKind::Freeze);
                app.ack(t, true);
            }
        });
        assert_eq!(got, OK);
        assert!(!s.fs.write_probe().wait_ok(BLOCKED), "not frozen");
        let log_when_frozen = d.log();

        // Frozen: the stuck client sends lines the daemon answers (unknown types get an
        // error each) and never reads again, until the daemon's writes to it back up.
        let flood = ClientMessage::Ack(Ack {
            txn: 999_999,
            ok: true,
            message: Some("x".repeat(200)),
        })
        .to_line();
        let mut unknown = br#"{"type":"stuck","pad":""#.to_vec();
        unknown.extend(std::iter::repeat_n(b'x', 200));
        unknown.extend(b"\"}\n");
        for _ in 0..2_000 {
            stuck.send_raw(&flood);
            stuck.send_raw(&unknown);
        }
        std::thread::sleep(QUIET);
        assert_eq!(
            d.log(),
            log_when_frozen,
            "the daemon wrote to stderr while frozen"
        );

        let started = Instant::now();
        let got = host_while(&s, VssOperation::THAW, || {
            // Thawed at once, and the other client is told while the stuck one is waited for.
            assert!(s.writable(), "still frozen after THAW was sent");
            let (t, _) = healthy.expect_event(EventKind::Thaw);
            healthy.ack(t, true);
        });
        let took = started.elapsed();
        assert!(matches!(got, HostOutcome::Replied(_)), "{got:?}");
        assert!(
            took < THAW_DEADLINE + Duration::from_secs(2),
            "THAW answered after {took:?}, past its deadline of {THAW_DEADLINE:?}\n{}",
            d.log()
        );
        assert!(s.writable());
        // Served on: the next backup, the stuck client still failing only itself.
        drop(stuck);
        // Its departure must be seen before the next HOT_BACKUP: a client of the lowest
        // tier that hangs up during a check vetoes that check, as it should.
        let seen = Instant::now() + ANSWER;
        let gone = |log: String| {
            log.lines()
                .any(|l| l.contains("application gone") && l.contains("client=stuck"))
        };
        while !gone(d.log()) {
            assert!(
                Instant::now() < seen,
                "the stuck client's hang-up was never seen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let got = acked(
            &s,
            VssOperation::HOT_BACKUP,
            &mut healthy,
            EventKind::Check,
            true,
        );
        assert_eq!(got, OK);
    });
}

/// The host never sends THAW: the daemon's auto-thaw thaws the filesystems and tells every
/// client told to freeze `abort` (once, never `thaw`); the late THAW fails.
#[test]
fn an_auto_thaw_aborts_every_client_told_to_freeze_once() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new();
        let d = s.daemon_with("", &[OsStr::new("--auto-thaw"), OsStr::new("1")]);
        let mut low = App::register(&s.socket(), "low", Some(10), None);
        let mut high = App::register(&s.socket(), "high", Some(20), None);
        let mut txns = Vec::new();
        let got = host_while(&s, VssOperation::FREEZE, || {
            for app in [&mut low, &mut high] {
                let (t, _) = app.expect_event(EventKind::Freeze);
                txns.push(t);
                app.ack(t, true);
            }
        });
        assert_eq!(got, OK);
        // No THAW: thawed by the daemon, and each client released by an abort.
        for (app, txn) in [(&mut high, txns[1]), (&mut low, txns[0])] {
            let (t, reason) = app.expect_abort();
            assert_eq!(t, txn);
            assert!(reason.contains("auto-thaw"), "{reason}");
        }
        assert!(s.writable(), "not thawed by the auto-thaw\n{}", d.log());
        // The late THAW is told it came too late; nobody hears of it.
        assert_eq!(s.request(VssOperation::THAW), FAIL);
        low.assert_quiet();
        high.assert_quiet();
        assert!(!s.journal_exists(), "nothing is owed after the abort");
    });
}

/// A client that disconnects while it owes its freeze ack vetoes the FREEZE: nothing is
/// frozen, and the client of the tier before, already holding, gets its abort.
#[test]
fn a_client_that_disconnects_before_acking_its_freeze_vetoes_it() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new();
        let _d = s.daemon();
        let mut first = App::register(&s.socket(), "first", Some(10), None);
        let mut leaver = App::register(&s.socket(), "leaver", Some(20), None);
        let mut txn = 0;
        let got = host_while(&s, VssOperation::FREEZE, || {
            let (t, _) = first.expect_event(EventKind::Freeze);
            txn = t;
            first.ack(t, true);
            leaver.expect_event(EventKind::Freeze);
            drop(leaver);
        });
        assert_eq!(got, FAIL);
        assert!(s.writable());
        let (t, _) = first.expect_abort();
        assert_eq!(t, txn);
        first.assert_quiet();
        assert!(!s.journal_exists());
    });
}

#[test]
fn a_client_that_disconnects_while_holding_makes_the_backup_fs_consistent_only() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new();
        let d = s.daemon();
        let mut leaver = App::register(&s.socket(), "leaver", Some(10), None);
        let mut stayer = App::register(&s.socket(), "stayer", Some(20), None);
        let got = host_while(&s, VssOperation::FREEZE, || {
            let (t, _) = leaver.expect_event(EventKind::Freeze);
            leaver.ack(t, true);
            let (t, _) = stayer.expect_event(EventKind::Freeze);
            stayer.ack(t, true);
        });
        assert_eq!(got, OK);
        drop(leaver);
        // Still frozen for the host; the other client is still served.
        assert!(!s.fs.write_probe().wait_ok(BLOCKED));
        let got = acked(&s, VssOperation::THAW, &mut stayer, EventKind::Thaw, true);
        // The hold was lost while frozen: the THAW says the snapshot is not what FREEZE
        // promised.
        assert_eq!(got, FAIL);
        assert!(s.writable());
        assert_eq!(s.verdicts(1), ["fs_consistent"], "{}", d.log());
        assert!(!s.journal_exists());
    });
}

// ---- protocol errors --------------------------------------------------------------------------

/// `bad` is sent by a client in the check stage: it gets `error` and is disconnected, the
/// HOT_BACKUP fails, and the other client (which had not answered yet) is served on.
fn a_protocol_error_in_check_fails_it_and_disconnects_only_that_client(bad: &[u8], want: &str) {
    let s = Setup::new();
    let _d = s.daemon();
    let mut bad_app = App::register(&s.socket(), "bad", Some(10), None);
    let mut good = App::register(&s.socket(), "good", Some(10), None);
    let got = host_while(&s, VssOperation::HOT_BACKUP, || {
        bad_app.expect_event(EventKind::Check);
        good.expect_event(EventKind::Check);
        bad_app.send_raw(bad);
        let message = bad_app.expect_error_and_close();
        assert!(
            message.contains(want),
            "{message:?} should contain {want:?}"
        );
    });
    assert_eq!(got, FAIL);
    let got = acked(
        &s,
        VssOperation::HOT_BACKUP,
        &mut good,
        EventKind::Check,
        true,
    );
    assert_eq!(got, OK);
}

#[test]
fn a_malformed_line_fails_the_stage_and_closes_that_client() {
    with_timeout(TEST_LIMIT, || {
        a_protocol_error_in_check_fails_it_and_disconnects_only_that_client(
            b"{\"type\":\"ack\",\"txn\":\n",
            "not a JSON object",
        );
    });
}

#[test]
fn a_line_that_is_not_utf8_fails_the_stage_and_closes_that_client() {
    with_timeout(TEST_LIMIT, || {
        a_protocol_error_in_check_fails_it_and_disconnects_only_that_client(
            b"{\"type\":\"ack\",\"txn\":1,\"ok\":true,\"message\":\"\xff\xfe\"}\n",
            "not UTF-8",
        );
    });
}

#[test]
fn an_oversize_line_fails_the_stage_and_closes_that_client() {
    with_timeout(TEST_LIMIT, || {
        let mut huge = vec![b' '; MAX_LINE + 100];
        huge.push(b'\n');
        a_protocol_error_in_check_fails_it_and_disconnects_only_that_client(&huge, "longer than");
    });
}

#[test]
fn an_unknown_type_is_answered_with_an_error_and_fails_the_ack_it_owes() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new();
        let _d = s.daemon();
        let mut app = App::register(&s.socket(), "newer", None, None);
        // Idle: an error answer, and the client stays registered.
        app.send_raw(b"{\"type\":\"hello\",\"v\":2}\n");
        match app.recv() {
            DaemonMessage::Error { message } => {
                assert!(message.contains("unknown message type"), "{message}")
            }
            other => panic!("expected error, got {other:?}"),
        }
        // In a stage: the same answer, and the stage fails.
        let got = host_while(&s, VssOperation::HOT_BACKUP, || {
            app.expect_event(EventKind::Check);
            app.send_raw(b"{\"type\":\"hello\"}\n");
            assert!(matches!(app.recv(), DaemonMessage::Error { .. }));
        });
        assert_eq!(got, FAIL);
        // Still connected and served.
        let got = acked(
            &s,
            VssOperation::HOT_BACKUP,
            &mut app,
            EventKind::Check,
            true,
        );
        assert_eq!(got, OK);
    });
}

#[test]
fn a_duplicate_name_is_refused_and_the_first_client_keeps_it() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new();
        let _d = s.daemon();
        let mut first = App::register(&s.socket(), "db", None, None);
        let mut second = App::connect(&s.socket());
        second.send(&ClientMessage::Register(Register {
            name: "db".into(),
            tier: None,
            timeout_ms: None,
        }));
        let message = second.expect_error_and_close();
        assert!(message.contains("already connected"), "{message}");
        let got = acked(
            &s,
            VssOperation::HOT_BACKUP,
            &mut first,
            EventKind::Check,
            true,
        );
        assert_eq!(got, OK);
        // Unique among *live* clients: once the holder is gone, the name is free.
        drop(first);
        let deadline = Instant::now() + ANSWER;
        let mut third = loop {
            let mut app = App::connect(&s.socket());
            app.send(&ClientMessage::Register(Register {
                name: "db".into(),
                tier: None,
                timeout_ms: None,
            }));
            match app.recv() {
                DaemonMessage::Registered { .. } => break app,
                // The daemon may not have seen the first one's close yet.
                other if Instant::now() < deadline => {
                    drop(other);
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => panic!("the name stayed taken: {other:?}"),
            }
        };
        let got = acked(
            &s,
            VssOperation::HOT_BACKUP,
            &mut third,
            EventKind::Check,
            true,
        );
        assert_eq!(got, OK);
    });
}

// ---- limits -----------------------------------------------------------------------------------

#[test]
fn a_client_that_does_not_read_is_dropped_and_the_client_limit_holds() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new();
        let d = s.daemon_with("[apps]\nmax_pending_bytes = 4096\nmax_clients = 3\n", &[]);
        let mut good = App::register(&s.socket(), "good", None, None);
        let mut flooder = App::register(&s.socket(), "flooder", None, None);
        // Acks that match nothing, each answered with ack_rejected, which the flooder never
        // reads: its outbox fills and the daemon drops it instead of waiting.
        let bogus = ClientMessage::Ack(Ack {
            txn: 999,
            ok: true,
            message: None,
        })
        .to_line();
        let flood = std::thread::spawn(move || {
            for sent in 0..1_000_000u64 {
                if let Err(e) = flooder.stream.write_all(&bogus) {
                    return Some((sent, e.kind()));
                }
            }
            None
        });
        let ended = flood.join().unwrap();
        assert!(
            ended.is_some(),
            "the daemon kept a client that reads nothing:\n{}",
            d.log()
        );
        // Everyone else is served as before.
        let got = acked(
            &s,
            VssOperation::HOT_BACKUP,
            &mut good,
            EventKind::Check,
            true,
        );
        assert_eq!(got, OK);
        assert!(
            d.wait_log("does not read its socket", THAWED),
            "{}",
            d.log()
        );

        // The flooder's slot is free again: good + 2 more, then the limit.
        let _second = App::register(&s.socket(), "second", None, None);
        let _third = App::register(&s.socket(), "third", None, None);
        let mut fourth = App::connect(&s.socket());
        let message = fourth.expect_error_and_close();
        assert!(message.contains("too many clients"), "{message}");
    });
}

/// systemd starts services with a soft RLIMIT_NOFILE of 1024: with `max_clients` above
/// that, the daemon raises its soft limit to the hard limit at start, or every connection
/// past about a thousand would fail in `accept` (EMFILE) and never be answered.
#[test]
fn more_clients_than_the_default_fd_soft_limit_all_register() {
    with_timeout(TEST_LIMIT, || {
        const CLIENTS: usize = 1100;
        // This process holds a descriptor per client too.
        let mut own = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        own.current = own.maximum;
        rustix::process::setrlimit(rustix::process::Resource::Nofile, own).unwrap();
        let s = Setup::new();
        let args = [
            OsStr::new("--device"),
            s.emu.socket_path().as_os_str(),
            OsStr::new("--state-dir"),
            s.state.path().as_os_str(),
            OsStr::new("--mount"),
            s.fs.mount_point().as_os_str(),
        ];
        let config = format!("hooks = []\n[apps]\nmax_clients = {}\n", CLIENTS + 10);
        let d = Daemon::start_with_fd_limit(&args, &config, (1024, 8192));
        assert!(s.emu.wait_ready(READY), "{}", d.log());
        let apps: Vec<App> = (0..CLIENTS)
            .map(|i| App::register(&s.socket(), &format!("c{i}"), None, None))
            .collect();
        assert_eq!(apps.len(), CLIENTS);
        assert!(
            d.wait_log("raised the soft RLIMIT_NOFILE", THAWED),
            "{}",
            d.log()
        );
    });
}

// ---- credentials --------------------------------------------------------------------------------

const CHILD_SOCKET_ENV: &str = "HV_VSS_TEST_APP_SOCKET";
const CHILD_LINE: &str = "APP-LINE: ";

/// Run by [`a_client_of_a_user_not_allowed_is_refused`] as uid 65534, not on its own:
/// connects, registers and prints the daemon's first answer.
#[test]
#[ignore = "helper: run by a_client_of_a_user_not_allowed_is_refused as another user"]
fn credentials_child() {
    let path = std::env::var_os(CHILD_SOCKET_ENV).expect("run by the credentials test");
    let mut app = App::connect(Path::new(&path));
    let register = ClientMessage::Register(Register {
        name: "nobody-app".into(),
        tier: None,
        timeout_ms: None,
    });
    // A refused client may find the connection closed already; the answer is still there.
    let _ = app.stream.write_all(&register.to_line());
    let msg = app.recv();
    let line = msg.to_line();
    println!("{CHILD_LINE}{}", String::from_utf8_lossy(&line).trim_end());
}

/// Runs [`credentials_child`] as uid/gid 65534 against `socket`: the daemon's answer line.
fn answer_to_nobody(socket: &Path) -> String {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "credentials_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_SOCKET_ENV, socket)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    stdout
        .lines()
        .find_map(|l| l.split_once(CHILD_LINE).map(|(_, answer)| answer))
        .unwrap_or_else(|| {
            panic!(
                "no answer from the child:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_owned()
}

#[test]
fn a_client_of_a_user_not_allowed_is_refused() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new();
        // A directory uid 65534 can reach, and a socket mode that lets it connect: the
        // kernel's peer credentials, not the file mode, decide.
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("apps/app.sock");
        let flags = [OsStr::new("--app-socket"), socket.as_os_str()];
        let d = s.daemon_with("[apps]\nsocket_mode = \"0666\"\n", &flags);
        let answer = answer_to_nobody(&socket);
        assert!(
            answer.contains("\"type\":\"error\"") && answer.contains("permission denied"),
            "{answer}"
        );
        // Root is always allowed.
        App::register(&socket, "root-app", None, None);
        drop(d);

        // The same user, allowed by the config, registers.
        let _d = s.daemon_with(
            "[apps]\nsocket_mode = \"0666\"\nallowed_users = [65534]\n",
            &flags,
        );
        let answer = answer_to_nobody(&socket);
        assert!(answer.contains("\"type\":\"registered\""), "{answer}");
    });
}

/// `RuntimeDirectoryMode=` of a shipped unit.
fn unit_runtime_directory_mode(unit: &str) -> u32 {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../dist/systemd")
        .join(unit);
    let text = std::fs::read_to_string(&path).unwrap();
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("RuntimeDirectoryMode="))
        .unwrap_or_else(|| panic!("{}: no RuntimeDirectoryMode=", path.display()));
    u32::from_str_radix(value.trim(), 8).unwrap()
}

/// Regular files in `dir` that users other than root could read or write.
fn files_open_to_others(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .filter(|e| e.metadata().unwrap().permissions().mode() & 0o077 != 0)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The layout the shipped units make (the state directory /run/hv-vss with their
/// RuntimeDirectoryMode, the socket at its default place in it) and a config that only
/// names an allowed user: that user reaches the socket and registers. Nothing else in the
/// directory is open to it: the daemon's files there are 0600.
#[test]
fn an_allowed_user_registers_on_the_default_socket_in_the_units_state_directory() {
    with_timeout(TEST_LIMIT, || {
        let mode = unit_runtime_directory_mode("hv-vssd.service");
        assert_eq!(mode, unit_runtime_directory_mode("hv-vssd-uio.service"));
        let s = Setup::new();
        std::fs::set_permissions(s.state.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        let _d = s.daemon_with("[apps]\nallowed_users = [65534]\n", &[]);
        let answer = answer_to_nobody(&s.socket());
        assert!(answer.contains("\"type\":\"registered\""), "{answer}");

        // A backup with a client holding: the journals exist while frozen, the history after.
        let mut app = App::register(&s.socket(), "root-app", None, None);
        let got = acked(&s, VssOperation::FREEZE, &mut app, EventKind::Freeze, true);
        assert_eq!(got, OK);
        let state = s.state.path();
        assert!(s.journal_exists() && state.join("freeze-journal.json").exists());
        assert_eq!(files_open_to_others(state), Vec::<String>::new());
        let got = acked(&s, VssOperation::THAW, &mut app, EventKind::Thaw, true);
        assert_eq!(got, OK);
        assert_eq!(s.verdicts(1), ["app_consistent"]);
        assert_eq!(files_open_to_others(state), Vec::<String>::new());
    });
}

// ---- many clients, tiers ------------------------------------------------------------------------

/// What one client saw: per event, its kind, txn, and the global sequence numbers at which
/// it was received and acked.
#[derive(Debug, Clone)]
struct Seen {
    tier: u8,
    kind: EventKind,
    txn: u64,
    received: u64,
    acked: u64,
}

#[test]
fn a_hundred_clients_in_three_tiers_freeze_low_first_and_thaw_high_first() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new();
        let _d = s.daemon();
        let tiers = [10u8, 20, 30];
        let apps: Vec<(u8, App)> = (0..100)
            .map(|i| {
                let tier = tiers[i % 3];
                let name = format!("app-{i:03}");
                (tier, App::register(&s.socket(), &name, Some(tier), None))
            })
            .collect();
        let seq = AtomicU64::new(0);
        let seen: Mutex<Vec<Vec<Seen>>> = Mutex::new(Vec::new());
        std::thread::scope(|sc| {
            for (tier, mut app) in apps {
                let (seq, seen) = (&seq, &seen);
                sc.spawn(move || {
                    let mut mine = Vec::new();
                    loop {
                        let msg = app.recv();
                        let received = seq.fetch_add(1, Ordering::SeqCst);
                        let (kind, txn, _) = msg.as_event().expect("an event");
                        let acked = seq.fetch_add(1, Ordering::SeqCst);
                        mine.push(Seen {
                            tier,
                            kind,
                            txn,
                            received,
                            acked,
                        });
                        app.ack(txn, true);
                        if kind == EventKind::Thaw {
                            break;
                        }
                    }
                    seen.lock().unwrap().push(mine);
                });
            }
            assert_eq!(s.request(VssOperation::FREEZE), OK);
            assert!(!s.fs.write_probe().wait_ok(BLOCKED));
            assert_eq!(s.request(VssOperation::THAW), OK);
        });
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.len(), 100);
        for mine in &seen {
            let kinds: Vec<EventKind> = mine.iter().map(|e| e.kind).collect();
            assert_eq!(kinds, [EventKind::Freeze, EventKind::Thaw], "{mine:?}");
            assert_eq!(mine[0].txn, mine[1].txn);
        }
        let all: Vec<&Seen> = seen.iter().flatten().collect();
        let of = |kind, tier| all.iter().filter(move |e| e.kind == kind && e.tier == tier);
        // A tier is told only after every member of the tier before it acked.
        let before = |kind, first: u8, then: u8| {
            let last_ack = of(kind, first).map(|e| e.acked).max().unwrap();
            let first_told = of(kind, then).map(|e| e.received).min().unwrap();
            assert!(
                last_ack < first_told,
                "{kind:?}: tier {then} told (seq {first_told}) before tier {first} all acked (seq {last_ack})"
            );
        };
        before(EventKind::Freeze, 10, 20);
        before(EventKind::Freeze, 20, 30);
        before(EventKind::Thaw, 30, 20);
        before(EventKind::Thaw, 20, 10);
        assert!(s.writable());
    });
}

// ---- restart ----------------------------------------------------------------------------------

#[test]
fn a_client_holding_when_the_daemon_is_killed_gets_its_abort_once_after_the_restart() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new();
        let mut d = s.daemon();
        let mut app = App::register(&s.socket(), "db", None, None);
        let mut bystander = App::register(&s.socket(), "bystander", None, None);
        let mut txn = 0;
        let got = host_while(&s, VssOperation::FREEZE, || {
            let (t, _) = app.expect_event(EventKind::Freeze);
            txn = t;
            app.ack(t, true);
            let (t, _) = bystander.expect_event(EventKind::Freeze);
            bystander.ack(t, true);
        });
        assert_eq!(got, OK);
        // Both hold; the daemon dies.
        d.signal(Signal::KILL);
        assert!(d.wait_exit(THAWED).is_some());
        // The guardian thaws; the clients see the connection end.
        assert!(s.writable(), "the guardian did not thaw");
        assert_eq!(app.next(ANSWER).unwrap_err(), Silence::Closed);
        drop(bystander);
        assert!(s.journal_exists(), "the owed aborts survive the daemon");
        drop(d);

        let _d = s.daemon();
        let mut app = App::register(&s.socket(), "db", None, None);
        let (t, reason) = app.expect_abort();
        assert_eq!((t, reason.as_str()), (txn, "daemon restarted"));
        app.assert_quiet();
        // Once: registering again brings no second abort.
        drop(app);
        let mut app = App::register(&s.socket(), "db", None, None);
        app.assert_quiet();
        // A new name was never owed anything.
        let mut newcomer = App::register(&s.socket(), "newcomer", None, None);
        newcomer.assert_quiet();
        // The bystander has not come back: its entry is still owed.
        assert!(s.journal_exists());
        let mut bystander = App::register(&s.socket(), "bystander", None, None);
        assert_eq!(bystander.expect_abort().0, txn);
        let deadline = Instant::now() + THAWED;
        while s.journal_exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!s.journal_exists(), "nothing is owed any more");
    });
}

// ---- hooks ------------------------------------------------------------------------------------

/// A hook directory (root, 0755) in a fresh temp dir, and the log its scripts append to.
struct HookFixture {
    tmp: tempfile::TempDir,
}

impl HookFixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(tmp.path().join("hooks.d")).unwrap();
        Self { tmp }
    }

    fn dir(&self) -> PathBuf {
        self.tmp.path().join("hooks.d")
    }

    /// Another hook directory (root, 0755) next to the first; its hooks log to the same log.
    fn other_dir(&self, sub: &str) -> PathBuf {
        let dir = self.tmp.path().join(sub);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    /// A hook that appends `NAME ARG` to the log, then exits with `status`.
    fn hook(&self, name: &str, status: i32, mode: u32) {
        self.hook_in(&self.dir(), name, status, mode);
    }

    fn hook_in(&self, dir: &Path, name: &str, status: i32, mode: u32) {
        let path = dir.join(name);
        let log = self.tmp.path().join("log");
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"{name} $1\" >> {}\nexit {status}\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// The log once it has `n` lines (or after [`THAWED`]): aborts run after the reply.
    fn log_of_at_least(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + THAWED;
        while self.log().len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.log()
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.tmp.path().join("log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn config(&self, tier: u8) -> String {
        format!(
            "[[hooks]]\ndir = \"{}\"\nstyle = \"native\"\ntier = {tier}\ntimeout_secs = 10\n",
            self.dir().display()
        )
    }
}

#[test]
fn a_hook_directory_takes_part_in_its_tier_and_unsafe_hooks_never_run() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new();
        let hooks = HookFixture::new();
        hooks.hook("10-first", 0, 0o755);
        hooks.hook("20-second", 0, 0o755);
        // Group-writable: skipped.
        hooks.hook("30-unsafe", 0, 0o775);
        let d = s.daemon_with(&hooks.config(50), &[]);
        let mut app = App::register(&s.socket(), "db", Some(100), None);
        let got = host_while(&s, VssOperation::FREEZE, || {
            let (t, _) = app.expect_event(EventKind::Freeze);
            // Tier 50 before tier 100: the hooks froze in order before the client heard.
            assert_eq!(hooks.log(), ["10-first freeze", "20-second freeze"]);
            app.ack(t, true);
        });
        assert_eq!(got, OK);
        let got = host_while(&s, VssOperation::THAW, || {
            let (t, _) = app.expect_event(EventKind::Thaw);
            // Tier 100 thaws before tier 50: no hook thawed yet.
            assert_eq!(hooks.log().len(), 2);
            app.ack(t, true);
        });
        assert_eq!(got, OK, "{}", d.log());
        assert_eq!(
            hooks.log(),
            [
                "10-first freeze",
                "20-second freeze",
                "20-second thaw",
                "10-first thaw"
            ]
        );
        assert!(
            d.log().contains("30-unsafe"),
            "the skipped hook is named in the log"
        );
        assert!(s.writable());
    });
}

#[test]
fn a_failing_freeze_hook_vetoes_and_the_hooks_that_ran_are_aborted() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new();
        let hooks = HookFixture::new();
        hooks.hook("10-ok", 0, 0o755);
        hooks.hook("20-veto", 3, 0o755);
        hooks.hook("30-never", 0, 0o755);
        let _d = s.daemon_with(&hooks.config(10), &[]);
        let mut app = App::register(&s.socket(), "db", Some(100), None);
        assert_eq!(s.request(VssOperation::FREEZE), FAIL);
        // The client in a later tier was never told to freeze.
        app.assert_quiet();
        assert_eq!(
            hooks.log_of_at_least(4),
            [
                "10-ok freeze",
                "20-veto freeze",
                "20-veto abort",
                "10-ok abort"
            ]
        );
        assert!(s.writable());
    });
}

/// The FIFREEZE itself fails (someone else froze the filesystem first): the hooks that were
/// told to freeze are told abort once the daemon has rolled back, and they do run (the
/// freeze-safety owner permits exec again before the coordinator sends the abort).
#[test]
fn hooks_told_to_freeze_are_aborted_when_the_fifreeze_fails() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new();
        let hooks = HookFixture::new();
        hooks.hook("10-a", 0, 0o755);
        hooks.hook("20-b", 0, 0o755);
        let _d = s.daemon_with(&hooks.config(10), &[]);
        let mp = s.fs.mount_point().to_path_buf();
        hv_vss_testutil::freeze_from_other_process(&mp).unwrap();
        let got = s.request(VssOperation::FREEZE);
        // Not ours to thaw: the daemon left it frozen; the test owns that freeze.
        let foreign_kept = s.fs.is_frozen().unwrap();
        hv_vss_testutil::thaw_path(&mp).unwrap();
        assert_eq!(got, FAIL);
        assert!(foreign_kept, "the daemon thawed a freeze it did not make");
        let deadline = Instant::now() + THAWED;
        while hooks.log().len() < 4 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            hooks.log(),
            ["10-a freeze", "20-b freeze", "20-b abort", "10-a abort"]
        );
        assert!(s.writable());
    });
}

#[test]
fn qemu_ga_and_vmware_directories_get_their_own_arguments_in_tier_order() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new();
        let hooks = HookFixture::new();
        // qemu-ga's fsfreeze-hook.d (tier 10): abort is sent as "thaw".
        hooks.hook("10-qemu", 0, 0o755);
        // VMware's backupScripts.d (tier 20): vetoes; abort is sent as "freezeFail".
        let vmware = hooks.other_dir("backupScripts.d");
        hooks.hook_in(&vmware, "10-vmware", 1, 0o755);
        let config = format!(
            "[[hooks]]\ndir = \"{}\"\nstyle = \"qemu-ga\"\ntier = 10\n\
             [[hooks]]\ndir = \"{}\"\nstyle = \"vmware\"\ntier = 20\n",
            hooks.dir().display(),
            vmware.display()
        );
        let _d = s.daemon_with(&config, &[]);
        assert_eq!(s.request(VssOperation::FREEZE), FAIL);
        // Freeze low tier first; abort high tier first.
        assert_eq!(
            hooks.log_of_at_least(4),
            [
                "10-qemu freeze",
                "10-vmware freeze",
                "10-vmware freezeFail",
                "10-qemu thaw"
            ]
        );
        assert!(s.writable());
    });
}

/// Hooks alone (the highest tier, told thaw the moment the filesystems are thawed): thaw
/// runs every hook in reverse, permitted by the freeze-safety owner, and the THAW succeeds.
#[test]
fn hooks_alone_freeze_in_order_and_thaw_in_reverse_right_after_the_fithaw() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new();
        let hooks = HookFixture::new();
        hooks.hook("10-a", 0, 0o755);
        hooks.hook("20-b", 0, 0o755);
        let d = s.daemon_with(&hooks.config(200), &[]);
        assert_eq!(s.request(VssOperation::FREEZE), OK, "{}", d.log());
        assert!(!s.fs.write_probe().wait_ok(BLOCKED), "not frozen");
        assert_eq!(s.request(VssOperation::THAW), OK, "{}", d.log());
        assert!(s.writable());
        assert_eq!(
            hooks.log(),
            ["10-a freeze", "20-b freeze", "20-b thaw", "10-a thaw"]
        );
        assert_eq!(s.verdicts(1), ["app_consistent"]);
    });
}

#[test]
fn a_non_socket_file_at_the_socket_path_stops_the_daemon_with_exit_8() {
    with_timeout(TEST_LIMIT, || {
        let s = Setup::new();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        std::fs::write(&path, b"not a socket").unwrap();
        let config = dir.path().join("hv-vss.toml");
        std::fs::write(&config, "").unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hv-vssd"));
        cmd.arg("--config")
            .arg(&config)
            .arg("--device")
            .arg(s.emu.socket_path())
            .arg("--state-dir")
            .arg(s.state.path())
            .arg("--mount")
            .arg(s.fs.mount_point())
            .arg("--app-socket")
            .arg(&path);
        let out = common::run_to_exit(&mut cmd, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(8), "{stderr}");
        assert!(
            stderr.contains("app_socket") && stderr.contains("not a socket"),
            "{stderr}"
        );
        // Never removed.
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    });
}
