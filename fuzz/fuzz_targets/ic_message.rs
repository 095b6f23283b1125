#![no_main]
//! Arbitrary bytes as an IC payload: parse, route, and build every reply; replies must keep
//! the request's length and carry icflags 0x05.
use hv_vss_protocol::HvStatus;
use hv_vss_protocol::ic::IcMessage;
use hv_vss_protocol::vss::{self, UioRoute, VssRequest};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(ic) = IcMessage::parse(data) else {
        return;
    };
    let _ = ic.pipe_msgsize_matches();
    let _ = ic.icmsgsize_matches();
    let _ = format!("{:?} {:?}", ic.msg_type(), ic.header().flags());
    for status in [HvStatus::S_OK, HvStatus::E_FAIL] {
        let reply = ic.reply(status);
        assert_eq!(reply.as_bytes().len(), data.len());
        assert_eq!(reply.as_bytes()[25], 0x05);
    }
    if let Ok(request) = VssRequest::parse(ic) {
        let _ = request.trailing();
        let reply = request.reply(HvStatus::E_FAIL);
        assert_eq!(reply.as_bytes().len(), data.len());
    }
    match vss::route_uio(ic) {
        UioRoute::AnswerLocally {
            request, status, ..
        } => {
            assert_eq!(request.reply(status).as_bytes().len(), data.len());
        }
        UioRoute::Coordinator { request, .. } => {
            assert_eq!(request.reply(HvStatus::S_OK).as_bytes().len(), data.len());
        }
        UioRoute::Negotiate | UioRoute::NoReply(_) => {}
    }
});
