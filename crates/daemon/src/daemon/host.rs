//! The host's side of the loop: requests read from the transport (each given a
//! [`RequestId`] and remembered with the transport generation it came on), replies written
//! back, and unknown operations logged at a bounded rate (R71).

use std::time::{Duration, Instant};

use hv_vss_core::report::CompletionEnd;
use hv_vss_core::{Event, HostOp, RequestId, Status};

use super::Daemon;
use super::reopen::REOPEN_LOG_INTERVAL;
use crate::transport::{Delivery, Incoming};

/// At most one "unknown operation" line per this interval (host-triggerable, R71).
const REFUSED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// While frozen, at most one per-request line ("host request", "answered") per this
/// interval: they go to the bounded held ring, and 10,000 FREEZEs while frozen must not
/// push out the lines that matter there (an auto-thaw, a lost transport). The count of
/// the ones left out is logged with the next line.
const REQUEST_LINES_WHILE_FROZEN_INTERVAL: Duration = Duration::from_secs(10);

impl Daemon {
    /// Whether a per-request line may be logged now: always when nothing is frozen, at a
    /// bounded rate while frozen; `Some(lines left out before it)`.
    fn request_line_allowed(&mut self) -> Option<u64> {
        if self.safety.is_frozen() {
            self.request_lines_while_frozen
                .allow(Instant::now(), REQUEST_LINES_WHILE_FROZEN_INTERVAL)
        } else {
            Some(std::mem::take(&mut self.request_lines_while_frozen).suppressed())
        }
    }
}

impl Daemon {
    pub(super) fn reply(&mut self, request: RequestId, status: Status) {
        let Some((generation, key, op)) = self.pending.remove(&request) else {
            tracing::error!(request = request.0, "reply for an unknown request");
            return;
        };
        let result = match self.transport.as_mut() {
            Some(t) if generation == self.generation => t.reply(key, status),
            _ => {
                tracing::warn!(request = request.0, op = ?op, "reply dropped: transport was reopened");
                return;
            }
        };
        match result {
            Ok(Delivery::Sent) => {
                if let Some(suppressed) = self.request_line_allowed() {
                    tracing::info!(request = request.0, op = ?op, status = ?status, suppressed, "answered")
                }
            }
            Ok(Delivery::Queued) => tracing::info!(
                request = request.0,
                op = ?op,
                status = ?status,
                "reply queued: the ring to the host is full; sent when it makes room"
            ),
            Err(e) => {
                tracing::warn!(request = request.0, op = ?op, error = %e, "reply failed");
                if e.requires_reopen() {
                    self.lose_transport();
                }
            }
        }
    }

    pub(super) fn on_transport_readable(&mut self) {
        let Some(transport) = self.transport.as_mut() else {
            return;
        };
        let incoming = match transport.recv() {
            Ok(incoming) => incoming,
            Err(e) => {
                if let Some(suppressed) = self.lost_log.allow(Instant::now(), REOPEN_LOG_INTERVAL) {
                    tracing::warn!(error = %e, suppressed, "VSS transport failed; thawing, then reopening");
                }
                if e.requires_reopen() {
                    self.lose_transport();
                }
                return;
            }
        };
        for item in incoming {
            match item {
                Incoming::Request { key, op } => {
                    self.reopen_backoff.proved();
                    if matches!(op, HostOp::Check | HostOp::Freeze) {
                        // A new transaction: the host went on without BU_COMPLETE. Stored
                        // now, before a FREEZE can hold the files (R60).
                        self.close_completion(CompletionEnd::NextRequest);
                        self.flush_reports();
                    }
                    let request = RequestId(self.next_request);
                    self.next_request += 1;
                    self.pending.insert(request, (self.generation, key, op));
                    if let Some(suppressed) = self.request_line_allowed() {
                        tracing::debug!(request = request.0, op = ?op, suppressed, "host request");
                    }
                    self.queue.push_back(Event::HostRequest { request, op });
                }
                Incoming::Refused { op, status } => self.log_refused(op, status),
                Incoming::BackupComplete { trans_id } => self.on_bu_complete(trans_id),
            }
        }
    }

    pub(super) fn log_refused(&mut self, raw: u32, status: Option<u32>) {
        let now = Instant::now();
        let due = self
            .refused_logged_at
            .is_none_or(|t| now.duration_since(t) >= REFUSED_LOG_INTERVAL);
        if due {
            tracing::warn!(
                op = raw,
                status,
                suppressed = self.refused_suppressed,
                "unknown VSS operation answered E_FAIL"
            );
            self.refused_logged_at = Some(now);
            self.refused_suppressed = 0;
        } else {
            self.refused_suppressed += 1;
        }
    }
}
