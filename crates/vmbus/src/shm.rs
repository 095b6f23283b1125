//! A VMBus channel over a shared-memory pair, so a guest endpoint and a simulated host can
//! run in two processes with the exact ring code and wake-up rules of `uio_hv_generic`.
//!
//! Contract (mirrors wire-protocol.md §3.2–3.3 for map 0 and `/dev/uioN`): one sealed memfd
//! of `2 × ring_len` bytes holds the TX ring (guest → host) at offset 0 and the RX ring
//! (host → guest) at `ring_len`, each a one-page header plus data area, `feature_bits` = 1.
//! The host interrupts the guest by writing to a pipe whose read end the guest polls, as it
//! polls `/dev/uioN`; the guest signals the host through an eventfd (its `write(1)`). The
//! kernel's side effects are reproduced:
//!
//! - the guest signalling the host clears RX `interrupt_mask`, as `write(1)` does in both
//!   driver generations;
//! - RX starts masked: `interrupt_mask` = 1 when the rings are created;
//! - the RX mask on host interrupts follows one of the two `uio_hv_generic` generations
//!   ([`InterruptMaskModel`], wire §3.2): before commit b15b7d2a1b09 the driver masked RX at
//!   open and before every interrupt; since then (CVE-2025-40048, mainline and stable
//!   6.17.3, 6.12.53, 6.6.112, 6.1.156, 5.15.195, 5.10.246, 5.4.301) it never touches the
//!   mask, and at open the mask is whatever the previous owner left: here 1, the worst case.
//!   A guest must work on both: unmask, full fence, re-check;
//! - rescind: the host closes its end of the pipe, so the guest's fd polls `POLLHUP` (the
//!   real device polls `POLLERR`; both are "error" to [`poll_readable`]) and a read returns
//!   end of file; the guest reports [`ChannelError::Rescinded`], as `EIO`/`EINVAL`/`POLLERR`
//!   on `/dev/uioN`. The simulator can also poison the ring memory, as the kernel frees the
//!   pages while they are still mapped, and check that the guest wrote nothing afterwards.
//!
//! # Use
//!
//! One side calls [`ShmRings::create`], keeps one end and hands the fds to the other
//! process: over a Unix socket with [`ShmRings::send_over`] / [`ShmRings::recv_from`]
//! (SCM_RIGHTS), or by inheritance and [`ShmRings::from_fds`]. Each side then takes its view
//! with [`ShmRings::guest`] or [`ShmRings::host`]; both are [`ShmChannel`]s implementing
//! [`VmbusChannel`](crate::uio::VmbusChannel). In one process, `try_clone` first. Each view
//! keeps only its own end of the pipe, so the host's hang-up reaches the guest.
//!
//! # Limitations
//!
//! - The death of the host process looks like a rescind to the guest (the pipe closes); the
//!   death of the guest is not detected through these fds: callers time out (or watch the
//!   socket or child they used to hand over the fds).
//! - The mask model belongs to the host's view and does not travel with the fds
//!   ([`ShmRings::with_mask_model`] on the side that takes the host view).

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::Duration;

use hv_vss_ring::{FEATURE_PENDING_SEND_SIZE, HeaderWord, RingMem, data_len_for};
use hv_vss_sys::mem::{MappedRing, SharedMapping, check_memfd, create_memfd, page_size, ring_pair};
use hv_vss_sys::uio::{Readable, poll_readable};
use rustix::event::EventfdFlags;
use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use rustix::pipe::PipeFlags;

use crate::uio::{ChannelError, Doorbell, RingChannel};

/// Magic at the start of the SCM_RIGHTS hand-over message.
const HANDOVER_MAGIC: [u8; 8] = *b"HVVSSRN2";
/// Hand-over message: magic, ring_len (u64 LE), header_len (u64 LE).
const HANDOVER_LEN: usize = 24;
/// File descriptors in the hand-over: memfd, interrupt pipe (read, write), to_host eventfd.
const HANDOVER_FDS: usize = 4;

