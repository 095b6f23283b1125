//! BU_COMPLETE closes the backup report (wire-protocol.md §6.4, UIO mode; R72).
//!
//! # Mechanism
//!
//! In UIO mode the IC endpoint answers the host's BU_COMPLETE itself (S_OK) and tells the
//! daemon; the coordinator never sees it. After a backup transaction (a FREEZE and what
//! ended it) the host normally sends BU_COMPLETE once its side of the backup is done. In
//! drop-in mode the kernel answers BU_COMPLETE and the daemon never learns of it, so
//! nothing is waited for there and `host_completion` stays `null`.
//!
//! [`CompletionWait`] is sans-IO: the daemon hands it every finished history entry and
//! the events that end a wait, and writes whatever entries it returns, in order.
//!
//! # Design: hold the entry, append it once
//!
//! After the last thaw, a backup's history entry is held in memory until the first of:
//! BU_COMPLETE (`completed: true`), the host's next HOT_BACKUP or FREEZE, [`BU_COMPLETE_WAIT`]
//! after the transaction ended, transport loss, or shutdown (`completed: false`, with what
//! closed it). Then it is appended once, with `host_completion` set.
//!
//! The alternative, appending at thaw and a small follow-up record at BU_COMPLETE, was
//! rejected: readers would have to join two kinds of line by transaction; in a history
//! bounded by line count a follow-up can outlive the report it refers to, and every backup
//! would cost two of the `history_limit` slots. Holding keeps one self-contained line per
//! transaction, append-only, bounded as before.
//!
//! It never writes while frozen: entries are only made after the last thaw, and the daemon
//! writes what this returns only while nothing of ours is frozen (it keeps them otherwise).
//! A HOT_BACKUP or FREEZE ends the wait before the coordinator sees it, so a following
//! freeze never overlaps a pending write.
//!
//! # Limitations
//!
//! - The history line of a backup appears when the wait ends, not at the thaw. The
//!   "transaction report" log line still goes out at the thaw.
//! - A daemon killed (SIGKILL) during the wait loses that history line (the log line
//!   stays). SIGTERM appends it (`closed_by: shutdown`).
//! - A BU_COMPLETE later than [`BU_COMPLETE_WAIT`] is logged but no longer recorded.

use std::time::Duration;

use hv_vss_core::report::{CompletionEnd, HostCompletion, TxnKind};
use hv_vss_core::{Millis, TxnId};

use crate::history::HistoryEntry;

/// How long after a backup ended its entry waits for BU_COMPLETE.
pub const BU_COMPLETE_WAIT: Duration = Duration::from_secs(300);

/// What a BU_COMPLETE did.
#[derive(Debug)]
pub enum BuComplete {
    /// It closed the waiting backup: append this entry.
    Closed(Box<HistoryEntry>),
    /// It came for backup `txn`, whose entry is not made yet (its thaw was still being
    /// retried): remembered for it.
    Noted(TxnId),
    /// No backup was waiting for it.
    Stray,
}

/// The backup entry waiting for BU_COMPLETE, if any.
#[derive(Debug)]
pub struct CompletionWait {
    /// Whether BU_COMPLETE can reach the daemon at all (UIO mode).
    enabled: bool,
    wait: Duration,
    waiting: Option<Box<HistoryEntry>>,
    /// A BU_COMPLETE that came for a backup whose entry was not made yet.
    early: Option<(TxnId, Millis)>,
}

impl CompletionWait {
    /// `enabled`: BU_COMPLETE reaches the daemon (UIO mode). Disabled, every entry is
    /// returned at once with `host_completion: None`.
    pub fn new(enabled: bool, wait: Duration) -> Self {
        Self {
            enabled,
            wait,
            waiting: None,
            early: None,
        }
    }

