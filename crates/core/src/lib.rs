//! The sans-IO VSS coordinator: FreeBSD's `hv_vss` driver logic, done right.
//!
//! # Contract
//!
//! The host sends HOT_BACKUP, FREEZE and THAW (R17). The coordinator turns each into a
//! transaction: applications first, then filesystems, for CHECK and FREEZE; filesystems
//! first, then applications, for THAW (R18); one transaction at a time. Every host request
//! gets exactly one [`Action::Reply`] (R6), or, when the transport is gone, exactly one
//! [`Action::Unanswerable`]. Every participant told to Freeze gets exactly one Thaw or
//! Abort afterwards, in order (R46), unless it disconnects first. Nothing stays frozen:
//! every path that froze ends in [`Action::ThawFs`] (R55), bounded by the auto-thaw timer
//! or the request's deadline.
//!
//! The coordinator does no I/O, owns no thread and reads no clock. The daemon feeds it
//! [`Event`]s with a monotonic [`Millis`] timestamp, executes the returned [`Action`]s in
//! order, and calls [`Coordinator::tick`] at [`Coordinator::next_deadline`]. Deadlines due at
//! the `now` of any call fire before its event is handled.
//!
//! ```
//! use hv_vss_core::*;
//!
//! let mut c = Coordinator::new(Limits::default(), Millis(0)).unwrap();
//! c.register(Registration { id: ParticipantId(1), name: "db".into(), tier: DEFAULT_TIER, timeout: None })
//!     .unwrap();
//! c.handle(Event::Ready, Millis(0));
//! let freeze = RequestId(1);
//! let actions = c.handle(Event::HostRequest { request: freeze, op: HostOp::Freeze }, Millis(5));
//! let txn = TxnId(1);
//! // The participant's own timeout (30 s by default) bounds its ack: it has until 30.005 s.
//! let deadline = Some(Millis(30_005));
//! assert_eq!(actions, [Action::NotifyApp { participant: ParticipantId(1), txn, op: AppOp::Freeze, deadline, reason: None }]);
//! let ack = Event::AppAck { participant: ParticipantId(1), txn, op: AppOp::Freeze, ok: true };
//! assert_eq!(c.handle(ack, Millis(9)), [Action::FreezeFs { txn }]);
//! let frozen = Event::FsFrozen { txn, result: Ok(()) };
//! assert_eq!(c.handle(frozen, Millis(40)), [Action::Reply { request: freeze, status: Status::Ok }]);
//! // The daemon sleeps until the auto-thaw bound unless THAW comes first.
//! assert_eq!(c.next_deadline(), Some(Millis(60_040)));
//! ```
//!
//! # Design
//!
//! - States are one enum carrying their data (behaviour.md §5): Idle, Checking, FreezingApps,
//!   FreezingFs, Frozen, ThawingFs, ThawingApps, Compensating, AutoThawed, and Stopped after
//!   a shutdown. See [`StateKind`].
//! - Transaction ids come from a counter starting at 1 (R23). A HOT_BACKUP is one
//!   transaction; a FREEZE opens one that the THAW (or compensation) closes, so a
//!   participant's Freeze and its Thaw/Abort carry the same id. Acks are matched on
//!   participant + txn + op; anything else gets [`Action::RejectAck`] and changes nothing
//!   (R22).
//! - Applications run tier by tier (R45): lowest first for Check/Freeze, highest first for
//!   Thaw and Abort; members of a tier in parallel; the next tier after every ack, timeout
//!   or departure of the previous one. Each member waits at most its own timeout, bounded by
//!   the request's deadline. A participant registering mid-transaction is not part of it.
//! - The first failure of a CHECK answers E_FAIL. The first failure of a FREEZE (veto,
//!   timeout, departure of a participant that holds, freezer error, guardian loss) starts
//!   compensation (R19): ThawFs if anything froze or may be freezing; after FsThawed,
//!   Abort to every participant told to Freeze, highest tier first (R54: no application
//!   work while frozen); then E_FAIL (§5). A deadline answers E_FAIL at once and lets the
//!   compensation finish after the reply (R21).
//! - THAW goes on past failures (R41, R47): each is recorded, and THAW answers E_FAIL if
//!   anything in the transaction failed (§5). At the THAW deadline the remaining tiers are
//!   told Thaw at once. Applications are told Thaw only after FsThawed, however late.
//! - Auto-thaw (R56): [`Limits::auto_thaw`] after the FREEZE reply, with no THAW, the
//!   coordinator compensates and then sits in AutoThawed: the next THAW gets E_FAIL (R25), a
//!   FREEZE or HOT_BACKUP starts a new transaction (a HOT_BACKUP forgets the auto-thaw).
//!   Guardian loss and transport loss while frozen do the same (R57, R13, R15).
//! - Replies come before notices and reports in every batch (R62); reports are emitted only
//!   once nothing of their transaction is frozen.
//!
//! # Host misbehaviour and overlaps
//!
//! Both modes follow the same rules (in drop-in mode the kernel never overlaps requests, so
//! only UIO mode meets the overlap rows):
//! - THAW with nothing frozen: S_OK (R24); FREEZE while frozen: S_OK, stays frozen, the
//!   auto-thaw bound is not extended (R24); HOT_BACKUP while frozen: E_FAIL, nothing done.
//! - THAW during an in-flight FREEZE (R26): E_FAIL to the FREEZE at once, compensation, then
//!   the THAW is answered S_OK once everything is thawed (E_FAIL if the thaw reported
//!   errors).
//! - THAW during compensation joins it and is answered when it ends: E_FAIL after an
//!   auto-thaw (R25), else S_OK unless the thaw failed. A FREEZE still waiting for its
//!   E_FAIL is answered at once.
//! - Every other overlap (anything during a CHECK or a THAW, FREEZE or HOT_BACKUP during
//!   compensation, a second THAW) gets E_FAIL at once ([`Refusal::Busy`]).
//! - Not ready (R27): HOT_BACKUP, FREEZE and a THAW with nothing frozen get E_FAIL; a
//!   transaction in flight goes on. The coordinator starts not ready.
//! - Transport loss: the request in flight becomes [`Action::Unanswerable`]; a CHECK ends,
//!   a FREEZE in flight or a frozen state is compensated; a THAW in flight runs to its end.
//! - Shutdown (R63): the request in flight gets E_FAIL at once, then the same compensation;
//!   [`Action::Stopped`] follows once everything is thawed and aborted. Later requests get
//!   E_FAIL.
//!
//! # Filesystem contract
//!
//! `FsFrozen(Err)` means nothing of ours is frozen (the freezer rolled back its partial
//! freeze). `ThawFs` may be issued while `FreezeFs` of the same transaction still runs; the
//! freezer must then stop, thaw what it froze and answer `FsThawed`. `FsThawed(Err)` is
//! recorded (R41) and the coordinator moves on: retrying what stayed frozen is the freezer's
//! business.
//!
//! # Limitations
//!
//! - A participant that disconnects is forgotten; reconnection under the same name after
//!   a daemon restart (R46) is the daemon's job, from its journal.
//! - If the freezer never answers `ThawFs`, applications are never told Thaw/Abort (R54
//!   wins); the host still gets its reply at the deadline.
//! - The frozen window in reports is as the coordinator saw it (FsFrozen to FsThawed, or
//!   FreezeFs to FsThawed for a freeze that did not finish); the freezer knows it better.

mod coordinator;
mod event;
pub mod report;
mod types;

pub use coordinator::Coordinator;
pub use event::{AckRejection, Action, Event, Notice, Refusal, StateKind};
pub use report::{Failure, Stage, TxnReport, Verdict};
pub use types::{
    AppOp, AutoThaw, DEFAULT_TIER, FsError, FsResult, HostOp, KERNEL_FREEZE_TIMEOUT,
    KERNEL_UTIL_TIMEOUT, Limits, LimitsError, Millis, ParticipantId, RegisterError, Registration,
    RequestId, Status, TxnId,
};

#[cfg(test)]
mod tests;
