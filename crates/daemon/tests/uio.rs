//! End-to-end: the real `hv-vssd` in UIO mode (`--uio <socket>`) against the simulated
//! Hyper-V host (hv-vss-sim::host) in this test process, over the shared-memory ring pair
//! handed to the daemon through SCM_RIGHTS. The daemon's IC endpoint negotiates, answers
//! the minor operations itself, and hands HOT_BACKUP, FREEZE and THAW to the coordinator,
//! which freezes loop-mounted filesystems made by the test.

mod common;

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use common::{Daemon, LoopFs, with_timeout};
use hv_vss_protocol::{HvStatus, Version, VssOperation};
use hv_vss_sim::host::{HandoverListener, HostConfig, HostSimulator, NegotiationResult};
use hv_vss_vmbus::shm::ShmRings;
use rustix::process::Signal;

const ACCEPT: Duration = Duration::from_secs(15);
const BLOCKED: Duration = Duration::from_millis(400);
const THAWED: Duration = Duration::from_secs(5);
const LIMIT: Duration = Duration::from_secs(120);

struct Host {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    listener: HandoverListener,
}

impl Host {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vss.sock");
        let listener = HandoverListener::bind(&path).unwrap();
        Self {
            _dir: dir,
            path,
            listener,
        }
    }

    /// Waits for the daemon to connect and hands it a fresh ring pair.
    fn accept(&self, daemon: &Daemon) -> (HostSimulator, OwnedFd) {
        let conn = self
            .listener
            .accept(ACCEPT)
            .unwrap()
            .unwrap_or_else(|| panic!("the daemon never connected:\n{}", daemon.log()));
        let rings = ShmRings::create(256 * 1024).unwrap();
        rings.send_over(&conn).unwrap();
        let sim = HostSimulator::new(
            rings,
            HostConfig::default().with_reply_timeout(Duration::from_secs(20)),
        )
        .unwrap();
        (sim, conn)
    }

    /// [`Host::accept`], then a successful NEGOTIATE (framework 3.0, VSS 5.0 by default).
    fn accept_negotiated(&self, daemon: &Daemon) -> (HostSimulator, OwnedFd) {
        let (mut sim, conn) = self.accept(daemon);
        sim.negotiate().unwrap();
        (sim, conn)
    }
}

fn start(host: &Host, fs: &LoopFs, state: &tempfile::TempDir, extra: &[&str]) -> Daemon {
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("--uio"),
        host.path.as_os_str(),
        OsStr::new("--state-dir"),
        state.path().as_os_str(),
        OsStr::new("--mount"),
        fs.mount_point().as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    Daemon::start(&args)
}

#[test]
fn backup_over_uio_negotiates_freezes_and_thaws() {
    with_timeout(LIMIT, || {
        let host = Host::new();
        let fs = common::ext4();
        let state = common::state_dir();
        let d = start(&host, &fs, &state, &[]);
        let (mut sim, _conn) = host.accept(&d);

        match sim.negotiate().unwrap() {
            NegotiationResult::Agreed {
                framework, message, ..
            } => {
                assert_eq!(framework, Version::new(3, 0));
                assert_eq!(message, Version::new(5, 0));
            }
            other => panic!("{other:?}"),
        }
        let check = sim.hot_backup().unwrap();
        assert_eq!((check.status, check.flags), (HvStatus::S_OK, 5));
        let dm = sim.get_dm_info().unwrap();
        assert_eq!((dm.status, dm.flags), (HvStatus::S_OK, 0));

        assert!(sim.freeze().unwrap().is_ok());
        let probe = fs.write_probe();
        assert!(
            !probe.wait_ok(BLOCKED),
            "FREEZE over UIO must really freeze"
        );
        assert!(sim.thaw().unwrap().is_ok());
        assert!(probe.wait_ok(THAWED));
        assert!(sim.bu_complete().unwrap().is_ok());

        // A request arriving while a FREEZE is in flight or held gets E_FAIL at once (R17,
        // R26); the FREEZE itself is unaffected.
        let freeze = sim.post_vss(VssOperation::FREEZE, 0, &[]).unwrap();
        let check = sim.post_vss(VssOperation::HOT_BACKUP, 0, &[]).unwrap();
        let check = sim.await_vss(check).unwrap();
        assert_eq!((check.status, check.flags), (HvStatus::E_FAIL, 5));
        assert!(sim.await_vss(freeze).unwrap().is_ok());
        assert!(!fs.writable_within(BLOCKED));
        assert!(sim.thaw().unwrap().is_ok());
        assert!(fs.writable_within(THAWED));

        // Unknown operations get E_FAIL from the endpoint; the daemon keeps serving.
        assert_eq!(
            sim.request(VssOperation(42)).unwrap().status,
            HvStatus::E_FAIL
        );
        for _ in 0..10 {
            let cycle = sim.backup_cycle(Duration::from_millis(5));
            assert!(cycle.all_ok, "{cycle:?}");
        }
        assert!(sim.unmatched_replies().is_empty());
        assert!(fs.writable_within(THAWED));
        assert!(d.wait_log("VSS channel negotiated", THAWED));
    });
}

