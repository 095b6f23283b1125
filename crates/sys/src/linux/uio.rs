//! The `/dev/uioN` device of `uio_hv_generic`: open, map, event counter, interrupt control.
//!
//! Kernel contract (drivers/uio/uio.c, drivers/uio/uio_hv_generic.c; wire-protocol.md §3.3):
//!
//! - `mmap(len, RW, MAP_SHARED, offset = N * page_size)` maps map N; its size is in
//!   `/sys/class/uio/uioN/maps/mapN/size` (hex, `0x…`). Map 0 is TX ring then RX ring.
//! - `read(fd, buf, 4)` returns the interrupt event counter once it moved (4 bytes exactly;
//!   `EAGAIN` under `O_NONBLOCK` when it did not).
//! - `write(fd, &v, 4)`: `v = 1` unmasks RX interrupts and signals the host (channels
//!   without a monitor page, as ICs are); `v = 0` masks.
//! - `poll`: `POLLIN` when the counter moved, `POLLERR` after rescind.
//! - After a rescind `read` fails with `EIO` and `write` with `EINVAL` (the UIO core finds
//!   no device info before it checks the irq): after a successful open, `EIO`, `EINVAL` and
//!   `POLLERR` all mean the host rescinded the device ([`UioError::Rescinded`]). Our calls
//!   always pass 4 bytes, so `EINVAL` has no other cause.
//!
//! The fd is opened `O_NONBLOCK`: reads never block, waiting is done with [`UioDevice::poll`].

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::mem::{MemError, SharedMapping, page_size};
pub use crate::poll::{Readable, poll_readable};

/// Errors of the UIO device.
#[derive(Debug, thiserror::Error)]
pub enum UioError {
    /// `EIO`, `EINVAL` or `POLLERR` after open: the host removed the device. Close
    /// everything and wait for the re-offer (R15).
    #[error("the VMBus device was rescinded (EIO/EINVAL/POLLERR)")]
    Rescinded,
    /// A system call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// The call, e.g. `open`.
        op: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A sysfs map size was not a number.
    #[error("{}: unparsable map size {text:?}", path.display())]
    BadMapSize {
        /// The sysfs file.
        path: PathBuf,
        /// What it held.
        text: String,
    },
    /// Mapping failed.
    #[error(transparent)]
    Map(#[from] MemError),
}

/// Where the UIO device nodes and their sysfs class directory live (overridable for tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UioPaths {
    /// The `/sys/class/uio` directory.
    pub sysfs_class_uio: PathBuf,
    /// The `/dev` directory.
    pub dev: PathBuf,
}

impl Default for UioPaths {
    fn default() -> Self {
        Self {
            sysfs_class_uio: PathBuf::from("/sys/class/uio"),
            dev: PathBuf::from("/dev"),
        }
    }
}

impl UioPaths {
    /// `/dev/uio<index>`.
    pub fn device(&self, index: u32) -> PathBuf {
        self.dev.join(format!("uio{index}"))
    }

    /// `/sys/class/uio/uio<index>/maps/map<map>/size`.
    pub fn map_size_file(&self, index: u32, map: u32) -> PathBuf {
        self.sysfs_class_uio
            .join(format!("uio{index}/maps/map{map}/size"))
    }

    /// Reads and parses the size of map `map` of device `index`.
    pub fn map_size(&self, index: u32, map: u32) -> Result<usize, UioError> {
        let path = self.map_size_file(index, map);
        let text = std::fs::read_to_string(&path).map_err(|source| UioError::Io {
            op: "read",
            path: path.clone(),
            source,
        })?;
        parse_map_size(&text).ok_or(UioError::BadMapSize { path, text })
    }
}

/// Parses a UIO sysfs map size: `0x` hex as the kernel prints it (`"0x400000\n"`), or
/// decimal.
pub fn parse_map_size(text: &str) -> Option<usize> {
    let t = text.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => usize::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    }
}

/// Whether [`UioDevice::poll`] saw an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UioReadiness {
    /// The event counter moved (read it to acknowledge).
    Event,
    /// The timeout expired first.
    TimedOut,
}

/// An open `/dev/uioN`.
#[derive(Debug)]
pub struct UioDevice {
    fd: OwnedFd,
    index: u32,
    paths: UioPaths,
}

/// Classifies an errno from `op` on the device. `EIO` is a rescind from any call; `EINVAL`
/// only from calls on an open device (`write` returns it after a rescind).
pub fn map_errno(e: Errno, op: &'static str, path: &Path) -> UioError {
    if e == Errno::IO || (e == Errno::INVAL && op != "open") {
        UioError::Rescinded
    } else {
        UioError::Io {
            op,
            path: path.to_owned(),
            source: e.into(),
        }
    }
}

impl UioDevice {
    /// Opens `/dev/uio<index>` (`O_RDWR | O_CLOEXEC | O_NONBLOCK`). For uio_hv_generic the
    /// first open also opens the VMBus channel and masks RX interrupts.
    pub fn open(index: u32) -> Result<Self, UioError> {
        Self::open_with(UioPaths::default(), index)
    }

    /// As [`UioDevice::open`], under other roots (tests).
    pub fn open_with(paths: UioPaths, index: u32) -> Result<Self, UioError> {
        let path = paths.device(index);
        let fd = rustix::fs::open(
            &path,
            OFlags::RDWR | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| map_errno(e, "open", &path))?;
        Ok(Self { fd, index, paths })
    }

    /// The N of `/dev/uioN`.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The paths this device was opened under.
    pub fn paths(&self) -> &UioPaths {
        &self.paths
    }

