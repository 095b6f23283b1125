//! Transaction reports waiting for the thaw: while frozen nothing is logged or stored
//! (R60), so reports queue here. The host drives how many transactions end while frozen
//! (a THAW or HOT_BACKUP per request), so the queue is bounded: past
//! [`MAX_DEFERRED_REPORTS`] the oldest report is dropped and counted, and the count is
//! logged once it may be.

use std::collections::VecDeque;

/// The most reports kept waiting for the thaw. A real backup ends one or two transactions
/// while frozen; more means a host repeating requests.
pub(super) const MAX_DEFERRED_REPORTS: usize = 64;

/// Reports waiting to be logged and stored, oldest first, with the count of those dropped.
#[derive(Debug)]
pub(super) struct DeferredReports<T> {
    reports: VecDeque<T>,
    dropped: u64,
}

impl<T> Default for DeferredReports<T> {
    fn default() -> Self {
        Self {
            reports: VecDeque::new(),
            dropped: 0,
        }
    }
}

impl<T> DeferredReports<T> {
    /// Queues `report`, dropping the oldest when full.
    pub(super) fn push(&mut self, report: T) {
        if self.reports.len() >= MAX_DEFERRED_REPORTS {
            self.reports.pop_front();
            self.dropped += 1;
        }
        self.reports.push_back(report);
    }

    /// Every queued report, oldest first, and how many were dropped since the last take.
    pub(super) fn take(&mut self) -> (Vec<T>, u64) {
        (
            self.reports.drain(..).collect(),
            std::mem::take(&mut self.dropped),
        )
    }

    pub(super) fn iter(&self) -> impl DoubleEndedIterator<Item = &T> {
        self.reports.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_keeps_the_newest_reports_and_counts_the_dropped_ones() {
        let mut q = DeferredReports::default();
        for i in 0..MAX_DEFERRED_REPORTS + 10 {
            q.push(i);
        }
        let (kept, dropped) = q.take();
        assert_eq!(dropped, 10);
        assert_eq!(kept.len(), MAX_DEFERRED_REPORTS);
        assert_eq!(kept.first(), Some(&10));
        assert_eq!(kept.last(), Some(&(MAX_DEFERRED_REPORTS + 9)));
        q.push(1);
        assert_eq!(q.take(), (vec![1], 0), "the count starts again");
    }
}
