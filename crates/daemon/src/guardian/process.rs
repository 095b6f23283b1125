//! The guardian process's main loop (see [`super`] for the mechanism).
//!
//! It holds the fds the daemon passed (SCM_RIGHTS), in the order they came, each either
//! *confirmed* (its FIFREEZE returned success: `Confirm`) or *in flight* (armed, no outcome
//! yet), and thaws them (reverse order) and exits when:
//! - the daemon's end of the socket closes (end of file): the daemon is gone;
//! - it holds fds and no message came for [`HEARTBEAT_TIMEOUT`]: the daemon is hung or
//!   stopped (SIGSTOP);
//! - it holds fds and the deadline the daemon gave has passed.
//!
//! Confirmed fds are thawed at once, so a hung or stopped daemon's frozen filesystems are
//! thawed within [`HEARTBEAT_TIMEOUT`] plus one poll. An fd still in flight is thawed only
//! once its outcome can be known: its `Confirm` comes (thawed then), its `Disarm` comes
//! (not ours: let go), or no FIFREEZE thread of the daemon is left running (each call has
//! returned: thawed then); looked at every [`OUTCOME_POLL`]. So it is thawed within
//! [`OUTCOME_POLL`] of its FIFREEZE returning, and never while the call may still block:
//! a FITHAW under a blocked FIFREEZE was seen to hang on kernel 6.18 and to disturb a
//! filesystem stacked under it.
//!
//! Each FITHAW runs on a thread of its own, all of a pass at once, bounded by
//! [`super::thaw::THAW_DEADLINE`] ([`super::thaw`]): one that blocks (its filesystem's
//! storage is frozen below it) is reported and kept listed, the others are thawed, and the
//! guardian waits for the late call (it thaws when it returns) before it exits.
//!
//! Exiting is how the daemon learns of it (its poll sees end of file: `GuardianDied`). The
//! fds decide what is thawed, whatever the journal says; the journal is then narrowed to
//! what could not be thawed (removed when that is nothing and the daemon is gone), so a
//! later recovery never thaws a filesystem again that someone else may have frozen since.

use std::io::{IoSliceMut, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use hv_vss_freezer::guardian_wire::{GuardianMsg, MAX_LOG_LINE, decode, decode_log_line};
use hv_vss_freezer::{DevNum, FREEZE_THREAD_NAME, Journal, SwitchRestore};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendFlags};

use super::READY_BYTE;
use super::thaw::{Held, Thaws};

/// No message from the daemon for this long while holding fds: thaw them.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many log lines handed over by a daemon exiting frozen are kept.
const MAX_LAST_WORDS: usize = 8192;

/// How often, once it has decided to thaw, the guardian looks whether a FIFREEZE still in
/// flight has returned.
pub const OUTCOME_POLL: Duration = Duration::from_millis(50);

