//! Application socket lines from clients and the daemon, and the line framer: never panic.
#![no_main]

use hv_vss_app_protocol::{LineBuffer, parse_client_line, parse_daemon_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_client_line(data);
    let _ = parse_daemon_line(data);
    let mut lines = LineBuffer::new();
    for chunk in data.chunks(7) {
        lines.push(chunk);
        while let Ok(Some(line)) = lines.next_line() {
            let _ = parse_client_line(&line);
        }
    }
});
