//! The app journal in the state directory (which clients are owed a thaw or abort across a
//! restart): a damaged file is an error, never a panic.
#![no_main]

use hv_vssd::apps::journal::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse(data);
});
