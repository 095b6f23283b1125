//! Rings over raw shared mappings: `RingMem` for an mmap'd region, and sealed memfds.
//!
//! Kernel contract: `mmap(MAP_SHARED)` of `/dev/uioN` map 0 (uio_hv_generic: TX ring then RX
//! ring, each a header page plus data area) or of a memfd gives memory that another party
//! (the Hyper-V host, or a simulated host process) writes concurrently. Rust references to
//! such memory would let the compiler assume it does not change, so:
//!
//! - header control words are handed out as `&AtomicU32` (the peer uses atomic/locked
//!   accesses on its side, and `AtomicU32` has `u32`'s layout);
//! - data-area bytes are copied with volatile loads/stores (8 bytes at a time where aligned)
//!   into or out of private buffers, never borrowed as `&[u8]`.
//!
//! # Design
//!
//! [`SharedMapping`] owns one mapping (memmap2's `MmapRaw`, which only exposes raw
//! pointers). [`MappedRing`] is a window on it (one ring: header offset, header length, data
//! length) holding an `Arc` of the mapping, so a ring never outlives its memory.
//!
//! # Limitations
//!
//! - A file mapping can raise SIGBUS if its file shrinks. [`create_memfd`] seals the memfd
//!   against shrinking and [`check_memfd`] refuses an inherited one that is not sealed;
//!   `/dev/uioN` memory cannot shrink.
//! - Volatile copies race with the peer's writes by design: a torn packet is possible only if
//!   the peer breaks the ring protocol, and the ring reader validates what it copied.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use hv_vss_ring::{HEADER_USED_LEN, HeaderWord, RingMem};
use rustix::fs::{MemfdFlags, SealFlags};

/// Errors setting up shared memory.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// A system call failed.
    #[error("{op}: {source}")]
    Io {
        /// The call, e.g. `mmap`.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A ring window does not fit the mapping or is misaligned.
    #[error(
        "ring at {ring_offset:#x} of {ring_len:#x} bytes (header {header_len:#x}) does not fit a {map_len:#x}-byte mapping or is misaligned"
    )]
    Layout {
        /// Ring start in the mapping.
        ring_offset: usize,
        /// Ring length (header + data).
        ring_len: usize,
        /// Header length (the system page size).
        header_len: usize,
        /// Mapping length.
        map_len: usize,
    },
    /// An inherited memfd is not sealed against shrinking, or is too small.
    #[error("shared-memory fd unusable: {reason}")]
    UnsafeMemfd {
        /// What is wrong.
        reason: &'static str,
    },
}

fn io_err(op: &'static str) -> impl FnOnce(rustix::io::Errno) -> MemError {
    move |e| MemError::Io {
        op,
        source: e.into(),
    }
}

/// One `MAP_SHARED`, read-write mapping of a file or device.
#[derive(Debug)]
pub struct SharedMapping {
    map: memmap2::MmapRaw,
}

impl SharedMapping {
    /// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_SHARED, fd, offset)`.
    ///
    /// `offset` must be a multiple of the page size (for `/dev/uioN`, map N is at
    /// `N * page_size`).
    #[doc(alias = "mmap")]
    pub fn map(fd: BorrowedFd<'_>, offset: u64, len: usize) -> Result<Self, MemError> {
        let map = memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .map_raw(fd.as_raw_fd())
            .map_err(|source| MemError::Io { op: "mmap", source })?;
        Ok(Self { map })
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True for a zero-length mapping.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }
}

/// One ring (header page + data area) inside a [`SharedMapping`]; implements [`RingMem`].
#[derive(Debug, Clone)]
pub struct MappedRing {
    map: Arc<SharedMapping>,
    ring_offset: usize,
    header_len: usize,
    data_len: usize,
}

impl MappedRing {
    /// The ring occupying `[ring_offset, ring_offset + ring_len)` of `map`, whose header is
    /// `header_len` bytes (the system page size). Checks that it fits and that the header
    /// words are 4-byte aligned and the data area 8-byte aligned.
    pub fn new(
        map: Arc<SharedMapping>,
        ring_offset: usize,
        ring_len: usize,
        header_len: usize,
    ) -> Result<Self, MemError> {
        let layout_err = MemError::Layout {
            ring_offset,
            ring_len,
            header_len,
            map_len: map.len(),
        };
        let fits = ring_offset
            .checked_add(ring_len)
            .is_some_and(|end| end <= map.len());
        // The mapping base is page-aligned, so offsets that are multiples of 8 give aligned
        // words and data.
        let aligned = ring_offset % 8 == 0 && header_len % 8 == 0;
        if !fits || !aligned || header_len < HEADER_USED_LEN || ring_len <= header_len {
            return Err(layout_err);
        }
        Ok(Self {
            map,
            ring_offset,
            header_len,
            data_len: ring_len - header_len,
        })
    }

