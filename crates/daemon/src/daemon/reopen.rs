//! Reopening a lost transport: the bounded exponential backoff, the rescan/rebind steps of
//! a `/dev/uioN` device ([`Reopener`](crate::transport::Reopener)), and their rate-limited log lines (R13, R15, R71).

use std::time::{Duration, Instant};

use hv_vss_core::Event;
use hv_vss_core::report::CompletionEnd;

use super::Daemon;
use crate::kmsg::Urgent;
use crate::transport::ReopenStep;

/// First delay before reopening a lost transport; doubled up to [`REOPEN_BACKOFF_MAX`].
pub const REOPEN_BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A transport that stayed up this long (or carried a request) resets the backoff.
pub const REOPEN_STABLE_AFTER: Duration = Duration::from_secs(10);
/// How often a running rebind of the UIO device is checked (the bind itself runs on its own
/// thread, so the loop never waits for it).
const REBIND_POLL: Duration = Duration::from_millis(50);
/// At most one line per this interval about each of losing and reopening the transport
/// (a device that hangs up at once is host-triggerable, R71).
pub(super) const REOPEN_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// When to reopen a lost transport: exponential backoff from [`REOPEN_BACKOFF_MIN`] to
/// [`REOPEN_BACKOFF_MAX`], reset only once a transport has proved itself (stayed up
/// [`REOPEN_STABLE_AFTER`] or carried a request). A successful open alone proves nothing:
/// a device that hangs up right after registering would otherwise be reopened ten times a
/// second for ever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReopenBackoff {
    next: Duration,
    up_since: Option<Instant>,
}

impl Default for ReopenBackoff {
    fn default() -> Self {
        Self {
            next: REOPEN_BACKOFF_MIN,
            up_since: None,
        }
    }
}

impl ReopenBackoff {
    /// The transport was opened (and registered) at `now`.
    pub fn opened(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    /// The transport carried a request: it works.
    pub fn proved(&mut self) {
        self.next = REOPEN_BACKOFF_MIN;
    }

    /// The transport was lost at `now`: how long to wait before reopening.
    pub fn lost(&mut self, now: Instant) -> Duration {
        if self
            .up_since
            .take()
            .is_some_and(|t| now.saturating_duration_since(t) >= REOPEN_STABLE_AFTER)
        {
            self.next = REOPEN_BACKOFF_MIN;
        }
        self.take()
    }

    /// Reopening failed: how long to wait before the next attempt.
    pub fn open_failed(&mut self) -> Duration {
        self.take()
    }

    fn take(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(REOPEN_BACKOFF_MAX);
        delay
    }
}

impl Daemon {
    pub(super) fn lose_transport(&mut self) {
        if self.transport.take().is_none() {
            return;
        }
        self.urgent(
            Urgent::TransportLost,
            "VSS transport lost while filesystems are frozen; thawing, then reopening",
        );
        // The channel a BU_COMPLETE would come on is gone.
        self.close_completion(CompletionEnd::TransportLost);
        self.generation += 1;
        if !self.stopping {
            let now = Instant::now();
            self.reopen_at = Some(now + self.reopen_backoff.lost(now));
        }
        self.queue.push_back(Event::TransportLost);
    }

    pub(super) fn maybe_reopen(&mut self) {
        let Some(at) = self.reopen_at else { return };
        if Instant::now() < at || self.stopping {
            return;
        }
        // No bind (which may exec modprobe) while something of ours is frozen (R60).
        match self.reopener.attempt(self.safety.may_exec()) {
            ReopenStep::Opened { transport, node } => {
                let now = Instant::now();
                self.last_wait = None;
                if let Some(suppressed) = self.reopen_log.allow(now, REOPEN_LOG_INTERVAL) {
                    tracing::info!(
                        generation = self.generation,
                        node = %node.display(),
                        suppressed,
                        "VSS transport reopened and registered"
                    );
                }
                self.transport = Some(*transport);
                self.reopen_at = None;
                self.reopen_backoff.opened(now);
            }
            ReopenStep::Waiting(waiting) => {
                let now = Instant::now();
                let delay = if waiting.check_soon() {
                    REBIND_POLL
                } else {
                    self.reopen_backoff.open_failed()
                };
                // Each new step is logged once; a step that repeats, once per interval.
                let changed = self.last_wait != Some(waiting.kind());
                let allowed = self.wait_log.allow(now, REOPEN_LOG_INTERVAL);
                if changed || allowed.is_some() {
                    tracing::info!(
                        step = waiting.kind(),
                        retry_ms = delay.as_millis() as u64,
                        suppressed = allowed.unwrap_or(0),
                        "{waiting}"
                    );
                }
                self.last_wait = Some(waiting.kind());
                self.reopen_at = Some(now + delay);
            }
            ReopenStep::Failed(e) => {
                let now = Instant::now();
                self.last_wait = None;
                let delay = self.reopen_backoff.open_failed();
                if let Some(suppressed) = self.reopen_log.allow(now, REOPEN_LOG_INTERVAL) {
                    tracing::warn!(error = %e, retry_ms = delay.as_millis() as u64, suppressed, "reopening the VSS transport failed");
                }
                self.reopen_at = Some(now + delay);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the backoff went back to 100 ms after every successful open, so a
    /// device hanging up right after registering was reopened ~10 times a second for ever.
    #[test]
    fn reopen_backoff_grows_across_opens_until_the_transport_proves_itself() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = ReopenBackoff::default();
        b.opened(t0);
        let mut delays = Vec::new();
        let mut now = t0;
        for _ in 0..8 {
            // Opened, then hung up 1 ms later.
            now += ms(1);
            let d = b.lost(now);
            delays.push(d);
            now += d;
            b.opened(now);
        }
        assert_eq!(
            delays,
            vec![
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                REOPEN_BACKOFF_MAX,
                REOPEN_BACKOFF_MAX
            ]
        );
        // Failed opens keep growing it too.
        assert_eq!(b.open_failed(), REOPEN_BACKOFF_MAX);
        // Up long enough: the next loss starts over.
        b.opened(now);
        assert_eq!(b.lost(now + REOPEN_STABLE_AFTER), REOPEN_BACKOFF_MIN);
        // A request carried also proves it, however short the connection.
        for _ in 0..4 {
            b.opened(now);
            b.lost(now);
        }
        b.opened(now);
        b.proved();
        assert_eq!(b.lost(now + ms(1)), REOPEN_BACKOFF_MIN);
    }
}
