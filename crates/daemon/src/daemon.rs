//! The main loop: one thread polling the transport, the filesystem worker's wake fd, the
//! signal pipe and the guardian socket, feeding the coordinator and executing its actions.
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
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hv_vss_core::report::{CompletionEnd, TxnKind};
use hv_vss_core::{
    Action, Coordinator, Event, Failure, HostOp, Millis, Notice, RequestId, Stage, Status, TxnId,
    TxnReport,
};
use hv_vss_freezer::{FreezeReport, ThawReport};
use rustix::event::{PollFd, PollFlags, Timespec};

use crate::completion::{BU_COMPLETE_WAIT, BuComplete, CompletionWait};
use crate::config::{Settings, TransportChoice};
use crate::fsworker::{FsCommand, FsOutcome, FsWorker, THAW_RETRY_INTERVAL};
use crate::guardian::Guardian;
use crate::history::{History, HistoryEntry};
use crate::kmsg::{Kmsg, Urgent};
use crate::logbuf::LogGate;
use crate::transport::{Delivery, Incoming, ReopenStep, Reopener, Transport};

/// First delay before reopening a lost transport; doubled up to [`REOPEN_BACKOFF_MAX`].
pub const REOPEN_BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A transport that stayed up this long (or carried a request) resets the backoff.
pub const REOPEN_STABLE_AFTER: Duration = Duration::from_secs(10);
/// How often a running rebind of the UIO device is checked (the bind itself runs on its own
/// thread, so the loop never waits for it).
const REBIND_POLL: Duration = Duration::from_millis(50);
/// At most one line per this interval about each of losing and reopening the transport
/// (a device that hangs up at once is host-triggerable, R71).
const REOPEN_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// When to reopen a lost transport: exponential backoff from [`REOPEN_BACKOFF_MIN`] to
/// [`REOPEN_BACKOFF_MAX`], reset only once a transport has proved itself (stayed up
/// [`REOPEN_STABLE_AFTER`] or carried a request). A successful open alone proves nothing:
/// a device that hangs up right after registering would otherwise be reopened ten times a
/// second for ever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReopenBackoff {
    next: Duration,
    up_since: Option<Instant>,
}

impl Default for ReopenBackoff {
    fn default() -> Self {
        Self {
            next: REOPEN_BACKOFF_MIN,
            up_since: None,
        }
    }
}

impl ReopenBackoff {
    /// The transport was opened (and registered) at `now`.
    pub fn opened(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    /// The transport carried a request: it works.
    pub fn proved(&mut self) {
        self.next = REOPEN_BACKOFF_MIN;
    }

    /// The transport was lost at `now`: how long to wait before reopening.
    pub fn lost(&mut self, now: Instant) -> Duration {
        if self
            .up_since
            .take()
            .is_some_and(|t| now.saturating_duration_since(t) >= REOPEN_STABLE_AFTER)
        {
            self.next = REOPEN_BACKOFF_MIN;
        }
        self.take()
    }

    /// Reopening failed: how long to wait before the next attempt.
    pub fn open_failed(&mut self) -> Duration {
        self.take()
    }

    fn take(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(REOPEN_BACKOFF_MAX);
        delay
    }
}

/// Lets one line through per interval and counts the rest.
#[derive(Debug, Default)]
struct LogLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// `Some(suppressed since the last line)` if a line may be logged now.
    fn allow(&mut self, now: Instant, interval: Duration) -> Option<u64> {
        if self.last.is_some_and(|t| now.duration_since(t) < interval) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}
/// Delay between attempts to start a guardian that failed to start.
const GUARDIAN_RETRY: Duration = Duration::from_secs(2);
/// At most one "unknown operation" line per this interval (host-triggerable, R71).
const REFUSED_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// At most one line per this interval about a BU_COMPLETE no backup waited for
/// (host-triggerable, R71).
const STRAY_BU_COMPLETE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Everything the loop owns.
pub struct Daemon {
    settings: Settings,
    gate: LogGate,
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
    /// A freeze was issued and the worker has not yet said that nothing is frozen.
    fs_frozen: bool,
    guardian: Option<Guardian>,
    guardian_retry_at: Option<Instant>,
    signals: UnixStream,
    watchdog: Option<Duration>,
    next_watchdog: Instant,
    history: History,
    freeze_reports: BTreeMap<TxnId, FreezeReport>,
    thaw_reports: BTreeMap<TxnId, ThawReport>,
    deferred_reports: Vec<TxnReport>,
    /// The backup entry waiting for BU_COMPLETE (UIO mode).
    completion: CompletionWait,
    /// Entries to append to the history as soon as nothing is frozen, in order.
    ready_entries: Vec<HistoryEntry>,
    stray_bu_complete_log: LogLimit,
    /// Urgent lines while frozen (R61).
    kmsg: Kmsg,
    refused_logged_at: Option<Instant>,
    refused_suppressed: u64,
    stopping: bool,
    stopped: bool,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("state", &self.coord.state_kind())
            .field("generation", &self.generation)
            .field("fs_frozen", &self.fs_frozen)
            .field("log_held", &self.gate.is_held())
            .finish_non_exhaustive()
    }
}

