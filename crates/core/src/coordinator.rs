//! The state machine. See the crate documentation for the contract.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::event::{AckRejection, Action, Event, Notice, Refusal, StateKind};
use crate::report::{
    Answer, AppOpRecord, AppOutcome, Failure, FrozenWindow, FsStageRecord, ParticipantReport,
    RequestRecord, Stage, TxnKind, TxnReport, Verdict,
};
use crate::types::{
    AppOp, AutoThaw, FsResult, HostOp, Limits, LimitsError, Millis, ParticipantId, RegisterError,
    Registration, RequestId, Status, TxnId,
};

mod apps;
mod ending;
mod fs;
mod requests;

/// How many (participant, txn, op) notifications that stopped being waited for are
/// remembered, to tell a late ack ("too late") from a bogus one ("unexpected").
const LATE_WINDOW: usize = 1024;

/// The sans-IO VSS coordinator: one transaction at a time, events in, actions out, time
/// passed in. See the crate documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coordinator {
    limits: Limits,
    now: Millis,
    ready: bool,
    stopping: bool,
    next_txn: u64,
    participants: BTreeMap<ParticipantId, Participant>,
    late: VecDeque<(ParticipantId, TxnId, AppOp)>,
    state: State,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Participant {
    name: String,
    tier: u8,
    timeout: Duration,
}

/// A host request being worked on, with its whole-chain deadline (R20).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pending {
    request: RequestId,
    op: HostOp,
    deadline: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct OpRec {
    op: AppOp,
    sent_at: Millis,
    /// `None` while we wait for its ack.
    outcome: Option<AppOutcome>,
    answered_at: Option<Millis>,
}

/// A participant as snapshotted into a transaction when it started.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Member {
    name: String,
    tier: u8,
    timeout: Duration,
    gone_at: Option<Millis>,
    ops: Vec<OpRec>,
}

impl Member {
    fn told(&self, op: AppOp) -> bool {
        self.ops.iter().any(|r| r.op == op)
    }

    /// Told Freeze and not yet told Thaw or Abort: R46 says it is owed one of them.
    fn owed_thaw_or_abort(&self) -> bool {
        self.gone_at.is_none()
            && self.told(AppOp::Freeze)
            && !self.told(AppOp::Thaw)
            && !self.told(AppOp::Abort)
    }
}

/// Where the filesystems of a transaction are, as far as the coordinator knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FsState {
    Untouched,
    Checking,
    Checked,
    /// FreezeFs issued, no answer yet: counts as frozen.
    Freezing,
    Frozen,
    /// FsFrozen(Err): the freezer rolled back, nothing of ours is frozen.
    FreezeFailed,
    /// ThawFs issued, no answer yet.
    Thawing,
    Thawed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ReqRec {
    request: RequestId,
    op: HostOp,
    received_at: Millis,
    answer: Option<Answer>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Txn {
    id: TxnId,
    kind: TxnKind,
    started_at: Millis,
    members: BTreeMap<ParticipantId, Member>,
    requests: Vec<ReqRec>,
    fs: Vec<FsStageRecord>,
    fs_state: FsState,
    frozen_at: Option<Millis>,
    freeze_issued_at: Option<Millis>,
    thawed_at: Option<Millis>,
    failures: Vec<Failure>,
    /// The FREEZE was answered S_OK.
    freeze_ok: bool,
    /// A participant's hold ended while the filesystems were frozen.
    app_hold_lost: bool,
    /// Thawed before any THAW (auto-thaw, guardian, transport, shutdown).
    early_end: Option<Failure>,
    thaw_failed: bool,
    /// FREEZE-while-frozen requests answered but not recorded (past the listed maximum).
    repeats_not_listed: u64,
}

/// How many FREEZE-while-frozen requests a transaction's report lists; the rest are
/// counted (a host can send any number of them, R71).
pub const MAX_REPEATED_FREEZES_LISTED: usize = 16;

/// One application stage: tiers one after the other, members of a tier in parallel (R45).
#[derive(Clone, Debug, PartialEq, Eq)]
struct AppStage {
    op: AppOp,
    /// Tiers not started yet, in the order they will run.
    rest: VecDeque<u8>,
    /// Members of the current tier still owing an ack, with their deadline.
    waiting: BTreeMap<ParticipantId, Millis>,
}

/// What compensation leaves behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resume {
    Idle,
    /// We thawed without a THAW: the next THAW gets E_FAIL (R25).
    AutoThawed,
}

