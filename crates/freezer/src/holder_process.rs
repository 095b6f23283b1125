//! A freeze held by a child process, for a caller that has threads (hv-vssd): FreeBSD's
//! `UFSSUSPEND` refuses any process with more than one thread (`EDEADLK`), so the
//! suspensions must be made and held by a single-threaded process of their own.
//!
//! # Protocol
//!
//! The child's stdin and stdout are pipes to the parent; every message is one JSON line:
//! [`HolderLine`] on the child's stdout, [`ParentLine`] on its stdin. The parent gives the
//! child its [`HoldBounds`] on the command line ([`HoldBounds::args`]).
//!
//! 1. The child freezes at once ([`crate::freebsd_freeze::freeze`]) and writes `frozen`
//!    with its report, or `failed` with the kind and the message (nothing is then left
//!    suspended) and exits.
//! 2. After `frozen` it holds until one of these ([`ThawReason`]): its stdin reaches end
//!    of file (the parent closed it, or died); SIGTERM, SIGINT or SIGHUP; no `heartbeat`
//!    line came for [`HoldBounds::heartbeat_timeout`] (the parent is hung or stopped: it
//!    writes one every [`HEARTBEAT_INTERVAL`]); [`HoldBounds::max_hold`] has passed since
//!    the child started; a line on stdin that is not a [`ParentLine`], or a failed read.
//!    Then it resumes everything, writes `thawed` with the reason and each mount's
//!    outcome, and exits 0. Waiting is poll(2) on stdin with a timeout in the one thread
//!    ([`hold_loop`]).
//!
//! The parent ([`HeldByChild`]) bounds every wait. A child that does not answer in time is
//! killed: its suspensions end when the kernel closes its fds, so killing is always a
//! thaw. The child writes only to the pipe while it holds (stdout may not be a file: a
//! write to a suspended filesystem would wait for the resume this very process makes),
//! and the parent must give it a stderr that is not a file on a mount it suspends. The
//! parent can see that the child resumed on its own ([`HeldByChild::resumed_on_its_own`])
//! and must then treat the freeze as undone.
//!
//! Both sides are platform-neutral and tested on Linux (the child with a fake suspender,
//! since UFS cannot be suspended there; the parent against a stand-in child).

mod hold_loop;

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hv_vss_sys::poll::{Readable, poll_readable};
use serde::{Deserialize, Serialize};

use crate::freebsd_freeze::{FreeBsdFreezeError, FreeBsdFreezeReport, PoolSyncer, freeze};
use crate::freebsd_plan::{FreeBsdPlan, UfsTarget};
use crate::suspend_set::{ResumeOutcome, Suspender};

/// The longest line the parent accepts.
pub const MAX_LINE: usize = 1 << 20;
/// The longest line the child accepts.
pub const MAX_PARENT_LINE: usize = 4096;
/// How often the parent writes `heartbeat` while the child holds (as hv-vssd tells its
/// guardian on Linux).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long the child holds without a heartbeat by default (as the Linux guardian).
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the child may hold, given on its command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldBounds {
    /// Resume once this much time has passed since the child started, heartbeats or not
    /// (`None`: no such bound; the parent's auto-thaw is disabled).
    pub max_hold: Option<Duration>,
    /// Resume when no heartbeat came for this long.
    pub heartbeat_timeout: Duration,
}

impl Default for HoldBounds {
    fn default() -> Self {
        Self {
            max_hold: None,
            heartbeat_timeout: HEARTBEAT_TIMEOUT,
        }
    }
}

impl HoldBounds {
    /// The command-line flags of `hv-vss freeze --holder-protocol` that carry these.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--heartbeat-timeout-ms".to_owned(),
            self.heartbeat_timeout.as_millis().to_string(),
        ];
        if let Some(max) = self.max_hold {
            args.push("--max-hold-ms".to_owned());
            args.push(max.as_millis().to_string());
        }
        args
    }
}

/// One message of the parent to the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParentLine {
    /// The parent is alive: keep holding.
    Heartbeat,
}

/// Parses one line of the parent (never panics; fuzzed by `fuzz_targets/holder_line.rs`).
pub fn parse_parent_line(line: &[u8]) -> Result<ParentLine, String> {
    if line.len() > MAX_PARENT_LINE {
        return Err(format!("a line of {} bytes", line.len()));
    }
    serde_json::from_slice(line).map_err(|e| e.to_string())
}

