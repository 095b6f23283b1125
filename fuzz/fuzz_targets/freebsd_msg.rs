#![no_main]
//! Arbitrary bytes as a FreeBSD `hv_vss_opt_msg` READ result and ack.
use hv_vss_protocol::freebsd::{self, ReadResult};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(msg) = freebsd::parse_opt_msg(data) else {
        assert_ne!(data.len(), freebsd::OPT_MSG_LEN);
        return;
    };
    assert_eq!(&msg.to_bytes()[..], data);
    if let Ok(ReadResult::Request { opt, msgid }) = freebsd::classify_read(&msg) {
        assert!(opt.is_request());
        let ack = freebsd::build_ack(opt, msgid, true);
        assert_eq!(freebsd::parse_opt_msg(&ack.to_bytes()), Ok(ack));
    }
});
