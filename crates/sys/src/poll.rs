//! Waiting for a descriptor to become readable: `poll(2)` with `POLLIN`, the same call on
//! Linux (UIO, the sim's memfd rings) and FreeBSD (`/dev/hv_fsvss_dev`).
//!
//! # Kernel contract
//!
//! `poll` reports `POLLIN` when a read would not block, and `POLLERR`, `POLLHUP` or
//! `POLLNVAL` (whatever was asked) when the descriptor or its device is gone. A signal
//! interrupts it with `EINTR`; the wait then resumes with the time left.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;

/// Outcome of [`poll_readable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readable {
    /// `POLLIN`.
    Yes,
    /// The timeout expired.
    TimedOut,
    /// `POLLERR`, `POLLHUP` or `POLLNVAL`.
    Error,
}

/// `poll({fd, POLLIN}, timeout)`, retrying on `EINTR` with the time left.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> Result<Readable, Errno> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        let ts = left.map(|l| Timespec {
            tv_sec: l.as_secs() as i64,
            tv_nsec: i64::from(l.subsec_nanos()),
        });
        let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(0) => return Ok(Readable::TimedOut),
            Ok(_) => {
                let r = fds[0].revents();
                if r.intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL) {
                    return Ok(Readable::Error);
                }
                return Ok(Readable::Yes);
            }
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}
