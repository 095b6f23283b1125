//! Unit tests: one per row of behaviour.md §5 and per host/app misbehaviour.

use std::time::Duration;

use crate::report::{Answer, AppOutcome, Failure, Stage, TxnKind, Verdict};
use crate::*;

const S: u64 = 1000;

struct T {
    c: Coordinator,
    now: u64,
    next_req: u64,
    /// The last batch as the coordinator returned it; the helpers return it with
    /// `NotifyApp`'s deadline and reason cleared (see [`plain`]), which tests of those
    /// fields read here.
    raw: Vec<Action>,
}

/// `actions` with every `NotifyApp`'s deadline and reason cleared, so tests of ordering
/// compare ops only.
fn plain(actions: Vec<Action>) -> Vec<Action> {
    actions
        .into_iter()
        .map(|a| match a {
            Action::NotifyApp {
                participant,
                txn,
                op,
                ..
            } => Action::NotifyApp {
                participant,
                txn,
                op,
                deadline: None,
                reason: None,
            },
            a => a,
        })
        .collect()
}

fn p(id: u64) -> ParticipantId {
    ParticipantId(id)
}

fn reg(id: u64, tier: u8) -> Registration {
    Registration {
        id: p(id),
        name: format!("app{id}"),
        tier,
        timeout: None,
    }
}

impl T {
    fn new(apps: &[(u64, u8)]) -> T {
        T::with_limits(Limits::default(), apps)
    }

    fn with_limits(limits: Limits, apps: &[(u64, u8)]) -> T {
        let mut c = Coordinator::new(limits, Millis(0)).unwrap();
        for &(id, tier) in apps {
            c.register(reg(id, tier)).unwrap();
        }
        let mut t = T {
            c,
            now: 0,
            next_req: 1,
            raw: Vec::new(),
        };
        assert!(t.ev(Event::Ready).is_empty());
        t
    }

    fn ev(&mut self, e: Event) -> Vec<Action> {
        self.raw = self.c.handle(e, Millis(self.now));
        plain(self.raw.clone())
    }

    fn host(&mut self, op: HostOp) -> (RequestId, Vec<Action>) {
        let request = RequestId(self.next_req);
        self.next_req += 1;
        (request, self.ev(Event::HostRequest { request, op }))
    }

    fn ack(&mut self, id: u64, txn: TxnId, op: AppOp, ok: bool) -> Vec<Action> {
        self.ev(Event::AppAck {
            participant: p(id),
            txn,
            op,
            ok,
        })
    }

    fn at(&mut self, ms: u64) -> Vec<Action> {
        self.now = ms;
        self.raw = self.c.tick(Millis(ms));
        plain(self.raw.clone())
    }

    fn fs_frozen(&mut self, txn: TxnId, ok: bool) -> Vec<Action> {
        let result = if ok {
            Ok(())
        } else {
            Err(FsError::new("EBUSY on /srv"))
        };
        self.ev(Event::FsFrozen { txn, result })
    }

    fn fs_thawed(&mut self, txn: TxnId) -> Vec<Action> {
        self.ev(Event::FsThawed {
            txn,
            result: Ok(()),
        })
    }

    /// FREEZE with every app acking: returns the request and txn, state Frozen.
    fn freeze_all(&mut self, tiers: &[&[u64]]) -> (RequestId, TxnId) {
        let (r, _) = self.host(HostOp::Freeze);
        let txn = self.c.current_txn().unwrap();
        for tier in tiers {
            for id in *tier {
                self.ack(*id, txn, AppOp::Freeze, true);
            }
        }
        let a = self.fs_frozen(txn, true);
        assert_eq!(a[0], reply(r, Status::Ok));
        assert_eq!(self.c.state_kind(), StateKind::Frozen);
        (r, txn)
    }
}

fn reply(request: RequestId, status: Status) -> Action {
    Action::Reply { request, status }
}

fn notify(id: u64, txn: TxnId, op: AppOp) -> Action {
    Action::NotifyApp {
        participant: p(id),
        txn,
        op,
        deadline: None,
        reason: None,
    }
}

/// The actions that are not notices or reports.
fn work(actions: &[Action]) -> Vec<Action> {
    actions
        .iter()
        .filter(|a| !matches!(a, Action::Notice(_) | Action::Report(_)))
        .cloned()
        .collect()
}

fn report(actions: &[Action]) -> &TxnReport {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Report(r) => Some(&**r),
            _ => None,
        })
        .expect("no report")
}

fn notices(actions: &[Action]) -> Vec<&Notice> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Notice(n) => Some(n),
            _ => None,
        })
        .collect()
}

// ---- Idle -------------------------------------------------------------------------------

#[test]
fn idle_thaw_without_freeze_is_ok_and_stays_idle() {
    let mut t = T::new(&[]);
    let (r, a) = t.host(HostOp::Thaw);
    assert_eq!(work(&a), vec![reply(r, Status::Ok)]);
    assert_eq!(notices(&a), vec![&Notice::ThawWithoutFreeze { request: r }]);
    assert_eq!(t.c.state_kind(), StateKind::Idle);
}

