//! `/dev/hv_fsvss_dev` where FreeBSD's `hv_snapshot` driver does not exist: opening it
//! fails with `Unsupported`, so there is never a value of this type.

use std::os::fd::BorrowedFd;
use std::path::Path;

use hv_vss_protocol::freebsd::HvVssOptMsg;

use crate::transport::fsvss::{FsVssDevice, OpenError};

/// No device: this platform has no `hv_snapshot` driver.
#[derive(Debug)]
pub enum FsVssDev {}

impl FsVssDevice for FsVssDev {
    type Location = Path;

    fn open(_: &Path) -> Result<Self, OpenError> {
        Err(OpenError::from(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "the hv_fsvss_dev transport exists only on FreeBSD",
        )))
    }

    fn poll_in(&mut self) -> std::io::Result<bool> {
        match *self {}
    }

    fn read(&mut self) -> std::io::Result<HvVssOptMsg> {
        match *self {}
    }

    fn write(&mut self, _: &HvVssOptMsg) -> std::io::Result<()> {
        match *self {}
    }

    fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        match *self {}
    }
}
