//! Host requests in: starting a transaction, refusing what cannot start now, recording
//! each request and its one answer.

use super::*;

impl Coordinator {
    pub(super) fn on_request(
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

    pub(super) fn abort_freeze_for_thaw(
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

    pub(super) fn refuse(
        &mut self,
        request: RequestId,
        op: HostOp,
        reason: Refusal,
        out: &mut Vec<Action>,
    ) {
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

    pub(super) fn new_txn(&mut self, kind: TxnKind) -> Box<Txn> {
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

    pub(super) fn record_request(
        &mut self,
        txn: &mut Txn,
        request: RequestId,
        op: HostOp,
    ) -> Pending {
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

    pub(super) fn answer(
        &mut self,
        txn: &mut Txn,
        request: RequestId,
        status: Status,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::Reply { request, status });
        if let Some(r) = txn.requests.iter_mut().find(|r| r.request == request) {
            r.answer = Some(Answer::Replied {
                status,
                at: self.now,
            });
        }
    }

    pub(super) fn unanswerable(
        &mut self,
        txn: &mut Txn,
        request: RequestId,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::Unanswerable { request });
        if let Some(r) = txn.requests.iter_mut().find(|r| r.request == request) {
            r.answer = Some(Answer::Unanswerable { at: self.now });
        }
    }

    pub(super) fn fail(&mut self, txn: &mut Txn, failure: Failure, out: &mut Vec<Action>) {
        out.push(Action::Notice(Notice::Failed {
            txn: txn.id,
            failure: failure.clone(),
        }));
        txn.failures.push(failure);
    }

    pub(super) fn start_check(&mut self, request: RequestId, out: &mut Vec<Action>) -> State {
        let mut txn = self.new_txn(TxnKind::Check);
        let req = self.record_request(&mut txn, request, HostOp::Check);
        let apps = self.start_apps(&txn, AppOp::Check);
        self.check_apps_progress(txn, req, apps, out)
    }

    pub(super) fn start_freeze(&mut self, request: RequestId, out: &mut Vec<Action>) -> State {
        let mut txn = self.new_txn(TxnKind::Backup);
        let req = self.record_request(&mut txn, request, HostOp::Freeze);
        let apps = self.start_apps(&txn, AppOp::Freeze);
        self.freeze_apps_progress(txn, req, apps, out)
    }
}
