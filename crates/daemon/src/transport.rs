//! The host side of the daemon: Linux's `/dev/vmbus/hv_vss` (drop-in mode) behind one type,
//! so the main loop polls one fd and answers each request through the transport it came from.
//!
//! # Kernel contract (drop-in, wire-protocol.md §8, R12, R13)
//!
//! Open exclusively (`EBUSY`: another VSS daemon), REGISTER1 and its 4-byte reply, poll
//! before read, 12-byte requests, the answer as a 32-bit status in bytes 0–3. The kernel
//! forwards only HOT_BACKUP, FREEZE and THAW; anything else that arrives is answered E_FAIL
//! here (R5) and never reaches the coordinator. Any failure after open (`EINVAL`, a short
//! write, a wrong-length read, a hang-up) requires closing, thawing and reopening
//! ([`TransportError::requires_reopen`]); the main loop does that.
//!
//! # Limitations
//!
//! UIO mode (`--uio`) is refused with [`TransportError::UioUnavailable`] until the IC
//! endpoint (hv-vss-vmbus::ic_endpoint) lands.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

use hv_vss_core::{HostOp, Status};
use hv_vss_protocol::{HvStatus, VssOperation};
use hv_vss_vmbus::kernel_dev::{KernelDevError, KernelDevice};

use crate::config::TransportChoice;

/// Something that arrived from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// HOT_BACKUP, FREEZE or THAW: for the coordinator; answer with [`Transport::reply`].
    Request { op: HostOp, raw: VssOperation },
    /// Anything else: already answered E_FAIL here.
    Refused { raw: VssOperation },
}

/// A transport failure.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Kernel(#[from] KernelDevError),
    #[error(
        "--uio {}: UIO mode is not available in this build yet (the IC endpoint has not landed); use --device",
        .0.display()
    )]
    UioUnavailable(PathBuf),
}

impl TransportError {
    /// Thaw, close, reopen and register again (R13).
    pub fn requires_reopen(&self) -> bool {
        match self {
            Self::Kernel(e) => e.requires_reopen(),
            Self::UioUnavailable(_) => false,
        }
    }

    /// Another VSS daemon holds the device.
    pub fn is_busy(&self) -> bool {
        matches!(self, Self::Kernel(KernelDevError::Busy { .. }))
    }
}

/// An open, registered transport.
#[derive(Debug)]
pub enum Transport {
    Kernel(KernelDevice),
}

impl Transport {
    /// Opens and registers.
    pub fn open(choice: &TransportChoice) -> Result<Self, TransportError> {
        match choice {
            TransportChoice::DropIn(path) => {
                let mut dev = KernelDevice::open(path)?;
                dev.register()?;
                Ok(Self::Kernel(dev))
            }
            TransportChoice::Uio(path) => Err(TransportError::UioUnavailable(path.clone())),
        }
    }

    /// Reads what is pending, if anything (call when the fd polled readable).
    pub fn recv(&mut self) -> Result<Option<Incoming>, TransportError> {
        match self {
            Self::Kernel(dev) => {
                let Some(request) = dev.recv_timeout(std::time::Duration::ZERO)? else {
                    return Ok(None);
                };
                let op = match request.op {
                    VssOperation::HOT_BACKUP => HostOp::Check,
                    VssOperation::FREEZE => HostOp::Freeze,
                    VssOperation::THAW => HostOp::Thaw,
                    raw => {
                        // R5: only HOT_BACKUP, FREEZE and THAW are ours; the kernel answers
                        // the rest itself, so anything else is a faulty peer: E_FAIL.
                        dev.reply(HvStatus::E_FAIL)?;
                        return Ok(Some(Incoming::Refused { raw }));
                    }
                };
                Ok(Some(Incoming::Request {
                    op,
                    raw: request.op,
                }))
            }
        }
    }

    /// Answers the request in flight.
    pub fn reply(&mut self, status: Status) -> Result<(), TransportError> {
        let status = match status {
            Status::Ok => HvStatus::S_OK,
            Status::Fail => HvStatus::E_FAIL,
        };
        match self {
            Self::Kernel(dev) => Ok(dev.reply(status)?),
        }
    }
}

impl AsFd for Transport {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Kernel(dev) => dev.as_fd(),
        }
    }
}