#[test]
fn host_hang_up_while_frozen_thaws_and_reconnects() {
    with_timeout(LIMIT, || {
        let host = Host::new();
        let fs = common::ext4();
        let state = common::state_dir();
        let d = start(&host, &fs, &state, &[]);
        let (mut sim, conn) = host.accept_negotiated(&d);
        assert!(sim.freeze().unwrap().is_ok());
        let probe = fs.write_probe();
        assert!(!probe.wait_ok(BLOCKED));
        // The host side goes away (the simulator's rescind): thaw, then reconnect.
        drop(conn);
        drop(sim);
        assert!(probe.wait_ok(THAWED), "transport loss must thaw");
        let (mut sim, _conn) = host.accept_negotiated(&d);
        let cycle = sim.backup_cycle(Duration::from_millis(5));
        assert!(cycle.all_ok, "{cycle:?}");
    });
}

#[test]
fn auto_thaw_over_uio_answers_the_late_thaw_e_fail() {
    with_timeout(LIMIT, || {
        let host = Host::new();
        let fs = common::ext4();
        let state = common::state_dir();
        let d = start(&host, &fs, &state, &["--auto-thaw", "0.5"]);
        let (mut sim, _conn) = host.accept_negotiated(&d);
        assert!(sim.freeze().unwrap().is_ok());
        let probe = fs.write_probe();
        assert!(probe.wait_ok(THAWED), "auto-thaw must thaw");
        assert_eq!(sim.thaw().unwrap().status, HvStatus::E_FAIL);
        let cycle = sim.backup_cycle(Duration::from_millis(5));
        assert!(cycle.all_ok, "{cycle:?}");
    });
}

