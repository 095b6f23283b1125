//! The daemon's state directory as the read-only commands see it (`history`, `metrics`,
//! `status`): where it is, whether a daemon holds it, and its report history.
//!
//! Whether hv-vssd runs is read from the kernel's lock table, never by taking its lock:
//! the daemon holds an exclusive `flock` on `STATE_DIR/hv-vssd.lock` for its whole life,
//! and `/proc/locks` lists every held lock with its holder's pid and the file's
//! device and inode. Trying the lock ourselves would make a daemon starting at that
//! instant fail as "busy".

use std::path::{Path, PathBuf};

use hv_vss_history::{HISTORY_FILE, Loaded};

use crate::exit_codes;

/// The daemon's instance lock inside the state directory.
pub const INSTANCE_LOCK: &str = "hv-vssd.lock";

/// `--state-dir`, shared by the read-only commands.
#[derive(Debug, Clone, clap::Args)]
pub struct StateDirArg {
    /// The daemon's state directory (its `state_dir` setting).
    #[arg(long, value_name = "DIR", default_value = hv_vss_freezer::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

/// A failure of a read-only command: its one-line message and exit code.
#[derive(Debug)]
pub struct CmdError {
    pub code: u8,
    pub message: String,
}

impl CmdError {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn from_io(what: &Path, e: &std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            Self::new(
                exit_codes::NOT_ROOT,
                format!(
                    "{}: permission denied (the daemon's state is root's: run as root)",
                    what.display()
                ),
            )
        } else {
            Self::new(
                exit_codes::STATE_CORRUPT,
                format!("{}: {e}", what.display()),
            )
        }
    }
}

/// The pid of the hv-vssd holding `state_dir`'s instance lock, if one does.
pub fn daemon_pid(state_dir: &Path) -> Result<Option<u32>, CmdError> {
    let lock = state_dir.join(INSTANCE_LOCK);
    let stat = match rustix::fs::stat(&lock) {
        Ok(s) => s,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(CmdError::from_io(&lock, &e.into())),
    };
    let dev = stat.st_dev;
    let want = format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev),
        stat.st_ino
    );
    // /proc/locks comes a page at a time, each read resuming by position in the kernel's
    // lock list: a lock released meanwhile by any process shifts the rest, and a held
    // lock can be skipped. Not found is read again before it is believed.
    for _ in 0..LOCKS_READS {
        if let Some(pid) = holder_of(&read_locks()?, &want) {
            return Ok(Some(pid));
        }
    }
    Ok(None)
}

/// How often /proc/locks is read before a lock is taken to be not held.
const LOCKS_READS: usize = 4;

fn read_locks() -> Result<String, CmdError> {
    std::fs::read_to_string("/proc/locks")
        .map_err(|e| CmdError::from_io(Path::new("/proc/locks"), &e))
}

/// The pid holding an exclusive `FLOCK` on the file `dev_ino` ("maj:min:inode", hex
/// device numbers as `/proc/locks` prints them).
fn holder_of(table: &str, dev_ino: &str) -> Option<u32> {
    table.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; blocked waiters have "->".
        (f.len() >= 6 && f[1] == "FLOCK" && f[3] == "WRITE" && f[5] == dev_ino)
            .then(|| f[4].parse().ok())
            .flatten()
    })
}

/// The history, or `None` when none was written yet; every skipped line is warned about on
/// stderr (`cmd` names the command).
pub fn load_history(state_dir: &Path, cmd: &str) -> Result<Option<Loaded>, CmdError> {
    let path = state_dir.join(HISTORY_FILE);
    match hv_vss_history::load(&path) {
        Ok(Some(loaded)) => {
            for s in &loaded.skipped {
                eprintln!(
                    "hv-vss {cmd}: warning: {} line {} skipped: {}",
                    path.display(),
                    s.line,
                    s.reason
                );
            }
            Ok(Some(loaded))
        }
        Ok(None) => Ok(None),
        Err(e) if e.is_permission_denied() => Err(CmdError::new(
            exit_codes::NOT_ROOT,
            format!(
                "{}: permission denied (the daemon's state is root's: run as root)",
                path.display()
            ),
        )),
        Err(e) => Err(CmdError::new(exit_codes::STATE_CORRUPT, e.to_string())),
    }
}

/// How long the daemon may take to answer (it serves the socket from its main loop).
const ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// What the control socket said.
#[derive(Debug)]
pub enum Asked {
    Answer(serde_json::Value),
    /// No socket, or nobody listening.
    NoDaemon,
    /// Not root and not in the daemon's control_group.
    Denied,
    /// Connected, but no valid answer (why).
    Failed(String),
}

pub fn ask_daemon(state_dir: &std::path::Path) -> Asked {
    use std::io::{BufRead, BufReader, Write};
    let path = state_dir.join("control.sock");
    let stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Asked::Denied,
        Err(_) => return Asked::NoDaemon,
    };
    let exchange = || -> std::io::Result<serde_json::Value> {
        stream.set_read_timeout(Some(ASK_TIMEOUT))?;
        stream.set_write_timeout(Some(ASK_TIMEOUT))?;
        (&stream).write_all(b"{\"request\":\"status\"}\n")?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        serde_json::from_str(&line).map_err(std::io::Error::other)
    };
    match exchange() {
        Ok(v) if v["error"] == "permission denied" => Asked::Denied,
        Ok(v) if v.get("error").is_some() => Asked::Failed(v["error"].to_string()),
        Ok(v) => Asked::Answer(v),
        Err(e) => Asked::Failed(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exclusive_flock_on_the_file_names_its_holder() {
        let table = "1: POSIX  ADVISORY  WRITE 99 fd:01:42 0 EOF\n\
                     2: FLOCK  ADVISORY  READ 98 fd:01:42 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 1234 fd:01:42 0 EOF\n\
                     3: -> FLOCK  ADVISORY  WRITE 555 fd:01:42 0 EOF\n\
                     4: FLOCK  ADVISORY  WRITE 777 fd:01:43 0 EOF\n";
        assert_eq!(holder_of(table, "fd:01:42"), Some(1234));
        assert_eq!(holder_of(table, "fd:01:44"), None);
    }

    /// Our own flock on a temp file shows up as held by us.
    #[test]
    fn a_held_lock_is_found_in_proc_locks() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(daemon_pid(dir.path()).unwrap(), None);
        let lock = hv_vss_freezer::journal::try_lock_file(&dir.path().join(INSTANCE_LOCK))
            .unwrap()
            .expect("lock");
        assert_eq!(daemon_pid(dir.path()).unwrap(), Some(std::process::id()));
        drop(lock);
        assert_eq!(daemon_pid(dir.path()).unwrap(), None);
    }
}