/// What the startup code hands to the loop.
#[derive(Debug)]
pub struct Parts {
    pub settings: Settings,
    pub gate: LogGate,
    pub debug: bool,
    pub start: Instant,
    pub coord: Coordinator,
    /// None: lost during start-up; the loop reopens it.
    pub transport: Option<Transport>,
    pub worker: FsWorker,
    pub guardian: Guardian,
    pub signals: UnixStream,
    /// The kernel log, opened before any freeze.
    pub kmsg: Kmsg,
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
            gate: parts.gate,
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
            fs_frozen: false,
            guardian: Some(parts.guardian),
            guardian_retry_at: None,
            signals: parts.signals,
            watchdog,
            next_watchdog: Instant::now(),
            freeze_reports: BTreeMap::new(),
            thaw_reports: BTreeMap::new(),
            deferred_reports: Vec::new(),
            // Only in UIO mode does BU_COMPLETE reach us (drop-in: the kernel answers it).
            completion: CompletionWait::new(
                matches!(parts.settings.transport, TransportChoice::Uio(_)),
                BU_COMPLETE_WAIT,
            ),
            ready_entries: Vec::new(),
            stray_bu_complete_log: LogLimit::default(),
            kmsg: parts.kmsg,
            refused_logged_at: None,
            refused_suppressed: 0,
            stopping: false,
            stopped: false,
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
        while self.fs_frozen && Instant::now() < give_up {
            self.wait_for_worker(give_up);
        }
        if self.fs_frozen {
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
        self.gate.release();
        self.close_completion(CompletionEnd::Shutdown);
        self.flush_reports();
        tracing::info!("stopped: nothing of ours is frozen");
        Ok(())
    }

    /// Waits (until `until` at most) for the worker's next outcomes and handles them.
    fn wait_for_worker(&mut self, until: Instant) {
        let left = until.saturating_duration_since(Instant::now());
        let ts = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::from_borrowed_fd(
            self.worker.wake_fd(),
            PollFlags::IN,
        )];
        let _ = rustix::event::poll(&mut fds, Some(&ts));
        for outcome in self.worker.drain() {
            self.on_fs_outcome(outcome);
        }
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
        if self.guardian.is_none() && !self.fs_frozen && !self.stopping {
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
        let (sig_ready, wake_ready, guardian_ready, transport_ready) = {
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
            let ts = Timespec::try_from(timeout).unwrap_or(Timespec {
                tv_sec: 60,
                tv_nsec: 0,
            });
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => anyhow::bail!("poll: {e}"),
            }
            let ready = |i: usize| !fds[i].revents().is_empty();
            (
                ready(0),
                ready(1),
                g.is_some_and(ready),
                (t_start..t_end).any(ready),
            )
        };

        if sig_ready {
            self.on_signal();
        }
        if wake_ready {
            for outcome in self.worker.drain() {
                self.on_fs_outcome(outcome);
            }
        }
        if guardian_ready {
            self.check_guardian();
        }
        if transport_ready
            || self
                .transport
                .as_ref()
                .is_some_and(Transport::wants_service)
        {
            self.on_transport_readable();
        }
        self.maybe_reopen();
        self.maybe_respawn_guardian();
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

