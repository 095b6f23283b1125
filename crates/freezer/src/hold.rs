//! Holding a freeze for a while, ended early by SIGINT, SIGTERM or SIGHUP.
//!
//! Used by `hv-vss freeze --hold`: a Ctrl-C during the hold must thaw, not kill the process
//! with everything frozen. The handlers only set a flag (async-signal-safe); the waiting
//! loop polls it every 10 ms, writes nothing and logs nothing. The handlers are removed when
//! the hold ends, so the default actions return.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// How a hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEnd {
    /// The full duration passed.
    Elapsed,
    /// A termination signal arrived first.
    Interrupted,
}

/// Sleep for `duration` or until SIGINT/SIGTERM/SIGHUP.
pub fn hold(duration: Duration) -> std::io::Result<HoldEnd> {
    let flag = Arc::new(AtomicBool::new(false));
    let mut ids = Vec::new();
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        match signal_hook::flag::register(sig, flag.clone()) {
            Ok(id) => ids.push(id),
            Err(e) => {
                ids.into_iter().for_each(|id| {
                    signal_hook::low_level::unregister(id);
                });
                return Err(e);
            }
        }
    }
    let outcome = wait(duration, &flag);
    for id in ids {
        signal_hook::low_level::unregister(id);
    }
    Ok(outcome)
}

/// Polls `interrupted` every 10 ms until it is set or `duration` has passed.
fn wait(duration: Duration, interrupted: &AtomicBool) -> HoldEnd {
    // Too far away to add to the clock: only a signal ends the hold.
    let end = Instant::now().checked_add(duration);
    loop {
        if interrupted.load(Ordering::SeqCst) {
            return HoldEnd::Interrupted;
        }
        let now = Instant::now();
        let left = match end {
            Some(end) if now >= end => return HoldEnd::Elapsed,
            Some(end) => end - now,
            None => Duration::MAX,
        };
        std::thread::sleep(left.min(Duration::from_millis(10)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapses() {
        let t = Instant::now();
        assert_eq!(hold(Duration::from_millis(30)).unwrap(), HoldEnd::Elapsed);
        assert!(t.elapsed() >= Duration::from_millis(30));
    }

    /// Regression: `Instant::now() + duration` panicked for a duration too large for the
    /// clock (`hv-vss freeze --hold 10000000000000000000`), with everything frozen. Such a
    /// hold now lasts until a signal.
    #[test]
    fn a_hold_too_long_for_the_clock_does_not_panic_and_ends_on_a_signal() {
        let interrupted = AtomicBool::new(false);
        let end = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                interrupted.store(true, Ordering::SeqCst);
            });
            wait(Duration::MAX, &interrupted)
        });
        assert_eq!(end, HoldEnd::Interrupted);
    }
}
