//! FreeBSD's fs-daemon transport: `/dev/hv_fsvss_dev` of the `hv_snapshot` driver, as
//! logic over a small device trait ([`FsVssDevice`]), so the same code runs against the real
//! device on FreeBSD and against the driver model (`hv_vss_sim::freebsd`) in tests on Linux.
//!
//! # Kernel contract (sys/dev/hyperv/utilities/hv_snapshot.c)
//!
//! - Opening the device registers the fs daemon; a second open while it is open gets
//!   `EBUSY` (another `hv_vss_daemon` or hv-vssd holds it). Closing unregisters; from then on
//!   the driver answers every host request E_FAIL at once until a daemon opens it again.
//! - `POLLIN` means a request is queued for us. `IOCHVVSSREAD` returns it as one 64-byte
//!   `hv_vss_opt_msg` with status 0 (opt CHECK for the host's HOT_BACKUP, FREEZE, THAW);
//!   status 1 with opt NONE means the queue was empty: poll again.
//! - `IOCHVVSSWRITE` is the ack: opt and msgid echoed, status 0 (success) or 1 (fail). The
//!   driver answers the host E_FAIL 15 s after it dispatched the request (to an
//!   application holding `/dev/hv_appvss_dev` first, if one is registered) and drops a later
//!   ack without telling the writer. Our deadlines must therefore end first: the config
//!   checks that for this transport (`crate::config`).
//!
//! # Design
//!
//! The transport keeps each request it read under a key until the coordinator answers it,
//! then writes the ack with that request's opt and msgid. A READ that is neither a request
//! nor "empty" (an opt this code does not know, from a newer kernel, or a status other than
//! 0 or 1) is answered fail at once and reported as [`Incoming::Refused`]; the main loop logs
//! those at a bounded rate and goes on serving. Any error of poll, READ or WRITE after the
//! open means the device can no longer be trusted: close, thaw, reopen (as after a lost
//! drop-in device).

use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use hv_vss_core::{HostOp, Status};
use hv_vss_protocol::freebsd::{HvVssOptMsg, ReadResult, VssOpt, build_ack, classify_read};

use super::{Delivery, Incoming};

/// At most this many READs per wake-up: the driver queues one request at a time, so more
/// means a device that keeps returning something other than "empty"; the loop comes back on
/// the next `POLLIN` instead of spinning here.
pub const MAX_READS_PER_WAKE: usize = 8;

/// Why the device could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// `EBUSY`: another fs daemon is registered.
    Busy,
    /// Any other failure.
    Io(std::io::Error),
}

impl From<std::io::Error> for OpenError {
    /// `open(2)`'s error: `EBUSY` (std's `ResourceBusy`) is [`OpenError::Busy`].
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::ResourceBusy {
            Self::Busy
        } else {
            Self::Io(e)
        }
    }
}

/// The operations of `/dev/hv_fsvss_dev` the transport needs. The real device implements
/// them with `open(2)`, `poll(2)` and the two ioctls (FreeBSD only); tests implement them
/// over the driver model.
pub trait FsVssDevice: Sized {
    /// Where the device is: a path for the real one.
    type Location: ?Sized;

    /// `open(2)`: registration as the fs daemon.
    fn open(at: &Self::Location) -> Result<Self, OpenError>;

    /// `poll(2)` for `POLLIN` without waiting: is a request queued for us?
    fn poll_in(&mut self) -> std::io::Result<bool>;

    /// `ioctl(IOCHVVSSREAD)`: the 64-byte message, as the driver filled it in.
    fn read(&mut self) -> std::io::Result<HvVssOptMsg>;

    /// `ioctl(IOCHVVSSWRITE)`: the ack.
    fn write(&mut self, ack: &HvVssOptMsg) -> std::io::Result<()>;

    /// The fd the main loop polls for `POLLIN` (None: a model without one).
    fn poll_fd(&self) -> Option<BorrowedFd<'_>>;
}

