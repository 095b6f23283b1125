#![no_main]
//! Text the kernel or sysfs gives us: the release string `hv-vss uio bind` prints as a hint
//! (compared with 6.10), a UIO map size, and a block device's `stat` line (the flush
//! ahead's write counter). No parser may panic, and the hint must agree with the parser.
use hv_vss_vmbus::bind::{KernelHint, MIN_UIO_KERNEL, parse_kernel_release};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_kernel_release(text);
    let hint = KernelHint::from_release(Some(text));
    assert_eq!(hint.version, parsed);
    assert_eq!(hint.at_least_6_10(), parsed.map(|v| v >= MIN_UIO_KERNEL));
    let _ = hint.to_string();
    let _ = hv_vss_sys::uio::parse_map_size(text);
    let _ = hv_vss_freezer::flush_ahead::parse_sectors_written(text);
});