fn io(op: &'static str) -> impl FnOnce(Errno) -> ChannelError {
    move |e| ChannelError::Io {
        op,
        source: e.into(),
    }
}

/// Which `uio_hv_generic` generation the host's interrupts reproduce (wire §3.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum InterruptMaskModel {
    /// Before commit b15b7d2a1b09: the driver sets RX `interrupt_mask` = 1 at open and
    /// before every host interrupt.
    DriverMasks,
    /// Since commit b15b7d2a1b09 (CVE-2025-40048): the driver never touches the mask;
    /// userspace owns it, and at open it holds what the previous owner left (1 here).
    #[default]
    UserspaceOwned,
}

impl InterruptMaskModel {
    /// Both generations, for tests that run in each.
    pub const ALL: [Self; 2] = [Self::DriverMasks, Self::UserspaceOwned];
}

/// The fds and geometry of a shared-memory channel, before either side takes its view.
#[derive(Debug)]
pub struct ShmRings {
    memfd: OwnedFd,
    /// Read end of the host's interrupt pipe: the guest polls it (its `/dev/uioN`).
    interrupt_rx: OwnedFd,
    /// Write end: the host writes to interrupt the guest, and closes it to rescind.
    interrupt_tx: OwnedFd,
    to_host: OwnedFd,
    ring_len: usize,
    header_len: usize,
    mask_model: InterruptMaskModel,
}

impl ShmRings {
    /// Creates the memfd (two rings of `ring_len` bytes, headers of one system page), the
    /// interrupt pipe and the eventfd, with RX masked and `feature_bits` set on both rings.
    pub fn create(ring_len: usize) -> Result<Self, ChannelError> {
        Self::create_with_header(ring_len, page_size())
    }

    /// As [`ShmRings::create`] with an explicit header length (e.g. 64 KiB to model arm64).
    pub fn create_with_header(ring_len: usize, header_len: usize) -> Result<Self, ChannelError> {
        check_geometry(ring_len, header_len)?;
        let memfd = create_memfd("hv-vss-rings", 2 * ring_len)?;
        let (interrupt_rx, interrupt_tx) = interrupt_pipe()?;
        let rings = Self {
            memfd,
            interrupt_rx,
            interrupt_tx,
            to_host: eventfd()?,
            ring_len,
            header_len,
            mask_model: InterruptMaskModel::default(),
        };
        let (tx, rx) = rings.map()?;
        for ring in [&tx, &rx] {
            ring.header_word(HeaderWord::FeatureBits)
                .store(FEATURE_PENDING_SEND_SIZE, Ordering::SeqCst);
        }
        // Old drivers mask at open; new ones leave what the previous owner left: 1 is the
        // case a guest must survive.
        rx.header_word(HeaderWord::InterruptMask)
            .store(1, Ordering::SeqCst);
        Ok(rings)
    }

    /// Rebuilds the description from inherited fds. The memfd must be sealed against
    /// shrinking and hold both rings.
    pub fn from_fds(
        memfd: OwnedFd,
        interrupt: (OwnedFd, OwnedFd),
        to_host: OwnedFd,
        ring_len: usize,
        header_len: usize,
    ) -> Result<Self, ChannelError> {
        check_geometry(ring_len, header_len)?;
        check_memfd(&memfd, 2 * ring_len)?;
        Ok(Self {
            memfd,
            interrupt_rx: interrupt.0,
            interrupt_tx: interrupt.1,
            to_host,
            ring_len,
            header_len,
            mask_model: InterruptMaskModel::default(),
        })
    }

    /// The `uio_hv_generic` generation the host view reproduces.
    pub fn with_mask_model(mut self, model: InterruptMaskModel) -> Self {
        self.mask_model = model;
        self
    }

    /// Size of each ring (header + data).
    pub fn ring_len(&self) -> usize {
        self.ring_len
    }

