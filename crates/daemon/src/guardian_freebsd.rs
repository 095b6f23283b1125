//! FreeBSD has no guardian process; this module keeps the Linux guardian's interface
//! (`guardian.rs`) so the main loop has no platform conditions.
//!
//! # Why none is needed
//!
//! On Linux a FIFREEZE outlives the process that made it, so a second process holds an fd
//! of each frozen filesystem and thaws them when the daemon dies or hangs. On FreeBSD a UFS
//! suspension belongs to the open `/dev/ufssuspend` fd it was made through, and ends when
//! that fd is closed. The suspensions are made and held by a single-threaded child process
//! of the daemon (`UFSSUSPEND` refuses a multi-threaded caller), which holds them only
//! while its stdin, a pipe from the daemon, stays open. So:
//!
//! - the daemon dies, however (SIGKILL, panic, OOM): the kernel closes its end of the pipe,
//!   the holder resumes everything and exits;
//! - the holder dies, however: the kernel closes its fds, and the filesystems resume;
//! - both die: the same, twice over. Nothing is left suspended, and no journal is needed
//!   to recover at the next start.
//!
//! # Limitations
//!
//! A daemon that hangs (or is stopped with SIGSTOP) while the holder holds keeps the
//! filesystems suspended: the holder only sees its stdin close. On Linux the guardian's
//! heartbeat covers that case; here nothing does yet, beyond the daemon's own auto-thaw
//! (which runs on its main loop). The ZFS part is never suspended (`zpool sync` only).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

/// Kept for the loop's heartbeat timer; nobody listens on FreeBSD.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Kept for the loop's deadline arithmetic; nobody listens on FreeBSD.
pub const DEADLINE_GRACE: Duration = Duration::from_secs(5);
/// Kept for the loop's stale-heartbeat check; nobody gives up on FreeBSD (a stalled loop
/// still fails a FREEZE that returns after it, which is harmless).
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// Stands where the guardian's socket is on Linux: a pipe whose write end we keep, so
/// its read end never polls readable and the guardian is never "gone".
#[derive(Debug)]
pub struct Guardian {
    never_readable: OwnedFd,
    _writer: OwnedFd,
}

impl Guardian {
    /// No process to start.
    pub fn spawn(_state_dir: &Path, _debug: bool) -> anyhow::Result<Self> {
        let (never_readable, writer) = rustix::pipe::pipe()?;
        Ok(Self {
            never_readable,
            _writer: writer,
        })
    }

    /// The start-up line says there is none, and why.
    pub fn log_started(&self) {
        tracing::info!(
            "no guardian process on FreeBSD: a UFS suspension ends when its holder's fds close, so a daemon or holder that dies thaws through the kernel"
        );
    }

    /// Never: there is nothing to lose.
    pub fn is_gone(&mut self) -> bool {
        false
    }
}

impl AsFd for Guardian {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.never_readable.as_fd()
    }
}

/// The Linux guardian's link: here every message has no recipient.
#[derive(Debug, Clone, Default)]
pub struct GuardianLink {
    /// Nothing to reach (a field, so it is made like Linux's: `default()`).
    _none: (),
}

impl GuardianLink {
    pub fn connect(&self, _guardian: &Guardian) {}

    pub fn disconnect(&self) {}

    /// Nothing to hand held log lines to: they are lost with the daemon (none of them is
    /// needed to thaw, which the kernel does).
    pub fn hand_over_log(&self, _lines: &[Vec<u8>]) -> usize {
        0
    }

    pub fn heartbeat(&self) {}

    pub fn deadline(&self, _after: Option<Duration>) {}
}

/// `hv-vssd --guardian` does not exist on FreeBSD.
pub fn run(_state_dir: &Path) -> i32 {
    tracing::error!("hv-vssd --guardian: there is no guardian process on FreeBSD");
    crate::exit::ExitKind::Usage as i32
}
