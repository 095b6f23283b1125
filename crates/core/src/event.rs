//! What goes into the coordinator ([`Event`]) and what comes out ([`Action`]).

use serde::{Deserialize, Serialize};

use crate::report::{Failure, TxnReport};
use crate::types::{AppOp, FsResult, HostOp, Millis, ParticipantId, RequestId, Status, TxnId};

/// Something the daemon observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A HOT_BACKUP, FREEZE or THAW from the host (already parsed; the transport answers
    /// everything else itself).
    HostRequest { request: RequestId, op: HostOp },
    /// A participant's answer to a notification. Matched on participant + txn + op (R23);
    /// anything that matches nothing in flight gets [`Action::RejectAck`].
    AppAck {
        participant: ParticipantId,
        txn: TxnId,
        op: AppOp,
        ok: bool,
    },
    /// A participant disconnected (or its hook set became unusable). It is unregistered;
    /// no action will mention it again.
    AppGone { participant: ParticipantId },
    /// Answer to [`Action::CheckFs`].
    FsChecked { txn: TxnId, result: FsResult },
    /// Answer to [`Action::FreezeFs`]. `Err` means "nothing of ours is frozen": the freezer
    /// has already rolled back whatever part of the freeze succeeded.
    FsFrozen { txn: TxnId, result: FsResult },
    /// Answer to [`Action::ThawFs`]: the freezer has thawed everything of `txn` it could;
    /// `Err` carries the errors it met (R41), which are recorded. The coordinator then
    /// considers the filesystems no longer its business.
    FsThawed { txn: TxnId, result: FsResult },
    /// The host transport hung up (drop-in) or was rescinded (UIO). A request in flight
    /// can no longer be answered.
    TransportLost,
    /// SIGTERM/SIGINT (R63).
    Shutdown,
    /// The guardian process died; while frozen this thaws as auto-thaw does (R57).
    GuardianDied,
    /// The daemon can serve (config, plan and guardian are in place). The coordinator starts
    /// not ready (R27).
    Ready,
    /// The daemon cannot serve any more: new HOT_BACKUP/FREEZE get E_FAIL, and so does a THAW
    /// with nothing frozen; a transaction in flight goes on.
    NotReady,
    /// Nothing happened but time passed (same as [`crate::Coordinator::tick`]).
    Tick,
}

/// Why an acknowledgement was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckRejection {
    /// It answers a notification whose stage already ended (timeout, failure, deadline) (R22).
    Late,
    /// Nothing like it was asked: unknown txn or op, a second answer, an answer to Abort.
    Unexpected,
}

/// Why a host request was refused at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// Another request is in flight, or compensation is running (R17, R26).
    Busy,
    /// The coordinator cannot serve (R27).
    NotReady,
    /// After [`Event::Shutdown`].
    ShuttingDown,
    /// HOT_BACKUP while frozen: no application work while frozen (R54).
    CheckWhileFrozen,
}

/// A condition worth a log line. The daemon logs notices only after sending the replies in
/// the same batch, and while filesystems may be frozen only into its memory ring (R60–R62).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Notice {
    /// A request got E_FAIL without being started.
    Refused {
        request: RequestId,
        op: HostOp,
        reason: Refusal,
    },
    /// FREEZE while already frozen: S_OK, stays frozen (R24).
    AlreadyFrozen { request: RequestId, txn: TxnId },
    /// THAW with nothing frozen: S_OK (R24).
    ThawWithoutFreeze { request: RequestId },
    /// THAW after an auto-thaw: E_FAIL (R25).
    ThawAfterAutoThaw { request: RequestId, txn: TxnId },
    /// Something failed in a transaction (R21); also in the report.
    Failed { txn: TxnId, failure: Failure },
    /// We thawed without a THAW (auto-thaw, guardian loss or transport loss while frozen).
    /// Log loudly (R56).
    AutoThawed {
        txn: TxnId,
        cause: Failure,
        frozen_ms: u64,
    },
}

/// Something the daemon must do, in the order given. Within one batch every
/// [`Action::Reply`] comes before any [`Action::Notice`] or [`Action::Report`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Action {
    /// Answer a host request: S_OK or HV_E_FAIL on the wire. Exactly one per request.
    Reply {
        request: RequestId,
        status: Status,
    },
    /// The transport is gone: this request will never be answered; forget it.
    Unanswerable {
        request: RequestId,
    },
    /// Tell a participant to check, freeze, thaw or abort transaction `txn`.
    NotifyApp {
        participant: ParticipantId,
        txn: TxnId,
        op: AppOp,
        /// Check, Freeze, Thaw: the instant its ack stops being waited for (its own
        /// timeout, bounded by the request's deadline); the daemon sends the time left.
        /// Equal to the `now` of the batch when nobody waits (Thaw sent at a deadline or
        /// during shutdown). `None` for Abort, which is never acked.
        deadline: Option<Millis>,
        /// Abort only: why the transaction was abandoned (what ended it early, else its
        /// first failure). `None` for the other ops.
        reason: Option<Failure>,
    },
    /// Tell a participant its acknowledgement was not taken (R22).
    RejectAck {
        participant: ParticipantId,
        txn: TxnId,
        op: AppOp,
        reason: AckRejection,
    },
    /// Filesystem preflight (R42); answer with [`Event::FsChecked`].
    CheckFs {
        txn: TxnId,
    },
    /// Freeze the planned filesystems; answer with [`Event::FsFrozen`].
    FreezeFs {
        txn: TxnId,
    },
    /// Thaw everything of `txn`; answer with [`Event::FsThawed`]. May be issued while
    /// `FreezeFs` for the same txn is still running (deadline, THAW, shutdown...): the
    /// freezer must then stop freezing, thaw what it froze, and answer `FsThawed` (a later
    /// `FsFrozen` for that txn is ignored).
    ThawFs {
        txn: TxnId,
    },
    Notice(Notice),
    /// The transaction ended; store it (R72).
    Report(Box<TxnReport>),
    /// After [`Event::Shutdown`]: everything is thawed and aborted; the daemon may exit.
    Stopped,
}

/// The coordinator's state, without its data (behaviour.md §5), for status output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    Idle,
    Checking,
    FreezingApps,
    FreezingFs,
    Frozen,
    ThawingFs,
    ThawingApps,
    Compensating,
    AutoThawed,
    Stopped,
}
