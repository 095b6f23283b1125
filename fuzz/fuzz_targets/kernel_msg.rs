#![no_main]
//! Arbitrary bytes as every /dev/vmbus/hv_vss message, daemon side and kernel side.
use hv_vss_protocol::HvStatus;
use hv_vss_protocol::kernel::{self, DaemonMessage};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = kernel::parse_handshake_reply(data);
    if let Ok(request) = kernel::parse_request(data) {
        assert_eq!(data.len(), 12);
        assert_eq!(kernel::build_request(request.op)[0], data[0]);
    }
    if let Ok(message) = kernel::parse_daemon_message(data) {
        if let DaemonMessage::Reply(status) = message {
            assert_eq!(
                kernel::parse_daemon_reply(&kernel::build_reply(status)),
                Ok(status)
            );
        }
    }
    if let Ok(status) = kernel::parse_daemon_reply(data) {
        assert_eq!(&kernel::build_reply(status)[..4], &data[..4]);
    }
    if data.len() >= 4 {
        let status = HvStatus(u32::from_le_bytes([data[0], data[1], data[2], data[3]]));
        assert_eq!(kernel::build_reply(status).len(), 12);
    }
});
