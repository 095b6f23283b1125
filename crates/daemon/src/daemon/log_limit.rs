//! A per-subject log rate limit: one line per interval, counting the rest (R71).

use std::time::{Duration, Instant};

/// Lets one line through per interval and counts the rest.
#[derive(Debug, Default)]
pub(super) struct LogLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// `Some(suppressed since the last line)` if a line may be logged now.
    pub(super) fn allow(&mut self, now: Instant, interval: Duration) -> Option<u64> {
        if self.last.is_some_and(|t| now.duration_since(t) < interval) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }

    /// The lines left out since the last one let through.
    pub(super) fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(10);

    #[test]
    fn log_limit_lets_one_line_through_per_interval_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut l = LogLimit::default();
        assert_eq!(l.allow(t0, INTERVAL), Some(0));
        for i in 1..=5 {
            assert_eq!(l.allow(t0 + Duration::from_millis(i), INTERVAL), None);
        }
        assert_eq!(l.allow(t0 + INTERVAL, INTERVAL), Some(5));
    }
}
