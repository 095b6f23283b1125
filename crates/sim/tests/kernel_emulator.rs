//! The drop-in transport (`hv_vss_vmbus::kernel_dev::KernelDevice`) against the kernel
//! emulator, with a minimal daemon loop, covering the kernel contract of wire §8.

use std::thread;
use std::time::Duration;

use hv_vss_protocol::kernel;
use hv_vss_protocol::{HvStatus, VssOperation};
use hv_vss_sim::kernel::{
    CloseReason, DeviceState, EmulatorConfig, EventKind, FailReason, HostOutcome, KernelEmulator,
};
use hv_vss_vmbus::kernel_dev::{DeviceKind, KernelDevError, KernelDevice};

const WAIT: Duration = Duration::from_secs(5);

fn emulator(timeout: Duration) -> KernelEmulator {
    KernelEmulator::start(EmulatorConfig::with_timeout(timeout)).unwrap()
}

fn registered(emu: &KernelEmulator) -> KernelDevice {
    let mut dev = KernelDevice::open(emu.socket_path()).unwrap();
    assert_eq!(dev.kind(), DeviceKind::Socket);
    dev.register().unwrap();
    assert!(dev.is_registered());
    assert!(emu.wait_ready(WAIT));
    dev
}

/// A minimal daemon: answer every request S_OK until the device fails; returns the ops seen
/// and the error that ended the loop.
fn spawn_ok_daemon(
    emu: &KernelEmulator,
) -> thread::JoinHandle<(Vec<VssOperation>, KernelDevError)> {
    let mut dev = registered(emu);
    thread::spawn(move || {
        let mut seen = Vec::new();
        loop {
            let request = match dev.recv() {
                Ok(request) => request,
                Err(e) => return (seen, e),
            };
            seen.push(request.op);
            if let Err(e) = dev.reply(HvStatus::S_OK) {
                return (seen, e);
            }
        }
    })
}

#[test]
fn forwards_hot_backup_freeze_thaw_and_answers_the_rest_locally() {
    let emu = emulator(Duration::from_secs(10));
    let daemon = spawn_ok_daemon(&emu);
    for op in [
        VssOperation::HOT_BACKUP,
        VssOperation::FREEZE,
        VssOperation::THAW,
    ] {
        assert_eq!(
            emu.host_request(op),
            HostOutcome::Replied(HvStatus::S_OK),
            "{op:?}"
        );
    }
    for op in [
        VssOperation::GET_DM_INFO,
        VssOperation::CREATE,
        VssOperation::BU_COMPLETE,
    ] {
        assert_eq!(emu.host_request(op), HostOutcome::AnsweredLocally);
    }
    assert_eq!(emu.state(), DeviceState::Ready);
    assert!(emu.hang_up());
    let (seen, end) = daemon.join().unwrap();
    assert_eq!(
        seen,
        [
            VssOperation::HOT_BACKUP,
            VssOperation::FREEZE,
            VssOperation::THAW
        ]
    );
    assert!(matches!(end, KernelDevError::HangUp), "{end}");
    assert!(end.requires_reopen());

    let events = emu.events();
    let forwarded: Vec<_> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Forwarded { op, .. } => Some(op),
            _ => None,
        })
        .collect();
    assert_eq!(
        forwarded,
        [
            VssOperation::HOT_BACKUP,
            VssOperation::FREEZE,
            VssOperation::THAW
        ]
    );
    let replies = events
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::DaemonReplied {
                    status: HvStatus::S_OK,
                    ..
                }
            )
        })
        .count();
    assert_eq!(replies, 3);
    assert!(events.windows(2).all(|w| w[0].at <= w[1].at));
}

#[test]
fn daemon_status_reaches_the_host_verbatim() {
    let emu = emulator(Duration::from_secs(10));
    let mut dev = registered(&emu);
    let daemon = thread::spawn(move || {
        let request = dev.recv().unwrap();
        dev.reply(HvStatus::E_FAIL).unwrap();
        request
    });
    assert_eq!(
        emu.host_request(VssOperation::FREEZE),
        HostOutcome::Replied(HvStatus::E_FAIL)
    );
    assert_eq!(daemon.join().unwrap().op, VssOperation::FREEZE);
}