#[test]
fn not_ready_fails_every_operation_until_ready() {
    let mut c = Coordinator::new(Limits::default(), Millis(0)).unwrap();
    for (i, op) in [HostOp::Check, HostOp::Freeze, HostOp::Thaw]
        .into_iter()
        .enumerate()
    {
        let request = RequestId(i as u64);
        let a = c.handle(Event::HostRequest { request, op }, Millis(0));
        assert_eq!(a[0], reply(request, Status::Fail));
        assert!(matches!(
            a[1],
            Action::Notice(Notice::Refused {
                reason: Refusal::NotReady,
                ..
            })
        ));
    }
    assert_eq!(c.state_kind(), StateKind::Idle);
    c.handle(Event::Ready, Millis(0));
    let a = c.handle(
        Event::HostRequest {
            request: RequestId(9),
            op: HostOp::Check,
        },
        Millis(0),
    );
    assert_eq!(a, vec![Action::CheckFs { txn: TxnId(1) }]);
}

#[test]
fn not_ready_does_not_stop_a_thaw_of_what_is_frozen() {
    let mut t = T::new(&[]);
    let (_, txn) = t.freeze_all(&[]);
    t.ev(Event::NotReady);
    let (_, a) = t.host(HostOp::Thaw);
    assert_eq!(a, vec![Action::ThawFs { txn }]);
}

// ---- Checking ---------------------------------------------------------------------------

#[test]
fn check_goes_to_apps_lowest_tier_first_then_fs_then_answers_ok() {
    let mut t = T::new(&[(1, 200), (2, 5), (3, 5)]);
    let (r, a) = t.host(HostOp::Check);
    let txn = TxnId(1);
    // Tier 5 in parallel; tier 200 waits.
    assert_eq!(
        a,
        vec![notify(2, txn, AppOp::Check), notify(3, txn, AppOp::Check)]
    );
    assert!(t.ack(2, txn, AppOp::Check, true).is_empty());
    assert_eq!(
        t.ack(3, txn, AppOp::Check, true),
        vec![notify(1, txn, AppOp::Check)]
    );
    assert_eq!(
        t.ack(1, txn, AppOp::Check, true),
        vec![Action::CheckFs { txn }]
    );
    let a = t.ev(Event::FsChecked {
        txn,
        result: Ok(()),
    });
    assert_eq!(work(&a), vec![reply(r, Status::Ok)]);
    let rep = report(&a);
    assert_eq!(
        (rep.kind, &rep.verdict),
        (TxnKind::Check, &Verdict::CheckPassed)
    );
    assert_eq!(t.c.state_kind(), StateKind::Idle);
}

#[test]
fn check_veto_by_an_app_fails_without_asking_the_filesystems() {
    let mut t = T::new(&[(1, 0), (2, 1)]);
    let (r, _) = t.host(HostOp::Check);
    let a = t.ack(1, TxnId(1), AppOp::Check, false);
    assert_eq!(work(&a), vec![reply(r, Status::Fail)]);
    assert_eq!(
        report(&a).verdict,
        Verdict::Failed {
            reason: Failure::AppFailed {
                stage: Stage::CheckApps,
                participant: "app1".into()
            }
        }
    );
    assert_eq!(t.c.state_kind(), StateKind::Idle);
}

#[test]
fn check_veto_by_the_filesystems_fails() {
    let mut t = T::new(&[]);
    let (r, _) = t.host(HostOp::Check);
    let a = t.ev(Event::FsChecked {
        txn: TxnId(1),
        result: Err(FsError::new("/srv not freezable")),
    });
    assert_eq!(work(&a), vec![reply(r, Status::Fail)]);
}

#[test]
fn client_timeout_is_bounded_by_the_chain_deadline_and_names_the_participant() {
    let mut t = T::new(&[]);
    t.c.register(Registration {
        timeout: Some(Duration::from_secs(600)),
        ..reg(7, 100)
    })
    .unwrap();
    let (r, _) = t.host(HostOp::Check);
    assert_eq!(t.c.next_deadline(), Some(Millis(25 * S)));
    assert!(t.at(25 * S - 1).is_empty());
    let a = t.at(25 * S);
    assert_eq!(work(&a), vec![reply(r, Status::Fail)]);
    assert!(notices(&a).contains(&&Notice::Failed {
        txn: TxnId(1),
        failure: Failure::AppTimedOut {
            stage: Stage::CheckApps,
            participant: "app7".into()
        }
    }));
    // R22: the late ack changes nothing and is told so.
    let a = t.ack(7, TxnId(1), AppOp::Check, true);
    assert_eq!(
        a,
        vec![Action::RejectAck {
            participant: p(7),
            txn: TxnId(1),
            op: AppOp::Check,
            reason: AckRejection::Late
        }]
    );
}

#[test]
fn check_deadline_in_the_filesystem_stage() {
    let mut t = T::new(&[]);
    let (r, _) = t.host(HostOp::Check);
    let a = t.at(25 * S);
    assert_eq!(work(&a), vec![reply(r, Status::Fail)]);
    assert_eq!(
        report(&a).failures,
        vec![Failure::Deadline {
            stage: Stage::CheckFs,
            waiting_for: vec![]
        }]
    );
    // A late FsChecked is ignored.
    assert!(
        t.ev(Event::FsChecked {
            txn: TxnId(1),
            result: Ok(())
        })
        .is_empty()
    );
}

