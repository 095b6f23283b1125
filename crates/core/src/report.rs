//! The per-transaction report (R72) and the failure vocabulary (R21).
//!
//! A report is emitted as [`crate::Action::Report`] when its transaction ends: after the
//! reply, and only once nothing of the transaction is frozen, so the daemon may store and
//! log it at once.

use serde::{Deserialize, Serialize};

use crate::types::{AppOp, FsResult, HostOp, Millis, ParticipantId, RequestId, Status, TxnId};

/// Where in a transaction something happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    CheckApps,
    CheckFs,
    FreezeApps,
    FreezeFs,
    /// Between the FREEZE reply and the THAW.
    Frozen,
    ThawFs,
    ThawApps,
}

/// One thing that went wrong. The first failure of a transaction is its verdict's reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Failure {
    /// A participant answered not-ok.
    AppFailed { stage: Stage, participant: String },
    /// A participant's own timeout ran out (R21, R47).
    AppTimedOut { stage: Stage, participant: String },
    /// A participant disconnected (R47).
    AppGone { stage: Stage, participant: String },
    /// The request's whole-chain deadline ran out in `stage`; `waiting_for` names the
    /// participants still owing an answer (empty in a filesystem stage) (R21).
    Deadline {
        stage: Stage,
        waiting_for: Vec<String>,
    },
    /// The freezer reported an error.
    Fs { stage: Stage, detail: String },
    /// A THAW arrived while the FREEZE was in flight (R26).
    AbortedByThaw,
    /// No THAW came within the auto-thaw bound (R56).
    AutoThaw,
    /// The guardian process died while filesystems were frozen (R57).
    GuardianDied,
    /// The host transport hung up or was rescinded (R13, R15).
    TransportLost,
    /// SIGTERM/SIGINT (R63).
    Shutdown,
}

/// Which kind of transaction a report covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnKind {
    /// One HOT_BACKUP.
    Check,
    /// A FREEZE and what ended it (THAW, or compensation).
    Backup,
}

/// How a host request of this transaction was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Answer {
    Replied {
        status: Status,
        at: Millis,
    },
    /// The transport was lost before a reply could be sent.
    Unanswerable {
        at: Millis,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub request: RequestId,
    pub op: HostOp,
    pub received_at: Millis,
    pub answer: Answer,
}

/// How a participant answered one notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppOutcome {
    Ok,
    Failed,
    TimedOut,
    /// It disconnected before answering.
    Gone,
    /// The stage ended (another failure, a deadline, compensation) before it answered.
    NoAnswer,
    /// Abort is not acknowledged.
    NotAcked,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppOpRecord {
    pub op: AppOp,
    pub sent_at: Millis,
    pub outcome: AppOutcome,
    pub answered_at: Option<Millis>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantReport {
    pub id: ParticipantId,
    pub name: String,
    pub tier: u8,
    /// Notifications in the order they were sent.
    pub ops: Vec<AppOpRecord>,
    pub gone_at: Option<Millis>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsStageRecord {
    pub stage: Stage,
    pub issued_at: Millis,
    pub completed_at: Option<Millis>,
    /// `None`: the freezer never reported back before the transaction ended.
    pub result: Option<FsResult>,
}

/// From the freezer's "all frozen" to its "thawed" (both as received by the coordinator).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrozenWindow {
    pub frozen_at: Millis,
    pub thawed_at: Millis,
}

impl FrozenWindow {
    pub fn duration_ms(&self) -> u64 {
        self.thawed_at.since(self.frozen_at)
    }
}

/// What the transaction is worth.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Verdict {
    /// HOT_BACKUP answered S_OK.
    CheckPassed,
    /// Frozen with every participant holding until THAW.
    AppConsistent,
    /// Filesystems held until THAW, but no participant took part or one was lost while frozen.
    FsConsistent,
    /// The request failed, or the freeze ended before THAW (auto-thaw, transport loss...).
    Failed { reason: Failure },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnReport {
    pub txn: TxnId,
    pub kind: TxnKind,
    pub started_at: Millis,
    pub ended_at: Millis,
    /// The requests this transaction answered, in arrival order (FREEZE, any repeated
    /// FREEZE, THAW).
    pub requests: Vec<RequestRecord>,
    /// Every participant that took part (registered when the transaction started).
    pub participants: Vec<ParticipantReport>,
    pub fs: Vec<FsStageRecord>,
    pub frozen_window: Option<FrozenWindow>,
    /// Every failure in order; the first one is the verdict's reason.
    pub failures: Vec<Failure>,
    pub verdict: Verdict,
    /// FREEZE-while-frozen requests answered (S_OK, R24) but not listed in `requests`:
    /// only the first [`crate::coordinator::MAX_REPEATED_FREEZES_LISTED`] are, so a host
    /// repeating FREEZE cannot grow the report without bound.
    #[serde(default)]
    pub repeated_freezes_not_listed: u64,
}

/// How the wait for the host's BU_COMPLETE after a backup ended (wire-protocol.md §6.4: in
/// UIO mode "BU_COMPLETE closes the backup report").
///
/// The coordinator never sees BU_COMPLETE (the transport answers it), so this is not part
/// of [`TxnReport`]: the daemon records it next to the report of a backup transaction. It
/// is absent in drop-in mode, where the kernel answers BU_COMPLETE and nobody can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCompletion {
    /// The host sent BU_COMPLETE after this backup (`closed_by` is `BuComplete`).
    pub completed: bool,
    /// What ended the wait.
    pub closed_by: CompletionEnd,
    /// Milliseconds from the end of the transaction to `closed_by`.
    pub after_ms: u64,
}

impl HostCompletion {
    /// The wait ended by `closed_by`, `after_ms` after the transaction ended.
    pub fn new(closed_by: CompletionEnd, after_ms: u64) -> Self {
        Self {
            completed: closed_by == CompletionEnd::BuComplete,
            closed_by,
            after_ms,
        }
    }
}

/// What ended the wait for BU_COMPLETE after a backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompletionEnd {
    /// The host sent BU_COMPLETE.
    BuComplete,
    /// The host started another transaction (HOT_BACKUP or FREEZE) first.
    NextRequest,
    /// Nothing came within the daemon's wait.
    Timeout,
    /// The transport was lost: the channel BU_COMPLETE would come on is gone.
    TransportLost,
    /// The daemon stopped first.
    Shutdown,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape `history.jsonl` readers rely on.
    #[test]
    fn host_completion_serializes_flat_with_snake_case_closer() {
        let done = HostCompletion::new(CompletionEnd::BuComplete, 12);
        assert!(done.completed);
        assert_eq!(
            serde_json::to_value(done).unwrap(),
            serde_json::json!({ "completed": true, "closed_by": "bu_complete", "after_ms": 12 })
        );
        let superseded = HostCompletion::new(CompletionEnd::NextRequest, 3);
        assert!(!superseded.completed);
        assert_eq!(
            serde_json::to_value(superseded).unwrap()["closed_by"],
            "next_request"
        );
    }
}