/// Why the guardian thawed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    DaemonGone,
    HeartbeatLost,
    DeadlinePassed,
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
    let daemon_pid = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
    let stdin = std::io::stdin();
    let sock = stdin.as_fd();
    if rustix::net::send(sock, &[READY_BYTE], SendFlags::NOSIGNAL).is_err() {
        tracing::error!("guardian: stdin is not the daemon's socket");
        return 1;
    }
    let mut held: Vec<Held> = Vec::new();
    let mut last_words: Vec<Vec<u8>> = Vec::new();
    let mut deadline: Option<Instant> = None;
    let mut last_heard = Instant::now();
    let mut connected = true;
    let cause = loop {
        let now = Instant::now();
        if !held.is_empty() {
            if now >= last_heard + HEARTBEAT_TIMEOUT {
                // Silent because it is exiting (its last thread may be inside a FIFREEZE
                // that has not returned): that is the daemon going, not hanging.
                if daemon_exiting(daemon_pid) {
                    break Cause::DaemonGone;
                }
                break Cause::HeartbeatLost;
            }
            if deadline.is_some_and(|d| now >= d) {
                break Cause::DeadlinePassed;
            }
        }
        let wake = (!held.is_empty()).then(|| {
            let hb = last_heard + HEARTBEAT_TIMEOUT;
            deadline.map_or(hb, |d| d.min(hb))
        });
        let ts = wake.map(|w| {
            Timespec::try_from(w.saturating_duration_since(now)).unwrap_or(Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            })
        });
        let mut fds = [PollFd::from_borrowed_fd(sock, PollFlags::IN)];
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(_) => {
                connected = false;
                break Cause::DaemonGone;
            }
        }
        match receive_all(sock, &mut held, &mut deadline, &mut last_words) {
            Received::Some => last_heard = Instant::now(),
            Received::Nothing => {}
            Received::EndOfFile => {
                connected = false;
                break Cause::DaemonGone;
            }
        }
    };
    let started = Instant::now();
    let switch = turn_off_expedite(state_dir, daemon_pid);
    let mut thaws = Thaws::default();
    loop {
        // Confirmed ones at once; the rest once no FIFREEZE call can still be running.
        let settled = !freeze_in_flight(daemon_pid);
        let mut progress = thaws.start(&mut held, settled);
        progress |= thaws.collect_late();
        if held.is_empty() && !thaws.any_late() {
            break;
        }
        if progress {
            // Something still waits (a FIFREEZE in flight, a late FITHAW): list only that.
            narrow_journal(
                state_dir,
                daemon_pid,
                cause,
                &thaws.thawed,
                &thaws.not_thawed(&held),
            );
        }
        if connected {
            let ts = Timespec::try_from(OUTCOME_POLL).unwrap_or(Timespec {
                tv_sec: 0,
                tv_nsec: 50_000_000,
            });
            let mut fds = [PollFd::from_borrowed_fd(sock, PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(0) | Err(rustix::io::Errno::INTR) => {}
                Ok(_) => {
                    let mut ignored = None;
                    if let Received::EndOfFile =
                        receive_all(sock, &mut held, &mut ignored, &mut last_words)
                    {
                        connected = false;
                    }
                }
                Err(_) => connected = false,
            }
        } else {
            std::thread::sleep(OUTCOME_POLL);
        }
    }
    let Thaws { thawed, failed, .. } = thaws;
    narrow_journal(state_dir, daemon_pid, cause, &thawed, &failed);
    write_last_words(&last_words);
    // Logged only now: stderr may be a file on a filesystem that was frozen.
    match switch {
        None => {}
        Some(SwitchRestore::TurnedOff { path }) => {
            tracing::info!(switch = %path.display(), "guardian: expedited RCU grace periods turned off")
        }
        Some(SwitchRestore::Failed { path, error }) => {
            tracing::error!(switch = %path.display(), %error, "guardian: cannot turn expedited RCU grace periods off")
        }
    }
    if thawed.is_empty() && failed.is_empty() {
        tracing::debug!(?cause, "guardian: nothing held, exiting");
        return 0;
    }
    let names = |devs: &[DevNum]| devs.iter().map(|d| d.to_string()).collect::<Vec<_>>();
    if failed.is_empty() {
        tracing::error!(
            daemon_pid,
            ?cause,
            elapsed_ms = started.elapsed().as_millis() as u64,
            thawed = ?names(&thawed),
            "guardian: thawed the daemon's filesystems"
        );
        0
    } else {
        tracing::error!(
            daemon_pid,
            ?cause,
            thawed = ?names(&thawed),
            failed = ?names(&failed),
            "guardian: some filesystems could not be thawed; they stay in the journal: run `hv-vss thaw --recover`"
        );
        1
    }
}

/// The daemon's main thread has ended (zombie): the process is exiting, though a thread
/// still inside a system call may keep it from finishing.
fn daemon_exiting(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| matches!(rest.trim_start().chars().next(), Some('Z' | 'X')))
    })
}

/// Writes the log lines a daemon exiting frozen handed over to stderr (the daemon's own),
/// now that what it froze is thawed.
fn write_last_words(lines: &[Vec<u8>]) {
    if lines.is_empty() {
        return;
    }
    tracing::warn!(
        lines = lines.len(),
        "guardian: the daemon exited while frozen; the log lines it held follow"
    );
    let mut err = std::io::stderr().lock();
    for line in lines {
        let _ = err.write_all(line);
    }
    let _ = err.flush();
}

