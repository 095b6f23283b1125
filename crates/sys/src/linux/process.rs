//! Linux's half of [`crate::process`]: `close_range(2)` by raw syscall, and exit watches
//! as pidfds.
//!
//! # Kernel contract
//!
//! - `close_range(3, ~0U, CLOSE_RANGE_CLOEXEC)` (5.11) sets `FD_CLOEXEC` on every descriptor
//!   from 3 up; older kernels answer `ENOSYS` or `EINVAL`.
//! - `pidfd_open(pid, 0)` (5.3) gives an fd that polls readable once the process has exited
//!   (zombie or reaped); `ESRCH` when no such process exists now. Older kernels answer
//!   `ENOSYS`.

use std::os::fd::OwnedFd;

use rustix::io::Errno;
use rustix::process::Pid;

/// `close_range(3, ~0U, CLOSE_RANGE_CLOEXEC)`; failures (old kernels) are ignored.
pub(crate) fn mark_inherited_fds_cloexec() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC takes three integers, touches no memory of
    // ours and closes nothing: it only sets FD_CLOEXEC on descriptors 3 and up, so no owned
    // descriptor in this process becomes dangling.
    let _ = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
}

/// `pidfd_open(pid, 0)`.
pub(crate) fn exit_watch(pid: Pid) -> Result<OwnedFd, Errno> {
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
}
