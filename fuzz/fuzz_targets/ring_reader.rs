//! Arbitrary bytes become one ring's memory (a 0x48-byte header, then the data area); the
//! reader drains it until it stops. It must never panic: `InProcessRing` panics on any
//! out-of-range copy, so an out-of-bounds read by the reader is a crash here.
#![no_main]

use hv_vss_ring::{InProcessRing, RingReader, RingWriter};

/// Header bytes in the input: enough for every control word (the real header is a page).
const HEADER_LEN: usize = 0x48;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let ring = InProcessRing::from_bytes(HEADER_LEN, data);
    if let Ok(mut reader) = RingReader::new(&ring) {
        for _ in 0..1024 {
            match reader.read() {
                Ok(got) => {
                    let _ = got.packet.payload();
                }
                Err(_) => break,
            }
        }
        let _ = reader.unmask_and_recheck();
    }
    // The writer must cope with whatever read_index the peer left.
    if let Ok(mut writer) = RingWriter::new(&ring) {
        let _ = writer.write(1, &data[..data.len().min(64)]);
    }
});
