//! Running one hook: spawn it detached, capture its output, bound its time, reap it.
//!
//! # Mechanism
//!
//! - The hook is spawned with `setsid` (a new session and process group, no controlling
//!   terminal; see `hv_vss_sys::process`), every inherited descriptor from 3 up marked
//!   close-on-exec, stdin `/dev/null`, the working directory `/`, and an environment of
//!   `PATH` only.
//! - stdout and stderr share one pipe, so their lines interleave as written. The runner
//!   keeps the first [`OUTPUT_LIMIT`] bytes and counts the rest as truncated, reading all the
//!   while so that a chatty hook never blocks on a full pipe.
//! - An exit watch (`hv_vss_sys::process::exit_watch`: a pidfd on Linux 5.3 and later, a
//!   kqueue with `EVFILT_PROC` on FreeBSD) tells when the hook itself exits; `poll` waits
//!   on it and the pipe together. When the hook has exited the runner drains what is already in the
//!   pipe and stops reading, even if a background process the hook left behind still holds
//!   the pipe open. Without one (Linux before 5.3) it checks `waitpid` every
//!   [`FALLBACK_TICK`].
//! - At the timeout it sends `SIGKILL` to the whole process group (`kill(-pgid)`), which
//!   reaches every descendant that did not leave the group, and reaps the hook. A hook that
//!   does not die within [`KILL_GRACE`] (stuck in the kernel) is reported as timed out and
//!   reaped later by a thread of its own, so the caller is never held past the grace.
//!
//! # Limitations
//!
//! - A process a hook leaves running on a normal exit is not killed (qemu-ga style hooks
//!   rely on that to hold a lock until thaw). Its stdout/stderr are the runner's pipe, which
//!   is closed once the hook has exited: its later writes there fail with `EPIPE`
//!   (`SIGPIPE`), so such helpers should redirect their output.
//! - A descendant that calls `setsid` or `setpgid` itself escapes the timeout kill.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::process::{Pid, Signal};

/// Output bytes kept per hook; the rest is counted in [`HookResult::truncated`].
pub const OUTPUT_LIMIT: usize = 16 * 1024;
/// The only environment variable a hook gets.
pub const HOOK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long a killed hook may take to die before the runner stops waiting for it.
pub const KILL_GRACE: Duration = Duration::from_secs(1);
/// How often the runner checks for exit when there is no exit watch.
pub const FALLBACK_TICK: Duration = Duration::from_millis(10);
/// At most this much is read from the pipe after the hook exited: what a busy leftover
/// process writes meanwhile cannot keep the runner reading.
const FINAL_DRAIN_LIMIT: usize = 1024 * 1024;

/// How a hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// It exited with this status; 0 is success.
    Exited(i32),
    /// It was killed by this signal (not by the runner's timeout).
    Signalled(i32),
    /// It ran past its timeout; its process group was killed.
    TimedOut,
    /// It could not be started (not found, not executable, exec format error, no longer safe).
    SpawnFailed(String),
    /// It was not started because the run's deadline had already passed.
    DeadlinePassed,
}

impl HookOutcome {
    /// Exited with status 0.
    pub fn is_success(&self) -> bool {
        matches!(self, HookOutcome::Exited(0))
    }

    /// The hook's code ran (or may have run): it was told, whatever the result.
    pub fn was_started(&self) -> bool {
        matches!(
            self,
            HookOutcome::Exited(_) | HookOutcome::Signalled(_) | HookOutcome::TimedOut
        )
    }
}

impl std::fmt::Display for HookOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HookOutcome::Exited(code) => write!(f, "exited with status {code}"),
            HookOutcome::Signalled(sig) => write!(f, "killed by signal {sig}"),
            HookOutcome::TimedOut => f.write_str("timed out; process group killed"),
            HookOutcome::SpawnFailed(why) => write!(f, "not started: {why}"),
            HookOutcome::DeadlinePassed => f.write_str("not started: deadline passed"),
        }
    }
}

/// What one hook did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookResult {
    /// The hook as found in its directory.
    pub path: PathBuf,
    /// The argument it was run with (`freeze`, `thaw`, `abort`, `freezeFail`).
    pub arg: &'static str,
    /// How it ended.
    pub outcome: HookOutcome,
    /// stdout and stderr interleaved, at most [`OUTPUT_LIMIT`] bytes.
    pub output: Vec<u8>,
    /// More output was written than kept.
    pub truncated: bool,
    /// From spawn to reap (zero when not started).
    pub elapsed: Duration,
}

