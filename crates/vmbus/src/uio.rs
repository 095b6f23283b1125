//! A VMBus channel over `/dev/uioN` of `uio_hv_generic`, and the channel trait every ring
//! backend implements.
//!
//! Kernel contract (wire-protocol.md §3.2–3.3): map 0 of `/dev/uioN` is the TX ring followed
//! by the RX ring, each `map0 size / 2` bytes with a one-page header (0x402000 bytes on
//! current kernels: 2 MiB + one page per ring; 4 MiB before commit 0315fef2aff9; always read
//! from sysfs). The first open opens the channel. A host interrupt bumps the event counter
//! (`poll`/`read`). `write(1)` unmasks RX and signals the host, but only on a channel without
//! a monitor page (`/sys/bus/vmbus/devices/<inst>/monitor_id` absent): on one with a monitor
//! page the replies would never be announced, so [`UioChannel::open`] refuses such a device
//! ([`ChannelError::MonitorPage`]).
//!
//! Two driver generations (§3.2): before commit b15b7d2a1b09 the driver set RX
//! `interrupt_mask` = 1 at open and on every host interrupt; since then (CVE-2025-40048, in
//! mainline and stable 6.17.3, 6.12.53, 6.6.112, 6.1.156, 5.15.195, 5.10.246, 5.4.301) it
//! never touches the mask, and at open the mask holds whatever the previous owner left,
//! possibly 1. Userspace owns the mask on new kernels; the channel works on both because
//! it never relies on the driver's masking: it unmasks, fences and re-checks before every
//! block ([`VmbusChannel::wait`], [`VmbusChannel::unmask`]).
//!
//! Rescind (§3.2): `read` and `poll` report `EIO`/`POLLERR`, and `write` returns `EINVAL`
//! (the UIO core finds no device info before it checks the irq), so after a successful open
//! all three mean [`ChannelError::Rescinded`]. The kernel then frees the ring pages while
//! they are still mapped (`remap_pfn_range` holds no reference): a write into the mapping
//! lands in freed memory. The channel therefore unmaps the rings the moment it sees a
//! rescind, refuses every later call, and offers [`VmbusChannel::check_alive`] (a
//! zero-timeout poll for `POLLERR`), which the IC endpoint calls before every send burst.
//! A rescind between that poll and the write cannot be excluded from userspace.
//!
//! # Design
//!
//! [`RingChannel`] is the one implementation of [`VmbusChannel`]: a [`RingReader`] on the
//! receive ring, a [`RingWriter`] on the send ring, and a [`Doorbell`] that knows how to
//! signal the peer and wait for its signal. [`UioChannel`] plugs in `/dev/uioN`
//! ([`UioDoorbell`]); `crate::shm::ShmChannel` plugs in eventfds, so the IC endpoint is
//! written once against [`VmbusChannel`] and runs over either.
//!
//! [`VmbusChannel::wait`] does the lossless wake-up dance of §3.3: if data is waiting it
//! returns at once; otherwise it optionally spins (masked, so the peer need not signal) for a
//! bounded time, then unmasks, fences and re-checks the ring, and only then blocks on the fd.
//! The caller's loop is therefore just `wait`, then `recv` until `None`, answering each.
//!
//! # Limitations
//!
//! Nothing here can run for real without Hyper-V: the unit tests cover the map-0 layout and
//! sysfs parsing; the same [`RingChannel`] code is exercised end to end by the shared-memory
//! backend across two processes.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use hv_vss_ring::{RingError, RingMem, RingReader, RingWriter};
use hv_vss_sys::mem::{MappedRing, MemError, page_size, ring_pair};
use hv_vss_sys::uio::{UioDevice, UioError, UioPaths, UioReadiness};

pub use hv_vss_ring::Packet;

