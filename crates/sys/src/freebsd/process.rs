//! FreeBSD's half of [`crate::process`]: `close_range(2)` through libc, and the exit wait
//! through a kqueue.
//!
//! # Kernel contract
//!
//! - `close_range(3, ~0U, CLOSE_RANGE_CLOEXEC)` (13.1) sets `FD_CLOEXEC` on every
//!   descriptor from 3 up; before 13.1 the flag is refused with `EINVAL`.
//! - `kevent` with `EVFILT_PROC`/`NOTE_EXIT` for a pid registers a watch on that process
//!   (`ESRCH` if it does not exist, which then means it is gone) and returns the event once
//!   it exits. FreeBSD has `pdfork(2)` for descriptors of one's own children, but nothing
//!   like `pidfd_open` for another process: the kqueue is the way.

use std::time::Instant;

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

/// Waits on a kqueue `EVFILT_PROC`/`NOTE_EXIT` until `pid` exits or `deadline` passes:
/// `Some(true)` gone, `Some(false)` still running at the deadline, `None` when the kqueue
/// cannot be set up.
pub(crate) fn wait_for_exit(pid: Pid, deadline: Instant) -> Option<bool> {
    let queue = kqueue().ok()?;
    let watch = Event::new(
        EventFilter::Proc {
            pid,
            flags: ProcessEvents::EXIT,
        },
        EventFlags::ADD | EventFlags::ONESHOT,
        std::ptr::null_mut(),
    );
    let mut changes: &[Event] = std::slice::from_ref(&watch);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut events: Vec<Event> = Vec::with_capacity(1);
        // SAFETY: kevent's contract is that file descriptors named by the events outlive the
        // kqueue; this event names a process, not a descriptor, and its udata is null and
        // never dereferenced.
        match unsafe { kevent(&queue, changes, &mut events, Some(left)) } {
            Ok(_) if !events.is_empty() => return Some(true),
            Ok(_) if left.is_zero() => {
                return Some(!crate::process::process_alive(pid.as_raw_nonzero().get()));
            }
            Ok(_) => {}
            Err(Errno::SRCH) => return Some(true),
            Err(Errno::INTR) => {}
            Err(_) => return None,
        }
        // Registered (or interrupted after registering): only wait from now on.
        changes = &[];
    }
}
