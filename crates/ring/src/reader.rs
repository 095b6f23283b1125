//! The consumer half of a ring (wire-protocol.md §2.4): the guest on RX, the host on TX.

use std::sync::atomic::{Ordering, fence};

use hv_vss_protocol::vmbus::{DESCRIPTOR_LEN, DescriptorError, PacketDescriptor, TRAILER_LEN};

use crate::mem::{FEATURE_PENDING_SEND_SIZE, HeaderWord, RingMem};
use crate::{Corruption, RingError, bytes_available, bytes_free, checked_data_len, checked_index};

/// Smallest receive buffer a reader accepts (R11: at least 16 KiB).
pub const RECV_BUFFER_MIN: usize = 16 * 1024;

/// One packet copied out of the ring into the reader's private buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The validated descriptor (read once, from the private copy).
    pub descriptor: PacketDescriptor,
    /// The whole packet, `len8 * 8` bytes: descriptor, payload and padding (no trailer).
    pub bytes: &'a [u8],
}

impl<'a> Packet<'a> {
    /// The payload: from `offset8 * 8` to the end of the packet, padding included (VMBus
    /// does not record the unpadded length; the IC pipe header does).
    pub fn payload(&self) -> &'a [u8] {
        // offset8 <= len8 was validated, so the range is inside `bytes`.
        self.bytes
            .get(self.descriptor.payload_offset()..)
            .unwrap_or(&[])
    }

    /// The request id to echo in a reply.
    pub fn trans_id(&self) -> u64 {
        self.descriptor.trans_id.get()
    }
}

/// A received packet and whether the caller must now signal the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "the producer may be waiting for room: signal it when signal_peer is set"]
pub struct Received<'a> {
    /// The packet.
    pub packet: Packet<'a>,
    /// True when this read freed the space the producer asked for in `pending_send_sz`
    /// (§2.4 step 4): the caller signals the peer.
    pub signal_peer: bool,
}

/// Consumer of one ring. Keeps its read position privately and publishes it to
/// `read_index` after each packet.
#[derive(Debug)]
pub struct RingReader<M> {
    mem: M,
    data_len: u32,
    read_pos: u32,
    buf: Box<[u8]>,
}

impl<M: RingMem> RingReader<M> {
    /// A reader with a [`RECV_BUFFER_MIN`]-byte receive buffer, starting at the ring's
    /// current `read_index` (validated).
    pub fn new(mem: M) -> Result<Self, RingError> {
        Self::with_buffer_len(mem, RECV_BUFFER_MIN)
    }

    /// A reader whose receive buffer holds `buffer_len` bytes (raised to
    /// [`RECV_BUFFER_MIN`] if smaller). Packets longer than this are
    /// [`RingError::Oversize`].
    pub fn with_buffer_len(mem: M, buffer_len: usize) -> Result<Self, RingError> {
        let data_len = checked_data_len(mem.data_len())?;
        let read_index = mem
            .header_word(HeaderWord::ReadIndex)
            .load(Ordering::Acquire);
        let read_pos = checked_index(HeaderWord::ReadIndex, read_index, data_len)?;
        Ok(Self {
            mem,
            data_len,
            read_pos,
            buf: vec![0; buffer_len.max(RECV_BUFFER_MIN)].into_boxed_slice(),
        })
    }

    /// The ring memory.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// The private read position (what was last published to `read_index`).
    pub fn read_pos(&self) -> u32 {
        self.read_pos
    }

    /// Size of the receive buffer.
    pub fn buffer_len(&self) -> usize {
        self.buf.len()
    }

    /// Bytes the producer has published beyond the read position (§2.4 step 1).
    pub fn available(&self) -> Result<usize, RingError> {
        Ok(self
            .load_write_index()
            .map(|w| bytes_available(w, self.read_pos, self.data_len))? as usize)
    }

    /// True when at least a descriptor's worth of bytes is waiting.
    pub fn has_data(&self) -> Result<bool, RingError> {
        Ok(self.available()? >= DESCRIPTOR_LEN)
    }

    /// Acquire-loads and validates the producer's `write_index` (§2.6 row 1).
    fn load_write_index(&self) -> Result<u32, RingError> {
        let w = self
            .mem
            .header_word(HeaderWord::WriteIndex)
            .load(Ordering::Acquire);
        checked_index(HeaderWord::WriteIndex, w, self.data_len)
    }

