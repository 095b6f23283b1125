//! A VMBus channel over a shared-memory pair, so a guest endpoint and a simulated host can
//! run in two processes with the exact ring code and wake-up rules of `uio_hv_generic`.
//!
//! Contract (mirrors wire-protocol.md §3.3 map 0): one sealed memfd of `2 × ring_len` bytes
//! holds the TX ring (guest → host) at offset 0 and the RX ring (host → guest) at
//! `ring_len`, each a one-page header plus data area, `feature_bits` = 1. Two eventfds carry
//! the signals: `to_host` (the guest's `write(1)`) and `to_guest` (the host's interrupt).
//! The kernel's side effects are reproduced:
//!
//! - RX starts masked, as after the first open of `/dev/uioN`;
//! - the host "interrupting" the guest sets RX `interrupt_mask` = 1 before signalling, as
//!   the driver's interrupt handler does;
//! - the guest signalling the host clears RX `interrupt_mask`, as `write(1)` does.
//!
//! # Use
//!
//! One side calls [`ShmRings::create`], keeps one end and hands the fds to the other
//! process: over a Unix socket with [`ShmRings::send_over`] / [`ShmRings::recv_from`]
//! (SCM_RIGHTS), or by inheritance and [`ShmRings::from_fds`]. Each side then takes its view
//! with [`ShmRings::guest`] or [`ShmRings::host`]; both are [`ShmChannel`]s implementing
//! [`VmbusChannel`](crate::uio::VmbusChannel). In one process, `try_clone` first.
//!
//! # Limitations
//!
//! The death of the peer process is not detected through the eventfds; callers time out (or
//! watch the socket or child they used to hand over the fds).

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

use crate::uio::{ChannelError, Doorbell, RingChannel};

/// Magic at the start of the SCM_RIGHTS hand-over message.
const HANDOVER_MAGIC: [u8; 8] = *b"HVVSSRNG";
/// Hand-over message: magic, ring_len (u64 LE), header_len (u64 LE).
const HANDOVER_LEN: usize = 24;

fn io(op: &'static str) -> impl FnOnce(Errno) -> ChannelError {
    move |e| ChannelError::Io {
        op,
        source: e.into(),
    }
}

/// The fds and geometry of a shared-memory channel, before either side takes its view.
#[derive(Debug)]
pub struct ShmRings {
    memfd: OwnedFd,
    to_guest: OwnedFd,
    to_host: OwnedFd,
    ring_len: usize,
    header_len: usize,
}

impl ShmRings {
    /// Creates the memfd (two rings of `ring_len` bytes, headers of one system page) and
    /// both eventfds, with RX masked and `feature_bits` set on both rings.
    pub fn create(ring_len: usize) -> Result<Self, ChannelError> {
        Self::create_with_header(ring_len, page_size())
    }

    /// As [`ShmRings::create`] with an explicit header length (e.g. 64 KiB to model arm64).
    pub fn create_with_header(ring_len: usize, header_len: usize) -> Result<Self, ChannelError> {
        check_geometry(ring_len, header_len)?;
        let memfd = create_memfd("hv-vss-rings", 2 * ring_len)?;
        let rings = Self {
            memfd,
            to_guest: eventfd()?,
            to_host: eventfd()?,
            ring_len,
            header_len,
        };
        let (tx, rx) = rings.map()?;
        for ring in [&tx, &rx] {
            ring.header_word(HeaderWord::FeatureBits)
                .store(FEATURE_PENDING_SEND_SIZE, Ordering::SeqCst);
        }
        rx.header_word(HeaderWord::InterruptMask)
            .store(1, Ordering::SeqCst);
        Ok(rings)
    }