// ---- FreezingApps, FreezingFs, Frozen, ThawingFs, ThawingApps -----------------------------

#[test]
fn a_full_backup_in_tier_order_is_app_consistent() {
    let mut t = T::new(&[(1, 200), (2, 0), (3, 0)]);
    let (rf, a) = t.host(HostOp::Freeze);
    let txn = TxnId(1);
    assert_eq!(
        a,
        vec![notify(2, txn, AppOp::Freeze), notify(3, txn, AppOp::Freeze)]
    );
    assert_eq!(t.c.state_kind(), StateKind::FreezingApps);
    t.now = 10;
    t.ack(3, txn, AppOp::Freeze, true);
    assert_eq!(
        t.ack(2, txn, AppOp::Freeze, true),
        vec![notify(1, txn, AppOp::Freeze)]
    );
    // R54: FreezeFs only after the last application holds.
    assert_eq!(
        t.ack(1, txn, AppOp::Freeze, true),
        vec![Action::FreezeFs { txn }]
    );
    assert_eq!(t.c.state_kind(), StateKind::FreezingFs);
    assert!(t.c.fs_may_be_frozen());
    t.now = 100;
    assert_eq!(t.fs_frozen(txn, true), vec![reply(rf, Status::Ok)]);
    assert_eq!(t.c.state_kind(), StateKind::Frozen);
    assert_eq!(t.c.next_deadline(), Some(Millis(100 + 60 * S)));

    t.now = 5 * S;
    let (rt, a) = t.host(HostOp::Thaw);
    assert_eq!(a, vec![Action::ThawFs { txn }]);
    assert_eq!(t.c.state_kind(), StateKind::ThawingFs);
    t.now = 5 * S + 20;
    // R54: applications thaw after the filesystems, highest tier first.
    assert_eq!(t.fs_thawed(txn), vec![notify(1, txn, AppOp::Thaw)]);
    assert_eq!(t.c.state_kind(), StateKind::ThawingApps);
    assert!(!t.c.fs_may_be_frozen());
    assert_eq!(
        t.ack(1, txn, AppOp::Thaw, true),
        vec![notify(2, txn, AppOp::Thaw), notify(3, txn, AppOp::Thaw)]
    );
    t.ack(2, txn, AppOp::Thaw, true);
    let a = t.ack(3, txn, AppOp::Thaw, true);
    assert_eq!(work(&a), vec![reply(rt, Status::Ok)]);
    let rep = report(&a);
    assert_eq!(rep.verdict, Verdict::AppConsistent);
    assert_eq!(rep.frozen_window.unwrap().duration_ms(), 5 * S + 20 - 100);
    assert_eq!(rep.requests.len(), 2);
    assert_eq!(rep.participants.len(), 3);
    assert!(rep.failures.is_empty());
    assert_eq!(t.c.state_kind(), StateKind::Idle);
    // The report is data the daemon stores.
    let json = serde_json::to_string(rep).unwrap();
    assert!(json.contains("\"app_consistent\""), "{json}");
}

#[test]
fn freeze_veto_aborts_those_told_in_reverse_tier_order_and_never_freezes() {
    let mut t = T::new(&[(1, 0), (2, 10), (3, 10), (4, 20)]);
    let (r, _) = t.host(HostOp::Freeze);
    let txn = TxnId(1);
    t.ack(1, txn, AppOp::Freeze, true);
    t.ack(2, txn, AppOp::Freeze, true);
    let a = t.ack(3, txn, AppOp::Freeze, false);
    assert_eq!(
        work(&a),
        vec![
            notify(2, txn, AppOp::Abort),
            notify(3, txn, AppOp::Abort),
            notify(1, txn, AppOp::Abort),
            reply(r, Status::Fail),
        ]
    );
    // app4 (tier 20) was never told to freeze and gets nothing.
    let rep = report(&a);
    assert!(
        rep.participants
            .iter()
            .find(|x| x.id == p(4))
            .unwrap()
            .ops
            .is_empty()
    );
    assert!(rep.fs.is_empty());
    assert_eq!(t.c.state_kind(), StateKind::Idle);
    // Abort is not acked.
    let a = t.ack(1, txn, AppOp::Abort, true);
    assert!(matches!(
        a[..],
        [Action::RejectAck {
            reason: AckRejection::Unexpected,
            ..
        }]
    ));
}

#[test]
fn a_failed_freezer_means_nothing_frozen_so_only_apps_are_aborted() {
    let mut t = T::new(&[(1, 0)]);
    let (r, _) = t.host(HostOp::Freeze);
    let txn = TxnId(1);
    t.ack(1, txn, AppOp::Freeze, true);
    let a = t.fs_frozen(txn, false);
    assert_eq!(
        work(&a),
        vec![notify(1, txn, AppOp::Abort), reply(r, Status::Fail)]
    );
    assert!(!t.c.fs_may_be_frozen());
}

