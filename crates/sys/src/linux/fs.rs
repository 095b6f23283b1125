//! Linux's filesystem freeze syscalls: `FIFREEZE`, `FITHAW`, `syncfs`, and `statx` for the
//! mount id; re-exported through [`crate::fs`].
//!
//! # Kernel contract
//!
//! - `ioctl(fd, FIFREEZE, 0)` on an fd opened on any path inside a filesystem freezes its
//!   superblock: new writes block in `sb_start_write`, dirty data is written back, the
//!   filesystem's `freeze_fs` makes the on-disk image consistent. It returns when the
//!   filesystem is frozen. `EBUSY`: this superblock is already frozen (by anyone: freezes
//!   are not owned by a process or an fd). `EOPNOTSUPP`: the filesystem has no freeze
//!   support (vfat, tmpfs, overlay, ...). `EPERM`: needs `CAP_SYS_ADMIN`.
//! - `ioctl(fd, FITHAW, 0)` thaws it. `EINVAL`: the superblock is not frozen.
//! - Neither call is tied to the fd: closing the fd (or dying) does **not** thaw. Whoever
//!   froze must thaw; the freezer crate keeps fds and a journal for that reason.
//! - The kernel ignores the `int` argument of both ioctls; we pass a null pointer, as
//!   util-linux's `fsfreeze` passes 0.
//!
//! Both opcodes are `_IOWR('X', 119|120, int)`; they are computed from that definition
//! here and pinned against the literals in the tests.
//!
//! Everything except the two ioctls goes through rustix's safe wrappers; the ioctls need
//! `unsafe` only because rustix cannot check an arbitrary opcode's argument contract.

use std::os::fd::BorrowedFd;

use rustix::fs::{OFlags, StatxFlags};
use rustix::io::Errno;
use rustix::ioctl::{NoArg, Opcode, opcode};

use crate::fs::{DevNum, fstat_dev};

/// `O_NOATIME` for [`crate::fs::open_mount_point`]: no atime update on the mount point.
pub(crate) const NOATIME: OFlags = OFlags::NOATIME;

/// `FIFREEZE` = `_IOWR('X', 119, int)` = `0xC0045877`.
pub const FIFREEZE: Opcode = opcode::read_write::<core::ffi::c_int>(b'X', 119);
/// `FITHAW` = `_IOWR('X', 120, int)` = `0xC0045878`.
pub const FITHAW: Opcode = opcode::read_write::<core::ffi::c_int>(b'X', 120);

/// Why `FIFREEZE` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FreezeError {
    /// `EBUSY`: the superblock is already frozen (by us through another path, or by someone
    /// else).
    #[error("filesystem is already frozen (EBUSY)")]
    AlreadyFrozen,
    /// `EOPNOTSUPP`: this filesystem type cannot freeze.
    #[error("filesystem does not support freezing (EOPNOTSUPP)")]
    Unsupported,
    /// `EPERM`/`EACCES`: needs `CAP_SYS_ADMIN`.
    #[error("permission denied: freezing needs CAP_SYS_ADMIN")]
    PermissionDenied,
    /// Any other errno.
    #[error("FIFREEZE failed: {0}")]
    Other(Errno),
}

/// Why `FITHAW` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ThawError {
    /// `EINVAL`: the superblock is not frozen.
    #[error("filesystem is not frozen (EINVAL)")]
    NotFrozen,
    /// `EOPNOTSUPP`: this filesystem type cannot freeze, so cannot thaw either.
    #[error("filesystem does not support freezing (EOPNOTSUPP)")]
    Unsupported,
    /// `EPERM`/`EACCES`: needs `CAP_SYS_ADMIN`.
    #[error("permission denied: thawing needs CAP_SYS_ADMIN")]
    PermissionDenied,
    /// Any other errno.
    #[error("FITHAW failed: {0}")]
    Other(Errno),
}

/// `ioctl(fd, FIFREEZE, 0)`: freeze the filesystem that `fd` lives on.
///
/// Blocks until the filesystem is frozen (it writes back dirty data first), which can take
/// long on a busy filesystem: call it from a worker thread when a deadline matters.
///
/// # References
/// - linux/include/uapi/linux/fs.h, `ioctl_fsfreeze` in linux/fs/ioctl.c
#[doc(alias = "FIFREEZE")]
pub fn freeze(fd: BorrowedFd<'_>) -> Result<(), FreezeError> {
    // SAFETY: FIFREEZE's argument is an `int` that the kernel never reads (ioctl_fsfreeze
    // takes only the file); `NoArg` passes a null pointer, which is therefore never
    // dereferenced. `fd` is a live borrowed fd, and the ioctl does not affect memory.
    let result = unsafe { rustix::ioctl::ioctl(fd, NoArg::<FIFREEZE>::new()) };
    result.map_err(|errno| match errno {
        Errno::BUSY => FreezeError::AlreadyFrozen,
        Errno::OPNOTSUPP | Errno::NOTTY => FreezeError::Unsupported,
        Errno::PERM | Errno::ACCESS => FreezeError::PermissionDenied,
        other => FreezeError::Other(other),
    })
}

