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
    let end = Instant::now() + duration;
    let outcome = loop {
        if flag.load(Ordering::SeqCst) {
            break HoldEnd::Interrupted;
        }
        let now = Instant::now();
        if now >= end {
            break HoldEnd::Elapsed;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(10)));
    };
    for id in ids {
        signal_hook::low_level::unregister(id);
    }
    Ok(outcome)
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
}