    /// Copies `buf.len()` bytes starting at data offset `at`, split at the wrap point.
    /// Callers guarantee `at < data_len` and `buf.len() <= data_len`.
    fn copy_out(&self, at: u32, buf: &mut [u8]) {
        let at = at as usize;
        let first = buf.len().min(self.data_len as usize - at);
        let (head, tail) = buf.split_at_mut(first);
        self.mem.read_data(at, head);
        if !tail.is_empty() {
            self.mem.read_data(0, tail);
        }
    }

    /// Reads the next packet into the private buffer (§2.4 steps 1–4).
    ///
    /// Errors: [`RingError::Empty`] when no packet waits; [`RingError::Corrupt`] for a bad
    /// index or descriptor; [`RingError::Oversize`] for a packet larger than the buffer. On
    /// any error the read position is unchanged and nothing is published.
    pub fn read(&mut self) -> Result<Received<'_>, RingError> {
        // Step 1: acquire the producer's index; fewer than 16 bytes means nothing to read.
        let write = self.load_write_index()?;
        let available = bytes_available(write, self.read_pos, self.data_len) as usize;
        if available < DESCRIPTOR_LEN {
            return Err(RingError::Empty);
        }

        // Step 2: copy the descriptor out once and validate the copy.
        let mut raw = [0u8; DESCRIPTOR_LEN];
        self.copy_out(self.read_pos, &mut raw);
        let descriptor = PacketDescriptor::parse(&raw).map_err(|e| match e {
            DescriptorError::BadOffset { offset8, len8 } => {
                RingError::from(Corruption::DescriptorOffset { offset8, len8 })
            }
            // `raw` is exactly DESCRIPTOR_LEN bytes, so this cannot happen; stay total.
            DescriptorError::Truncated { .. } => RingError::Empty,
        })?;
        let len8 = descriptor.len8.get();
        let packet_len = descriptor.len_bytes();
        let needed = packet_len + TRAILER_LEN;
        if needed > available {
            return Err(Corruption::PacketPastWriteIndex {
                len8,
                needed,
                available,
            }
            .into());
        }
        if packet_len > self.buf.len() {
            return Err(RingError::Oversize {
                len8,
                buffer_len: self.buf.len(),
            });
        }

        // Step 3: copy the packet (needed <= available < data_len, so no overrun), advance
        // privately, full fence, then publish read_index.
        let mut buf = std::mem::take(&mut self.buf);
        self.copy_out(self.read_pos, &mut buf[..packet_len]);
        self.buf = buf;
        let old_read = self.read_pos;
        // needed <= available < data_len: the sum stays below 2 * data_len <= 2^33; u64 math.
        let new_read = ((u64::from(old_read) + needed as u64) % u64::from(self.data_len)) as u32;
        fence(Ordering::SeqCst);
        self.mem
            .header_word(HeaderWord::ReadIndex)
            .store(new_read, Ordering::Release);
        self.read_pos = new_read;

        // Step 4: full fence, then look at pending_send_sz.
        fence(Ordering::SeqCst);
        let signal_peer = self.freed_pending_space(write, needed);