/// Why the child resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThawReason {
    /// Its stdin reached end of file: the parent asked (or died).
    StdinClosed,
    /// SIGTERM, SIGINT or SIGHUP.
    Signal,
    /// No heartbeat came for this long: the parent is hung or stopped.
    NoHeartbeat {
        /// How long it waited.
        waited_ms: u64,
    },
    /// The hard bound given on its command line passed.
    HoldLimit {
        /// The bound.
        limit_ms: u64,
    },
    /// The parent wrote something that is not a [`ParentLine`].
    BadInput {
        /// What was wrong.
        error: String,
    },
    /// Polling or reading stdin failed.
    InputError {
        /// The error.
        error: String,
    },
    /// The `frozen` line could not be written: the parent is gone.
    ParentGone,
}

impl ThawReason {
    /// True when the parent asked for the resume (closed stdin); every other reason means
    /// the child resumed on its own, before the parent's THAW.
    pub fn was_asked(&self) -> bool {
        matches!(self, Self::StdinClosed)
    }
}

impl std::fmt::Display for ThawReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::StdinClosed => f.write_str("its stdin was closed"),
            Self::Signal => f.write_str("it got a stop signal"),
            Self::NoHeartbeat { waited_ms } => {
                write!(
                    f,
                    "no heartbeat from hv-vssd for {waited_ms} ms (hung or stopped)"
                )
            }
            Self::HoldLimit { limit_ms } => {
                write!(f, "its hard bound of {limit_ms} ms passed")
            }
            Self::BadInput { error } => write!(f, "a bad line on its stdin: {error}"),
            Self::InputError { error } => write!(f, "its stdin failed: {error}"),
            Self::ParentGone => f.write_str("its parent was gone before it said frozen"),
        }
    }
}

/// The `thawed` message: why, and each mount's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resumed {
    /// Why the child resumed.
    pub reason: ThawReason,
    /// Each mount's resume.
    pub outcomes: Vec<ResumeOutcome>,
}

/// Why a freeze failed, as the child reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailKind {
    /// The mount table could not be read.
    MountTable,
    /// The plan is vetoed.
    Vetoed,
    /// `zpool sync` failed.
    ZpoolSync,
    /// A suspension failed; the others were resumed.
    Suspend,
}

/// One message of the child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HolderLine {
    /// Everything is suspended and synced; held until a [`ThawReason`].
    Frozen(FreeBsdFreezeReport),
    /// Nothing is held.
    Failed {
        /// What failed.
        kind: FailKind,
        /// The error.
        message: String,
    },
    /// Everything is resumed.
    Thawed(Resumed),
}

/// Parses one line of the child (never panics; fuzzed by `fuzz_targets/holder_line.rs`).
pub fn parse_line(line: &[u8]) -> Result<HolderLine, String> {
    if line.len() > MAX_LINE {
        return Err(format!("a line of {} bytes", line.len()));
    }
    serde_json::from_slice(line).map_err(|e| e.to_string())
}

fn kind_of<E: std::error::Error>(error: &FreeBsdFreezeError<E>) -> FailKind {
    match error {
        FreeBsdFreezeError::MountTable(_) => FailKind::MountTable,
        FreeBsdFreezeError::Vetoed(_) => FailKind::Vetoed,
        FreeBsdFreezeError::ZpoolSync { .. } => FailKind::ZpoolSync,
        FreeBsdFreezeError::Suspend(_) => FailKind::Suspend,
    }
}

fn write_line(output: &mut dyn Write, line: &HolderLine) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(line).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    output.write_all(&bytes)?;
    output.flush()
}

/// The child's side: freezes `plan` (or reports why there is none), holds until a
/// [`ThawReason`] comes (`stop` is set by the caller's SIGTERM handler; `input` is the
/// parent's pipe), resumes. Must run in a single-threaded process when `suspender` is
/// FreeBSD's.
pub fn serve<S: Suspender<Target = UfsTarget>>(
    plan: Result<FreeBsdPlan, FreeBsdFreezeError<S::Error>>,
    suspender: &S,
    pools: &dyn PoolSyncer,
    input: BorrowedFd<'_>,
    output: &mut dyn Write,
    stop: &AtomicBool,
    bounds: &HoldBounds,
) -> std::io::Result<()> {
    let started = Instant::now();
    let frozen = match plan.and_then(|plan| freeze(&plan, suspender, pools)) {
        Ok(frozen) => frozen,
        Err(error) => {
            return write_line(
                output,
                &HolderLine::Failed {
                    kind: kind_of(&error),
                    message: error.to_string(),
                },
            );
        }
    };
    // If the parent is already gone the write fails: resume at once.
    let reason = if write_line(output, &HolderLine::Frozen(frozen.report.clone())).is_ok() {
        hold_loop::hold_until_released(input, stop, bounds, started)
    } else {
        ThawReason::ParentGone
    };
    let outcomes = frozen.thaw();
    write_line(output, &HolderLine::Thawed(Resumed { reason, outcomes }))
}