/// Errors of a VMBus channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The device was removed (`EIO`, `EINVAL` or `POLLERR` on `/dev/uioN` after a
    /// successful open): thaw, close, wait for the re-offer (R15). The rings are unmapped.
    #[error("the VMBus channel was rescinded")]
    Rescinded,
    /// The channel has a monitor page (`monitor_id` in sysfs): `uio_hv_generic`'s `write(1)`
    /// would not signal the host, so replies would never reach it. UIO mode is refused.
    #[error(
        "the VMBus channel of uio{index} has a monitor page ({}): uio_hv_generic does not \
         signal the host for such channels, so replies would never reach it; use drop-in mode",
        monitor_id.display()
    )]
    MonitorPage {
        /// N of `/dev/uioN`.
        index: u32,
        /// The `monitor_id` attribute found.
        monitor_id: std::path::PathBuf,
    },
    /// A ring error: `Full`, or a fatal one (`Corrupt`, `Oversize`, ...); see
    /// [`RingError::is_fatal`].
    #[error(transparent)]
    Ring(#[from] RingError),
    /// The UIO device could not be opened or mapped.
    #[error(transparent)]
    Device(UioError),
    /// Shared memory could not be set up.
    #[error(transparent)]
    Memory(#[from] MemError),
    /// A system call on a signalling fd failed.
    #[error("{op}: {source}")]
    Io {
        /// The call.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The ring layout or a handed-over channel description is unusable.
    #[error("bad channel setup: {reason}")]
    Setup {
        /// What is wrong.
        reason: String,
    },
}

impl ChannelError {
    /// True when the channel must be closed and reopened (rescind, corrupt ring, oversize
    /// packet, setup or I/O failure); false only for a full ring.
    pub fn is_fatal(&self) -> bool {
        match self {
            ChannelError::Ring(e) => e.is_fatal(),
            _ => true,
        }
    }
}

impl From<UioError> for ChannelError {
    fn from(e: UioError) -> Self {
        match e {
            UioError::Rescinded => ChannelError::Rescinded,
            other => ChannelError::Device(other),
        }
    }
}

/// Within the spin budget of [`VmbusChannel::wait`], how long to poll the ring without
/// yielding the CPU.
pub const BUSY_POLL: Duration = Duration::from_micros(5);

/// Why [`VmbusChannel::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Data may be waiting: drain with [`VmbusChannel::recv`] (it can be a spurious wake).
    Ready,
    /// The timeout expired with nothing to read.
    TimedOut,
}

/// A VMBus channel: one ring to send on, one to receive from, and signals both ways.
///
/// The guest side over `/dev/uioN` ([`UioChannel`]), and both the guest and host sides over
/// shared memory (`crate::shm::ShmChannel`) implement it.
pub trait VmbusChannel {
    /// Queues one in-band packet (type 6, flags 0) with `trans_id` on the send ring and
    /// signals the peer if §2.5 says so. [`RingError::Full`] if there is no room now.
    fn send(&mut self, trans_id: u64, payload: &[u8]) -> Result<(), ChannelError>;

    /// Copies the next packet from the receive ring into the channel's private buffer
    /// (at least 16 KiB); `None` when the ring is empty. Signals the peer if the read freed
    /// the space it waits for (§2.4 step 4).
    fn recv(&mut self) -> Result<Option<Packet<'_>>, ChannelError>;

    /// Waits until data may be waiting, or `timeout` (`None` = forever) passes. Returns at
    /// once if data is waiting; otherwise spins (see [`VmbusChannel::set_spin`]), unmasks
    /// and re-checks, then blocks on the signal fd. Leaves the receive ring unmasked unless
    /// it returned from the spin.
    fn wait(&mut self, timeout: Option<Duration>) -> Result<Wake, ChannelError>;

    /// Masks receive interrupts: the peer stops signalling.
    fn mask(&mut self) -> Result<(), ChannelError>;

    /// Unmasks receive interrupts, full fence, re-checks the ring. True when data is
    /// already waiting (drain before blocking: no signal will come for it).
    fn unmask(&mut self) -> Result<bool, ChannelError>;

    /// How long [`VmbusChannel::wait`] polls the ring (masked) before blocking. Zero
    /// disables spinning.
    fn set_spin(&mut self, spin: Duration);

    /// The fd that becomes readable when the peer signals, for callers that multiplex it
    /// with other fds in their own `poll`. After it polls readable, call
    /// [`VmbusChannel::ack_signals`], then drain, then [`VmbusChannel::unmask`].
    fn signal_fd(&self) -> BorrowedFd<'_>;

    /// Consumes pending signals on [`VmbusChannel::signal_fd`] without blocking.
    fn ack_signals(&mut self) -> Result<(), ChannelError>;

    /// Polls the device with a zero timeout: [`ChannelError::Rescinded`] (and the rings
    /// unmapped) if it reports `POLLERR`. Call before every burst of sends: after a rescind
    /// the ring pages are freed memory.
    fn check_alive(&mut self) -> Result<(), ChannelError>;

    /// Drops the ring mapping for good; every later call fails with
    /// [`ChannelError::Rescinded`]. Done automatically on a rescind the channel sees itself.
    fn unmap(&mut self);

    /// False once the rings are unmapped.
    fn is_mapped(&self) -> bool;
}

/// How a backend signals its peer and waits for the peer's signal.
pub trait Doorbell {
    /// Signals the peer (the ring rules already decided it is needed).
    fn ring(&mut self) -> Result<(), ChannelError>;
    /// Blocks until the peer signals or `timeout` passes. True when signalled.
    fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, ChannelError>;
    /// Consumes pending signals without blocking.
    fn ack(&mut self) -> Result<(), ChannelError>;
    /// The fd that polls readable when signalled.
    fn fd(&self) -> BorrowedFd<'_>;
    /// Zero-timeout poll: [`ChannelError::Rescinded`] when the fd reports an error.
    fn check_alive(&mut self) -> Result<(), ChannelError>;
    /// Drops any reference the doorbell holds to the ring memory.
    fn unmap(&mut self) {}
}

/// The two rings of a mapped channel.
#[derive(Debug)]
struct Rings<M> {
    rx: RingReader<M>,
    tx: RingWriter<M>,
}

/// The ring-based [`VmbusChannel`]: receive ring, send ring and a [`Doorbell`].
#[derive(Debug)]
pub struct RingChannel<M, D> {
    /// `None` once unmapped (after a rescind).
    rings: Option<Rings<M>>,
    doorbell: D,
    spin: Duration,
}

impl<M: RingMem, D: Doorbell> RingChannel<M, D> {
    /// A channel reading `rx`, writing `tx`, signalling through `doorbell`; no spinning.
    pub fn new(rx: M, tx: M, doorbell: D) -> Result<Self, ChannelError> {
        Ok(Self {
            rings: Some(Rings {
                rx: RingReader::new(rx)?,
                tx: RingWriter::new(tx)?,
            }),
            doorbell,
            spin: Duration::ZERO,
        })
    }

    /// The receive half (for diagnostics and tests); `None` once unmapped.
    pub fn reader(&self) -> Option<&RingReader<M>> {
        self.rings.as_ref().map(|r| &r.rx)
    }

    /// The send half (for diagnostics and tests); `None` once unmapped.
    pub fn writer(&self) -> Option<&RingWriter<M>> {
        self.rings.as_ref().map(|r| &r.tx)
    }

    /// The doorbell.
    pub fn doorbell(&self) -> &D {
        &self.doorbell
    }

    /// The doorbell, mutably (a simulated host hangs up or signals through it).
    pub fn doorbell_mut(&mut self) -> &mut D {
        &mut self.doorbell
    }

    fn rings(&self) -> Result<&Rings<M>, ChannelError> {
        self.rings.as_ref().ok_or(ChannelError::Rescinded)
    }

    /// Unmaps on a rescind, then hands the result on.
    fn seen<T>(&mut self, r: Result<T, ChannelError>) -> Result<T, ChannelError> {
        if matches!(r, Err(ChannelError::Rescinded)) {
            self.unmap();
        }
        r
    }
}

impl<M: RingMem, D: Doorbell> VmbusChannel for RingChannel<M, D> {
    fn send(&mut self, trans_id: u64, payload: &[u8]) -> Result<(), ChannelError> {
        let rings = self.rings.as_mut().ok_or(ChannelError::Rescinded)?;
        let sent = rings.tx.write(trans_id, payload)?;
        if sent.signal_peer {
            let r = self.doorbell.ring();
            self.seen(r)?;
        }
        Ok(())
    }

    fn recv(&mut self) -> Result<Option<Packet<'_>>, ChannelError> {
        let rings = self.rings.as_mut().ok_or(ChannelError::Rescinded)?;
        match rings.rx.read() {
            Ok(received) => {
                // A rescind seen here is unmapped by the caller's next step (the endpoint
                // calls `unmap` on every rescind): the packet borrows the reader.
                if received.signal_peer {
                    self.doorbell.ring()?;
                }
                Ok(Some(received.packet))
            }
            Err(RingError::Empty) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<Wake, ChannelError> {
        let r = self.wait_inner(timeout);
        self.seen(r)
    }

    fn mask(&mut self) -> Result<(), ChannelError> {
        self.rings()?.rx.mask();
        Ok(())
    }

    fn unmask(&mut self) -> Result<bool, ChannelError> {
        Ok(self.rings()?.rx.unmask_and_recheck()?)
    }

    fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    fn signal_fd(&self) -> BorrowedFd<'_> {
        self.doorbell.fd()
    }

    fn ack_signals(&mut self) -> Result<(), ChannelError> {
        self.rings()?;
        let r = self.doorbell.ack();
        self.seen(r)
    }

    fn check_alive(&mut self) -> Result<(), ChannelError> {
        self.rings()?;
        let r = self.doorbell.check_alive();
        self.seen(r)
    }

    fn unmap(&mut self) {
        self.rings = None;
        self.doorbell.unmap();
    }

    fn is_mapped(&self) -> bool {
        self.rings.is_some()
    }
}

impl<M: RingMem, D: Doorbell> RingChannel<M, D> {
    fn wait_inner(&mut self, timeout: Option<Duration>) -> Result<Wake, ChannelError> {
        let rx = &self.rings()?.rx;
        if rx.has_data()? {
            return Ok(Wake::Ready);
        }
        let start = Instant::now();
        let deadline = timeout.map(|t| start + t);
        let spin = timeout.map_or(self.spin, |t| t.min(self.spin));
        if !spin.is_zero() {
            // Masked while spinning: the peer sees the mask and skips its signal syscall.
            rx.mask();
            // A few microseconds of pure busy polling catch a peer that is running on
            // another core; after that each poll is followed by sched_yield, because on a
            // machine with fewer free cores than spinners (the peer, a compiler, ...) a busy
            // loop would hold the CPU the peer needs to answer, and every round trip would
            // cost the whole budget.
            let spin_end = start + spin;
            let busy_end = start + spin.min(BUSY_POLL);
            loop {
                if rx.has_data()? {
                    return Ok(Wake::Ready);
                }
                let now = Instant::now();
                if now >= spin_end {
                    break;
                }
                if now < busy_end {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
        // Unmask, full fence, look again: data published before the peer saw the unmask
        // gets no signal (§3.3 step 3).
        if rx.unmask_and_recheck()? {
            return Ok(Wake::Ready);
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if self.doorbell.wait(left)? {
            self.doorbell.ack()?;
            Ok(Wake::Ready)
        } else {
            Ok(Wake::TimedOut)
        }
    }
}

/// Where TX and RX sit in map 0 of a uio_hv_generic device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UioRingLayout {
    /// Size of each ring (header + data): map 0 size / 2.
    pub ring_len: usize,
    /// Header size: the system page size.
    pub header_len: usize,
    /// Offset of the TX ring in map 0 (always 0).
    pub tx_offset: usize,
    /// Offset of the RX ring in map 0 (`ring_len`).
    pub rx_offset: usize,
}

impl UioRingLayout {
    /// The layout for a map 0 of `map0_len` bytes with `header_len`-byte ring headers.
    /// Each ring must be a whole number of headers and have a data area.
    pub fn from_map0_len(map0_len: usize, header_len: usize) -> Result<Self, ChannelError> {
        let ring_len = map0_len / 2;
        if header_len == 0
            || map0_len % 2 != 0
            || ring_len % header_len != 0
            || ring_len <= header_len
        {
            return Err(ChannelError::Setup {
                reason: format!(
                    "map 0 of {map0_len:#x} bytes does not hold two rings with {header_len:#x}-byte headers"
                ),
            });
        }
        Ok(Self {
            ring_len,
            header_len,
            tx_offset: 0,
            rx_offset: ring_len,
        })
    }

    /// Data area size of each ring.
    pub fn data_len(&self) -> usize {
        self.ring_len - self.header_len
    }
}

/// Signals the host with `write(1)` and waits with `poll` on `/dev/uioN`.
#[derive(Debug)]
pub struct UioDoorbell {
    dev: UioDevice,
}

impl UioDoorbell {
    /// The device.
    pub fn device(&self) -> &UioDevice {
        &self.dev
    }
}

impl Doorbell for UioDoorbell {
    fn ring(&mut self) -> Result<(), ChannelError> {
        // write(1): unmask RX and signal the host (no monitor page for ICs).
        Ok(self.dev.set_interrupts(true)?)
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, ChannelError> {
        Ok(self.dev.poll(timeout)? == UioReadiness::Event)
    }

    fn ack(&mut self) -> Result<(), ChannelError> {
        self.dev.read_event_count()?;
        Ok(())
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.dev.as_fd()
    }

    fn check_alive(&mut self) -> Result<(), ChannelError> {
        // POLLERR (UioError::Rescinded) is all that matters here; an event stays pending.
        self.dev.poll(Some(Duration::ZERO))?;
        Ok(())
    }
}

/// The guest side of a VMBus channel over `/dev/uioN`.
pub type UioChannel = RingChannel<MappedRing, UioDoorbell>;

impl RingChannel<MappedRing, UioDoorbell> {
    /// Opens `/dev/uio<index>`, maps map 0 and locates TX (offset 0) and RX (offset
    /// ring size). RX interrupts may start masked (old drivers mask at open, new ones leave
    /// what the previous owner left): call [`VmbusChannel::wait`] (or
    /// [`VmbusChannel::unmask`] and drain) at once, because the host's first message may
    /// already be in the ring with no interrupt to announce it. A channel with a monitor
    /// page is refused before anything is opened ([`ChannelError::MonitorPage`]).
    pub fn open(index: u32) -> Result<Self, ChannelError> {
        Self::open_with(UioPaths::default(), index)
    }

    /// As [`UioChannel::open`] under other `/dev` and `/sys/class/uio` roots.
    pub fn open_with(paths: UioPaths, index: u32) -> Result<Self, ChannelError> {
        // `/sys/class/uio/uioN/device` is the VMBus device; `monitor_id` exists there only
        // when the channel has a monitor page (wire §3.4).
        let monitor_id = paths
            .sysfs_class_uio
            .join(format!("uio{index}/device/monitor_id"));
        if monitor_id.exists() {
            return Err(ChannelError::MonitorPage { index, monitor_id });
        }
        let dev = UioDevice::open_with(paths, index)?;
        let map = dev.map(0)?;
        let layout = UioRingLayout::from_map0_len(map.len(), page_size())?;
        let (tx, rx) = ring_pair(std::sync::Arc::new(map), layout.ring_len, layout.header_len)?;
        tracing::debug!(
            uio = index,
            ring_len = layout.ring_len,
            "uio channel mapped"
        );
        RingChannel::new(rx, tx, UioDoorbell { dev })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map0_layout_is_tx_then_rx() {
        let l = UioRingLayout::from_map0_len(4 << 20, 4096).unwrap();
        assert_eq!(
            (l.tx_offset, l.rx_offset, l.ring_len),
            (0, 2 << 20, 2 << 20)
        );
        assert_eq!(l.data_len(), (2 << 20) - 4096);
        // arm64 with 64 KiB pages.
        let l = UioRingLayout::from_map0_len(4 << 20, 64 << 10).unwrap();
        assert_eq!(l.data_len(), (2 << 20) - (64 << 10));
        assert!(UioRingLayout::from_map0_len(8192, 4096).is_err());
        assert!(UioRingLayout::from_map0_len(3 * 4096, 4096).is_err());
        assert!(UioRingLayout::from_map0_len(0, 4096).is_err());
    }

    #[test]
    fn open_maps_rings_from_a_fake_device_tree() {
        // A regular file stands in for /dev/uio7: mapping and ring placement work the same;
        // read/write/poll semantics of the real device cannot be reproduced here.
        let dir = tempfile::tempdir().unwrap();
        let paths = UioPaths {
            sysfs_class_uio: dir.path().join("sys"),
            dev: dir.path().join("dev"),
        };
        let ring_len = 16 * page_size();
        std::fs::create_dir_all(paths.sysfs_class_uio.join("uio7/maps/map0")).unwrap();
        std::fs::create_dir_all(&paths.dev).unwrap();
        std::fs::write(paths.map_size_file(7, 0), format!("{:#x}\n", 2 * ring_len)).unwrap();
        let file = std::fs::File::create(paths.device(7)).unwrap();
        file.set_len(2 * ring_len as u64).unwrap();
        drop(file);

        let ch = UioChannel::open_with(paths.clone(), 7).unwrap();
        assert_eq!(
            ch.reader().unwrap().mem().data_len(),
            ring_len - page_size()
        );

        // A packet placed in the RX ring (second half of the file) is read by the channel.
        let host_view = {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(paths.device(7))
                .unwrap();
            let map = hv_vss_sys::mem::SharedMapping::map(f.as_fd(), 0, 2 * ring_len).unwrap();
            ring_pair(std::sync::Arc::new(map), ring_len, page_size())
                .unwrap()
                .1
        };
        let mut host_writer = RingWriter::new(host_view).unwrap();
        let _ = host_writer.write(0x2a, b"negotiate").unwrap();
        let mut ch = ch;
        let got = ch.recv().unwrap().unwrap();
        assert_eq!(got.trans_id(), 0x2a);
        assert_eq!(&got.payload()[..9], b"negotiate");
        assert!(ch.recv().unwrap().is_none());
    }

    #[test]
    fn rescind_maps_to_its_own_variant() {
        assert!(matches!(
            ChannelError::from(UioError::Rescinded),
            ChannelError::Rescinded
        ));
        assert!(ChannelError::Rescinded.is_fatal());
        assert!(
            !ChannelError::Ring(RingError::Full {
                needed: 64,
                free: 8
            })
            .is_fatal()
        );
    }
}
