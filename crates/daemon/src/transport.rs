//! The host side of the daemon behind one type, so the main loop polls a few fds and
//! answers each request through the transport it came from:
//!
//! - [`Transport::Vmbus`]: Linux's `/dev/vmbus/hv_vss` (drop-in mode) or the VSS VMBus
//!   channel itself (UIO mode), in `transport/vmbus.rs`;
//! - [`Transport::FsVss`]: FreeBSD's `/dev/hv_fsvss_dev` ([`fsvss`], platform-neutral logic
//!   over a device trait; the real device in `transport/fsvss_device/`).
//!
//! # Platform seam
//!
//! Both variants exist on every platform; the platform decides which can be constructed.
//! On Linux `vmbus` is the real module and [`FsVssDev`] a device that cannot be opened; on
//! FreeBSD `vmbus` is `vmbus_unavailable.rs`, whose types have no values, and [`FsVssDev`]
//! is the real device. The choice is made here and in `fsvss_device.rs`, once each; the
//! code that uses a transport has no platform conditions.

use std::os::fd::BorrowedFd;
use std::path::PathBuf;

use hv_vss_core::{HostOp, Status};

use crate::config::TransportChoice;

pub mod fsvss;
mod fsvss_device;

#[cfg(target_os = "linux")]
mod vmbus;
#[cfg(not(target_os = "linux"))]
#[path = "transport/vmbus_unavailable.rs"]
mod vmbus;

pub use fsvss::{FsVssError, FsVssTransport};
pub use fsvss_device::FsVssDev;
pub use vmbus::{UioRediscovery, VmbusError, VmbusTransport, Waiting};

/// Something that arrived from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// HOT_BACKUP, FREEZE or THAW: for the coordinator; answer with [`Transport::reply`]
    /// and this `key`.
    Request { key: u64, op: HostOp },
    /// An operation that is not ours: already answered E_FAIL here (drop-in mode: `op` is
    /// the VSS operation; FreeBSD: the `opt`, with the READ's `status`; in UIO mode the
    /// endpoint reports it as a notice).
    Refused { op: u32, status: Option<u32> },
    /// BU_COMPLETE, already answered S_OK by the endpoint (UIO mode only: in drop-in mode
    /// the kernel answers it and never forwards it). It closes the backup report.
    BackupComplete { trans_id: u64 },
}

/// What became of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Written to the host (device or ring).
    Sent,
    /// The ring to the host is full: queued, sent when the host makes room (UIO mode).
    Queued,
}

/// A transport failure.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Vmbus(#[from] VmbusError),
    #[error(transparent)]
    FsVss(#[from] FsVssError),
    /// A reply for a request this transport does not hold.
    #[error("no pending request {0}")]
    UnknownRequest(u64),
}

impl TransportError {
    /// Thaw, close, reopen (R13, R15).
    pub fn requires_reopen(&self) -> bool {
        match self {
            Self::Vmbus(e) => e.requires_reopen(),
            Self::FsVss(e) => e.requires_reopen(),
            Self::UnknownRequest(_) => false,
        }
    }

    /// Another VSS daemon holds the device.
    pub fn is_busy(&self) -> bool {
        match self {
            Self::Vmbus(e) => e.is_busy(),
            Self::FsVss(e) => e.is_busy(),
            Self::UnknownRequest(_) => false,
        }
    }
}

/// An open, registered transport.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per daemon, and each platform constructs only one of the variants"
)]
pub enum Transport {
    /// Linux: drop-in device or UIO channel.
    Vmbus(VmbusTransport),
    /// FreeBSD's `/dev/hv_fsvss_dev` ([`FsVssDev`] cannot be opened elsewhere).
    FsVss(FsVssTransport<FsVssDev>),
}

impl Transport {
    /// The framework and VSS message versions this guest agreed with the host (UIO mode,
    /// once NEGOTIATE came); `None` where the kernel negotiates.
    pub fn negotiated(
        &self,
    ) -> Option<(hv_vss_protocol::ic::Version, hv_vss_protocol::ic::Version)> {
        match self {
            Self::Vmbus(t) => t.negotiated(),
            Self::FsVss(_) => None,
        }
    }

