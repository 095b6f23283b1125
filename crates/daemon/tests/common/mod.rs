//! Test harness for the real `hv-vssd` binary: the daemon as a child process, its log, its
//! guardian, and a per-test timeout that also kills it. Filesystems, write probes, state
//! directories and the timeout itself come from hv-vss-testutil.
//!
//! Safety rules (team preamble): only loop images made by the test are frozen (testutil's
//! [`LoopFs`] thaws, unmounts and detaches in Drop, also on panic); every test body runs
//! under [`with_timeout`], which holds testutil's [`serial`] lock (a `LoopFs` drop thaws
//! every test filesystem of this binary) and on expiry kills every daemon started here
//! before testutil thaws every test filesystem.

#![allow(dead_code)]

pub mod app_client;

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

pub use hv_vss_testutil::{FsKind, LoopFs, serial};
use rustix::process::{Pid, Signal};

/// Daemons a timed-out test must kill.
static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `body` (one test at a time in this binary); if it does not finish within `limit`,
/// kills every daemon it started, thaws every test filesystem, and fails.
pub fn with_timeout<T: Send + 'static>(
    limit: Duration,
    body: impl FnOnce() -> T + Send + 'static,
) -> T {
    let _serial = serial();
    hv_vss_testutil::run_with_timeout_and_cleanup(limit, kill_registered, body)
}

fn kill_registered() {
    // The guardians see their daemon die, thaw what it froze and exit on their own.
    for pid in lock(&PIDS).drain(..) {
        kill(pid, Signal::KILL);
    }
}

/// A fresh ext4 filesystem, loop-mounted in its own temp directory.
pub fn ext4() -> LoopFs {
    LoopFs::new(FsKind::Ext4).expect("loop-mounted ext4")
}

/// A state directory on tmpfs, as the daemon wants it.
pub fn state_dir() -> tempfile::TempDir {
    hv_vss_testutil::tmpfs_state_dir().expect("state dir on /dev/shm")
}

/// Runs `cmd` (the daemon, expected to exit at start-up) to completion with stdin closed,
/// stdout and stderr captured and no `NOTIFY_SOCKET`, killing it if it has not exited
/// within `limit`.
pub fn run_to_exit(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (exited, wait_exit) = mpsc::channel::<()>();
    let killer = std::thread::spawn(move || {
        if wait_exit.recv_timeout(limit) == Err(mpsc::RecvTimeoutError::Timeout) {
            kill(pid, Signal::KILL);
        }
    });
    let out = child.wait_with_output().unwrap();
    drop(exited);
    let _ = killer.join();
    out
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
        Self::start_full(args, env, None, "")
    }

    /// As [`Daemon::start`], in working directory `cwd` (where a core dump would go).
    pub fn start_in(args: &[&std::ffi::OsStr], cwd: &std::path::Path) -> Self {
        Self::start_full(args, &[], Some(cwd), "")
    }

    /// As [`Daemon::start`] with `config` as the config file's text.
    pub fn start_with_config(args: &[&std::ffi::OsStr], config: &str) -> Self {
        Self::start_full(args, &[], None, config)
    }

    /// As [`Daemon::start_with_config`], started through `prlimit` with the soft and hard
    /// `RLIMIT_NOFILE` given (systemd starts services with a soft limit of 1024).
    pub fn start_with_fd_limit(
        args: &[&std::ffi::OsStr],
        config: &str,
        nofile: (u64, u64),
    ) -> Self {
        let limit = format!("--nofile={}:{}", nofile.0, nofile.1);
        Self::start_via(Some(&limit), args, &[], None, config)
    }

    fn start_full(
        args: &[&std::ffi::OsStr],
        env: &[(&str, &std::ffi::OsStr)],
        cwd: Option<&std::path::Path>,
        config_text: &str,
    ) -> Self {
        Self::start_via(None, args, env, cwd, config_text)
    }

    /// `prlimit_arg`: run the daemon through `prlimit` (which execs it: same pid).
    fn start_via(
        prlimit_arg: Option<&str>,
        args: &[&std::ffi::OsStr],
        env: &[(&str, &std::ffi::OsStr)],
        cwd: Option<&std::path::Path>,
        config_text: &str,
    ) -> Self {
        // On tmpfs: the daemon's stderr must never block on a filesystem a test freezes.
        let log_dir = state_dir();
        let config = log_dir.path().join("hv-vss.toml");
        std::fs::write(&config, config_text).unwrap();
        let log = log_dir.path().join("stderr.log");
        let mut cmd = match prlimit_arg {
            Some(limit) => {
                let mut cmd = Command::new("prlimit");
                cmd.args([limit, "--"]).arg(env!("CARGO_BIN_EXE_hv-vssd"));
                cmd
            }
            None => Command::new(env!("CARGO_BIN_EXE_hv-vssd")),
        };
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let child = cmd
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

    /// Open fds and threads of the daemon (from /proc), settled.
    ///
    /// The fewest seen in 10 samples over about 200 ms: right after an answer the daemon
    /// may still have a file of its own open for a moment (the report, the history, a
    /// journal rewrite), which is not growth; a leaked fd or thread is in every sample.
    pub fn fds_and_threads(&self) -> (usize, usize) {
        let count = |what: &str| {
            std::fs::read_dir(format!("/proc/{}/{what}", self.pid()))
                .map(|d| d.count())
                .unwrap_or(0)
        };
        let mut fewest = (usize::MAX, usize::MAX);
        for i in 0..10 {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
            fewest.0 = fewest.0.min(count("fd"));
            fewest.1 = fewest.1.min(count("task"));
        }
        fewest
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
