//! Property tests: random event sequences against an independent invariant checker.
//!
//! The checker knows nothing of the coordinator's states; it only watches the event stream
//! and the actions, like the daemon would, and asserts:
//! 1. every host request gets exactly one Reply or one Unanswerable, never two;
//! 2. filesystems are thawed within their bound: while the FREEZE is unanswered, by its
//!    deadline; after S_OK, by the auto-thaw bound; at once on E_FAIL, transport loss,
//!    shutdown or guardian loss; and after the run, driving time forward with no host input
//!    ends with nothing frozen and every ThawFs answered;
//! 3. every participant told Freeze gets exactly one Thaw or Abort afterwards, never an op
//!    after it, never any op after it disconnected;
//! 4. FreezeFs only after every member's freeze ack; Thaw/Abort to an app only after the
//!    filesystems of its transaction are thawed (or never froze);
//! 5. no action names a participant for a transaction it was not a member of;
//! 6. every notification but Abort carries an ack deadline, never in the past, never past
//!    the participant's own timeout nor its host request's deadline; every Abort carries a
//!    reason;
//!
//! plus: replies precede notices/reports in a batch, a rejected ack leaves the coordinator
//! exactly as it was, one report per transaction emitted only once nothing of it is frozen.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hv_vss_core::{
    AckRejection, Action, AppOp, AutoThaw, Coordinator, Event, FsError, HostOp, Limits, Millis,
    ParticipantId, Registration, RequestId, StateKind, Status, TxnId,
};
use proptest::prelude::*;

/// A host request's whole-chain budget in ms.
fn request_deadline_ms(limits: &Limits, op: HostOp) -> u64 {
    let d = match op {
        HostOp::Check => limits.check_deadline,
        HostOp::Freeze => limits.freeze_deadline,
        HostOp::Thaw => limits.thaw_deadline,
    };
    d.as_millis() as u64
}

#[derive(Clone, Debug)]
enum Op {
    Host(HostOp),
    /// Ack one of the notifications the harness has not acked yet.
    AckOutstanding {
        idx: usize,
        ok: bool,
    },
    /// Ack anything at all.
    AckRandom {
        p: usize,
        txn_back: u64,
        op: AppOp,
        ok: bool,
    },
    Gone(usize),
    Register {
        tier: u8,
        timeout_ms: Option<u64>,
    },
    /// The freezer answers one of its outstanding commands.
    FsRespond {
        idx: usize,
        ok: bool,
    },
    /// A bogus freezer answer.
    FsRandom {
        kind: u8,
        txn_back: u64,
        ok: bool,
    },
    Advance(u64),
    /// Jump exactly to the next deadline (or one ms before it).
    ToDeadline {
        before: bool,
    },
    TransportLost,
    Shutdown,
    GuardianDied,
    Ready,
    NotReady,
}

fn app_op() -> impl Strategy<Value = AppOp> {
    prop_oneof![
        Just(AppOp::Check),
        Just(AppOp::Freeze),
        Just(AppOp::Thaw),
        Just(AppOp::Abort)
    ]
}

fn tier() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(0u8),
        Just(100u8),
        Just(100u8),
        Just(255u8),
        any::<u8>()
    ]
}

fn timeout_ms() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        Just(None),
        Just(Some(1)),
        Just(Some(5_000)),
        Just(Some(60_000))
    ]
}