#[test]
fn freeze_deadline_in_the_fs_stage_answers_at_once_and_thaws_before_aborting() {
    let mut t = T::new(&[(1, 0)]);
    let (r, _) = t.host(HostOp::Freeze);
    let txn = TxnId(1);
    t.ack(1, txn, AppOp::Freeze, true);
    let a = t.at(300 * S);
    assert_eq!(
        work(&a),
        vec![reply(r, Status::Fail), Action::ThawFs { txn }]
    );
    assert_eq!(t.c.state_kind(), StateKind::Compensating);
    // The freeze finishing late is only recorded.
    assert!(t.fs_frozen(txn, true).is_empty());
    let a = t.fs_thawed(txn);
    assert_eq!(work(&a), vec![notify(1, txn, AppOp::Abort)]);
    assert!(matches!(
        report(&a).verdict,
        Verdict::Failed {
            reason: Failure::Deadline {
                stage: Stage::FreezeFs,
                ..
            }
        }
    ));
    assert_eq!(t.c.state_kind(), StateKind::Idle);
}

#[test]
fn a_participant_missing_its_freeze_deadline_fails_the_freeze() {
    let mut t = T::new(&[(1, 0), (2, 0)]);
    let (r, _) = t.host(HostOp::Freeze);
    let txn = TxnId(1);
    t.ack(1, txn, AppOp::Freeze, true);
    let a = t.at(30 * S);
    assert_eq!(
        work(&a),
        vec![
            notify(1, txn, AppOp::Abort),
            notify(2, txn, AppOp::Abort),
            reply(r, Status::Fail)
        ]
    );
    let rep = report(&a);
    let app2 = rep.participants.iter().find(|x| x.id == p(2)).unwrap();
    assert_eq!(app2.ops[0].outcome, AppOutcome::TimedOut);
    assert_eq!(app2.ops[1].outcome, AppOutcome::NotAcked);
}

#[test]
fn frozen_second_freeze_is_ok_and_does_not_extend_auto_thaw() {
    let mut t = T::new(&[]);
    let (_, txn) = t.freeze_all(&[]);
    t.now = 30 * S;
    let (r2, a) = t.host(HostOp::Freeze);
    assert_eq!(work(&a), vec![reply(r2, Status::Ok)]);
    assert_eq!(
        notices(&a),
        vec![&Notice::AlreadyFrozen { request: r2, txn }]
    );
    assert_eq!(t.c.state_kind(), StateKind::Frozen);
    assert_eq!(t.c.next_deadline(), Some(Millis(60 * S)));
}

/// Regression (issue 8, item 8): every FREEZE-while-frozen request was kept in the
/// transaction's report, so a host repeating FREEZE grew it (and the history line) without
/// bound. The first ones are listed, the rest counted; each is still answered S_OK.
#[test]
fn ten_thousand_freezes_while_frozen_are_answered_and_counted_not_listed() {
    let mut t = T::new(&[]);
    let (_, txn) = t.freeze_all(&[]);
    for _ in 0..10_000 {
        let (r, a) = t.host(HostOp::Freeze);
        assert_eq!(work(&a), vec![reply(r, Status::Ok)]);
    }
    let (_, _) = t.host(HostOp::Thaw);
    let a = t.fs_thawed(txn);
    let rep = report(&a);
    assert!(rep.requests.len() <= crate::coordinator::MAX_REPEATED_FREEZES_LISTED + 2);
    assert_eq!(
        rep.repeated_freezes_not_listed as usize + rep.requests.len(),
        10_002,
        "every request listed or counted"
    );
}

/// Regression (issue 8, item 7): a THAW that arrived during an auto-thaw's compensation
/// and was lost with the transport reset the state to idle, so the THAW re-sent on the new
/// channel got S_OK: the host took an auto-thawed snapshot for consistent (R25).
#[test]
fn a_thaw_lost_with_the_transport_during_auto_thaw_still_gets_e_fail_after() {
    let mut t = T::new(&[]);
    let (_, txn) = t.freeze_all(&[]);
    assert_eq!(work(&t.at(60 * S)), vec![Action::ThawFs { txn }]);
    let (r, a) = t.host(HostOp::Thaw);
    assert!(
        work(&a).is_empty(),
        "answered only once the thaw ends: {a:?}"
    );
    let a = t.ev(Event::TransportLost);
    assert!(
        work(&a).contains(&Action::Unanswerable { request: r }),
        "{a:?}"
    );
    t.fs_thawed(txn);
    let (r2, a) = t.host(HostOp::Thaw);
    assert_eq!(work(&a), vec![reply(r2, Status::Fail)]);
}

#[test]
fn auto_thaw_thaws_aborts_and_fails_the_late_thaw() {
    let mut t = T::new(&[(1, 0)]);
    let (_, txn) = t.freeze_all(&[&[1]]);
    assert!(t.at(60 * S - 1).is_empty());
    assert_eq!(work(&t.at(60 * S)), vec![Action::ThawFs { txn }]);
    assert_eq!(t.c.state_kind(), StateKind::Compensating);
    t.now = 60 * S + 7;
    let a = t.fs_thawed(txn);
    assert_eq!(work(&a), vec![notify(1, txn, AppOp::Abort)]);
    assert!(notices(&a).contains(&&Notice::AutoThawed {
        txn,
        cause: Failure::AutoThaw,
        frozen_ms: 60 * S + 7
    }));
    assert_eq!(
        report(&a).verdict,
        Verdict::Failed {
            reason: Failure::AutoThaw
        }
    );
    assert_eq!(t.c.state_kind(), StateKind::AutoThawed);
    // R25.
    let (r, a) = t.host(HostOp::Thaw);
    assert_eq!(work(&a), vec![reply(r, Status::Fail)]);
    assert_eq!(t.c.state_kind(), StateKind::Idle);
}

