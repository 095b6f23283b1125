//! Host misbehaviour against a guest IC endpoint over the in-process shared-memory pair.
//!
//! The guest runs in a thread with the transport self-test policy (S_OK to HOT_BACKUP,
//! FREEZE and THAW; it freezes nothing) until the test closes its stop socket; it then
//! returns its summary and the endpoint, so the test can check the notices. For every bad
//! input: nothing crashes, the right reply (or none) comes back, and the guest keeps
//! serving afterwards. Corrupt rings end with the typed error. Every test runs against both
//! `uio_hv_generic` generations ([`InterruptMaskModel`]): the old driver masks RX on every
//! host interrupt, the current one never touches the mask.

use std::os::fd::{AsFd, OwnedFd};
use std::thread::JoinHandle;
use std::time::Duration;

use hv_vss_protocol::vss::NoReplyReason;
use hv_vss_protocol::{HvStatus, VssOperation};
use hv_vss_ring::Corruption;
use hv_vss_sim::host::self_test_guest::{self, FixedPolicy, SelfTestSummary, ServeEnd};
use hv_vss_sim::host::{
    ExchangeOutcome, HostConfig, HostSimulator, MalformedOffer, NegotiationResult, ReplyViolation,
    RingCorruption, SimError,
};
use hv_vss_vmbus::ic_endpoint::{DropReason, EndpointError, IcEndpoint, IcEvent, IcNotice};
use hv_vss_vmbus::shm::{InterruptMaskModel, ShmChannel};
use hv_vss_vmbus::uio::VmbusChannel;
use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};

const SILENCE: Duration = Duration::from_millis(150);

type GuestResult = (
    Result<SelfTestSummary, EndpointError>,
    IcEndpoint<ShmChannel>,
);

struct Guest {
    stop: OwnedFd,
    thread: JoinHandle<GuestResult>,
}

impl Guest {
    fn finish(self) -> GuestResult {
        drop(self.stop);
        self.thread.join().expect("guest thread panicked")
    }
}

fn start(config: HostConfig) -> (HostSimulator, Guest) {
    let (sim, rings) = HostSimulator::create(
        64 * 1024,
        config.with_reply_timeout(Duration::from_secs(10)),
    )
    .unwrap();
    let (stop, stop_peer) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let channel = rings.guest().unwrap();
    let thread = std::thread::spawn(move || {
        let mut endpoint = IcEndpoint::new(channel);
        let r = self_test_guest::serve(&mut endpoint, FixedPolicy::ALWAYS_OK, stop_peer.as_fd());
        (r, endpoint)
    });
    (sim, Guest { stop, thread })
}

