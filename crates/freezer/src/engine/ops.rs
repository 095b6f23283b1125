//! The kernel seam of the engine: every syscall the freeze makes (open, identify, `syncfs`,
//! FIFREEZE, FITHAW) goes through [`FsOps`], so the engine runs on the real kernel
//! ([`KernelOps`]) in production and on a fake in its unit tests. It also keeps the
//! process-wide set of filesystems whose `syncfs` has not returned.
//!
//! # Kernel contract
//!
//! The calls are those of `hv_vss_sys::fs`: FIFREEZE blocks until the superblock is frozen
//! and fails with EBUSY if it already is; FITHAW on a filesystem that is not frozen fails
//! with EINVAL (`ThawError::NotFrozen`); `syncfs` may block for as long as the device does.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;

use hv_vss_sys::fs::{DevNum, FileIdentity, FreezeError as SysFreezeError, ThawError};

/// What the freeze engine does to the kernel; real syscalls in production, fakes in tests.
pub(crate) trait FsOps: Send + Sync + 'static {
    fn open(&self, path: &Path) -> std::io::Result<OwnedFd>;
    fn identify(&self, fd: BorrowedFd<'_>) -> std::io::Result<FileIdentity>;
    fn identify_path(&self, path: &Path) -> std::io::Result<FileIdentity>;
    fn syncfs(&self, fd: BorrowedFd<'_>) -> std::io::Result<()>;
    fn freeze(&self, fd: BorrowedFd<'_>) -> Result<(), SysFreezeError>;
    fn thaw(&self, fd: BorrowedFd<'_>) -> Result<(), ThawError>;
    /// Filesystems whose `syncfs` (from this or an earlier freeze) has not returned: at
    /// most one flush thread runs per filesystem, so a hung `syncfs` costs one thread and
    /// one fd, not one per FREEZE.
    fn flushing(&self) -> &Mutex<BTreeSet<DevNum>>;
}

/// [`FsOps::flushing`] of the real kernel: process-wide.
static KERNEL_FLUSHING: Mutex<BTreeSet<DevNum>> = Mutex::new(BTreeSet::new());

/// The real syscalls.
#[derive(Debug)]
pub(crate) struct KernelOps;

impl FsOps for KernelOps {
    fn open(&self, path: &Path) -> std::io::Result<OwnedFd> {
        hv_vss_sys::fs::open_mount_point(path)
    }
    fn identify(&self, fd: BorrowedFd<'_>) -> std::io::Result<FileIdentity> {
        hv_vss_sys::fs::identify(fd)
    }
    fn identify_path(&self, path: &Path) -> std::io::Result<FileIdentity> {
        let dir = std::fs::File::open(path)?;
        hv_vss_sys::fs::identify(dir.as_fd())
    }
    fn syncfs(&self, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        hv_vss_sys::fs::syncfs(fd)
    }
    fn freeze(&self, fd: BorrowedFd<'_>) -> Result<(), SysFreezeError> {
        hv_vss_sys::fs::freeze(fd)
    }
    fn thaw(&self, fd: BorrowedFd<'_>) -> Result<(), ThawError> {
        hv_vss_sys::fs::thaw(fd)
    }
    fn flushing(&self) -> &Mutex<BTreeSet<DevNum>> {
        &KERNEL_FLUSHING
    }
}
