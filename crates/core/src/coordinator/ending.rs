//! How a transaction ends: transport loss, shutdown, guardian loss, compensation (thaw
//! and abort after a failure), and the report.

use super::*;

impl Coordinator {
    pub(super) fn on_transport_lost(&mut self, st: State, out: &mut Vec<Action>) -> State {
        self.abandon(st, Failure::TransportLost, out)
    }

    pub(super) fn on_shutdown(&mut self, st: State, out: &mut Vec<Action>) -> State {
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
    pub(super) fn abandon(&mut self, st: State, why: Failure, out: &mut Vec<Action>) -> State {
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

    pub(super) fn on_guardian_died(&mut self, st: State, out: &mut Vec<Action>) -> State {
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
    pub(super) fn compensate(
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

    pub(super) fn finish_compensation(
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
    pub(super) fn end(
        &mut self,
        mut txn: Box<Txn>,
        resume: Resume,
        out: &mut Vec<Action>,
    ) -> State {
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

    pub(super) fn report(&self, txn: Txn) -> TxnReport {
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