    /// Opens (and registers, where the device wants it).
    pub fn open(choice: &TransportChoice) -> Result<Self, TransportError> {
        match choice {
            TransportChoice::DropIn(path) => VmbusTransport::open_drop_in(path),
            TransportChoice::Uio(path) => VmbusTransport::open_uio(path),
            TransportChoice::FsVss(path) => {
                Ok(Self::FsVss(FsVssTransport::open(path.as_path(), path)?))
            }
        }
    }

    /// Whether a poll should come back soon (replies held back by a full ring, or requests
    /// already read).
    pub fn wants_service(&self) -> bool {
        match self {
            Self::Vmbus(t) => t.wants_service(),
            Self::FsVss(_) => false,
        }
    }

    /// Reads what is pending (call when a fd polled readable, or when [`Self::wants_service`]).
    pub fn recv(&mut self) -> Result<Vec<Incoming>, TransportError> {
        match self {
            Self::Vmbus(t) => t.recv(),
            Self::FsVss(t) => Ok(t.recv()?),
        }
    }

    /// Answers request `key`; in UIO mode a full ring queues the reply instead.
    pub fn reply(&mut self, key: u64, status: Status) -> Result<Delivery, TransportError> {
        match self {
            Self::Vmbus(t) => t.reply(key, status),
            Self::FsVss(t) => Ok(t.reply(key, status)?),
        }
    }

    /// The fds to poll for `POLLIN`.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        match self {
            Self::Vmbus(t) => t.fds(),
            Self::FsVss(t) => t.fds(),
        }
    }
}

/// How the daemon reopens a lost transport.
///
/// Drop-in devices, `/dev/hv_fsvss_dev` and simulator sockets are reopened at the
/// configured path. A `/dev/uioN` path is only where the device was at start: after a
/// rescind the re-offered device is a new object that may come back as another `uioN`, or
/// on `hv_utils` (R15, wire §3.5 caveats), so it is found again through sysfs
/// ([`UioRediscovery`]).
#[derive(Debug)]
pub enum Reopener {
    /// Reopen this choice as configured.
    Fixed(TransportChoice),
    /// Find the VSS device again, rebind it if needed, open its node.
    Rediscover(Box<UioRediscovery>),
}

/// One reopen attempt, as the main loop acts on it.
#[derive(Debug)]
pub enum ReopenStep {
    /// Open (and registered): `node` is the path used.
    Opened {
        transport: Box<Transport>,
        node: PathBuf,
    },
    /// Not yet: log it (rate-limited) and try again (soon if [`Waiting::check_soon`], else
    /// after the backoff).
    Waiting(Waiting),
    /// Opening failed: try again after the backoff.
    Failed(TransportError),
}

impl Reopener {
    /// The reopener for `choice` on this machine (`/sys`, `/dev`).
    pub fn new(choice: &TransportChoice) -> Self {
        match vmbus::rediscovery_for(choice) {
            Some(rediscovery) => Self::Rediscover(rediscovery),
            None => Self::Fixed(choice.clone()),
        }
    }

    /// One attempt. Never blocks for long (a bind runs on its own thread). `may_bind` is
    /// false while filesystems are frozen.
    pub fn attempt(&mut self, may_bind: bool) -> ReopenStep {
        match self {
            Self::Fixed(choice) => match Transport::open(choice) {
                Ok(transport) => ReopenStep::Opened {
                    transport: Box::new(transport),
                    node: match choice {
                        TransportChoice::DropIn(p)
                        | TransportChoice::Uio(p)
                        | TransportChoice::FsVss(p) => p.clone(),
                    },
                },
                Err(e) => ReopenStep::Failed(e),
            },
            Self::Rediscover(r) => r.step(may_bind),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The FreeBSD transport on Linux: refused with a clear error, not a reopen loop.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_fsvss_device_cannot_be_opened_on_linux() {
        let err = Transport::open(&TransportChoice::FsVss("/dev/hv_fsvss_dev".into()))
            .expect_err("no hv_snapshot driver here");
        assert!(!err.requires_reopen() && !err.is_busy(), "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with("/dev/hv_fsvss_dev: ") && text.contains("only on FreeBSD"),
            "{text}"
        );
    }
}
