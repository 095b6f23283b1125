//! `/dev/hv_fsvss_dev`, the filesystem daemon's end of FreeBSD's Hyper-V VSS driver:
//! [`FsVssDevice`] opens it, waits for `POLLIN`, and passes `struct hv_vss_opt_msg` through
//! the two ioctls. What the messages mean is `hv_vss_protocol::freebsd`'s business.
//!
//! # Kernel contract (sys/dev/hyperv/utilities/hv_snapshot.c)
//!
//! - `open(O_RDWR)` registers the daemon; while one is open a second open gets `EBUSY`
//!   (another daemon, e.g. the stock `hv_vss_daemon`, holds it); closing unregisters.
//!   root:wheel 0640. `ENOENT`/`ENXIO`: no driver (not a Hyper-V guest, or `hv_utils` not
//!   loaded).
//! - `poll(POLLIN)` wakes when a request is queued for the daemon.
//! - `ioctl(IOCHVVSSREAD, &msg)` fills the 64-byte message: a request with status 0, or
//!   status 1 with opt 0 when the queue was empty.
//! - `ioctl(IOCHVVSSWRITE, &msg)` acknowledges: opt and msgid echoed, status 0 or 1. A late
//!   ack (after the driver's 15 s timer) is dropped without an error.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hv_vss_protocol::freebsd::{FS_VSS_DEVICE, HvVssOptMsg, IOCHVVSSREAD, IOCHVVSSWRITE};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::poll::{Readable, poll_readable};

/// Errors of the fs daemon device.
#[derive(Debug, thiserror::Error)]
pub enum FsVssError {
    /// `EBUSY` on open: another daemon (the stock `hv_vss_daemon`?) holds the device.
    #[error("{}: another daemon holds it (EBUSY); stop hv_vss_daemon first", .path.display())]
    HeldByAnotherDaemon {
        /// The device.
        path: PathBuf,
    },
    /// `ENOENT`/`ENXIO` on open: no Hyper-V VSS driver.
    #[error("{}: no such device (not a Hyper-V guest, or hv_utils is not loaded)", .path.display())]
    NoDevice {
        /// The device.
        path: PathBuf,
    },
    /// `EACCES`/`EPERM` on open.
    #[error("{}: permission denied (root:wheel 0640)", .path.display())]
    PermissionDenied {
        /// The device.
        path: PathBuf,
    },
    /// Any other failing call.
    #[error("{op} {}: {errno}", .path.display())]
    Sys {
        /// `open`, `poll`, `IOCHVVSSREAD` or `IOCHVVSSWRITE`.
        op: &'static str,
        /// The device.
        path: PathBuf,
        /// The errno.
        errno: Errno,
    },
}

/// The open `/dev/hv_fsvss_dev`: this process is the registered fs daemon while it lives.
#[derive(Debug)]
pub struct FsVssDevice {
    fd: OwnedFd,
    path: PathBuf,
}

impl FsVssDevice {
    /// Opens `/dev/hv_fsvss_dev`.
    pub fn open() -> Result<Self, FsVssError> {
        Self::open_path(Path::new(FS_VSS_DEVICE))
    }

    /// Opens the device at `path` (`O_RDWR | O_CLOEXEC`).
    pub fn open_path(path: &Path) -> Result<Self, FsVssError> {
        let path = path.to_path_buf();
        match rustix::fs::open(&path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => Ok(Self { fd, path }),
            Err(Errno::BUSY) => Err(FsVssError::HeldByAnotherDaemon { path }),
            Err(Errno::NOENT | Errno::NXIO | Errno::NODEV) => Err(FsVssError::NoDevice { path }),
            Err(Errno::ACCESS | Errno::PERM) => Err(FsVssError::PermissionDenied { path }),
            Err(errno) => Err(FsVssError::Sys {
                op: "open",
                path,
                errno,
            }),
        }
    }

    /// The device's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` (forever with `None`) for a request: `POLLIN`.
    pub fn poll(&self, timeout: Option<Duration>) -> Result<Readable, FsVssError> {
        poll_readable(self.fd.as_fd(), timeout).map_err(|errno| self.sys("poll", errno))
    }

    /// `IOCHVVSSREAD`: the head of the daemon's queue, or the empty-queue message (classify
    /// it with `hv_vss_protocol::freebsd::classify_read`).
    #[doc(alias = "IOCHVVSSREAD")]
    pub fn read(&self) -> Result<HvVssOptMsg, FsVssError> {
        let mut msg = HvVssOptMsg::empty_read();
        // SAFETY: IOCHVVSSREAD is _IOR('v', 2, struct hv_vss_opt_msg): the kernel copies out
        // exactly 64 bytes to the pointer, and `msg` is a live `#[repr(C)]` HvVssOptMsg of
        // 64 bytes (asserted at compile time in the protocol crate) for which any bytes are
        // a valid value. `self.fd` is open.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::c_ulong::from(IOCHVVSSREAD),
                (&raw mut msg).cast::<libc::c_void>(),
            )
        };
        if rc == 0 {
            Ok(msg)
        } else {
            Err(self.sys("IOCHVVSSREAD", crate::platform::last_errno()))
        }
    }

    /// `IOCHVVSSWRITE`: acknowledge a request (build it with
    /// `hv_vss_protocol::freebsd::build_ack`).
    #[doc(alias = "IOCHVVSSWRITE")]
    pub fn write(&self, ack: &HvVssOptMsg) -> Result<(), FsVssError> {
        let mut msg = *ack;
        // SAFETY: IOCHVVSSWRITE is _IOW('v', 3, struct hv_vss_opt_msg): the kernel copies in
        // exactly 64 bytes from the pointer, and `msg` is a live 64-byte `#[repr(C)]` copy of
        // the ack. `self.fd` is open.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::c_ulong::from(IOCHVVSSWRITE),
                (&raw mut msg).cast::<libc::c_void>(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(self.sys("IOCHVVSSWRITE", crate::platform::last_errno()))
        }
    }

    fn sys(&self, op: &'static str, errno: Errno) -> FsVssError {
        FsVssError::Sys {
            op,
            path: self.path.clone(),
            errno,
        }
    }
}

impl AsFd for FsVssDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