    /// Rebuilds the description from inherited fds. The memfd must be sealed against
    /// shrinking and hold both rings.
    pub fn from_fds(
        memfd: OwnedFd,
        to_guest: OwnedFd,
        to_host: OwnedFd,
        ring_len: usize,
        header_len: usize,
    ) -> Result<Self, ChannelError> {
        check_geometry(ring_len, header_len)?;
        check_memfd(&memfd, 2 * ring_len)?;
        Ok(Self {
            memfd,
            to_guest,
            to_host,
            ring_len,
            header_len,
        })
    }

    /// Size of each ring (header + data).
    pub fn ring_len(&self) -> usize {
        self.ring_len
    }

    /// Size of each ring header.
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// The fds `(memfd, to_guest, to_host)`, e.g. to pass to a child process.
    pub fn fds(&self) -> (BorrowedFd<'_>, BorrowedFd<'_>, BorrowedFd<'_>) {
        (
            self.memfd.as_fd(),
            self.to_guest.as_fd(),
            self.to_host.as_fd(),
        )
    }

    /// Duplicates every fd, so one process can take both views.
    pub fn try_clone(&self) -> Result<Self, ChannelError> {
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|source| ChannelError::Io { op: "dup", source })
        };
        Ok(Self {
            memfd: dup(&self.memfd)?,
            to_guest: dup(&self.to_guest)?,
            to_host: dup(&self.to_host)?,
            ring_len: self.ring_len,
            header_len: self.header_len,
        })
    }

    /// Sends the three fds (SCM_RIGHTS) and the geometry as one message on a connected Unix
    /// socket (`SOCK_SEQPACKET` preferred; a stream works if nothing else is in flight).
    pub fn send_over(&self, socket: impl AsFd) -> Result<(), ChannelError> {
        let mut msg = [0u8; HANDOVER_LEN];
        msg[..8].copy_from_slice(&HANDOVER_MAGIC);
        msg[8..16].copy_from_slice(&(self.ring_len as u64).to_le_bytes());
        msg[16..24].copy_from_slice(&(self.header_len as u64).to_le_bytes());
        let fds = [
            self.memfd.as_fd(),
            self.to_guest.as_fd(),
            self.to_host.as_fd(),
        ];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
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
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
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
        if got.bytes != HANDOVER_LEN || msg[..8] != HANDOVER_MAGIC || fds.len() != 3 {
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
        let (memfd, to_guest, to_host) = match (fds.next(), fds.next(), fds.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => {
                return Err(ChannelError::Setup {
                    reason: "missing fds".into(),
                });
            }
        };
        Self::from_fds(memfd, to_guest, to_host, field(8), field(16))
    }

    fn map(&self) -> Result<(MappedRing, MappedRing), ChannelError> {
        let map = SharedMapping::map(self.memfd.as_fd(), 0, 2 * self.ring_len)?;
        Ok(ring_pair(Arc::new(map), self.ring_len, self.header_len)?)
    }

    /// The guest's view: reads RX, writes TX, signals `to_host`, wakes on `to_guest`.
    pub fn guest(self) -> Result<ShmChannel, ChannelError> {
        let (tx, rx) = self.map()?;
        let doorbell = ShmDoorbell {
            signal: self.to_host,
            wake: self.to_guest,
            on_signal: Some((rx.clone(), 0)),
        };
        RingChannel::new(rx, tx, doorbell)
    }

    /// The simulated host's view: reads TX, writes RX, signals `to_guest` (first setting
    /// the guest's RX `interrupt_mask`, as the kernel's interrupt handler does), wakes on
    /// `to_host`.
    pub fn host(self) -> Result<ShmChannel, ChannelError> {
        let (tx, rx) = self.map()?;
        let doorbell = ShmDoorbell {
            signal: self.to_guest,
            wake: self.to_host,
            on_signal: Some((rx.clone(), 1)),
        };
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

/// Signals through one eventfd, waits on another, and reproduces the kernel's effect on
/// the RX `interrupt_mask` when signalling.
#[derive(Debug)]
pub struct ShmDoorbell {
    signal: OwnedFd,
    wake: OwnedFd,
    /// Before signalling, store this value to this ring's `interrupt_mask`.
    on_signal: Option<(MappedRing, u32)>,
}

impl Doorbell for ShmDoorbell {
    fn ring(&mut self) -> Result<(), ChannelError> {
        if let Some((ring, value)) = &self.on_signal {
            ring.header_word(HeaderWord::InterruptMask)
                .store(*value, Ordering::SeqCst);
            fence(Ordering::SeqCst);
        }
        match rustix::io::write(&self.signal, &1u64.to_ne_bytes()) {
            // EAGAIN: the counter is saturated, the peer has a wake-up pending anyway.
            Ok(_) | Err(Errno::AGAIN) => Ok(()),
            Err(e) => Err(io("write(eventfd)")(e)),
        }
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, ChannelError> {
        match poll_readable(self.wake.as_fd(), timeout).map_err(io("poll(eventfd)"))? {
            Readable::Yes => Ok(true),
            Readable::TimedOut => Ok(false),
            Readable::Error => Err(ChannelError::Setup {
                reason: "eventfd reported POLLERR".into(),
            }),
        }
    }

    fn ack(&mut self) -> Result<(), ChannelError> {
        let mut buf = [0u8; 8];
        match rustix::io::read(&self.wake, &mut buf) {
            Ok(_) | Err(Errno::AGAIN) => Ok(()),
            Err(e) => Err(io("read(eventfd)")(e)),
        }
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
        let rings = ShmRings::create(RING_LEN).unwrap();
        let host = rings.try_clone().unwrap().host().unwrap();
        (rings.guest().unwrap(), host)
    }

    #[test]
    fn rx_starts_masked_and_first_message_needs_unmask_and_drain() {
        let (mut guest, mut host) = pair();
        assert!(guest.reader().is_masked());
        host.send(1, b"negotiate").unwrap();
        // Masked: the host did not signal, so a plain poll of the fd would hang forever.
        assert_eq!(
            poll_readable(guest.signal_fd(), Some(Duration::ZERO)),
            Ok(Readable::TimedOut)
        );
        // wait() finds it anyway.
        assert_eq!(
            guest.wait(Some(Duration::from_millis(10))).unwrap(),
            Wake::Ready
        );
        assert_eq!(guest.recv().unwrap().unwrap().trans_id(), 1);
        assert!(guest.recv().unwrap().is_none());
    }

    #[test]
    fn signals_follow_the_kernel_rules() {
        let (mut guest, mut host) = pair();
        // Unmasked and empty: the host signals and masks RX, like the interrupt handler.
        assert!(!guest.unmask().unwrap());
        host.send(1, b"a").unwrap();
        assert_eq!(
            poll_readable(guest.signal_fd(), Some(Duration::ZERO)),
            Ok(Readable::Yes)
        );
        assert!(guest.reader().is_masked());
        // Not empty any more: no second signal.
        guest.ack_signals().unwrap();
        assert!(guest.unmask().unwrap(), "packet 1 is still waiting");
        host.send(2, b"b").unwrap();
        assert_eq!(
            poll_readable(guest.signal_fd(), Some(Duration::ZERO)),
            Ok(Readable::TimedOut)
        );
        // The guest's reply signals the host (TX unmasked, empty) and, like write(1),
        // unmasks RX.
        guest.mask().unwrap();
        guest.send(1, b"reply").unwrap();
        assert_eq!(
            poll_readable(host.signal_fd(), Some(Duration::ZERO)),
            Ok(Readable::Yes)
        );
        assert!(!guest.reader().is_masked());
    }

    #[test]
    fn wait_times_out_when_nothing_comes() {
        let (mut guest, _host) = pair();
        guest.set_spin(Duration::from_micros(50));
        assert_eq!(
            guest.wait(Some(Duration::from_millis(5))).unwrap(),
            Wake::TimedOut
        );
        assert!(!guest.reader().is_masked(), "blocked unmasked");
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