/// `coop` weighs cooperative events (acks, freezer answers) against disruptions.
fn op(coop: u32) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop_oneof![Just(HostOp::Check), Just(HostOp::Freeze), Just(HostOp::Freeze), Just(HostOp::Thaw), Just(HostOp::Thaw)].prop_map(Op::Host),
        8 * coop => (any::<usize>(), prop::bool::weighted(0.85)).prop_map(|(idx, ok)| Op::AckOutstanding { idx, ok }),
        1 => (any::<usize>(), 0u64..3, app_op(), any::<bool>()).prop_map(|(p, txn_back, op, ok)| Op::AckRandom { p, txn_back, op, ok }),
        1 => any::<usize>().prop_map(Op::Gone),
        1 => (tier(), timeout_ms()).prop_map(|(tier, timeout_ms)| Op::Register { tier, timeout_ms }),
        7 * coop => (any::<usize>(), prop::bool::weighted(0.85)).prop_map(|(idx, ok)| Op::FsRespond { idx, ok }),
        1 => (0u8..3, 0u64..3, any::<bool>()).prop_map(|(kind, txn_back, ok)| Op::FsRandom { kind, txn_back, ok }),
        3 => prop_oneof![4 => Just(1u64), 4 => Just(10), 4 => Just(1_000), 2 => Just(4_999), 2 => Just(30_000), 1 => Just(600_000)].prop_map(Op::Advance),
        3 => any::<bool>().prop_map(|before| Op::ToDeadline { before }),
        1 => Just(Op::TransportLost),
        1 => Just(Op::GuardianDied),
        1 => Just(Op::Ready),
        1 => prop::bool::weighted(0.3).prop_map(|n| if n { Op::NotReady } else { Op::Ready }),
        // Rare, since it ends the interesting part of a run.
        1 => prop::bool::weighted(0.05).prop_map(|s| if s { Op::Shutdown } else { Op::Ready }),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum FsCmd {
    Check,
    Freeze,
    Thaw,
}

#[derive(Debug, Default)]
struct FsTrack {
    freeze_issued: bool,
    freeze_failed_fed: bool,
    thaw_issued: bool,
    thawed_fed: bool,
}

#[derive(Debug)]
struct ReqInfo {
    op: HostOp,
    received: u64,
    answers: u32,
    answered_at: Option<(u64, Status)>,
}

struct Harness {
    c: Coordinator,
    limits: Limits,
    now: u64,
    next_req: u64,
    next_pid: u64,
    registered: BTreeSet<ParticipantId>,
    /// Each participant's own ack timeout, in ms.
    timeouts: BTreeMap<ParticipantId, u64>,
    gone: BTreeSet<ParticipantId>,
    requests: BTreeMap<RequestId, ReqInfo>,
    members: BTreeMap<TxnId, BTreeSet<ParticipantId>>,
    freeze_req: BTreeMap<TxnId, RequestId>,
    sent: BTreeMap<(ParticipantId, TxnId), Vec<AppOp>>,
    accepted_ok: BTreeSet<(ParticipantId, TxnId, AppOp)>,
    acked: BTreeSet<(ParticipantId, TxnId, AppOp)>,
    outstanding_acks: Vec<(ParticipantId, TxnId, AppOp)>,
    fs: BTreeMap<TxnId, FsTrack>,
    outstanding_fs: Vec<(FsCmd, TxnId)>,
    reports: BTreeSet<TxnId>,
    max_txn: u64,
    shutdown: bool,
    stopped: bool,
}

impl Harness {
    fn new(limits: Limits, tiers: &[(u8, Option<u64>)], ready: bool) -> Self {
        let mut h = Harness {
            c: Coordinator::new(limits, Millis(0)).unwrap(),
            limits,
            now: 0,
            next_req: 1,
            next_pid: 1,
            registered: BTreeSet::new(),
            timeouts: BTreeMap::new(),
            gone: BTreeSet::new(),
            requests: BTreeMap::new(),
            members: BTreeMap::new(),
            freeze_req: BTreeMap::new(),
            sent: BTreeMap::new(),
            accepted_ok: BTreeSet::new(),
            acked: BTreeSet::new(),
            outstanding_acks: Vec::new(),
            fs: BTreeMap::new(),
            outstanding_fs: Vec::new(),
            reports: BTreeSet::new(),
            max_txn: 0,
            shutdown: false,
            stopped: false,
        };
        for &(tier, t) in tiers {
            h.register(tier, t);
        }
        if ready {
            h.feed(Event::Ready);
        }
        h
    }