    /// A finished transaction's entry (made after the last thaw): the entries to append
    /// now, in order. A backup's is held (UIO mode); anything waiting before it is closed
    /// first (`NextRequest`: the host went on without BU_COMPLETE).
    pub fn finished(&mut self, mut entry: HistoryEntry, now: Millis) -> Vec<HistoryEntry> {
        let mut out: Vec<HistoryEntry> = self
            .close(CompletionEnd::NextRequest, now)
            .into_iter()
            .collect();
        let early = self.early.take();
        if !self.enabled || entry.report.kind != TxnKind::Backup {
            out.push(entry);
            return out;
        }
        match early {
            Some((txn, at)) if txn == entry.report.txn => {
                entry.host_completion = Some(HostCompletion::new(
                    CompletionEnd::BuComplete,
                    at.since(entry.report.ended_at),
                ));
                out.push(entry);
            }
            _ => self.waiting = Some(Box::new(entry)),
        }
        out
    }

    /// BU_COMPLETE arrived at `now`. `unstored_backup`: the latest backup whose transaction
    /// ended but whose entry is not made yet (a thaw still being retried), which it is for.
    pub fn bu_complete(&mut self, now: Millis, unstored_backup: Option<TxnId>) -> BuComplete {
        if let Some(txn) = unstored_backup {
            self.early = Some((txn, now));
            return BuComplete::Noted(txn);
        }
        match self.close(CompletionEnd::BuComplete, now) {
            Some(entry) => BuComplete::Closed(Box::new(entry)),
            None => BuComplete::Stray,
        }
    }

    /// Ends the wait for `end` (next request, transport loss, shutdown): the entry to
    /// append, if one was waiting.
    pub fn close(&mut self, end: CompletionEnd, now: Millis) -> Option<HistoryEntry> {
        let mut entry = *self.waiting.take()?;
        entry.host_completion = Some(HostCompletion::new(end, now.since(entry.report.ended_at)));
        Some(entry)
    }

    /// When the waiting entry times out.
    pub fn deadline(&self) -> Option<Millis> {
        self.waiting
            .as_ref()
            .map(|e| e.report.ended_at.after(self.wait))
    }

    /// Closes the wait if its deadline has passed.
    pub fn expire(&mut self, now: Millis) -> Option<HistoryEntry> {
        if self.deadline().is_some_and(|d| d <= now) {
            self.close(CompletionEnd::Timeout, now)
        } else {
            None
        }
    }

