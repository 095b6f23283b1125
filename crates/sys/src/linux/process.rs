//! Linux's half of [`crate::process`]: `close_range(2)` by raw syscall, and the exit wait
//! through a pidfd.
//!
//! # Kernel contract
//!
//! - `close_range(3, ~0U, CLOSE_RANGE_CLOEXEC)` (5.11) sets `FD_CLOEXEC` on every descriptor
//!   from 3 up; older kernels answer `ENOSYS` or `EINVAL`.
//! - `pidfd_open(pid, 0)` (5.3) gives an fd that polls readable once the process has exited
//!   (zombie or reaped); `ESRCH` when no such process exists now. Older kernels answer
//!   `ENOSYS`.

use std::time::Instant;

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

/// Waits on a pidfd until `pid` exits or `deadline` passes: `Some(true)` gone,
/// `Some(false)` still running at the deadline, `None` when pidfds are not available.
pub(crate) fn wait_for_exit(pid: Pid, deadline: Instant) -> Option<bool> {
    let still_there = || crate::process::process_alive(pid.as_raw_nonzero().get());
    match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(pidfd) => loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ts = rustix::event::Timespec::try_from(left).unwrap_or(rustix::event::Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            });
            let mut fds = [rustix::event::PollFd::new(
                &pidfd,
                rustix::event::PollFlags::IN,
            )];
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(n) if n > 0 => return Some(true),
                Err(Errno::INTR) => continue,
                Ok(_) if left.is_zero() => return Some(!still_there()),
                Ok(_) => continue,
                Err(_) => return Some(!still_there()),
            }
        },
        Err(Errno::SRCH) => Some(true),
        Err(_) => None,
    }
}