    /// Size of each ring header.
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// The fds `[memfd, interrupt pipe read end, interrupt pipe write end, to_host]`, e.g.
    /// to pass to a child process.
    pub fn fds(&self) -> [BorrowedFd<'_>; HANDOVER_FDS] {
        [
            self.memfd.as_fd(),
            self.interrupt_rx.as_fd(),
            self.interrupt_tx.as_fd(),
            self.to_host.as_fd(),
        ]
    }

    /// Duplicates every fd, so one process can take both views.
    pub fn try_clone(&self) -> Result<Self, ChannelError> {
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|source| ChannelError::Io { op: "dup", source })
        };
        Ok(Self {
            memfd: dup(&self.memfd)?,
            interrupt_rx: dup(&self.interrupt_rx)?,
            interrupt_tx: dup(&self.interrupt_tx)?,
            to_host: dup(&self.to_host)?,
            ring_len: self.ring_len,
            header_len: self.header_len,
            mask_model: self.mask_model,
        })
    }

    /// Sends the fds (SCM_RIGHTS) and the geometry as one message on a connected Unix
    /// socket (`SOCK_SEQPACKET` preferred; a stream works if nothing else is in flight).
    pub fn send_over(&self, socket: impl AsFd) -> Result<(), ChannelError> {
        let mut msg = [0u8; HANDOVER_LEN];
        msg[..8].copy_from_slice(&HANDOVER_MAGIC);
        msg[8..16].copy_from_slice(&(self.ring_len as u64).to_le_bytes());
        msg[16..24].copy_from_slice(&(self.header_len as u64).to_le_bytes());
        let fds = self.fds();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(HANDOVER_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(ChannelError::Setup {
                reason: "SCM_RIGHTS buffer too small".into(),
            });
        }
        let sent = rustix::net::sendmsg(
            socket,
            &[IoSlice::new(&msg)],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .map_err(io("sendmsg"))?;
        if sent != HANDOVER_LEN {
            return Err(ChannelError::Setup {
                reason: format!("hand-over message cut to {sent} bytes"),
            });
        }
        Ok(())
    }

    /// Receives what [`ShmRings::send_over`] sent and validates it.
    pub fn recv_from(socket: impl AsFd) -> Result<Self, ChannelError> {
        let mut msg = [0u8; HANDOVER_LEN];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(HANDOVER_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            socket,
            &mut [IoSliceMut::new(&mut msg)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(io("recvmsg"))?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = m {
                fds.extend(rights);
            }
        }
        if got.bytes != HANDOVER_LEN || msg[..8] != HANDOVER_MAGIC || fds.len() != HANDOVER_FDS {
            return Err(ChannelError::Setup {
                reason: format!(
                    "bad hand-over message: {} bytes, {} fds",
                    got.bytes,
                    fds.len()
                ),
            });
        }
        let field = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&msg[at..at + 8]);
            usize::try_from(u64::from_le_bytes(b)).unwrap_or(usize::MAX)
        };
        let mut fds = fds.into_iter();
        let (Some(memfd), Some(irq_rx), Some(irq_tx), Some(to_host)) =
            (fds.next(), fds.next(), fds.next(), fds.next())
        else {
            return Err(ChannelError::Setup {
                reason: "missing fds".into(),
            });
        };
        Self::from_fds(memfd, (irq_rx, irq_tx), to_host, field(8), field(16))
    }

    fn map(&self) -> Result<(MappedRing, MappedRing), ChannelError> {
        let map = SharedMapping::map(self.memfd.as_fd(), 0, 2 * self.ring_len)?;
        Ok(ring_pair(Arc::new(map), self.ring_len, self.header_len)?)
    }

    /// The guest's view: reads RX, writes TX, signals `to_host` (clearing its RX mask, as
    /// `write(1)` does), wakes on the interrupt pipe, whose hang-up is the rescind. The
    /// pipe's write end is closed here.
    pub fn guest(self) -> Result<ShmChannel, ChannelError> {
        let (tx, rx) = self.map()?;
        let doorbell = ShmDoorbell {
            signal: Some(Signal::Eventfd(self.to_host)),
            wake: self.interrupt_rx,
            on_signal: Some((rx.clone(), 0)),
        };
        drop(self.interrupt_tx);
        RingChannel::new(rx, tx, doorbell)
    }

    /// The simulated host's view: reads TX, writes RX, interrupts the guest through the
    /// pipe (first setting the guest's RX `interrupt_mask` under
    /// [`InterruptMaskModel::DriverMasks`]), wakes on `to_host`. The pipe's read end is
    /// closed here, so [`ShmDoorbell::hang_up`] reaches the guest.
    pub fn host(self) -> Result<ShmChannel, ChannelError> {
        let (tx, rx) = self.map()?;
        let on_signal = match self.mask_model {
            InterruptMaskModel::DriverMasks => Some((rx.clone(), 1)),
            InterruptMaskModel::UserspaceOwned => None,
        };
        let doorbell = ShmDoorbell {
            signal: Some(Signal::Pipe(self.interrupt_tx)),
            wake: self.to_host,
            on_signal,
        };
        drop(self.interrupt_rx);
        RingChannel::new(tx, rx, doorbell)
    }
}