    fn register(&mut self, tier: u8, timeout_ms: Option<u64>) {
        let id = ParticipantId(self.next_pid);
        self.next_pid += 1;
        let res = self.c.register(Registration {
            id,
            name: format!("app{}", id.0),
            tier,
            timeout: timeout_ms.map(Duration::from_millis),
        });
        if self.shutdown {
            assert!(res.is_err(), "registration accepted after shutdown");
        } else {
            res.unwrap();
            self.registered.insert(id);
            let own = timeout_ms.unwrap_or(self.limits.client_timeout.as_millis() as u64);
            self.timeouts.insert(id, own);
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Host(op) => {
                let request = RequestId(self.next_req);
                self.next_req += 1;
                self.requests.insert(
                    request,
                    ReqInfo {
                        op,
                        received: self.now,
                        answers: 0,
                        answered_at: None,
                    },
                );
                self.feed(Event::HostRequest { request, op });
            }
            Op::AckOutstanding { idx, ok } => {
                if self.outstanding_acks.is_empty() {
                    return;
                }
                let (p, txn, op) = self
                    .outstanding_acks
                    .remove(idx % self.outstanding_acks.len());
                self.ack(p, txn, op, ok);
            }
            Op::AckRandom {
                p,
                txn_back,
                op,
                ok,
            } => {
                let p = ParticipantId(1 + (p as u64 % self.next_pid));
                let txn = TxnId(self.max_txn.saturating_sub(txn_back).max(1));
                self.ack(p, txn, op, ok);
            }
            Op::Gone(i) => {
                if self.registered.is_empty() {
                    return;
                }
                let p = *self
                    .registered
                    .iter()
                    .nth(i % self.registered.len())
                    .unwrap();
                self.registered.remove(&p);
                self.gone.insert(p);
                self.outstanding_acks.retain(|a| a.0 != p);
                self.feed(Event::AppGone { participant: p });
            }
            Op::Register { tier, timeout_ms } => self.register(tier, timeout_ms),
            Op::FsRespond { idx, ok } => {
                if self.outstanding_fs.is_empty() {
                    return;
                }
                let (cmd, txn) = self.outstanding_fs.remove(idx % self.outstanding_fs.len());
                self.fs_answer(cmd, txn, ok);
            }
            Op::FsRandom { kind, txn_back, ok } => {
                let cmd = [FsCmd::Check, FsCmd::Freeze, FsCmd::Thaw][kind as usize % 3];
                let txn = TxnId(self.max_txn.saturating_sub(txn_back).max(1));
                // A bogus answer for something outstanding would be a real answer; only send
                // it when nothing of that kind is outstanding for that txn.
                if self.outstanding_fs.contains(&(cmd, txn)) {
                    return;
                }
                self.fs_answer(cmd, txn, ok);
            }
            Op::Advance(ms) => {
                self.now += ms;
                self.feed(Event::Tick);
            }
            Op::ToDeadline { before } => {
                if let Some(d) = self.c.next_deadline() {
                    let target = if before { d.0.saturating_sub(1) } else { d.0 };
                    self.now = self.now.max(target);
                    self.feed(Event::Tick);
                }
            }
            Op::TransportLost => {
                self.feed(Event::TransportLost);
            }
            Op::Shutdown => {
                self.feed(Event::Shutdown);
            }
            Op::GuardianDied => {
                self.feed(Event::GuardianDied);
            }
            Op::Ready => {
                self.feed(Event::Ready);
            }
            Op::NotReady => {
                self.feed(Event::NotReady);
            }
        }
    }

    fn fs_answer(&mut self, cmd: FsCmd, txn: TxnId, ok: bool) {
        let result = if ok {
            Ok(())
        } else {
            Err(FsError::new("injected"))
        };
        let event = match cmd {
            FsCmd::Check => Event::FsChecked { txn, result },
            FsCmd::Freeze => Event::FsFrozen { txn, result },
            FsCmd::Thaw => Event::FsThawed { txn, result },
        };
        self.feed(event);
    }

