#![no_main]
//! Arbitrary bytes as a NEGOTIATE offer (guest side) and as a guest reply (host side).
use hv_vss_protocol::Version;
use hv_vss_protocol::ic::IcMessage;
use hv_vss_protocol::negotiate::{self, NegotiateOffer, NegotiateOutcome};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(answer) = negotiate::guest_negotiate(data) {
        assert_eq!(answer.reply.as_bytes().len(), data.len());
        let read = negotiate::parse_reply(answer.reply.as_bytes()).expect("own reply parses");
        match answer.outcome {
            NegotiateOutcome::Agreed { framework, message } => {
                assert_eq!(read.chosen, Some((framework, message)));
            }
            NegotiateOutcome::Failed(_) => assert_eq!(read.chosen, None),
        }
    }
    if let Ok(ic) = IcMessage::parse(data) {
        if let Ok(offer) = NegotiateOffer::parse(ic) {
            let lists = [Version::new(1, 0), Version::new(3, 0), Version::new(5, 0)];
            let _ = offer.answer(&lists, &lists);
        }
    }
    let _ = negotiate::parse_reply(data);
    // Host side: arbitrary version lists.
    let versions: Vec<Version> = data
        .chunks_exact(4)
        .map(|c| Version::from_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let split = usize::from(data.first().copied().unwrap_or(0)).min(versions.len());
    if let Ok(offer) = negotiate::build_offer(&versions[..split], &versions[split..]) {
        let parsed = NegotiateOffer::parse(IcMessage::parse(&offer).expect("own offer parses"))
            .expect("own offer is valid");
        assert_eq!(parsed.framework_versions, &versions[..split]);
        assert_eq!(parsed.message_versions, &versions[split..]);
    }
});
