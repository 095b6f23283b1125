//! End-to-end: the real `hv-vssd` in drop-in mode registers with a kernel whose REGISTER1
//! handshake answers 129 (today's kernels) or another 4-byte value (wire §8.3, R12). The
//! stock daemon accepts any value and only records it; so does hv-vssd, logging the value
//! when it is not 129. Either way the device becomes READY and a FREEZE really freezes.

mod common;

use std::ffi::OsStr;
use std::time::Duration;

use common::{Daemon, with_timeout};
use hv_vss_protocol::{HvStatus, VssOperation};
use hv_vss_sim::kernel::{EmulatorConfig, HostOutcome, KernelEmulator};

const READY: Duration = Duration::from_secs(15);
const BLOCKED: Duration = Duration::from_millis(400);
const THAWED: Duration = Duration::from_secs(5);
const LIMIT: Duration = Duration::from_secs(120);
const UNEXPECTED_VERSION_LINE: &str = "handshake reply is not the expected version";

/// Starts the daemon against a kernel answering the handshake with `version`, runs one
/// FREEZE/THAW on a loop-mounted filesystem, and returns the daemon's log.
fn backup_with_handshake(version: u32) -> String {
    let emu = KernelEmulator::start(EmulatorConfig {
        handshake_version: version,
        ..EmulatorConfig::default()
    })
    .unwrap();
    let fs = common::ext4();
    let state = common::state_dir();
    let d = Daemon::start(&[
        OsStr::new("--device"),
        emu.socket_path().as_os_str(),
        OsStr::new("--state-dir"),
        state.path().as_os_str(),
        OsStr::new("--mount"),
        fs.mount_point().as_os_str(),
    ]);
    assert!(emu.wait_ready(READY), "never registered:\n{}", d.log());
    assert_eq!(
        emu.host_request(VssOperation::FREEZE),
        HostOutcome::Replied(HvStatus::S_OK)
    );
    let probe = fs.write_probe();
    assert!(!probe.wait_ok(BLOCKED), "FREEZE must really freeze");
    assert_eq!(
        emu.host_request(VssOperation::THAW),
        HostOutcome::Replied(HvStatus::S_OK)
    );
    assert!(probe.wait_ok(THAWED));
    assert!(d.wait_log("registered with the VSS device", THAWED));
    d.log()
}

#[test]
fn handshake_version_129_is_accepted_quietly() {
    with_timeout(LIMIT, || {
        let log = backup_with_handshake(129);
        assert!(log.contains("version=129"), "{log}");
        assert!(!log.contains(UNEXPECTED_VERSION_LINE), "{log}");
    });
}

#[test]
fn handshake_version_130_is_accepted_and_logged() {
    with_timeout(LIMIT, || {
        let log = backup_with_handshake(130);
        assert!(log.contains(UNEXPECTED_VERSION_LINE), "{log}");
        assert!(log.contains("version=130"), "{log}");
    });
}