/// Wire §8.3, R12: the handshake reply is accepted whatever its value, as the stock daemon
/// does; the device is READY and serves requests either way.
#[test]
fn handshake_values_129_and_130_are_both_accepted() {
    for version in [129, 130] {
        let emu = KernelEmulator::start(EmulatorConfig {
            handshake_version: version,
            ..EmulatorConfig::default()
        })
        .unwrap();
        let mut dev = registered(&emu);
        assert_eq!(dev.kernel_version(), Some(version));
        let daemon = thread::spawn(move || {
            let request = dev.recv().unwrap();
            dev.reply(HvStatus::S_OK).unwrap();
            request.op
        });
        assert_eq!(
            emu.host_request(VssOperation::HOT_BACKUP),
            HostOutcome::Replied(HvStatus::S_OK),
            "handshake version {version}"
        );
        assert_eq!(daemon.join().unwrap(), VssOperation::HOT_BACKUP);
    }
}

#[test]
fn no_daemon_means_e_fail_at_once() {
    let emu = emulator(Duration::from_secs(60));
    let outcome = emu.host_request(VssOperation::FREEZE);
    assert_eq!(outcome, HostOutcome::Failed(FailReason::NoDaemon));
    assert_eq!(outcome.status(), HvStatus::E_FAIL);
    // Connected but not registered is no better.
    let _dev = KernelDevice::open(emu.socket_path()).unwrap();
    assert!(
        emu.wait_for_event(WAIT, |e| matches!(e, EventKind::Connected { .. }))
            .is_some()
    );
    assert_eq!(emu.state(), DeviceState::Init);
    assert_eq!(
        emu.host_request(VssOperation::THAW),
        HostOutcome::Failed(FailReason::NoDaemon)
    );
}

#[test]
fn timeout_answers_e_fail_and_the_late_reply_hits_a_hang_up() {
    let emu = emulator(Duration::from_millis(200));
    let mut dev = registered(&emu);
    let daemon = thread::spawn(move || {
        let request = dev.recv().unwrap();
        thread::sleep(Duration::from_millis(600));
        (request, dev.reply(HvStatus::S_OK).unwrap_err(), dev)
    });
    assert_eq!(
        emu.host_request(VssOperation::FREEZE),
        HostOutcome::Failed(FailReason::Timeout)
    );
    let (request, late, _dev) = daemon.join().unwrap();
    assert_eq!(request.op, VssOperation::FREEZE);
    assert!(matches!(late, KernelDevError::HangUp), "{late}");
    assert!(late.requires_reopen());
    assert!(emu.events().iter().any(|e| e.kind
        == EventKind::ClosedByKernel {
            conn: 1,
            reason: CloseReason::Timeout
        }));

    // Reopen and register again: the device works as before.
    let daemon = spawn_ok_daemon(&emu);
    assert_eq!(
        emu.host_request(VssOperation::THAW),
        HostOutcome::Replied(HvStatus::S_OK)
    );
    emu.hang_up();
    daemon.join().unwrap();
}

#[test]
fn wrong_length_message_is_a_typed_error_that_requires_reopen() {
    let emu = emulator(Duration::from_secs(10));
    let mut dev = registered(&emu);
    assert!(emu.send_raw(&[5, 0, 0, 0]));
    let e = dev.recv_timeout(WAIT).unwrap_err();
    assert!(
        matches!(
            e,
            KernelDevError::BadMessage(kernel::KernelMsgError::WrongLength {
                len: 4,
                expected: 12
            })
        ),
        "{e}"
    );
    assert!(e.requires_reopen());
}

#[test]
fn recv_timeout_returns_none_when_nothing_comes() {
    let emu = emulator(Duration::from_secs(10));
    let mut dev = registered(&emu);
    assert!(
        dev.recv_timeout(Duration::from_millis(50))
            .unwrap()
            .is_none()
    );
    assert!(dev.recv_timeout(Duration::ZERO).unwrap().is_none());
}

#[test]
fn second_daemon_is_refused_while_one_holds_the_device() {
    let emu = emulator(Duration::from_secs(10));
    let _first = registered(&emu);
    let second = KernelDevice::open(emu.socket_path());
    // Connecting succeeds at the socket level; the emulator closes it at once.
    let e = second.and_then(|mut d| d.register()).unwrap_err();
    assert!(matches!(e, KernelDevError::HangUp), "{e}");
    assert!(
        emu.events()
            .iter()
            .any(|e| e.kind == EventKind::ConnectionRefused)
    );
    assert_eq!(emu.state(), DeviceState::Ready);
}