    /// Feeds queued events to the coordinator and executes the actions.
    fn pump(&mut self) {
        while let Some(event) = self.queue.pop_front() {
            let now = self.now();
            let actions = self.coord.handle(event, now);
            self.execute(actions);
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
                Action::NotifyApp {
                    participant, op, ..
                }
                | Action::RejectAck {
                    participant, op, ..
                } => {
                    // No participant is ever registered in this build (the application
                    // socket lands with the applications issue).
                    tracing::error!(
                        participant = participant.0,
                        op = ?op,
                        "application action without an application server"
                    );
                }
                Action::CheckFs { txn } => self.worker.send(FsCommand::Check { txn }),
                Action::FreezeFs { txn } => {
                    // R60/R61: from here until the worker reports everything thawed,
                    // nothing is written to stderr or files.
                    self.gate.hold();
                    self.fs_frozen = true;
                    self.worker.send(FsCommand::Freeze { txn });
                }
                Action::ThawFs { txn } => self.worker.send(FsCommand::Thaw { txn }),
                Action::Notice(notice) => {
                    self.urgent_notice(&notice);
                    log_notice(&notice);
                }
                Action::Report(report) => self.deferred_reports.push(*report),
                Action::Stopped => self.stopped = true,
            }
        }
    }

    fn reply(&mut self, request: RequestId, status: Status) {
        let Some((generation, key, op)) = self.pending.remove(&request) else {
            tracing::error!(request = request.0, "reply for an unknown request");
            return;
        };
        let result = match self.transport.as_mut() {
            Some(t) if generation == self.generation => t.reply(key, status),
            _ => {
                tracing::warn!(request = request.0, op = ?op, "reply dropped: transport was reopened");
                return;
            }
        };
        match result {
            Ok(Delivery::Sent) => {
                tracing::info!(request = request.0, op = ?op, status = ?status, "answered")
            }
            Ok(Delivery::Queued) => tracing::info!(
                request = request.0,
                op = ?op,
                status = ?status,
                "reply queued: the ring to the host is full; sent when it makes room"
            ),
            Err(e) => {
                tracing::warn!(request = request.0, op = ?op, error = %e, "reply failed");
                if e.requires_reopen() {
                    self.lose_transport();
                }
            }
        }
    }

    fn on_transport_readable(&mut self) {
        let Some(transport) = self.transport.as_mut() else {
            return;
        };
        let incoming = match transport.recv() {
            Ok(incoming) => incoming,
            Err(e) => {
                if let Some(suppressed) = self.lost_log.allow(Instant::now(), REOPEN_LOG_INTERVAL) {
                    tracing::warn!(error = %e, suppressed, "VSS transport failed; thawing, then reopening");
                }
                if e.requires_reopen() {
                    self.lose_transport();
                }
                return;
            }
        };
        for item in incoming {
            match item {
                Incoming::Request { key, op } => {
                    self.reopen_backoff.proved();
                    if matches!(op, HostOp::Check | HostOp::Freeze) {
                        // A new transaction: the host went on without BU_COMPLETE. Stored
                        // now, before a FREEZE can hold the files (R60).
                        self.close_completion(CompletionEnd::NextRequest);
                        self.flush_reports();
                    }
                    let request = RequestId(self.next_request);
                    self.next_request += 1;
                    self.pending.insert(request, (self.generation, key, op));
                    tracing::debug!(request = request.0, op = ?op, "host request");
                    self.queue.push_back(Event::HostRequest { request, op });
                }
                Incoming::Refused { raw } => self.log_refused(raw.0),
                Incoming::BackupComplete { trans_id } => self.on_bu_complete(trans_id),
            }
        }
    }

    fn log_refused(&mut self, raw: u8) {
        let now = Instant::now();
        let due = self
            .refused_logged_at
            .is_none_or(|t| now.duration_since(t) >= REFUSED_LOG_INTERVAL);
        if due {
            tracing::warn!(
                op = raw,
                suppressed = self.refused_suppressed,
                "unknown VSS operation answered E_FAIL"
            );
            self.refused_logged_at = Some(now);
            self.refused_suppressed = 0;
        } else {
            self.refused_suppressed += 1;
        }
    }

    fn lose_transport(&mut self) {
        if self.transport.take().is_none() {
            return;
        }
        self.urgent(
            Urgent::TransportLost,
            "VSS transport lost while filesystems are frozen; thawing, then reopening",
        );
        // The channel a BU_COMPLETE would come on is gone.
        self.close_completion(CompletionEnd::TransportLost);
        self.generation += 1;
        if !self.stopping {
            let now = Instant::now();
            self.reopen_at = Some(now + self.reopen_backoff.lost(now));
        }
        self.queue.push_back(Event::TransportLost);
    }

    fn maybe_reopen(&mut self) {
        let Some(at) = self.reopen_at else { return };
        if Instant::now() < at || self.stopping {
            return;
        }
        // No bind (which may exec modprobe) while something of ours is frozen (R60).
        match self.reopener.attempt(!self.fs_frozen) {
            ReopenStep::Opened { transport, node } => {
                let now = Instant::now();
                self.last_wait = None;
                if let Some(suppressed) = self.reopen_log.allow(now, REOPEN_LOG_INTERVAL) {
                    tracing::info!(
                        generation = self.generation,
                        node = %node.display(),
                        suppressed,
                        "VSS transport reopened and registered"
                    );
                }
                self.transport = Some(*transport);
                self.reopen_at = None;
                self.reopen_backoff.opened(now);
            }
            ReopenStep::Waiting(waiting) => {
                let now = Instant::now();
                let delay = if waiting.check_soon() {
                    REBIND_POLL
                } else {
                    self.reopen_backoff.open_failed()
                };
                // Each new step is logged once; a step that repeats, once per interval.
                let changed = self.last_wait != Some(waiting.kind());
                let allowed = self.wait_log.allow(now, REOPEN_LOG_INTERVAL);
                if changed || allowed.is_some() {
                    tracing::info!(
                        step = waiting.kind(),
                        retry_ms = delay.as_millis() as u64,
                        suppressed = allowed.unwrap_or(0),
                        "{waiting}"
                    );
                }
                self.last_wait = Some(waiting.kind());
                self.reopen_at = Some(now + delay);
            }
            ReopenStep::Failed(e) => {
                let now = Instant::now();
                self.last_wait = None;
                let delay = self.reopen_backoff.open_failed();
                if let Some(suppressed) = self.reopen_log.allow(now, REOPEN_LOG_INTERVAL) {
                    tracing::warn!(error = %e, retry_ms = delay.as_millis() as u64, suppressed, "reopening the VSS transport failed");
                }
                self.reopen_at = Some(now + delay);
            }
        }
    }

    fn on_signal(&mut self) {
        let mut buf = [0u8; 64];
        let _ = rustix::io::read(&self.signals, &mut buf);
        if self.stopping {
            tracing::info!("signal received while stopping; still thawing");
            return;
        }
        self.stopping = true;
        self.reopen_at = None;
        tracing::info!("SIGTERM/SIGINT: thawing, answering E_FAIL, closing the transport");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        self.queue.push_back(Event::Shutdown);
        self.pump();
        // R63: close the transport at once (unbinding hv_utils waits for it); the reply to
        // a pending request went out in the batch above.
        self.transport = None;
    }

    fn on_fs_outcome(&mut self, outcome: FsOutcome) {
        match outcome {
            FsOutcome::Checked { txn, result } => {
                self.queue.push_back(Event::FsChecked { txn, result });
                self.pump();
            }
            FsOutcome::Frozen {
                txn,
                result,
                report,
                nothing_frozen,
            } => {
                if let Some(r) = &report {
                    let timed_out: Vec<String> = r
                        .filesystems
                        .iter()
                        .filter(|f| f.outcome == hv_vss_freezer::FsFreezeOutcome::TimedOut)
                        .map(|f| f.mount_point.display().to_string())
                        .collect();
                    if !timed_out.is_empty() && !nothing_frozen {
                        self.urgent(
                            Urgent::FreezeDeadline,
                            &format!(
                                "FIFREEZE past its deadline on {} (txn {}); thawing as soon as it returns",
                                timed_out.join(", "),
                                txn.0
                            ),
                        );
                    }
                }
                if let Err(e) = &result {
                    if !nothing_frozen {
                        self.urgent(
                            Urgent::ThawFailing,
                            &format!(
                                "freeze failed and filesystems are still frozen (txn {}); retrying their thaw every {}s: {}",
                                txn.0,
                                THAW_RETRY_INTERVAL.as_secs(),
                                e.detail
                            ),
                        );
                    }
                }
                if let Some(r) = report {
                    self.freeze_reports.insert(txn, r);
                }
                self.queue.push_back(Event::FsFrozen { txn, result });
                self.pump();
                if nothing_frozen {
                    self.all_thawed();
                }
            }
            FsOutcome::Thawed {
                txn,
                result,
                report,
                all_thawed,
            } => {
                if let (false, Err(e)) = (all_thawed, &result) {
                    self.urgent(
                        Urgent::ThawFailing,
                        &format!(
                            "thaw failed, filesystems still frozen (txn {}); retrying every {}s: {}",
                            txn.0,
                            THAW_RETRY_INTERVAL.as_secs(),
                            e.detail
                        ),
                    );
                }
                if let Some(r) = report {
                    self.thaw_reports.insert(txn, r);
                }
                self.queue.push_back(Event::FsThawed { txn, result });
                self.pump();
                if all_thawed {
                    self.all_thawed();
                }
            }
            FsOutcome::RetryThawed { report } => {
                tracing::info!(
                    thaw_us = report.thaw_us,
                    "retried thaw completed: nothing of ours is frozen"
                );
                self.all_thawed();
            }
        }
    }

    /// Nothing of ours is frozen: logs and files may be written again.
    fn all_thawed(&mut self) {
        if !self.fs_frozen {
            return;
        }
        self.fs_frozen = false;
        let (written, dropped) = self.gate.release();
        if dropped > 0 {
            tracing::warn!(written, dropped, "log lines held while frozen were dropped");
        }
        self.flush_reports();
    }

    /// Logs every finished report and stores what is ready, once nothing is frozen (R60,
    /// R72). In UIO mode a backup's entry waits for BU_COMPLETE first ([`CompletionWait`]).
    fn flush_reports(&mut self) {
        if self.fs_frozen {
            return;
        }
        for report in std::mem::take(&mut self.deferred_reports) {
            let freeze = self.freeze_reports.remove(&report.txn);
            let thaw = self.thaw_reports.remove(&report.txn);
            let frozen_ms = report.frozen_window.map(|w| w.duration_ms());
            tracing::info!(
                txn = report.txn.0,
                kind = ?report.kind,
                verdict = ?report.verdict,
                frozen_ms,
                elapsed_ms = report.ended_at.since(report.started_at),
                filesystems = freeze.as_ref().map(|f| f.filesystems.len()),
                "transaction report"
            );
            let unix_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let entry = HistoryEntry {
                unix_ms,
                report,
                freeze,
                thaw,
                host_completion: None,
            };
            let ready = self.completion.finished(entry, self.now());
            self.ready_entries.extend(ready);
        }
        let appended = !self.ready_entries.is_empty();
        for entry in std::mem::take(&mut self.ready_entries) {
            if let Err(e) = self.history.append(&entry) {
                tracing::warn!(error = %e, path = %self.history.path().display(), "cannot append the report history");
            }
        }
        if let Some(textfile) = self.settings.metrics_textfile.as_ref().filter(|_| appended) {
            if let Err(e) = crate::metrics::write_textfile(textfile, self.history.path()) {
                tracing::warn!(error = %e, path = %textfile.display(), "cannot write the metrics textfile");
            }
        }
        // Reports of transactions that never produced a coordinator report do not linger.
        if self.freeze_reports.len() > 16 {
            self.freeze_reports.clear();
        }
        if self.thaw_reports.len() > 16 {
            self.thaw_reports.clear();
        }
    }

    /// Ends the wait for BU_COMPLETE for `end`; the entry is stored by the next
    /// [`Self::flush_reports`] that finds nothing frozen.
    fn close_completion(&mut self, end: CompletionEnd) {
        if let Some(entry) = self.completion.close(end, self.now()) {
            tracing::info!(
                txn = entry.report.txn.0,
                closed_by = ?end,
                "backup report stored without BU_COMPLETE from the host"
            );
            self.ready_entries.push(entry);
        }
    }

    /// BU_COMPLETE (already answered S_OK by the endpoint, R62): closes the latest backup's
    /// report.
    fn on_bu_complete(&mut self, trans_id: u64) {
        let unstored = self
            .deferred_reports
            .iter()
            .rev()
            .find(|r| r.kind == TxnKind::Backup)
            .map(|r| r.txn);
        match self.completion.bu_complete(self.now(), unstored) {
            BuComplete::Closed(entry) => {
                tracing::info!(
                    trans_id,
                    txn = entry.report.txn.0,
                    after_ms = entry.host_completion.map(|c| c.after_ms),
                    "BU_COMPLETE from the host (answered S_OK): backup completed"
                );
                self.ready_entries.push(*entry);
            }
            BuComplete::Noted(txn) => tracing::info!(
                trans_id,
                txn = txn.0,
                "BU_COMPLETE from the host (answered S_OK): backup completed; its report follows the thaw"
            ),
            BuComplete::Stray => {
                if let Some(suppressed) = self
                    .stray_bu_complete_log
                    .allow(Instant::now(), STRAY_BU_COMPLETE_LOG_INTERVAL)
                {
                    tracing::info!(
                        trans_id,
                        suppressed,
                        "BU_COMPLETE from the host (answered S_OK) with no backup report waiting for it"
                    );
                }
            }
        }
    }

    /// One kernel-log line for an urgent condition, only while something of ours is frozen
    /// (the held log is invisible until the last thaw, R61). Rate-limited per kind.
    fn urgent(&mut self, kind: Urgent, text: &str) {
        if self.fs_frozen {
            self.kmsg.urgent(kind, Instant::now(), text);
        }
    }

    /// The coordinator's notices that are urgent while frozen: a request deadline that ran
    /// out in a filesystem stage (a FIFREEZE or FITHAW that has not returned).
    fn urgent_notice(&mut self, notice: &Notice) {
        let Notice::Failed {
            txn,
            failure: Failure::Deadline { stage, .. },
        } = notice
        else {
            return;
        };
        match stage {
            Stage::FreezeFs => self.urgent(
                Urgent::FreezeDeadline,
                &format!(
                    "FREEZE deadline ran out while FIFREEZE is still running (txn {}); answered E_FAIL, thawing",
                    txn.0
                ),
            ),
            Stage::ThawFs => self.urgent(
                Urgent::ThawFailing,
                &format!(
                    "THAW deadline ran out while FITHAW is still running (txn {}); filesystems may still be frozen",
                    txn.0
                ),
            ),
            _ => {}
        }
    }

    fn check_guardian(&mut self) {
        let gone = self.guardian.as_mut().is_some_and(Guardian::is_gone);
        if !gone {
            return;
        }
        self.guardian = None;
        tracing::error!("the guardian process died; thawing if frozen, then starting a new one");
        self.urgent(
            Urgent::GuardianDied,
            "guardian process died while filesystems are frozen; thawing now",
        );
        self.queue.push_back(Event::GuardianDied);
        // No FREEZE without a guardian (R57).
        self.queue.push_back(Event::NotReady);
        self.guardian_retry_at = Some(Instant::now());
        self.pump();
    }

    fn maybe_respawn_guardian(&mut self) {
        if self.guardian.is_some() || self.fs_frozen || self.stopping {
            return;
        }
        if self.guardian_retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        // Exec only while nothing is frozen (R60).
        match Guardian::spawn(&self.settings.state_dir, self.debug) {
            Ok(g) => {
                tracing::info!(pid = g.pid(), "guardian started");
                self.guardian = Some(g);
                self.guardian_retry_at = None;
                self.queue.push_back(Event::Ready);
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot start a guardian; FREEZE is refused until one runs");
                self.guardian_retry_at = Some(Instant::now() + GUARDIAN_RETRY);
            }
        }
    }
}

