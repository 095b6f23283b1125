//! The main loop: one thread polling the transport, the filesystem worker's wake fd, the
//! signal pipe and the guardian socket, feeding the coordinator and executing its actions.
//! This file is the loop itself (`poll_once`, `pump`, `execute`); each other job has its
//! own file under `daemon/`:
//!
//! - `host.rs`: requests read from the transport, replies written back;
//! - `reopen.rs`: losing and reopening the transport, with its backoff;
//! - `frozen.rs`: the worker's outcomes, what they mean for the frozen state
//!   ([`crate::safety`] owns it: log gate, dumpability, exec), the urgent kernel-log lines;
//! - `reports.rs`: transaction reports, BU_COMPLETE and the history file;
//! - `guardian_watch.rs`: the guardian's death and respawn, its heartbeat and deadline;
//! - `signals.rs`: SIGTERM/SIGINT; `watchdog.rs`: systemd's watchdog;
//!   `log_limit.rs`: the per-subject log rate limit.
//!
//! The application socket and hook directories are [`crate::apps`]: the loop polls its
//! descriptors (one entry in `poll_once`), hands it the application actions (`execute`), and
//! lets it write its queued lines at the end of every batch (`pump`).
//!
//! # Ordering rules
//!
//! - Actions run in the order the coordinator gives them; a `Reply` is written to the
//!   transport before any log line about it (R62).
//! - The log gate is held from just before the `FreezeFs` work starts until the worker says
//!   nothing of ours is frozen (R60, R61). Reports are kept in memory until then and only
//!   then logged and appended to the history file. In UIO mode a backup's history entry
//!   then waits for the host's BU_COMPLETE ([`crate::completion`]).
//! - While anything of ours is frozen, the few conditions that mean trouble (a thaw failing,
//!   a FIFREEZE past its deadline, guardian or transport lost, exiting still frozen) also
//!   write one line to `/dev/kmsg` ([`crate::kmsg`]); nothing else ever does.
//! - Follow-up events (transport loss discovered while replying, guardian loss) go through
//!   a queue, so the coordinator is never re-entered.
//!
//! # Shutdown (R63)
//!
//! SIGTERM/SIGINT ends the coordinator's work at once; if the worker is still retrying a
//! thaw that FITHAW refused, the loop keeps waiting for it for up to the THAW budget
//! (`thaw_deadline`) with the log gate held. If it still fails, the daemon exits with an
//! error, gate still held, and the worker's frozen set keeps its journal for the guardian
//! and the next start.
//!
//! # Transport loss (R13)
//!
//! Any failure that requires a reopen closes the transport, tells the coordinator
//! (`TransportLost`: it thaws and gives up the request in flight), and schedules a reopen
//! with a bounded exponential backoff; the daemon keeps serving once it is registered again.
//! A `/dev/uioN` transport is not reopened blindly at the same path: after a rescind (R15)
//! the device is found again in sysfs, rebound to `uio_hv_generic` on a helper thread if
//! `hv_utils` took it (never while something is frozen), and opened at its new node
//! ([`Reopener`]). Each waiting step is logged once, then at most once per interval.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use hv_vss_core::report::CompletionEnd;
use hv_vss_core::{Action, Coordinator, Event, HostOp, Millis, RequestId, TxnId, TxnReport};
use hv_vss_freezer::{FreezeReport, ThawReport};
use rustix::event::{PollFd, PollFlags, Timespec};

use crate::apps::{AppServer, Slot};
use crate::completion::{BU_COMPLETE_WAIT, CompletionWait};
mod deferred;
mod frozen;
mod guardian_watch;
mod host;
mod log_limit;
mod reopen;
mod reports;
mod signals;
mod status;
mod watchdog;

pub use reopen::ReopenBackoff;
pub use signals::signal_pipe;

use self::log_limit::LogLimit;
use self::reports::log_notice;
use self::watchdog::watchdog_interval;
use crate::config::{Settings, TransportChoice};
use crate::fswork::FsCommand;
use crate::fsworker::FsWorker;
use crate::guardian::{Guardian, GuardianLink};
use crate::history::{History, HistoryEntry};
use crate::kmsg::{Kmsg, Urgent};
use crate::logbuf::LogGate;
use crate::safety::{ExecPermit, FreezeSafety};
use crate::transport::{Reopener, Transport};