fn check_geometry(ring_len: usize, header_len: usize) -> Result<(), ChannelError> {
    let ok = header_len >= hv_vss_ring::HEADER_USED_LEN
        && header_len % 8 == 0
        && ring_len % 8 == 0
        && data_len_for(ring_len, header_len).is_some_and(|d| d >= 64 && d <= u32::MAX as usize)
        && ring_len.checked_mul(2).is_some();
    if ok {
        Ok(())
    } else {
        Err(ChannelError::Setup {
            reason: format!("ring of {ring_len:#x} bytes with a {header_len:#x}-byte header"),
        })
    }
}

fn eventfd() -> Result<OwnedFd, ChannelError> {
    rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(io("eventfd"))
}

fn interrupt_pipe() -> Result<(OwnedFd, OwnedFd), ChannelError> {
    rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).map_err(io("pipe"))
}

/// How a doorbell signals its peer.
#[derive(Debug)]
enum Signal {
    /// The guest's `write(1)`: an eventfd.
    Eventfd(OwnedFd),
    /// The host's interrupt: a byte into the pipe the guest polls.
    Pipe(OwnedFd),
}

/// Signals through one fd, waits on another, and reproduces the kernel's effect on the RX
/// `interrupt_mask` when signalling.
#[derive(Debug)]
pub struct ShmDoorbell {
    /// `None` once the host hung up (rescind).
    signal: Option<Signal>,
    wake: OwnedFd,
    /// Before signalling, store this value to this ring's `interrupt_mask`.
    on_signal: Option<(MappedRing, u32)>,
}

impl ShmDoorbell {
    /// Host side: closes the interrupt pipe, so the guest's fd polls `POLLHUP` and reads
    /// end of file: the rescind. Nothing is signalled afterwards.
    pub fn hang_up(&mut self) {
        self.signal = None;
    }
}