/// Shortest interval between watchdog pings, whatever `WATCHDOG_USEC` says.
const WATCHDOG_MIN_INTERVAL: Duration = Duration::from_millis(10);

/// How often to ping systemd's watchdog, from its `WATCHDOG_USEC` (already parsed; garbage
/// is `None`): half the timeout, at least [`WATCHDOG_MIN_INTERVAL`]. A zero timeout means no
/// watchdog: the ping deadline would otherwise make every `poll` return at once (a busy
/// loop).
fn watchdog_interval(timeout: Option<Duration>) -> Option<Duration> {
    timeout
        .filter(|t| !t.is_zero())
        .map(|t| (t / 2).max(WATCHDOG_MIN_INTERVAL))
}

/// Registers SIGTERM and SIGINT to write a byte to a socket the loop polls (R63); returns
/// the end to poll.
pub fn signal_pipe() -> std::io::Result<UnixStream> {
    let (read, write) = UnixStream::pair()?;
    read.set_nonblocking(true)?;
    write.set_nonblocking(true)?;
    let write_fd: OwnedFd = write.into();
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let dup = write_fd.try_clone()?;
        signal_hook::low_level::pipe::register(sig, dup)?;
    }
    Ok(read)
}

fn log_notice(notice: &Notice) {
    match notice {
        Notice::Refused {
            request,
            op,
            reason,
        } => {
            tracing::warn!(request = request.0, op = ?op, reason = ?reason, "request refused with E_FAIL")
        }
        Notice::AlreadyFrozen { request, txn } => {
            tracing::info!(
                request = request.0,
                txn = txn.0,
                "FREEZE while frozen: S_OK, staying frozen"
            )
        }
        Notice::ThawWithoutFreeze { request } => {
            tracing::info!(request = request.0, "THAW with nothing frozen: S_OK")
        }
        Notice::ThawAfterAutoThaw { request, txn } => tracing::warn!(
            request = request.0,
            txn = txn.0,
            "THAW after an auto-thaw: E_FAIL, the snapshot may not be consistent"
        ),
        Notice::Failed { txn, failure } => {
            tracing::warn!(txn = txn.0, failure = ?failure, "transaction failed")
        }
        Notice::AutoThawed {
            txn,
            cause,
            frozen_ms,
        } => tracing::error!(
            txn = txn.0,
            cause = ?cause,
            frozen_ms,
            "AUTO-THAW: filesystems thawed without a THAW from the host; the next THAW gets E_FAIL"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the backoff went back to 100 ms after every successful open, so a
    /// device hanging up right after registering was reopened ~10 times a second for ever.
    #[test]
    fn reopen_backoff_grows_across_opens_until_the_transport_proves_itself() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = ReopenBackoff::default();
        b.opened(t0);
        let mut delays = Vec::new();
        let mut now = t0;
        for _ in 0..8 {
            // Opened, then hung up 1 ms later.
            now += ms(1);
            let d = b.lost(now);
            delays.push(d);
            now += d;
            b.opened(now);
        }
        assert_eq!(
            delays,
            vec![
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                REOPEN_BACKOFF_MAX,
                REOPEN_BACKOFF_MAX
            ]
        );
        // Failed opens keep growing it too.
        assert_eq!(b.open_failed(), REOPEN_BACKOFF_MAX);
        // Up long enough: the next loss starts over.
        b.opened(now);
        assert_eq!(b.lost(now + REOPEN_STABLE_AFTER), REOPEN_BACKOFF_MIN);
        // A request carried also proves it, however short the connection.
        for _ in 0..4 {
            b.opened(now);
            b.lost(now);
        }
        b.opened(now);
        b.proved();
        assert_eq!(b.lost(now + ms(1)), REOPEN_BACKOFF_MIN);
    }

    #[test]
    fn log_limit_lets_one_line_through_per_interval_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut l = LogLimit::default();
        assert_eq!(l.allow(t0, REOPEN_LOG_INTERVAL), Some(0));
        for i in 1..=5 {
            assert_eq!(
                l.allow(t0 + Duration::from_millis(i), REOPEN_LOG_INTERVAL),
                None
            );
        }
        assert_eq!(
            l.allow(t0 + REOPEN_LOG_INTERVAL, REOPEN_LOG_INTERVAL),
            Some(5)
        );
    }

    /// Regression: `WATCHDOG_USEC=0` gave a zero ping interval, so the poll timeout was
    /// always zero: a busy loop. Zero now means no watchdog; tiny values are clamped.
    #[test]
    fn a_zero_watchdog_timeout_means_no_watchdog_and_tiny_ones_are_clamped() {
        assert_eq!(watchdog_interval(None), None);
        assert_eq!(watchdog_interval(Some(Duration::ZERO)), None);
        assert_eq!(
            watchdog_interval(Some(Duration::from_micros(1))),
            Some(WATCHDOG_MIN_INTERVAL)
        );
        assert_eq!(
            watchdog_interval(Some(Duration::from_secs(30))),
            Some(Duration::from_secs(15))
        );
    }
}
