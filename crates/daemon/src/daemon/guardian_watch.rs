//! Supervising the guardian process: noticing its end (it died, or it thawed because the
//! daemon was hung, stopped or past its deadline: either way thaw at once and answer as on
//! auto-thaw, refuse FREEZE until a new one runs, R57), starting a new one only while
//! nothing of ours is frozen (R60), and telling it the loop is alive and the deadline.

use std::time::{Duration, Instant};

use hv_vss_core::Event;

use super::Daemon;
use crate::guardian::{DEADLINE_GRACE, Guardian, HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT};
use crate::kmsg::Urgent;

/// Delay between attempts to start a guardian that failed to start.
const GUARDIAN_RETRY: Duration = Duration::from_secs(2);

/// How long before the guardian's [`HEARTBEAT_TIMEOUT`] a silence counts as stale: more
/// than the heartbeat interval plus a poll's latency, so a loop that kept its beat never is.
const STALE_MARGIN: Duration = Duration::from_millis(1500);

impl Daemon {
    pub(super) fn check_guardian(&mut self) {
        let gone = self.guardian.as_mut().is_some_and(Guardian::is_gone);
        if !gone {
            return;
        }
        self.guardian = None;
        self.guardian_link.disconnect();
        tracing::error!(
            "the guardian process ended (it died, or thawed because this daemon was stopped, hung or past its deadline); thawing if frozen, then starting a new one"
        );
        self.urgent(
            Urgent::GuardianDied,
            "guardian process ended while filesystems are frozen; thawing now",
        );
        self.queue.push_back(Event::GuardianDied);
        // No FREEZE without a guardian (R57).
        self.queue.push_back(Event::NotReady);
        self.guardian_retry_at = Some(Instant::now());
        self.pump();
    }

    pub(super) fn maybe_respawn_guardian(&mut self) {
        if self.guardian.is_some() || !self.safety.may_exec() || self.stopping {
            return;
        }
        if self.guardian_retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        // Exec only while nothing is frozen (R60).
        match Guardian::spawn(&self.settings.state_dir, self.debug) {
            Ok(g) => {
                g.log_started();
                self.guardian_link.connect(&g);
                self.guardian = Some(g);
                self.guardian_retry_at = None;
                self.queue.push_back(Event::Ready);
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot start a guardian; FREEZE is refused until one runs");
                self.guardian_retry_at = Some(Instant::now() + GUARDIAN_RETRY);
            }
        }
    }

    /// Tells the guardian the loop is alive, once per [`HEARTBEAT_INTERVAL`].
    pub(super) fn heartbeat(&mut self) {
        let now = Instant::now();
        if now >= self.next_heartbeat {
            self.send_heartbeat(now);
        }
    }

    fn send_heartbeat(&mut self, now: Instant) {
        self.guardian_link.heartbeat();
        self.last_heartbeat = now;
        self.next_heartbeat = now + HEARTBEAT_INTERVAL;
    }

    /// Sends a heartbeat now, and says whether the silence before it was long enough that
    /// the guardian may have given up on this daemon: it thaws everything once
    /// [`HEARTBEAT_TIMEOUT`] passes without a message, and this loop (stopped, hung, or
    /// starved) has sent none for long enough that it cannot tell whether that happened.
    /// A guardian that has not given up will not, after this heartbeat.
    /// A FIFREEZE that returns in such a moment must not be answered S_OK: the guardian
    /// may have thawed what it froze, and the host would snapshot thawed disks.
    pub(super) fn beat_after_stale_silence(&mut self) -> bool {
        let now = Instant::now();
        let silent = now.duration_since(self.last_heartbeat);
        self.send_heartbeat(now);
        silent + STALE_MARGIN >= HEARTBEAT_TIMEOUT
    }

    /// When the guardian is to thaw on its own if the daemon has not by then, for a freeze
    /// starting now: the FREEZE budget, then the auto-thaw, plus a grace.
    pub(super) fn guardian_deadline(&self) -> Option<Duration> {
        let limits = &self.settings.limits;
        match limits.auto_thaw {
            hv_vss_core::AutoThaw::After(d) => Some(limits.freeze_deadline + d + DEADLINE_GRACE),
            hv_vss_core::AutoThaw::Disabled => None,
        }
    }
}
