//! FreeBSD has no guardian process; this module keeps the Linux guardian's interface
//! (`guardian.rs`) so the main loop has no platform conditions, and passes the loop's
//! heartbeat and deadline on to the holder child, which is the guardian there.
//!
//! # Why no separate process is needed
//!
//! On Linux a FIFREEZE outlives the process that made it, so a second process holds an fd
//! of each frozen filesystem and thaws them when the daemon dies or hangs. On FreeBSD a UFS
//! suspension belongs to the open `/dev/ufssuspend` fd it was made through, and ends when
//! that fd is closed. The suspensions are made and held by a single-threaded child process
//! of the daemon (`UFSSUSPEND` refuses a multi-threaded caller), which holds them only
//! while its stdin, a pipe from the daemon, stays open and keeps bringing heartbeats
//! (`hv_vss_freezer::holder_process`). So:
//!
//! - the daemon dies, however (SIGKILL, panic, OOM): the kernel closes its end of the pipe,
//!   the holder resumes everything and exits;
//! - the daemon hangs or is stopped (SIGSTOP): its main loop writes no heartbeat
//!   ([`GuardianLink::heartbeat`], every [`HEARTBEAT_INTERVAL`]) and the holder resumes
//!   after 5 s without one; a daemon whose loop runs but never thaws is bounded by the
//!   deadline ([`GuardianLink::deadline`]: the FREEZE deadline, the auto-thaw and
//!   [`DEADLINE_GRACE`]), which the holder gets as its hard bound when it starts. The
//!   worker sees such a resume and the loop answers as when the Linux guardian thaws
//!   (`FsOutcome::ThawedOnItsOwn`, `Event::GuardianDied`);
//! - the holder dies, however: the kernel closes its fds, and the filesystems resume;
//! - both die: the same, twice over. Nothing is left suspended, and no journal is needed
//!   to recover at the next start.
//!
//! # Limitations
//!
//! With auto-thaw disabled there is no hard bound: only the heartbeat. The hard bound is
//! fixed when the holder starts (the Linux guardian's is shortened to the auto-thaw once
//! frozen). The ZFS part is never suspended (`zpool sync` only).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use crate::fsworker::HolderLink;

/// How often the loop tells the holder it is alive.
pub const HEARTBEAT_INTERVAL: Duration = hv_vss_freezer::holder_process::HEARTBEAT_INTERVAL;
/// How long after the daemon's own deadline the holder resumes on its own.
pub const DEADLINE_GRACE: Duration = Duration::from_secs(5);
/// How long the holder waits for a heartbeat before it resumes on its own (the loop's
/// stale-heartbeat check uses it as on Linux).
pub const HEARTBEAT_TIMEOUT: Duration = hv_vss_freezer::holder_process::HEARTBEAT_TIMEOUT;

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
            "no guardian process on FreeBSD: a UFS suspension ends when its holder's fds close, so a daemon or holder that dies thaws through the kernel, and the holder resumes on its own when this daemon's heartbeats stop or its hard bound passes"
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

/// The Linux guardian's link: here it reaches the holder child, if one holds.
#[derive(Debug, Clone, Default)]
pub struct GuardianLink {
    holder: HolderLink,
}

impl GuardianLink {
    pub fn connect(&self, _guardian: &Guardian) {}

    pub fn disconnect(&self) {}

    /// Nothing to hand held log lines to: they are lost with the daemon (none of them is
    /// needed to thaw, which the kernel does).
    pub fn hand_over_log(&self, _lines: &[Vec<u8>]) -> usize {
        0
    }

    /// The loop is alive: a heartbeat line to the holder.
    pub fn heartbeat(&self) {
        self.holder.heartbeat();
    }

    /// The hard bound of a holder started from now on (`None`: only the heartbeat).
    pub fn deadline(&self, after: Option<Duration>) {
        self.holder.set_deadline(after);
    }

    /// The part the filesystem worker uses.
    pub fn holder(&self) -> HolderLink {
        self.holder.clone()
    }
}

/// `hv-vssd --guardian` does not exist on FreeBSD.
pub fn run(_state_dir: &Path) -> i32 {
    tracing::error!("hv-vssd --guardian: there is no guardian process on FreeBSD");
    crate::exit::ExitKind::Usage as i32
}