/// Registers SIGTERM, SIGINT and SIGHUP on a flag for [`serve`].
pub fn stop_on_signals() -> std::io::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(signal, flag.clone())?;
    }
    Ok(flag)
}

/// Why the parent's side failed. Whatever the child held is resumed by then (it was
/// killed, or it reported that it holds nothing).
#[derive(Debug, thiserror::Error)]
pub enum HolderProcessError {
    /// The child could not be started.
    #[error("starting the holder: {0}")]
    Spawn(#[source] std::io::Error),
    /// The child reported a failed freeze.
    #[error("{message}")]
    Failed {
        /// What failed.
        kind: FailKind,
        /// The child's message.
        message: String,
    },
    /// The child did not answer within the deadline and was killed.
    #[error(
        "the holder did not answer within {0:?}; it was killed (the kernel resumes what it held)"
    )]
    TimedOut(Duration),
    /// The child said something unexpected or closed its stdout; it was killed.
    #[error("the holder broke the protocol ({0}); it was killed")]
    Protocol(String),
}

/// The parent's side: a child holding a freeze.
#[derive(Debug)]
pub struct HeldByChild {
    child: Child,
    /// Shared with the [`HeartbeatSender`]s; taking it out closes the child's stdin.
    stdin: Arc<Mutex<Option<ChildStdin>>>,
    stdout: LineReader,
    /// What the child froze.
    pub report: FreeBsdFreezeReport,
}

/// Writes `heartbeat` lines to a holder from any thread, never blocking (a child that
/// does not read loses them, and resumes for want of them). Once the holder's stdin is
/// closed (thaw, drop) it writes nothing.
#[derive(Debug, Clone)]
pub struct HeartbeatSender {
    stdin: Arc<Mutex<Option<ChildStdin>>>,
}

/// The line [`HeartbeatSender::beat`] writes.
fn heartbeat_line() -> Vec<u8> {
    let mut line = serde_json::to_vec(&ParentLine::Heartbeat).unwrap_or_default();
    line.push(b'\n');
    line
}

impl HeartbeatSender {
    /// Writes one heartbeat; an error if the stdin is closed, full or broken.
    pub fn beat(&self) -> std::io::Result<()> {
        let guard = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        let Some(stdin) = guard.as_ref() else {
            return Err(std::io::ErrorKind::NotConnected.into());
        };
        // One write of a few bytes, under PIPE_BUF: whole or not at all.
        rustix::io::write(stdin, &heartbeat_line())?;
        Ok(())
    }
}

