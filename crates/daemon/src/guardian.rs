//! The guardian: a second process that holds an fd of every filesystem the daemon may have
//! frozen and thaws exactly those when the daemon dies, hangs, is stopped, or lets its
//! deadline pass (R57).
//!
//! # Mechanism
//!
//! FIFREEZE is not tied to any process or fd: a daemon that dies leaves its filesystems
//! frozen. So, before any freeze, the daemon re-executes itself (`/proc/self/exe
//! --guardian --state-dir DIR`) with one end of a `SOCK_SEQPACKET` socketpair as the
//! child's stdin. Exec happens only while nothing is frozen (R60). Then, over that socket
//! ([`hv_vss_freezer::guardian_wire`], one datagram per message, never blocking the
//! daemon: a full socket fails an arm, which fails the freeze before its FIFREEZE):
//!
//! - before each FIFREEZE the freezer passes the filesystem's fd (SCM_RIGHTS) through the
//!   [`GuardianLink`] ([`hv_vss_freezer::FreezeWatch`]), and takes it back (`Disarm`) once
//!   it is thawed or turned out not to be ours (EBUSY);
//! - the thread that made a FIFREEZE call says so (`Confirm`) the moment the call returned
//!   success, so the guardian knows which held fds are frozen and which are still in
//!   flight;
//! - a daemon exiting while frozen (a fatal error, a panic that ends it) hands over the log
//!   lines it held (`L`), which would die with it; the guardian writes them to its stderr
//!   (the daemon's) once it has thawed;
//! - the main loop sends a heartbeat every [`HEARTBEAT_INTERVAL`], and the deadline by
//!   which the daemon will have thawed on its own (auto-thaw plus a grace).
//!
//! The guardian process ([`process`]) thaws the fds it holds, last armed first, when the socket
//! reaches end of file (the daemon exited or was killed: the kernel closes a dead
//! process's fds whatever killed it, and with `PR_SET_DUMPABLE` off while frozen no core
//! dump delays that), when no message came for [`process::HEARTBEAT_TIMEOUT`] while it
//! holds fds (the daemon is hung or SIGSTOPped), or at the deadline: the confirmed ones at
//! once, one still in flight only once its FIFREEZE has returned (a FITHAW issued under a
//! FIFREEZE that is still blocked was seen to hang, and to disturb a filesystem stacked
//! under it, on kernel 6.18). Each FITHAW is bounded ([`thaw`]): one that blocks is
//! reported and waited for while the others are thawed. It then narrows the journal to
//! what it could not thaw and exits. It ignores SIGINT, SIGTERM and SIGHUP, and
//! the systemd unit uses `KillMode=process`, so a stop or a crash of the daemon does not
//! take the guardian with it.
//!
//! Before thawing it turns off the expedited-RCU switch if the daemon's journal names it
//! (`hv_vss_freezer::expedite`: the daemon's freeze turned it on for its FIFREEZE calls and
//! may have died before turning it off).
//!
//! The daemon watches its end too: when the guardian exits (because it thawed, or died),
//! the coordinator thaws as on auto-thaw (`Event::GuardianDied`): a pending request is
//! answered E_FAIL, a later THAW too (R25), and the daemon keeps serving with a new
//! guardian, started once nothing is frozen. It refuses FREEZE while it has none.
//!
//! # Limitations
//!
//! - If both processes are killed, filesystems stay frozen until the next start of the
//!   daemon (R59) or `hv-vss thaw --recover` (the unit's `ExecStopPost=`), which use the
//!   journal.
//! - A FIFREEZE in flight is known to have returned when its `Confirm` or `Disarm` comes,
//!   or when no thread of the daemon that makes FIFREEZE calls is left running (they are
//!   stopped, or gone). A daemon stopped (SIGSTOP) under a blocked FIFREEZE stops the
//!   moment the call returns, before it can say how it went: the guardian then thaws that
//!   filesystem too, which, had the call failed with EBUSY because someone else froze the
//!   filesystem while it was blocked, thaws their freeze.
//! - A FIFREEZE that never returns is never followed by a FITHAW from the guardian: no
//!   FITHAW can be issued safely under it.
//! - A FITHAW that never returns (the storage under its filesystem stays frozen) keeps
//!   the guardian waiting for it, and that filesystem listed in the journal: a process
//!   cannot finish exiting while one of its threads is in such a call anyway.

pub mod process;
pub mod thaw;

