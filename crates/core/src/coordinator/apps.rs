//! The application stages: tiers told in order, acks and deadlines, vetoes, clients that
//! leave mid-stage, and the abort owed to every client told to freeze.

use super::*;

impl Coordinator {
    pub(super) fn check_apps_progress(
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

    pub(super) fn check_failed(
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

    pub(super) fn freeze_apps_progress(
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
    pub(super) fn freeze_failed(
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

    pub(super) fn thaw_apps_progress(
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
    pub(super) fn thaw_rest_at_once(
        &mut self,
        txn: &mut Txn,
        apps: &mut AppStage,
        out: &mut Vec<Action>,
    ) {
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
    pub(super) fn start_apps(&self, txn: &Txn, op: AppOp) -> AppStage {
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

    pub(super) fn eligible(m: &Member, op: AppOp) -> bool {
        m.gone_at.is_none()
            && match op {
                AppOp::Thaw => m.owed_thaw_or_abort(),
                _ => !m.told(op),
            }
    }

    /// If the current tier is done, starts the next one that has members. Returns true
    /// while some member owes an ack.
    pub(super) fn next_tier(
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
    pub(super) fn send(
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
    pub(super) fn abort_reason(txn: &Txn) -> Failure {
        txn.early_end
            .clone()
            .or_else(|| txn.failures.first().cloned())
            // Not reachable: compensation always follows a recorded failure.
            .unwrap_or(Failure::Shutdown)
    }

    /// Records the outcome of the open notification `op` to `p`; if we gave up waiting
    /// (anything but an answer), its ack will be "late".
    pub(super) fn settle(
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
    pub(super) fn cancel_stage(&mut self, txn: &mut Txn, apps: &mut AppStage) {
        let waiting: Vec<ParticipantId> = apps.waiting.keys().copied().collect();
        for p in waiting {
            self.settle(txn, p, apps.op, AppOutcome::NoAnswer, None);
        }
        apps.waiting.clear();
        apps.rest.clear();
    }

    // ---- acks and departures --------------------------------------------------------------

    pub(super) fn on_ack(
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

    pub(super) fn take_ack(
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

    pub(super) fn on_gone(&mut self, st: State, p: ParticipantId, out: &mut Vec<Action>) -> State {
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

    pub(super) fn gone_in_stage(
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
}
