//! Hook directories as coordinator participants, run by hv-vss-hooks' runner thread.
//!
//! # Mechanism
//!
//! Each configured directory is one participant named `hooks:<dir>`, registered at start
//! with its tier and with no timeout of its own beyond the request's deadline (each hook is
//! bounded by the directory's per-hook timeout, and the run by the deadline). For each
//! notification:
//!
//! - **check**: the directory is loaded ([`HookSet::load`]); unsafe files are skipped and
//!   logged; the ack is ok, unless the directory itself is unsafe or unreadable (none of
//!   its hooks could run: a veto, logged).
//! - **freeze**: loaded again (what runs is what is there now, read before any FIFREEZE),
//!   then run on the runner thread with the ack deadline; its report is the ack.
//! - **thaw**: the set that froze is run with `thaw`; its report is the ack.
//! - **abort**: the hooks the freeze started are told `abort` (style-mapped) in reverse;
//!   never acked. If the freeze run has not reported yet, the abort starts when it does.
//!
//! The coordinator sends freeze before the first FIFREEZE and thaw/abort after the last
//! FITHAW, and acks come only from finished runs, so no hook runs while our filesystems
//! are frozen. In depth, the freeze-safety owner's [`ExecPermit`] is asked when a run is
//! submitted (on the loop thread) and by the runner right before each hook. A freeze
//! submitted while it is closed fails (a veto); a thaw or abort waits until it opens (a
//! FITHAW that failed and is being retried: the coordinator tells participants thaw
//! anyway), so each directory told to freeze still gets exactly one of them. Hook output is only logged (through the log gate), never written by us.

use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hv_vss_core::{AppOp, Coordinator, Event, Millis, ParticipantId, Registration, TxnId};
use hv_vss_hooks::{HookDir, HookOp, HookRunner, HookSet, RunReport};

use crate::config::HookDirSettings;
use crate::safety::ExecPermit;

/// Output shown per failing hook in the log.
const LOG_OUTPUT: usize = 2048;

#[derive(Debug)]
struct Dir {
    participant: ParticipantId,
    name: String,
    dir: HookDir,
    /// Loaded at freeze; thaw and abort use the same set.
    set: Option<Arc<HookSet>>,
    /// The last freeze run's report, for the abort.
    freeze: Option<RunReport>,
    /// An abort is owed once the running freeze reports.
    abort_after_freeze: bool,
}

/// What a runner job was for.
#[derive(Debug, Clone, Copy)]
struct Job {
    dir: usize,
    txn: TxnId,
    op: AppOp,
}

/// What a runner job runs.
#[derive(Debug)]
enum Run {
    Op(Arc<HookSet>, HookOp, Instant),
    /// Abort the hooks this freeze report started.
    Abort(Arc<HookSet>, RunReport, Instant),
}

/// A thaw or abort waiting for the freeze-safety owner to permit exec.
#[derive(Debug)]
struct Deferred {
    dir: usize,
    txn: TxnId,
    op: AppOp,
    run: Run,
}

/// The configured hook directories and their runner.
#[derive(Debug)]
pub struct Hooks {
    runner: Option<HookRunner>,
    dirs: Vec<Dir>,
    jobs: BTreeMap<u64, Job>,
    next_job: u64,
    /// Acks ready to feed the coordinator.
    acks: Vec<Event>,
    /// The freeze-safety owner's permission to execute.
    exec: ExecPermit,
    deferred: Vec<Deferred>,
}

