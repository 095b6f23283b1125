//! What the main loop asks of its filesystem worker ([`FsCommand`]) and what it hears back
//! ([`FsOutcome`]): the same on every platform, so the loop has no platform conditions.
//! The worker is `fsworker.rs` on Linux (FIFREEZE engine) and `fsworker_freebsd.rs` on
//! FreeBSD (UFS suspend held by a child process).

use std::time::Duration;

use hv_vss_core::{FsResult, TxnId};
use hv_vss_freezer::{FreezeReport, ThawReport};

use crate::safety::Epoch;

/// How often a thaw that left members frozen is retried.
pub const THAW_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Work for the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsCommand {
    Check { txn: TxnId },
    Freeze { txn: TxnId, epoch: Epoch },
    Thaw { txn: TxnId },
}

/// What the worker did.
#[derive(Debug)]
pub enum FsOutcome {
    Checked {
        txn: TxnId,
        result: FsResult,
    },
    /// `result` Ok: the worker holds the frozen set until `Thaw`.
    Frozen {
        txn: TxnId,
        epoch: Epoch,
        result: FsResult,
        report: Option<FreezeReport>,
        /// Nothing of ours is frozen (a failed freeze rolled back, and no earlier set is
        /// still waiting for its thaw to be retried).
        nothing_frozen: bool,
    },
    Thawed {
        txn: TxnId,
        epoch: Epoch,
        result: FsResult,
        report: Option<ThawReport>,
        /// Nothing of ours is frozen any more.
        all_thawed: bool,
    },
    /// A background retry finished the thaw of members an earlier `Thaw` left frozen.
    RetryThawed {
        epoch: Epoch,
        report: ThawReport,
    },
    /// The frozen set was thawed without a `Thaw`: on FreeBSD the holder child resumed on
    /// its own (the main loop's heartbeats stopped, or its hard bound passed) or died. The
    /// loop treats it as the Linux guardian's thaw (`Event::GuardianDied`); the next
    /// `Thaw` fails, since the host's snapshot may have been taken unfrozen.
    ThawedOnItsOwn {
        epoch: Epoch,
        cause: String,
    },
}
