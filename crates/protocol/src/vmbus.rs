//! VMBus packet framing: the 16-byte packet descriptor and the 8-byte trailer.
//!
//! Kernel contract (`struct vmpacket_descriptor`, include/linux/hyperv.h): every packet in a
//! VMBus ring starts with a 16-byte descriptor, then the payload at `offset8 * 8`, zero
//! padding up to a multiple of 8, and an 8-byte trailer holding `start_offset << 32`.
//! `len8` counts descriptor + payload + padding in 8-byte units, not the trailer.
//! See wire-protocol.md §2.3.

use zerocopy::little_endian::{U16, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of the packet descriptor in bytes.
pub const DESCRIPTOR_LEN: usize = 16;
/// Size of the trailer that follows every packet in the ring.
pub const TRAILER_LEN: usize = 8;

/// The packet type field of a descriptor. Open: any value the host writes is representable.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PacketType(pub u16);

impl PacketType {
    /// `VM_PKT_DATA_INBAND`: the only type IC services use.
    pub const DATA_INBAND: Self = Self(6);
    /// `VM_PKT_COMP`: a completion packet.
    pub const COMPLETION: Self = Self(0x0b);
}

impl core::fmt::Debug for PacketType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::DATA_INBAND => f.write_str("DATA_INBAND"),
            Self::COMPLETION => f.write_str("COMPLETION"),
            Self(other) => write!(f, "PacketType({other:#x})"),
        }
    }
}

/// VMBus packet flag: the sender asks for a completion packet. IC replies use 0.
pub const PACKET_FLAG_COMPLETION_REQUESTED: u16 = 1;

/// `struct vmpacket_descriptor`, byte-exact (16 bytes, little-endian, unaligned-safe).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct PacketDescriptor {
    /// Packet type, see [`PacketType`].
    pub packet_type: U16,
    /// Header length in 8-byte units; the payload starts at `offset8 * 8`.
    pub offset8: U16,
    /// Whole packet length in 8-byte units (descriptor + payload + padding, not the trailer).
    pub len8: U16,
    /// VMBus flags; 1 = completion requested.
    pub flags: U16,
    /// Request id; a reply carries the request's value unchanged.
    pub trans_id: U64,
}

const _: () = assert!(core::mem::size_of::<PacketDescriptor>() == DESCRIPTOR_LEN);

/// Why a descriptor is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorError {
    /// Fewer than 16 bytes were given.
    #[error("packet descriptor truncated: {len} bytes, need 16")]
    Truncated {
        /// Bytes available.
        len: usize,
    },
    /// `offset8` is below 2 (inside the descriptor) or past `len8`.
    #[error("packet descriptor offset8 {offset8} invalid for len8 {len8}")]
    BadOffset {
        /// Header length in 8-byte units.
        offset8: u16,
        /// Packet length in 8-byte units.
        len8: u16,
    },
}

impl PacketDescriptor {
    /// Builds the descriptor of an in-band data packet carrying `payload_len` bytes.
    ///
    /// Returns `None` if the packet would not fit in `len8` (payload over 512 KiB).
    pub fn inband(payload_len: usize, trans_id: u64) -> Option<Self> {
        let len8 = u16::try_from(packet_len(payload_len)? / 8).ok()?;
        Some(Self {
            packet_type: U16::new(PacketType::DATA_INBAND.0),
            offset8: U16::new(2),
            len8: U16::new(len8),
            flags: U16::new(0),
            trans_id: U64::new(trans_id),
        })
    }

    /// Parses and validates a descriptor from the first 16 bytes of `bytes`.
    ///
    /// Checks `2 <= offset8 <= len8`. Checking `len8` against the bytes available in a ring
    /// is the ring reader's job.
    pub fn parse(bytes: &[u8]) -> Result<Self, DescriptorError> {
        let (desc, _) = Self::read_from_prefix(bytes)
            .map_err(|_| DescriptorError::Truncated { len: bytes.len() })?;
        desc.validate()?;
        Ok(desc)
    }

    /// Checks `2 <= offset8 <= len8`.
    pub fn validate(&self) -> Result<(), DescriptorError> {
        let (offset8, len8) = (self.offset8.get(), self.len8.get());
        if offset8 < 2 || offset8 > len8 {
            return Err(DescriptorError::BadOffset { offset8, len8 });
        }
        Ok(())
    }

    /// The packet type.
    pub fn kind(&self) -> PacketType {
        PacketType(self.packet_type.get())
    }

    /// Packet length in bytes (`len8 * 8`), trailer excluded.
    pub fn len_bytes(&self) -> usize {
        usize::from(self.len8.get()) * 8
    }

    /// Offset of the payload from the start of the packet (`offset8 * 8`).
    pub fn payload_offset(&self) -> usize {
        usize::from(self.offset8.get()) * 8
    }

    /// Ring bytes the packet occupies: `len8 * 8 + 8` (trailer included).
    pub fn ring_len(&self) -> usize {
        self.len_bytes() + TRAILER_LEN
    }
}

/// Length in bytes of an in-band packet (descriptor + payload, padded to 8), trailer excluded.
/// `None` if it would overflow `len8`.
pub fn packet_len(payload_len: usize) -> Option<usize> {
    let len = DESCRIPTOR_LEN
        .checked_add(payload_len)?
        .checked_next_multiple_of(8)?;
    (len / 8 <= usize::from(u16::MAX)).then_some(len)
}

/// The trailer value a writer stores after a packet placed at data-area offset `start_offset`.
pub fn trailer(start_offset: u32) -> u64 {
    u64::from(start_offset) << 32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiate_descriptor_of_worked_example_11_3() {
        let bytes = [
            0x06, 0x00, 0x02, 0x00, 0x08, 0x00, 0x00, 0x00, 0x2a, 0, 0, 0, 0, 0, 0, 0,
        ];
        let d = PacketDescriptor::parse(&bytes).unwrap();
        assert_eq!(d.kind(), PacketType::DATA_INBAND);
        assert_eq!(d.payload_offset(), 16);
        assert_eq!(d.len_bytes(), 64);
        assert_eq!(d.ring_len(), 72);
        assert_eq!(d.trans_id.get(), 0x2a);
        assert_eq!(
            PacketDescriptor::inband(48, 0x2a).unwrap().as_bytes(),
            &bytes
        );
        assert_eq!(trailer(0x180).to_le_bytes(), [0, 0, 0, 0, 0x80, 0x01, 0, 0]);
    }

    #[test]
    fn sizes_round_up_to_eight() {
        assert_eq!(packet_len(44), Some(64));
        assert_eq!(packet_len(40), Some(56));
        assert_eq!(PacketDescriptor::inband(40, 1).unwrap().len8.get(), 7);
    }

    #[test]
    fn bad_offsets_and_short_input_are_errors() {
        let mut b = [0u8; 16];
        b[2] = 1;
        b[4] = 8;
        assert!(matches!(
            PacketDescriptor::parse(&b),
            Err(DescriptorError::BadOffset { .. })
        ));
        b[2] = 9;
        assert!(matches!(
            PacketDescriptor::parse(&b),
            Err(DescriptorError::BadOffset { .. })
        ));
        assert_eq!(
            PacketDescriptor::parse(&b[..3]),
            Err(DescriptorError::Truncated { len: 3 })
        );
    }
}
