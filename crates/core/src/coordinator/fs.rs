//! The filesystem stages: what the freezer is asked to do and what it reported.

use super::*;

impl Coordinator {
    pub(super) fn fs_issue(&mut self, txn: &mut Txn, stage: Stage) {
        txn.fs.push(FsStageRecord {
            stage,
            issued_at: self.now,
            completed_at: None,
            result: None,
        });
    }

    pub(super) fn fs_done(&mut self, txn: &mut Txn, stage: Stage, result: &FsResult) {
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

    pub(super) fn issue_thaw_fs(&mut self, txn: &mut Txn, out: &mut Vec<Action>) {
        out.push(Action::ThawFs { txn: txn.id });
        self.fs_issue(txn, Stage::ThawFs);
        txn.fs_state = FsState::Thawing;
    }

    // ---- CHECK ------------------------------------------------------------------------

    pub(super) fn on_fs_checked(
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

    pub(super) fn on_fs_frozen(
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

    pub(super) fn on_fs_thawed(
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

    pub(super) fn thawed(&mut self, txn: &mut Txn, result: FsResult, out: &mut Vec<Action>) {
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
}
