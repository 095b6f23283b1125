//! A request line on hv-vssd's control socket (`hv-vss status` talks to it; any local user
//! in the control group may write anything): never panics.
#![no_main]

use hv_vssd::control::parse_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_request(&String::from_utf8_lossy(data));
});