use std::io::IoSlice;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hv_vss_freezer::DevNum;
use hv_vss_freezer::guardian_wire::{GuardianMsg, encode, encode_log_line};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{
    AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

pub use process::{HEARTBEAT_TIMEOUT, run};

/// How long the daemon waits for a new guardian to say it is armed.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the main loop tells the guardian it is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long after the daemon's own deadline the guardian thaws on its own.
pub const DEADLINE_GRACE: Duration = Duration::from_secs(5);
const READY_BYTE: u8 = b'R';

/// The daemon's handle on its guardian.
#[derive(Debug)]
pub struct Guardian {
    child: Child,
    sock: Arc<OwnedFd>,
}

impl Guardian {
    /// Starts a guardian for `state_dir` and waits until it is armed.
    pub fn spawn(state_dir: &Path, debug: bool) -> anyhow::Result<Self> {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .context("socketpair for the guardian")?;
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg("--guardian").arg("--state-dir").arg(state_dir);
        if debug {
            cmd.arg("--debug");
        }
        cmd.stdin(Stdio::from(theirs))
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
        match rustix::io::read(&ours, &mut byte) {
            Ok(1) if byte[0] == READY_BYTE => {}
            other => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the guardian failed to start: {other:?}");
            }
        }
        Ok(Self {
            child,
            sock: Arc::new(ours),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The start-up line.
    pub fn log_started(&self) {
        tracing::info!(pid = self.pid(), "guardian started");
    }

    /// Called when the socket polled readable or hung up: true if the guardian is gone
    /// (it is then reaped).
    pub fn is_gone(&mut self) -> bool {
        let mut buf = [0u8; 16];
        match rustix::net::recv(&*self.sock, &mut buf, rustix::net::RecvFlags::DONTWAIT) {
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
        // Exiting while something of ours may be frozen (the log gate holds): leave the
        // socket open, so the held log lines can still be handed over on the way out
        // (`main`); the kernel closes it when the process ends, and the guardian thaws then.
        if crate::logbuf::GATE.get().is_some_and(|gate| gate.is_held()) {
            return;
        }
        // Closing our end lets the guardian thaw what it still holds (nothing, after a
        // clean stop) and exit; reap it if it does so promptly. The link may still hold a
        // reference to the socket: shut it down so the guardian sees end of file now.
        let _ = rustix::net::shutdown(&*self.sock, rustix::net::Shutdown::Both);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The way to the current guardian, shared by the main loop (heartbeat, deadline) and the
/// filesystem worker (arm before each FIFREEZE, disarm after). Sends never block: a guardian
/// that does not drain its socket is not one to freeze under.
#[derive(Debug, Clone, Default)]
pub struct GuardianLink {
    sock: Arc<Mutex<Option<Arc<OwnedFd>>>>,
}

impl GuardianLink {
    /// From now on, messages go to `guardian`.
    pub fn connect(&self, guardian: &Guardian) {
        *self.lock() = Some(Arc::clone(&guardian.sock));
    }

    /// The guardian is gone: arms fail (no freeze without a guardian, R57).
    pub fn disconnect(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<OwnedFd>>> {
        self.sock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, msg: GuardianMsg, fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
        let sock = self.lock().clone().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotConnected, "no guardian is running")
        })?;
        let bytes = encode(msg);
        let fds;
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if let Some(fd) = fd {
            fds = [fd];
            control.push(SendAncillaryMessage::ScmRights(&fds));
        }
        rustix::net::sendmsg(
            &*sock,
            &[IoSlice::new(&bytes)],
            &mut control,
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        )?;
        Ok(())
    }

    /// Hands `lines` (held while frozen) to the guardian, which writes them out once it
    /// has thawed: the daemon is exiting frozen and they would die with it. Returns how
    /// many the socket took (never waits: the rest are lost).
    pub fn hand_over_log(&self, lines: &[Vec<u8>]) -> usize {
        let Some(sock) = self.lock().clone() else {
            return 0;
        };
        lines
            .iter()
            .take_while(|line| {
                rustix::net::send(
                    &*sock,
                    &encode_log_line(line),
                    SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
                )
                .is_ok()
            })
            .count()
    }

    /// The loop is alive.
    pub fn heartbeat(&self) {
        let _ = self.send(GuardianMsg::Heartbeat, None);
    }

    /// Thaw on your own if still holding anything `after` from now (`None`: no deadline).
    pub fn deadline(&self, after: Option<Duration>) {
        let ms = after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX - 1));
        let _ = self.send(GuardianMsg::Deadline(ms), None);
    }
}

impl hv_vss_freezer::FreezeWatch for GuardianLink {
    fn arm(&self, dev: DevNum, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        self.send(GuardianMsg::Arm(dev), Some(fd))
    }

    fn disarm(&self, dev: DevNum) {
        let _ = self.send(GuardianMsg::Disarm(dev), None);
    }

    fn frozen(&self, dev: DevNum) {
        let _ = self.send(GuardianMsg::Confirm(dev), None);
    }
}
