#![no_main]
//! A datagram on the guardian's socket: decoding (fixed messages and log lines) never panics,
//! what decodes encodes back to the same bytes, and every message carrying a device (`Arm`, `Confirm`, `Disarm`) round
//! trips whatever the device number.
use hv_vss_freezer::DevNum;
use hv_vss_freezer::guardian_wire::{
    GuardianMsg, MAX_LOG_LINE, decode, decode_log_line, encode, encode_log_line,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(msg) = decode(data) {
        assert_eq!(&encode(msg)[..], data);
    }
    if let Some(line) = decode_log_line(data) {
        assert!(line.len() <= MAX_LOG_LINE);
        assert_eq!(encode_log_line(line), data);
    }
    if let Some(bytes) = data.get(..8) {
        let v = u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]));
        let dev = DevNum {
            major: (v >> 32) as u32,
            minor: v as u32,
        };
        for msg in [
            GuardianMsg::Arm(dev),
            GuardianMsg::Confirm(dev),
            GuardianMsg::Disarm(dev),
        ] {
            assert_eq!(decode(&encode(msg)), Some(msg));
        }
    }
});
