//! The simulated host in this process, a guest IC endpoint in another one.
//!
//! The test binary re-executes itself as the guest (the ignored `guest_process` test, active
//! only with `HV_VSS_SIM_GUEST_SOCKET` set). The guest connects to a `SOCK_SEQPACKET`
//! socket in a temp dir, receives the memfd and eventfds over SCM_RIGHTS, and serves the
//! channel with [`self_test_guest`]: a **fixed policy** (S_OK to everything) that freezes
//! nothing. This tests the transport (hand-over, ring, wake-ups, reply framing), not the
//! daemon. The guest stops when the host closes the socket and prints what it saw.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use hv_vss_protocol::{HvStatus, VssOperation};
use hv_vss_sim::host::self_test_guest::{self, FixedPolicy};
use hv_vss_sim::host::{
    HandoverListener, HostConfig, HostSimulator, NegotiationResult, Step, connect_handover,
};
use hv_vss_vmbus::ic_endpoint::IcEndpoint;
use hv_vss_vmbus::shm::{InterruptMaskModel, ShmRings};

const SOCKET_ENV: &str = "HV_VSS_SIM_GUEST_SOCKET";
const TIMEOUT: Duration = Duration::from_secs(20);

/// Spawns the guest process, hands it the rings, and returns the simulator, the open
/// hand-over connection and the child.
fn start(config: HostConfig) -> (HostSimulator, std::os::fd::OwnedFd, std::process::Child) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vss.sock");
    let listener = HandoverListener::bind(&path).unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "guest_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SOCKET_ENV, &path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let conn = listener
        .accept(TIMEOUT)
        .unwrap()
        .expect("the guest process connects");
    let rings = ShmRings::create(256 * 1024).unwrap();
    rings.send_over(&conn).unwrap();
    let sim = HostSimulator::new(rings, config.with_reply_timeout(TIMEOUT)).unwrap();
    (sim, conn, child)
}

/// Closes the hand-over connection (the guest's stop signal) and returns its output.
fn finish(conn: std::os::fd::OwnedFd, mut child: std::process::Child) -> String {
    drop(conn);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "guest process failed: {status}\n{out}");
    out
}

#[test]
fn full_backup_sequence_across_two_processes() {
    for model in InterruptMaskModel::ALL {
        full_backup_sequence(model);
    }
}

fn full_backup_sequence(model: InterruptMaskModel) {
    let (mut sim, conn, child) = start(HostConfig::default().with_mask_model(model));
    let cycle = sim.full_sequence(Duration::from_millis(20));
    let steps: Vec<String> = cycle.steps.iter().map(|s| s.step.to_string()).collect();
    assert_eq!(
        steps,
        ["NEGOTIATE", "HOT_BACKUP", "FREEZE", "THAW", "BU_COMPLETE"]
    );
    for s in &cycle.steps {
        assert_eq!(s.status, Some(HvStatus::S_OK), "{s:?}");
        assert!(s.error.is_none());
    }
    assert!(cycle.all_ok);
    let frozen = cycle.frozen_window.unwrap();
    assert!(frozen >= Duration::from_millis(20) && frozen >= cycle.snapshot_window.unwrap());
    assert_eq!(cycle.steps[0].step, Step::Negotiate);

    // FREEZE with the largest LUN body (OpenVMM's 12,500-byte Message2Ex), echoed across
    // the process boundary.
    let lun: Vec<u8> = (0..12_488u32).map(|i| (i * 7) as u8).collect();
    assert!(sim.freeze_with_lun(&lun).unwrap().is_ok());
    assert!(sim.thaw().unwrap().is_ok());
    let dm = sim.get_dm_info().unwrap();
    assert_eq!((dm.status, dm.flags), (HvStatus::S_OK, 0));
    // Every exchange has a distinct trans_id and a reply.
    let ids: std::collections::HashSet<u64> = sim.exchanges().iter().map(|e| e.trans_id).collect();
    assert_eq!(ids.len(), sim.exchanges().len());
    assert!(sim.unmatched_replies().is_empty());

    let out = finish(conn, child);
    assert!(
        out.contains("self-test guest: negotiated 3.0/5.0, 5 requests, 1 backup completes"),
        "{out}"
    );
}

#[test]
fn failed_negotiation_across_two_processes() {
    let (mut sim, conn, child) = start(HostConfig::vss_4_0_only());
    assert!(matches!(
        sim.negotiate().unwrap(),
        NegotiationResult::Refused { .. }
    ));
    // R3: a repeat is answered too.
    assert!(matches!(
        sim.negotiate().unwrap(),
        NegotiationResult::Refused { .. }
    ));
    // The guest still serves VSS requests on the channel.
    assert!(sim.request(VssOperation::HOT_BACKUP).unwrap().is_ok());
    let out = finish(conn, child);
    assert!(out.contains("self-test guest: negotiation failed"), "{out}");
}

/// The guest, run in the child process.
fn run_guest(path: &Path) {
    let (socket, rings) = connect_handover(path).unwrap();
    let mut endpoint = IcEndpoint::new(rings.guest().unwrap());
    let summary = self_test_guest::serve(
        &mut endpoint,
        FixedPolicy::ALWAYS_OK,
        std::os::fd::AsFd::as_fd(&socket),
    )
    .unwrap();
    match endpoint.versions() {
        Some((fw, msg)) => println!(
            "self-test guest: negotiated {fw}/{msg}, {} requests, {} backup completes",
            summary.requests, summary.backup_completes
        ),
        None => println!(
            "self-test guest: negotiation failed, {} requests",
            summary.requests
        ),
    }
}

#[test]
#[ignore = "the guest half of the two-process tests; started by them as a child process"]
fn guest_process() {
    if let Some(path) = std::env::var_os(SOCKET_ENV) {
        run_guest(Path::new(&path));
    }
}
