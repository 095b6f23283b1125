//! The producer half of a ring (wire-protocol.md §2.5): the guest on TX, the host on RX.

use std::sync::atomic::{Ordering, fence};

use hv_vss_protocol::vmbus::{
    DESCRIPTOR_LEN, PacketDescriptor, PacketType, TRAILER_LEN, packet_len, trailer,
};

use crate::mem::{HeaderWord, RingMem};
use crate::{RingError, bytes_free, checked_data_len, checked_index};

/// The result of queuing one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "the consumer may be waiting: signal it when signal_peer is set"]
pub struct Sent {
    /// Data-area offset where the packet starts (the trailer's upper half).
    pub start_offset: u32,
    /// Ring bytes used (`len8 * 8 + 8`).
    pub ring_len: usize,
    /// True when §2.5 step 5 says to signal: the consumer's `interrupt_mask` is clear and
    /// the ring went from empty to non-empty. The caller signals the peer.
    pub signal_peer: bool,
}

/// Producer of one ring. Keeps its write position privately and publishes it to
/// `write_index` after each packet.
#[derive(Debug)]
pub struct RingWriter<M> {
    mem: M,
    data_len: u32,
    write_pos: u32,
}

impl<M: RingMem> RingWriter<M> {
    /// A writer starting at the ring's current `write_index` (validated).
    pub fn new(mem: M) -> Result<Self, RingError> {
        let data_len = checked_data_len(mem.data_len())?;
        let write_index = mem
            .header_word(HeaderWord::WriteIndex)
            .load(Ordering::Acquire);
        let write_pos = checked_index(HeaderWord::WriteIndex, write_index, data_len)?;
        Ok(Self {
            mem,
            data_len,
            write_pos,
        })
    }

    /// The ring memory.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// The private write position (what was last published to `write_index`).
    pub fn write_pos(&self) -> u32 {
        self.write_pos
    }

    /// Largest payload that fits this ring when it is empty (one byte always stays free).
    pub fn max_payload(&self) -> usize {
        // ring_len = roundup8(16 + payload) + 8 must be < data_len (a multiple of 8), so
        // ring_len <= data_len - 8 and payload <= data_len - 32; also bounded by len8.
        let by_ring = (self.data_len as usize).saturating_sub(DESCRIPTOR_LEN + TRAILER_LEN + 8);
        by_ring.min(usize::from(u16::MAX) * 8 - DESCRIPTOR_LEN)
    }

    /// Acquire-loads and validates the consumer's `read_index` (§2.6 row 1).
    fn load_read_index(&self) -> Result<u32, RingError> {
        let r = self
            .mem
            .header_word(HeaderWord::ReadIndex)
            .load(Ordering::Acquire);
        checked_index(HeaderWord::ReadIndex, r, self.data_len)
    }

    /// Free bytes in the ring now.
    pub fn free(&self) -> Result<usize, RingError> {
        Ok(bytes_free(self.write_pos, self.load_read_index()?, self.data_len) as usize)
    }

    /// Copies `bytes` at data offset `at`, split at the wrap point; returns the offset after
    /// them. Callers guarantee `at < data_len` and `bytes.len() < data_len`.
    fn copy_in(&self, at: u32, bytes: &[u8]) -> u32 {
        let d = self.data_len as usize;
        let at = at as usize;
        let first = bytes.len().min(d - at);
        self.mem.write_data(at, &bytes[..first]);
        if first < bytes.len() {
            self.mem.write_data(0, &bytes[first..]);
        }
        ((at + bytes.len()) % d) as u32
    }

    /// Queues an in-band data packet (type 6, flags 0) carrying `payload` with `trans_id`.
    pub fn write(&mut self, trans_id: u64, payload: &[u8]) -> Result<Sent, RingError> {
        self.write_packet(PacketType::DATA_INBAND, 0, trans_id, payload)
    }

    /// Queues a packet with an explicit type and flags (§2.5 steps 1–5).
    ///
    /// Errors: [`RingError::Full`] (nothing written; see [`RingWriter::request_space`]),
    /// [`RingError::PayloadTooLarge`], [`RingError::Corrupt`] for a bad `read_index`.
    pub fn write_packet(
        &mut self,
        packet_type: PacketType,
        flags: u16,
        trans_id: u64,
        payload: &[u8],
    ) -> Result<Sent, RingError> {
        // Step 1: sizes and descriptor.
        let too_large = RingError::PayloadTooLarge {
            payload_len: payload.len(),
            max_payload: self.max_payload(),
        };
        let len = packet_len(payload.len()).ok_or(too_large)?;
        let needed = len + TRAILER_LEN;
        if needed >= self.data_len as usize {
            return Err(too_large);
        }
        let mut descriptor = PacketDescriptor::inband(payload.len(), trans_id).ok_or(too_large)?;
        descriptor.packet_type.set(packet_type.0);
        descriptor.flags.set(flags);

        // Step 2: room? `free <= needed` is full (one byte always stays free).
        let read = self.load_read_index()?;
        let free = bytes_free(self.write_pos, read, self.data_len) as usize;
        if free <= needed {
            return Err(RingError::Full { needed, free });
        }

        // Step 3: descriptor, payload, zero padding, trailer at the old write position.
        let old_write = self.write_pos;
        let mut at = self.copy_in(old_write, &descriptor_bytes(&descriptor));
        at = self.copy_in(at, payload);
        let padding = len - DESCRIPTOR_LEN - payload.len();
        at = self.copy_in(at, &[0u8; 8][..padding]);
        let new_write = self.copy_in(at, &trailer(old_write).to_le_bytes());

        // Step 4: full fence, then publish write_index.
        fence(Ordering::SeqCst);
        self.mem
            .header_word(HeaderWord::WriteIndex)
            .store(new_write, Ordering::Release);
        self.write_pos = new_write;

        // Step 5: full fence, then the signal decision of hv_signal_on_write.
        fence(Ordering::SeqCst);
        let masked = self
            .mem
            .header_word(HeaderWord::InterruptMask)
            .load(Ordering::Acquire)
            != 0;
        let signal_peer = !masked
            && self
                .mem
                .header_word(HeaderWord::ReadIndex)
                .load(Ordering::Acquire)
                == old_write;
        Ok(Sent {
            start_offset: old_write,
            ring_len: needed,
            signal_peer,
        })
    }

