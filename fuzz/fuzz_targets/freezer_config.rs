#![no_main]
//! The `[freezer]` section of the daemon's TOML config: parse, then compile the globs.
//! Bad input must come back as an error, never a panic.
use hv_vss_freezer::FreezerConfig;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = FreezerConfig::from_toml_table(text, "freezer") {
        let _ = config.compile();
    }
});