/// behaviour.md §5, each state with its data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum State {
    #[default]
    Idle,
    AutoThawed {
        txn: TxnId,
    },
    /// `apps: None` once the application checks passed and CheckFs is out.
    Checking {
        txn: Box<Txn>,
        req: Pending,
        apps: Option<AppStage>,
    },
    FreezingApps {
        txn: Box<Txn>,
        req: Pending,
        apps: AppStage,
    },
    FreezingFs {
        txn: Box<Txn>,
        req: Pending,
    },
    Frozen {
        txn: Box<Txn>,
        auto_thaw_at: Option<Millis>,
    },
    /// `req: None` once the THAW was answered (deadline) or cannot be (transport lost);
    /// the thaw still runs to the end.
    ThawingFs {
        txn: Box<Txn>,
        req: Option<Pending>,
    },
    ThawingApps {
        txn: Box<Txn>,
        req: Option<Pending>,
        apps: AppStage,
    },
    /// Waiting for FsThawed before aborting applications and answering `pending`.
    Compensating {
        txn: Box<Txn>,
        pending: Option<Pending>,
        resume: Resume,
    },
    Stopped,
}

fn app_stage(op: AppOp) -> Stage {
    match op {
        AppOp::Check => Stage::CheckApps,
        AppOp::Freeze => Stage::FreezeApps,
        AppOp::Thaw | AppOp::Abort => Stage::ThawApps,
    }
}