/// A failure of the FreeBSD transport.
#[derive(Debug, thiserror::Error)]
pub enum FsVssError {
    /// Another fs daemon (`hv_vss_daemon`, or another hv-vssd) holds the device.
    #[error("{}: busy (EBUSY): another VSS daemon has it open", .path.display())]
    Busy { path: PathBuf },
    /// Opening failed otherwise.
    #[error("{}: {source}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// poll, READ or WRITE failed after the open.
    #[error("{op} on {}: {source}", .path.display())]
    Device {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A reply for a request this transport does not hold.
    #[error("no pending request {0}")]
    UnknownRequest(u64),
}

impl FsVssError {
    /// Close, thaw, reopen: the device failed after it was opened.
    pub fn requires_reopen(&self) -> bool {
        matches!(self, Self::Device { .. })
    }

    /// Another fs daemon holds the device.
    pub fn is_busy(&self) -> bool {
        matches!(self, Self::Busy { .. })
    }
}

/// The fs-daemon transport over an open device.
#[derive(Debug)]
pub struct FsVssTransport<D> {
    device: D,
    /// The device's path, for messages.
    path: PathBuf,
    /// Requests read and not yet answered: key -> (opt, msgid) to echo.
    pending: BTreeMap<u64, (VssOpt, u64)>,
    next_key: u64,
}

impl<D: FsVssDevice> FsVssTransport<D> {
    /// Opens (registers); `path` names the device in messages.
    pub fn open(at: &D::Location, path: &Path) -> Result<Self, FsVssError> {
        let device = D::open(at).map_err(|e| match e {
            OpenError::Busy => FsVssError::Busy {
                path: path.to_path_buf(),
            },
            OpenError::Io(source) => FsVssError::Open {
                path: path.to_path_buf(),
                source,
            },
        })?;
        Ok(Self {
            device,
            path: path.to_path_buf(),
            pending: BTreeMap::new(),
            next_key: 1,
        })
    }

    fn device_error(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> FsVssError + '_ {
        move |source| FsVssError::Device {
            op,
            path: self.path.clone(),
            source,
        }
    }

    /// Reads what is queued for us: each request once, under a fresh key. An empty READ
    /// ends the round (poll again later).
    pub fn recv(&mut self) -> Result<Vec<Incoming>, FsVssError> {
        let mut incoming = Vec::new();
        for _ in 0..MAX_READS_PER_WAKE {
            let readable = self.device.poll_in().map_err(self.device_error("poll"))?;
            if !readable {
                break;
            }
            let msg = self
                .device
                .read()
                .map_err(self.device_error("IOCHVVSSREAD"))?;
            match classify_read(&msg) {
                Ok(ReadResult::Empty) => break,
                Ok(ReadResult::Request { opt, msgid }) => {
                    let op = match opt {
                        VssOpt::CHECK => HostOp::Check,
                        VssOpt::FREEZE => HostOp::Freeze,
                        // classify_read passes only CHECK, FREEZE and THAW.
                        _ => HostOp::Thaw,
                    };
                    let key = self.next_key;
                    self.next_key += 1;
                    self.pending.insert(key, (opt, msgid));
                    incoming.push(Incoming::Request { key, op });
                }
                Err(_) => {
                    // Not ours to act on: fail it now, so the host is not left waiting for
                    // the driver's timer, and keep serving.
                    self.device
                        .write(&build_ack(msg.opt, msg.msgid, false))
                        .map_err(self.device_error("IOCHVVSSWRITE"))?;
                    incoming.push(Incoming::Refused {
                        op: msg.opt.0,
                        status: Some(msg.status.0),
                    });
                }
            }
        }
        Ok(incoming)
    }

    /// Acks request `key`: its opt and msgid echoed, status 0 or 1. The driver drops an ack
    /// that comes after its timer; the writer cannot tell, so this still says `Sent`.
    pub fn reply(&mut self, key: u64, status: Status) -> Result<Delivery, FsVssError> {
        let (opt, msgid) = self
            .pending
            .remove(&key)
            .ok_or(FsVssError::UnknownRequest(key))?;
        let ack = build_ack(opt, msgid, status == Status::Ok);
        self.device
            .write(&ack)
            .map_err(self.device_error("IOCHVVSSWRITE"))?;
        Ok(Delivery::Sent)
    }

    /// The fds to poll for `POLLIN`.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.device.poll_fd().into_iter().collect()
    }
}

#[cfg(test)]
mod tests;
