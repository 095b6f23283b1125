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

    fn on_request(
        &mut self,
        st: State,
        request: RequestId,
        op: HostOp,
        out: &mut Vec<Action>,
    ) -> State {
        if self.stopping || matches!(st, State::Stopped) {
            self.refuse(request, op, Refusal::ShuttingDown, out);
            return st;
        }
        match (st, op) {
            (st @ (State::Idle | State::AutoThawed { .. }), HostOp::Check | HostOp::Freeze)
                if !self.ready =>
            {
                self.refuse(request, op, Refusal::NotReady, out);
                st
            }
            (State::Idle | State::AutoThawed { .. }, HostOp::Check) => {
                self.start_check(request, out)
            }
            (State::Idle | State::AutoThawed { .. }, HostOp::Freeze) => {
                self.start_freeze(request, out)
            }
            (State::Idle, HostOp::Thaw) => {
                if self.ready {
                    out.push(Action::Reply {
                        request,
                        status: Status::Ok,
                    });
                    out.push(Action::Notice(Notice::ThawWithoutFreeze { request }));
                } else {
                    self.refuse(request, op, Refusal::NotReady, out);
                }
                State::Idle
            }
            (State::AutoThawed { txn }, HostOp::Thaw) => {
                out.push(Action::Reply {
                    request,
                    status: Status::Fail,
                });
                out.push(Action::Notice(Notice::ThawAfterAutoThaw { request, txn }));
                State::Idle
            }
            (
                State::Frozen {
                    mut txn,
                    auto_thaw_at,
                },
                HostOp::Freeze,
            ) => {
                // R24: S_OK, stay frozen; the auto-thaw bound is not extended.
                let repeats = txn
                    .requests
                    .iter()
                    .filter(|r| r.op == HostOp::Freeze)
                    .count();
                if repeats <= MAX_REPEATED_FREEZES_LISTED {
                    self.record_request(&mut txn, request, op);
                } else {
                    txn.repeats_not_listed += 1;
                }
                self.answer(&mut txn, request, Status::Ok, out);
                out.push(Action::Notice(Notice::AlreadyFrozen {
                    request,
                    txn: txn.id,
                }));
                State::Frozen { txn, auto_thaw_at }
            }
            (st @ State::Frozen { .. }, HostOp::Check) => {
                self.refuse(request, op, Refusal::CheckWhileFrozen, out);
                st
            }
            (State::Frozen { mut txn, .. }, HostOp::Thaw) => {
                let req = self.record_request(&mut txn, request, op);
                self.issue_thaw_fs(&mut txn, out);
                State::ThawingFs {
                    txn,
                    req: Some(req),
                }
            }
            // R26: THAW during an in-flight FREEZE aborts it: E_FAIL to the FREEZE, then the
            // THAW is answered when compensation has thawed everything.
            (
                State::FreezingApps {
                    mut txn,
                    req,
                    mut apps,
                },
                HostOp::Thaw,
            ) => {
                self.cancel_stage(&mut txn, &mut apps);
                self.abort_freeze_for_thaw(txn, req, request, out)
            }
            (State::FreezingFs { txn, req }, HostOp::Thaw) => {
                self.abort_freeze_for_thaw(txn, req, request, out)
            }
            // A THAW while compensating joins it (unless a THAW is already waiting).
            (
                State::Compensating {
                    mut txn,
                    pending,
                    resume,
                },
                HostOp::Thaw,
            ) if pending.is_none_or(|p| p.op != HostOp::Thaw) => {
                if let Some(p) = pending {
                    self.answer(&mut txn, p.request, Status::Fail, out);
                }
                let thaw = self.record_request(&mut txn, request, op);
                State::Compensating {
                    txn,
                    pending: Some(thaw),
                    resume,
                }
            }
            (st, _) => {
                self.refuse(request, op, Refusal::Busy, out);
                st
            }
        }
    }

    fn abort_freeze_for_thaw(
        &mut self,
        mut txn: Box<Txn>,
        freeze: Pending,
        thaw: RequestId,
        out: &mut Vec<Action>,
    ) -> State {
        self.fail(&mut txn, Failure::AbortedByThaw, out);
        self.answer(&mut txn, freeze.request, Status::Fail, out);
        let thaw = self.record_request(&mut txn, thaw, HostOp::Thaw);
        self.compensate(txn, Some(thaw), Resume::Idle, out)
    }

    fn refuse(&mut self, request: RequestId, op: HostOp, reason: Refusal, out: &mut Vec<Action>) {
        out.push(Action::Reply {
            request,
            status: Status::Fail,
        });
        out.push(Action::Notice(Notice::Refused {
            request,
            op,
            reason,
        }));
    }

    fn new_txn(&mut self, kind: TxnKind) -> Box<Txn> {
        let id = TxnId(self.next_txn);
        self.next_txn += 1;
        let members = self
            .participants
            .iter()
            .map(|(id, p)| {
                (
                    *id,
                    Member {
                        name: p.name.clone(),
                        tier: p.tier,
                        timeout: p.timeout,
                        gone_at: None,
                        ops: Vec::new(),
                    },
                )
            })
            .collect();
        Box::new(Txn {
            id,
            kind,
            started_at: self.now,
            members,
            requests: Vec::new(),
            repeats_not_listed: 0,
            fs: Vec::new(),
            fs_state: FsState::Untouched,
            frozen_at: None,
            freeze_issued_at: None,
            thawed_at: None,
            failures: Vec::new(),
            freeze_ok: false,
            app_hold_lost: false,
            early_end: None,
            thaw_failed: false,
        })
    }

    fn record_request(&mut self, txn: &mut Txn, request: RequestId, op: HostOp) -> Pending {
        txn.requests.push(ReqRec {
            request,
            op,
            received_at: self.now,
            answer: None,
        });
        Pending {
            request,
            op,
            deadline: self.now.after(self.limits.deadline_for(op)),
        }
    }

    fn answer(&mut self, txn: &mut Txn, request: RequestId, status: Status, out: &mut Vec<Action>) {
        out.push(Action::Reply { request, status });
        if let Some(r) = txn.requests.iter_mut().find(|r| r.request == request) {
            r.answer = Some(Answer::Replied {
                status,
                at: self.now,
            });
        }
    }

    fn unanswerable(&mut self, txn: &mut Txn, request: RequestId, out: &mut Vec<Action>) {
        out.push(Action::Unanswerable { request });
        if let Some(r) = txn.requests.iter_mut().find(|r| r.request == request) {
            r.answer = Some(Answer::Unanswerable { at: self.now });
        }
    }

    fn fail(&mut self, txn: &mut Txn, failure: Failure, out: &mut Vec<Action>) {
        out.push(Action::Notice(Notice::Failed {
            txn: txn.id,
            failure: failure.clone(),
        }));
        txn.failures.push(failure);
    }

    fn fs_issue(&mut self, txn: &mut Txn, stage: Stage) {
        txn.fs.push(FsStageRecord {
            stage,
            issued_at: self.now,
            completed_at: None,
            result: None,
        });
    }

    fn fs_done(&mut self, txn: &mut Txn, stage: Stage, result: &FsResult) {
        if let Some(r) = txn
            .fs
            .iter_mut()
            .rev()
            .find(|r| r.stage == stage && r.result.is_none())
        {
            r.completed_at = Some(self.now);
            r.result = Some(result.clone());
        }
    }

    fn issue_thaw_fs(&mut self, txn: &mut Txn, out: &mut Vec<Action>) {
        out.push(Action::ThawFs { txn: txn.id });
        self.fs_issue(txn, Stage::ThawFs);
        txn.fs_state = FsState::Thawing;
    }

    // ---- CHECK ------------------------------------------------------------------------

    fn start_check(&mut self, request: RequestId, out: &mut Vec<Action>) -> State {
        let mut txn = self.new_txn(TxnKind::Check);
        let req = self.record_request(&mut txn, request, HostOp::Check);
        let apps = self.start_apps(&txn, AppOp::Check);
        self.check_apps_progress(txn, req, apps, out)
    }

    fn check_apps_progress(
        &mut self,
        mut txn: Box<Txn>,
        req: Pending,
        mut apps: AppStage,
        out: &mut Vec<Action>,
    ) -> State {
        if self.next_tier(&mut txn, &mut apps, Some(req.deadline), out) {
            return State::Checking {
                txn,
                req,
                apps: Some(apps),
            };
        }
        out.push(Action::CheckFs { txn: txn.id });
        self.fs_issue(&mut txn, Stage::CheckFs);
        txn.fs_state = FsState::Checking;
        State::Checking {
            txn,
            req,
            apps: None,
        }
    }

    fn check_failed(
        &mut self,
        mut txn: Box<Txn>,
        req: Pending,
        apps: Option<AppStage>,
        failure: Option<Failure>,
        out: &mut Vec<Action>,
    ) -> State {
        if let Some(mut apps) = apps {
            self.cancel_stage(&mut txn, &mut apps);
        }
        if let Some(f) = failure {
            self.fail(&mut txn, f, out);
        }
        self.answer(&mut txn, req.request, Status::Fail, out);
        self.end(txn, Resume::Idle, out)
    }

    // ---- FREEZE -----------------------------------------------------------------------

    fn start_freeze(&mut self, request: RequestId, out: &mut Vec<Action>) -> State {
        let mut txn = self.new_txn(TxnKind::Backup);
        let req = self.record_request(&mut txn, request, HostOp::Freeze);
        let apps = self.start_apps(&txn, AppOp::Freeze);
        self.freeze_apps_progress(txn, req, apps, out)
    }

    fn freeze_apps_progress(
        &mut self,
        mut txn: Box<Txn>,
        req: Pending,
        mut apps: AppStage,
        out: &mut Vec<Action>,
    ) -> State {
        if self.next_tier(&mut txn, &mut apps, Some(req.deadline), out) {
            return State::FreezingApps { txn, req, apps };
        }
        // R54: every application holds before the first FIFREEZE.
        out.push(Action::FreezeFs { txn: txn.id });
        self.fs_issue(&mut txn, Stage::FreezeFs);
        txn.fs_state = FsState::Freezing;
        txn.freeze_issued_at = Some(self.now);
        State::FreezingFs { txn, req }
    }

    /// The first failure of a FREEZE: compensate, then answer E_FAIL (§5 Compensating).
    fn freeze_failed(
        &mut self,
        mut txn: Box<Txn>,
        req: Pending,
        apps: Option<AppStage>,
        failure: Option<Failure>,
        out: &mut Vec<Action>,
    ) -> State {
        if let Some(mut apps) = apps {
            self.cancel_stage(&mut txn, &mut apps);
        }
        if let Some(f) = failure {
            self.fail(&mut txn, f, out);
        }
        self.compensate(txn, Some(req), Resume::Idle, out)
    }

    // ---- THAW -------------------------------------------------------------------------

    fn thaw_apps_progress(
        &mut self,
        mut txn: Box<Txn>,
        req: Option<Pending>,
        mut apps: AppStage,
        out: &mut Vec<Action>,
    ) -> State {
        if self.stopping {
            self.thaw_rest_at_once(&mut txn, &mut apps, out);
        } else if self.next_tier(&mut txn, &mut apps, req.map(|r| r.deadline), out) {
            return State::ThawingApps { txn, req, apps };
        }
        if let Some(r) = req {
            // §5: E_FAIL if any stage failed.
            let status = if txn.failures.is_empty() {
                Status::Ok
            } else {
                Status::Fail
            };
            self.answer(&mut txn, r.request, status, out);
        }
        self.end(txn, Resume::Idle, out)
    }

    /// Tells every member still owed a Thaw at once, without waiting for acks.
    fn thaw_rest_at_once(&mut self, txn: &mut Txn, apps: &mut AppStage, out: &mut Vec<Action>) {
        self.cancel_stage(txn, apps);
        let mut owed: Vec<(u8, ParticipantId)> = txn
            .members
            .iter()
            .filter(|(_, m)| m.owed_thaw_or_abort())
            .map(|(p, m)| (m.tier, *p))
            .collect();
        owed.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, p) in owed {
            // Nobody waits for these acks: their deadline is now.
            let now = self.now;
            self.send(txn, p, AppOp::Thaw, Some(now), out);
            self.settle(txn, p, AppOp::Thaw, AppOutcome::NoAnswer, None);
        }
        apps.rest.clear();
    }

    // ---- application stages -------------------------------------------------------------

    /// The tiers of an application stage: ascending for Check/Freeze, descending for Thaw
    /// (R18). Nothing is sent until [`Coordinator::next_tier`].
    fn start_apps(&self, txn: &Txn, op: AppOp) -> AppStage {
        let tiers: BTreeSet<u8> = txn
            .members
            .values()
            .filter(|m| Self::eligible(m, op))
            .map(|m| m.tier)
            .collect();
        let rest: VecDeque<u8> = if op == AppOp::Thaw {
            tiers.into_iter().rev().collect()
        } else {
            tiers.into_iter().collect()
        };
        AppStage {
            op,
            rest,
            waiting: BTreeMap::new(),
        }
    }

    fn eligible(m: &Member, op: AppOp) -> bool {
        m.gone_at.is_none()
            && match op {
                AppOp::Thaw => m.owed_thaw_or_abort(),
                _ => !m.told(op),
            }
    }

    /// If the current tier is done, starts the next one that has members. Returns true
    /// while some member owes an ack.
    fn next_tier(
        &mut self,
        txn: &mut Txn,
        apps: &mut AppStage,
        req_deadline: Option<Millis>,
        out: &mut Vec<Action>,
    ) -> bool {
        while apps.waiting.is_empty() {
            let Some(tier) = apps.rest.pop_front() else {
                return false;
            };
            let ids: Vec<ParticipantId> = txn
                .members
                .iter()
                .filter(|(_, m)| m.tier == tier && Self::eligible(m, apps.op))
                .map(|(p, _)| *p)
                .collect();
            for p in ids {
                let own = self.now.after(txn.members[&p].timeout);
                let deadline = req_deadline.map_or(own, |d| d.min(own));
                self.send(txn, p, apps.op, Some(deadline), out);
                apps.waiting.insert(p, deadline);
            }
        }
        true
    }

    /// Tells `p` to do `op`: `deadline` is when its ack stops being waited for (None for
    /// Abort, which carries the transaction's reason instead).
    fn send(
        &mut self,
        txn: &mut Txn,
        p: ParticipantId,
        op: AppOp,
        deadline: Option<Millis>,
        out: &mut Vec<Action>,
    ) {
        let reason = (op == AppOp::Abort).then(|| Self::abort_reason(txn));
        out.push(Action::NotifyApp {
            participant: p,
            txn: txn.id,
            op,
            deadline,
            reason,
        });
        if let Some(m) = txn.members.get_mut(&p) {
            m.ops.push(OpRec {
                op,
                sent_at: self.now,
                outcome: (op == AppOp::Abort).then_some(AppOutcome::NotAcked),
                answered_at: None,
            });
        }
    }

    /// Why a transaction's participants are aborted: what ended it early (auto-thaw,
    /// guardian, transport, shutdown), else its first failure.
    fn abort_reason(txn: &Txn) -> Failure {
        txn.early_end
            .clone()
            .or_else(|| txn.failures.first().cloned())
            // Not reachable: compensation always follows a recorded failure.
            .unwrap_or(Failure::Shutdown)
    }

    /// Records the outcome of the open notification `op` to `p`; if we gave up waiting
    /// (anything but an answer), its ack will be "late".
    fn settle(
        &mut self,
        txn: &mut Txn,
        p: ParticipantId,
        op: AppOp,
        outcome: AppOutcome,
        answered_at: Option<Millis>,
    ) {
        let Some(m) = txn.members.get_mut(&p) else {
            return;
        };
        if let Some(r) = m
            .ops
            .iter_mut()
            .rev()
            .find(|r| r.op == op && r.outcome.is_none())
        {
            r.outcome = Some(outcome);
            r.answered_at = answered_at;
            if answered_at.is_none() && outcome != AppOutcome::Gone {
                if self.late.len() == LATE_WINDOW {
                    self.late.pop_front();
                }
                self.late.push_back((p, txn.id, op));
            }
        }
    }

    /// Stops waiting for the current tier (its acks become late) and drops later tiers.
    fn cancel_stage(&mut self, txn: &mut Txn, apps: &mut AppStage) {
        let waiting: Vec<ParticipantId> = apps.waiting.keys().copied().collect();
        for p in waiting {
            self.settle(txn, p, apps.op, AppOutcome::NoAnswer, None);
        }
        apps.waiting.clear();
        apps.rest.clear();
    }

    // ---- acks and departures --------------------------------------------------------------

    fn on_ack(
        &mut self,
        st: State,
        participant: ParticipantId,
        txn_id: TxnId,
        op: AppOp,
        ok: bool,
        out: &mut Vec<Action>,
    ) -> State {
        if !self.participants.contains_key(&participant) {
            // Nobody to answer: the daemon only forwards acks of registered clients.
            return st;
        }
        let expected = |txn: &Txn, apps: &AppStage| {
            txn.id == txn_id && apps.op == op && apps.waiting.contains_key(&participant)
        };
        match st {
            State::Checking {
                mut txn,
                req,
                apps: Some(mut apps),
            } if expected(&txn, &apps) => {
                match self.take_ack(&mut txn, &mut apps, participant, ok) {
                    Some(f) => self.check_failed(txn, req, Some(apps), Some(f), out),
                    None => self.check_apps_progress(txn, req, apps, out),
                }
            }
            State::FreezingApps {
                mut txn,
                req,
                mut apps,
            } if expected(&txn, &apps) => {
                match self.take_ack(&mut txn, &mut apps, participant, ok) {
                    Some(f) => self.freeze_failed(txn, req, Some(apps), Some(f), out),
                    None => self.freeze_apps_progress(txn, req, apps, out),
                }
            }
            State::ThawingApps {
                mut txn,
                req,
                mut apps,
            } if expected(&txn, &apps) => {
                if let Some(f) = self.take_ack(&mut txn, &mut apps, participant, ok) {
                    self.fail(&mut txn, f, out);
                }
                self.thaw_apps_progress(txn, req, apps, out)
            }
            st => {
                let reason = if self.late.contains(&(participant, txn_id, op)) {
                    AckRejection::Late
                } else {
                    AckRejection::Unexpected
                };
                out.push(Action::RejectAck {
                    participant,
                    txn: txn_id,
                    op,
                    reason,
                });
                st
            }
        }
    }

    fn take_ack(
        &mut self,
        txn: &mut Txn,
        apps: &mut AppStage,
        p: ParticipantId,
        ok: bool,
    ) -> Option<Failure> {
        apps.waiting.remove(&p);
        let outcome = if ok {
            AppOutcome::Ok
        } else {
            AppOutcome::Failed
        };
        self.settle(txn, p, apps.op, outcome, Some(self.now));
        (!ok).then(|| Failure::AppFailed {
            stage: app_stage(apps.op),
            participant: txn.members[&p].name.clone(),
        })
    }

    fn on_gone(&mut self, st: State, p: ParticipantId, out: &mut Vec<Action>) -> State {
        if self.participants.remove(&p).is_none() {
            return st;
        }
        let now = self.now;
        let mark = |txn: &mut Txn| -> Option<(String, bool)> {
            let m = txn.members.get_mut(&p)?;
            let holding = m.owed_thaw_or_abort();
            m.gone_at = Some(now);
            Some((m.name.clone(), holding))
        };
        match st {
            State::Checking {
                mut txn,
                req,
                apps: Some(mut apps),
            } if apps.waiting.contains_key(&p) => {
                let f = self.gone_in_stage(&mut txn, &mut apps, p, mark);
                self.check_failed(txn, req, Some(apps), Some(f), out)
            }
            State::FreezingApps {
                mut txn,
                req,
                mut apps,
            } => {
                if apps.waiting.contains_key(&p) {
                    let f = self.gone_in_stage(&mut txn, &mut apps, p, mark);
                    return self.freeze_failed(txn, req, Some(apps), Some(f), out);
                }
                match mark(&mut txn) {
                    // An earlier tier's holder is lost: the freeze cannot be app-consistent.
                    Some((name, true)) => {
                        let f = Failure::AppGone {
                            stage: Stage::FreezeApps,
                            participant: name,
                        };
                        self.freeze_failed(txn, req, Some(apps), Some(f), out)
                    }
                    _ => State::FreezingApps { txn, req, apps },
                }
            }
            State::ThawingApps {
                mut txn,
                req,
                mut apps,
            } if apps.waiting.contains_key(&p) => {
                let f = self.gone_in_stage(&mut txn, &mut apps, p, mark);
                self.fail(&mut txn, f, out);
                self.thaw_apps_progress(txn, req, apps, out)
            }
            // A holder lost during the filesystem freeze fails the FREEZE (R47).
            State::FreezingFs { mut txn, req } => match mark(&mut txn) {
                Some((name, true)) => {
                    let f = Failure::AppGone {
                        stage: Stage::FreezeFs,
                        participant: name,
                    };
                    self.freeze_failed(txn, req, None, Some(f), out)
                }
                _ => State::FreezingFs { txn, req },
            },
            // A holder lost while frozen: the filesystems stay frozen for the host; the
            // snapshot is only fs-consistent and THAW will answer E_FAIL.
            State::Frozen {
                mut txn,
                auto_thaw_at,
            } => {
                if let Some((name, true)) = mark(&mut txn) {
                    txn.app_hold_lost = true;
                    self.fail(
                        &mut txn,
                        Failure::AppGone {
                            stage: Stage::Frozen,
                            participant: name,
                        },
                        out,
                    );
                }
                State::Frozen { txn, auto_thaw_at }
            }
            mut st => {
                if let Some(txn) = st.txn_mut() {
                    mark(txn);
                }
                st
            }
        }
    }

    fn gone_in_stage(
        &mut self,
        txn: &mut Txn,
        apps: &mut AppStage,
        p: ParticipantId,
        mark: impl FnOnce(&mut Txn) -> Option<(String, bool)>,
    ) -> Failure {
        apps.waiting.remove(&p);
        self.settle(txn, p, apps.op, AppOutcome::Gone, None);
        let name = mark(txn).map(|(n, _)| n).unwrap_or_default();
        Failure::AppGone {
            stage: app_stage(apps.op),
            participant: name,
        }
    }

    // ---- filesystem answers -----------------------------------------------------------

    fn on_fs_checked(
        &mut self,
        st: State,
        id: TxnId,
        result: FsResult,
        out: &mut Vec<Action>,
    ) -> State {
        match st {
            State::Checking {
                mut txn,
                req,
                apps: None,
            } if txn.id == id => {
                self.fs_done(&mut txn, Stage::CheckFs, &result);
                txn.fs_state = FsState::Checked;
                match result {
                    Ok(()) => {
                        self.answer(&mut txn, req.request, Status::Ok, out);
                        self.end(txn, Resume::Idle, out)
                    }
                    Err(e) => {
                        let f = Failure::Fs {
                            stage: Stage::CheckFs,
                            detail: e.detail,
                        };
                        self.check_failed(txn, req, None, Some(f), out)
                    }
                }
            }
            st => st,
        }
    }

    fn on_fs_frozen(
        &mut self,
        st: State,
        id: TxnId,
        result: FsResult,
        out: &mut Vec<Action>,
    ) -> State {
        match st {
            State::FreezingFs { mut txn, req } if txn.id == id => {
                self.fs_done(&mut txn, Stage::FreezeFs, &result);
                match result {
                    Ok(()) => {
                        txn.fs_state = FsState::Frozen;
                        txn.frozen_at = Some(self.now);
                        txn.freeze_ok = true;
                        self.answer(&mut txn, req.request, Status::Ok, out);
                        let auto_thaw_at = match self.limits.auto_thaw {
                            AutoThaw::After(d) => Some(self.now.after(d)),
                            AutoThaw::Disabled => None,
                        };
                        State::Frozen { txn, auto_thaw_at }
                    }
                    Err(e) => {
                        // The freezer rolled back: nothing of ours is frozen.
                        txn.fs_state = FsState::FreezeFailed;
                        let f = Failure::Fs {
                            stage: Stage::FreezeFs,
                            detail: e.detail,
                        };
                        self.freeze_failed(txn, req, None, Some(f), out)
                    }
                }
            }
            mut st => {
                // A freeze that finished after ThawFs went out: only recorded.
                if let Some(txn) = st.txn_mut().filter(|t| t.id == id) {
                    self.fs_done(txn, Stage::FreezeFs, &result);
                }
                st
            }
        }
    }

    fn on_fs_thawed(
        &mut self,
        st: State,
        id: TxnId,
        result: FsResult,
        out: &mut Vec<Action>,
    ) -> State {
        let ours = |txn: &Txn| txn.id == id && txn.fs_state == FsState::Thawing;
        match st {
            State::ThawingFs { mut txn, req } if ours(&txn) => {
                self.thawed(&mut txn, result, out);
                let apps = self.start_apps(&txn, AppOp::Thaw);
                self.thaw_apps_progress(txn, req, apps, out)
            }
            State::Compensating {
                mut txn,
                pending,
                resume,
            } if ours(&txn) => {
                self.thawed(&mut txn, result, out);
                self.finish_compensation(txn, pending, resume, out)
            }
            st => st,
        }
    }

    fn thawed(&mut self, txn: &mut Txn, result: FsResult, out: &mut Vec<Action>) {
        self.fs_done(txn, Stage::ThawFs, &result);
        txn.fs_state = FsState::Thawed;
        txn.thawed_at = Some(self.now);
        if let Err(e) = result {
            txn.thaw_failed = true;
            self.fail(
                txn,
                Failure::Fs {
                    stage: Stage::ThawFs,
                    detail: e.detail,
                },
                out,
            );
        }
    }

    // ---- loss of the host, the guardian, or the daemon -----------------------------------

    fn on_transport_lost(&mut self, st: State, out: &mut Vec<Action>) -> State {
        self.abandon(st, Failure::TransportLost, out)
    }

    fn on_shutdown(&mut self, st: State, out: &mut Vec<Action>) -> State {
        self.stopping = true;
        match st {
            State::Idle | State::AutoThawed { .. } => {
                out.push(Action::Stopped);
                State::Stopped
            }
            st => self.abandon(st, Failure::Shutdown, out),
        }
    }

    /// Transport loss or shutdown: the pending request is answered E_FAIL (shutdown, R63)
    /// or declared unanswerable (transport); anything frozen or freezing is thawed and its
    /// applications aborted; a THAW already running runs to its end.
    fn abandon(&mut self, st: State, why: Failure, out: &mut Vec<Action>) -> State {
        let transport = why == Failure::TransportLost;
        let close = |me: &mut Self, txn: &mut Txn, p: Pending, out: &mut Vec<Action>| {
            if transport {
                me.unanswerable(txn, p.request, out);
            } else {
                me.answer(txn, p.request, Status::Fail, out);
            }
        };
        match st {
            State::Checking { mut txn, req, apps } => {
                if let Some(mut apps) = apps {
                    self.cancel_stage(&mut txn, &mut apps);
                }
                self.fail(&mut txn, why, out);
                close(self, &mut txn, req, out);
                self.end(txn, Resume::Idle, out)
            }
            State::FreezingApps {
                mut txn,
                req,
                mut apps,
            } => {
                self.cancel_stage(&mut txn, &mut apps);
                self.fail(&mut txn, why, out);
                close(self, &mut txn, req, out);
                self.compensate(txn, None, Resume::Idle, out)
            }
            State::FreezingFs { mut txn, req } => {
                self.fail(&mut txn, why, out);
                close(self, &mut txn, req, out);
                self.compensate(txn, None, Resume::Idle, out)
            }
            State::Frozen { mut txn, .. } => {
                self.fail(&mut txn, why.clone(), out);
                txn.early_end = Some(why);
                // After a transport loss a THAW on the new channel gets E_FAIL (R25).
                self.compensate(txn, None, Resume::AutoThawed, out)
            }
            State::ThawingFs { mut txn, req } => {
                if let Some(p) = req {
                    self.fail(&mut txn, why, out);
                    close(self, &mut txn, p, out);
                }
                State::ThawingFs { txn, req: None }
            }
            State::ThawingApps { mut txn, req, apps } => {
                if let Some(p) = req {
                    self.fail(&mut txn, why, out);
                    close(self, &mut txn, p, out);
                }
                self.thaw_apps_progress(txn, None, apps, out)
            }
            State::Compensating {
                mut txn,
                pending,
                resume,
            } => {
                let resume = match pending {
                    Some(p) => {
                        close(self, &mut txn, p, out);
                        // A THAW answered here (E_FAIL at shutdown) has had its R25 answer.
                        // One lost with the transport has not: the host sends it again on
                        // the new channel, and that one must still get E_FAIL.
                        if p.op == HostOp::Thaw && !transport {
                            Resume::Idle
                        } else {
                            resume
                        }
                    }
                    None => resume,
                };
                State::Compensating {
                    txn,
                    pending: None,
                    resume,
                }
            }
            st @ (State::Idle | State::AutoThawed { .. } | State::Stopped) => st,
        }
    }

    fn on_guardian_died(&mut self, st: State, out: &mut Vec<Action>) -> State {
        match st {
            State::FreezingApps { txn, req, apps } => {
                self.freeze_failed(txn, req, Some(apps), Some(Failure::GuardianDied), out)
            }
            State::FreezingFs { txn, req } => {
                self.freeze_failed(txn, req, None, Some(Failure::GuardianDied), out)
            }
            State::Frozen { mut txn, .. } => {
                self.fail(&mut txn, Failure::GuardianDied, out);
                txn.early_end = Some(Failure::GuardianDied);
                self.compensate(txn, None, Resume::AutoThawed, out)
            }
            st => st,
        }
    }

    // ---- compensation and the end of a transaction ----------------------------------------

    /// R19: thaw what froze (or may be freezing), then abort every participant told to
    /// freeze, then answer `pending`.
    fn compensate(
        &mut self,
        mut txn: Box<Txn>,
        pending: Option<Pending>,
        resume: Resume,
        out: &mut Vec<Action>,
    ) -> State {
        if matches!(txn.fs_state, FsState::Freezing | FsState::Frozen) {
            self.issue_thaw_fs(&mut txn, out);
        }
        if txn.fs_state == FsState::Thawing {
            return State::Compensating {
                txn,
                pending,
                resume,
            };
        }
        self.finish_compensation(txn, pending, resume, out)
    }

    fn finish_compensation(
        &mut self,
        mut txn: Box<Txn>,
        pending: Option<Pending>,
        mut resume: Resume,
        out: &mut Vec<Action>,
    ) -> State {
        // R46: abort in reverse tier order, after the last FITHAW (R54).
        let mut owed: Vec<(u8, ParticipantId)> = txn
            .members
            .iter()
            .filter(|(_, m)| m.owed_thaw_or_abort())
            .map(|(p, m)| (m.tier, *p))
            .collect();
        owed.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, p) in owed {
            self.send(&mut txn, p, AppOp::Abort, None, out);
        }
        if let Some(p) = pending {
            let status = if p.op == HostOp::Thaw && resume == Resume::Idle && !txn.thaw_failed {
                Status::Ok
            } else {
                Status::Fail
            };
            if p.op == HostOp::Thaw {
                // This THAW is the one an auto-thaw owed E_FAIL to.
                resume = Resume::Idle;
            }
            self.answer(&mut txn, p.request, status, out);
        }
        if let Some(cause) = txn.early_end.clone().filter(|f| *f != Failure::Shutdown) {
            let frozen_ms = match (txn.frozen_at, txn.thawed_at) {
                (Some(a), Some(b)) => b.since(a),
                _ => 0,
            };
            out.push(Action::Notice(Notice::AutoThawed {
                txn: txn.id,
                cause,
                frozen_ms,
            }));
        }
        self.end(txn, resume, out)
    }

    /// Closes a transaction: emits its report and picks the next state.
    fn end(&mut self, mut txn: Box<Txn>, resume: Resume, out: &mut Vec<Action>) -> State {
        // Whatever is still unanswered will never be waited for again.
        let open: Vec<(ParticipantId, AppOp)> = txn
            .members
            .iter()
            .flat_map(|(p, m)| {
                m.ops
                    .iter()
                    .filter(|r| r.outcome.is_none())
                    .map(move |r| (*p, r.op))
            })
            .collect();
        for (p, op) in open {
            self.settle(&mut txn, p, op, AppOutcome::NoAnswer, None);
        }
        let id = txn.id;
        out.push(Action::Report(Box::new(self.report(*txn))));
        if self.stopping {
            out.push(Action::Stopped);
            return State::Stopped;
        }
        match resume {
            Resume::Idle => State::Idle,
            Resume::AutoThawed => State::AutoThawed { txn: id },
        }
    }

    fn report(&self, txn: Txn) -> TxnReport {
        let first = txn.failures.first().cloned();
        let verdict = match (txn.kind, first) {
            (TxnKind::Check, None) => Verdict::CheckPassed,
            (TxnKind::Backup, _) if txn.freeze_ok => match txn.early_end.clone() {
                Some(reason) => Verdict::Failed { reason },
                None if txn.members.is_empty() || txn.app_hold_lost => Verdict::FsConsistent,
                None => Verdict::AppConsistent,
            },
            (_, Some(reason)) => Verdict::Failed { reason },
            (_, None) => Verdict::Failed {
                // Not reachable: a FREEZE that did not succeed always recorded why.
                reason: Failure::Shutdown,
            },
        };
        let frozen_window = match (txn.frozen_at.or(txn.freeze_issued_at), txn.thawed_at) {
            (Some(frozen_at), Some(thawed_at)) => Some(FrozenWindow {
                frozen_at,
                thawed_at,
            }),
            _ => None,
        };
        TxnReport {
            repeated_freezes_not_listed: txn.repeats_not_listed,
            txn: txn.id,
            kind: txn.kind,
            started_at: txn.started_at,
            ended_at: self.now,
            requests: txn
                .requests
                .into_iter()
                .map(|r| RequestRecord {
                    request: r.request,
                    op: r.op,
                    received_at: r.received_at,
                    // Every request is answered before its transaction ends.
                    answer: r.answer.unwrap_or(Answer::Unanswerable { at: self.now }),
                })
                .collect(),
            participants: txn
                .members
                .into_iter()
                .map(|(id, m)| ParticipantReport {
                    id,
                    name: m.name,
                    tier: m.tier,
                    gone_at: m.gone_at,
                    ops: m
                        .ops
                        .into_iter()
                        .map(|r| AppOpRecord {
                            op: r.op,
                            sent_at: r.sent_at,
                            outcome: r.outcome.unwrap_or(AppOutcome::NoAnswer),
                            answered_at: r.answered_at,
                        })
                        .collect(),
                })
                .collect(),
            fs: txn.fs,
            frozen_window,
            failures: txn.failures,
            verdict,
        }
    }
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