    fn ack(&mut self, p: ParticipantId, txn: TxnId, op: AppOp, ok: bool) {
        // A rejected ack must change nothing: compare with a copy that only saw the time.
        let mut base = self.c.clone();
        let base_actions = base.tick(Millis(self.now));
        let key = (p, txn, op);
        let was_acked = self.acked.contains(&key);
        let was_ok = self.accepted_ok.contains(&key);
        // Tentatively taken, so that checks of actions in this very batch (FreezeFs after
        // the last freeze ack) see it.
        self.acked.insert(key);
        if ok {
            self.accepted_ok.insert(key);
        }
        let actions = self.feed(Event::AppAck {
            participant: p,
            txn,
            op,
            ok,
        });
        let rejected: Vec<&Action> = actions
            .iter()
            .filter(|a| matches!(a, Action::RejectAck { .. }))
            .collect();
        let notified = self.sent.get(&(p, txn)).is_some_and(|v| v.contains(&op));
        let registered = self.registered.contains(&p);
        let taken = rejected.is_empty() && self.c != base;
        if !taken {
            if !was_acked {
                self.acked.remove(&key);
            }
            if !was_ok {
                self.accepted_ok.remove(&key);
            }
        }
        match rejected.as_slice() {
            [] => {
                if taken {
                    assert!(registered && notified, "unknown ack accepted: {key:?}");
                    assert!(op != AppOp::Abort, "an Abort ack was taken");
                    assert!(!was_acked, "second ack for {key:?} accepted");
                } else {
                    // Ignored: only for participants that are not registered.
                    assert!(
                        !registered,
                        "ack of a registered participant silently ignored"
                    );
                }
            }
            [
                Action::RejectAck {
                    participant,
                    txn: t,
                    op: o,
                    reason,
                },
            ] => {
                assert_eq!((*participant, *t, *o), key);
                assert!(registered, "RejectAck sent to an unregistered participant");
                assert!(self.c == base, "a rejected ack changed the coordinator");
                let rest: Vec<Action> = actions
                    .iter()
                    .filter(|a| !matches!(a, Action::RejectAck { .. }))
                    .cloned()
                    .collect();
                assert_eq!(rest, base_actions, "a rejected ack produced actions");
                let late_expected = notified && op != AppOp::Abort && !was_acked;
                assert_eq!(
                    *reason == AckRejection::Late,
                    late_expected,
                    "wrong rejection reason {reason:?} for {key:?}"
                );
            }
            more => panic!("several RejectAck for one ack: {more:?}"),
        }
    }

    fn fs_thawed_or_never_frozen(&self, txn: TxnId) -> bool {
        match self.fs.get(&txn) {
            None => true,
            Some(t) if t.thaw_issued => t.thawed_fed,
            Some(t) if t.freeze_issued => t.freeze_failed_fed,
            Some(_) => true,
        }
    }

