//! The VMBus ring buffer (wire-protocol.md §2), generic over its memory. No I/O, no unsafe.
//!
//! Kernel contract: a channel has two rings, TX (guest → host) and RX (host → guest). Each
//! is a header page with four control words (`write_index`, `read_index`, `interrupt_mask`,
//! `pending_send_sz`) plus `feature_bits`, followed by a data area of `dsize` bytes used as
//! a circular buffer. Packets are a 16-byte descriptor, the payload, zero padding to 8 and an
//! 8-byte trailer `start_offset << 32`. Indices are multiples of 8 below `dsize`; a writer
//! always leaves one byte free so that a full ring never looks empty.
//!
//! # Design
//!
//! - [`RingMem`] abstracts the memory: control words as `&AtomicU32`, data by copy. The
//!   production implementation over a shared mapping lives in `hv-vss-sys`;
//!   [`InProcessRing`] serves tests and fuzzing.
//! - [`RingReader`] (consumer) and [`RingWriter`] (producer) are role-neutral: the guest
//!   reads RX and writes TX, a simulated host reads TX and writes RX with the same code.
//! - Each half keeps its own position privately and only publishes it; the peer's index is
//!   re-read (acquire) and validated on every use. Host-written lengths are read once from a
//!   private copy of the descriptor and validated before anything else is copied, so a
//!   corrupt ring yields [`RingError::Corrupt`], never an out-of-bounds access or a panic.
//! - Memory ordering follows §2.6 exactly; the points are marked in the code.
//! - Signalling is decided here and performed by the caller: [`Received::signal_peer`]
//!   (§2.4 step 4, `pending_send_sz`) and [`Sent::signal_peer`] (§2.5 step 5,
//!   `interrupt_mask` and "the ring was empty").
//!
//! # Limitations
//!
//! - One reader and one writer per ring (the single-threaded daemon needs no more).
//! - The trailer is written but not checked on receive (the kernel does not check it either).
//! - An oversize packet (larger than the receive buffer) is reported and left in the ring;
//!   the channel cannot make progress past it and must be reopened (R11: never truncated).

pub mod mem;
pub mod reader;
pub mod writer;

pub use mem::{FEATURE_PENDING_SEND_SIZE, HEADER_USED_LEN, HeaderWord, InProcessRing, RingMem};
pub use reader::{Packet, RECV_BUFFER_MIN, Received, RingReader};
pub use writer::{RingWriter, Sent};

/// Why a ring operation did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// No complete packet is waiting (a normal condition).
    #[error("ring is empty")]
    Empty,
    /// The packet needs `needed` bytes of ring space but only `free` are free (a writer
    /// must leave one byte, so `free <= needed` is full).
    #[error("ring is full: packet needs {needed} bytes, {free} free")]
    Full {
        /// Ring bytes the packet occupies (descriptor, payload, padding, trailer).
        needed: usize,
        /// Free bytes at the time of the check.
        free: usize,
    },
    /// The next packet (`len8` units of 8 bytes) does not fit the receive buffer. It is left
    /// in the ring; the channel must be reset.
    #[error("packet of len8 {len8} ({} bytes) exceeds the {buffer_len}-byte receive buffer", usize::from(*len8) * 8)]
    Oversize {
        /// Packet length in 8-byte units, from the descriptor.
        len8: u16,
        /// Size of the receive buffer.
        buffer_len: usize,
    },
    /// A payload of `payload_len` bytes can never be sent on this ring (the packet would
    /// overflow `len8` or not fit the data area even when empty).
    #[error("payload of {payload_len} bytes can never fit this ring (at most {max_payload})")]
    PayloadTooLarge {
        /// Requested payload size.
        payload_len: usize,
        /// Largest payload this ring can carry.
        max_payload: usize,
    },
    /// The data area size is unusable (zero, not a multiple of 8, or over `u32::MAX`).
    #[error(
        "ring data area of {data_len} bytes is unusable (must be a non-zero multiple of 8 below 4 GiB)"
    )]
    Geometry {
        /// The size the memory reported.
        data_len: usize,
    },
    /// The peer wrote something impossible. Stop using the channel (R9).
    #[error("ring is corrupt: {0}")]
    Corrupt(#[from] Corruption),
}

