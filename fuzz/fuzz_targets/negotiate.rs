#![no_main]
// Placeholder: filled in by the owner of the parser.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = data;
});