    /// Bounds-checks a data-area range and returns a pointer to its first byte.
    fn data_ptr(&self, offset: usize, len: usize) -> *mut u8 {
        let end = offset.checked_add(len);
        assert!(
            end.is_some_and(|e| e <= self.data_len),
            "ring data access {offset:#x}+{len:#x} beyond {:#x}",
            self.data_len
        );
        self.map
            .base()
            .wrapping_add(self.ring_offset + self.header_len + offset)
    }
}

/// Splits a mapping holding two consecutive rings of `ring_len` bytes each into
/// `(first, second)`: for uio_hv_generic map 0 that is `(tx, rx)`.
pub fn ring_pair(
    map: Arc<SharedMapping>,
    ring_len: usize,
    header_len: usize,
) -> Result<(MappedRing, MappedRing), MemError> {
    let first = MappedRing::new(map.clone(), 0, ring_len, header_len)?;
    let second = MappedRing::new(map, ring_len, ring_len, header_len)?;
    Ok((first, second))
}

impl RingMem for MappedRing {
    fn header_word(&self, word: HeaderWord) -> &AtomicU32 {
        let ptr = self
            .map
            .base()
            .wrapping_add(self.ring_offset + word.byte_offset());
        // SAFETY: `new` checked that the header (>= HEADER_USED_LEN bytes, so every word)
        // lies inside the mapping and that ring_offset is a multiple of 8 on a page-aligned
        // base, so `ptr` is valid and 4-byte aligned. AtomicU32 has the size and alignment of
        // u32, and this memory is only ever accessed atomically at this offset by us (and
        // with locked/atomic accesses by the peer), so shared atomic access is sound. The
        // reference borrows `self`, which holds the Arc keeping the mapping alive.
        unsafe { &*ptr.cast::<AtomicU32>() }
    }

    fn data_len(&self) -> usize {
        self.data_len
    }

    fn read_data(&self, offset: usize, buf: &mut [u8]) {
        let src = self.data_ptr(offset, buf.len());
        // SAFETY: `data_ptr` checked that [src, src + buf.len()) lies inside the live mapping;
        // `buf` is private memory that cannot overlap a MAP_SHARED mapping we never borrow.
        unsafe { volatile_copy_out(src, buf) }
    }

    fn write_data(&self, offset: usize, buf: &[u8]) {
        let dst = self.data_ptr(offset, buf.len());
        // SAFETY: as in `read_data`: the range is inside the live mapping and `buf` does not
        // overlap it.
        unsafe { volatile_copy_in(dst, buf) }
    }
}

/// Copies `dst.len()` bytes from shared memory at `src` with volatile loads, 8 bytes at a
/// time once `src` is aligned.
///
/// # Safety
///
/// `src` must be valid for reads of `dst.len()` bytes for the duration of the call, and the
/// range must not overlap `dst`.
unsafe fn volatile_copy_out(src: *const u8, dst: &mut [u8]) {
    let len = dst.len();
    let head = src.align_offset(8).min(len);
    let mut i = 0;
    while i < head {
        // SAFETY: i < len, inside the range the caller vouched for.
        dst[i] = unsafe { src.add(i).read_volatile() };
        i += 1;
    }
    while i + 8 <= len {
        // SAFETY: src + i is 8-aligned (i >= head) and [i, i + 8) is inside the range.
        let word = unsafe { src.add(i).cast::<u64>().read_volatile() };
        dst[i..i + 8].copy_from_slice(&word.to_ne_bytes());
        i += 8;
    }
    while i < len {
        // SAFETY: i < len, inside the range.
        dst[i] = unsafe { src.add(i).read_volatile() };
        i += 1;
    }
}

/// Copies `src` into shared memory at `dst` with volatile stores, 8 bytes at a time once
/// `dst` is aligned.
///
/// # Safety
///
/// `dst` must be valid for writes of `src.len()` bytes for the duration of the call, and the
/// range must not overlap `src`.
unsafe fn volatile_copy_in(dst: *mut u8, src: &[u8]) {
    let len = src.len();
    let head = dst.align_offset(8).min(len);
    let mut i = 0;
    while i < head {
        // SAFETY: i < len, inside the range the caller vouched for.
        unsafe { dst.add(i).write_volatile(src[i]) };
        i += 1;
    }
    while i + 8 <= len {
        let mut word = [0u8; 8];
        word.copy_from_slice(&src[i..i + 8]);
        // SAFETY: dst + i is 8-aligned (i >= head) and [i, i + 8) is inside the range.
        unsafe {
            dst.add(i)
                .cast::<u64>()
                .write_volatile(u64::from_ne_bytes(word))
        };
        i += 8;
    }
    while i < len {
        // SAFETY: i < len, inside the range.
        unsafe { dst.add(i).write_volatile(src[i]) };
        i += 1;
    }
}

/// `memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)` sized to `len` zero bytes and sealed
/// against shrinking, growing and further sealing, so no holder can make a mapping of it
/// fault (SIGBUS).
#[doc(alias = "memfd_create")]
pub fn create_memfd(name: &str, len: usize) -> Result<OwnedFd, MemError> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(io_err("memfd_create"))?;
    rustix::fs::ftruncate(&fd, len as u64).map_err(io_err("ftruncate"))?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .map_err(io_err("fcntl(F_ADD_SEALS)"))?;
    Ok(fd)
}

