//! The memory a ring lives in: header control words as atomics, data area by copy.
//!
//! Kernel contract (`struct hv_ring_buffer`, include/linux/hyperv.h; wire-protocol.md §2.1):
//! one ring is a header of one system page followed by a data area of `dsize` bytes. The
//! header words the protocol uses sit at fixed byte offsets ([`HeaderWord::byte_offset`]);
//! the rest of the header page is padding. The peer writes this memory concurrently, so:
//!
//! - control words are only ever touched as [`AtomicU32`];
//! - the data area is never borrowed as `&[u8]`: bytes are copied in and out, and parsing
//!   works on the private copy.
//!
//! [`RingMem`] is implemented over a raw shared mapping in `hv-vss-sys` (production) and by
//! [`InProcessRing`] here (tests, fuzzing, single-process simulation).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

/// The control words of a ring header that the protocol uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeaderWord {
    /// `write_index`, offset 0x00, written by the producer.
    WriteIndex,
    /// `read_index`, offset 0x04, written by the consumer.
    ReadIndex,
    /// `interrupt_mask`, offset 0x08, written by the consumer (1 = do not interrupt me).
    InterruptMask,
    /// `pending_send_sz`, offset 0x0C, written by the producer (bytes it waits for; 0 = none).
    PendingSendSize,
    /// `feature_bits`, offset 0x40, written at ring setup (bit 0 = `feat_pending_send_sz`).
    FeatureBits,
}

impl HeaderWord {
    /// Every header word, in offset order.
    pub const ALL: [HeaderWord; 5] = [
        HeaderWord::WriteIndex,
        HeaderWord::ReadIndex,
        HeaderWord::InterruptMask,
        HeaderWord::PendingSendSize,
        HeaderWord::FeatureBits,
    ];

    /// Byte offset of the word from the start of the ring header.
    pub const fn byte_offset(self) -> usize {
        match self {
            HeaderWord::WriteIndex => 0x00,
            HeaderWord::ReadIndex => 0x04,
            HeaderWord::InterruptMask => 0x08,
            HeaderWord::PendingSendSize => 0x0c,
            HeaderWord::FeatureBits => 0x40,
        }
    }

    const fn slot(self) -> usize {
        match self {
            HeaderWord::WriteIndex => 0,
            HeaderWord::ReadIndex => 1,
            HeaderWord::InterruptMask => 2,
            HeaderWord::PendingSendSize => 3,
            HeaderWord::FeatureBits => 4,
        }
    }
}

/// Bytes of the header that carry meaning (up to and including `feature_bits`). The real
/// header is one system page; everything past this is padding.
pub const HEADER_USED_LEN: usize = 0x44;

/// `feature_bits` bit 0: the consumer honours `pending_send_sz`.
pub const FEATURE_PENDING_SEND_SIZE: u32 = 1;

/// Memory holding one ring: header control words and a data area of [`RingMem::data_len`]
/// bytes.
///
/// Contract for implementors: `read_data` and `write_data` copy exactly `buf.len()` bytes at
/// `offset` with volatile or atomic accesses (the peer may write concurrently; torn bytes are
/// acceptable, undefined behaviour is not). Callers guarantee `offset + buf.len() <=
/// data_len()`; the ring reader and writer in this crate only ever call with validated
/// ranges, so implementations may panic on a violation (it is a bug in this crate, never
/// something the peer can trigger).
pub trait RingMem {
    /// The control word `word` of the ring header.
    fn header_word(&self, word: HeaderWord) -> &AtomicU32;
    /// Size of the data area (`dsize`): ring size minus the header page.
    fn data_len(&self) -> usize;
    /// Copies `buf.len()` bytes out of the data area, starting at `offset`.
    fn read_data(&self, offset: usize, buf: &mut [u8]);
    /// Copies `buf` into the data area, starting at `offset`.
    fn write_data(&self, offset: usize, buf: &[u8]);
}

impl<T: RingMem + ?Sized> RingMem for &T {
    fn header_word(&self, word: HeaderWord) -> &AtomicU32 {
        (**self).header_word(word)
    }
    fn data_len(&self) -> usize {
        (**self).data_len()
    }
    fn read_data(&self, offset: usize, buf: &mut [u8]) {
        (**self).read_data(offset, buf)
    }
    fn write_data(&self, offset: usize, buf: &[u8]) {
        (**self).write_data(offset, buf)
    }
}