impl HookResult {
    pub(crate) fn not_started(path: &Path, arg: &'static str, outcome: HookOutcome) -> Self {
        HookResult {
            path: path.to_owned(),
            arg,
            outcome,
            output: Vec::new(),
            truncated: false,
            elapsed: Duration::ZERO,
        }
    }
}

/// Bounded output buffer.
struct Capture {
    kept: Vec<u8>,
    truncated: bool,
}

impl Capture {
    fn push(&mut self, bytes: &[u8]) {
        let room = OUTPUT_LIMIT - self.kept.len();
        if bytes.len() > room {
            self.truncated = true;
        }
        self.kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

/// What a read from the output pipe found.
enum PipeRead {
    /// Some bytes were read (and captured).
    Data(usize),
    /// Every writer has closed the pipe.
    Eof,
    /// Nothing there right now.
    Empty,
}

fn read_pipe(pipe: &OwnedFd, capture: &mut Capture) -> PipeRead {
    let mut buf = [0u8; 8192];
    loop {
        match rustix::io::read(pipe, &mut buf) {
            Ok(0) => return PipeRead::Eof,
            Ok(n) => {
                capture.push(&buf[..n]);
                return PipeRead::Data(n);
            }
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return PipeRead::Empty,
            // Any other error on our own pipe: treat as closed rather than spin.
            Err(_) => return PipeRead::Eof,
        }
    }
}

/// Read what is in the pipe now, up to [`FINAL_DRAIN_LIMIT`], without waiting for more.
fn drain_now(pipe: &OwnedFd, capture: &mut Capture) {
    let mut total = 0;
    while total < FINAL_DRAIN_LIMIT {
        match read_pipe(pipe, capture) {
            PipeRead::Data(n) => total += n,
            PipeRead::Eof | PipeRead::Empty => return,
        }
    }
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: d.subsec_nanos().into(),
    }
}

/// The output pipe: read end for the runner (non-blocking), write end for the hook.
fn output_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // Only the runner's end is non-blocking: O_NONBLOCK belongs to the open file description,
    // and the hook must see ordinary blocking writes.
    rustix::fs::fcntl_setfl(&read, rustix::fs::OFlags::NONBLOCK)?;
    Ok((read, write))
}

fn spawn(path: &Path, arg: &str, write: OwnedFd) -> io::Result<Child> {
    let mut cmd = Command::new(path);
    cmd.arg(arg)
        .env_clear()
        .env("PATH", HOOK_PATH)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(write.try_clone()?))
        .stderr(Stdio::from(write));
    hv_vss_sys::process::detach_on_spawn(&mut cmd);
    // `cmd` owns the parent's copies of the write end; they close when it drops here, so
    // EOF on the pipe means the hook and its descendants have closed theirs.
    cmd.spawn()
}

/// How waiting for the hook ended.
enum Wait {
    Exited,
    Deadline,
}

/// Wait until the hook exits or `until`, capturing output meanwhile.
fn wait_capturing(
    child: &mut Child,
    exit_watch: Option<&OwnedFd>,
    pipe: &OwnedFd,
    capture: &mut Capture,
    until: Instant,
) -> Wait {
    let mut pipe_open = true;
    loop {
        if exit_watch.is_none() && matches!(child.try_wait(), Ok(Some(_))) {
            return Wait::Exited;
        }
        let now = Instant::now();
        if now >= until {
            return Wait::Deadline;
        }
        let mut wait_for = until - now;
        if exit_watch.is_none() {
            wait_for = wait_for.min(FALLBACK_TICK);
        }
        let mut fds = Vec::with_capacity(2);
        if pipe_open {
            fds.push(PollFd::new(pipe, PollFlags::IN));
        }
        if let Some(exit_watch) = exit_watch {
            fds.push(PollFd::new(exit_watch, PollFlags::IN));
        }
        if fds.is_empty() {
            // Pipe closed and no exit_watch: sleep to the next tick.
            std::thread::sleep(wait_for);
            continue;
        }
        match rustix::event::poll(&mut fds, Some(&timespec(wait_for))) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(_) => std::thread::sleep(wait_for.min(FALLBACK_TICK)),
        }
        let pipe_ready = pipe_open && !fds[0].revents().is_empty();
        let exited = exit_watch.is_some() && !fds[fds.len() - 1].revents().is_empty();
        drop(fds);
        if pipe_ready && matches!(read_pipe(pipe, capture), PipeRead::Eof) {
            pipe_open = false;
        }
        if exited {
            return Wait::Exited;
        }
    }
}

