//! Keeping finished helper threads alive until a freeze is over.
//!
//! # Mechanism
//!
//! FIFREEZE on a filesystem that has not been frozen for a while spends most of its time in
//! the kernel's `rcu_sync_enter`, waiting for RCU grace periods (sampled kernel stacks,
//! docs/BENCHMARKS.md, daemon part 3). A thread's exit leaves work for RCU (its task is freed
//! after a grace period, and kernels built with `RCU_LAZY` batch such callbacks), and a
//! grace period waited for right after is longer: measured on this kind of machine, two
//! thread exits just before a FIFREEZE of a clean ext4 made it take ~8 ms longer (median
//! 31.7 → 40.1 ms, minimum 23.5 → 32.5 ms, 40 calls each, 100 ms apart).
//!
//! So the threads a freeze starts (a `syncfs` per filesystem, a FIFREEZE per filesystem)
//! and the flush ahead's threads do not exit while a FIFREEZE may still be running: once
//! their work is done they wait at an [`ExitGate`], which the freeze opens when it is over
//! (every way out, panics included, through [`OpenOnDrop`]). The wait is bounded
//! ([`MAX_HOLD`]) so that no thread lingers if a gate were never opened. A thread whose
//! call has not returned (a hung `syncfs` or FIFREEZE) is not held by anything here: it
//! exits when its call returns, the gate long open by then.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The longest a finished thread waits at a gate.
pub const MAX_HOLD: Duration = Duration::from_secs(10);

/// Closed until [`ExitGate::open`]; threads that finished wait at it with [`ExitGate::wait`].
#[derive(Debug, Clone, Default)]
pub struct ExitGate(Arc<(Mutex<bool>, Condvar)>);

impl ExitGate {
    /// A closed gate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets every waiting thread (and every later one) go.
    pub fn open(&self) {
        *self.0.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.0.1.notify_all();
    }

    /// Is it open?
    pub fn is_open(&self) -> bool {
        *self.0.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the gate is open, at most [`MAX_HOLD`].
    pub fn wait(&self) {
        let end = Instant::now() + MAX_HOLD;
        let mut open = self.0.0.lock().unwrap_or_else(|p| p.into_inner());
        while !*open {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            open = self
                .0
                .1
                .wait_timeout(open, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Opens its gate when dropped.
#[derive(Debug)]
pub struct OpenOnDrop(pub ExitGate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_go_when_the_gate_opens_and_not_before() {
        let gate = ExitGate::new();
        let waiter = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.wait())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "went through a closed gate");
        drop(OpenOnDrop(gate.clone()));
        waiter.join().unwrap();
        assert!(gate.is_open());
        // An open gate holds nobody.
        let t = Instant::now();
        gate.wait();
        assert!(t.elapsed() < MAX_HOLD);
    }
}
