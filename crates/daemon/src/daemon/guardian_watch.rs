//! Supervising the guardian process: noticing its death (thaw at once, refuse FREEZE until
//! a new one runs, R57) and starting a new one, only while nothing of ours is frozen (R60).

use std::time::{Duration, Instant};

use hv_vss_core::Event;

use super::Daemon;
use crate::guardian::Guardian;
use crate::kmsg::Urgent;

/// Delay between attempts to start a guardian that failed to start.
const GUARDIAN_RETRY: Duration = Duration::from_secs(2);

impl Daemon {
    pub(super) fn check_guardian(&mut self) {
        let gone = self.guardian.as_mut().is_some_and(Guardian::is_gone);
        if !gone {
            return;
        }
        self.guardian = None;
        tracing::error!("the guardian process died; thawing if frozen, then starting a new one");
        self.urgent(
            Urgent::GuardianDied,
            "guardian process died while filesystems are frozen; thawing now",
        );
        self.queue.push_back(Event::GuardianDied);
        // No FREEZE without a guardian (R57).
        self.queue.push_back(Event::NotReady);
        self.guardian_retry_at = Some(Instant::now());
        self.pump();
    }

    pub(super) fn maybe_respawn_guardian(&mut self) {
        if self.guardian.is_some() || self.fs_frozen || self.stopping {
            return;
        }
        if self.guardian_retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        // Exec only while nothing is frozen (R60).
        match Guardian::spawn(&self.settings.state_dir, self.debug) {
            Ok(g) => {
                tracing::info!(pid = g.pid(), "guardian started");
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
}
