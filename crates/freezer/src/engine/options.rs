//! How a freeze runs: the caller's [`FreezeOptions`] (state directory, EBUSY and
//! EOPNOTSUPP policies, FIFREEZE deadline) and the [`FlushPolicy`] of the `syncfs` passes
//! before the first FIFREEZE.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{ForeignFreezePolicy, FreezerConfig, UnsupportedPolicy};

/// How to run a freeze.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreezeOptions {
    /// State directory (journal and lock); must not be on a filesystem the plan may freeze.
    pub state_dir: PathBuf,
    /// EOPNOTSUPP policy.
    pub on_unsupported: UnsupportedPolicy,
    /// EBUSY policy.
    pub on_foreign_freeze: ForeignFreezePolicy,
    /// Deadline of each FIFREEZE call.
    pub freeze_deadline: Duration,
    /// How to flush before the first FIFREEZE.
    pub flush: FlushPolicy,
    /// The expedited-RCU switch to turn on for the FIFREEZE calls (`crate::expedite`);
    /// None: leave grace periods as they are.
    pub expedite: Option<PathBuf>,
}

/// How [`freeze`](super::freeze) flushes before its first FIFREEZE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// A parallel `syncfs` of every filesystem, repeated while each pass takes at least
    /// [`CONVERGE_FLOOR`] and at most half the time of the one before, and the repeats have
    /// not used up `budget`; so FIFREEZE finds almost nothing left to write even with
    /// writers running. A zero budget is one pass.
    Converge {
        /// Time for passes after the first.
        budget: Duration,
    },
    /// No flush: FIFREEZE writes back what is left itself. For a caller that has just
    /// measured that there is nothing worth flushing (a flush-ahead pass that found the
    /// filesystems clean): a pass would only add its own cost to the answer.
    Skip,
}

/// Default time for repeated flush passes ([`FlushPolicy::Converge`]).
pub const DEFAULT_CONVERGE_BUDGET: Duration = Duration::from_millis(100);

/// A flush pass shorter than this found almost nothing to write: no further pass.
pub const CONVERGE_FLOOR: Duration = Duration::from_millis(5);

impl FreezeOptions {
    /// Options from the config, with a state directory.
    pub fn new(config: &FreezerConfig, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            on_unsupported: config.on_unsupported,
            on_foreign_freeze: config.on_foreign_freeze,
            freeze_deadline: config.freeze_deadline(),
            flush: FlushPolicy::Converge {
                budget: DEFAULT_CONVERGE_BUDGET,
            },
            expedite: config
                .expedite_grace_periods
                .then(|| config.rcu_expedited_switch.clone()),
        }
    }
}