    /// After [`RingError::Full`]: stores `needed` in `pending_send_sz` so the consumer
    /// signals once that much is free, then re-checks (full fence). Returns true when the
    /// room is already there (clear with [`RingWriter::clear_pending`] and retry); false
    /// means wait for the signal.
    pub fn request_space(&self, needed: usize) -> Result<bool, RingError> {
        let needed32 = u32::try_from(needed).unwrap_or(u32::MAX);
        self.mem
            .header_word(HeaderWord::PendingSendSize)
            .store(needed32, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        Ok(self.free()? > needed)
    }

    /// Stores 0 in `pending_send_sz`: not waiting for room.
    pub fn clear_pending(&self) {
        self.mem
            .header_word(HeaderWord::PendingSendSize)
            .store(0, Ordering::SeqCst);
    }
}

/// The descriptor's 16 little-endian wire bytes (§2.3).
fn descriptor_bytes(d: &PacketDescriptor) -> [u8; DESCRIPTOR_LEN] {
    let mut b = [0u8; DESCRIPTOR_LEN];
    b[0..2].copy_from_slice(&d.packet_type.get().to_le_bytes());
    b[2..4].copy_from_slice(&d.offset8.get().to_le_bytes());
    b[4..6].copy_from_slice(&d.len8.get().to_le_bytes());
    b[6..8].copy_from_slice(&d.flags.get().to_le_bytes());
    b[8..16].copy_from_slice(&d.trans_id.get().to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::InProcessRing;
    use crate::reader::RingReader;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn signal_only_when_ring_was_empty_and_unmasked() {
        let ring = InProcessRing::new(0x1000);
        let mut writer = RingWriter::new(&ring).unwrap();
        assert!(
            writer.write(1, &[1; 40]).unwrap().signal_peer,
            "empty -> non-empty"
        );
        assert!(
            !writer.write(2, &[2; 40]).unwrap().signal_peer,
            "already non-empty"
        );
        let mut reader = RingReader::new(&ring).unwrap();
        while reader.read().is_ok() {}
        reader.mask();
        assert!(!writer.write(3, &[3; 40]).unwrap().signal_peer, "masked");
    }

    #[test]
    fn one_byte_always_stays_free() {
        let ring = InProcessRing::new(0x80);
        let mut writer = RingWriter::new(&ring).unwrap();
        // 64-byte ring packets: the first fits (free 128 > 64), the second would fill the
        // ring exactly (free 64 <= 64) and is refused.
        let _ = writer.write(1, &[0; 40]).unwrap();
        assert_eq!(
            writer.write(2, &[0; 40]),
            Err(RingError::Full {
                needed: 64,
                free: 64
            })
        );
        assert_eq!(ring.header_word(HeaderWord::WriteIndex).load(Relaxed), 64);
    }

    #[test]
    fn payload_that_can_never_fit_is_distinct_from_full() {
        let ring = InProcessRing::new(0x80);
        let mut writer = RingWriter::new(&ring).unwrap();
        assert_eq!(writer.max_payload(), 0x80 - 32);
        assert!(matches!(
            writer.write(1, &[0; 0x80 - 31]),
            Err(RingError::PayloadTooLarge { .. })
        ));
        let _ = writer.write(1, &[0; 0x80 - 32]).unwrap();
        let big = InProcessRing::new(1 << 20);
        let mut writer = RingWriter::new(&big).unwrap();
        assert!(matches!(
            writer.write(1, &vec![0; 512 * 1024]),
            Err(RingError::PayloadTooLarge { .. })
        ));
    }

    #[test]
    fn packet_type_and_flags_are_written() {
        let ring = InProcessRing::new(0x100);
        let mut writer = RingWriter::new(&ring).unwrap();
        let _ = writer
            .write_packet(PacketType::COMPLETION, 1, 9, b"abc")
            .unwrap();
        let mut reader = RingReader::new(&ring).unwrap();
        let got = reader.read().unwrap().packet;
        assert_eq!(got.descriptor.kind(), PacketType::COMPLETION);
        assert_eq!(got.descriptor.flags.get(), 1);
        assert_eq!(got.trans_id(), 9);
    }

    #[test]
    fn corrupt_read_index_is_reported() {
        let ring = InProcessRing::new(0x100);
        let mut writer = RingWriter::new(&ring).unwrap();
        ring.header_word(HeaderWord::ReadIndex).store(3, Relaxed);
        assert!(matches!(writer.write(1, b"x"), Err(RingError::Corrupt(_))));
        assert_eq!(writer.write_pos(), 0);
    }
}