/// Checks that an inherited shared-memory fd is a memfd sealed against shrinking and holds
/// at least `min_len` bytes, so mapping `min_len` bytes of it can never fault.
pub fn check_memfd(fd: impl AsFd, min_len: usize) -> Result<(), MemError> {
    let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|_| MemError::UnsafeMemfd {
        reason: "not a memfd (F_GET_SEALS failed)",
    })?;
    if !seals.contains(SealFlags::SHRINK) {
        return Err(MemError::UnsafeMemfd {
            reason: "not sealed against shrinking",
        });
    }
    let stat = rustix::fs::fstat(&fd).map_err(io_err("fstat"))?;
    if u64::try_from(stat.st_size).unwrap_or(0) < min_len as u64 {
        return Err(MemError::UnsafeMemfd {
            reason: "smaller than the rings",
        });
    }
    Ok(())
}

/// The system page size (`sysconf(_SC_PAGESIZE)`): the ring header length.
pub fn page_size() -> usize {
    rustix::param::page_size()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hv_vss_ring::{RingReader, RingWriter};
    use std::sync::atomic::Ordering;

    const RING_LEN: usize = 64 * 1024;

    fn pair_over(fd: &OwnedFd) -> (MappedRing, MappedRing) {
        let map = Arc::new(SharedMapping::map(fd.as_fd(), 0, 2 * RING_LEN).unwrap());
        ring_pair(map, RING_LEN, page_size()).unwrap()
    }

    #[test]
    fn two_mappings_of_one_memfd_share_rings() {
        let fd = create_memfd("hv-vss-test", 2 * RING_LEN).unwrap();
        check_memfd(&fd, 2 * RING_LEN).unwrap();
        let (tx_a, rx_a) = pair_over(&fd);
        let (tx_b, rx_b) = pair_over(&fd);
        assert_eq!(tx_a.data_len(), RING_LEN - page_size());

        let mut writer = RingWriter::new(tx_a).unwrap();
        let payload: Vec<u8> = (0..6300u32).map(|i| (i * 7) as u8).collect();
        for id in 0..40 {
            let _ = writer
                .write(id, &payload[..(id as usize * 151) % payload.len()])
                .unwrap();
            let mut reader = RingReader::new(&tx_b).unwrap();
            let got = reader.read().unwrap();
            assert_eq!(got.packet.trans_id(), id);
            let n = (id as usize * 151) % payload.len();
            assert_eq!(&got.packet.payload()[..n], &payload[..n]);
        }
        // The second ring is independent of the first.
        rx_a.header_word(HeaderWord::InterruptMask)
            .store(1, Ordering::SeqCst);
        assert_eq!(
            rx_b.header_word(HeaderWord::InterruptMask)
                .load(Ordering::SeqCst),
            1
        );
        assert_eq!(
            tx_b.header_word(HeaderWord::InterruptMask)
                .load(Ordering::SeqCst),
            0
        );
    }

    #[test]
    fn unaligned_copies_round_trip() {
        let fd = create_memfd("hv-vss-test", 2 * RING_LEN).unwrap();
        let (tx, _) = pair_over(&fd);
        for offset in 0..9 {
            for len in [0, 1, 7, 8, 9, 17, 100] {
                let src: Vec<u8> = (0..len).map(|i| (i + offset) as u8 ^ 0x5a).collect();
                tx.write_data(offset, &src);
                let mut out = vec![0u8; len];
                tx.read_data(offset, &mut out);
                assert_eq!(out, src);
            }
        }
    }

    #[test]
    fn ring_windows_must_fit() {
        let fd = create_memfd("hv-vss-test", 2 * RING_LEN).unwrap();
        let map = Arc::new(SharedMapping::map(fd.as_fd(), 0, 2 * RING_LEN).unwrap());
        assert!(MappedRing::new(map.clone(), RING_LEN, RING_LEN + 8, page_size()).is_err());
        assert!(MappedRing::new(map.clone(), 4, RING_LEN, page_size()).is_err());
        assert!(MappedRing::new(map.clone(), 0, 64, 64).is_err());
        assert!(MappedRing::new(map, 0, RING_LEN, 0x40).is_err());
    }

    #[test]
    #[should_panic(expected = "beyond")]
    fn out_of_range_data_access_panics_instead_of_touching_memory() {
        let fd = create_memfd("hv-vss-test", 2 * RING_LEN).unwrap();
        let (tx, _) = pair_over(&fd);
        let mut b = [0u8; 16];
        tx.read_data(tx.data_len() - 8, &mut b);
    }

    #[test]
    fn unsealed_fd_is_refused() {
        let fd = rustix::fs::memfd_create("plain", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        assert!(matches!(
            check_memfd(&fd, 4096),
            Err(MemError::UnsafeMemfd { .. })
        ));
        let sealed = create_memfd("sealed", 4096).unwrap();
        assert!(matches!(
            check_memfd(&sealed, 8192),
            Err(MemError::UnsafeMemfd { .. })
        ));
    }
}
