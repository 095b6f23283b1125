//! Transaction reports: logged and appended to the history only once nothing is frozen
//! (R60, R72); in UIO mode a backup's entry first waits for the host's BU_COMPLETE
//! ([`crate::completion`]). Also the log lines for the coordinator's notices.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hv_vss_core::Notice;
use hv_vss_core::report::{CompletionEnd, TxnKind};

use super::Daemon;
use crate::completion::BuComplete;
use crate::history::HistoryEntry;

/// At most one "FREEZE while frozen" line per this interval (host-triggerable, R71: while
/// frozen the lines go to the bounded held ring, where a flood would push out the ones
/// that matter, such as an auto-thaw).
const ALREADY_FROZEN_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// At most one line per this interval about a BU_COMPLETE no backup waited for
/// (host-triggerable, R71).
const STRAY_BU_COMPLETE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// While frozen, at most one "request refused" line per this interval (host-triggerable,
/// R71).
const REFUSED_WHILE_FROZEN_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Daemon {
    /// A FREEZE-while-frozen notice, logged at most once per interval with the count of
    /// the ones not logged.
    pub(super) fn log_already_frozen(&mut self, notice: &Notice) {
        let Notice::AlreadyFrozen { request, txn } = notice else {
            return;
        };
        if let Some(suppressed) = self
            .already_frozen_log
            .allow(Instant::now(), ALREADY_FROZEN_LOG_INTERVAL)
        {
            tracing::info!(
                request = request.0,
                txn = txn.0,
                suppressed,
                "FREEZE while frozen: S_OK, staying frozen"
            );
        }
    }

    /// A request the coordinator refused: logged each time while nothing is frozen, at a bounded rate while
    /// frozen (the lines go to the held ring, which a host repeating HOT_BACKUP must not
    /// fill), with the count of the ones not logged.
    pub(super) fn log_request_refused(&mut self, notice: &Notice) {
        let Notice::Refused {
            request,
            op,
            reason,
        } = notice
        else {
            return;
        };
        let allowed = if self.safety.is_frozen() {
            self.refused_while_frozen_log
                .allow(Instant::now(), REFUSED_WHILE_FROZEN_LOG_INTERVAL)
        } else {
            Some(std::mem::take(&mut self.refused_while_frozen_log).suppressed())
        };
        if let Some(suppressed) = allowed {
            tracing::warn!(request = request.0, op = ?op, reason = ?reason, suppressed, "request refused with E_FAIL");
        }
    }

    /// Logs every finished report and stores what is ready, once nothing is frozen (R60,
    /// R72). In UIO mode a backup's entry waits for BU_COMPLETE first ([`CompletionWait`](crate::completion::CompletionWait)).
    pub(super) fn flush_reports(&mut self) {
        if self.safety.is_frozen() {
            return;
        }
        let (reports, dropped) = self.deferred_reports.take();
        if dropped > 0 {
            tracing::warn!(
                dropped,
                kept = reports.len(),
                "transaction reports dropped while frozen: more ended than are kept"
            );
        }
        for report in reports {
            let freeze = self.freeze_reports.remove(&report.txn);
            let thaw = self.thaw_reports.remove(&report.txn);
            let frozen_ms = report.frozen_window.map(|w| w.duration_ms());
            tracing::info!(
                txn = report.txn.0,
                kind = ?report.kind,
                verdict = ?report.verdict,
                frozen_ms,
                elapsed_ms = report.ended_at.since(report.started_at),
                filesystems = freeze.as_ref().map(|f| f.filesystems.len()),
                "transaction report"
            );
            if let Some(hv_vss_freezer::Expedite::Unavailable { reason }) =
                freeze.as_ref().map(|f| &f.expedite)
            {
                tracing::warn!(
                    txn = report.txn.0,
                    %reason,
                    "expedited RCU grace periods could not be used: the FIFREEZE calls waited for normal ones (freezer.expedite_grace_periods = false stops trying)"
                );
            }
            let unix_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let entry = HistoryEntry {
                unix_ms,
                report,
                freeze,
                thaw,
                host_completion: None,
            };
            let ready = self.completion.finished(entry, self.now());
            self.ready_entries.extend(ready);
        }
        let appended = !self.ready_entries.is_empty();
        for entry in std::mem::take(&mut self.ready_entries) {
            if let Err(e) = self.history.append(&entry) {
                tracing::warn!(error = %e, path = %self.history.path().display(), "cannot append the report history");
            }
        }
        if let Some(textfile) = self.settings.metrics_textfile.as_ref().filter(|_| appended) {
            let live = hv_vss_history::metrics::Live {
                up: true,
                connected_apps: Some(self.coord.participants().count() as u64),
                log_lines_dropped: Some(self.safety.log_lines_dropped()),
            };
            if let Err(e) = crate::metrics::write_textfile(textfile, self.history.path(), live) {
                tracing::warn!(error = %e, path = %textfile.display(), "cannot write the metrics textfile");
            }
        }
        // Reports of transactions that never produced a coordinator report do not linger.
        if self.freeze_reports.len() > 16 {
            self.freeze_reports.clear();
        }
        if self.thaw_reports.len() > 16 {
            self.thaw_reports.clear();
        }
    }

    /// Ends the wait for BU_COMPLETE for `end`; the entry is stored by the next
    /// [`Self::flush_reports`] that finds nothing frozen.
    pub(super) fn close_completion(&mut self, end: CompletionEnd) {
        if let Some(entry) = self.completion.close(end, self.now()) {
            tracing::info!(
                txn = entry.report.txn.0,
                closed_by = ?end,
                "backup report stored without BU_COMPLETE from the host"
            );
            self.ready_entries.push(entry);
        }
    }

    /// BU_COMPLETE (already answered S_OK by the endpoint, R62): closes the latest backup's
    /// report.
    pub(super) fn on_bu_complete(&mut self, trans_id: u64) {
        let unstored = self
            .deferred_reports
            .iter()
            .rev()
            .find(|r| r.kind == TxnKind::Backup)
            .map(|r| r.txn);
        match self.completion.bu_complete(self.now(), unstored) {
            BuComplete::Closed(entry) => {
                tracing::info!(
                    trans_id,
                    txn = entry.report.txn.0,
                    after_ms = entry.host_completion.map(|c| c.after_ms),
                    "BU_COMPLETE from the host (answered S_OK): backup completed"
                );
                self.ready_entries.push(*entry);
            }
            BuComplete::Noted(txn) => tracing::info!(
                trans_id,
                txn = txn.0,
                "BU_COMPLETE from the host (answered S_OK): backup completed; its report follows the thaw"
            ),
            BuComplete::Stray => {
                if let Some(suppressed) = self
                    .stray_bu_complete_log
                    .allow(Instant::now(), STRAY_BU_COMPLETE_LOG_INTERVAL)
                {
                    tracing::info!(
                        trans_id,
                        suppressed,
                        "BU_COMPLETE from the host (answered S_OK) with no backup report waiting for it"
                    );
                }
            }
        }
    }
}

pub(super) fn log_notice(notice: &Notice) {
    match notice {
        Notice::Refused { .. } => {
            // Host-triggerable at any rate: logged by `Daemon::log_request_refused`, limited while
            // frozen.
        }
        Notice::AlreadyFrozen { .. } => {
            // Host-triggerable at any rate: logged by `Daemon::log_already_frozen`, limited.
        }
        Notice::ThawWithoutFreeze { request } => {
            tracing::info!(request = request.0, "THAW with nothing frozen: S_OK")
        }
        Notice::ThawAfterAutoThaw { request, txn } => tracing::warn!(
            request = request.0,
            txn = txn.0,
            "THAW after an auto-thaw: E_FAIL, the snapshot may not be consistent"
        ),
        Notice::Failed { txn, failure } => {
            tracing::warn!(txn = txn.0, failure = ?failure, "transaction failed")
        }
        Notice::AutoThawed {
            txn,
            cause,
            frozen_ms,
        } => tracing::error!(
            txn = txn.0,
            cause = ?cause,
            frozen_ms,
            "AUTO-THAW: filesystems thawed without a THAW from the host; the next THAW gets E_FAIL"
        ),
    }
}
