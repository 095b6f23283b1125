//! The child's wait while it holds: poll(2) on stdin with a timeout, in this one thread
//! (`UFSSUSPEND` refuses a multi-threaded process), until a reason to resume comes.
//!
//! Each wakeup checks, in this order: the stop flag (SIGTERM and friends), the hard bound
//! ([`HoldBounds::max_hold`], counted from `started`), the heartbeat bound
//! ([`HoldBounds::heartbeat_timeout`], counted from the last heartbeat, or from the start
//! of the hold), then whatever arrived on stdin: complete lines are parsed
//! ([`parse_parent_line`]), a heartbeat restarts the heartbeat bound, anything else is a
//! [`ThawReason::BadInput`]; end of file is [`ThawReason::StdinClosed`].

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hv_vss_sys::poll::{Readable, poll_readable};

use super::{HoldBounds, MAX_PARENT_LINE, ParentLine, ThawReason, parse_parent_line};

/// The longest single poll: the stop flag is set by a signal handler, which may not
/// interrupt the poll (`SA_RESTART`), so it is looked at this often.
const POLL_STEP: Duration = Duration::from_millis(10);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Holds until a reason to resume comes, and returns it.
pub(super) fn hold_until_released(
    input: BorrowedFd<'_>,
    stop: &AtomicBool,
    bounds: &HoldBounds,
    started: Instant,
) -> ThawReason {
    let limit = bounds.max_hold.map(|max| (started.checked_add(max), max));
    let mut last_heartbeat = Instant::now();
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        if stop.load(Ordering::SeqCst) {
            return ThawReason::Signal;
        }
        let now = Instant::now();
        let mut next = last_heartbeat + bounds.heartbeat_timeout;
        if let Some((at, max)) = limit {
            match at {
                Some(at) if now < at => next = next.min(at),
                _ => {
                    return ThawReason::HoldLimit {
                        limit_ms: millis(max),
                    };
                }
            }
        }
        if now >= last_heartbeat + bounds.heartbeat_timeout {
            return ThawReason::NoHeartbeat {
                waited_ms: millis(now - last_heartbeat),
            };
        }
        let step = next.saturating_duration_since(now).min(POLL_STEP);
        match poll_readable(input, Some(step)) {
            Ok(Readable::TimedOut) => continue,
            Ok(Readable::Yes | Readable::Error) => {}
            Err(e) => {
                return ThawReason::InputError {
                    error: format!("poll: {e}"),
                };
            }
        }
        let n = match rustix::io::read(input, &mut chunk) {
            Ok(0) => return ThawReason::StdinClosed,
            Ok(n) => n,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
            Err(e) => {
                return ThawReason::InputError {
                    error: format!("read: {e}"),
                };
            }
        };
        pending.extend_from_slice(&chunk[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            match parse_parent_line(&pending[..end]) {
                Ok(ParentLine::Heartbeat) => last_heartbeat = Instant::now(),
                Err(error) => return ThawReason::BadInput { error },
            }
            pending.drain(..=end);
        }
        if pending.len() > MAX_PARENT_LINE {
            return ThawReason::BadInput {
                error: format!("more than {MAX_PARENT_LINE} bytes without a newline"),
            };
        }
    }
}