impl Doorbell for ShmDoorbell {
    fn ring(&mut self) -> Result<(), ChannelError> {
        let Some(signal) = &self.signal else {
            return Ok(());
        };
        if let Some((ring, value)) = &self.on_signal {
            ring.header_word(HeaderWord::InterruptMask)
                .store(*value, Ordering::SeqCst);
            fence(Ordering::SeqCst);
        }
        let (fd, op) = match signal {
            Signal::Eventfd(fd) => (fd, "write(eventfd)"),
            Signal::Pipe(fd) => (fd, "write(pipe)"),
        };
        match rustix::io::write(fd, &1u64.to_ne_bytes()) {
            // EAGAIN: the counter is saturated or the pipe full, so the peer has a wake-up
            // pending anyway. EPIPE: the guest is gone, which the host cannot act on.
            Ok(_) | Err(Errno::AGAIN) | Err(Errno::PIPE) => Ok(()),
            Err(e) => Err(io(op)(e)),
        }
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, ChannelError> {
        match poll_readable(self.wake.as_fd(), timeout).map_err(io("poll(doorbell)"))? {
            Readable::Yes => Ok(true),
            Readable::TimedOut => Ok(false),
            Readable::Error => Err(ChannelError::Rescinded),
        }
    }

    fn ack(&mut self) -> Result<(), ChannelError> {
        let mut buf = [0u8; 64];
        loop {
            match rustix::io::read(&self.wake, &mut buf) {
                // End of file: the host closed the interrupt pipe.
                Ok(0) => return Err(ChannelError::Rescinded),
                Ok(_) => continue,
                Err(Errno::AGAIN) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(io("read(doorbell)")(e)),
            }
        }
    }

    fn check_alive(&mut self) -> Result<(), ChannelError> {
        match poll_readable(self.wake.as_fd(), Some(Duration::ZERO))
            .map_err(io("poll(doorbell)"))?
        {
            Readable::Error => Err(ChannelError::Rescinded),
            Readable::Yes | Readable::TimedOut => Ok(()),
        }
    }

    fn unmap(&mut self) {
        self.on_signal = None;
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }
}

/// Either side of a shared-memory channel (see [`ShmRings::guest`] and [`ShmRings::host`]).
pub type ShmChannel = RingChannel<MappedRing, ShmDoorbell>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uio::{VmbusChannel, Wake};
    use hv_vss_ring::RingError;

    const RING_LEN: usize = 64 * 1024;

    fn pair() -> (ShmChannel, ShmChannel) {
        pair_in(InterruptMaskModel::default())
    }

    fn pair_in(model: InterruptMaskModel) -> (ShmChannel, ShmChannel) {
        let rings = ShmRings::create(RING_LEN).unwrap();
        let host = rings
            .try_clone()
            .unwrap()
            .with_mask_model(model)
            .host()
            .unwrap();
        (rings.guest().unwrap(), host)
    }

    fn masked(ch: &ShmChannel) -> bool {
        ch.reader().expect("mapped").is_masked()
    }

    fn signalled(fd: BorrowedFd<'_>) -> bool {
        poll_readable(fd, Some(Duration::ZERO)) == Ok(Readable::Yes)
    }

    /// Both generations start masked (old: the driver's open masks; new: the previous
    /// owner's mask of 1 is left), so the first message needs unmask and drain.
    #[test]
    fn rx_starts_masked_and_first_message_needs_unmask_and_drain() {
        for model in InterruptMaskModel::ALL {
            let (mut guest, mut host) = pair_in(model);
            assert!(masked(&guest), "{model:?}");
            host.send(1, b"negotiate").unwrap();
            // Masked: the host did not signal, so a plain poll of the fd would hang forever.
            assert!(!signalled(guest.signal_fd()), "{model:?}");
            // wait() finds it anyway.
            assert_eq!(
                guest.wait(Some(Duration::from_millis(10))).unwrap(),
                Wake::Ready
            );
            assert_eq!(guest.recv().unwrap().unwrap().trans_id(), 1);
            assert!(guest.recv().unwrap().is_none());
        }
    }

    /// Wire §3.2: the old driver masks RX before every host interrupt; since b15b7d2a1b09
    /// it never touches the mask. Everything else is the same in both.
    #[test]
    fn host_interrupts_mask_rx_only_with_the_old_driver() {
        for (model, masks) in [
            (InterruptMaskModel::DriverMasks, true),
            (InterruptMaskModel::UserspaceOwned, false),
        ] {
            let (mut guest, mut host) = pair_in(model);
            // Unmasked and empty: the host signals.
            assert!(!guest.unmask().unwrap());
            host.send(1, b"a").unwrap();
            assert!(signalled(guest.signal_fd()), "{model:?}");
            assert_eq!(masked(&guest), masks, "{model:?}");
            // Not empty any more: no second signal, whatever the mask.
            guest.ack_signals().unwrap();
            assert!(guest.unmask().unwrap(), "packet 1 is still waiting");
            host.send(2, b"b").unwrap();
            assert!(!signalled(guest.signal_fd()), "{model:?}");
            // The guest's reply signals the host (TX unmasked, empty) and, like write(1),
            // unmasks RX.
            guest.mask().unwrap();
            guest.send(1, b"reply").unwrap();
            assert!(signalled(host.signal_fd()), "{model:?}");
            assert!(!masked(&guest), "{model:?}");
        }
    }

