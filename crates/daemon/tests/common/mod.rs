//! Test harness for the real `hv-vssd` binary: loop-mounted filesystems the test creates,
//! write probes, the daemon as a child process, and a per-test timeout that cleans up.
//!
//! Safety rules (team preamble): only loop images made here are frozen; every guard thaws
//! and unmounts in Drop (also on panic); every test body runs under [`with_timeout`], which
//! on expiry thaws and unmounts every registered filesystem and kills every registered
//! process before failing.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// Everything a timed-out test must clean up.
static MOUNTS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `body` on a thread; if it does not finish within `limit`, kills registered processes,
/// thaws and unmounts registered filesystems, and panics.
pub fn with_timeout<F: FnOnce() + Send + 'static>(limit: Duration, body: F) {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        body();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => handle.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The body panicked; its guards already ran. Re-raise the panic.
            if let Err(p) = handle.join() {
                std::panic::resume_unwind(p);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            emergency_cleanup();
            panic!("test timed out after {limit:?}");
        }
    }
}

fn emergency_cleanup() {
    for pid in lock(&PIDS).drain(..) {
        if let Some(pid) = Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
    }
    for mnt in lock(&MOUNTS).drain(..) {
        thaw_path(&mnt);
        let _ = Command::new("umount").arg("-l").arg(&mnt).status();
    }
}

fn thaw_path(mnt: &Path) {
    if let Ok(fd) = hv_vss_sys::fs::open_mount_point(mnt) {
        let _ = hv_vss_sys::fs::thaw(std::os::fd::AsFd::as_fd(&fd));
    }
}

/// A loop-mounted filesystem in its own temp directory.
#[derive(Debug)]
pub struct LoopFs {
    dir: tempfile::TempDir,
    mnt: PathBuf,
    mounted: bool,
}

impl LoopFs {
    /// A fresh ext4 image of 32 MiB, loop-mounted.
    pub fn ext4() -> Self {
        Self::new("ext4", 32 << 20, &["-q", "-F"])
    }

    /// A fresh xfs image of 320 MiB (xfs's minimum is 300 MiB), loop-mounted.
    pub fn xfs() -> Self {
        Self::new("xfs", 320 << 20, &["-q", "-f"])
    }

    fn new(fs: &str, size: u64, mkfs_args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hv-vssd-test")
            .tempdir()
            .unwrap();
        let img = dir.path().join("fs.img");
        File::create(&img).unwrap().set_len(size).unwrap();
        let ok = Command::new(format!("mkfs.{fs}"))
            .args(mkfs_args)
            .arg(&img)
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mkfs.{fs} failed");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let ok = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount -o loop failed");
        lock(&MOUNTS).push(mnt.clone());
        Self {
            dir,
            mnt,
            mounted: true,
        }
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// Starts a write (create + write + fsync of a new file) on a thread.
    pub fn probe(&self) -> WriteProbe {
        WriteProbe::start(&self.mnt)
    }

    /// A write completes within `limit`.
    pub fn writable_within(&self, limit: Duration) -> bool {
        self.probe().done_within(limit)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        thaw_path(&self.mnt);
        let ok = Command::new("umount")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        lock(&MOUNTS).retain(|m| m != &self.mnt);
        let _ = &self.dir;
    }
}

/// A write running on its own thread; it blocks while the filesystem is frozen and finishes
/// after the thaw.
#[derive(Debug)]
pub struct WriteProbe {
    done: mpsc::Receiver<std::io::Result<()>>,
    finished: bool,
}

static PROBE_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl WriteProbe {
    pub fn start(dir: &Path) -> Self {
        let n = PROBE_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("probe-{}-{n}", std::process::id()));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let result = (|| {
                use std::io::Write;
                let mut f = File::create(&path)?;
                f.write_all(b"probe")?;
                f.sync_all()
            })();
            let _ = tx.send(result);
        });
        Self {
            done: rx,
            finished: false,
        }
    }

    /// True if the write finished (successfully) within `limit`.
    pub fn done_within(&mut self, limit: Duration) -> bool {
        if self.finished {
            return true;
        }
        match self.done.recv_timeout(limit) {
            Ok(r) => {
                r.expect("probe write failed");
                self.finished = true;
                true
            }
            Err(_) => false,
        }
    }
}

/// A state directory on tmpfs (/dev/shm).
pub fn state_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hv-vssd-state")
        .tempdir_in("/dev/shm")
        .unwrap()
}

/// The real daemon as a child process; stderr goes to a file read by [`Daemon::log`].
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `hv-vssd` with an empty config file and `args`.
    pub fn start(args: &[&std::ffi::OsStr]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// As [`Daemon::start`] with extra environment variables.
    pub fn start_with_env(args: &[&std::ffi::OsStr], env: &[(&str, &std::ffi::OsStr)]) -> Self {
        let log_dir = tempfile::Builder::new()
            .prefix("hv-vssd-log")
            .tempdir_in("/dev/shm")
            .unwrap();
        let config = log_dir.path().join("empty.toml");
        std::fs::write(&config, "").unwrap();
        let log = log_dir.path().join("stderr.log");
        let child = Command::new(env!("CARGO_BIN_EXE_hv-vssd"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .arg("-n")
            .arg("--debug")
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        lock(&PIDS).push(child.id());
        Self {
            child,
            log,
            _log_dir: log_dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: Signal) {
        let pid = Pid::from_raw(self.pid() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// Waits for the exit; None on timeout.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The guardian: the child process of the daemon.
    pub fn guardian_pid(&self) -> Option<u32> {
        children_of(self.pid()).into_iter().next()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let guardian = self.guardian_pid();
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The guardian exits on its own once the daemon's socket closes; make sure.
        if let Some(g) = guardian {
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && process_exists(g) {
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Some(pid) = Pid::from_raw(g as i32) {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
        let me = self.child.id();
        lock(&PIDS).retain(|p| *p != me);
        if std::thread::panicking() || std::env::var_os("HV_VSSD_TEST_LOG").is_some() {
            eprintln!("---- hv-vssd log ----\n{}", self.log());
        }
    }
}

/// Pids whose parent is `pid` (from /proc).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may contain spaces; parse after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") {
            continue;
        }
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            out.push(child);
        }
    }
    out
}

pub fn process_exists(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

pub fn kill(pid: u32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}
