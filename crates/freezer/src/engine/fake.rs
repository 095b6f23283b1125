//! A fake kernel for the engine's unit tests: each fd maps to a planned mount, every call is
//! recorded, and hangs, foreign freezes, unsupported filesystems, failing thaws and
//! rendezvous (to prove calls run in parallel) are set per test.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use hv_vss_sys::fs::{DevNum, FileIdentity, FreezeError as SysFreezeError, ThawError};

use super::FsOps;

/// Fake kernel: each fd maps to a mount (by the temp dir it opened); calls are recorded.
#[derive(Default)]
pub(super) struct Fake {
    /// path -> (mount id, dev)
    pub(super) mounts: BTreeMap<PathBuf, (u64, DevNum)>,
    /// raw fd -> path
    fds: Mutex<BTreeMap<i32, PathBuf>>,
    pub(super) calls: Mutex<Vec<String>>,
    pub(super) frozen: Mutex<Vec<PathBuf>>,
    pub(super) foreign: Vec<PathBuf>,
    pub(super) unsupported: Vec<PathBuf>,
    pub(super) hang: Vec<PathBuf>,
    /// syncfs takes 1.5 s on these.
    pub(super) sync_hang: Vec<PathBuf>,
    /// FITHAW fails (EIO) on these while the flag is set.
    pub(super) stuck: Vec<PathBuf>,
    pub(super) stuck_on: std::sync::atomic::AtomicBool,
    pub(super) state_dev: Option<DevNum>,
    /// Every FIFREEZE waits here until `parties` calls have started (or it times out).
    pub(super) freeze_rendezvous: Option<Rendezvous>,
    /// Every syncfs waits here likewise.
    pub(super) sync_rendezvous: Option<Rendezvous>,
    flushing: Mutex<BTreeSet<DevNum>>,
    /// The n-th syncfs call (any filesystem) takes the n-th of these; later ones none.
    pub(super) sync_durations: Mutex<std::collections::VecDeque<Duration>>,
    /// Every FIFREEZE reads this expedited-RCU switch file and the journal in this state
    /// directory as it starts, into `seen_at_freeze`.
    pub(super) probe: Option<(PathBuf, PathBuf)>,
    /// Per FIFREEZE: the switch's content and the switch the journal named.
    pub(super) seen_at_freeze: Mutex<Vec<(String, Option<PathBuf>)>>,
}

/// A barrier with a timeout: a serial caller makes the test fail instead of hang.
pub(super) struct Rendezvous {
    parties: usize,
    arrived: Mutex<usize>,
    all_here: std::sync::Condvar,
    timeout: Duration,
    /// Calls that gave up waiting: they ran while no other call had started.
    timed_out: std::sync::atomic::AtomicUsize,
}

impl Rendezvous {
    pub(super) fn new(parties: usize) -> Self {
        Self {
            parties,
            arrived: Mutex::new(0),
            all_here: std::sync::Condvar::new(),
            timeout: Duration::from_secs(2),
            timed_out: 0.into(),
        }
    }

    /// Arrive and wait until every party has arrived, or the timeout.
    pub(super) fn meet(&self) {
        let mut arrived = self.arrived.lock().unwrap();
        *arrived += 1;
        self.all_here.notify_all();
        let (_arrived, waited) = self
            .all_here
            .wait_timeout_while(arrived, self.timeout, |n| *n < self.parties)
            .unwrap();
        if waited.timed_out() {
            self.timed_out
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    pub(super) fn timed_out(&self) -> usize {
        self.timed_out.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Fake {
    pub(super) fn path(&self, fd: BorrowedFd<'_>) -> PathBuf {
        self.fds.lock().unwrap()[&fd.as_raw_fd()].clone()
    }
    pub(super) fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl FsOps for Fake {
    fn open(&self, path: &Path) -> std::io::Result<OwnedFd> {
        if !self.mounts.contains_key(path) {
            return Err(std::io::Error::from_raw_os_error(2));
        }
        let fd: OwnedFd = std::fs::File::open("/").unwrap().into();
        self.fds
            .lock()
            .unwrap()
            .insert(fd.as_raw_fd(), path.to_path_buf());
        Ok(fd)
    }
    fn identify(&self, fd: BorrowedFd<'_>) -> std::io::Result<FileIdentity> {
        let (mount_id, dev) = self.mounts[&self.path(fd)];
        Ok(FileIdentity {
            dev,
            mount_id: Some(mount_id),
        })
    }
    fn identify_path(&self, _: &Path) -> std::io::Result<FileIdentity> {
        Ok(FileIdentity {
            dev: self.state_dev.unwrap_or(DevNum {
                major: 0,
                minor: 99,
            }),
            mount_id: None,
        })
    }
    fn syncfs(&self, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        let p = self.path(fd);
        if let Some(r) = &self.sync_rendezvous {
            r.meet();
        }
        if self.sync_hang.contains(&p) {
            std::thread::sleep(Duration::from_millis(1500));
        }
        let took = self.sync_durations.lock().unwrap().pop_front();
        if let Some(d) = took {
            std::thread::sleep(d);
        }
        self.calls
            .lock()
            .unwrap()
            .push(format!("sync {}", p.display()));
        Ok(())
    }
    fn freeze(&self, fd: BorrowedFd<'_>) -> Result<(), SysFreezeError> {
        let p = self.path(fd);
        if let Some((switch, state_dir)) = &self.probe {
            let value = std::fs::read_to_string(switch).unwrap_or_default();
            let named = crate::journal::Journal::read(state_dir)
                .ok()
                .flatten()
                .and_then(|j| j.rcu_expedited);
            self.seen_at_freeze.lock().unwrap().push((value, named));
        }
        if let Some(r) = &self.freeze_rendezvous {
            r.meet();
        }
        if self.hang.contains(&p) {
            std::thread::sleep(Duration::from_millis(300));
        }
        self.calls
            .lock()
            .unwrap()
            .push(format!("freeze {}", p.display()));
        if self.foreign.contains(&p) {
            return Err(SysFreezeError::AlreadyFrozen);
        }
        if self.unsupported.contains(&p) {
            return Err(SysFreezeError::Unsupported);
        }
        self.frozen.lock().unwrap().push(p);
        Ok(())
    }
    fn flushing(&self) -> &Mutex<BTreeSet<DevNum>> {
        &self.flushing
    }
    fn thaw(&self, fd: BorrowedFd<'_>) -> Result<(), ThawError> {
        let p = self.path(fd);
        self.calls
            .lock()
            .unwrap()
            .push(format!("thaw {}", p.display()));
        if self.stuck.contains(&p) && self.stuck_on.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ThawError::Other(rustix::io::Errno::IO));
        }
        let mut frozen = self.frozen.lock().unwrap();
        match frozen.iter().position(|f| *f == p) {
            Some(i) => {
                frozen.remove(i);
                Ok(())
            }
            None => Err(ThawError::NotFrozen),
        }
    }
}
