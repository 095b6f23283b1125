//! The integrations' TOML settings file (hv-vss-postgres, hv-vss-mariadb): never panics.
#![no_main]

use hv_vss_integrations::settings::FileSettings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = FileSettings::parse(text);
    }
});