/// The history entries in `state`, oldest first.
fn history(state: &tempfile::TempDir) -> Vec<serde_json::Value> {
    std::fs::read_to_string(state.path().join("history.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The history's backup entries (FREEZE transactions), oldest first.
fn backups(state: &tempfile::TempDir) -> Vec<serde_json::Value> {
    history(state)
        .into_iter()
        .filter(|e| e["report"]["kind"] == "backup")
        .collect()
}

/// Waits until the history holds `n` backup entries; returns them.
fn wait_backups(state: &tempfile::TempDir, n: usize, d: &Daemon) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + THAWED;
    loop {
        let b = backups(state);
        if b.len() >= n {
            return b;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} backup entries in the history: {:?}\n{}",
            b.len(),
            history(state),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bu_complete_after_a_backup_marks_its_history_entry_host_completed() {
    with_timeout(LIMIT, || {
        let host = Host::new();
        let fs = common::ext4();
        let state = common::state_dir();
        let d = start(&host, &fs, &state, &[]);
        let (mut sim, _conn) = host.accept_negotiated(&d);
        assert!(sim.hot_backup().unwrap().is_ok());
        assert!(sim.freeze().unwrap().is_ok());
        assert!(sim.thaw().unwrap().is_ok());
        assert!(fs.writable_within(THAWED));
        // The check is stored at once; the backup waits for the host's BU_COMPLETE.
        assert!(d.wait_log("transaction report", THAWED));
        std::thread::sleep(BLOCKED);
        let before = history(&state);
        assert_eq!(before.len(), 1, "{before:?}");
        assert_eq!(before[0]["report"]["kind"], "check");
        assert!(before[0]["host_completion"].is_null(), "{before:?}");

        assert!(sim.bu_complete().unwrap().is_ok());
        let b = wait_backups(&state, 1, &d);
        assert_eq!(b.len(), 1, "{b:?}");
        assert_eq!(b[0]["report"]["verdict"]["kind"], "fs_consistent");
        assert_eq!(b[0]["host_completion"]["completed"], true, "{b:?}");
        assert_eq!(b[0]["host_completion"]["closed_by"], "bu_complete");
        assert_eq!(
            b[0]["freeze"]["filesystems"].as_array().map(Vec::len),
            Some(1)
        );
        assert!(d.wait_log("backup completed", THAWED));
        // One line per transaction: a second BU_COMPLETE changes nothing.
        assert!(sim.bu_complete().unwrap().is_ok());
        std::thread::sleep(BLOCKED);
        assert_eq!(history(&state).len(), 2, "{:?}", history(&state));
    });
}

#[test]
fn a_backup_without_bu_complete_is_stored_not_completed() {
    with_timeout(LIMIT, || {
        let host = Host::new();
        let fs = common::ext4();
        let state = common::state_dir();
        let mut d = start(&host, &fs, &state, &[]);
        let (mut sim, _conn) = host.accept_negotiated(&d);
        // Backup 1: no BU_COMPLETE. The next HOT_BACKUP closes it as not completed.
        assert!(sim.hot_backup().unwrap().is_ok());
        assert!(sim.freeze().unwrap().is_ok());
        assert!(sim.thaw().unwrap().is_ok());
        assert!(sim.hot_backup().unwrap().is_ok());
        let b = wait_backups(&state, 1, &d);
        assert_eq!(b[0]["host_completion"]["completed"], false, "{b:?}");
        assert_eq!(b[0]["host_completion"]["closed_by"], "next_request");
        // Backup 2 is completed.
        assert!(sim.freeze().unwrap().is_ok());
        assert!(sim.thaw().unwrap().is_ok());
        assert!(sim.bu_complete().unwrap().is_ok());
        let b = wait_backups(&state, 2, &d);
        assert_eq!(b[1]["host_completion"]["completed"], true, "{b:?}");
        // Backup 3: the daemon stops before any BU_COMPLETE; SIGTERM still stores it.
        assert!(sim.freeze().unwrap().is_ok());
        assert!(sim.thaw().unwrap().is_ok());
        d.signal(rustix::process::Signal::TERM);
        let status = d.wait_exit(THAWED).expect("the daemon did not stop");
        assert!(status.success(), "{status:?}\n{}", d.log());
        let b = backups(&state);
        assert_eq!(b.len(), 3, "{b:?}");
        assert_eq!(b[2]["host_completion"]["completed"], false, "{b:?}");
        assert_eq!(b[2]["host_completion"]["closed_by"], "shutdown");
        // Appended in transaction order, one line each.
        let txns: Vec<u64> = history(&state)
            .iter()
            .map(|e| e["report"]["txn"].as_u64().unwrap())
            .collect();
        let mut sorted = txns.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(txns, sorted, "{:?}", history(&state));
    });
}

/// R61: while frozen, the held log is invisible; a transport or guardian loss writes one
/// line each to the (injected) kernel log. Normal backups write none.
#[test]
fn losses_while_frozen_write_kmsg_lines_and_normal_backups_none() {
    with_timeout(LIMIT, || {
        let host = Host::new();
        let fs = common::ext4();
        let state = common::state_dir();
        let kmsg_dir = common::state_dir();
        let kmsg = kmsg_dir.path().join("kmsg");
        std::fs::write(&kmsg, "").unwrap();
        let d = start(&host, &fs, &state, &["--kmsg", kmsg.to_str().unwrap()]);
        let (mut sim, conn) = host.accept_negotiated(&d);
        for _ in 0..3 {
            let cycle = sim.backup_cycle(Duration::from_millis(5));
            assert!(cycle.all_ok, "{cycle:?}");
        }
        assert!(sim.freeze().unwrap().is_ok());
        let probe = fs.write_probe();
        assert!(!probe.wait_ok(BLOCKED));
        assert_eq!(
            std::fs::read_to_string(&kmsg).unwrap(),
            "",
            "kmsg lines in normal operation"
        );
        drop(conn);
        drop(sim);
        assert!(probe.wait_ok(THAWED), "transport loss must thaw");
        let text = std::fs::read_to_string(&kmsg).unwrap();
        assert_eq!(text.lines().count(), 1, "{text:?}");
        assert!(text.starts_with("<4>hv-vssd: "), "{text:?}");
        assert!(text.contains("transport lost"), "{text:?}");

        // The guardian dying while frozen: one more line.
        let (mut sim, _conn) = host.accept_negotiated(&d);
        assert!(sim.freeze().unwrap().is_ok());
        let probe = fs.write_probe();
        assert!(!probe.wait_ok(BLOCKED));
        let guardian = d.guardian_pid().expect("a guardian");
        common::kill(guardian, rustix::process::Signal::KILL);
        assert!(probe.wait_ok(THAWED), "guardian loss must thaw");
        let text = std::fs::read_to_string(&kmsg).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text:?}");
        assert!(
            lines[1].starts_with("<4>hv-vssd: guardian process ended"),
            "{text:?}"
        );
    });
}

/// Where the daemon lists what it froze while a freeze is held.
fn journal_exists(state: &tempfile::TempDir) -> bool {
    state.path().join("freeze-journal.json").exists()
}

/// The journal is gone, or goes within 2 s (an abandoned FIFREEZE stays listed until its
/// thread has returned and been collected).
fn journal_gone_soon(state: &tempfile::TempDir) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(2);
    while journal_exists(state) {
        if std::time::Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The daemon did not come back for a new ring pair: it kept its first channel.
fn assert_no_reconnect(host: &Host, d: &Daemon) {
    assert!(
        host.listener
            .accept(Duration::from_millis(100))
            .unwrap()
            .is_none(),
        "the daemon reconnected, so it lost its channel:\n{}",
        d.log()
    );
}

#[test]
fn sigkill_while_frozen_over_uio_is_thawed_by_the_guardian_within_2s() {
    with_timeout(LIMIT, || {
        let host = Host::new();
        let fs = common::ext4();
        let state = common::state_dir();
        let mut d = start(&host, &fs, &state, &[]);
        let (mut sim, _conn) = host.accept_negotiated(&d);
        assert!(sim.hot_backup().unwrap().is_ok());
        assert!(sim.freeze().unwrap().is_ok());
        let probe = fs.write_probe();
        assert!(
            !probe.wait_ok(BLOCKED),
            "FREEZE over UIO must really freeze"
        );
        assert!(journal_exists(&state), "the journal lists the frozen set");

        let guardian = d.guardian_pid().expect("a guardian runs");
        d.signal(Signal::KILL);
        let killed = Instant::now();
        assert!(
            probe.wait_ok(Duration::from_secs(2).saturating_sub(killed.elapsed())),
            "not thawed within 2 s of SIGKILL:\n{}",
            d.log()
        );
        // No restart: the daemon is dead and its guardian did the thaw.
        assert!(d.wait_exit(THAWED).is_some());
        let deadline = Instant::now() + THAWED;
        while common::process_exists(guardian) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !common::process_exists(guardian),
            "the guardian exits after recovery"
        );
        assert!(journal_gone_soon(&state));
        assert!(fs.writable_within(THAWED));
    });
}

#[test]
fn hundred_cycles_in_a_row_over_uio() {
    with_timeout(Duration::from_secs(300), || {
        let host = Host::new();
        let fs = common::ext4();
        let state = common::state_dir();
        let d = start(&host, &fs, &state, &[]);
        let (mut sim, _conn) = host.accept_negotiated(&d);
        for i in 0..100 {
            // The simulator also rejects a HOT_BACKUP reply without flags 5 (R7) as invalid.
            let check = sim.hot_backup().unwrap();
            assert_eq!(
                (check.status, check.flags),
                (HvStatus::S_OK, 5),
                "cycle {i}"
            );
            assert_eq!(sim.freeze().unwrap().status, HvStatus::S_OK, "cycle {i}");
            if i == 0 || i == 99 {
                // Zero hold otherwise; here the freeze is shown to be real.
                let probe = fs.write_probe();
                assert!(!probe.wait_ok(BLOCKED), "cycle {i}: FREEZE must freeze");
                assert_eq!(sim.thaw().unwrap().status, HvStatus::S_OK, "cycle {i}");
                assert!(probe.wait_ok(THAWED), "cycle {i}: THAW must thaw");
            } else {
                assert_eq!(sim.thaw().unwrap().status, HvStatus::S_OK, "cycle {i}");
            }
            assert_eq!(
                sim.bu_complete().unwrap().status,
                HvStatus::S_OK,
                "cycle {i}"
            );
        }
        assert_eq!(sim.exchanges().len(), 1 + 4 * 100);
        assert!(sim.unmatched_replies().is_empty());
        assert!(fs.writable_within(THAWED));
        assert!(journal_gone_soon(&state));
        assert_no_reconnect(&host, &d);
    });
}

#[test]
fn bad_input_while_frozen_over_uio_gets_no_reply_and_keeps_the_freeze() {
    with_timeout(LIMIT, || {
        let host = Host::new();
        let fs = common::ext4();
        let state = common::state_dir();
        let d = start(&host, &fs, &state, &[]);
        let (mut sim, _conn) = host.accept_negotiated(&d);
        assert!(sim.hot_backup().unwrap().is_ok());
        assert!(sim.freeze().unwrap().is_ok());
        let probe = fs.write_probe();
        assert!(
            !probe.wait_ok(BLOCKED),
            "FREEZE over UIO must really freeze"
        );

        // R10: garbage, a VSS payload under 40 bytes (a THAW: acting on it would thaw), and
        // well-formed IC messages of other types get no reply and change nothing.
        let mut bad = Vec::new();
        for (len, seed) in [
            (1, 1),
            (8, 2),
            (24, 3),
            (40, 4),
            (64, 5),
            (512, 6),
            (4096, 7),
        ] {
            bad.push(sim.post_garbage(len, seed).unwrap());
        }
        for len in [28, 30, 32] {
            bad.push(sim.post_truncated_vss(VssOperation::THAW, len).unwrap());
        }
        for msg_type in [1, 2, 3, 4, 6, 7, 0x100, 0xffff] {
            bad.push(sim.post_non_vss(msg_type).unwrap());
        }
        // The channel is processed in order: once the FREEZE behind them is answered, any
        // reply to the bad packets would already be in the ring.
        let freeze = sim.post_vss(VssOperation::FREEZE, 0, &[]).unwrap();
        let again = sim.await_vss(freeze).unwrap();
        assert_eq!(again.status, HvStatus::S_OK, "the daemon still answers");
        for (i, ticket) in bad.into_iter().enumerate() {
            let window = if i == 0 {
                BLOCKED
            } else {
                Duration::from_millis(20)
            };
            if let Err(e) = sim.expect_no_reply(ticket, window) {
                panic!("bad packet {i} was answered: {e}\n{}", d.log());
            }
        }
        assert!(sim.unmatched_replies().is_empty());
        assert!(
            !probe.wait_ok(BLOCKED),
            "bad input must not thaw:\n{}",
            d.log()
        );
        assert!(journal_exists(&state));

        assert!(sim.thaw().unwrap().is_ok());
        assert!(probe.wait_ok(THAWED), "the blocked write did not complete");
        assert!(journal_gone_soon(&state));
        assert!(
            d.wait_log("notice=Dropped", THAWED),
            "the drops are logged once thawed (R10)"
        );
        assert!(sim.bu_complete().unwrap().is_ok());
        // Same channel, still serving.
        let cycle = sim.backup_cycle(Duration::ZERO);
        assert!(cycle.all_ok, "{cycle:?}");
        assert!(fs.writable_within(THAWED));
        assert_no_reconnect(&host, &d);
    });
}
