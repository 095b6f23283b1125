//! Hook directories with real scripts in a temp dir, for tests that run real processes.
#![allow(dead_code)] // each test file uses a different part

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hv_vss_hooks::{HookDir, HookStyle};

/// Hooks must be root-owned to run, so these tests need root. Prints why when skipping.
pub fn root_or_skip(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    eprintln!("{test}: skipped, needs root (hooks run only when root-owned)");
    false
}

/// A temp dir holding `hooks.d/` (root, 0755) and a log file the scripts append to.
pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub hooks: PathBuf,
    pub log: PathBuf,
}

impl Fixture {
    /// A fixture when running as root; `None` (with the reason printed) otherwise.
    pub fn for_root(test: &str) -> Option<Self> {
        root_or_skip(test).then(Fixture::new)
    }

    pub fn new() -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let hooks = tmp.path().join("hooks.d");
        fs::create_dir(&hooks).unwrap();
        fs::set_permissions(&hooks, fs::Permissions::from_mode(0o755)).unwrap();
        let log = tmp.path().join("log");
        Fixture { tmp, hooks, log }
    }

    /// A file in `hooks.d` with a `#!/bin/sh` script body, mode 0755.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.hooks.join(name);
        write_script(&path, body);
        path
    }

    /// A script that appends `NAME ARG` to the log, then runs `then`.
    pub fn logging(&self, name: &str, then: &str) -> PathBuf {
        let log = self.log.display();
        self.script(name, &format!("echo \"{name} $1\" >> {log}\n{then}\n"))
    }

    /// The log lines so far.
    pub fn log_lines(&self) -> Vec<String> {
        match fs::read_to_string(&self.log) {
            Ok(text) => text.lines().map(str::to_owned).collect(),
            Err(_) => Vec::new(),
        }
    }

    pub fn clear_log(&self) {
        let _ = fs::remove_file(&self.log);
    }

    pub fn dir(&self, style: HookStyle, timeout: Duration) -> HookDir {
        HookDir {
            path: self.hooks.clone(),
            style,
            timeout,
        }
    }
}

pub fn write_script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// `a freeze`, `b freeze`, ... for the given names and argument.
pub fn lines(names: &[&str], arg: &str) -> Vec<String> {
    names.iter().map(|n| format!("{n} {arg}")).collect()
}