impl HeldByChild {
    /// Starts `command` as the holder (its stdin and stdout become pipes to us; stderr is
    /// left as set on `command`) and waits up to `deadline` for its `frozen` line.
    pub fn spawn(mut command: Command, deadline: Duration) -> Result<Self, HolderProcessError> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(HolderProcessError::Spawn)?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            kill_and_reap(&mut child);
            return Err(HolderProcessError::Protocol("no pipes".into()));
        };
        // Heartbeats come from the parent's main loop, which must never block on them.
        if let Err(e) = rustix::io::ioctl_fionbio(&stdin, true) {
            kill_and_reap(&mut child);
            return Err(HolderProcessError::Protocol(format!(
                "stdin non-blocking: {e}"
            )));
        }
        let mut stdout = LineReader::new(stdout);
        let line = match stdout.next_line(Instant::now() + deadline) {
            Ok(line) => line,
            Err(error) => {
                kill_and_reap(&mut child);
                return Err(error.into_error(deadline));
            }
        };
        match parse_line(&line) {
            Ok(HolderLine::Frozen(report)) => Ok(Self {
                child,
                stdin: Arc::new(Mutex::new(Some(stdin))),
                stdout,
                report,
            }),
            Ok(HolderLine::Failed { kind, message }) => {
                let _ = child.wait();
                Err(HolderProcessError::Failed { kind, message })
            }
            Ok(HolderLine::Thawed(_)) => {
                kill_and_reap(&mut child);
                Err(HolderProcessError::Protocol("thawed before frozen".into()))
            }
            Err(e) => {
                kill_and_reap(&mut child);
                Err(HolderProcessError::Protocol(e))
            }
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A way to send the child heartbeats from another thread.
    pub fn heartbeat_sender(&self) -> HeartbeatSender {
        HeartbeatSender {
            stdin: Arc::clone(&self.stdin),
        }
    }

    /// Without waiting: `None` while the child still holds (said nothing more); once it has
    /// said `thawed` (or closed its stdout: it died, and the kernel resumed what it held),
    /// reaps it and returns what it said. Either way nothing is held any more.
    pub fn resumed_on_its_own(&mut self) -> Option<Result<Resumed, HolderProcessError>> {
        if !self.stdout.has_line() {
            match poll_readable(self.stdout.pipe.as_fd(), Some(Duration::ZERO)) {
                Ok(Readable::TimedOut) => return None,
                Ok(Readable::Yes | Readable::Error) | Err(_) => {}
            }
        }
        // It wrote the whole line at once; a second is plenty for the rest of it.
        let wait = Duration::from_secs(1);
        Some(self.finish(wait))
    }

    /// Closes the child's stdin and waits up to `deadline` for its `thawed` line and exit.
    pub fn thaw(mut self, deadline: Duration) -> Result<Resumed, HolderProcessError> {
        drop(self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take());
        self.finish(deadline)
    }

    /// Reads the `thawed` line within `deadline` and reaps the child (killed if it does
    /// not answer or exit in time).
    fn finish(&mut self, deadline: Duration) -> Result<Resumed, HolderProcessError> {
        let result = match self.stdout.next_line(Instant::now() + deadline) {
            Ok(line) => match parse_line(&line) {
                Ok(HolderLine::Thawed(resumed)) => Ok(resumed),
                Ok(other) => Err(HolderProcessError::Protocol(format!(
                    "expected thawed, got {other:?}"
                ))),
                Err(e) => Err(HolderProcessError::Protocol(e)),
            },
            Err(error) => Err(error.into_error(deadline)),
        };
        drop(self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take());
        if result.is_ok() && hv_vss_sys::process::wait_for_exit(self.child.id() as i32, deadline) {
            let _ = self.child.wait();
        } else {
            kill_and_reap(&mut self.child);
        }
        result
    }
}

impl Drop for HeldByChild {
    /// A holder never thawed is killed: the kernel resumes what it held.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            kill_and_reap(&mut self.child);
        }
    }
}

/// SIGKILL, then reap within a second, else leave the reaping to a thread (the child may
/// sit in the kernel for a while).
fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    if hv_vss_sys::process::wait_for_exit(child.id() as i32, Duration::from_secs(1)) {
        let _ = child.wait();
    }
}

/// Why no line arrived.
#[derive(Debug)]
enum LineError {
    TimedOut,
    Closed,
    TooLong,
    Io(String),
}

impl LineError {
    fn into_error(self, deadline: Duration) -> HolderProcessError {
        match self {
            Self::TimedOut => HolderProcessError::TimedOut(deadline),
            Self::Closed => HolderProcessError::Protocol("it closed its stdout".into()),
            Self::TooLong => HolderProcessError::Protocol("a line too long".into()),
            Self::Io(e) => HolderProcessError::Protocol(e),
        }
    }
}

/// Reads lines from the child's stdout with deadlines.
#[derive(Debug)]
struct LineReader {
    pipe: ChildStdout,
    buffer: Vec<u8>,
}

impl LineReader {
    fn new(pipe: ChildStdout) -> Self {
        Self {
            pipe,
            buffer: Vec::new(),
        }
    }

    /// A whole line is already buffered.
    fn has_line(&self) -> bool {
        self.buffer.contains(&b'\n')
    }

    fn next_line(&mut self, deadline: Instant) -> Result<Vec<u8>, LineError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line = self.buffer[..end].to_vec();
                self.buffer.drain(..=end);
                return Ok(line);
            }
            if self.buffer.len() > MAX_LINE {
                return Err(LineError::TooLong);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match poll_readable(self.pipe.as_fd(), Some(left)) {
                Ok(Readable::TimedOut) => return Err(LineError::TimedOut),
                Ok(Readable::Yes | Readable::Error) => {}
                Err(e) => return Err(LineError::Io(e.to_string())),
            }
            let mut chunk = [0u8; 4096];
            match rustix::io::read(&self.pipe, &mut chunk) {
                Ok(0) => return Err(LineError::Closed),
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                Err(e) => return Err(LineError::Io(e.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests;