#[test]
fn daemon_disconnect_mid_request_is_e_fail() {
    let emu = emulator(Duration::from_secs(10));
    let mut dev = registered(&emu);
    let daemon = thread::spawn(move || {
        let request = dev.recv().unwrap();
        drop(dev);
        request
    });
    assert_eq!(
        emu.host_request(VssOperation::HOT_BACKUP),
        HostOutcome::Failed(FailReason::DaemonHungUp)
    );
    assert_eq!(daemon.join().unwrap().op, VssOperation::HOT_BACKUP);
    assert!(emu.events().iter().any(|e| e.kind
        == EventKind::Disconnected {
            conn: 1,
            in_flight: Some(VssOperation::HOT_BACKUP)
        }));
    assert_eq!(emu.state(), DeviceState::NoDaemon);
}

#[test]
fn injected_hang_up_mid_request() {
    let emu = emulator(Duration::from_secs(10));
    let mut dev = registered(&emu);
    emu.hang_up_after_next_forward();
    assert_eq!(
        emu.host_request(VssOperation::FREEZE),
        HostOutcome::Failed(FailReason::DaemonHungUp)
    );
    let e = dev.recv_timeout(WAIT).unwrap_err();
    assert!(matches!(e, KernelDevError::HangUp), "{e}");
}

#[test]
fn hibernation_sends_a_fake_thaw_and_rejects_the_next_write() {
    let emu = emulator(Duration::from_secs(10));
    let mut dev = registered(&emu);
    assert!(emu.hibernate());
    assert_eq!(
        dev.recv_timeout(WAIT).unwrap().unwrap().op,
        VssOperation::THAW
    );
    assert_eq!(emu.state(), DeviceState::Ready);
    // The socket accepts the bytes; the emulator then closes: the daemon learns at its next
    // call (module docs of hv_vss_sim::kernel).
    let _ = dev.reply(HvStatus::S_OK);
    let e = dev.recv_timeout(WAIT).unwrap_err();
    assert!(matches!(e, KernelDevError::HangUp), "{e}");
    assert!(emu.events().iter().any(|e| matches!(
        e.kind,
        EventKind::ClosedByKernel {
            reason: CloseReason::NotActive,
            ..
        }
    )));
}

#[test]
fn unknown_op_can_be_forwarded_as_a_fault() {
    let emu = emulator(Duration::from_secs(10));
    let mut dev = registered(&emu);
    let daemon = thread::spawn(move || {
        let request = dev.recv().unwrap();
        dev.reply(HvStatus::E_FAIL).unwrap();
        request
    });
    assert_eq!(
        emu.forward_request(VssOperation(42)),
        HostOutcome::Replied(HvStatus::E_FAIL)
    );
    assert_eq!(daemon.join().unwrap().op, VssOperation(42));
}

/// Raw-socket daemons for what `KernelDevice` never sends.
mod raw {
    use super::*;
    use rustix::net::{AddressFamily, SendFlags, SocketAddrUnix, SocketType};
    use std::os::fd::OwnedFd;

    fn connect(emu: &KernelEmulator) -> OwnedFd {
        let fd = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
        rustix::net::connect(&fd, &SocketAddrUnix::new(emu.socket_path()).unwrap()).unwrap();
        fd
    }

    #[test]
    fn legacy_register_gets_no_reply_and_never_becomes_ready() {
        let emu = emulator(Duration::from_secs(10));
        let fd = connect(&emu);
        rustix::net::send(
            &fd,
            &kernel::build_request(VssOperation::REGISTER),
            SendFlags::empty(),
        )
        .unwrap();
        assert!(
            emu.wait_for_event(WAIT, |e| matches!(
                e,
                EventKind::LegacyRegisterIgnored { .. }
            ))
            .is_some()
        );
        assert_eq!(emu.state(), DeviceState::Init);
        assert_eq!(
            emu.host_request(VssOperation::FREEZE),
            HostOutcome::Failed(FailReason::NoDaemon)
        );
        let mut buf = [0u8; 16];
        let got = rustix::net::recv(&fd, &mut buf, rustix::net::RecvFlags::DONTWAIT);
        assert_eq!(got.unwrap_err(), rustix::io::Errno::AGAIN);
    }

    #[test]
    fn wrong_length_write_closes_the_connection() {
        let emu = emulator(Duration::from_secs(10));
        let fd = connect(&emu);
        rustix::net::send(&fd, &[0x81, 0, 0, 0], SendFlags::empty()).unwrap();
        assert!(
            emu.wait_for_event(WAIT, |e| matches!(
                e,
                EventKind::ClosedByKernel {
                    reason: CloseReason::WrongLength(4),
                    ..
                }
            ))
            .is_some()
        );
        let mut buf = [0u8; 16];
        assert_eq!(
            rustix::net::recv(&fd, &mut buf, rustix::net::RecvFlags::empty())
                .unwrap()
                .1,
            0
        );
    }
}
