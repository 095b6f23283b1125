//! hv-vssd's config file (/etc/hv-vss/hv-vss.toml): parsing, then resolving it over an
//! empty command line (every value validated, deadlines checked against each other). Any
//! text is a clear error or settings, never a panic.
#![no_main]

use std::path::Path;

use hv_vssd::config::{FileConfig, Overrides, Settings};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(file) = FileConfig::parse(text, Path::new("fuzz.toml"))
    {
        let _ = Settings::resolve(file, Overrides::default());
    }
});
