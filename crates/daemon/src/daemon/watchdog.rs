//! systemd's watchdog: how often to ping it.

use std::time::Duration;

/// Shortest interval between watchdog pings, whatever `WATCHDOG_USEC` says.
const WATCHDOG_MIN_INTERVAL: Duration = Duration::from_millis(10);

/// How often to ping systemd's watchdog, from its `WATCHDOG_USEC` (already parsed; garbage
/// is `None`): half the timeout, at least [`WATCHDOG_MIN_INTERVAL`]. A zero timeout means no
/// watchdog: the ping deadline would otherwise make every `poll` return at once (a busy
/// loop).
pub(super) fn watchdog_interval(timeout: Option<Duration>) -> Option<Duration> {
    timeout
        .filter(|t| !t.is_zero())
        .map(|t| (t / 2).max(WATCHDOG_MIN_INTERVAL))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: `WATCHDOG_USEC=0` gave a zero ping interval, so the poll timeout was
    /// always zero: a busy loop. Zero now means no watchdog; tiny values are clamped.
    #[test]
    fn a_zero_watchdog_timeout_means_no_watchdog_and_tiny_ones_are_clamped() {
        assert_eq!(watchdog_interval(None), None);
        assert_eq!(watchdog_interval(Some(Duration::ZERO)), None);
        assert_eq!(
            watchdog_interval(Some(Duration::from_micros(1))),
            Some(WATCHDOG_MIN_INTERVAL)
        );
        assert_eq!(
            watchdog_interval(Some(Duration::from_secs(30))),
            Some(Duration::from_secs(15))
        );
    }
}