impl Hooks {
    /// Registers one participant per directory; the runner thread starts only if there is
    /// a directory.
    pub fn start(
        dirs: &[HookDirSettings],
        coord: &mut Coordinator,
        mut next_id: impl FnMut() -> ParticipantId,
        exec: ExecPermit,
    ) -> anyhow::Result<Self> {
        let mut out = Vec::new();
        // Bounded by the request deadline only: the per-hook timeout bounds each hook.
        let limits = coord.limits();
        let whole = limits
            .check_deadline
            .max(limits.freeze_deadline)
            .max(limits.thaw_deadline);
        for d in dirs {
            let participant = next_id();
            let name = format!("hooks:{}", d.dir.display());
            coord.register(Registration {
                id: participant,
                name: name.clone(),
                tier: d.tier,
                timeout: Some(whole),
            })?;
            tracing::info!(dir = %d.dir.display(), style = %d.style, tier = d.tier, timeout_ms = d.timeout.as_millis() as u64, "hook directory registered");
            out.push(Dir {
                participant,
                name,
                dir: HookDir {
                    path: d.dir.clone(),
                    style: d.style,
                    timeout: d.timeout,
                },
                set: None,
                freeze: None,
                abort_after_freeze: false,
            });
        }
        let runner = if out.is_empty() {
            None
        } else {
            let exec = exec.clone();
            Some(HookRunner::spawn_gated(Arc::new(move || exec.allowed()))?)
        };
        Ok(Self {
            runner,
            dirs: out,
            jobs: BTreeMap::new(),
            next_job: 0,
            acks: Vec::new(),
            exec,
            deferred: Vec::new(),
        })
    }

    /// The runner's wake descriptor, if any directory is configured.
    pub fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        self.runner.as_ref().map(HookRunner::wake_fd)
    }

    /// Whether `participant` is a hook directory.
    pub fn owns(&self, participant: ParticipantId) -> bool {
        self.dirs.iter().any(|d| d.participant == participant)
    }

    /// Acks ready for the coordinator.
    pub fn take_acks(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.acks)
    }

    fn ack(&mut self, i: usize, txn: TxnId, op: AppOp, ok: bool) {
        self.acks.push(Event::AppAck {
            participant: self.dirs[i].participant,
            txn,
            op,
            ok,
        });
    }

    fn load(&mut self, i: usize) -> Option<Arc<HookSet>> {
        let d = &mut self.dirs[i];
        match HookSet::load(&d.dir) {
            Ok(set) => {
                for skipped in set.skipped() {
                    tracing::warn!(participant = %d.name, hook = %skipped, "hook skipped");
                }
                let set = Arc::new(set);
                d.set = Some(Arc::clone(&set));
                Some(set)
            }
            Err(e) => {
                tracing::error!(participant = %d.name, error = %e, "hook directory unusable: none of its hooks can run; vetoing");
                d.set = None;
                None
            }
        }
    }

    fn submit(&mut self, i: usize, txn: TxnId, op: AppOp, run: Run) {
        let Some(runner) = &self.runner else { return };
        // Checked here too, on the loop thread, before anything is queued. A freeze the
        // freeze-safety owner refuses fails at once (a veto); a thaw or abort waits until
        // it permits exec again ([`Hooks::exec_permitted`]): every directory told to
        // freeze still gets one of them, never while our filesystems are frozen.
        if !self.exec.allowed() {
            if op == AppOp::Freeze {
                tracing::error!(participant = %self.dirs[i].name, txn = txn.0, "freeze hooks not run: filesystems are frozen (internal ordering error); vetoing");
                self.ack(i, txn, op, false);
            } else {
                tracing::warn!(participant = %self.dirs[i].name, txn = txn.0, op = ?op, "hooks deferred until nothing of ours is frozen");
                self.deferred.push(Deferred {
                    dir: i,
                    txn,
                    op,
                    run,
                });
            }
            return;
        }
        self.next_job += 1;
        let job = self.next_job;
        self.jobs.insert(job, Job { dir: i, txn, op });
        match run {
            Run::Op(set, hook_op, until) => runner.start(job, set, hook_op, until),
            Run::Abort(set, report, until) => runner.start_abort(job, set, report, until),
        }
    }

    /// The freeze-safety owner permits exec again: runs the thaws and aborts deferred
    /// meanwhile, each with a fresh budget (its stage's deadline has likely passed; a late
    /// thaw ack is rejected harmlessly, but the hooks are told).
    pub fn exec_permitted(&mut self) {
        if !self.exec.allowed() {
            return;
        }
        for d in std::mem::take(&mut self.deferred) {
            let run = match d.run {
                Run::Op(set, op, _) => {
                    let until = Instant::now() + set.budget();
                    Run::Op(set, op, until)
                }
                Run::Abort(set, report, _) => {
                    let until = Instant::now() + set.budget();
                    Run::Abort(set, report, until)
                }
            };
            self.submit(d.dir, d.txn, d.op, run);
        }
    }

    /// Executes a notification for a hook participant.
    pub fn notify(
        &mut self,
        participant: ParticipantId,
        txn: TxnId,
        op: AppOp,
        deadline: Option<Millis>,
        now: Millis,
    ) {
        let Some(i) = self.dirs.iter().position(|d| d.participant == participant) else {
            return;
        };
        let until = Instant::now() + Duration::from_millis(deadline.map_or(0, |d| d.since(now)));
        match op {
            AppOp::Check => {
                let ok = self.load(i).is_some();
                self.ack(i, txn, op, ok);
            }
            AppOp::Freeze => {
                self.dirs[i].freeze = None;
                self.dirs[i].abort_after_freeze = false;
                match self.load(i) {
                    Some(set) => self.submit(i, txn, op, Run::Op(set, HookOp::Freeze, until)),
                    None => self.ack(i, txn, op, false),
                }
            }
            AppOp::Thaw => match self.dirs[i].set.clone() {
                Some(set) => self.submit(i, txn, op, Run::Op(set, HookOp::Thaw, until)),
                // Nothing was loaded, so nothing froze.
                None => self.ack(i, txn, op, true),
            },
            AppOp::Abort => self.abort(i, txn),
        }
    }

    fn abort(&mut self, i: usize, txn: TxnId) {
        let d = &mut self.dirs[i];
        let (Some(set), freeze) = (d.set.clone(), d.freeze.take()) else {
            return;
        };
        match freeze {
            Some(report) => {
                let until = Instant::now() + set.budget();
                self.submit(i, txn, AppOp::Abort, Run::Abort(set, report, until));
            }
            // The freeze still runs (its stage was given up): abort when it reports.
            None => d.abort_after_freeze = true,
        }
    }

    /// Takes the runner's finished reports: acks for freeze and thaw, logs for all.
    pub fn drain(&mut self) {
        let Some(runner) = &self.runner else { return };
        for (job, report) in runner.drain() {
            let Some(Job { dir, txn, op }) = self.jobs.remove(&job) else {
                continue;
            };
            log_report(&self.dirs[dir].name, txn, &report);
            match op {
                AppOp::Freeze => {
                    self.dirs[dir].freeze = Some(report.clone());
                    self.ack(dir, txn, op, report.ok);
                    if std::mem::take(&mut self.dirs[dir].abort_after_freeze) {
                        self.abort(dir, txn);
                    }
                }
                AppOp::Thaw => self.ack(dir, txn, op, report.ok),
                AppOp::Check | AppOp::Abort => {}
            }
        }
    }
}

