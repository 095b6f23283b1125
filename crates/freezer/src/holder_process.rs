//! A freeze held by a child process, for a caller that has threads (hv-vssd): FreeBSD's
//! `UFSSUSPEND` refuses any process with more than one thread (`EDEADLK`), so the
//! suspensions must be made and held by a single-threaded process of their own.
//!
//! # Protocol
//!
//! The child's stdin and stdout are pipes to the parent; every message is one JSON line
//! ([`HolderLine`]) on the child's stdout.
//!
//! 1. The child freezes at once ([`crate::freebsd_freeze::freeze`]) and writes `frozen`
//!    with its report, or `failed` with the kind and the message (nothing is then left
//!    suspended) and exits.
//! 2. After `frozen` it holds until its stdin reaches end of file (the parent closed it, or
//!    died) or it gets SIGTERM; then it resumes everything, writes `thawed` with each
//!    mount's outcome and exits 0.
//!
//! The parent ([`HeldByChild`]) bounds every wait. A child that does not answer in time is
//! killed: its suspensions end when the kernel closes its fds, so killing is always a
//! thaw. The child writes only to the pipe while it holds (stdout may not be a file: a
//! write to a suspended filesystem would wait for the resume this very process makes),
//! and the parent must give it a stderr that is not a file on a mount it suspends.
//!
//! Both sides are platform-neutral and tested on Linux (the child with a fake suspender,
//! since UFS cannot be suspended there; the parent against a stand-in child).

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hv_vss_sys::poll::{Readable, poll_readable};
use serde::{Deserialize, Serialize};

use crate::freebsd_freeze::{FreeBsdFreezeError, FreeBsdFreezeReport, PoolSyncer, freeze};
use crate::freebsd_plan::{FreeBsdPlan, UfsTarget};
use crate::suspend_set::{ResumeOutcome, Suspender};

/// The longest line either side accepts.
pub const MAX_LINE: usize = 1 << 20;

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
    /// Everything is suspended and synced; held until stdin closes.
    Frozen(FreeBsdFreezeReport),
    /// Nothing is held.
    Failed {
        /// What failed.
        kind: FailKind,
        /// The error.
        message: String,
    },
    /// Everything is resumed.
    Thawed(Vec<ResumeOutcome>),
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

/// The child's side: freezes `plan` (or reports why there is none), holds until `input`
/// reaches end of file or `stop` is set (the caller registers SIGTERM on it), resumes.
/// Must run in a single-threaded process when `suspender` is FreeBSD's.
pub fn serve<S: Suspender<Target = UfsTarget>>(
    plan: Result<FreeBsdPlan, FreeBsdFreezeError<S::Error>>,
    suspender: &S,
    pools: &dyn PoolSyncer,
    input: BorrowedFd<'_>,
    output: &mut dyn Write,
    stop: &AtomicBool,
) -> std::io::Result<()> {
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
    if write_line(output, &HolderLine::Frozen(frozen.report.clone())).is_ok() {
        wait_for_eof(input, stop);
    }
    let outcomes = frozen.thaw();
    write_line(output, &HolderLine::Thawed(outcomes))
}

/// Polls `input` in 10 ms steps until it reaches end of file, fails, or `stop` is set;
/// whatever arrives on it is read and dropped.
fn wait_for_eof(input: BorrowedFd<'_>, stop: &AtomicBool) {
    let mut scratch = [0u8; 256];
    while !stop.load(Ordering::SeqCst) {
        match poll_readable(input, Some(Duration::from_millis(10))) {
            Ok(Readable::TimedOut) => {}
            Ok(Readable::Yes | Readable::Error) => match rustix::io::read(input, &mut scratch) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            Err(_) => return,
        }
    }
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
    stdin: Option<ChildStdin>,
    stdout: LineReader,
    /// What the child froze.
    pub report: FreeBsdFreezeReport,
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
                stdin: Some(stdin),
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

    /// Closes the child's stdin and waits up to `deadline` for its `thawed` line and exit.
    pub fn thaw(mut self, deadline: Duration) -> Result<Vec<ResumeOutcome>, HolderProcessError> {
        drop(self.stdin.take());
        let result = match self.stdout.next_line(Instant::now() + deadline) {
            Ok(line) => match parse_line(&line) {
                Ok(HolderLine::Thawed(outcomes)) => Ok(outcomes),
                Ok(other) => Err(HolderProcessError::Protocol(format!(
                    "expected thawed, got {other:?}"
                ))),
                Err(e) => Err(HolderProcessError::Protocol(e)),
            },
            Err(error) => Err(error.into_error(deadline)),
        };
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
