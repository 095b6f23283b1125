#![no_main]
//! The lines of the FreeBSD freeze holder protocol (`hv_vss_freezer::holder_process`): a
//! line of the child as hv-vssd reads it from the child's stdout (`frozen`, `failed`,
//! `thawed` with its reason), and a line of hv-vssd as the child reads it from its stdin
//! (`heartbeat`). Anything must come back as a message or an error, never a panic, and a
//! message must survive a round trip.
use hv_vss_freezer::holder_process::{HolderLine, ParentLine, parse_line, parse_parent_line};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(line) = parse_line(data) {
        let again = serde_json::to_vec(&line).expect("a parsed line serializes");
        let back: HolderLine = parse_line(&again).expect("a serialized line parses");
        assert_eq!(back, line);
    }
    if let Ok(line) = parse_parent_line(data) {
        let again = serde_json::to_vec(&line).expect("a parsed line serializes");
        let back: ParentLine = parse_parent_line(&again).expect("a serialized line parses");
        assert_eq!(back, line);
    }
});
