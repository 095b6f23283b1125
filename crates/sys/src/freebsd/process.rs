//! FreeBSD's half of [`crate::process`]: `close_range(2)` through libc, and exit watches
//! as kqueues.
//!
//! # Kernel contract
//!
//! - `close_range(3, ~0U, CLOSE_RANGE_CLOEXEC)` (13.1) sets `FD_CLOEXEC` on every
//!   descriptor from 3 up; before 13.1 the flag is refused with `EINVAL`.
//! - `kevent` adding `EVFILT_PROC`/`NOTE_EXIT` for a pid registers a watch on that process
//!   (`ESRCH` if it does not exist) that fires once it exits. A kqueue descriptor polls
//!   readable while it has a pending event, so the kqueue itself is the exit watch.
//!   FreeBSD has `pdfork(2)` for descriptors of one's own children, but nothing like
//!   `pidfd_open` for another process: the kqueue is the way.

use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::event::kqueue::{Event, EventFilter, EventFlags, ProcessEvents, kevent, kqueue};
use rustix::io::Errno;
use rustix::process::Pid;

/// `close_range(3, ~0U, CLOSE_RANGE_CLOEXEC)`; failures (before 13.1) are ignored.
pub(crate) fn mark_inherited_fds_cloexec() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC takes three integers, touches no memory of
    // ours and closes nothing: it only sets FD_CLOEXEC on descriptors 3 and up, so no owned
    // descriptor in this process becomes dangling.
    let _ = unsafe {
        libc::close_range(
            3,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
        )
    };
}

/// A kqueue with `EVFILT_PROC`/`NOTE_EXIT` registered for `pid`.
pub(crate) fn exit_watch(pid: Pid) -> Result<OwnedFd, Errno> {
    let queue = kqueue()?;
    let watch = Event::new(
        EventFilter::Proc {
            pid,
            flags: ProcessEvents::EXIT,
        },
        EventFlags::ADD | EventFlags::ONESHOT,
        std::ptr::null_mut(),
    );
    let mut none: [Event; 0] = [];
    // SAFETY: kevent's contract is that file descriptors named by the events outlive the
    // kqueue; this event names a process, not a descriptor, and its udata is null and
    // never dereferenced. The empty event list only registers; the zero timeout never
    // blocks.
    unsafe { kevent(&queue, &[watch], &mut none, Some(Duration::ZERO)) }?;
    Ok(queue)
}