/// Wait at most `grace` for a killed hook to die.
fn wait_killed(
    child: &mut Child,
    exit_watch: Option<&OwnedFd>,
    grace: Duration,
) -> Option<ExitStatus> {
    let until = Instant::now() + grace;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let now = Instant::now();
        if now >= until {
            return None;
        }
        let step = (until - now).min(FALLBACK_TICK);
        match exit_watch {
            Some(exit_watch) => {
                let mut fds = [PollFd::new(exit_watch, PollFlags::IN)];
                let _ = rustix::event::poll(&mut fds, Some(&timespec(until - now)));
            }
            None => std::thread::sleep(step),
        }
    }
}

fn outcome_of(status: ExitStatus) -> HookOutcome {
    match (status.code(), status.signal()) {
        (Some(code), _) => HookOutcome::Exited(code),
        (None, Some(sig)) => HookOutcome::Signalled(sig),
        // Neither code nor signal does not happen for a reaped child; keep the raw status.
        (None, None) => HookOutcome::SpawnFailed(format!("unexpected wait status {status:?}")),
    }
}

/// Run the hook at `path` with `arg`, for at most `timeout`. Blocking.
pub(crate) fn run_hook(path: &Path, arg: &'static str, timeout: Duration) -> HookResult {
    let started = Instant::now();
    let kill_at = started + timeout;
    let not_started =
        |why: String| HookResult::not_started(path, arg, HookOutcome::SpawnFailed(why));
    let (read, write) = match output_pipe() {
        Ok(pipe) => pipe,
        Err(e) => return not_started(format!("output pipe: {e}")),
    };
    let mut child = match spawn(path, arg, write) {
        Ok(child) => child,
        Err(e) => return not_started(e.to_string()),
    };
    let Some(pid) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) else {
        // Not reachable for a spawned child; do not kill a wrong group if it ever were.
        let _ = child.wait();
        return not_started(format!("spawned child has pid {}", child.id()));
    };
    // The child is not reaped before we wait for it, so its pid cannot be reused here.
    let exit_watch = hv_vss_sys::process::exit_watch(pid).ok();
    let mut capture = Capture {
        kept: Vec::new(),
        truncated: false,
    };

    let outcome = match wait_capturing(
        &mut child,
        exit_watch.as_ref(),
        &read,
        &mut capture,
        kill_at,
    ) {
        Wait::Exited => match child.wait() {
            Ok(status) => outcome_of(status),
            Err(e) => HookOutcome::SpawnFailed(format!("waitpid: {e}")),
        },
        Wait::Deadline => {
            // setsid made the hook the leader of a group whose id is its pid. ESRCH means the
            // whole group is already gone.
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
            match wait_killed(&mut child, exit_watch.as_ref(), KILL_GRACE) {
                // It exited on its own just before the kill landed.
                Some(status) if status.code().is_some() => outcome_of(status),
                Some(_) => HookOutcome::TimedOut,
                None => {
                    reap_later(child);
                    HookOutcome::TimedOut
                }
            }
        }
    };
    drain_now(&read, &mut capture);
    HookResult {
        path: path.to_owned(),
        arg,
        outcome,
        output: capture.kept,
        truncated: capture.truncated,
        elapsed: started.elapsed(),
    }
}

/// Reap a killed hook that has not died yet (it sits in an uninterruptible sleep) without
/// holding up the caller, so it does not linger as a zombie.
fn reap_later(mut child: Child) {
    let spawned = std::thread::Builder::new()
        .name("hv-vss-hook-reaper".into())
        .spawn(move || {
            let _ = child.wait();
        });
    // Without a thread the child stays a zombie until the process exits; nothing else to do.
    drop(spawned);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_the_first_bytes_and_flags_the_rest() {
        let mut capture = Capture {
            kept: Vec::new(),
            truncated: false,
        };
        capture.push(&[b'a'; OUTPUT_LIMIT - 1]);
        assert!(!capture.truncated);
        capture.push(b"bc");
        assert!(capture.truncated);
        assert_eq!(capture.kept.len(), OUTPUT_LIMIT);
        assert_eq!(capture.kept.last(), Some(&b'b'));
    }
}
