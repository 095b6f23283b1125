//! Running hook sets off the caller's thread, for a daemon with a poll loop.
//!
//! # Mechanism
//!
//! One worker thread takes jobs from a channel in order and runs them one after another with
//! [`HookSet::run`] or [`HookSet::run_abort`]. Each report goes into a shared list, then the
//! worker adds 1 to an eventfd (`EFD_NONBLOCK | EFD_CLOEXEC`). The eventfd is readable while
//! reports wait: the daemon polls [`HookRunner::wake_fd`] and calls [`HookRunner::drain`],
//! which resets the eventfd *before* taking the list, so a report pushed meanwhile either is
//! taken now or wakes the loop again; none is lost. A spurious wake yields an empty drain.
//!
//! Dropping the runner closes the channel and joins the worker, which first finishes the
//! jobs already started (each bounded by its deadline and the kill grace).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;
use std::{fmt, io, thread};

use rustix::event::EventfdFlags;

use crate::exec::{HookOutcome, HookResult};
use crate::{HookOp, HookSet, RunReport};

/// Asked right before each hook is started; `false` refuses it. Shared with the thread
/// that decides (a daemon's freeze-safety owner).
pub type MayExec = Arc<dyn Fn() -> bool + Send + Sync>;

/// What a job runs.
#[derive(Debug)]
enum Plan {
    /// [`HookSet::run`].
    Op(HookOp),
    /// [`HookSet::run_abort`] after this freeze report.
    AbortAfter(RunReport),
}

#[derive(Debug)]
struct Job {
    id: u64,
    set: Arc<HookSet>,
    plan: Plan,
    deadline: Instant,
}

struct Done {
    reports: Mutex<Vec<(u64, RunReport)>>,
    wake: OwnedFd,
}

impl Done {
    fn push(&self, id: u64, report: RunReport) {
        self.reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((id, report));
        // The counter cannot overflow in practice (2^64 - 2 reports); EAGAIN would mean it
        // is already readable, which is all the wake needs.
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }
}

/// Runs hook sets on one worker thread and reports through an eventfd.
pub struct HookRunner {
    jobs: Option<Sender<Job>>,
    done: Arc<Done>,
    worker: Option<JoinHandle<()>>,
}

impl fmt::Debug for HookRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookRunner")
            .field("wake", &self.done.wake)
            .field(
                "running",
                &self.worker.as_ref().is_some_and(|w| !w.is_finished()),
            )
            .finish()
    }
}

impl HookRunner {
    /// Start the worker thread and create the eventfd.
    pub fn spawn() -> io::Result<HookRunner> {
        Self::spawn_gated(Arc::new(|| true))
    }

    /// [`HookRunner::spawn`], the worker asking `may_exec` right before each hook it starts
    /// ([`HookSet::run_if`]): a refused hook is not started and fails its run.
    pub fn spawn_gated(may_exec: MayExec) -> io::Result<HookRunner> {
        let wake = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        let done = Arc::new(Done {
            reports: Mutex::new(Vec::new()),
            wake,
        });
        let (jobs, queue) = channel::<Job>();
        let worker_done = Arc::clone(&done);
        let worker = thread::Builder::new()
            .name("hv-vss-hooks".into())
            .spawn(move || {
                for job in queue {
                    let report = match &job.plan {
                        Plan::Op(op) => job.set.run_if(*op, job.deadline, &*may_exec),
                        Plan::AbortAfter(freeze) => {
                            job.set.run_abort_if(freeze, job.deadline, &*may_exec)
                        }
                    };
                    worker_done.push(job.id, report);
                }
            })?;
        Ok(HookRunner {
            jobs: Some(jobs),
            done,
            worker: Some(worker),
        })
    }

    /// Queue `set.run(op, deadline)` as job `job`. Its report arrives through
    /// [`HookRunner::drain`].
    pub fn start(&self, job: u64, set: Arc<HookSet>, op: HookOp, deadline: Instant) {
        self.submit(Job {
            id: job,
            set,
            plan: Plan::Op(op),
            deadline,
        });
    }

    /// Queue `set.run_abort(&freeze, deadline)` as job `job`: abort exactly the hooks that
    /// `freeze` started, in reverse.
    pub fn start_abort(&self, job: u64, set: Arc<HookSet>, freeze: RunReport, deadline: Instant) {
        self.submit(Job {
            id: job,
            set,
            plan: Plan::AbortAfter(freeze),
            deadline,
        });
    }

    fn submit(&self, job: Job) {
        let Some(jobs) = &self.jobs else { return };
        if let Err(unsent) = jobs.send(job) {
            // The worker is gone (it panicked): answer at once rather than never.
            let job = unsent.0;
            let report = runner_gone_report(&job);
            self.done.push(job.id, report);
        }
    }

    /// Readable (`POLLIN`) while reports are waiting; never read it directly, call
    /// [`HookRunner::drain`].
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.done.wake.as_fd()
    }

    /// Take the finished reports, in completion order, with their job ids. Non-blocking.
    pub fn drain(&self) -> Vec<(u64, RunReport)> {
        let mut counter = [0u8; 8];
        // Reset first (EAGAIN: nothing was signalled), then take: see the module doc.
        let _ = rustix::io::read(&self.done.wake, &mut counter);
        std::mem::take(
            &mut *self
                .done
                .reports
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

impl Drop for HookRunner {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// A report for a job the worker can no longer run: every due hook, not started.
fn runner_gone_report(job: &Job) -> RunReport {
    let (op, hooks): (HookOp, Vec<&PathBuf>) = match &job.plan {
        Plan::Op(op @ HookOp::Freeze) => (*op, job.set.hooks().iter().collect()),
        Plan::Op(op) => (*op, job.set.hooks().iter().rev().collect()),
        Plan::AbortAfter(freeze) => {
            let told: Vec<_> = freeze.started().collect();
            let hooks = job.set.hooks().iter().rev();
            (
                HookOp::Abort,
                hooks.filter(|p| told.contains(&p.as_path())).collect(),
            )
        }
    };
    let arg = job.set.style().arg(op);
    let why = HookOutcome::SpawnFailed("the hook runner thread has stopped".into());
    RunReport {
        op,
        ok: hooks.is_empty(),
        results: hooks
            .into_iter()
            .map(|p| HookResult::not_started(p, arg, why.clone()))
            .collect(),
    }
}