fn log_report(name: &str, txn: TxnId, report: &RunReport) {
    for r in report.failures() {
        let output = String::from_utf8_lossy(&r.output[..r.output.len().min(LOG_OUTPUT)]);
        tracing::warn!(participant = %name, txn = txn.0, hook = %r.path.display(), arg = r.arg, outcome = %r.outcome, output = %output, truncated = r.truncated, "hook failed");
    }
    tracing::info!(participant = %name, txn = txn.0, op = %report.op, ok = report.ok, hooks = report.results.len(), "hooks ran");
}

#[cfg(test)]
mod tests {
    use super::*;
    use hv_vss_core::Limits;
    use hv_vss_hooks::HookStyle;
    use rustix::event::{PollFd, PollFlags, Timespec};
    use std::os::unix::fs::PermissionsExt;

    /// The acks of the next finished runs, as the daemon's loop would get them.
    fn next_acks(hooks: &mut Hooks) -> Vec<Event> {
        let give_up = Instant::now() + Duration::from_secs(20);
        loop {
            let acks = hooks.take_acks();
            if !acks.is_empty() {
                return acks;
            }
            assert!(Instant::now() < give_up, "no hook report");
            let ready = {
                let wake = hooks.wake_fd().unwrap();
                let mut fds = [PollFd::new(&wake, PollFlags::IN)];
                let second = Timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                };
                rustix::event::poll(&mut fds, Some(&second)).unwrap() == 1
            };
            if ready {
                hooks.drain();
            }
        }
    }

    const PARTICIPANT: ParticipantId = ParticipantId(1);
    const TXN: TxnId = TxnId(1);
    const DEADLINE: Option<Millis> = Some(Millis(60_000));

    /// One hook directory with one hook that appends its argument to a log.
    struct Fixture {
        _dir: tempfile::TempDir,
        marker: tempfile::TempDir,
        hooks: Hooks,
    }

    impl Fixture {
        /// `None` unless root (hook files must be root-owned).
        fn new(exec: ExecPermit) -> Option<Self> {
            if !hv_vss_testutil::is_root() {
                eprintln!("skipped: hook files must be root-owned");
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let marker = tempfile::tempdir().unwrap();
            let hook = dir.path().join("10-log");
            let log = marker.path().join("log");
            let script = format!("#!/bin/sh\necho \"$1\" >> {}\n", log.display());
            std::fs::write(&hook, script).unwrap();
            std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
            let settings = HookDirSettings {
                dir: dir.path().to_path_buf(),
                style: HookStyle::Native,
                tier: 100,
                timeout: Duration::from_secs(20),
            };
            let mut coord = Coordinator::new(Limits::default(), Millis(0)).unwrap();
            let hooks = Hooks::start(&[settings], &mut coord, || PARTICIPANT, exec).unwrap();
            Some(Self {
                _dir: dir,
                marker,
                hooks,
            })
        }

        fn notify(&mut self, op: AppOp) {
            self.hooks.notify(PARTICIPANT, TXN, op, DEADLINE, Millis(0));
        }

        /// What the hook was run with so far, one argument a line.
        fn log(&self) -> String {
            std::fs::read_to_string(self.marker.path().join("log")).unwrap_or_default()
        }
    }

    fn ack(op: AppOp, ok: bool) -> Event {
        Event::AppAck {
            participant: PARTICIPANT,
            txn: TXN,
            op,
            ok,
        }
    }

    /// Defence in depth (R60): a hook directory's freeze is refused, and no hook started,
    /// while the freeze-safety owner's permit says no exec, whatever told it to run.
    #[test]
    fn no_hook_starts_while_the_freeze_safety_owner_refuses_exec() {
        let Some(mut fx) = Fixture::new(ExecPermit::refusing()) else {
            return;
        };
        fx.notify(AppOp::Freeze);
        assert_eq!(next_acks(&mut fx.hooks), [ack(AppOp::Freeze, false)]);
        assert_eq!(fx.log(), "", "a hook ran while exec was refused");
    }

    /// A thaw due while exec is refused (a FITHAW being retried) is not run then, nor
    /// dropped: it runs once the freeze-safety owner permits exec again.
    #[test]
    fn a_thaw_due_while_exec_is_refused_runs_once_it_is_permitted() {
        let Some(mut fx) = Fixture::new(ExecPermit::default()) else {
            return;
        };
        fx.notify(AppOp::Freeze);
        assert_eq!(next_acks(&mut fx.hooks), [ack(AppOp::Freeze, true)]);

        // Frozen (as the owner's permit says), and thaw is due.
        let frozen = ExecPermit::refusing();
        fx.hooks.exec = frozen.clone();
        fx.notify(AppOp::Thaw);
        std::thread::sleep(Duration::from_millis(300));
        fx.hooks.drain();
        assert!(fx.hooks.take_acks().is_empty());
        assert_eq!(fx.log(), "freeze\n", "thaw ran while exec was refused");

        frozen.allow();
        fx.hooks.exec_permitted();
        assert_eq!(next_acks(&mut fx.hooks), [ack(AppOp::Thaw, true)]);
        assert_eq!(fx.log(), "freeze\nthaw\n");
    }
}