    /// The backup waiting for BU_COMPLETE.
    #[cfg(test)]
    pub fn waiting_txn(&self) -> Option<TxnId> {
        self.waiting.as_ref().map(|e| e.report.txn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hv_vss_core::{TxnReport, Verdict};

    fn entry(txn: u64, kind: TxnKind, ended_at: u64) -> HistoryEntry {
        HistoryEntry {
            unix_ms: 1,
            report: TxnReport {
                txn: TxnId(txn),
                kind,
                started_at: Millis(0),
                ended_at: Millis(ended_at),
                requests: Vec::new(),
                participants: Vec::new(),
                fs: Vec::new(),
                frozen_window: None,
                failures: Vec::new(),
                verdict: Verdict::FsConsistent,
                repeated_freezes_not_listed: 0,
            },
            freeze: None,
            thaw: None,
            host_completion: None,
        }
    }

    fn wait() -> CompletionWait {
        CompletionWait::new(true, Duration::from_secs(300))
    }

    fn txns(entries: &[HistoryEntry]) -> Vec<u64> {
        entries.iter().map(|e| e.report.txn.0).collect()
    }

    #[test]
    fn a_backup_waits_for_bu_complete_and_is_then_completed() {
        let mut w = wait();
        assert!(
            w.finished(entry(1, TxnKind::Backup, 100), Millis(100))
                .is_empty()
        );
        assert_eq!(w.waiting_txn(), Some(TxnId(1)));
        assert_eq!(w.deadline(), Some(Millis(300_100)));
        let BuComplete::Closed(e) = w.bu_complete(Millis(130), None) else {
            panic!("BU_COMPLETE did not close the waiting backup");
        };
        assert_eq!(
            e.host_completion,
            Some(HostCompletion::new(CompletionEnd::BuComplete, 30))
        );
        assert!(e.host_completion.unwrap().completed);
        assert!(matches!(
            w.bu_complete(Millis(140), None),
            BuComplete::Stray
        ));
        assert_eq!(w.deadline(), None);
    }

    #[test]
    fn checks_are_never_held_and_close_nothing_by_themselves() {
        let mut w = wait();
        let out = w.finished(entry(1, TxnKind::Check, 5), Millis(5));
        assert_eq!(txns(&out), vec![1]);
        assert_eq!(out[0].host_completion, None);
    }

    #[test]
    fn the_next_transaction_closes_a_backup_as_not_completed() {
        let mut w = wait();
        assert!(
            w.finished(entry(1, TxnKind::Backup, 100), Millis(100))
                .is_empty()
        );
        // The daemon closes it when the next HOT_BACKUP arrives...
        let e = w.close(CompletionEnd::NextRequest, Millis(150)).unwrap();
        assert_eq!(
            e.host_completion,
            Some(HostCompletion::new(CompletionEnd::NextRequest, 50))
        );
        // ...and a report finishing while one still waits closes it first, in order.
        assert!(
            w.finished(entry(2, TxnKind::Backup, 200), Millis(200))
                .is_empty()
        );
        let out = w.finished(entry(3, TxnKind::Check, 210), Millis(210));
        assert_eq!(txns(&out), vec![2, 3]);
        assert!(!out[0].host_completion.unwrap().completed);
    }

    #[test]
    fn the_wait_times_out() {
        let mut w = CompletionWait::new(true, Duration::from_millis(1000));
        assert!(
            w.finished(entry(1, TxnKind::Backup, 100), Millis(100))
                .is_empty()
        );
        assert!(w.expire(Millis(1099)).is_none());
        let e = w.expire(Millis(1100)).unwrap();
        assert_eq!(
            e.host_completion,
            Some(HostCompletion::new(CompletionEnd::Timeout, 1000))
        );
        assert!(w.expire(Millis(5000)).is_none());
    }

    #[test]
    fn drop_in_mode_appends_every_entry_at_once_without_a_completion() {
        let mut w = CompletionWait::new(false, BU_COMPLETE_WAIT);
        let out = w.finished(entry(1, TxnKind::Backup, 100), Millis(100));
        assert_eq!(txns(&out), vec![1]);
        assert_eq!(out[0].host_completion, None);
        assert_eq!(w.deadline(), None);
    }

    /// A thaw being retried keeps the report from being made; a BU_COMPLETE in between is
    /// kept for that backup, and only for it.
    #[test]
    fn a_bu_complete_before_the_entry_is_made_is_kept_for_that_backup() {
        let mut w = wait();
        assert!(matches!(
            w.bu_complete(Millis(120), Some(TxnId(4))),
            BuComplete::Noted(TxnId(4))
        ));
        let out = w.finished(entry(4, TxnKind::Backup, 100), Millis(2000));
        assert_eq!(txns(&out), vec![4]);
        assert_eq!(
            out[0].host_completion,
            Some(HostCompletion::new(CompletionEnd::BuComplete, 20))
        );
        // Noted for another transaction: not applied.
        w.bu_complete(Millis(3000), Some(TxnId(5)));
        assert!(
            w.finished(entry(6, TxnKind::Backup, 3100), Millis(3100))
                .is_empty()
        );
        assert_eq!(w.waiting_txn(), Some(TxnId(6)));
    }

    #[test]
    fn shutdown_and_transport_loss_close_the_wait() {
        for end in [CompletionEnd::Shutdown, CompletionEnd::TransportLost] {
            let mut w = wait();
            assert!(
                w.finished(entry(1, TxnKind::Backup, 0), Millis(0))
                    .is_empty()
            );
            let e = w.close(end, Millis(7)).unwrap();
            assert_eq!(e.host_completion.unwrap().closed_by, end);
            assert!(w.close(end, Millis(8)).is_none());
        }
    }
}
