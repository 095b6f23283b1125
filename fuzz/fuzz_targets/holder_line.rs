#![no_main]
//! A line of the FreeBSD freeze holder (`hv_vss_freezer::holder_process`) as hv-vssd reads
//! it from the child's stdout: anything must come back as a message or an error, never a
//! panic, and a message must survive a round trip.
use hv_vss_freezer::holder_process::{HolderLine, parse_line};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(line) = parse_line(data) {
        let again = serde_json::to_vec(&line).expect("a parsed line serializes");
        let back: HolderLine = parse_line(&again).expect("a serialized line parses");
        assert_eq!(back, line);
    }
});