    /// Feeds one event and checks every action against the invariants.
    fn feed(&mut self, event: Event) -> Vec<Action> {
        let was_host_request = matches!(event, Event::HostRequest { .. });
        let thaw_now = matches!(
            event,
            Event::Shutdown | Event::TransportLost | Event::GuardianDied
        );
        if let Event::Shutdown = event {
            self.shutdown = true;
        }
        match &event {
            Event::FsThawed { txn, .. } => {
                if let Some(t) = self.fs.get_mut(txn).filter(|t| t.thaw_issued) {
                    t.thawed_fed = true;
                }
            }
            Event::FsFrozen {
                txn,
                result: Err(_),
            } => {
                if let Some(t) = self.fs.get_mut(txn).filter(|t| t.freeze_issued) {
                    t.freeze_failed_fed = true;
                }
            }
            _ => {}
        }
        let actions = self.c.handle(event, Millis(self.now));
        if self.stopped {
            for a in &actions {
                assert!(
                    matches!(
                        a,
                        Action::Reply {
                            status: Status::Fail,
                            ..
                        } | Action::Notice(_)
                            | Action::RejectAck { .. }
                    ),
                    "action after Stopped: {a:?}"
                );
            }
        }

        // Replies before notices and reports (R62).
        let first_log = actions
            .iter()
            .position(|a| matches!(a, Action::Notice(_) | Action::Report(_)));
        if let Some(i) = first_log {
            assert!(
                !actions[i..]
                    .iter()
                    .any(|a| matches!(a, Action::Reply { .. } | Action::Unanswerable { .. })),
                "reply after a notice/report: {actions:?}"
            );
        }

        for a in &actions {
            self.check_action(a, was_host_request);
        }

        // (2) thaw at once on shutdown, transport loss, guardian loss.
        if thaw_now {
            for (txn, t) in &self.fs {
                if t.freeze_issued && !t.freeze_failed_fed {
                    assert!(t.thaw_issued, "{txn:?} not thawed after {actions:?}");
                }
            }
        }
        self.check_bounds();
        actions
    }

