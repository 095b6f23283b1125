//! The guardian's FITHAWs, each bounded: one filesystem whose FITHAW blocks does not keep
//! the guardian from thawing the others.
//!
//! # Kernel contract
//!
//! FITHAW can block as long as the storage under the filesystem does: ext4 commits its
//! superblock on thaw, so a loop-backed filesystem whose image lies on a frozen filesystem
//! stays frozen, its FITHAW blocked, until that one is thawed. A blocked call cannot be
//! cancelled, and a process cannot finish exiting while one of its threads is in one.
//!
//! # Mechanism
//!
//! The fds due for thawing (see [`super::process`] for which) are handed, last armed
//! first, each to a FITHAW on a thread of its own ([`BoundedCall`], the same bound as
//! start-up recovery and `hv-vss thaw --recover` give each filesystem), all started at
//! once; then the guardian waits up to [`THAW_DEADLINE`] for them together. A call that
//! misses it is reported and kept as *late*: the guardian goes on with everything else,
//! keeps the filesystem listed in the journal, and picks up the call's result when it
//! returns (it thaws then, once whatever blocked it is gone). Should no thread be startable,
//! the FITHAW is made inline, unbounded: thawing comes before the bound.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hv_vss_freezer::{BoundedCall, DevNum, Waited};
use hv_vss_sys::fs::ThawError;

/// How long the guardian waits for the FITHAWs it started before reporting the ones that
/// have not returned and going on without them.
pub const THAW_DEADLINE: Duration = hv_vss_freezer::DEFAULT_RECOVER_THAW_DEADLINE;

/// One fd the daemon handed over.
#[derive(Debug)]
pub struct Held {
    pub dev: DevNum,
    pub fd: OwnedFd,
    /// Its FIFREEZE returned success; until then it may still be in flight.
    pub confirmed: bool,
}

/// A FITHAW that missed [`THAW_DEADLINE`] and still runs on its thread.
#[derive(Debug)]
struct LateThaw {
    dev: DevNum,
    call: BoundedCall<Result<(), ThawError>>,
    started: Instant,
}

/// What the guardian's FITHAWs did so far.
#[derive(Debug, Default)]
pub struct Thaws {
    /// Thawed, or found not frozen.
    pub thawed: Vec<DevNum>,
    /// FITHAW failed: may still be frozen.
    pub failed: Vec<DevNum>,
    late: Vec<LateThaw>,
}

impl Thaws {
    /// FITHAW on every fd of `held` that is confirmed, or on all of them when `settled`
    /// (no FIFREEZE can still be running), last armed first, each on its own thread;
    /// waits up to [`THAW_DEADLINE`] for those calls. They are taken off `held`. True if
    /// any call was made.
    pub fn start(&mut self, held: &mut Vec<Held>, settled: bool) -> bool {
        let mut waiting = Vec::new();
        let mut calls = Vec::new();
        while let Some(h) = held.pop() {
            if !h.confirmed && !settled {
                waiting.push(h);
                continue;
            }
            let fd = Arc::new(h.fd);
            let thread_fd = Arc::clone(&fd);
            match BoundedCall::spawn("hv-vss-guard-thaw", move || {
                hv_vss_sys::fs::thaw(thread_fd.as_fd())
            }) {
                Ok(call) => calls.push((h.dev, call)),
                Err(e) => {
                    tracing::warn!(dev = %h.dev, error = %e, "guardian: no thread for a bounded FITHAW; thawing inline");
                    self.settle(h.dev, hv_vss_sys::fs::thaw(fd.as_fd()));
                }
            }
        }
        waiting.reverse();
        *held = waiting;
        if calls.is_empty() {
            return false;
        }
        let started = Instant::now();
        let deadline = started + THAW_DEADLINE;
        let mut late = Vec::new();
        for (dev, call) in calls {
            match call.wait_until(deadline) {
                Waited::Returned(result) => self.settle(dev, result),
                Waited::Lost => self.lost(dev),
                Waited::Pending => late.push(LateThaw { dev, call, started }),
            }
        }
        // Reported once the others are thawed (stderr may lead to a frozen filesystem).
        for late in &late {
            tracing::error!(
                dev = %late.dev,
                deadline_ms = THAW_DEADLINE.as_millis() as u64,
                "guardian: FITHAW did not return within its deadline (the storage under the filesystem is blocked?); the other filesystems are thawed, this one stays listed and is thawed when the call returns"
            );
        }
        self.late.extend(late);
        true
    }

    /// Takes in the late FITHAWs that have returned. True if any did.
    pub fn collect_late(&mut self) -> bool {
        let before = self.late.len();
        let mut still = Vec::new();
        for late in std::mem::take(&mut self.late) {
            match late.call.poll() {
                Waited::Pending => still.push(late),
                Waited::Returned(result) => {
                    let ok = matches!(result, Ok(()) | Err(ThawError::NotFrozen));
                    tracing::warn!(
                        dev = %late.dev,
                        after_ms = late.started.elapsed().as_millis() as u64,
                        thawed = ok,
                        "guardian: a late FITHAW returned"
                    );
                    self.settle(late.dev, result);
                }
                Waited::Lost => self.lost(late.dev),
            }
        }
        self.late = still;
        self.late.len() != before
    }

    /// A FITHAW is still running.
    pub fn any_late(&self) -> bool {
        !self.late.is_empty()
    }

    /// What may still be frozen: failed, late, or `held` (not thawed yet).
    pub fn not_thawed(&self, held: &[Held]) -> Vec<DevNum> {
        self.failed
            .iter()
            .copied()
            .chain(self.late.iter().map(|l| l.dev))
            .chain(held.iter().map(|h| h.dev))
            .collect()
    }

    fn settle(&mut self, dev: DevNum, result: Result<(), ThawError>) {
        match result {
            Ok(()) | Err(ThawError::NotFrozen) => self.thawed.push(dev),
            Err(e) => {
                tracing::error!(dev = %dev, error = %e, "guardian: FITHAW failed");
                self.failed.push(dev);
            }
        }
    }

    fn lost(&mut self, dev: DevNum) {
        tracing::error!(dev = %dev, "guardian: the FITHAW thread ended without a result");
        self.failed.push(dev);
    }
}
