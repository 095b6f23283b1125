//! A call made on a thread of its own and waited for up to a deadline, so that one system
//! call that blocks cannot hang its caller: recovery ([`crate::recover`]), the sweep
//! ([`crate::thaw_all_frozen`]) and the daemon's guardian bound each FITHAW this way.
//!
//! # Kernel contract
//!
//! FITHAW can block for as long as something below the filesystem does: `thaw_super`
//! writes the superblock on some filesystems (ext4 commits it), so a loop-backed
//! filesystem whose image lies on a frozen filesystem cannot finish thawing until that one
//! is thawed; and a FITHAW waits while a FIFREEZE of the same superblock is in progress.
//! A thread blocked in such a call cannot be cancelled, and its process cannot finish
//! exiting until the call returns (uninterruptible sleep).
//!
//! # Mechanism
//!
//! The call runs on a new named thread and sends its result over a one-slot channel. The
//! caller waits on the channel up to its deadline ([`BoundedCall::wait`]); a call that
//! misses it ([`Waited::Pending`]) is left to its thread, and the caller either drops the
//! handle (the result is then discarded when the call returns) or keeps it and looks again
//! later ([`BoundedCall::poll`]) to learn how the late call ended.

use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A call running on its own thread; see the module docs.
#[derive(Debug)]
pub struct BoundedCall<T> {
    result: mpsc::Receiver<T>,
}

/// How a [`BoundedCall`] stands after a wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waited<T> {
    /// The call returned this (handed out once: later waits say [`Waited::Lost`]).
    Returned(T),
    /// Still running.
    Pending,
    /// Its thread ended without a result (it panicked), or the result was taken already.
    Lost,
}

impl<T: Send + 'static> BoundedCall<T> {
    /// Starts `call` on a new thread named `name`. Fails only if no thread can be started
    /// (`call` is then dropped without being run).
    pub fn spawn(name: &str, call: impl FnOnce() -> T + Send + 'static) -> std::io::Result<Self> {
        let (tx, result) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let _ = tx.send(call());
            })?;
        Ok(Self { result })
    }

    /// Waits up to `timeout` for the result.
    pub fn wait(&self, timeout: Duration) -> Waited<T> {
        match self.result.recv_timeout(timeout) {
            Ok(v) => Waited::Returned(v),
            Err(mpsc::RecvTimeoutError::Timeout) => Waited::Pending,
            Err(mpsc::RecvTimeoutError::Disconnected) => Waited::Lost,
        }
    }

    /// Waits until `deadline` (not at all if it has passed) for the result.
    pub fn wait_until(&self, deadline: Instant) -> Waited<T> {
        self.wait(deadline.saturating_duration_since(Instant::now()))
    }

    /// The result if the call has returned, without waiting.
    pub fn poll(&self) -> Waited<T> {
        match self.result.try_recv() {
            Ok(v) => Waited::Returned(v),
            Err(mpsc::TryRecvError::Empty) => Waited::Pending,
            Err(mpsc::TryRecvError::Disconnected) => Waited::Lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_call_returns_its_result() {
        let call = BoundedCall::spawn("t-prompt", || 7).unwrap();
        assert_eq!(call.wait(Duration::from_secs(5)), Waited::Returned(7));
        // Handed out once: afterwards Pending (the thread has not yet dropped its sender)
        // or Lost (it has), never the value again.
        assert!(
            !matches!(call.poll(), Waited::Returned(_)),
            "handed out once"
        );
    }

    #[test]
    fn a_late_call_is_pending_then_picked_up_when_it_returns() {
        let (release, gate) = mpsc::channel::<()>();
        let call = BoundedCall::spawn("t-late", move || {
            let _ = gate.recv();
            "late"
        })
        .unwrap();
        let t = Instant::now();
        assert_eq!(call.wait(Duration::from_millis(50)), Waited::Pending);
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert_eq!(call.poll(), Waited::Pending);
        release.send(()).unwrap();
        assert_eq!(
            call.wait_until(Instant::now() + Duration::from_secs(5)),
            Waited::Returned("late")
        );
    }

    #[test]
    fn a_call_that_panics_is_lost_not_pending_forever() {
        let call = BoundedCall::<u8>::spawn("t-panic", || panic!("on purpose")).unwrap();
        assert_eq!(call.wait(Duration::from_secs(5)), Waited::Lost);
    }
}
