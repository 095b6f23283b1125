//! Filesystem freeze syscalls: `FIFREEZE`, `FITHAW`, `syncfs`, and the opens, stats and
//! locks the freezer needs around them.
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

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{FlockOperation, Mode, OFlags, StatxFlags};
use rustix::io::Errno;
use rustix::ioctl::{NoArg, Opcode, opcode};

/// `FIFREEZE` = `_IOWR('X', 119, int)` = `0xC0045877`.
pub const FIFREEZE: Opcode = opcode::read_write::<core::ffi::c_int>(b'X', 119);
/// `FITHAW` = `_IOWR('X', 120, int)` = `0xC0045878`.
pub const FITHAW: Opcode = opcode::read_write::<core::ffi::c_int>(b'X', 120);

/// A device number split as the kernel shows it (`major:minor` in mountinfo and sysfs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevNum {
    /// Major number (driver).
    pub major: u32,
    /// Minor number (instance).
    pub minor: u32,
}

impl DevNum {
    /// Split a raw `dev_t` (`st_dev`, `st_rdev`).
    pub fn from_raw(raw: u64) -> Self {
        Self {
            major: rustix::fs::major(raw),
            minor: rustix::fs::minor(raw),
        }
    }
}

impl std::fmt::Display for DevNum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

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

/// Open a mount point for freezing:
/// `open(path, O_RDONLY|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC|O_NONBLOCK|O_NOATIME)` (R40).
///
/// `O_NOATIME` avoids an atime update on the mount point (it needs ownership or
/// `CAP_FOWNER`; without them the open is retried without it).
pub fn open_mount_point(path: &Path) -> std::io::Result<OwnedFd> {
    let flags =
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    match rustix::fs::open(path, flags | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => rustix::fs::open(path, flags, Mode::empty()).map_err(Into::into),
        other => other.map_err(Into::into),
    }
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

/// `fstat(fd).st_dev`.
#[doc(alias = "fstat")]
pub fn fstat_dev(fd: BorrowedFd<'_>) -> std::io::Result<DevNum> {
    let st = rustix::fs::fstat(fd)?;
    Ok(DevNum::from_raw(st.st_dev))
}

/// `stat(path)`: `st_dev` of the file, and `st_rdev` when it is a block device.
pub fn stat_path(path: &Path) -> std::io::Result<(DevNum, Option<DevNum>)> {
    let st = rustix::fs::stat(path)?;
    let is_block =
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::BlockDevice;
    Ok((
        DevNum::from_raw(st.st_dev),
        is_block.then(|| DevNum::from_raw(st.st_rdev)),
    ))
}

/// `flock(fd, LOCK_EX|LOCK_NB)`: take an exclusive advisory lock without waiting.
///
/// Returns `Ok(false)` when another open file description holds the lock.
#[doc(alias = "flock")]
pub fn try_lock_exclusive(fd: impl AsFd) -> std::io::Result<bool> {
    match rustix::fs::flock(fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(Errno::WOULDBLOCK) => Ok(false),
        Err(errno) => Err(errno.into()),
    }
}

/// Is a process with this pid alive (`kill(pid, 0)`; `EPERM` counts as alive)?
pub fn process_alive(pid: i32) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        return false;
    };
    !matches!(rustix::process::test_kill_process(pid), Err(Errno::SRCH))
}

/// Waits until process `pid` has exited, at most `timeout`: `true` if it is gone. Uses a
/// pidfd (`pidfd_open(2)`, which polls readable when the process exits), so no pid reuse
/// can fool it while waiting; falls back to polling [`process_alive`] where pidfds are
/// not available. A process stuck in an uninterruptible call (FIFREEZE) exits only when
/// that call returns: the wait is what bounds it.
pub fn wait_for_exit(pid: i32, timeout: std::time::Duration) -> bool {
    let Some(raw) = rustix::process::Pid::from_raw(pid) else {
        return true;
    };
    let deadline = std::time::Instant::now() + timeout;
    match rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) {
        Ok(pidfd) => loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let ts = rustix::event::Timespec::try_from(left).unwrap_or(rustix::event::Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            });
            let mut fds = [rustix::event::PollFd::new(
                &pidfd,
                rustix::event::PollFlags::IN,
            )];
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(n) if n > 0 => return true,
                Err(Errno::INTR) => continue,
                Ok(_) if left.is_zero() => return !process_alive(pid),
                Ok(_) => continue,
                Err(_) => return !process_alive(pid),
            }
        },
        Err(Errno::SRCH) => true,
        Err(_) => {
            while process_alive(pid) {
                if std::time::Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_exit_sees_a_child_end_and_times_out_on_a_live_one() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(!wait_for_exit(pid, std::time::Duration::from_millis(50)));
        assert!(wait_for_exit(pid, std::time::Duration::from_secs(10)));
        child.wait().unwrap();
        assert!(
            wait_for_exit(pid, std::time::Duration::ZERO),
            "reaped: gone"
        );
    }

    fn scratch_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("hv-vss-sys-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

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

    #[test]
    fn open_mount_point_refuses_files_and_symlinks() {
        let dir = scratch_dir("open");
        let file = dir.join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(open_mount_point(&file).is_err());
        let link = dir.join("l");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(open_mount_point(&link).is_err());
        assert!(open_mount_point(&dir).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn flock_conflicts_between_open_file_descriptions() {
        let dir = scratch_dir("flock");
        let path = dir.join("lock");
        let a = std::fs::File::create(&path).unwrap();
        let b = std::fs::File::open(&path).unwrap();
        assert!(try_lock_exclusive(&a).unwrap());
        assert!(!try_lock_exclusive(&b).unwrap());
        drop(a);
        assert!(try_lock_exclusive(&b).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn process_alive_sees_self_and_not_a_reaped_child() {
        assert!(process_alive(std::process::id() as i32));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(!process_alive(pid));
        assert!(!process_alive(0));
    }
}
