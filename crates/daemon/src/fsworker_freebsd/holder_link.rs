//! What the main loop and the FreeBSD worker share about the holder child: the way to send
//! it heartbeats, and the deadline by which it must have resumed on its own.
//!
//! The main loop writes a heartbeat every [`HEARTBEAT_INTERVAL`](hv_vss_freezer::holder_process::HEARTBEAT_INTERVAL)
//! through [`HolderLink::heartbeat`] (`guardian_freebsd.rs` forwards the Linux guardian's
//! heartbeat here), so a hung or stopped loop is what the child notices, as the guardian
//! does on Linux; the worker thread only registers the child it started. The deadline is
//! the one the loop gives the Linux guardian before each FREEZE (the FREEZE deadline, the
//! auto-thaw and a grace); the worker passes what is left of it to the child as its hard
//! bound ([`hv_vss_freezer::holder_process::HoldBounds`]).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hv_vss_freezer::holder_process::HeartbeatSender;

/// Shared by the main loop (through the guardian link) and the worker; cloning shares.
#[derive(Debug, Clone, Default)]
pub struct HolderLink {
    inner: Arc<Mutex<Shared>>,
}

#[derive(Debug, Default)]
struct Shared {
    holder: Option<HeartbeatSender>,
    /// `None`: no hard bound (auto-thaw disabled).
    deadline: Option<Instant>,
}

impl HolderLink {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The loop is alive: tells the holder, if one holds (never blocks).
    pub fn heartbeat(&self) {
        if let Some(holder) = &self.lock().holder {
            let _ = holder.beat();
        }
    }

    /// A holder started from now on must resume on its own `after` from now (`None`: no
    /// bound beyond the heartbeat).
    pub fn set_deadline(&self, after: Option<Duration>) {
        self.lock().deadline = after.and_then(|a| Instant::now().checked_add(a));
    }

    /// What is left of the deadline, for a holder starting now.
    pub fn hold_limit(&self) -> Option<Duration> {
        self.lock()
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// From now on heartbeats go to `holder` (`None`: nothing is held).
    pub fn holding(&self, holder: Option<HeartbeatSender>) {
        self.lock().holder = holder;
    }
}