fn dropped(notices: &[IcNotice]) -> Vec<DropReason> {
    notices
        .iter()
        .filter_map(|n| match n {
            IcNotice::Dropped { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn garbage_gets_no_reply_and_the_guest_keeps_serving() {
    for model in InterruptMaskModel::ALL {
        let (mut sim, guest) = start(HostConfig::default().with_mask_model(model));
        assert!(matches!(
            sim.negotiate().unwrap(),
            hv_vss_sim::host::NegotiationResult::Agreed { .. }
        ));
        let mut tickets = Vec::new();
        for (i, len) in [0usize, 5, 27, 28, 100, 2000, 12_000]
            .into_iter()
            .enumerate()
        {
            tickets.push(sim.post_garbage(len, i as u64 + 1).unwrap());
        }
        for t in tickets {
            // The seeds are fixed; none of these byte strings frames as NEGOTIATE or VSS.
            sim.expect_no_reply(t, SILENCE).unwrap();
        }
        assert!(sim.hot_backup().unwrap().is_ok());
        assert!(sim.freeze().unwrap().is_ok());
        assert!(sim.thaw().unwrap().is_ok());
        let (r, _) = guest.finish();
        let summary = r.unwrap();
        assert_eq!(summary.requests, 3);
        assert_eq!(dropped(&summary.notices).len(), 7);
    }
}

#[test]
fn truncated_and_non_vss_packets_get_no_reply() {
    for model in InterruptMaskModel::ALL {
        let (mut sim, guest) = start(HostConfig::default().with_mask_model(model));
        sim.negotiate().unwrap();
        let t = sim.post_truncated_vss(VssOperation::FREEZE, 32).unwrap();
        sim.expect_no_reply(t, SILENCE).unwrap();
        let t = sim
            .post_truncated_vss(VssOperation::HOT_BACKUP, 28)
            .unwrap();
        sim.expect_no_reply(t, SILENCE).unwrap();
        for msg_type in [1u16, 2, 3, 7, 42] {
            let t = sim.post_non_vss(msg_type).unwrap();
            sim.expect_no_reply(t, SILENCE).unwrap();
        }
        assert!(sim.freeze().unwrap().is_ok(), "still serving");
        assert!(sim.thaw().unwrap().is_ok());
        for e in &sim.exchanges()[1..8] {
            assert_eq!(e.outcome, ExchangeOutcome::Silent, "{e:?}");
        }
        let (r, endpoint) = guest.finish();
        let reasons = dropped(&r.unwrap().notices);
        assert_eq!(endpoint.stats().dropped, 7);
        assert!(reasons.contains(&DropReason::NotForUs(NoReplyReason::TooShort { len: 32 })));
        assert!(reasons.iter().any(|r| matches!(
            r,
            DropReason::NotForUs(NoReplyReason::UnexpectedType(t)) if t.0 == 42
        )));
    }
}

#[test]
fn local_operations_are_answered_per_the_table() {
    for model in InterruptMaskModel::ALL {
        let (mut sim, guest) = start(HostConfig::default().with_mask_model(model));
        sim.negotiate().unwrap();
        let dm = sim.get_dm_info().unwrap();
        assert_eq!((dm.status, dm.flags), (HvStatus::S_OK, 0));
        // GET_DM_INFO flags are cleared even if the host set some.
        let t = sim
            .post_vss(VssOperation::GET_DM_INFO, 0xdead_beef, &[])
            .unwrap();
        assert_eq!(sim.await_vss(t).unwrap().flags, 0);
        for op in [
            VssOperation::CREATE,
            VssOperation::DELETE,
            VssOperation::AUTO_RECOVER,
            VssOperation::BU_COMPLETE,
        ] {
            assert_eq!(sim.request(op).unwrap().status, HvStatus::S_OK, "{op}");
        }
        for code in [8u8, 9, 127, 128, 129, 255] {
            let r = sim.request(VssOperation(code)).unwrap();
            assert_eq!(r.status, HvStatus::E_FAIL, "unknown op {code}");
        }
        // AUTO_RECOVER with its largest body is echoed too.
        let t = sim
            .post_vss(VssOperation::AUTO_RECOVER, 0, &vec![3u8; 12_488])
            .unwrap();
        assert!(sim.await_vss(t).unwrap().is_ok());
        let (r, endpoint) = guest.finish();
        let summary = r.unwrap();
        assert_eq!(summary.requests, 0, "nothing reached the coordinator");
        assert_eq!(summary.backup_completes, 1);
        let unknown = summary
            .notices
            .iter()
            .filter(|n| matches!(n, IcNotice::UnknownOperation { .. }))
            .count();
        assert_eq!(unknown, 6);
        assert_eq!(endpoint.stats().delivered, 0);
    }
}

#[test]
fn duplicate_trans_id_gets_two_replies() {
    for model in InterruptMaskModel::ALL {
        let (mut sim, guest) = start(HostConfig::default().with_mask_model(model));
        sim.negotiate().unwrap();
        let (a, b) = sim.post_duplicate(VssOperation::HOT_BACKUP).unwrap();
        assert_eq!(a.trans_id, b.trans_id);
        assert!(sim.await_vss(a).unwrap().is_ok());
        assert!(sim.await_vss(b).unwrap().is_ok());
        assert!(sim.unmatched_replies().is_empty());
        let (r, _) = guest.finish();
        assert_eq!(r.unwrap().requests, 2);
    }
}

/// Wire §6.3: a FREEZE body of 12,500 bytes (OpenVMM's `Message2Ex`) is received, echoed
/// byte for byte (the simulator's checker compares every byte) and answered.
#[test]
fn a_12500_byte_freeze_is_answered_with_every_byte_echoed() {
    for model in InterruptMaskModel::ALL {
        let (mut sim, guest) = start(HostConfig::default().with_mask_model(model));
        sim.negotiate().unwrap();
        let lun: Vec<u8> = (0..12_488u32).map(|i| (i % 251) as u8).collect();
        let reply = sim.freeze_with_lun(&lun).unwrap();
        assert_eq!(reply.status, HvStatus::S_OK);
        assert!(matches!(
            sim.freeze_with_lun(&[0; 12_489]),
            Err(SimError::Build(_))
        ));
        assert!(sim.thaw().unwrap().is_ok());
        guest.finish().0.unwrap();
    }
}

/// Wire §4.2, R10: `icmsgsize` too large, too small and zero on a FREEZE: each is served
/// from the bytes that arrived (S_OK, every byte echoed), and the mismatch is noticed.
#[test]
fn a_freeze_with_a_wrong_icmsgsize_is_served_from_the_bytes_that_arrived() {
    for model in InterruptMaskModel::ALL {
        let (mut sim, guest) = start(HostConfig::default().with_mask_model(model));
        sim.negotiate().unwrap();
        let lun = [0x5a; 20];
        for icmsgsize in [0xffff, 40, 4, 0] {
            let t = sim
                .post_vss_with_icmsgsize(VssOperation::FREEZE, &lun, icmsgsize)
                .unwrap();
            let reply = sim.await_vss(t).unwrap();
            assert_eq!(reply.status, HvStatus::S_OK, "icmsgsize {icmsgsize}");
            assert!(sim.thaw().unwrap().is_ok());
        }
        let (r, _) = guest.finish();
        let summary = r.unwrap();
        assert_eq!(summary.requests, 8);
        let mismatches: Vec<u16> = summary
            .notices
            .iter()
            .filter_map(|n| match n {
                IcNotice::IcmsgsizeMismatch { declared, .. } => Some(*declared),
                _ => None,
            })
            .collect();
        assert_eq!(mismatches, [0xffff, 40, 4, 0]);
    }
}

/// R3: malformed and repeated NEGOTIATEs are all answered (counts 0, icmsgsize 16, E_FAIL:
/// the simulator's checker insists on each); a good one afterwards still agrees.
#[test]
fn malformed_and_repeated_negotiates_are_all_answered() {
    for model in InterruptMaskModel::ALL {
        let (mut sim, guest) = start(HostConfig::vss_4_0_only().with_mask_model(model));
        for _ in 0..4 {
            assert!(matches!(
                sim.negotiate().unwrap(),
                NegotiationResult::Refused { .. }
            ));
        }
        for how in [
            MalformedOffer::ZeroCount,
            MalformedOffer::CountAbove100,
            MalformedOffer::VersionsPastPayload,
        ] {
            let refused = sim.negotiate_malformed(how).unwrap();
            assert!(
                matches!(refused, NegotiationResult::Refused { .. }),
                "{how:?}"
            );
        }
        assert!(sim.unmatched_replies().is_empty());
        let (r, endpoint) = guest.finish();
        r.unwrap();
        assert_eq!(
            endpoint.negotiation(),
            hv_vss_vmbus::ic_endpoint::Negotiation::Failed
        );
        assert_eq!(endpoint.stats().answered_locally, 7);
        assert_eq!(endpoint.stats().dropped, 0);
    }
}

#[test]
fn a_request_with_no_guest_times_out_with_a_typed_error() {
    // Nobody serves the guest side.
    let (mut sim, _rings) = HostSimulator::create(
        64 * 1024,
        HostConfig::default().with_reply_timeout(Duration::from_millis(100)),
    )
    .unwrap();
    match sim.freeze() {
        Err(SimError::Timeout { waited, .. }) => assert_eq!(waited, Duration::from_millis(100)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(matches!(
        sim.exchanges()[0].outcome,
        ExchangeOutcome::TimedOut { .. }
    ));
}

#[test]
fn a_reply_that_breaks_the_spec_is_a_typed_violation() {
    // A hand-written "guest" that forgets flags 5 on HOT_BACKUP.
    let (mut sim, rings) = HostSimulator::create(64 * 1024, HostConfig::default()).unwrap();
    let mut guest = rings.guest().unwrap();
    let t = sim.post_vss(VssOperation::HOT_BACKUP, 0, &[]).unwrap();
    use hv_vss_vmbus::uio::VmbusChannel;
    let (id, mut payload) = {
        let p = guest.recv().unwrap().unwrap();
        (p.trans_id(), p.payload().to_vec())
    };
    payload[25] = 0x05;
    guest.send(id, &payload).unwrap();
    match sim.await_vss(t) {
        Err(SimError::Invalid { violation, .. }) => {
            assert_eq!(violation, ReplyViolation::HotBackupFlags(0));
        }
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn corrupt_rings_stop_the_endpoint_with_a_typed_error() {
    for model in InterruptMaskModel::ALL {
        for how in [
            RingCorruption::WriteIndexPastEnd,
            RingCorruption::WriteIndexUnaligned,
            RingCorruption::DescriptorOffset,
            RingCorruption::LengthPastWriteIndex,
        ] {
            let (mut sim, guest) = start(HostConfig::default().with_mask_model(model));
            sim.negotiate().unwrap();
            assert!(sim.hot_backup().unwrap().is_ok());
            sim.corrupt_ring(how).unwrap();
            assert!(matches!(sim.freeze(), Err(SimError::Corrupted)));
            // The guest thread returns on its own with the error; the stop socket is unused.
            let (r, mut endpoint) = guest.finish();
            let err = r.expect_err("a corrupt ring is an error");
            let want = match &err {
                EndpointError::Corrupt(Corruption::Index { .. }) => matches!(
                    how,
                    RingCorruption::WriteIndexPastEnd | RingCorruption::WriteIndexUnaligned
                ),
                EndpointError::Corrupt(Corruption::DescriptorOffset { offset8: 1, .. }) => {
                    how == RingCorruption::DescriptorOffset
                }
                EndpointError::Corrupt(Corruption::PacketPastWriteIndex { .. }) => {
                    how == RingCorruption::LengthPastWriteIndex
                }
                _ => false,
            };
            assert!(want, "{how:?} gave {err:?}");
            assert!(matches!(endpoint.service(), Err(EndpointError::Stopped(_))));
        }
    }
}

#[test]
fn oversize_packet_stops_the_endpoint() {
    for model in InterruptMaskModel::ALL {
        let (mut sim, guest) = start(HostConfig::default().with_mask_model(model));
        sim.negotiate().unwrap();
        let t = sim.post_garbage(20_000, 7).unwrap();
        let _ = sim.expect_no_reply(t, SILENCE);
        let (r, _) = guest.finish();
        assert!(matches!(r, Err(EndpointError::Oversize { .. })), "{r:?}");
    }
}

/// Wire §3.2, R15: after a rescind the kernel frees the ring pages while the guest still
/// maps them. A reply owed at that moment is not written: the endpoint polls the device
/// before the send, sees the error, unmaps, and the poisoned rings stay untouched.
#[test]
fn a_rescind_before_a_reply_leaves_the_freed_rings_untouched() {
    for model in InterruptMaskModel::ALL {
        let (mut sim, rings) =
            HostSimulator::create(64 * 1024, HostConfig::default().with_mask_model(model)).unwrap();
        let mut ep = IcEndpoint::new(rings.guest().unwrap());
        let n = sim.post_negotiate().unwrap();
        ep.service().unwrap();
        sim.await_negotiate(n).unwrap();
        sim.post_vss(VssOperation::FREEZE, 0, &[]).unwrap();
        let Some(IcEvent::Request(freeze)) = ep.service().unwrap().pop() else {
            panic!("no FREEZE came through");
        };
        sim.rescind().unwrap();
        assert!(
            matches!(
                ep.reply(freeze, HvStatus::S_OK),
                Err(EndpointError::Rescinded)
            ),
            "{model:?}"
        );
        assert!(!ep.channel().is_mapped(), "{model:?}: unmapped at once");
        assert!(matches!(ep.flush(), Err(EndpointError::Stopped(_))));
        sim.check_untouched_since_rescind()
            .unwrap_or_else(|e| panic!("{model:?}: {e}"));
        assert!(matches!(sim.freeze(), Err(SimError::Rescinded)));
    }
}

/// A guest waiting in its poll loop learns of the rescind from its fd, as from `POLLERR`
/// on `/dev/uioN`: it ends on its own (the stop socket stays open), unmaps, and writes
/// nothing into the freed rings.
#[test]
fn a_rescind_wakes_a_waiting_guest_which_writes_nothing() {
    for model in InterruptMaskModel::ALL {
        let (mut sim, guest) = start(HostConfig::default().with_mask_model(model));
        sim.negotiate().unwrap();
        assert!(sim.freeze().unwrap().is_ok());
        sim.rescind().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !guest.thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            guest.thread.is_finished(),
            "{model:?}: the guest kept waiting"
        );
        let (r, mut endpoint) = guest.finish();
        match r {
            Ok(report) => assert_eq!(report.ended_by, ServeEnd::HostGone, "{model:?}"),
            // The host poisons the rings before it hangs up (so that a late write shows):
            // a guest that happens to read them in between sees a corrupt ring and stops
            // there, which is as safe. Its next service call then meets the rescind.
            Err(e) => assert!(
                format!("{e:?}").contains("Corrupt"),
                "{model:?}: the guest ended with {e:?}"
            ),
        }
        assert!(matches!(
            endpoint.service(),
            Err(EndpointError::Stopped(why)) if why.contains("rescinded")
        ));
        assert!(!endpoint.channel().is_mapped());
        sim.check_untouched_since_rescind().unwrap();
    }
}