#[test]
fn auto_thawed_freeze_starts_a_new_transaction() {
    let mut t = T::new(&[]);
    t.freeze_all(&[]);
    t.at(60 * S);
    t.fs_thawed(TxnId(1));
    assert_eq!(t.c.state_kind(), StateKind::AutoThawed);
    let (_, a) = t.host(HostOp::Freeze);
    assert_eq!(a, vec![Action::FreezeFs { txn: TxnId(2) }]);
}

#[test]
fn thaw_during_auto_thaw_joins_it_and_gets_e_fail() {
    let mut t = T::new(&[]);
    let (_, txn) = t.freeze_all(&[]);
    t.at(60 * S);
    let (r, a) = t.host(HostOp::Thaw);
    assert!(work(&a).is_empty());
    let a = t.fs_thawed(txn);
    assert_eq!(work(&a), vec![reply(r, Status::Fail)]);
    assert_eq!(t.c.state_kind(), StateKind::Idle);
}

#[test]
fn disabled_auto_thaw_stays_frozen_until_thaw() {
    let limits = Limits {
        auto_thaw: AutoThaw::Disabled,
        ..Limits::default()
    };
    let mut t = T::with_limits(limits, &[]);
    let (_, txn) = t.freeze_all(&[]);
    assert_eq!(t.c.next_deadline(), None);
    assert!(t.at(3600 * S).is_empty());
    let (_, a) = t.host(HostOp::Thaw);
    assert_eq!(a, vec![Action::ThawFs { txn }]);
}

#[test]
fn thaw_fs_deadline_answers_e_fail_but_apps_wait_for_the_thaw() {
    let mut t = T::new(&[(1, 0)]);
    let (_, txn) = t.freeze_all(&[&[1]]);
    t.now = S;
    let (r, _) = t.host(HostOp::Thaw);
    let a = t.at(26 * S);
    assert_eq!(work(&a), vec![reply(r, Status::Fail)]);
    assert_eq!(t.c.state_kind(), StateKind::ThawingFs);
    assert!(t.at(3600 * S).is_empty());
    let a = t.fs_thawed(txn);
    assert_eq!(work(&a), vec![notify(1, txn, AppOp::Thaw)]);
    let a = t.ack(1, txn, AppOp::Thaw, true);
    assert_eq!(work(&a), vec![]);
    assert_eq!(report(&a).verdict, Verdict::AppConsistent);
    assert_eq!(t.c.state_kind(), StateKind::Idle);
}

#[test]
fn thaw_goes_on_past_a_failed_app_and_answers_e_fail() {
    let mut t = T::new(&[(1, 0), (2, 9)]);
    let (_, txn) = t.freeze_all(&[&[1], &[2]]);
    let (r, _) = t.host(HostOp::Thaw);
    t.fs_thawed(txn);
    assert_eq!(
        t.ack(2, txn, AppOp::Thaw, false)
            .into_iter()
            .filter(|a| !matches!(a, Action::Notice(_)))
            .collect::<Vec<_>>(),
        vec![notify(1, txn, AppOp::Thaw)]
    );
    let a = t.ack(1, txn, AppOp::Thaw, true);
    assert_eq!(work(&a), vec![reply(r, Status::Fail)]);
}

#[test]
fn thaw_deadline_tells_every_remaining_tier_at_once() {
    let mut t = T::new(&[(1, 0), (3, 50)]);
    t.c.register(Registration {
        timeout: Some(Duration::from_secs(120)),
        ..reg(2, 9)
    })
    .unwrap();
    let (_, txn) = t.freeze_all(&[&[1], &[2], &[3]]);
    let (r, _) = t.host(HostOp::Thaw);
    assert_eq!(t.fs_thawed(txn), vec![notify(3, txn, AppOp::Thaw)]);
    assert_eq!(
        t.ack(3, txn, AppOp::Thaw, true),
        vec![notify(2, txn, AppOp::Thaw)]
    );
    // app2 never answers; its own 120 s is cut at the 25 s THAW deadline, and tier 0 is
    // told without waiting.
    let a = t.at(25 * S);
    assert_eq!(
        work(&a),
        vec![notify(1, txn, AppOp::Thaw), reply(r, Status::Fail)]
    );
    assert!(report(&a).failures.contains(&Failure::AppTimedOut {
        stage: Stage::ThawApps,
        participant: "app2".into()
    }));
}

// ---- Host overlaps (R26) and bad input ------------------------------------------------------

#[test]
fn thaw_during_freezing_apps_aborts_the_freeze_then_answers_the_thaw() {
    let mut t = T::new(&[(1, 0)]);
    let (rf, _) = t.host(HostOp::Freeze);
    let txn = TxnId(1);
    let (rt, a) = t.host(HostOp::Thaw);
    assert_eq!(
        work(&a),
        vec![
            reply(rf, Status::Fail),
            notify(1, txn, AppOp::Abort),
            reply(rt, Status::Ok)
        ]
    );
    assert_eq!(
        report(&a).verdict,
        Verdict::Failed {
            reason: Failure::AbortedByThaw
        }
    );
    // The freeze ack arrives after: late.
    let a = t.ack(1, txn, AppOp::Freeze, true);
    assert!(matches!(
        a[..],
        [Action::RejectAck {
            reason: AckRejection::Late,
            ..
        }]
    ));
}

