#![no_main]
//! Text the kernel or sysfs gives us: the release string `hv-vss uio bind` checks against
//! 6.10, and a UIO map size. Neither parser may panic, and an accepted release must satisfy
//! the version check consistently.
use hv_vss_vmbus::bind::{check_uio_kernel, parse_kernel_release};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_kernel_release(text);
    let checked = check_uio_kernel(text);
    if parsed.is_none() {
        assert!(
            checked.is_err(),
            "an unparsable release passed the check: {text:?}"
        );
    }
    let _ = hv_vss_sys::uio::parse_map_size(text);
});