        Ok(Received {
            packet: Packet {
                descriptor,
                bytes: &self.buf[..packet_len],
            },
            signal_peer,
        })
    }

    /// §2.4 step 4 (`hv_pkt_iter_close`): signal only when this read moved free space from
    /// `<= pending_send_sz` to `> pending_send_sz`. `write` is the write index this read
    /// used; a later write only lowers free space, which errs on the side of not
    /// signalling twice (the producer re-checks free space after setting pending_send_sz).
    fn freed_pending_space(&self, write: u32, consumed: usize) -> bool {
        let features = self
            .mem
            .header_word(HeaderWord::FeatureBits)
            .load(Ordering::Acquire);
        if features & FEATURE_PENDING_SEND_SIZE == 0 {
            return false;
        }
        let pending = self
            .mem
            .header_word(HeaderWord::PendingSendSize)
            .load(Ordering::Acquire);
        if pending == 0 {
            return false;
        }
        let free_after = bytes_free(write, self.read_pos, self.data_len) as usize;
        let free_before = free_after.saturating_sub(consumed);
        let pending = pending as usize;
        free_before <= pending && free_after > pending
    }

    /// Sets `interrupt_mask` = 1: the producer will not signal while it is set.
    pub fn mask(&self) {
        self.mem
            .header_word(HeaderWord::InterruptMask)
            .store(1, Ordering::SeqCst);
    }

    /// True while `interrupt_mask` is set.
    pub fn is_masked(&self) -> bool {
        self.mem
            .header_word(HeaderWord::InterruptMask)
            .load(Ordering::Acquire)
            != 0
    }

    /// Clears `interrupt_mask`, full fence, then re-checks the ring (§2.6 last row, §3.3
    /// step 3). Returns true when data is already waiting: the producer may have written it
    /// while we were masked and will not signal for it, so the caller must drain again
    /// instead of blocking.
    pub fn unmask_and_recheck(&self) -> Result<bool, RingError> {
        self.mem
            .header_word(HeaderWord::InterruptMask)
            .store(0, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.has_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::InProcessRing;
    use crate::writer::RingWriter;
    use std::sync::atomic::Ordering::Relaxed;

    /// Worked example 11.1: the host's NEGOTIATE payload.
    const NEGOTIATE: [u8; 48] = [
        0x01, 0x00, 0x00, 0x00, 0x28, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
        0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x02, 0x00,
        0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x05,
        0x00, 0x00, 0x00,
    ];

    fn word(ring: &InProcessRing, w: HeaderWord) -> u32 {
        ring.header_word(w).load(Relaxed)
    }

    fn place_bytes(ring: &InProcessRing, at: usize, bytes: &[u8]) {
        ring.write_data(at, bytes);
    }

    #[test]
    fn worked_example_11_3_negotiate_at_0x180() {
        let ring = InProcessRing::new(0x1000);
        // The host placed the packet at 0x180, as the example says, byte by byte.
        let mut packet = vec![0x06, 0x00, 0x02, 0x00, 0x08, 0x00, 0x00, 0x00];
        packet.extend_from_slice(&0x2au64.to_le_bytes());
        packet.extend_from_slice(&NEGOTIATE);
        packet.extend_from_slice(&[0, 0, 0, 0, 0x80, 0x01, 0, 0]);
        assert_eq!(packet.len(), 72);
        place_bytes(&ring, 0x180, &packet);
        ring.header_word(HeaderWord::ReadIndex)
            .store(0x180, Relaxed);
        ring.header_word(HeaderWord::WriteIndex)
            .store(0x1c8, Relaxed);

        let mut reader = RingReader::new(&ring).unwrap();
        let got = reader.read().unwrap();
        assert_eq!(got.packet.trans_id(), 0x2a);
        assert_eq!(got.packet.descriptor.len8.get(), 8);
        assert_eq!(got.packet.payload(), &NEGOTIATE);
        assert!(!got.signal_peer);
        assert_eq!(word(&ring, HeaderWord::ReadIndex), 0x1c8);
        assert_eq!(reader.read(), Err(RingError::Empty));

        // The writer produces exactly the same bytes at the same place.
        let tx = InProcessRing::new(0x1000);
        tx.header_word(HeaderWord::ReadIndex).store(0x180, Relaxed);
        tx.header_word(HeaderWord::WriteIndex).store(0x180, Relaxed);
        let mut writer = RingWriter::new(&tx).unwrap();
        let sent = writer.write(0x2a, &NEGOTIATE).unwrap();
        assert_eq!(sent.start_offset, 0x180);
        assert_eq!(word(&tx, HeaderWord::WriteIndex), 0x1c8);
        let mut out = vec![0u8; 72];
        tx.read_data(0x180, &mut out);
        assert_eq!(out, packet);
    }

    #[test]
    fn packet_split_across_the_wrap_point() {
        let ring = InProcessRing::new(0x100);
        ring.header_word(HeaderWord::ReadIndex).store(0xe0, Relaxed);
        ring.header_word(HeaderWord::WriteIndex)
            .store(0xe0, Relaxed);
        let mut writer = RingWriter::new(&ring).unwrap();
        let payload: Vec<u8> = (0..61).collect();
        let _ = writer.write(7, &payload).unwrap();
        // 16 + 61 -> 80, + 8 trailer = 88 bytes from 0xe0 wraps to 0x38.
        assert_eq!(word(&ring, HeaderWord::WriteIndex), 0x38);
        let mut trailer = [0u8; 8];
        ring.read_data(0x30, &mut trailer);
        assert_eq!(u64::from_le_bytes(trailer), 0xe0u64 << 32);
        let mut reader = RingReader::new(&ring).unwrap();
        let got = reader.read().unwrap();
        assert_eq!(&got.packet.payload()[..61], &payload[..]);
        assert_eq!(&got.packet.payload()[61..], &[0, 0, 0]);
        assert_eq!(reader.read_pos(), 0x38);
    }

    #[test]
    fn corrupt_descriptors_and_indices_are_typed_errors() {
        let ring = InProcessRing::new(0x100);
        let mut reader = RingReader::new(&ring).unwrap();
        // offset8 = 1.
        place_bytes(&ring, 0, &[6, 0, 1, 0, 4, 0, 0, 0]);
        ring.header_word(HeaderWord::WriteIndex)
            .store(0x28, Relaxed);
        assert_eq!(
            reader.read(),
            Err(RingError::Corrupt(Corruption::DescriptorOffset {
                offset8: 1,
                len8: 4
            }))
        );
        // len8 past the write index.
        place_bytes(&ring, 0, &[6, 0, 2, 0, 5, 0, 0, 0]);
        assert!(matches!(
            reader.read(),
            Err(RingError::Corrupt(Corruption::PacketPastWriteIndex {
                len8: 5,
                needed: 48,
                available: 0x28
            }))
        ));
        // Misaligned and out-of-range write index.
        ring.header_word(HeaderWord::WriteIndex)
            .store(0x2c, Relaxed);
        assert!(matches!(
            reader.read(),
            Err(RingError::Corrupt(Corruption::Index { .. }))
        ));
        ring.header_word(HeaderWord::WriteIndex)
            .store(0x100, Relaxed);
        assert!(matches!(
            reader.has_data(),
            Err(RingError::Corrupt(Corruption::Index { .. }))
        ));
        // Nothing was consumed.
        assert_eq!(reader.read_pos(), 0);
        assert_eq!(word(&ring, HeaderWord::ReadIndex), 0);
        // A bad read_index at start-up.
        ring.header_word(HeaderWord::ReadIndex)
            .store(0x104, Relaxed);
        assert!(RingReader::new(&ring).is_err());
    }

    #[test]
    fn oversize_packet_is_an_error_not_truncated() {
        let ring = InProcessRing::new(64 * 1024);
        let mut writer = RingWriter::new(&ring).unwrap();
        let _ = writer.write(1, &vec![0x5a; RECV_BUFFER_MIN]).unwrap();
        let mut reader = RingReader::new(&ring).unwrap();
        assert_eq!(
            reader.read(),
            Err(RingError::Oversize {
                len8: (RECV_BUFFER_MIN as u16 + 16) / 8,
                buffer_len: RECV_BUFFER_MIN
            })
        );
        assert_eq!(reader.read_pos(), 0);
        let mut big = RingReader::with_buffer_len(&ring, 32 * 1024).unwrap();
        assert_eq!(big.read().unwrap().packet.payload().len(), RECV_BUFFER_MIN);
    }

    #[test]
    fn pending_send_size_signals_only_on_the_crossing_read() {
        let ring = InProcessRing::new(0x100);
        let mut writer = RingWriter::new(&ring).unwrap();
        // Three 64-byte-ring packets (40-byte payloads): 192 used, 64 free.
        for id in 0..3 {
            let _ = writer.write(id, &[0u8; 40]).unwrap();
        }
        assert!(matches!(
            writer.write(9, &[0u8; 40]),
            Err(RingError::Full {
                needed: 64,
                free: 64
            })
        ));
        // The producer waits for 100 bytes.
        assert!(!writer.request_space(100).unwrap());
        let mut reader = RingReader::new(&ring).unwrap();
        assert!(
            reader.read().unwrap().signal_peer,
            "64 -> 128 free crosses 100"
        );
        assert!(!reader.read().unwrap().signal_peer, "already above 100");
        // Feature bit off: never signal.
        ring.header_word(HeaderWord::FeatureBits).store(0, Relaxed);
        writer.clear_pending();
        let _ = writer.write(5, &[0u8; 40]).unwrap();
        ring.header_word(HeaderWord::PendingSendSize)
            .store(200, Relaxed);
        let _ = reader.read().unwrap();
        assert!(!reader.read().unwrap().signal_peer);
    }

    #[test]
    fn unmask_rechecks_for_data() {
        let ring = InProcessRing::new(0x100);
        let reader = RingReader::new(&ring).unwrap();
        reader.mask();
        assert!(reader.is_masked());
        assert!(!reader.unmask_and_recheck().unwrap());
        assert!(!reader.is_masked());
        let mut writer = RingWriter::new(&ring).unwrap();
        reader.mask();
        let sent = writer.write(1, b"hi").unwrap();
        assert!(!sent.signal_peer, "masked consumer is not signalled");
        assert!(
            reader.unmask_and_recheck().unwrap(),
            "data written while masked is found"
        );
    }
}
