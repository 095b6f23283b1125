//! The real `hv-vssd` as a child process for end-to-end tests of its clients (application
//! integrations, `hv-vss app run`): drop-in mode against a device socket the test provides
//! (the kernel emulator of hv-vss-sim), freezing only the mount points the test names,
//! state and log on tmpfs. Killed on drop; its guardian thaws whatever it froze.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running hv-vssd.
#[derive(Debug)]
pub struct Vssd {
    child: Child,
    state: PathBuf,
}

impl Vssd {
    /// `binary --device DEVICE --state-dir STATE --mount M... -n`, with an empty config
    /// file (`STATE/hv-vss.toml`), stderr to `STATE/hv-vssd.log`. `state` must be on tmpfs
    /// ([`crate::tmpfs_state_dir`]); keeping it across a restart keeps the journals.
    pub fn start(binary: &Path, device: &Path, state: &Path, mounts: &[&Path]) -> Self {
        Self::start_with_config(binary, device, state, mounts, "")
    }

    /// [`Vssd::start`] with `config` as the config file's text.
    pub fn start_with_config(
        binary: &Path,
        device: &Path,
        state: &Path,
        mounts: &[&Path],
        config: &str,
    ) -> Self {
        let config_path = state.join("hv-vss.toml");
        std::fs::write(&config_path, config).expect("config file");
        let config = config_path;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state.join("hv-vssd.log"))
            .expect("log file");
        let mut cmd = Command::new(binary);
        cmd.arg("--config")
            .arg(&config)
            .arg("--device")
            .arg(device)
            .arg("--state-dir")
            .arg(state);
        for m in mounts {
            cmd.arg("--mount").arg(m);
        }
        let child = cmd
            .arg("-n")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn hv-vssd");
        Self {
            child,
            state: state.to_path_buf(),
        }
    }

    /// Its application socket (the default, in the state directory).
    pub fn socket(&self) -> PathBuf {
        self.state.join("app.sock")
    }

    /// Its stderr so far (every run in this state directory).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("hv-vssd.log")).unwrap_or_default()
    }

    /// The verdict kinds of the stored backup reports, once `n` are there (or after 10 s).
    pub fn verdicts(&self, n: usize) -> Vec<String> {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let text =
                std::fs::read_to_string(self.state.join("history.jsonl")).unwrap_or_default();
            let v: Vec<String> = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|j| j["report"]["verdict"]["kind"].as_str().map(str::to_owned))
                .collect();
            if v.len() >= n || Instant::now() >= end {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and wait (its guardian then thaws what it froze).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vssd {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}