/// `ioctl(fd, FITHAW, 0)`: thaw the filesystem that `fd` lives on.
///
/// # References
/// - linux/include/uapi/linux/fs.h, `ioctl_fsthaw` in linux/fs/ioctl.c
#[doc(alias = "FITHAW")]
pub fn thaw(fd: BorrowedFd<'_>) -> Result<(), ThawError> {
    // SAFETY: as for FIFREEZE: the `int` argument is ignored by the kernel (ioctl_fsthaw
    // takes only the file), the null pointer is never dereferenced, and `fd` is live.
    let result = unsafe { rustix::ioctl::ioctl(fd, NoArg::<FITHAW>::new()) };
    result.map_err(|errno| match errno {
        Errno::INVAL => ThawError::NotFrozen,
        Errno::OPNOTSUPP | Errno::NOTTY => ThawError::Unsupported,
        Errno::PERM | Errno::ACCESS => ThawError::PermissionDenied,
        other => ThawError::Other(other),
    })
}

/// `syncfs(fd)`: write back all dirty data and metadata of the filesystem `fd` lives on.
pub fn syncfs(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    rustix::fs::syncfs(fd).map_err(Into::into)
}

/// Identity of an open file's filesystem and mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    /// `st_dev`: the device of the filesystem (for btrfs, the subvolume's anonymous device).
    pub dev: DevNum,
    /// `stx_mnt_id`: the id of the mount the fd was reached through, as in mountinfo's first
    /// field; `None` when the kernel (before 5.8) does not report it.
    pub mount_id: Option<u64>,
}

/// `statx(fd, "", AT_EMPTY_PATH, STATX_MNT_ID)`: the device and mount id of an open file.
#[doc(alias = "fstat")]
#[doc(alias = "statx")]
pub fn identify(fd: BorrowedFd<'_>) -> std::io::Result<FileIdentity> {
    let stx = rustix::fs::statx(
        fd,
        "",
        rustix::fs::AtFlags::EMPTY_PATH,
        StatxFlags::BASIC_STATS | StatxFlags::MNT_ID,
    );
    match stx {
        Ok(stx) => Ok(FileIdentity {
            dev: DevNum {
                major: stx.stx_dev_major,
                minor: stx.stx_dev_minor,
            },
            mount_id: StatxFlags::from_bits_retain(stx.stx_mask)
                .contains(StatxFlags::MNT_ID)
                .then_some(stx.stx_mnt_id),
        }),
        Err(Errno::NOSYS) => fstat_dev(fd).map(|dev| FileIdentity {
            dev,
            mount_id: None,
        }),
        Err(errno) => Err(errno.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{open_mount_point, stat_path};
    use std::os::fd::AsFd;
    use std::path::Path;

    #[test]
    fn opcodes_match_the_c_literals() {
        assert_eq!(FIFREEZE, 0xC004_5877);
        assert_eq!(FITHAW, 0xC004_5878);
    }

    #[test]
    fn freeze_of_a_non_freezable_fd_is_a_named_error() {
        // procfs has no freeze support: root gets EOPNOTSUPP, anyone else EPERM. Either
        // way the errno must map to a named variant.
        let dir = open_mount_point(Path::new("/proc")).unwrap();
        let err = freeze(dir.as_fd()).unwrap_err();
        assert!(
            matches!(
                err,
                FreezeError::Unsupported | FreezeError::PermissionDenied
            ),
            "{err:?}"
        );
    }

    #[test]
    fn thaw_of_an_unfrozen_filesystem_is_not_frozen() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root for FITHAW");
            return;
        }
        // /proc is never frozen; FITHAW either says so or says it cannot freeze at all.
        let dir = open_mount_point(Path::new("/proc")).unwrap();
        let err = thaw(dir.as_fd()).unwrap_err();
        assert!(
            matches!(err, ThawError::NotFrozen | ThawError::Unsupported),
            "{err:?}"
        );
    }

    #[test]
    fn identify_reports_mount_id_and_dev() {
        let dir = open_mount_point(Path::new("/")).unwrap();
        let id = identify(dir.as_fd()).unwrap();
        assert_eq!(id.dev, fstat_dev(dir.as_fd()).unwrap());
        let (dev, rdev) = stat_path(Path::new("/")).unwrap();
        assert_eq!(dev, id.dev);
        assert_eq!(rdev, None);
    }
}
