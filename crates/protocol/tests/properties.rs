//! Property tests: encode/decode round trips, reply invariants, and "parsers never panic".

use hv_vss_protocol::ic::{IcMessage, IcMsgType, MAX_IC_PAYLOAD_LEN, Version};
use hv_vss_protocol::kernel::{self, DaemonMessage};
use hv_vss_protocol::negotiate::{self, NegotiateOffer};
use hv_vss_protocol::vss::{self, VssOperation, VssRequest};
use hv_vss_protocol::{HvStatus, vmbus};
use proptest::prelude::*;

fn version() -> impl Strategy<Value = Version> {
    (0u16..10, 0u16..3).prop_map(|(a, b)| Version::new(a, b))
}

proptest! {
    #[test]
    fn vss_request_round_trips(op: u8, flags: u32, trailing in proptest::collection::vec(any::<u8>(), 0..300)) {
        let bytes = vss::build_request(VssOperation(op), flags, &trailing).unwrap();
        let ic = IcMessage::parse(&bytes).unwrap();
        prop_assert!(ic.pipe_msgsize_matches());
        prop_assert_eq!(ic.msg_type(), IcMsgType::VSS);
        let r = VssRequest::parse(ic).unwrap();
        prop_assert_eq!(r.op(), VssOperation(op));
        prop_assert_eq!(r.flags(), flags);
        prop_assert_eq!(r.trailing(), &trailing[..]);
    }

    #[test]
    fn every_reply_is_the_request_with_status_flags_and_vss_flags_edited(
        op: u8, flags: u32, ok: bool, trailing in proptest::collection::vec(any::<u8>(), 0..64)
    ) {
        let bytes = vss::build_request(VssOperation(op), flags, &trailing).unwrap();
        let r = VssRequest::parse(IcMessage::parse(&bytes).unwrap()).unwrap();
        let status = HvStatus::from_success(ok);
        let reply = r.reply(status);
        let out = reply.as_bytes();
        prop_assert_eq!(out.len(), bytes.len());
        prop_assert_eq!(&out[20..24], &status.0.to_le_bytes());
        prop_assert_eq!(out[25], 0x05);
        let expect_flags = match VssOperation(op) {
            VssOperation::HOT_BACKUP => 5,
            VssOperation::GET_DM_INFO => 0,
            _ => flags,
        };
        prop_assert_eq!(&out[36..40], &expect_flags.to_le_bytes());
        for i in (0..bytes.len()).filter(|i| !(20..24).contains(i) && *i != 25 && !(36..40).contains(i)) {
            prop_assert_eq!(out[i], bytes[i], "byte {} changed", i);
        }
    }

    #[test]
    fn negotiate_offer_round_trips_and_answer_is_consistent(
        fw in proptest::collection::vec(version(), 1..8),
        msg in proptest::collection::vec(version(), 1..8),
    ) {
        let bytes = negotiate::build_offer(&fw, &msg).unwrap();
        let offer = NegotiateOffer::parse(IcMessage::parse(&bytes).unwrap()).unwrap();
        prop_assert_eq!(&offer.framework_versions, &fw);
        prop_assert_eq!(&offer.message_versions, &msg);
        let answer = negotiate::guest_negotiate(&bytes).unwrap();
        prop_assert_eq!(answer.reply.as_bytes().len(), bytes.len());
        let read = negotiate::parse_reply(answer.reply.as_bytes()).unwrap();
        let supported = fw.contains(&Version::new(3, 0)) && msg.contains(&Version::new(5, 0));
        if supported {
            prop_assert_eq!(read.status, HvStatus::S_OK);
            prop_assert_eq!(read.chosen, Some((Version::new(3, 0), Version::new(5, 0))));
        } else {
            prop_assert_eq!(read.status, HvStatus::E_FAIL);
            prop_assert_eq!(read.chosen, None);
        }
    }

    #[test]
    fn kernel_messages_round_trip(op: u8, status: u32) {
        let req = kernel::build_request(VssOperation(op));
        prop_assert_eq!(kernel::parse_request(&req).unwrap().op, VssOperation(op));
        let reply = kernel::build_reply(HvStatus(status));
        prop_assert_eq!(kernel::parse_daemon_reply(&reply).unwrap(), HvStatus(status));
        let classified = kernel::parse_daemon_message(&reply).unwrap();
        match status as u8 {
            128 => prop_assert_eq!(classified, DaemonMessage::Register),
            129 => prop_assert_eq!(classified, DaemonMessage::Register1),
            _ => prop_assert_eq!(classified, DaemonMessage::Reply(HvStatus(status))),
        }
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(ic) = IcMessage::parse(&bytes) {
            let reply = ic.reply(HvStatus::E_FAIL);
            prop_assert_eq!(reply.as_bytes().len(), bytes.len());
            let _ = vss::route_uio(ic);
            if let Ok(offer) = NegotiateOffer::parse(ic) {
                let a = offer.answer(&[Version::new(3, 0)], &[Version::new(5, 0)]);
                prop_assert_eq!(a.reply.as_bytes().len(), bytes.len());
            }
        }
        let _ = negotiate::parse_reply(&bytes);
        let _ = kernel::parse_request(&bytes);
        let _ = kernel::parse_handshake_reply(&bytes);
        let _ = kernel::parse_daemon_message(&bytes);
        let _ = vmbus::PacketDescriptor::parse(&bytes);
    }
}

#[test]
fn oversized_payload_is_rejected_at_the_limit() {
    let body = vec![0u8; MAX_IC_PAYLOAD_LEN - 28];
    let at_limit = vss::build_request(VssOperation::FREEZE, 0, &body[12..]).unwrap();
    assert_eq!(at_limit.len(), MAX_IC_PAYLOAD_LEN);
    assert!(IcMessage::parse(&at_limit).is_ok());
    assert!(vss::build_request(VssOperation::FREEZE, 0, &body[11..]).is_err());
}

/// Worked example 11.3: the NEGOTIATE of 11.1 as a whole ring packet, descriptor to trailer.
#[test]
fn example_11_3_whole_packet() {
    let offer = negotiate::build_offer(
        &[Version::new(1, 0), Version::new(3, 0)],
        &[Version::new(5, 0)],
    )
    .unwrap();
    let desc = vmbus::PacketDescriptor::inband(offer.len(), 0x2a).unwrap();
    let mut packet = zerocopy::IntoBytes::as_bytes(&desc).to_vec();
    packet.extend_from_slice(&offer);
    packet.resize(desc.len_bytes(), 0);
    packet.extend_from_slice(&vmbus::trailer(0x180).to_le_bytes());
    assert_eq!(packet.len(), 72);
    assert_eq!(
        &packet[..16],
        &[6, 0, 2, 0, 8, 0, 0, 0, 0x2a, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(&packet[64..], &[0, 0, 0, 0, 0x80, 0x01, 0, 0]);
    let parsed = vmbus::PacketDescriptor::parse(&packet).unwrap();
    let payload = &packet[parsed.payload_offset()..parsed.len_bytes()];
    let answer = negotiate::guest_negotiate(payload).unwrap();
    assert_eq!(
        &answer.reply.as_bytes()[0x24..0x2c],
        &[3, 0, 0, 0, 5, 0, 0, 0]
    );
}