impl<T: RingMem + ?Sized> RingMem for Arc<T> {
    fn header_word(&self, word: HeaderWord) -> &AtomicU32 {
        (**self).header_word(word)
    }
    fn data_len(&self) -> usize {
        (**self).data_len()
    }
    fn read_data(&self, offset: usize, buf: &mut [u8]) {
        (**self).read_data(offset, buf)
    }
    fn write_data(&self, offset: usize, buf: &[u8]) {
        (**self).write_data(offset, buf)
    }
}

/// A ring in ordinary process memory: header words and data bytes as atomics.
///
/// Safe and shareable between threads (wrap it in an [`Arc`] and hand one clone to the
/// reader, one to the writer). Out-of-range copies panic, which is what the tests and the
/// fuzz target rely on to catch an out-of-bounds access by the reader or writer.
#[derive(Debug)]
pub struct InProcessRing {
    header: [AtomicU32; 5],
    data: Box<[AtomicU8]>,
}

impl InProcessRing {
    /// An empty ring with a data area of `data_len` bytes and `feature_bits` = 1, as the
    /// kernel sets it up.
    pub fn new(data_len: usize) -> Self {
        let ring = Self {
            header: Default::default(),
            data: (0..data_len).map(|_| AtomicU8::new(0)).collect(),
        };
        ring.header_word(HeaderWord::FeatureBits)
            .store(FEATURE_PENDING_SEND_SIZE, Ordering::Relaxed);
        ring
    }

    /// A ring whose memory is `bytes` laid out as the real thing: a header of `header_len`
    /// bytes (words at their offsets; missing bytes read as zero) then the data area.
    /// Whatever the bytes say, including nonsense, is taken as is (for fuzzing).
    pub fn from_bytes(header_len: usize, bytes: &[u8]) -> Self {
        let word = |w: HeaderWord| {
            let mut b = [0u8; 4];
            for (i, slot) in b.iter_mut().enumerate() {
                let at = w.byte_offset() + i;
                if at < header_len {
                    *slot = bytes.get(at).copied().unwrap_or(0);
                }
            }
            AtomicU32::new(u32::from_le_bytes(b))
        };
        let data = bytes.get(header_len..).unwrap_or(&[]);
        Self {
            header: HeaderWord::ALL.map(word),
            data: data.iter().map(|&b| AtomicU8::new(b)).collect(),
        }
    }
}

impl RingMem for InProcessRing {
    fn header_word(&self, word: HeaderWord) -> &AtomicU32 {
        &self.header[word.slot()]
    }

    fn data_len(&self) -> usize {
        self.data.len()
    }

    fn read_data(&self, offset: usize, buf: &mut [u8]) {
        let src = &self.data[offset..offset + buf.len()];
        for (dst, src) in buf.iter_mut().zip(src) {
            *dst = src.load(Ordering::Relaxed);
        }
    }

    fn write_data(&self, offset: usize, buf: &[u8]) {
        let dst = &self.data[offset..offset + buf.len()];
        for (dst, src) in dst.iter().zip(buf) {
            dst.store(*src, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_offsets_match_struct_hv_ring_buffer() {
        let offsets = HeaderWord::ALL.map(HeaderWord::byte_offset);
        assert_eq!(offsets, [0x00, 0x04, 0x08, 0x0c, 0x40]);
        assert_eq!(HEADER_USED_LEN, 0x40 + 4);
    }

    #[test]
    fn from_bytes_places_words_and_data() {
        let mut bytes = vec![0u8; 0x48 + 16];
        bytes[0..4].copy_from_slice(&0x18u32.to_le_bytes());
        bytes[4..8].copy_from_slice(&0x08u32.to_le_bytes());
        bytes[0x40] = 1;
        bytes[0x48] = 0xaa;
        let ring = InProcessRing::from_bytes(0x48, &bytes);
        let load = |w| ring.header_word(w).load(Ordering::Relaxed);
        assert_eq!(load(HeaderWord::WriteIndex), 0x18);
        assert_eq!(load(HeaderWord::ReadIndex), 0x08);
        assert_eq!(load(HeaderWord::FeatureBits), 1);
        assert_eq!(ring.data_len(), 16);
        let mut b = [0u8; 2];
        ring.read_data(0, &mut b);
        assert_eq!(b, [0xaa, 0]);
    }

    #[test]
    fn from_short_bytes_gives_zero_words_and_no_data() {
        let ring = InProcessRing::from_bytes(0x48, &[1, 2]);
        assert_eq!(
            ring.header_word(HeaderWord::WriteIndex)
                .load(Ordering::Relaxed),
            0x0201
        );
        assert_eq!(ring.data_len(), 0);
    }
}