    /// The simulated rescind: the host closes its interrupt pipe; the guest's fd reports an
    /// error, every call fails with `Rescinded`, and the rings are unmapped at once.
    #[test]
    fn a_host_hang_up_is_a_rescind_and_unmaps_the_rings() {
        for model in InterruptMaskModel::ALL {
            let (mut guest, mut host) = pair_in(model);
            host.send(1, b"freeze").unwrap();
            assert!(guest.check_alive().is_ok());
            host.doorbell_mut().hang_up();
            assert!(matches!(guest.check_alive(), Err(ChannelError::Rescinded)));
            assert!(!guest.is_mapped(), "{model:?}");
            assert!(guest.reader().is_none());
            assert!(matches!(guest.recv(), Err(ChannelError::Rescinded)));
            assert!(matches!(
                guest.send(1, b"late reply"),
                Err(ChannelError::Rescinded)
            ));
            assert!(host.recv().unwrap().is_none(), "nothing was written");
        }
        // A guest blocked in wait() or draining its fd sees the hang-up too.
        let (mut guest, mut host) = pair();
        host.doorbell_mut().hang_up();
        assert!(matches!(
            guest.wait(Some(Duration::from_secs(5))),
            Err(ChannelError::Rescinded)
        ));
        let (mut guest, mut host) = pair();
        host.doorbell_mut().hang_up();
        assert!(matches!(guest.ack_signals(), Err(ChannelError::Rescinded)));
        assert!(!guest.is_mapped());
    }

    #[test]
    fn wait_times_out_when_nothing_comes() {
        let (mut guest, _host) = pair();
        guest.set_spin(Duration::from_micros(50));
        assert_eq!(
            guest.wait(Some(Duration::from_millis(5))).unwrap(),
            Wake::TimedOut
        );
        assert!(!masked(&guest), "blocked unmasked");
    }

    #[test]
    fn handover_over_a_unix_socket() {
        use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let rings = ShmRings::create(RING_LEN).unwrap();
        rings.send_over(&a).unwrap();
        let mut host = ShmRings::recv_from(&b).unwrap().host().unwrap();
        let mut guest = rings.guest().unwrap();
        guest.send(7, &[9; 6000]).unwrap();
        assert_eq!(
            host.wait(Some(Duration::from_secs(1))).unwrap(),
            Wake::Ready
        );
        let got = host.recv().unwrap().unwrap();
        assert_eq!(
            (got.trans_id(), &got.payload()[..6000]),
            (7, &[9u8; 6000][..])
        );
        // A bogus message is refused.
        rustix::net::send(&a, b"nope", rustix::net::SendFlags::empty()).unwrap();
        assert!(matches!(
            ShmRings::recv_from(&b),
            Err(ChannelError::Setup { .. })
        ));
    }

    #[test]
    fn full_ring_is_not_fatal() {
        let rings = ShmRings::create(2 * page_size()).unwrap();
        let mut guest = rings.guest().unwrap();
        let mut err = None;
        for id in 0..1000 {
            if let Err(e) = guest.send(id, &[0; 100]) {
                err = Some(e);
                break;
            }
        }
        let err = err.expect("ring fills up");
        assert!(matches!(err, ChannelError::Ring(RingError::Full { .. })));
        assert!(!err.is_fatal());
    }

    #[test]
    fn bad_geometry_is_refused() {
        assert!(ShmRings::create(page_size()).is_err());
        assert!(ShmRings::create_with_header(64 * 1024, 0x20).is_err());
    }
}
