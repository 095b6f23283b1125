//! The freeze-safety owner: the one place that says whether anything of ours is frozen, or
//! about to be, and what follows from that.
//!
//! # Mechanism
//!
//! A sequenced *freeze epoch*: [`FreezeSafety::begin_freeze`] bumps it just before the
//! filesystem worker is told to freeze, and the daemon is "frozen" from then until the
//! worker reports that nothing of ours is frozen *as of that epoch or a later one*
//! ([`FreezeSafety::nothing_frozen`]). Every consequence derives from that one state:
//!
//! - the log gate is held (R60, R61): lines go to the bounded memory ring, never to stderr,
//!   which journald may be writing to a frozen `/var`;
//! - the process is not dumpable (`PR_SET_DUMPABLE` 0): a crash by signal then ends the
//!   process at once. With a core dump the kernel writes the core (to a file, or to
//!   systemd-coredump or apport through a pipe) *before* it closes the process's files, so
//!   a dump that waits on a frozen filesystem would keep the guardian from ever seeing the
//!   daemon die;
//! - no exec and no respawn (a guardian, a `modprobe` through a rebind) (R60). The hook
//!   runner thread asks the same state, through the [`ExecPermit`] it shares, right before
//!   each hook it starts: the coordinator already never sends hooks `freeze` after, or
//!   `thaw` before, our filesystems freeze, and this holds even if that order were broken.
//!
//! The worker stamps each outcome with the epoch of the last freeze command it had taken
//! when it produced the outcome. An outcome of an older epoch describes a state the daemon
//! has already left behind (say, the retried thaw of an earlier freeze finishing while a
//! new FREEZE runs): it cannot end the frozen state, so the gate never reopens while the
//! new freeze may be freezing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::logbuf::LogGate;

/// Whether a process may be executed now, readable from any thread. Closed by
/// [`FreezeSafety::begin_freeze`] before the worker is told to freeze, opened again only by
/// [`FreezeSafety::nothing_frozen`].
#[derive(Debug, Clone)]
pub struct ExecPermit(Arc<AtomicBool>);

impl Default for ExecPermit {
    fn default() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }
}

impl ExecPermit {
    pub fn allowed(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// A permit that refuses (tests of what honours it).
    #[cfg(test)]
    pub fn refusing() -> Self {
        Self(Arc::new(AtomicBool::new(false)))
    }

    /// Opens a permit made by [`Self::refusing`].
    #[cfg(test)]
    pub fn allow(&self) {
        self.set(true);
    }

    fn set(&self, allowed: bool) {
        self.0.store(allowed, Ordering::SeqCst);
    }
}

/// A freeze epoch: which freeze command a worker outcome is up to date with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Epoch(pub u64);

/// Owns the frozen state and the log gate.
#[derive(Debug)]
pub struct FreezeSafety {
    epoch: Epoch,
    frozen: bool,
    gate: LogGate,
    exec: ExecPermit,
    /// Held log lines dropped since start (the held-log capacity ran out while frozen).
    log_lines_dropped: u64,
}

impl FreezeSafety {
    /// `exec`: the permit shared with the threads that execute (the hook runner).
    pub fn new(gate: LogGate, exec: ExecPermit) -> Self {
        exec.set(true);
        Self {
            epoch: Epoch::default(),
            frozen: false,
            gate,
            exec,
            log_lines_dropped: 0,
        }
    }

    /// A filesystem freeze is about to be sent to the worker: from now on nothing is
    /// written to disk, the process is not dumpable and nothing is executed. Returns the
    /// epoch to send with the freeze.
    pub fn begin_freeze(&mut self) -> Epoch {
        self.exec.set(false);
        self.gate.hold();
        set_dumpable(false);
        self.epoch.0 += 1;
        self.frozen = true;
        self.epoch
    }

    /// The worker says nothing of ours is frozen as of `epoch`. If that is the current
    /// epoch, the frozen state ends: dumpable again, and the gate releases the held lines.
    /// Returns `Some((written, dropped))` then, `None` for a stale outcome or when nothing
    /// was frozen.
    pub fn nothing_frozen(&mut self, epoch: Epoch) -> Option<(usize, u64)> {
        if !self.frozen || epoch < self.epoch {
            return None;
        }
        self.frozen = false;
        self.exec.set(true);
        set_dumpable(true);
        let (written, dropped) = self.gate.release();
        self.log_lines_dropped = self.log_lines_dropped.saturating_add(dropped);
        Some((written, dropped))
    }