    fn check_action(&mut self, a: &Action, was_host_request: bool) {
        let new_txn = |h: &mut Harness, txn: TxnId| {
            if !h.members.contains_key(&txn) {
                assert!(was_host_request, "{txn:?} started without a host request");
                assert!(txn.0 > h.max_txn, "txn ids not monotonic: {txn:?}");
                h.max_txn = txn.0;
                h.members.insert(txn, h.registered.clone());
                let freeze = h
                    .requests
                    .iter()
                    .next_back()
                    .filter(|(_, r)| r.op == HostOp::Freeze)
                    .map(|(id, _)| *id);
                if let Some(req) = freeze {
                    h.freeze_req.entry(txn).or_insert(req);
                }
            }
        };
        match a {
            Action::Reply { request, status } => {
                let r = self
                    .requests
                    .get_mut(request)
                    .expect("reply to an unknown request");
                r.answers += 1;
                assert_eq!(r.answers, 1, "second answer to {request:?}");
                r.answered_at = Some((self.now, *status));
            }
            Action::Unanswerable { request } => {
                let r = self
                    .requests
                    .get_mut(request)
                    .expect("unanswerable unknown request");
                r.answers += 1;
                assert_eq!(r.answers, 1, "second answer to {request:?}");
            }
            Action::NotifyApp {
                participant,
                txn,
                op,
                deadline,
                reason,
            } => {
                new_txn(self, *txn);
                // An ack deadline for everything but Abort, never in the past; a reason
                // for Abort only.
                assert_eq!(deadline.is_none(), *op == AppOp::Abort, "{a:?}");
                assert!(
                    deadline.is_none_or(|d| d.0 >= self.now),
                    "{a:?} at {}",
                    self.now
                );
                if let Some(d) = deadline {
                    // Never later than the participant's own timeout...
                    let own = self.timeouts[participant];
                    assert!(d.0 <= self.now + own, "{a:?} past its own {own} ms");
                    // ...nor than the deadline of the host request it serves.
                    let host_op = match op {
                        AppOp::Check => HostOp::Check,
                        AppOp::Freeze => HostOp::Freeze,
                        _ => HostOp::Thaw,
                    };
                    let serving = self
                        .requests
                        .values()
                        .rev()
                        .find(|r| r.op == host_op && r.answers == 0);
                    if let Some(r) = serving {
                        // Told after that deadline passed (THAW's remaining tiers are
                        // told at once), the notification says "no time left": now.
                        let bound =
                            (r.received + request_deadline_ms(&self.limits, host_op)).max(self.now);
                        assert!(d.0 <= bound, "{a:?} past its request's deadline {bound}");
                    } else {
                        assert_eq!(*op, AppOp::Thaw, "{a:?} with no request waiting");
                    }
                }
                assert_eq!(reason.is_some(), *op == AppOp::Abort, "{a:?}");
                let p = *participant;
                assert!(!self.gone.contains(&p), "{op:?} to departed {p:?}");
                // (5)
                assert!(
                    self.members[txn].contains(&p),
                    "{op:?} to {p:?}, not a member of {txn:?}"
                );
                let seq = self.sent.entry((p, *txn)).or_default();
                seq.push(*op);
                // (3)
                let valid = matches!(
                    seq.as_slice(),
                    [AppOp::Check]
                        | [AppOp::Freeze]
                        | [AppOp::Freeze, AppOp::Thaw]
                        | [AppOp::Freeze, AppOp::Abort]
                );
                assert!(valid, "bad op sequence to {p:?} in {txn:?}: {seq:?}");
                // (4) apps work only once nothing of the txn is frozen.
                if matches!(op, AppOp::Thaw | AppOp::Abort) {
                    assert!(
                        self.fs_thawed_or_never_frozen(*txn),
                        "{op:?} to {p:?} while {txn:?} may be frozen"
                    );
                }
                if *op != AppOp::Abort {
                    self.outstanding_acks.push((p, *txn, *op));
                }
            }
            Action::RejectAck { .. } => {}
            Action::CheckFs { txn } => {
                new_txn(self, *txn);
                self.outstanding_fs.push((FsCmd::Check, *txn));
            }
            Action::FreezeFs { txn } => {
                new_txn(self, *txn);
                // (4) every member holds.
                for p in &self.members[txn] {
                    let told = self
                        .sent
                        .get(&(*p, *txn))
                        .is_some_and(|s| s.contains(&AppOp::Freeze));
                    if told {
                        assert!(
                            self.accepted_ok.contains(&(*p, *txn, AppOp::Freeze))
                                && !self.gone.contains(p),
                            "FreezeFs while {p:?} does not hold"
                        );
                    } else {
                        assert!(
                            self.gone.contains(p),
                            "FreezeFs before {p:?} was told Freeze"
                        );
                    }
                }
                let t = self.fs.entry(*txn).or_default();
                assert!(!t.freeze_issued, "FreezeFs twice");
                t.freeze_issued = true;
                self.outstanding_fs.push((FsCmd::Freeze, *txn));
            }
            Action::ThawFs { txn } => {
                let t = self.fs.entry(*txn).or_default();
                assert!(t.freeze_issued, "ThawFs without FreezeFs");
                assert!(!t.thaw_issued, "ThawFs twice");
                t.thaw_issued = true;
                self.outstanding_fs.push((FsCmd::Thaw, *txn));
            }
            Action::Notice(_) => {}
            Action::Report(r) => {
                assert!(self.reports.insert(r.txn), "second report for {:?}", r.txn);
                assert!(
                    self.fs_thawed_or_never_frozen(r.txn),
                    "report while {:?} may be frozen",
                    r.txn
                );
                for rec in &r.requests {
                    assert_eq!(
                        self.requests[&rec.request].answers, 1,
                        "report before its request was answered"
                    );
                }
            }
            Action::Stopped => {
                assert!(self.shutdown, "Stopped without shutdown");
                assert!(!self.stopped, "Stopped twice");
                self.stopped = true;
            }
        }
    }

    /// (2) with time: nothing frozen past its bound.
    fn check_bounds(&self) {
        let auto = match self.limits.auto_thaw {
            AutoThaw::After(d) => d.as_millis() as u64,
            AutoThaw::Disabled => u64::MAX / 4,
        };
        for (txn, t) in &self.fs {
            if !t.freeze_issued || t.thaw_issued || t.freeze_failed_fed {
                continue;
            }
            let req = &self.requests[&self.freeze_req[txn]];
            match req.answered_at {
                Some((at, Status::Ok)) => assert!(
                    self.now < at + auto,
                    "{txn:?} still frozen {} ms after S_OK",
                    self.now - at
                ),
                Some((_, Status::Fail)) => panic!("{txn:?} answered E_FAIL while frozen"),
                None => assert!(
                    self.now < req.received + self.limits.freeze_deadline.as_millis() as u64,
                    "{txn:?} frozen past the FREEZE deadline"
                ),
            }
        }
    }