#[test]
fn thaw_during_freezing_fs_waits_for_the_thaw_before_answering() {
    let mut t = T::new(&[]);
    let (rf, _) = t.host(HostOp::Freeze);
    let txn = TxnId(1);
    let (rt, a) = t.host(HostOp::Thaw);
    assert_eq!(
        work(&a),
        vec![reply(rf, Status::Fail), Action::ThawFs { txn }]
    );
    let a = t.fs_thawed(txn);
    assert_eq!(work(&a), vec![reply(rt, Status::Ok)]);
}

#[test]
fn overlapping_requests_get_e_fail_at_once() {
    let mut t = T::new(&[(1, 0)]);
    let (_, _) = t.host(HostOp::Check);
    for op in [HostOp::Check, HostOp::Freeze, HostOp::Thaw] {
        let (r, a) = t.host(op);
        assert_eq!(work(&a), vec![reply(r, Status::Fail)]);
        assert!(matches!(
            notices(&a)[..],
            [Notice::Refused {
                reason: Refusal::Busy,
                ..
            }]
        ));
    }
    assert_eq!(t.c.state_kind(), StateKind::Checking);
}

#[test]
fn check_while_frozen_is_refused_and_stays_frozen() {
    let mut t = T::new(&[(1, 0)]);
    t.freeze_all(&[&[1]]);
    let (r, a) = t.host(HostOp::Check);
    assert_eq!(work(&a), vec![reply(r, Status::Fail)]);
    assert_eq!(t.c.state_kind(), StateKind::Frozen);
}

#[test]
fn a_second_thaw_while_thawing_is_refused() {
    let mut t = T::new(&[]);
    t.freeze_all(&[]);
    t.host(HostOp::Thaw);
    let (r, a) = t.host(HostOp::Thaw);
    assert_eq!(work(&a), vec![reply(r, Status::Fail)]);
    assert_eq!(t.c.state_kind(), StateKind::ThawingFs);
}

#[test]
fn acks_are_matched_on_participant_txn_and_op() {
    let mut t = T::new(&[(1, 0)]);
    t.host(HostOp::Freeze);
    let txn = TxnId(1);
    let rej = |reason| {
        vec![Action::RejectAck {
            participant: p(1),
            txn: TxnId(9),
            op: AppOp::Freeze,
            reason,
        }]
    };
    assert_eq!(
        t.ack(1, TxnId(9), AppOp::Freeze, true),
        rej(AckRejection::Unexpected)
    );
    let a = t.ack(1, txn, AppOp::Thaw, true);
    assert!(matches!(a[..], [Action::RejectAck { .. }]));
    // Unknown participant: nothing to answer.
    assert!(t.ack(42, txn, AppOp::Freeze, true).is_empty());
    assert_eq!(
        t.ack(1, txn, AppOp::Freeze, true),
        vec![Action::FreezeFs { txn }]
    );
    // A duplicate is unexpected, not late.
    assert!(matches!(
        t.ack(1, txn, AppOp::Freeze, true)[..],
        [Action::RejectAck {
            reason: AckRejection::Unexpected,
            ..
        }]
    ));
}

#[test]
fn a_participant_registering_mid_transaction_is_not_part_of_it() {
    let mut t = T::new(&[(1, 0)]);
    t.host(HostOp::Freeze);
    t.c.register(reg(2, 0)).unwrap();
    let a = t.ack(1, TxnId(1), AppOp::Freeze, true);
    assert_eq!(a, vec![Action::FreezeFs { txn: TxnId(1) }]);
}

// ---- Departures ---------------------------------------------------------------------------

#[test]
fn a_disconnect_while_freezing_fails_the_freeze() {
    let mut t = T::new(&[(1, 0), (2, 5)]);
    let (r, _) = t.host(HostOp::Freeze);
    let txn = TxnId(1);
    t.ack(1, txn, AppOp::Freeze, true);
    let a = t.ev(Event::AppGone { participant: p(2) });
    assert_eq!(
        work(&a),
        vec![notify(1, txn, AppOp::Abort), reply(r, Status::Fail)]
    );
}

#[test]
fn a_holder_lost_while_frozen_keeps_the_freeze_but_fails_the_thaw() {
    let mut t = T::new(&[(1, 0), (2, 5)]);
    let (_, txn) = t.freeze_all(&[&[1], &[2]]);
    let a = t.ev(Event::AppGone { participant: p(2) });
    assert!(work(&a).is_empty());
    assert_eq!(t.c.state_kind(), StateKind::Frozen);
    let (r, _) = t.host(HostOp::Thaw);
    assert_eq!(t.fs_thawed(txn), vec![notify(1, txn, AppOp::Thaw)]);
    let a = t.ack(1, txn, AppOp::Thaw, true);
    assert_eq!(work(&a), vec![reply(r, Status::Fail)]);
    assert_eq!(report(&a).verdict, Verdict::FsConsistent);
}

