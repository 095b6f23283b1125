//! `/dev/hv_fsvss_dev` on FreeBSD: [`hv_vss_sys::fsvss::FsVssDevice`] (open, poll, the two
//! ioctls) behind the transport's device trait. Errors keep their meaning: `EBUSY` is
//! [`OpenError::Busy`], the rest become `std::io::Error`s of the matching kind.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::Duration;

use hv_vss_protocol::freebsd::HvVssOptMsg;
use hv_vss_sys::fsvss::{FsVssDevice as SysDevice, FsVssError as SysError};
use hv_vss_sys::poll::Readable;

use crate::transport::fsvss::{FsVssDevice, OpenError};

/// The open device: this process is the registered fs daemon while it lives.
#[derive(Debug)]
pub struct FsVssDev(SysDevice);

fn io_error(e: SysError) -> std::io::Error {
    use std::io::{Error, ErrorKind};
    match e {
        SysError::HeldByAnotherDaemon { .. } => Error::from(ErrorKind::ResourceBusy),
        SysError::NoDevice { .. } => Error::new(
            ErrorKind::NotFound,
            "no such device (not a Hyper-V guest, or hv_utils is not loaded)",
        ),
        SysError::PermissionDenied { .. } => Error::new(
            ErrorKind::PermissionDenied,
            "permission denied (root:wheel 0640)",
        ),
        SysError::Sys { errno, .. } => errno.into(),
    }
}

impl FsVssDevice for FsVssDev {
    type Location = Path;

    fn open(at: &Path) -> Result<Self, OpenError> {
        SysDevice::open_path(at)
            .map(Self)
            .map_err(|e| OpenError::from(io_error(e)))
    }

    fn poll_in(&mut self) -> std::io::Result<bool> {
        match self.0.poll(Some(Duration::ZERO)).map_err(io_error)? {
            Readable::Yes => Ok(true),
            Readable::TimedOut => Ok(false),
            // The driver went away under us: a READ would fail; say so as an error.
            Readable::Error => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "poll: POLLERR/POLLHUP on the device",
            )),
        }
    }

    fn read(&mut self) -> std::io::Result<HvVssOptMsg> {
        self.0.read().map_err(io_error)
    }

    fn write(&mut self, ack: &HvVssOptMsg) -> std::io::Result<()> {
        self.0.write(ack).map_err(io_error)
    }

    fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.0.as_fd())
    }
}