    /// No more host input: the freezer answers everything, apps stay silent, time runs.
    fn drain(&mut self) {
        for _ in 0..500 {
            if !self.outstanding_fs.is_empty() {
                let (cmd, txn) = self.outstanding_fs.remove(0);
                self.fs_answer(cmd, txn, true);
                continue;
            }
            if let Some(d) = self.c.next_deadline() {
                self.now = self.now.max(d.0);
                self.feed(Event::Tick);
                continue;
            }
            break;
        }
        assert!(self.outstanding_fs.is_empty() && self.c.next_deadline().is_none());
        assert!(
            matches!(
                self.c.state_kind(),
                StateKind::Idle | StateKind::AutoThawed | StateKind::Stopped
            ),
            "drained into {:?}",
            self.c.state_kind()
        );
        assert!(!self.c.fs_may_be_frozen());
        // (1)
        for (id, r) in &self.requests {
            assert_eq!(
                r.answers, 1,
                "{id:?} ({:?}) answered {} times",
                r.op, r.answers
            );
        }
        // (2)
        for (txn, t) in &self.fs {
            assert!(
                !t.freeze_issued || t.freeze_failed_fed || t.thawed_fed,
                "{txn:?} left frozen"
            );
        }
        // (3)
        for ((p, txn), seq) in &self.sent {
            if seq.first() == Some(&AppOp::Freeze) && !self.gone.contains(p) {
                assert_eq!(seq.len(), 2, "{p:?} in {txn:?} never got Thaw or Abort");
            }
        }
        for txn in self.members.keys() {
            assert!(self.reports.contains(txn), "no report for {txn:?}");
        }
        if self.shutdown {
            assert!(self.stopped, "shutdown never reached Stopped");
        }
    }
}

fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        3 => Just(Limits::default()),
        1 => Just(Limits {
            check_deadline: Duration::from_millis(50),
            freeze_deadline: Duration::from_millis(200),
            thaw_deadline: Duration::from_millis(50),
            client_timeout: Duration::from_millis(30),
            auto_thaw: AutoThaw::After(Duration::from_millis(100)),
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_keep_every_promise(
        limits in limits(),
        participants in prop::collection::vec((tier(), timeout_ms()), 0..5),
        ready in prop::bool::weighted(0.9),
        coop in prop_oneof![Just(1u32), Just(6u32)],
        ops_seed in prop::collection::vec((op(1), op(6)), 0..80),
    ) {
        let mut h = Harness::new(limits, &participants, ready);
        for (disruptive, cooperative) in ops_seed {
            h.apply(if coop == 1 { disruptive } else { cooperative });
        }
        h.drain();
    }
}

/// The happy path through the harness, so a checker that accepts nothing is caught.
#[test]
fn harness_accepts_a_clean_backup() {
    let mut h = Harness::new(Limits::default(), &[(0, None), (100, None)], true);
    h.apply(Op::Host(HostOp::Freeze));
    while !h.outstanding_acks.is_empty() {
        h.apply(Op::AckOutstanding { idx: 0, ok: true });
    }
    h.apply(Op::FsRespond { idx: 0, ok: true });
    h.apply(Op::Host(HostOp::Thaw));
    h.apply(Op::FsRespond { idx: 0, ok: true });
    while !h.outstanding_acks.is_empty() {
        h.apply(Op::AckOutstanding { idx: 0, ok: true });
    }
    assert_eq!(
        h.requests
            .values()
            .map(|r| r.answered_at.map(|a| a.1))
            .collect::<Vec<_>>(),
        vec![Some(Status::Ok), Some(Status::Ok)]
    );
    h.drain();
}