/// Everything the loop owns.
pub struct Daemon {
    settings: Settings,
    /// Whether anything of ours is frozen; owns the log gate.
    safety: FreezeSafety,
    debug: bool,
    start: Instant,
    coord: Coordinator,
    queue: VecDeque<Event>,
    transport: Option<Transport>,
    /// Bumped at every transport loss; requests of older generations are unanswerable.
    generation: u64,
    reopen_at: Option<Instant>,
    reopen_backoff: ReopenBackoff,
    lost_log: LogLimit,
    reopen_log: LogLimit,
    /// Finds the device again after a loss (`/dev/uioN`: rescan sysfs, rebind, R15).
    reopener: Reopener,
    /// The last "not yet" step of a reopen, so each new step is logged once.
    last_wait: Option<&'static str>,
    wait_log: LogLimit,
    next_request: u64,
    pending: BTreeMap<RequestId, (u64, u64, HostOp)>,
    worker: FsWorker,
    guardian: Option<Guardian>,
    /// Shared with the worker: fds to the guardian before each FIFREEZE.
    guardian_link: GuardianLink,
    next_heartbeat: Instant,
    /// When the last heartbeat went to the guardian (see `heartbeat_is_stale`).
    last_heartbeat: Instant,
    guardian_retry_at: Option<Instant>,
    signals: UnixStream,
    watchdog: Option<Duration>,
    next_watchdog: Instant,
    history: History,
    freeze_reports: BTreeMap<TxnId, FreezeReport>,
    thaw_reports: BTreeMap<TxnId, ThawReport>,
    deferred_reports: self::deferred::DeferredReports<TxnReport>,
    /// The backup entry waiting for BU_COMPLETE (UIO mode).
    completion: CompletionWait,
    /// Entries to append to the history as soon as nothing is frozen, in order.
    ready_entries: Vec<HistoryEntry>,
    stray_bu_complete_log: LogLimit,
    /// FREEZE-while-frozen lines (host-triggerable: a flood must not fill the held ring).
    already_frozen_log: LogLimit,
    /// Per-request lines ("host request", "answered") while frozen: they go to the held
    /// ring, which a host's flood must not fill (R71).
    request_lines_while_frozen: LogLimit,
    /// "request refused" lines while frozen (host-triggerable, R71).
    refused_while_frozen_log: LogLimit,
    /// Urgent lines while frozen (R61).
    kmsg: Kmsg,
    refused_logged_at: Option<Instant>,
    refused_suppressed: u64,
    stopping: bool,
    stopped: bool,
    /// The application socket and hook directories.
    apps: AppServer,
    /// The read-only control socket for `hv-vss status` (none if it could not be bound).
    control: Option<crate::control::ControlServer>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("state", &self.coord.state_kind())
            .field("generation", &self.generation)
            .field("frozen", &self.safety.is_frozen())
            .field("log_held", &self.safety.gate().is_held())
            .finish_non_exhaustive()
    }
}

/// What the startup code hands to the loop.
#[derive(Debug)]
pub struct Parts {
    pub settings: Settings,
    pub gate: LogGate,
    /// Shared with the hook runner (`apps`); owned by the freeze-safety owner.
    pub exec: ExecPermit,
    pub debug: bool,
    pub start: Instant,
    pub coord: Coordinator,
    /// None: lost during start-up; the loop reopens it.
    pub transport: Option<Transport>,
    pub worker: FsWorker,
    pub guardian: Guardian,
    /// The link the worker was started with; connected to `guardian` here.
    pub guardian_link: GuardianLink,
    pub signals: UnixStream,
    /// The kernel log, opened before any freeze.
    pub kmsg: Kmsg,
    pub apps: AppServer,
}

impl Daemon {
    pub fn new(parts: Parts) -> Self {
        let watchdog = watchdog_interval(sd_notify::watchdog_enabled());
        let history = History::new(&parts.settings.state_dir, parts.settings.history_limit);
        let mut reopen_backoff = ReopenBackoff::default();
        if parts.transport.is_some() {
            reopen_backoff.opened(Instant::now());
        }
        Self {
            history,
            safety: FreezeSafety::new(parts.gate, parts.exec),
            debug: parts.debug,
            start: parts.start,
            coord: parts.coord,
            queue: VecDeque::new(),
            reopen_at: parts.transport.is_none().then(Instant::now),
            transport: parts.transport,
            generation: 0,
            reopen_backoff,
            lost_log: LogLimit::default(),
            reopen_log: LogLimit::default(),
            reopener: Reopener::new(&parts.settings.transport),
            last_wait: None,
            wait_log: LogLimit::default(),
            next_request: 1,
            pending: BTreeMap::new(),
            worker: parts.worker,
            guardian_link: {
                parts.guardian_link.connect(&parts.guardian);
                parts.guardian_link
            },
            next_heartbeat: Instant::now(),
            last_heartbeat: Instant::now(),
            guardian: Some(parts.guardian),
            guardian_retry_at: None,
            signals: parts.signals,
            watchdog,
            next_watchdog: Instant::now(),
            freeze_reports: BTreeMap::new(),
            thaw_reports: BTreeMap::new(),
            deferred_reports: Default::default(),
            // Only in UIO mode does BU_COMPLETE reach us (drop-in: the kernel answers it).
            completion: CompletionWait::new(
                matches!(parts.settings.transport, TransportChoice::Uio(_)),
                BU_COMPLETE_WAIT,
            ),
            ready_entries: Vec::new(),
            stray_bu_complete_log: LogLimit::default(),
            already_frozen_log: LogLimit::default(),
            request_lines_while_frozen: LogLimit::default(),
            refused_while_frozen_log: LogLimit::default(),
            kmsg: parts.kmsg,
            refused_logged_at: None,
            refused_suppressed: 0,
            stopping: false,
            stopped: false,
            apps: parts.apps,
            control: crate::control::ControlServer::bind(
                &parts.settings.state_dir,
                parts.settings.control_gid,
            )
            .inspect_err(|e| tracing::warn!(error = %e, "no control socket: hv-vss status falls back to the state files"))
            .ok(),
            settings: parts.settings,
        }
    }

