//! Who holds a freeze made by `hv-vss freeze --hold` on FreeBSD, so that `hv-vss thaw`
//! can end it: `STATE_DIR/freeze-hold.pid`, locked by the holder for its whole life.
//!
//! # Mechanism
//!
//! A UFS suspension belongs to the holder's open `/dev/ufssuspend` fds: no other process
//! can resume it, but ending the holder does (the kernel closes its fds). So the holder
//! records its pid and holds an exclusive `flock` on the record: while the lock is held the
//! pid is the live holder's (no reused pid is signalled); a record nobody locks is stale.
//! [`end_holder`] sends SIGTERM (the hold ends early, resumes in order and prints its
//! report), then SIGKILL if it has not exited within the grace.
//!
//! The lock is taken through a descriptor opened read-only, and the pid written through
//! another that is closed at once: `UFSSUSPEND` refuses a process with a file open for
//! writing on the mount it suspends, and the state directory may be on one.
//!
//! Platform-neutral (flock, kill, exit watch), so it is tested on Linux with real
//! processes; only FreeBSD's `hv-vss freeze` uses it.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{Mode, OFlags};
use rustix::process::{Pid, Signal};

/// The record's file name inside the state directory.
pub const HOLDER_FILE: &str = "freeze-hold.pid";

/// Why the record could not be claimed or used.
#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    /// Another live holder locks the record.
    #[error("another hv-vss freeze --hold (pid {}) holds {}", .pid.map_or("unknown".to_string(), |p| p.to_string()), .path.display())]
    Busy {
        /// The record.
        path: PathBuf,
        /// Its pid, if readable.
        pid: Option<i32>,
    },
    /// The record is locked but holds no pid.
    #[error("{} is locked but holds no pid: {content:?}", .path.display())]
    Unreadable {
        /// The record.
        path: PathBuf,
        /// What it holds.
        content: String,
    },
    /// A file operation failed.
    #[error("{what} {}: {source}", .path.display())]
    Io {
        /// What was done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// This process's claim as the holder; dropping it removes the record (do that after the
/// thaw: the state directory may be on a suspended filesystem).
#[derive(Debug)]
pub struct HolderClaim {
    path: PathBuf,
    _lock: File,
}

impl HolderClaim {
    /// The record's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for HolderClaim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HolderError {
    let path = path.to_path_buf();
    move |source| HolderError::Io { what, path, source }
}

/// Opens the record read-only (creating it when `create`).
fn open_record(path: &Path, create: bool) -> std::io::Result<File> {
    let mut flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    if create {
        flags |= OFlags::CREATE;
    }
    Ok(File::from(rustix::fs::open(
        path,
        flags,
        Mode::from_raw_mode(0o600),
    )?))
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Claims the record in `state_dir` for this process: locks it and writes our pid.
pub fn claim(state_dir: &Path) -> Result<HolderClaim, HolderError> {
    std::fs::create_dir_all(state_dir).map_err(io("creating", state_dir))?;
    let path = state_dir.join(HOLDER_FILE);
    let lock = open_record(&path, true).map_err(io("opening", &path))?;
    let locked = hv_vss_sys::fs::try_lock_exclusive(lock.as_fd()).map_err(io("locking", &path))?;
    if !locked {
        return Err(HolderError::Busy {
            pid: read_pid(&path),
            path,
        });
    }
    std::fs::write(&path, format!("{}\n", std::process::id())).map_err(io("writing", &path))?;
    Ok(HolderClaim { path, _lock: lock })
}

/// What [`end_holder`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndOutcome {
    /// No live holder (no record, or a stale one, now removed).
    NothingHeld,
    /// The holder exited: after SIGTERM, or only after SIGKILL (`killed`).
    Ended {
        /// Its pid.
        pid: i32,
        /// SIGTERM was not enough.
        killed: bool,
    },
    /// It survived SIGKILL for the grace (stuck in the kernel); it resumes when it exits.
    StillRunning {
        /// Its pid.
        pid: i32,
    },
}

/// Ends the holder recorded in `state_dir`: SIGTERM, up to `grace` to exit, then SIGKILL
/// and up to `grace` again.
pub fn end_holder(state_dir: &Path, grace: Duration) -> Result<EndOutcome, HolderError> {
    let path = state_dir.join(HOLDER_FILE);
    let record = match open_record(&path, false) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(EndOutcome::NothingHeld),
        Err(e) => return Err(io("opening", &path)(e)),
    };
    if hv_vss_sys::fs::try_lock_exclusive(record.as_fd()).map_err(io("locking", &path))? {
        // Nobody holds it: a holder that died without removing its record.
        let _ = std::fs::remove_file(&path);
        return Ok(EndOutcome::NothingHeld);
    }
    let Some(pid) = read_pid(&path) else {
        return Err(HolderError::Unreadable {
            content: std::fs::read_to_string(&path).unwrap_or_default(),
            path,
        });
    };
    let Some(target) = Pid::from_raw(pid).filter(|p| p.as_raw_nonzero().get() > 1) else {
        return Err(HolderError::Unreadable {
            content: pid.to_string(),
            path,
        });
    };
    for (signal, killed) in [(Signal::TERM, false), (Signal::KILL, true)] {
        match rustix::process::kill_process(target, signal) {
            Ok(()) => {}
            Err(rustix::io::Errno::SRCH) => return Ok(EndOutcome::Ended { pid, killed }),
            Err(errno) => return Err(io("signalling the holder in", &path)(errno.into())),
        }
        if hv_vss_sys::process::wait_for_exit(pid, grace) {
            return Ok(EndOutcome::Ended { pid, killed });
        }
    }
    Ok(EndOutcome::StillRunning { pid })
}

#[cfg(test)]
mod tests;
