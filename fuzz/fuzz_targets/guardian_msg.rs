#![no_main]
//! A datagram on the guardian's socket: decoding never panics, and what decodes encodes back
//! to the same bytes.
use hv_vss_freezer::guardian_wire::{decode, encode};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(msg) = decode(data) {
        assert_eq!(&encode(msg)[..], data);
    }
});