    fn now(&self) -> Millis {
        Millis(u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// Runs until a shutdown has thawed everything.
    pub fn run(mut self) -> anyhow::Result<()> {
        self.queue.push_back(Event::Ready);
        self.pump();
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("serving"),
        ]);
        while !self.stopped {
            self.poll_once()?;
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        // The coordinator is done, but a thaw the worker is still retrying (FITHAW failed)
        // may leave something of ours frozen: keep retrying for up to a THAW's budget.
        let give_up = Instant::now() + self.settings.limits.thaw_deadline;
        while self.safety.is_frozen() && Instant::now() < give_up {
            self.wait_for_worker(give_up);
        }
        if self.safety.is_frozen() {
            // Still frozen: the gate stays held (no disk logging), the worker's set keeps
            // the journal when it is dropped, and the guardian (told when we exit) and the
            // next start recover it.
            tracing::error!("stopping with filesystems still frozen: FITHAW keeps failing");
            self.urgent(
                Urgent::ExitingFrozen,
                &format!(
                    "exiting with filesystems still frozen (FITHAW keeps failing); journal kept in {}: run `hv-vss thaw --recover`",
                    self.settings.state_dir.display()
                ),
            );
            anyhow::bail!(
                "stopping with filesystems still frozen (FITHAW kept failing for {:?}); their journal stays in {} for the guardian, the next start or `hv-vss thaw --recover`",
                self.settings.limits.thaw_deadline,
                self.settings.state_dir.display()
            );
        }
        self.safety.gate().release();
        self.close_completion(CompletionEnd::Shutdown);
        self.flush_reports();
        tracing::info!("stopped: nothing of ours is frozen");
        Ok(())
    }

    fn poll_timeout(&self) -> Duration {
        let now_i = Instant::now();
        let mut until: Vec<Instant> = Vec::new();
        for d in [self.coord.next_deadline(), self.completion.deadline()]
            .into_iter()
            .flatten()
        {
            until.push(now_i + Duration::from_millis(d.since(self.now())));
        }
        if self.watchdog.is_some() {
            until.push(self.next_watchdog);
        }
        if let Some(t) = self.reopen_at {
            until.push(t);
        }
        if self
            .transport
            .as_ref()
            .is_some_and(Transport::wants_service)
        {
            until.push(now_i + Duration::from_millis(10));
        }
        until.push(self.next_heartbeat);
        if self.guardian.is_none() && self.safety.may_exec() && !self.stopping {
            until.push(self.guardian_retry_at.unwrap_or(now_i));
        }
        until
            .into_iter()
            .min()
            .map(|t| t.saturating_duration_since(now_i))
            .unwrap_or(Duration::from_secs(60))
    }

    fn poll_once(&mut self) -> anyhow::Result<()> {
        let timeout = self.poll_timeout();
        let (sig_ready, wake_ready, guardian_ready, transport_ready, apps_ready, control_ready) = {
            let mut fds = Vec::with_capacity(4);
            fds.push(PollFd::new(&self.signals, PollFlags::IN));
            fds.push(PollFd::from_borrowed_fd(
                self.worker.wake_fd(),
                PollFlags::IN,
            ));
            let g = self.guardian.as_ref().map(|g| {
                fds.push(PollFd::new(g, PollFlags::IN));
                fds.len() - 1
            });
            let t_start = fds.len();
            if let Some(t) = self.transport.as_ref() {
                for fd in t.fds() {
                    fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
                }
            }
            let t_end = fds.len();
            let c = self.control.as_ref().map(|c| {
                fds.push(PollFd::from_borrowed_fd(c.fd(), PollFlags::IN));
                fds.len() - 1
            });
            // ---- applications: the listener, every client, the hook runner ----
            let app_fds = self.apps.poll_fds();
            let a_start = fds.len();
            let slots: Vec<Slot> = app_fds.iter().map(|(_, _, slot)| *slot).collect();
            for (fd, flags, _) in app_fds {
                fds.push(PollFd::from_borrowed_fd(fd, flags));
            }
            let ts = Timespec::try_from(timeout).unwrap_or(Timespec {
                tv_sec: 60,
                tv_nsec: 0,
            });
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => anyhow::bail!("poll: {e}"),
            }
            let ready = |i: usize| !fds[i].revents().is_empty();
            let control_ready = c.is_some_and(ready);
            let apps_ready: Vec<(Slot, PollFlags)> = slots
                .into_iter()
                .enumerate()
                .map(|(i, slot)| (slot, fds[a_start + i].revents()))
                .collect();
            (
                ready(0),
                ready(1),
                g.is_some_and(ready),
                (t_start..t_end).any(ready),
                apps_ready,
                control_ready,
            )
        };

        if sig_ready {
            self.on_signal();
        }
        // The guardian before the worker: a guardian that ended (having thawed) while a
        // FIFREEZE returned must fail that FREEZE, not let it be answered S_OK.
        if guardian_ready {
            self.check_guardian();
        }
        if wake_ready {
            for outcome in self.worker.drain() {
                self.on_fs_outcome(outcome);
            }
        }
        if control_ready {
            self.on_control_readable();
        }
        if transport_ready
            || self
                .transport
                .as_ref()
                .is_some_and(Transport::wants_service)
        {
            self.on_transport_readable();
        }
        let mut app_events = Vec::new();
        self.apps
            .on_ready(&apps_ready, &mut self.coord, &mut app_events);
        self.queue.extend(app_events);
        self.maybe_reopen();
        self.maybe_respawn_guardian();
        self.heartbeat();
        if self.coord.next_deadline().is_some_and(|d| d <= self.now()) {
            self.queue.push_back(Event::Tick);
        }
        if let Some(entry) = self.completion.expire(self.now()) {
            tracing::info!(
                txn = entry.report.txn.0,
                "no BU_COMPLETE from the host within {}s of the backup; storing its report as not completed",
                BU_COMPLETE_WAIT.as_secs()
            );
            self.ready_entries.push(entry);
        }
        self.pump();
        if let Some(interval) = self.watchdog {
            if Instant::now() >= self.next_watchdog {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                self.next_watchdog = Instant::now() + interval;
            }
        }
        Ok(())
    }