/// Whether a thread of `pid` that makes FIFREEZE calls ([`FREEZE_THREAD_NAME`]) is still
/// running: one that is stopped (the daemon got SIGSTOP: a thread stops only once its
/// system call has returned) or gone has no call in flight. A process that is gone has
/// none.
fn freeze_in_flight(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        let dir = task.path();
        let named = std::fs::read_to_string(dir.join("comm"))
            .is_ok_and(|comm| comm.trim_end() == FREEZE_THREAD_NAME);
        named
            && std::fs::read_to_string(dir.join("stat")).is_ok_and(|stat| {
                stat.rsplit_once(')').is_some_and(|(_, rest)| {
                    !matches!(
                        rest.trim_start().chars().next(),
                        Some('T' | 't' | 'Z' | 'X') | None
                    )
                })
            })
    })
}

enum Received {
    Some,
    Nothing,
    EndOfFile,
}

/// Reads every message waiting. An `Arm` keeps the fd that came with it, in flight (a
/// second `Arm` of the same device replaces the first); a `Confirm` marks it frozen; fds
/// that come with anything else are closed.
fn receive_all(
    sock: BorrowedFd<'_>,
    held: &mut Vec<Held>,
    deadline: &mut Option<Instant>,
    last_words: &mut Vec<Vec<u8>>,
) -> Received {
    let mut got = Received::Nothing;
    loop {
        let mut buf = [0u8; MAX_LOG_LINE + 2];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
        );
        let msg = match received {
            Ok(r) if r.bytes == 0 => return Received::EndOfFile,
            Ok(r) => {
                let bytes = &buf[..r.bytes.min(buf.len())];
                if let Some(line) = decode_log_line(bytes) {
                    if last_words.len() < MAX_LAST_WORDS {
                        last_words.push(line.to_vec());
                    }
                    got = Received::Some;
                    continue;
                }
                decode(bytes)
            }
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => return got,
            Err(_) => return Received::EndOfFile,
        };
        got = Received::Some;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = m {
                fds.extend(rights);
            }
        }
        match msg {
            Some(GuardianMsg::Arm(dev)) => {
                if let Some(fd) = fds.into_iter().next() {
                    held.retain(|h| h.dev != dev);
                    held.push(Held {
                        dev,
                        fd,
                        confirmed: false,
                    });
                }
            }
            Some(GuardianMsg::Confirm(dev)) => {
                for h in held.iter_mut().filter(|h| h.dev == dev) {
                    h.confirmed = true;
                }
            }
            Some(GuardianMsg::Disarm(dev)) => held.retain(|h| h.dev != dev),
            Some(GuardianMsg::Deadline(ms)) => {
                *deadline = ms.and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)))
            }
            Some(GuardianMsg::Heartbeat) | None => {}
        }
    }
}

/// Turns off the expedited-RCU switch if the daemon's journal says its freeze turned it on
/// (`hv_vss_freezer::expedite`): a daemon that died or hangs during its FIFREEZE calls
/// cannot. At once, before any thaw: a FIFREEZE still blocked may keep the guardian
/// waiting. What happened is logged by the caller once it has thawed.
fn turn_off_expedite(state_dir: &Path, daemon_pid: i32) -> Option<SwitchRestore> {
    let journal = Journal::read(state_dir).ok().flatten()?;
    let path = journal
        .rcu_expedited
        .filter(|_| journal.pid == daemon_pid)?;
    Some(SwitchRestore::turn_off(&path))
}

/// Takes what the guardian thawed off the journal of its daemon. When the daemon is gone,
/// the journal keeps only `not_thawed` (the held fds were exactly what the daemon may have
/// frozen: each was armed before its FIFREEZE), and goes when that is nothing.
fn narrow_journal(
    state_dir: &Path,
    daemon_pid: i32,
    cause: Cause,
    thawed: &[DevNum],
    not_thawed: &[DevNum],
) {
    let Ok(Some(mut journal)) = Journal::read(state_dir) else {
        return;
    };
    if journal.pid != daemon_pid {
        return;
    }
    // Turned off already (`turn_off_expedite`).
    journal.rcu_expedited = None;
    if cause == Cause::DaemonGone {
        journal.filesystems.retain(|e| not_thawed.contains(&e.dev));
    } else {
        journal.filesystems.retain(|e| !thawed.contains(&e.dev));
    }
    let result = if journal.filesystems.is_empty() {
        Journal::remove(state_dir)
    } else {
        journal.write(state_dir).map(drop)
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "guardian: cannot update the journal");
    }
}
