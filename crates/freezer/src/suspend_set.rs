//! Suspending a set of filesystems all-or-nothing: each target through its own
//! [`Suspender::suspend`], in order; on the first failure everything already suspended is
//! resumed (newest first) and the error names the failing target; resuming the set goes
//! newest first too. The mechanism is a trait so that the ordering, rollback and report
//! are the same code on every platform; FreeBSD's UFS suspension is the implementation in
//! use (`crate::freebsd`).
//!
//! # Why one at a time
//!
//! FreeBSD's `UFSSUSPEND` refuses (`EDEADLK`) a caller whose process has more than one
//! thread, and a single kernel lock serializes every suspend and resume. Threads would
//! make every suspension fail and could not overlap them anyway, so the set is suspended
//! sequentially by a single-threaded process.
//!
//! # Order
//!
//! Targets are suspended in the order given, which the caller makes dependents first (a
//! filesystem whose disk is an image file on another filesystem is suspended before that
//! one, since its writeback goes through it), and resumed in the reverse order.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Suspends one filesystem; what it returns holds the suspension until resumed or dropped.
pub trait Suspender {
    /// What a filesystem to suspend is called by.
    type Target;
    /// One held suspension. Dropping it must end the suspension (FreeBSD: closing the fd).
    type Held;
    /// Why a suspension or resume failed.
    type Error: std::error::Error;

    /// Suspends `target`; blocks until it is suspended.
    fn suspend(&self, target: &Self::Target) -> Result<Self::Held, Self::Error>;

    /// Ends `held` explicitly, saying whether the kernel agreed.
    fn resume(&self, held: Self::Held) -> Result<(), Self::Error>;
}

/// How resuming one filesystem went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeOutcome {
    /// The target's name (its mount point).
    pub name: String,
    /// `None` when resumed; the error otherwise (the suspension still ended when its holder
    /// was dropped).
    pub error: Option<String>,
}

/// A suspension that failed, and the rollback of everything before it.
#[derive(Debug, thiserror::Error)]
#[error("suspending {failed} failed: {error}; {} already suspended were resumed", rolled_back.len())]
pub struct SuspendSetError<E: std::error::Error> {
    /// The target that failed.
    pub failed: String,
    /// Its error.
    pub error: E,
    /// The rollback, newest first.
    pub rolled_back: Vec<ResumeOutcome>,
}

/// Everything suspended, held until [`SuspendedSet::resume`] or drop.
pub struct SuspendedSet<'s, S: Suspender> {
    suspender: &'s S,
    held: Vec<(String, S::Held)>,
    /// How long suspending all of them took.
    pub took: Duration,
}

impl<'s, S: Suspender> SuspendedSet<'s, S> {
    /// Suspends `targets` in order, each named by `name`. On the first failure the ones
    /// already suspended are resumed newest first and the error says which failed.
    pub fn suspend_all<'t>(
        suspender: &'s S,
        targets: impl IntoIterator<Item = &'t S::Target>,
        name: impl Fn(&S::Target) -> String,
    ) -> Result<Self, SuspendSetError<S::Error>>
    where
        S::Target: 't,
    {
        let start = Instant::now();
        let mut set = Self {
            suspender,
            held: Vec::new(),
            took: Duration::ZERO,
        };
        for target in targets {
            match suspender.suspend(target) {
                Ok(held) => set.held.push((name(target), held)),
                Err(error) => {
                    return Err(SuspendSetError {
                        failed: name(target),
                        error,
                        rolled_back: set.resume(),
                    });
                }
            }
        }
        set.took = start.elapsed();
        Ok(set)
    }

    /// The names of the suspended filesystems, in suspension order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.held.iter().map(|(name, _)| name.as_str())
    }

    /// How many are suspended.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True when nothing is suspended (an empty target list).
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Resumes everything, newest first; every one is attempted whatever the others did.
    pub fn resume(mut self) -> Vec<ResumeOutcome> {
        let mut outcomes = Vec::with_capacity(self.held.len());
        while let Some((name, held)) = self.held.pop() {
            let error = self.suspender.resume(held).err().map(|e| e.to_string());
            outcomes.push(ResumeOutcome { name, error });
        }
        outcomes
    }
}

impl<S: Suspender> std::fmt::Debug for SuspendedSet<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SuspendedSet")
            .field("suspended", &self.names().collect::<Vec<_>>())
            .field("took", &self.took)
            .finish()
    }
}

impl<S: Suspender> Drop for SuspendedSet<'_, S> {
    /// Ends whatever is still held, newest first, by dropping the holders.
    fn drop(&mut self) {
        while let Some(held) = self.held.pop() {
            drop(held);
        }
    }
}

#[cfg(test)]
mod tests;