    /// Feeds queued events to the coordinator and executes the actions; then the
    /// applications' queued lines are written (journal first), which may find departures
    /// to feed in turn.
    fn pump(&mut self) {
        loop {
            while let Some(event) = self.queue.pop_front() {
                let now = self.now();
                let actions = self.coord.handle(event, now);
                self.execute(actions);
            }
            let mut app_events = Vec::new();
            self.apps.flush(&mut app_events);
            if app_events.is_empty() {
                break;
            }
            self.queue.extend(app_events);
        }
        self.flush_reports();
    }

    fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Reply { request, status } => self.reply(request, status),
                Action::Unanswerable { request } => {
                    if let Some((_, _, op)) = self.pending.remove(&request) {
                        tracing::warn!(
                            request = request.0,
                            op = ?op,
                            "request cannot be answered: the transport was lost"
                        );
                    }
                }
                // ---- applications: the one place their actions run ----
                Action::NotifyApp { .. } | Action::RejectAck { .. } => {
                    let now = self.now();
                    if !self.apps.execute(&action, now) {
                        // A client that left before the coordinator heard of it.
                        tracing::debug!(action = ?action, "application action for a participant already gone");
                    }
                }
                Action::CheckFs { txn } => self.worker.send(FsCommand::Check { txn }),
                Action::FreezeFs { txn } => {
                    // R60/R61: from here until the worker reports everything thawed,
                    // nothing is written to stderr or files.
                    let epoch = self.safety.begin_freeze();
                    self.guardian_link.deadline(self.guardian_deadline());
                    self.worker.send(FsCommand::Freeze { txn, epoch });
                }
                Action::ThawFs { txn } => self.worker.send(FsCommand::Thaw { txn }),
                Action::Notice(notice) => {
                    self.urgent_notice(&notice);
                    self.log_already_frozen(&notice);
                    self.log_request_refused(&notice);
                    log_notice(&notice);
                }
                Action::Report(report) => self.deferred_reports.push(*report),
                Action::Stopped => self.stopped = true,
            }
        }
    }
}
