//! The report history as `hv-vss history`, `status` and `metrics` read it: any bytes are
//! records or skipped lines, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let loaded = hv_vss_history::parse(&String::from_utf8_lossy(data));
    assert!(loaded.records.len() + loaded.skipped.len() <= data.len() + 1);
});
