//! The filesystem worker's outcomes and what they mean for the frozen state: the log gate
//! is released only when the worker says nothing of ours is frozen (R60, R61), and while
//! frozen the urgent conditions also go to the kernel log ([`Kmsg`](crate::kmsg::Kmsg)).

use std::time::Instant;

use hv_vss_core::{Event, Failure, Notice, Stage};
use rustix::event::{PollFd, PollFlags, Timespec};

use super::Daemon;
use crate::fswork::{FsOutcome, THAW_RETRY_INTERVAL};
use crate::kmsg::Urgent;
use crate::safety::Epoch;

impl Daemon {
    /// Waits (until `until` at most) for the worker's next outcomes and handles them.
    pub(super) fn wait_for_worker(&mut self, until: Instant) {
        // A FITHAW being retried here may take a while: the guardian still hears from us.
        self.heartbeat();
        let left = until
            .saturating_duration_since(Instant::now())
            .min(crate::guardian::HEARTBEAT_INTERVAL);
        let ts = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::from_borrowed_fd(
            self.worker.wake_fd(),
            PollFlags::IN,
        )];
        let _ = rustix::event::poll(&mut fds, Some(&ts));
        for outcome in self.worker.drain() {
            self.on_fs_outcome(outcome);
        }
    }

    pub(super) fn on_fs_outcome(&mut self, outcome: FsOutcome) {
        match outcome {
            FsOutcome::Checked { txn, result } => {
                self.queue.push_back(Event::FsChecked { txn, result });
                self.pump();
            }
            FsOutcome::Frozen {
                txn,
                epoch,
                result,
                report,
                nothing_frozen,
            } => {
                if let Some(r) = &report {
                    let timed_out: Vec<String> = r
                        .filesystems
                        .iter()
                        .filter(|f| f.outcome == hv_vss_freezer::FsFreezeOutcome::TimedOut)
                        .map(|f| f.mount_point.display().to_string())
                        .collect();
                    if !timed_out.is_empty() && !nothing_frozen {
                        self.urgent(
                            Urgent::FreezeDeadline,
                            &format!(
                                "FIFREEZE past its deadline on {} (txn {}); thawing as soon as it returns",
                                timed_out.join(", "),
                                txn.0
                            ),
                        );
                    }
                }
                if let Err(e) = &result {
                    if !nothing_frozen {
                        self.urgent(
                            Urgent::ThawFailing,
                            &format!(
                                "freeze failed and filesystems are still frozen (txn {}); retrying their thaw every {}s: {}",
                                txn.0,
                                THAW_RETRY_INTERVAL.as_secs(),
                                e.detail
                            ),
                        );
                    }
                }
                if let Some(r) = report {
                    self.freeze_reports.insert(txn, r);
                }
                if result.is_ok() && self.beat_after_stale_silence() {
                    // The guardian may have thawed while this loop was silent: this freeze
                    // is not the guardian's to guarantee any more. Fail it (the coordinator
                    // thaws and answers E_FAIL), as when the guardian is lost.
                    self.urgent(
                        Urgent::GuardianDied,
                        &format!(
                            "this daemon was stalled past the guardian's heartbeat bound while freezing (txn {}); the guardian may have thawed: failing this FREEZE and thawing",
                            txn.0
                        ),
                    );
                    self.queue.push_back(Event::GuardianDied);
                    self.pump();
                }
                if result.is_ok() {
                    // Frozen as asked: from here the daemon's own auto-thaw is the deadline.
                    let auto_thaw = match self.settings.limits.auto_thaw {
                        hv_vss_core::AutoThaw::After(d) => {
                            Some(d + crate::guardian::DEADLINE_GRACE)
                        }
                        hv_vss_core::AutoThaw::Disabled => None,
                    };
                    self.guardian_link.deadline(auto_thaw);
                }
                // Nothing frozen any more: say so before the coordinator acts on it, so the
                // hooks it may now tell `abort` find exec permitted.
                if nothing_frozen {
                    self.all_thawed(epoch);
                }
                self.queue.push_back(Event::FsFrozen { txn, result });
                self.pump();
            }
            FsOutcome::Thawed {
                txn,
                epoch,
                result,
                report,
                all_thawed,
            } => {
                if let (false, Err(e)) = (all_thawed, &result) {
                    self.urgent(
                        Urgent::ThawFailing,
                        &format!(
                            "thaw failed, filesystems still frozen (txn {}); retrying every {}s: {}",
                            txn.0,
                            THAW_RETRY_INTERVAL.as_secs(),
                            e.detail
                        ),
                    );
                }
                if let Some(r) = report {
                    self.thaw_reports.insert(txn, r);
                }
                // Before the coordinator tells participants `thaw` (hooks need exec).
                if all_thawed {
                    self.all_thawed(epoch);
                }
                self.queue.push_back(Event::FsThawed { txn, result });
                self.pump();
            }
            FsOutcome::ThawedOnItsOwn { epoch, cause } => {
                // While still frozen in our books: the kernel log hears of it.
                self.urgent(
                    Urgent::GuardianDied,
                    &format!(
                        "the freeze was undone without a THAW ({cause}); answering as on auto-thaw"
                    ),
                );
                tracing::error!(
                    cause = %cause,
                    "the filesystems were thawed without a THAW (this daemon was hung or stopped, or the hold passed its hard bound); answering as when the guardian thaws: E_FAIL"
                );
                self.all_thawed(epoch);
                self.queue.push_back(Event::GuardianDied);
                self.pump();
            }
            FsOutcome::RetryThawed { epoch, report } => {
                tracing::info!(
                    thaw_us = report.thaw_us,
                    "retried thaw completed: nothing of ours is frozen"
                );
                self.all_thawed(epoch);
            }
        }
    }

    /// The worker says nothing of ours is frozen as of `epoch`: unless a newer freeze was
    /// sent since, logs and files may be written again.
    pub(super) fn all_thawed(&mut self, epoch: Epoch) {
        let Some((written, dropped)) = self.safety.nothing_frozen(epoch) else {
            return;
        };
        self.apps.exec_permitted();
        if dropped > 0 {
            tracing::warn!(written, dropped, "log lines held while frozen were dropped");
        }
        self.flush_reports();
    }

    /// One kernel-log line for an urgent condition, only while something of ours is frozen
    /// (the held log is invisible until the last thaw, R61). Rate-limited per kind.
    pub(super) fn urgent(&mut self, kind: Urgent, text: &str) {
        if self.safety.is_frozen() {
            self.kmsg.urgent(kind, Instant::now(), text);
        }
    }

    /// The coordinator's notices that are urgent while frozen: a request deadline that ran
    /// out in a filesystem stage (a FIFREEZE or FITHAW that has not returned).
    pub(super) fn urgent_notice(&mut self, notice: &Notice) {
        let Notice::Failed {
            txn,
            failure: Failure::Deadline { stage, .. },
        } = notice
        else {
            return;
        };
        match stage {
            Stage::FreezeFs => self.urgent(
                Urgent::FreezeDeadline,
                &format!(
                    "FREEZE deadline ran out while FIFREEZE is still running (txn {}); answered E_FAIL, thawing",
                    txn.0
                ),
            ),
            Stage::ThawFs => self.urgent(
                Urgent::ThawFailing,
                &format!(
                    "THAW deadline ran out while FITHAW is still running (txn {}); filesystems may still be frozen",
                    txn.0
                ),
            ),
            _ => {}
        }
    }
}