impl RingError {
    /// True for the errors that mean the channel must be torn down (corruption, oversize).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            RingError::Corrupt(_) | RingError::Oversize { .. } | RingError::Geometry { .. }
        )
    }
}

/// What exactly was wrong with a corrupt ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    /// An index is not a multiple of 8 or not below the data area size.
    #[error("{word:?} {value:#x} is not a multiple of 8 below the data size {data_len:#x}")]
    Index {
        /// Which header word.
        word: HeaderWord,
        /// The value read.
        value: u32,
        /// The data area size.
        data_len: usize,
    },
    /// The descriptor's `offset8` is below 2 or beyond `len8` (§2.4 step 2).
    #[error("descriptor offset8 {offset8} invalid for len8 {len8}")]
    DescriptorOffset {
        /// Header length in 8-byte units.
        offset8: u16,
        /// Packet length in 8-byte units.
        len8: u16,
    },
    /// The descriptor's packet (plus trailer) runs past the producer's write index.
    #[error("packet of len8 {len8} needs {needed} bytes but only {available} are available")]
    PacketPastWriteIndex {
        /// Packet length in 8-byte units.
        len8: u16,
        /// `len8 * 8 + 8`.
        needed: usize,
        /// Bytes between the read position and the write index.
        available: usize,
    },
}

/// Checks a ring's data area size; returns it as `u32`.
fn checked_data_len(data_len: usize) -> Result<u32, RingError> {
    match u32::try_from(data_len) {
        Ok(d) if d > 0 && d % 8 == 0 => Ok(d),
        _ => Err(RingError::Geometry { data_len }),
    }
}

/// Validates an index read from shared memory: a multiple of 8 below `data_len`.
fn checked_index(word: HeaderWord, value: u32, data_len: u32) -> Result<u32, RingError> {
    if value % 8 != 0 || value >= data_len {
        return Err(Corruption::Index {
            word,
            value,
            data_len: data_len as usize,
        }
        .into());
    }
    Ok(value)
}

/// Bytes written and not yet read: `(write − read) mod dsize` (§2.2). Both indices valid.
fn bytes_available(write: u32, read: u32, data_len: u32) -> u32 {
    if write >= read {
        write - read
    } else {
        data_len - read + write
    }
}

/// Free bytes: `dsize − available` (§2.2). Both indices valid.
fn bytes_free(write: u32, read: u32, data_len: u32) -> u32 {
    data_len - bytes_available(write, read, data_len)
}

/// Data area size of a ring of `ring_len` bytes whose header is one page of `header_len`.
pub fn data_len_for(ring_len: usize, header_len: usize) -> Option<usize> {
    ring_len.checked_sub(header_len).filter(|&d| d > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_arithmetic_wraps() {
        assert_eq!(bytes_available(0x40, 0x40, 0x100), 0);
        assert_eq!(bytes_free(0x40, 0x40, 0x100), 0x100);
        assert_eq!(bytes_available(0x10, 0xf0, 0x100), 0x20);
        assert_eq!(bytes_free(0x10, 0xf0, 0x100), 0xe0);
        assert_eq!(bytes_available(0xf0, 0x10, 0x100), 0xe0);
    }

    #[test]
    fn indices_must_be_aligned_and_in_range() {
        assert_eq!(checked_index(HeaderWord::WriteIndex, 0xf8, 0x100), Ok(0xf8));
        assert!(matches!(
            checked_index(HeaderWord::WriteIndex, 0x100, 0x100),
            Err(RingError::Corrupt(Corruption::Index { value: 0x100, .. }))
        ));
        assert!(checked_index(HeaderWord::ReadIndex, 0x0c, 0x100).is_err());
    }

    #[test]
    fn geometry_is_checked() {
        assert_eq!(checked_data_len(4096), Ok(4096));
        assert!(checked_data_len(0).is_err());
        assert!(checked_data_len(4100).is_err());
        assert_eq!(data_len_for(2 << 20, 4096), Some((2 << 20) - 4096));
        assert_eq!(data_len_for(4096, 4096), None);
    }
}