// ---- Transport, guardian, shutdown --------------------------------------------------------

#[test]
fn transport_lost_mid_freeze_cannot_answer_and_compensates() {
    let mut t = T::new(&[(1, 0)]);
    let (r, _) = t.host(HostOp::Freeze);
    let txn = TxnId(1);
    t.ack(1, txn, AppOp::Freeze, true);
    let a = t.ev(Event::TransportLost);
    assert_eq!(
        work(&a),
        vec![Action::Unanswerable { request: r }, Action::ThawFs { txn }]
    );
    let a = t.fs_thawed(txn);
    assert_eq!(work(&a), vec![notify(1, txn, AppOp::Abort)]);
    assert_eq!(
        report(&a).requests[0].answer,
        Answer::Unanswerable { at: Millis(0) }
    );
    assert_eq!(t.c.state_kind(), StateKind::Idle);
}

#[test]
fn transport_lost_while_frozen_thaws_and_fails_the_next_thaw() {
    let mut t = T::new(&[]);
    let (_, txn) = t.freeze_all(&[]);
    assert_eq!(
        work(&t.ev(Event::TransportLost)),
        vec![Action::ThawFs { txn }]
    );
    t.fs_thawed(txn);
    assert_eq!(t.c.state_kind(), StateKind::AutoThawed);
}

#[test]
fn guardian_death_while_frozen_thaws_like_auto_thaw() {
    let mut t = T::new(&[(1, 0)]);
    let (_, txn) = t.freeze_all(&[&[1]]);
    assert_eq!(
        work(&t.ev(Event::GuardianDied)),
        vec![Action::ThawFs { txn }]
    );
    let a = t.fs_thawed(txn);
    assert!(matches!(
        notices(&a)[..],
        [Notice::AutoThawed {
            cause: Failure::GuardianDied,
            ..
        }]
    ));
    assert_eq!(t.c.state_kind(), StateKind::AutoThawed);
}

#[test]
fn shutdown_while_frozen_thaws_aborts_then_stops() {
    let mut t = T::new(&[(1, 0)]);
    let (_, txn) = t.freeze_all(&[&[1]]);
    assert_eq!(work(&t.ev(Event::Shutdown)), vec![Action::ThawFs { txn }]);
    let (r, a) = t.host(HostOp::Thaw);
    assert_eq!(work(&a), vec![reply(r, Status::Fail)]);
    let a = t.fs_thawed(txn);
    assert_eq!(
        work(&a),
        vec![notify(1, txn, AppOp::Abort), Action::Stopped]
    );
    assert_eq!(a.last(), Some(&Action::Stopped));
    assert_eq!(t.c.state_kind(), StateKind::Stopped);
    assert_eq!(t.c.register(reg(5, 0)), Err(RegisterError::Stopped));
}

#[test]
fn shutdown_mid_freeze_answers_e_fail_at_once() {
    let mut t = T::new(&[(1, 0), (2, 1)]);
    let (r, _) = t.host(HostOp::Freeze);
    t.ack(1, TxnId(1), AppOp::Freeze, true);
    let a = t.ev(Event::Shutdown);
    assert_eq!(
        work(&a),
        vec![
            reply(r, Status::Fail),
            notify(2, TxnId(1), AppOp::Abort),
            notify(1, TxnId(1), AppOp::Abort),
            Action::Stopped
        ]
    );
}

#[test]
fn shutdown_when_idle_stops_at_once() {
    let mut t = T::new(&[]);
    assert_eq!(t.ev(Event::Shutdown), vec![Action::Stopped]);
}

// ---- Configuration -------------------------------------------------------------------------

#[test]
fn limits_are_validated() {
    assert!(Limits::default().validate_drop_in().is_ok());
    let zero = Limits {
        thaw_deadline: Duration::ZERO,
        ..Limits::default()
    };
    assert_eq!(
        Coordinator::new(zero, Millis(0)).unwrap_err(),
        LimitsError::Zero {
            name: "thaw_deadline"
        }
    );
    let late = Limits {
        freeze_deadline: KERNEL_FREEZE_TIMEOUT,
        ..Limits::default()
    };
    assert!(late.validate().is_ok());
    assert!(matches!(
        late.validate_drop_in(),
        Err(LimitsError::NotBeforeKernel {
            name: "freeze_deadline",
            ..
        })
    ));
}

#[test]
fn registration_names_and_ids_are_unique() {
    let mut t = T::new(&[(1, 0)]);
    assert_eq!(
        t.c.register(reg(1, 0)),
        Err(RegisterError::DuplicateId(p(1)))
    );
    assert_eq!(
        t.c.register(Registration {
            name: "app1".into(),
            ..reg(2, 0)
        }),
        Err(RegisterError::DuplicateName("app1".into()))
    );
    t.ev(Event::AppGone { participant: p(1) });
    assert!(t.c.register(reg(1, 0)).is_ok());
}

// ---- what a notification carries: the ack deadline, the abort reason ------------------------

