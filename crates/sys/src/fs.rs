//! Opens, stats and locks the freezers of both platforms need, and the platform's own
//! filesystem calls re-exported from one place (Linux: `FIFREEZE`, `FITHAW`, `syncfs`,
//! `statx`; FreeBSD: the mount table from `getfsstat(2)` and `statfs(2)`).
//!
//! # Kernel contract
//!
//! - `open(dir, O_RDONLY|O_DIRECTORY|O_NOFOLLOW)` gives an fd inside the mount a freeze
//!   acts on without following a symlink planted at the mount point.
//! - `st_dev` names the filesystem a file lives on; `st_rdev` the device a block special
//!   file stands for.
//! - `flock(LOCK_EX|LOCK_NB)` conflicts between open file descriptions, not processes, and
//!   ends when the last descriptor of its description closes (a crashed holder frees it).
//!
//! FreeBSD has no `syncfs(2)`. None is offered there: a UFS suspension writes everything
//! back itself before it returns (`vfs_write_suspend` then `ffs_sync(MNT_WAIT)`), ZFS is
//! synced per pool by `zpool sync`, and the two stand-ins would not mean the same thing:
//! `sync(2)` covers every filesystem and does not wait (`MNT_NOWAIT`), and `fsync` of the
//! mount point's fd writes back only that directory.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;

pub use crate::platform::fs::*;

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

    /// Parses `major:minor` as the kernel prints it (surrounding whitespace allowed, as in
    /// a sysfs `dev` file's `"7:0\n"`).
    pub fn parse(text: &str) -> Option<Self> {
        let (major, minor) = text.trim().split_once(':')?;
        Some(Self {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }
}

impl std::fmt::Display for DevNum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// Open a mount point for freezing:
/// `open(path, O_RDONLY|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC|O_NONBLOCK|O_NOATIME)` (R40).
///
/// `O_NOATIME` (Linux only) avoids an atime update on the mount point (it needs ownership
/// or `CAP_FOWNER`; without them the open is retried without it).
pub fn open_mount_point(path: &Path) -> std::io::Result<OwnedFd> {
    let flags =
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    match rustix::fs::open(path, flags | crate::platform::fs::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => rustix::fs::open(path, flags, Mode::empty()).map_err(Into::into),
        other => other.map_err(Into::into),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("hv-vss-sys-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        dir
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
    fn devnum_parses_what_it_prints() {
        let dev = DevNum {
            major: 259,
            minor: 3,
        };
        assert_eq!(DevNum::parse(&dev.to_string()), Some(dev));
        assert_eq!(DevNum::parse("7:0\n"), Some(DevNum { major: 7, minor: 0 }));
        assert_eq!(DevNum::parse("7"), None);
        assert_eq!(DevNum::parse("7:x"), None);
        assert_eq!(DevNum::parse("-1:0"), None);
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
}
