//! UFS suspension through `/dev/ufssuspend`: [`UfsSuspension`] owns one suspended mount.
//!
//! # Kernel contract (sys/ufs/ffs/ffs_suspend.c)
//!
//! - `open("/dev/ufssuspend", O_RDWR)` (root:wheel 0600) gives a file that can hold one
//!   suspension. `ioctl(fd, UFSSUSPEND, &fsid)` suspends the UFS mount with that
//!   `statfs.f_fsid`: writers drain, everything is written back, new writes wait. The
//!   suspension belongs to that open file: closing it, `UFSRESUME`, or the death of the
//!   process (the kernel closes its files) resumes the mount. Each mount needs its own fd.
//! - `UFSSUSPEND` fails with `EDEADLK` when the calling **process has more than one
//!   thread** or has a file open for writing on that mount (either could deadlock against
//!   the suspension); with `ENOENT` when no mount has that fsid; `EINVAL` when the mount is
//!   not UFS; `EBUSY` when it is already suspended (by anyone) or this fd already holds a
//!   suspension; `EPERM` in a jail; `EACCES` when the caller may not read and write the
//!   mount's device. A global kernel lock serializes all suspends and resumes, so
//!   suspending several mounts at once from several processes gains nothing.
//! - `ioctl(fd, UFSRESUME)` resumes the mount this fd suspended; without one it fails.
//!
//! So the process that suspends must be single-threaded: hv-vssd hands the suspensions to
//! a single-threaded holder process, and a SIGKILLed holder thaws everything.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use hv_vss_protocol::freebsd::{FsId, UFS_SUSPEND_DEVICE, UFSRESUME, UFSSUSPEND};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

/// Why a UFS mount could not be suspended.
#[derive(Debug, thiserror::Error)]
pub enum UfsSuspendError {
    /// `/dev/ufssuspend` does not exist (no UFS support in the kernel) or cannot be opened.
    #[error("cannot open {device}: {source}")]
    Open {
        /// The device path.
        device: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `EDEADLK`: the process has more than one thread, or a file open for writing on the
    /// mount.
    #[error(
        "UFSSUSPEND refused (EDEADLK): the suspending process must be single-threaded and hold no file open for writing on the mount"
    )]
    WouldDeadlock,
    /// `ENOENT`: no mount has this fsid (it was unmounted).
    #[error("no mounted filesystem has fsid {0:?} (ENOENT)")]
    NoSuchMount(FsId),
    /// `EINVAL`: the mount is not UFS.
    #[error("the filesystem with fsid {0:?} is not UFS (EINVAL)")]
    NotUfs(FsId),
    /// `EBUSY`: the mount is already suspended, by us or someone else.
    #[error("the filesystem with fsid {0:?} is already suspended (EBUSY)")]
    AlreadySuspended(FsId),
    /// `EPERM`/`EACCES`: not root, or in a jail.
    #[error("permission denied: suspending needs root outside a jail")]
    PermissionDenied,
    /// Any other errno.
    #[error("UFSSUSPEND failed: {0}")]
    Other(Errno),
}

/// One suspended UFS mount, held through its own open `/dev/ufssuspend`. Dropping it closes
/// the fd, which resumes the mount; [`UfsSuspension::resume`] does it explicitly and says
/// whether the kernel agreed.
#[derive(Debug)]
pub struct UfsSuspension {
    fd: OwnedFd,
    fsid: FsId,
}

impl UfsSuspension {
    /// Suspends the UFS mount with `fsid` through a new fd of `/dev/ufssuspend`.
    ///
    /// Blocks until writers have drained and the mount is written back. Call it from a
    /// single-threaded process (see the module contract).
    #[doc(alias = "UFSSUSPEND")]
    pub fn suspend(fsid: FsId) -> Result<Self, UfsSuspendError> {
        Self::suspend_through(Path::new(UFS_SUSPEND_DEVICE), fsid)
    }

    /// [`UfsSuspension::suspend`] through another device path.
    pub fn suspend_through(device: &Path, fsid: FsId) -> Result<Self, UfsSuspendError> {
        let fd = rustix::fs::open(device, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).map_err(
            |errno| UfsSuspendError::Open {
                device: device.display().to_string(),
                source: errno.into(),
            },
        )?;
        let mut arg = fsid;
        // SAFETY: UFSSUSPEND is _IOW('U', 1, fsid_t): the kernel copies in 8 bytes from the
        // pointer, and `arg` is a live `#[repr(C)]` `FsId` of exactly those 8 bytes
        // (`int32_t val[2]`). Nothing is written back; `fd` is open.
        let rc = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                libc::c_ulong::from(UFSSUSPEND),
                (&raw mut arg).cast::<libc::c_void>(),
            )
        };
        if rc == 0 {
            return Ok(Self { fd, fsid });
        }
        let errno = crate::platform::last_errno();
        Err(match errno {
            Errno::DEADLK => UfsSuspendError::WouldDeadlock,
            Errno::NOENT => UfsSuspendError::NoSuchMount(fsid),
            Errno::INVAL => UfsSuspendError::NotUfs(fsid),
            Errno::BUSY => UfsSuspendError::AlreadySuspended(fsid),
            Errno::PERM | Errno::ACCESS => UfsSuspendError::PermissionDenied,
            other => UfsSuspendError::Other(other),
        })
    }

    /// The fsid of the suspended mount.
    pub fn fsid(&self) -> FsId {
        self.fsid
    }

    /// `UFSRESUME`, then close. An error means the kernel did not find this fd's
    /// suspension; the close that follows resumes it anyway if it exists.
    #[doc(alias = "UFSRESUME")]
    pub fn resume(self) -> Result<(), Errno> {
        // SAFETY: UFSRESUME is _IO('U', 2): no argument is read or written, so the null
        // pointer is never dereferenced; `self.fd` is open.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::c_ulong::from(UFSRESUME),
                std::ptr::null_mut::<libc::c_void>(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(crate::platform::last_errno())
        }
    }
}

impl AsFd for UfsSuspension {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