/// The `(participant, op, deadline, reason)` of every notification in the last batch.
fn notified(t: &T) -> Vec<(u64, AppOp, Option<Millis>, Option<Failure>)> {
    t.raw
        .iter()
        .filter_map(|a| match a {
            Action::NotifyApp {
                participant,
                op,
                deadline,
                reason,
                ..
            } => Some((participant.0, *op, *deadline, reason.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn each_notification_carries_its_ack_deadline_own_timeout_bounded_by_the_request() {
    let limits = Limits {
        freeze_deadline: Duration::from_secs(10),
        thaw_deadline: Duration::from_secs(8),
        client_timeout: Duration::from_secs(4),
        ..Limits::default()
    };
    let mut t = T::with_limits(limits, &[(1, 0)]);
    t.c.register(Registration {
        timeout: Some(Duration::from_secs(60)),
        ..reg(2, 1)
    })
    .unwrap();
    t.now = 1000;
    t.host(HostOp::Freeze);
    let txn = TxnId(1);
    // app1: its default 4 s.
    assert_eq!(
        notified(&t),
        vec![(1, AppOp::Freeze, Some(Millis(5000)), None)]
    );
    t.now = 3000;
    t.ack(1, txn, AppOp::Freeze, true);
    // app2 asks for 60 s but the FREEZE ends at 11 s.
    assert_eq!(
        notified(&t),
        vec![(2, AppOp::Freeze, Some(Millis(11_000)), None)]
    );
    t.ack(2, txn, AppOp::Freeze, true);
    t.fs_frozen(txn, true);
    t.now = 20_000;
    t.host(HostOp::Thaw);
    t.now = 20_010;
    t.fs_thawed(txn);
    // THAW: app2 first, bounded by the THAW's 8 s from 20 s.
    assert_eq!(
        notified(&t),
        vec![(2, AppOp::Thaw, Some(Millis(28_000)), None)]
    );
    // At the THAW deadline the rest is told at once: nobody waits (deadline = now).
    t.at(28_000);
    assert_eq!(
        notified(&t),
        vec![(1, AppOp::Thaw, Some(Millis(28_000)), None)]
    );
}

#[test]
fn abort_carries_the_reason_and_no_deadline() {
    // A veto: the reason names the vetoing participant.
    let mut t = T::new(&[(1, 0), (2, 1)]);
    t.host(HostOp::Freeze);
    let txn = TxnId(1);
    t.ack(1, txn, AppOp::Freeze, true);
    t.ack(2, txn, AppOp::Freeze, false);
    let veto = Failure::AppFailed {
        stage: Stage::FreezeApps,
        participant: "app2".into(),
    };
    assert_eq!(
        notified(&t),
        vec![
            (2, AppOp::Abort, None, Some(veto.clone())),
            (1, AppOp::Abort, None, Some(veto)),
        ]
    );

    // An auto-thaw: the reason is the auto-thaw, not a later failure.
    let mut t = T::new(&[(1, 0)]);
    t.freeze_all(&[&[1]]);
    let txn = t.c.current_txn().unwrap();
    t.at(61 * S);
    t.fs_thawed(txn);
    assert_eq!(
        notified(&t),
        vec![(1, AppOp::Abort, None, Some(Failure::AutoThaw))]
    );
}

/// A participant that never acks its thaw holds the THAW only to the request's deadline:
/// the reply goes out then, and the coordinator is idle, so the next HOT_BACKUP is served
/// (not refused as busy) even if that participant is still connected.
#[test]
fn a_thaw_deadline_leaves_the_coordinator_idle_for_the_next_backup() {
    let limits = Limits {
        thaw_deadline: Duration::from_millis(100),
        ..Limits::default()
    };
    let mut c = Coordinator::new(limits, Millis(0)).unwrap();
    c.register(reg(1, 10)).unwrap();
    c.register(reg(2, 20)).unwrap();
    c.handle(Event::Ready, Millis(0));
    let freeze = RequestId(1);
    c.handle(
        Event::HostRequest {
            request: freeze,
            op: HostOp::Freeze,
        },
        Millis(1),
    );
    let txn = TxnId(1);
    for id in [1, 2] {
        c.handle(
            Event::AppAck {
                participant: p(id),
                txn,
                op: AppOp::Freeze,
                ok: true,
            },
            Millis(2),
        );
    }
    c.handle(
        Event::FsFrozen {
            txn,
            result: Ok(()),
        },
        Millis(3),
    );
    let thaw = RequestId(2);
    c.handle(
        Event::HostRequest {
            request: thaw,
            op: HostOp::Thaw,
        },
        Millis(10),
    );
    c.handle(
        Event::FsThawed {
            txn,
            result: Ok(()),
        },
        Millis(11),
    );
    // Participant 2 (higher tier, told first) acks; participant 1 never does.
    c.handle(
        Event::AppAck {
            participant: p(2),
            txn,
            op: AppOp::Thaw,
            ok: true,
        },
        Millis(12),
    );
    let at_deadline = c.tick(Millis(111));
    assert!(
        at_deadline.contains(&reply(thaw, Status::Fail)),
        "{at_deadline:?}"
    );
    assert_eq!(c.state_kind(), StateKind::Idle);
    let check = RequestId(3);
    let actions = c.handle(
        Event::HostRequest {
            request: check,
            op: HostOp::Check,
        },
        Millis(112),
    );
    assert!(
        !actions.contains(&reply(check, Status::Fail)),
        "the next backup is refused: {actions:?}"
    );
}