fn min_opt(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

impl Coordinator {
    /// A coordinator in state Idle, not ready (R27): send [`Event::Ready`] once the daemon
    /// can serve. `now` is the daemon's monotonic clock.
    pub fn new(limits: Limits, now: Millis) -> Result<Self, LimitsError> {
        limits.validate()?;
        Ok(Coordinator {
            limits,
            now,
            ready: false,
            stopping: false,
            next_txn: 1,
            participants: BTreeMap::new(),
            late: VecDeque::new(),
            state: State::Idle,
        })
    }

    /// Adds a participant. It takes part in transactions that start from now on (R44).
    pub fn register(&mut self, reg: Registration) -> Result<(), RegisterError> {
        if self.stopping {
            return Err(RegisterError::Stopped);
        }
        if self.participants.contains_key(&reg.id) {
            return Err(RegisterError::DuplicateId(reg.id));
        }
        if self.participants.values().any(|p| p.name == reg.name) {
            return Err(RegisterError::DuplicateName(reg.name));
        }
        let timeout = reg.timeout.unwrap_or(self.limits.client_timeout);
        if timeout.as_millis() == 0 {
            return Err(RegisterError::ZeroTimeout);
        }
        self.participants.insert(
            reg.id,
            Participant {
                name: reg.name,
                tier: reg.tier,
                timeout,
            },
        );
        Ok(())
    }

    /// Feeds one event at time `now` (monotonic; an earlier `now` than before counts as no
    /// time passing). Deadlines due at `now` fire first, so an ack arriving at or after
    /// its deadline is late.
    pub fn handle(&mut self, event: Event, now: Millis) -> Vec<Action> {
        let mut out = Vec::new();
        self.advance(now, &mut out);
        let st = std::mem::take(&mut self.state);
        self.state = match event {
            Event::HostRequest { request, op } => self.on_request(st, request, op, &mut out),
            Event::AppAck {
                participant,
                txn,
                op,
                ok,
            } => self.on_ack(st, participant, txn, op, ok, &mut out),
            Event::AppGone { participant } => self.on_gone(st, participant, &mut out),
            Event::FsChecked { txn, result } => self.on_fs_checked(st, txn, result, &mut out),
            Event::FsFrozen { txn, result } => self.on_fs_frozen(st, txn, result, &mut out),
            Event::FsThawed { txn, result } => self.on_fs_thawed(st, txn, result, &mut out),
            Event::TransportLost => self.on_transport_lost(st, &mut out),
            Event::Shutdown => self.on_shutdown(st, &mut out),
            Event::GuardianDied => self.on_guardian_died(st, &mut out),
            Event::Ready => {
                self.ready = true;
                st
            }
            Event::NotReady => {
                self.ready = false;
                st
            }
            Event::Tick => st,
        };
        // R62: replies first; then what may be logged; `Stopped` last.
        out.sort_by_key(|a| match a {
            Action::Notice(_) => 1,
            Action::Report(_) => 2,
            Action::Stopped => 3,
            _ => 0,
        });
        out
    }

    /// Lets time pass: fires every deadline due at `now`.
    pub fn tick(&mut self, now: Millis) -> Vec<Action> {
        self.handle(Event::Tick, now)
    }

    /// The earliest instant at which [`Coordinator::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Millis> {
        let stage = |apps: &AppStage| apps.waiting.values().copied().min();
        match &self.state {
            State::Idle | State::AutoThawed { .. } | State::Stopped => None,
            State::Checking { req, apps, .. } => {
                min_opt(Some(req.deadline), apps.as_ref().and_then(stage))
            }
            State::FreezingApps { req, apps, .. } => min_opt(Some(req.deadline), stage(apps)),
            State::FreezingFs { req, .. } => Some(req.deadline),
            State::Frozen { auto_thaw_at, .. } => *auto_thaw_at,
            State::ThawingFs { req, .. } => req.map(|r| r.deadline),
            State::ThawingApps { req, apps, .. } => min_opt(req.map(|r| r.deadline), stage(apps)),
            State::Compensating { pending, .. } => pending.map(|p| p.deadline),
        }
    }

    pub fn state_kind(&self) -> StateKind {
        match &self.state {
            State::Idle => StateKind::Idle,
            State::AutoThawed { .. } => StateKind::AutoThawed,
            State::Checking { .. } => StateKind::Checking,
            State::FreezingApps { .. } => StateKind::FreezingApps,
            State::FreezingFs { .. } => StateKind::FreezingFs,
            State::Frozen { .. } => StateKind::Frozen,
            State::ThawingFs { .. } => StateKind::ThawingFs,
            State::ThawingApps { .. } => StateKind::ThawingApps,
            State::Compensating { .. } => StateKind::Compensating,
            State::Stopped => StateKind::Stopped,
        }
    }

    /// The transaction in progress, if any.
    pub fn current_txn(&self) -> Option<TxnId> {
        self.txn().map(|t| t.id)
    }

    /// True from FreezeFs until FsThawed (or a failed FsFrozen): the daemon must not write
    /// files or log to disk (R60, R61).
    pub fn fs_may_be_frozen(&self) -> bool {
        self.txn().is_some_and(|t| {
            matches!(
                t.fs_state,
                FsState::Freezing | FsState::Frozen | FsState::Thawing
            )
        })
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Registered participants: id, name, tier.
    pub fn participants(&self) -> impl Iterator<Item = (ParticipantId, &str, u8)> {
        self.participants
            .iter()
            .map(|(id, p)| (*id, p.name.as_str(), p.tier))
    }

    fn txn(&self) -> Option<&Txn> {
        match &self.state {
            State::Checking { txn, .. }
            | State::FreezingApps { txn, .. }
            | State::FreezingFs { txn, .. }
            | State::Frozen { txn, .. }
            | State::ThawingFs { txn, .. }
            | State::ThawingApps { txn, .. }
            | State::Compensating { txn, .. } => Some(txn),
            State::Idle | State::AutoThawed { .. } | State::Stopped => None,
        }
    }

    // ---- time -------------------------------------------------------------------------

    fn advance(&mut self, now: Millis, out: &mut Vec<Action>) {
        self.now = self.now.max(now);
        // Every firing consumes at least one due deadline and new ones lie after `now`
        // unless bounded by a request deadline that is itself due, so this ends quickly.
        for _ in 0..1000 {
            match self.next_deadline() {
                Some(d) if d <= self.now => {
                    let st = std::mem::take(&mut self.state);
                    self.state = self.fire(st, out);
                }
                _ => return,
            }
        }
        debug_assert!(false, "deadline loop did not settle");
    }

    fn fire(&mut self, st: State, out: &mut Vec<Action>) -> State {
        let now = self.now;
        match st {
            State::Checking {
                mut txn,
                req,
                apps: Some(mut apps),
            } => {
                if self.expire_members(&mut txn, &mut apps, out) {
                    return self.check_failed(txn, req, Some(apps), None, out);
                }
                if req.deadline <= now {
                    let f = self.deadline_failure(&txn, Stage::CheckApps, Some(&apps));
                    return self.check_failed(txn, req, Some(apps), Some(f), out);
                }
                self.check_apps_progress(txn, req, apps, out)
            }
            State::Checking {
                txn,
                req,
                apps: None,
            } => {
                let f = self.deadline_failure(&txn, Stage::CheckFs, None);
                self.check_failed(txn, req, None, Some(f), out)
            }
            State::FreezingApps {
                mut txn,
                req,
                mut apps,
            } => {
                if self.expire_members(&mut txn, &mut apps, out) {
                    return self.freeze_failed(txn, req, Some(apps), None, out);
                }
                if req.deadline <= now {
                    let f = self.deadline_failure(&txn, Stage::FreezeApps, Some(&apps));
                    return self.freeze_failed(txn, req, Some(apps), Some(f), out);
                }
                self.freeze_apps_progress(txn, req, apps, out)
            }
            State::FreezingFs { mut txn, req } => {
                // R21: answer at the deadline; the compensation goes on after the reply.
                let f = self.deadline_failure(&txn, Stage::FreezeFs, None);
                self.fail(&mut txn, f, out);
                self.answer(&mut txn, req.request, Status::Fail, out);
                self.compensate(txn, None, Resume::Idle, out)
            }
            State::Frozen { mut txn, .. } => {
                self.fail(&mut txn, Failure::AutoThaw, out);
                txn.early_end = Some(Failure::AutoThaw);
                self.compensate(txn, None, Resume::AutoThawed, out)
            }
            State::ThawingFs {
                mut txn,
                req: Some(req),
            } => {
                let f = self.deadline_failure(&txn, Stage::ThawFs, None);
                self.fail(&mut txn, f, out);
                self.answer(&mut txn, req.request, Status::Fail, out);
                // Applications are thawed only after FsThawed (R54).
                State::ThawingFs { txn, req: None }
            }
            State::ThawingApps {
                mut txn,
                req,
                mut apps,
            } => {
                // A thaw goes on past failures (R47): recorded, next tier.
                self.expire_members(&mut txn, &mut apps, out);
                match req {
                    Some(r) if r.deadline <= now => {
                        let f = self.deadline_failure(&txn, Stage::ThawApps, Some(&apps));
                        self.fail(&mut txn, f, out);
                        // Nobody waits past the deadline: every remaining tier at once.
                        self.thaw_rest_at_once(&mut txn, &mut apps, out);
                        self.answer(&mut txn, r.request, Status::Fail, out);
                        self.end(txn, Resume::Idle, out)
                    }
                    _ => self.thaw_apps_progress(txn, req, apps, out),
                }
            }
            State::Compensating {
                mut txn,
                pending: Some(p),
                resume,
            } => {
                let f = self.deadline_failure(&txn, Stage::ThawFs, None);
                self.fail(&mut txn, f, out);
                self.answer(&mut txn, p.request, Status::Fail, out);
                let resume = if p.op == HostOp::Thaw {
                    Resume::Idle
                } else {
                    resume
                };
                State::Compensating {
                    txn,
                    pending: None,
                    resume,
                }
            }
            other => {
                debug_assert!(false, "fire in a state without deadline");
                other
            }
        }
    }

    /// Marks members whose deadline has passed as timed out and records each (R21).
    /// Returns whether any did.
    fn expire_members(
        &mut self,
        txn: &mut Txn,
        apps: &mut AppStage,
        out: &mut Vec<Action>,
    ) -> bool {
        let now = self.now;
        let expired: Vec<ParticipantId> = apps
            .waiting
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in &expired {
            apps.waiting.remove(p);
            self.settle(txn, *p, apps.op, AppOutcome::TimedOut, None);
            let participant = txn.members[p].name.clone();
            let stage = app_stage(apps.op);
            self.fail(txn, Failure::AppTimedOut { stage, participant }, out);
        }
        !expired.is_empty()
    }

    fn deadline_failure(&self, txn: &Txn, stage: Stage, apps: Option<&AppStage>) -> Failure {
        let waiting_for = apps
            .map(|a| {
                a.waiting
                    .keys()
                    .map(|p| txn.members[p].name.clone())
                    .collect()
            })
            .unwrap_or_default();
        Failure::Deadline { stage, waiting_for }
    }

    // ---- host requests ----------------------------------------------------------------
}

impl State {
    fn txn_mut(&mut self) -> Option<&mut Txn> {
        match self {
            State::Checking { txn, .. }
            | State::FreezingApps { txn, .. }
            | State::FreezingFs { txn, .. }
            | State::Frozen { txn, .. }
            | State::ThawingFs { txn, .. }
            | State::ThawingApps { txn, .. }
            | State::Compensating { txn, .. } => Some(txn),
            State::Idle | State::AutoThawed { .. } | State::Stopped => None,
        }
    }
}
