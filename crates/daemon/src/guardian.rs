//! The guardian: a second process that thaws what the freezer's journal lists when the
//! daemon dies, even by SIGKILL (R57).
//!
//! # Mechanism
//!
//! FIFREEZE is not tied to any process or fd: a daemon that dies leaves its filesystems
//! frozen. So, before any freeze, the daemon re-executes itself (`/proc/self/exe
//! --guardian --state-dir DIR`) with one end of a socketpair as the child's stdin. Exec
//! happens only while nothing is frozen (R60). The guardian:
//!
//! 1. ignores SIGINT, SIGTERM and SIGHUP (a Ctrl-C or a stop aimed at the daemon must not
//!    take the safety net with it; the daemon itself thaws on those),
//! 2. writes one byte `R` to say it is armed,
//! 3. blocks reading its socket. The daemon never writes to it; the read returns 0 (end of
//!    file) when the daemon's end closes: the daemon exited or was killed — the kernel
//!    closes a dead process's fds whatever killed it.
//! 4. then runs [`hv_vss_freezer::recover`]: it thaws exactly what the journal lists (in
//!    reverse, each path checked to still be the same device) and removes the journal. A
//!    daemon that exited cleanly left no journal, so nothing happens. It retries a
//!    recovery that did not complete for a few seconds, then exits.
//!
//! The journal is the contract: it is written by the freezer before the first FIFREEZE.
//! The daemon's freeze lock (flock, CLOEXEC) dies with the daemon, so `recover` goes ahead.
//!
//! The daemon watches its end too: if the guardian dies while filesystems are frozen, the
//! coordinator thaws as on auto-thaw (`Event::GuardianDied`), and the daemon starts a new
//! guardian once everything is thawed. It refuses FREEZE (not ready) while it has none.
//!
//! # Limitations
//!
//! - If both processes are killed, filesystems stay frozen until the next start of the
//!   daemon (R59) or `hv-vss thaw --recover`.
//! - The frozen fds are not passed over SCM_RIGHTS; the journal's paths are used instead.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::SendFlags;

/// How long the daemon waits for a new guardian to say it is armed.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the guardian retries an incomplete recovery.
const RECOVER_RETRY_FOR: Duration = Duration::from_secs(5);
const READY_BYTE: u8 = b'R';

/// The daemon's handle on its guardian.
#[derive(Debug)]
pub struct Guardian {
    child: Child,
    sock: UnixStream,
}

impl Guardian {
    /// Starts a guardian for `state_dir` and waits until it is armed.
    pub fn spawn(state_dir: &Path, debug: bool) -> anyhow::Result<Self> {
        let (ours, theirs) = UnixStream::pair().context("socketpair for the guardian")?;
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg("--guardian").arg("--state-dir").arg(state_dir);
        if debug {
            cmd.arg("--debug");
        }
        cmd.stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            // Only the daemon talks to systemd (NotifyAccess=main).
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID");
        let mut child = cmd.spawn().context("cannot start the guardian process")?;
        drop(cmd);
        let fds = &mut [PollFd::new(&ours, PollFlags::IN)];
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the guardian did not report ready within {READY_TIMEOUT:?}");
            }
            let ts = Timespec::try_from(left).unwrap_or(Timespec {
                tv_sec: 5,
                tv_nsec: 0,
            });
            match rustix::event::poll(fds, Some(&ts)) {
                Ok(0) => continue,
                Ok(_) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => bail!("poll on the guardian socket: {e}"),
            }
        }
        let mut byte = [0u8; 1];
        match (&ours).read(&mut byte) {
            Ok(1) if byte[0] == READY_BYTE => {}
            other => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the guardian failed to start: {other:?}");
            }
        }
        Ok(Self { child, sock: ours })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Called when the socket polled readable or hung up: true if the guardian is gone
    /// (it is then reaped).
    pub fn is_gone(&mut self) -> bool {
        let mut buf = [0u8; 16];
        match rustix::net::recv(&self.sock, &mut buf, rustix::net::RecvFlags::DONTWAIT) {
            Ok((0, _)) => {}
            Ok(_) => return false,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => return false,
            Err(_) => {}
        }
        let _ = self.child.wait();
        true
    }
}

impl AsFd for Guardian {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl Drop for Guardian {
    fn drop(&mut self) {
        // Closing our end lets the guardian run its (empty) recovery and exit; reap it if it
        // does so promptly.
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The guardian process's main: returns its exit code.
pub fn run(state_dir: &Path) -> i32 {
    // A handled signal does not kill: these three only set a flag nobody reads.
    let ignored = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&ignored)) {
            tracing::error!(error = %e, "guardian: cannot ignore signal {sig}");
            return 1;
        }
    }
    let stdin = std::io::stdin();
    let sock = stdin.as_fd();
    if rustix::net::send(sock, &[READY_BYTE], SendFlags::NOSIGNAL).is_err() {
        tracing::error!("guardian: stdin is not the daemon's socket");
        return 1;
    }
    let mut buf = [0u8; 64];
    loop {
        match rustix::io::read(sock, &mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
            Err(_) => break,
        }
    }
    // The daemon is gone: thaw what its journal lists.
    let started = Instant::now();
    loop {
        match hv_vss_freezer::recover(state_dir, hv_vss_freezer::RecoverOptions::default()) {
            Ok(report) if report.complete() => {
                if report.journal_found {
                    let thawed: Vec<String> = report
                        .filesystems
                        .iter()
                        .map(|f| f.entry.path.display().to_string())
                        .collect();
                    tracing::error!(
                        daemon_pid = report.freezer_pid,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        thawed = ?thawed,
                        "guardian: the daemon died while filesystems were frozen; thawed them from the journal"
                    );
                } else {
                    tracing::debug!("guardian: daemon gone, nothing was frozen");
                }
                return 0;
            }
            Ok(report) => {
                if started.elapsed() > RECOVER_RETRY_FOR {
                    tracing::error!(
                        report = %serde_json::to_string(&report).unwrap_or_default(),
                        "guardian: recovery incomplete; run `hv-vss thaw --recover`"
                    );
                    return 1;
                }
            }
            Err(e) => {
                if started.elapsed() > RECOVER_RETRY_FOR {
                    tracing::error!(error = %e, "guardian: recovery failed; run `hv-vss thaw --recover`");
                    return 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