    /// Size of map `map` from sysfs.
    pub fn map_size(&self, map: u32) -> Result<usize, UioError> {
        self.paths.map_size(self.index, map)
    }

    /// Maps map `map` whole: `mmap(size, RW, MAP_SHARED, fd, map * page_size)`.
    pub fn map(&self, map: u32) -> Result<SharedMapping, UioError> {
        let len = self.map_size(map)?;
        let offset = u64::from(map) * page_size() as u64;
        Ok(SharedMapping::map(self.fd.as_fd(), offset, len)?)
    }

    /// `read(fd, &count, 4)`: the interrupt event counter, or `None` if it has not moved
    /// since this fd last read it.
    pub fn read_event_count(&self) -> Result<Option<u32>, UioError> {
        let mut buf = [0u8; 4];
        match rustix::io::read(&self.fd, &mut buf) {
            Ok(4) => Ok(Some(u32::from_ne_bytes(buf))),
            Ok(n) => Err(UioError::Io {
                op: "read",
                path: self.paths.device(self.index),
                source: io::Error::new(io::ErrorKind::UnexpectedEof, format!("{n} of 4 bytes")),
            }),
            Err(Errno::AGAIN) => Ok(None),
            Err(e) => Err(map_errno(e, "read", &self.paths.device(self.index))),
        }
    }

    /// `write(fd, &v, 4)`: `true` writes 1 (unmask RX interrupts and signal the host),
    /// `false` writes 0 (mask).
    pub fn set_interrupts(&self, enabled: bool) -> Result<(), UioError> {
        let v = u32::from(enabled).to_ne_bytes();
        match rustix::io::write(&self.fd, &v) {
            Ok(4) => Ok(()),
            Ok(n) => Err(UioError::Io {
                op: "write",
                path: self.paths.device(self.index),
                source: io::Error::new(io::ErrorKind::WriteZero, format!("{n} of 4 bytes")),
            }),
            Err(e) => Err(map_errno(e, "write", &self.paths.device(self.index))),
        }
    }

    /// `poll(fd, POLLIN)` for at most `timeout` (`None` = forever). `POLLERR` is
    /// [`UioError::Rescinded`].
    pub fn poll(&self, timeout: Option<Duration>) -> Result<UioReadiness, UioError> {
        poll_readable(self.fd.as_fd(), timeout)
            .map_err(|e| map_errno(e, "poll", &self.paths.device(self.index)))
            .and_then(|r| match r {
                Readable::Yes => Ok(UioReadiness::Event),
                Readable::TimedOut => Ok(UioReadiness::TimedOut),
                Readable::Error => Err(UioError::Rescinded),
            })
    }
}

impl AsFd for UioDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake `/sys/class/uio` + `/dev` tree with uio3 whose map 0 is 2 × 64 KiB.
    fn fake_tree(map0_size: &str) -> (tempfile::TempDir, UioPaths) {
        let dir = tempfile::tempdir().unwrap();
        let paths = UioPaths {
            sysfs_class_uio: dir.path().join("sys"),
            dev: dir.path().join("dev"),
        };
        std::fs::create_dir_all(paths.sysfs_class_uio.join("uio3/maps/map0")).unwrap();
        std::fs::create_dir_all(&paths.dev).unwrap();
        std::fs::write(paths.map_size_file(3, 0), map0_size).unwrap();
        let dev = std::fs::File::create(paths.device(3)).unwrap();
        dev.set_len(2 * 64 * 1024).unwrap();
        (dir, paths)
    }

    #[test]
    fn map_sizes_parse_as_the_kernel_prints_them() {
        assert_eq!(parse_map_size("0x400000\n"), Some(4 << 20));
        assert_eq!(parse_map_size("0x1000"), Some(4096));
        assert_eq!(parse_map_size("8192\n"), Some(8192));
        assert_eq!(parse_map_size("0xzz"), None);
        assert_eq!(parse_map_size(""), None);
    }

    #[test]
    fn map_size_comes_from_sysfs_and_map_covers_it() {
        let (_dir, paths) = fake_tree("0x20000\n");
        assert_eq!(paths.map_size(3, 0).unwrap(), 0x20000);
        assert!(matches!(paths.map_size(3, 1), Err(UioError::Io { .. })));
        let dev = UioDevice::open_with(paths, 3).unwrap();
        let map = dev.map(0).unwrap();
        assert_eq!(map.len(), 0x20000);
    }

    #[test]
    fn bad_sysfs_size_and_missing_device_are_typed() {
        let (_dir, paths) = fake_tree("lots\n");
        assert!(matches!(
            paths.map_size(3, 0),
            Err(UioError::BadMapSize { .. })
        ));
        assert!(matches!(
            UioDevice::open_with(paths, 4),
            Err(UioError::Io { op: "open", .. })
        ));
    }

    /// Wire §3.2: after a rescind `read` gives `EIO` and `write` gives `EINVAL`; both, after
    /// a successful open, are the rescind. `EINVAL` from `open` is not.
    #[test]
    fn eio_and_einval_after_open_mean_rescinded() {
        let dev = Path::new("/dev/uio0");
        for op in ["read", "write", "poll"] {
            for errno in [Errno::IO, Errno::INVAL] {
                assert!(
                    matches!(map_errno(errno, op, dev), UioError::Rescinded),
                    "{op} {errno:?}"
                );
            }
        }
        assert!(matches!(
            map_errno(Errno::INVAL, "open", dev),
            UioError::Io { .. }
        ));
        assert!(matches!(
            map_errno(Errno::AGAIN, "write", dev),
            UioError::Io { .. }
        ));
    }
}