    /// Log lines dropped while frozen since the daemon started (for the metrics).
    pub fn log_lines_dropped(&self) -> u64 {
        self.log_lines_dropped
    }

    /// Anything of ours is frozen, or may be.
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// Whether a process may be executed now (R60).
    pub fn may_exec(&self) -> bool {
        self.exec.allowed()
    }

    /// The gate (released by the caller only through [`Self::nothing_frozen`], or at a
    /// stop that found nothing frozen).
    pub fn gate(&self) -> &LogGate {
        &self.gate
    }
}

/// No core dump while frozen: Linux's `PR_SET_DUMPABLE`, FreeBSD's
/// `procctl(PROC_TRACE_CTL)` on this process (a dump written to a frozen filesystem would
/// wait for a thaw that only the end of this process brings). Failure is ignored: it only
/// fails for invalid arguments.
fn set_dumpable(dumpable: bool) {
    use rustix::process::DumpableBehavior;
    let behavior = if dumpable {
        DumpableBehavior::Dumpable
    } else {
        DumpableBehavior::NotDumpable
    };
    // The one call whose signature differs between the two systems (rustix: FreeBSD's
    // procctl also names the target process; None is this one).
    #[cfg(target_os = "linux")]
    let _ = rustix::process::set_dumpable_behavior(behavior);
    #[cfg(target_os = "freebsd")]
    let _ = rustix::process::set_dumpable_behavior(None, behavior);
}

#[cfg(test)]
mod tests {
    use super::*;
    use hv_vss_testutil::SharedBuf;
    use rustix::process::{DumpableBehavior, dumpable_behavior};
    use std::io::Write;
    use tracing_subscriber::fmt::MakeWriter;

    fn log(gate: &LogGate, text: &str) {
        gate.make_writer().write_all(text.as_bytes()).unwrap();
    }

    /// Regression (issue 8, item 5): the retried thaw of an earlier freeze finishing while
    /// a new FREEZE ran reopened the gate (outcomes carried no sequence), and lines went to
    /// stderr while frozen. An outcome of an older epoch now changes nothing.
    /// Regression (item 4): the process stayed dumpable while frozen, so a crash by signal
    /// could hang writing its core to a frozen filesystem.
    /// (One test: the dumpable flag is process-wide.)
    #[test]
    fn only_an_outcome_of_the_current_epoch_ends_the_frozen_state() {
        let sink = SharedBuf::default();
        let gate = LogGate::with_sink(Box::new(sink.clone()), 16);
        let exec = ExecPermit::default();
        let mut safety = FreezeSafety::new(gate.clone(), exec.clone());
        assert!(safety.may_exec() && exec.allowed());
        assert_eq!(safety.nothing_frozen(Epoch(0)), None, "nothing was frozen");

        let first = safety.begin_freeze();
        assert!(!safety.may_exec());
        assert!(
            !exec.allowed(),
            "the hook runner's permit closes with the freeze"
        );
        assert_eq!(dumpable_behavior().unwrap(), DumpableBehavior::NotDumpable);
        // The first freeze's thaw is incomplete; the host starts a new one.
        let second = safety.begin_freeze();
        assert!(second > first);
        log(&gate, "while frozen\n");
        // The retry of the first freeze's thaw completes now: stale.
        assert_eq!(safety.nothing_frozen(first), None);
        assert!(safety.is_frozen() && gate.is_held() && !exec.allowed());
        assert_eq!(dumpable_behavior().unwrap(), DumpableBehavior::NotDumpable);
        assert_eq!(sink.text(), "", "nothing written while the new freeze runs");

        assert_eq!(safety.nothing_frozen(second), Some((1, 0)));
        assert_eq!(safety.log_lines_dropped(), 0);
        assert!(!safety.is_frozen() && safety.may_exec() && !gate.is_held());
        assert!(exec.allowed());
        assert_eq!(dumpable_behavior().unwrap(), DumpableBehavior::Dumpable);
        assert_eq!(sink.text(), "while frozen\n");

        // Lines past the gate's capacity (16) are dropped and counted, across freezes.
        for round in 1..=2u64 {
            let epoch = safety.begin_freeze();
            for i in 0..20 {
                log(&gate, &format!("line {i}\n"));
            }
            assert_eq!(safety.nothing_frozen(epoch), Some((16, 4)));
            assert_eq!(safety.log_lines_dropped(), 4 * round);
        }
    }
}
