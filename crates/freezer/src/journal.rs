//! The crash journal: what a freeze has frozen or is freezing, written before each level's
//! first FIFREEZE, narrowed as results and partial thaws come in, removed after a complete
//! thaw (R58, R59, R64). The engine ([`crate::engine`]) decides what it lists.
//!
//! # Design
//!
//! - File `<state_dir>/freeze-journal.json`, written as temp file + `fsync` + `rename` +
//!   `fsync` of the directory, so a reader sees the old state or the whole new one.
//! - One entry per superblock, in freeze order: the path it is frozen through, its `st_dev`
//!   as seen through that path (`fstat` after open), its type, and the freezing pid.
//! - [`recover`] thaws exactly what the journal lists, in reverse, after checking that each
//!   path still leads to the same device; a mismatch is reported and never thawed.
//! - The advisory lock `<state_dir>/freeze.lock` (flock) is held by a freezer for the whole
//!   time anything may be frozen. `recover` refuses to run while the freezer recorded in the
//!   journal is alive *and* the lock is held (unless forced); if the freezer is dead, the
//!   lock can only be held by a process that inherited it (the daemon's guardian), so
//!   recovery goes ahead.
//!
//! # Limitations
//!
//! A filesystem is listed while its FIFREEZE is in flight: if the freezer dies before an
//! EBUSY (someone else's freeze) is collected, recovery thaws it. The window is one
//! FIFREEZE call; listing it only after the call returns would instead leave our own freeze
//! unlisted if we die in between.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use hv_vss_sys::fs::{DevNum, ThawError};
use serde::{Deserialize, Serialize};

use crate::bounded_call::{BoundedCall, Waited};
pub use crate::expedite::SwitchRestore;
use crate::serde_util;

/// File name of the journal inside the state directory.
pub const JOURNAL_FILE: &str = "freeze-journal.json";
/// File name of the advisory lock inside the state directory.
pub const LOCK_FILE: &str = "freeze.lock";
pub use crate::config::DEFAULT_STATE_DIR;

/// The journal's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    /// Format version (1).
    pub version: u32,
    /// The freezing process.
    pub pid: i32,
    /// When it was written (Unix milliseconds).
    pub created_unix_ms: u64,
    /// Superblocks in freeze order.
    pub filesystems: Vec<JournalEntry>,
    /// The kernel switch for expedited RCU grace periods that the freezer turned on for its
    /// FIFREEZE calls (it found it off); whoever recovers this journal turns it off again,
    /// in case the freezer died before it could ([`crate::expedite`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "serde_util::opt_path"
    )]
    pub rcu_expedited: Option<PathBuf>,
}

/// One superblock in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalEntry {
    /// Path it is frozen (and must be thawed) through.
    #[serde(with = "serde_util::path")]
    pub path: PathBuf,
    /// `st_dev` of that path at freeze time.
    #[serde(with = "serde_util::dev")]
    pub dev: DevNum,
    /// Filesystem type.
    pub fs_type: String,
    /// Freezing process.
    pub pid: i32,
}

/// A journal problem.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading, writing or removing failed.
    #[error("journal {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a valid journal.
    #[error("journal {} is corrupt: {reason}", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// serde_json's message.
        reason: String,
    },
}

impl Journal {
    /// Path of the journal in `state_dir`.
    pub fn path_in(state_dir: &Path) -> PathBuf {
        state_dir.join(JOURNAL_FILE)
    }

    /// Write atomically and durably (temp, fsync, rename, fsync dir).
    pub fn write(&self, state_dir: &Path) -> Result<PathBuf, JournalError> {
        let path = Self::path_in(state_dir);
        let tmp = state_dir.join(format!(".{JOURNAL_FILE}.{}.tmp", std::process::id()));
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(self).expect("journal serialises");
        // 0600: a state directory may be searchable by others (hv-vssd's app socket is in it).
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?
        };
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(io)?;
        File::open(state_dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(path)
    }

    /// Read the journal, `None` if there is none.
    pub fn read(state_dir: &Path) -> Result<Option<Self>, JournalError> {
        let path = Self::path_in(state_dir);
        match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(JournalError::Io { path, source }),
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| JournalError::Corrupt {
                        path,
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// Rename the journal to `freeze-journal.json.stale-<unix_ms>` in the same directory
    /// (and fsync the directory), so a freeze or a start is no longer refused by it while
    /// it stays there for an operator to read. Returns the new path.
    pub fn set_aside(state_dir: &Path) -> Result<PathBuf, JournalError> {
        let path = Self::path_in(state_dir);
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let aside = state_dir.join(format!("{JOURNAL_FILE}.stale-{unix_ms}"));
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        std::fs::rename(&path, &aside).map_err(io)?;
        File::open(state_dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(aside)
    }

    /// Remove the journal (and fsync the directory); absent is fine.
    pub fn remove(state_dir: &Path) -> Result<(), JournalError> {
        let path = Self::path_in(state_dir);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(JournalError::Io { path, source }),
        }
        File::open(state_dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| JournalError::Io { path, source })
    }
}

/// Opens the lock file at `path` (created with mode 0600 if missing, never truncated,
/// close-on-exec) and takes its exclusive advisory lock (`flock(LOCK_EX | LOCK_NB)`) without
/// waiting: `Ok(None)` if another open file description holds it. The lock lasts while the
/// returned file, or a descriptor inherited from it, stays open. [`StateLock`] uses it for
/// [`LOCK_FILE`]; the daemon for its instance lock beside it.
pub fn try_lock_file(path: &Path) -> std::io::Result<Option<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::CLOEXEC.bits() as i32)
        .open(path)?;
    Ok(hv_vss_sys::fs::try_lock_exclusive(file.as_fd())?.then_some(file))
}

/// The state directory's advisory lock, held while anything may be frozen.
#[derive(Debug)]
pub struct StateLock {
    file: File,
}

impl StateLock {
    /// Create the state directory (0700) if needed and take the lock without waiting;
    /// `Ok(None)` if someone else holds it.
    pub fn try_acquire(state_dir: &Path) -> std::io::Result<Option<Self>> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)?;
        Ok(try_lock_file(&state_dir.join(LOCK_FILE))?.map(|file| Self { file }))
    }

    /// The lock file (its fd holds the lock; a process inheriting it holds it too).
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// What recovery did to one journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RecoverOutcome {
    /// FITHAW succeeded: it was frozen and is now thawed.
    Thawed,
    /// FITHAW said EINVAL: it was not frozen (nothing to do).
    WasNotFrozen,
    /// The path now leads to another device: not touched.
    DeviceMismatch {
        /// What the path leads to now.
        #[serde(with = "serde_util::dev")]
        found: DevNum,
    },
    /// The path cannot be opened (unmounted?): not touched.
    Unreachable {
        /// The error.
        error: String,
    },
    /// FITHAW failed otherwise.
    Failed {
        /// The error.
        error: String,
    },
    /// The open, check or FITHAW did not return within [`RecoverOptions::thaw_deadline`]
    /// (a FITHAW waits while a FIFREEZE of the same filesystem is still blocked): recovery
    /// went on with the next entry; the call is left to its thread. Still frozen, maybe.
    TimedOut {
        /// The deadline that passed, in milliseconds.
        after_ms: u64,
    },
}

/// One entry's recovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveredFs {
    /// The journal entry.
    #[serde(flatten)]
    pub entry: JournalEntry,
    /// What happened.
    #[serde(flatten)]
    pub outcome: RecoverOutcome,
}

/// What [`recover`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverReport {
    /// Was there a journal at all?
    pub journal_found: bool,
    /// The pid recorded in it.
    pub freezer_pid: Option<i32>,
    /// Entries in the order they were handled (reverse of freeze order).
    pub filesystems: Vec<RecoveredFs>,
    /// The journal was removed (every entry thawed or not frozen).
    pub journal_removed: bool,
    /// The journal named the expedited-RCU switch its freezer had turned on: turning it
    /// off again (`None`: it named none).
    #[serde(default)]
    pub rcu_expedited: Option<SwitchRestore>,
}

impl RecoverReport {
    /// Every listed filesystem is known to be thawed now.
    pub fn complete(&self) -> bool {
        self.filesystems.iter().all(|f| {
            matches!(
                f.outcome,
                RecoverOutcome::Thawed | RecoverOutcome::WasNotFrozen
            )
        })
    }

    /// Some listed filesystem of ours may still be frozen: its FITHAW failed or did not
    /// return in time.
    pub fn ours_may_be_frozen(&self) -> bool {
        self.filesystems.iter().any(|f| {
            matches!(
                f.outcome,
                RecoverOutcome::Failed { .. } | RecoverOutcome::TimedOut { .. }
            )
        })
    }
}

/// How long recovery waits for one filesystem's FITHAW by default.
pub const DEFAULT_RECOVER_THAW_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Recovery options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoverOptions {
    /// Recover even though the freezing process is alive and holds the lock.
    pub force: bool,
    /// If the freezing process is alive and holds the lock, wait up to this long for it to
    /// exit first (a killed daemon lingers while a FIFREEZE it started has not returned).
    pub wait_for_freezer: std::time::Duration,
    /// How long to wait for each filesystem's open and FITHAW before going on to the next
    /// ([`RecoverOutcome::TimedOut`]): one blocking FITHAW cannot hang recovery.
    pub thaw_deadline: std::time::Duration,
}

impl Default for RecoverOptions {
    fn default() -> Self {
        Self {
            force: false,
            wait_for_freezer: std::time::Duration::ZERO,
            thaw_deadline: DEFAULT_RECOVER_THAW_DEADLINE,
        }
    }
}

/// Why recovery did not run.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The freezer named in the journal is alive and holds the lock (after waiting for it
    /// as long as the options allowed).
    #[error(
        "the freezing process {pid} is still alive and holds the state lock (waited {waited:?}); it may be stuck in FIFREEZE, or being killed: its guardian thaws what it holds when it is gone. Use --wait to wait longer, or --force to thaw now"
    )]
    FreezerAlive {
        /// Its pid.
        pid: i32,
        /// How long recovery waited for it to exit.
        waited: std::time::Duration,
    },
    /// The journal cannot be read.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The state directory or lock cannot be used.
    #[error("state directory {}: {source}", .state_dir.display())]
    StateDir {
        /// The directory.
        state_dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Thaw exactly what the journal in `state_dir` lists (reverse order), checking each path's
/// device; remove the journal if every entry ends thawed or not frozen.
pub fn recover(state_dir: &Path, options: RecoverOptions) -> Result<RecoverReport, RecoverError> {
    let mut report = RecoverReport {
        journal_found: false,
        freezer_pid: None,
        filesystems: Vec::new(),
        journal_removed: false,
        rcu_expedited: None,
    };
    if !state_dir.exists() {
        return Ok(report);
    }
    let Some(journal) = Journal::read(state_dir)? else {
        return Ok(report);
    };
    report.journal_found = true;
    report.freezer_pid = Some(journal.pid);
    let state_err = |source| RecoverError::StateDir {
        state_dir: state_dir.to_path_buf(),
        source,
    };
    let mut lock = StateLock::try_acquire(state_dir).map_err(state_err)?;
    if lock.is_none() && hv_vss_sys::process::process_alive(journal.pid) && !options.force {
        if !options.wait_for_freezer.is_zero()
            && hv_vss_sys::process::wait_for_exit(journal.pid, options.wait_for_freezer)
        {
            lock = StateLock::try_acquire(state_dir).map_err(state_err)?;
        }
        if lock.is_none() && hv_vss_sys::process::process_alive(journal.pid) {
            return Err(RecoverError::FreezerAlive {
                pid: journal.pid,
                waited: options.wait_for_freezer,
            });
        }
    }
    // The freezer may have finished (and removed or narrowed the journal) while we waited.
    let Some(journal) = Journal::read(state_dir)? else {
        report.journal_found = false;
        report.freezer_pid = None;
        return Ok(report);
    };
    // The switch first: it costs nothing to turn off, and a FITHAW below may block.
    report.rcu_expedited = journal
        .rcu_expedited
        .as_deref()
        .map(SwitchRestore::turn_off);
    for entry in journal.filesystems.iter().rev() {
        let outcome = thaw_entry_within(entry, options.thaw_deadline);
        report.filesystems.push(RecoveredFs {
            entry: entry.clone(),
            outcome,
        });
    }
    if report.complete() {
        Journal::remove(state_dir)?;
        report.journal_removed = true;
    }
    drop(lock);
    Ok(report)
}

/// Opens, checks and thaws one entry on a thread of its own ([`BoundedCall`]), waiting up
/// to `deadline`: a FITHAW that blocks (the kernel makes it wait while a FIFREEZE of the
/// same superblock is still in progress) is left to that thread, and recovery goes on.
fn thaw_entry_within(entry: &JournalEntry, deadline: std::time::Duration) -> RecoverOutcome {
    let owned = entry.clone();
    let call = match BoundedCall::spawn("hv-vss-recover-thaw", move || thaw_entry(&owned)) {
        Ok(call) => call,
        Err(e) => {
            return RecoverOutcome::Failed {
                error: format!("cannot start the thaw thread: {e}"),
            };
        }
    };
    match call.wait(deadline) {
        Waited::Returned(outcome) => outcome,
        Waited::Pending => RecoverOutcome::TimedOut {
            after_ms: deadline.as_millis() as u64,
        },
        Waited::Lost => RecoverOutcome::Failed {
            error: "the thaw thread ended without a result".into(),
        },
    }
}

/// Opens `entry`'s path, checks its device, FITHAWs it.
fn thaw_entry(entry: &JournalEntry) -> RecoverOutcome {
    match hv_vss_sys::fs::open_mount_point(&entry.path) {
        Err(e) => RecoverOutcome::Unreachable {
            error: e.to_string(),
        },
        Ok(fd) => match hv_vss_sys::fs::fstat_dev(fd.as_fd()) {
            Err(e) => RecoverOutcome::Unreachable {
                error: e.to_string(),
            },
            Ok(found) if found != entry.dev => RecoverOutcome::DeviceMismatch { found },
            Ok(_) => match hv_vss_sys::fs::thaw(fd.as_fd()) {
                Ok(()) => RecoverOutcome::Thawed,
                Err(ThawError::NotFrozen) => RecoverOutcome::WasNotFrozen,
                Err(e) => RecoverOutcome::Failed {
                    error: e.to_string(),
                },
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(pid: i32, path: &Path, dev: DevNum) -> Journal {
        Journal {
            version: 1,
            pid,
            created_unix_ms: 1,
            filesystems: vec![JournalEntry {
                path: path.to_path_buf(),
                dev,
                fs_type: "ext4".into(),
                pid,
            }],
            rcu_expedited: None,
        }
    }

    #[test]
    fn write_read_remove() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Journal::read(dir.path()).unwrap(), None);
        let j = journal(7, Path::new("/mnt/a b"), DevNum { major: 7, minor: 1 });
        j.write(dir.path()).unwrap();
        assert_eq!(Journal::read(dir.path()).unwrap(), Some(j));
        // No temp file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        Journal::remove(dir.path()).unwrap();
        Journal::remove(dir.path()).unwrap();
        assert_eq!(Journal::read(dir.path()).unwrap(), None);
    }

    #[test]
    fn corrupt_journal_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(Journal::path_in(dir.path()), b"{\"version\":1").unwrap();
        assert!(matches!(
            Journal::read(dir.path()),
            Err(JournalError::Corrupt { .. })
        ));
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let a = StateLock::try_acquire(&state).unwrap();
        assert!(a.is_some());
        assert!(StateLock::try_acquire(&state).unwrap().is_none());
        drop(a);
        assert!(StateLock::try_acquire(&state).unwrap().is_some());
    }

    #[test]
    fn a_lock_file_is_private_kept_and_close_on_exec() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        std::fs::write(&path, "kept").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let held = try_lock_file(&path).unwrap().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "kept",
            "not truncated"
        );
        let flags = rustix::io::fcntl_getfd(&held).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        assert!(try_lock_file(&path).unwrap().is_none(), "exclusive");
        drop(held);
        assert!(try_lock_file(&path).unwrap().is_some());
        let fresh = dir.path().join("new.lock");
        drop(try_lock_file(&fresh).unwrap().unwrap());
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o600, 0, "created private: {mode:o}");
    }

    #[test]
    fn recover_without_journal_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let r = recover(dir.path(), RecoverOptions::default()).unwrap();
        assert!(!r.journal_found);
        assert!(r.complete());
    }

    #[test]
    fn recover_refuses_a_live_freezer_holding_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _held = StateLock::try_acquire(dir.path()).unwrap().unwrap();
        let j = journal(
            std::process::id() as i32,
            dir.path(),
            DevNum { major: 1, minor: 1 },
        );
        j.write(dir.path()).unwrap();
        assert!(matches!(
            recover(dir.path(), RecoverOptions::default()),
            Err(RecoverError::FreezerAlive { .. })
        ));
    }

    #[test]
    fn recover_never_thaws_a_path_whose_device_changed() {
        let dir = tempfile::tempdir().unwrap();
        // The journal names the temp dir with a device it does not have.
        let wrong = DevNum {
            major: 4095,
            minor: 77,
        };
        journal(1, dir.path(), wrong).write(dir.path()).unwrap();
        let r = recover(
            dir.path(),
            RecoverOptions {
                force: true,
                ..RecoverOptions::default()
            },
        )
        .unwrap();
        assert!(matches!(
            r.filesystems[0].outcome,
            RecoverOutcome::DeviceMismatch { .. }
        ));
        assert!(!r.complete());
        assert!(!r.journal_removed);
        assert!(Journal::read(dir.path()).unwrap().is_some());
    }

    #[test]
    fn recover_turns_off_the_expedite_switch_a_dead_freezer_named() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let switch = dir.path().join("rcu_expedited");
        std::fs::write(&switch, "1").unwrap();
        // A freezer that died during its FIFREEZE calls: the journal names the switch (and
        // a device the path does not have, so nothing here is thawed).
        let mut j = journal(
            1,
            dir.path(),
            DevNum {
                major: 4095,
                minor: 78,
            },
        );
        j.rcu_expedited = Some(switch.clone());
        j.write(&state).unwrap();
        let text = std::fs::read_to_string(Journal::path_in(&state)).unwrap();
        assert!(text.contains("rcu_expedited"));
        let r = recover(&state, RecoverOptions::default()).unwrap();
        assert_eq!(
            r.rcu_expedited,
            Some(SwitchRestore::TurnedOff {
                path: switch.clone()
            })
        );
        assert_eq!(std::fs::read_to_string(&switch).unwrap(), "0");

        // A switch that cannot be written is reported, not fatal.
        let mut j = journal(
            1,
            dir.path(),
            DevNum {
                major: 4095,
                minor: 78,
            },
        );
        j.rcu_expedited = Some(dir.path().join("no/such/switch"));
        j.write(&state).unwrap();
        let r = recover(&state, RecoverOptions::default()).unwrap();
        assert!(matches!(
            r.rcu_expedited,
            Some(SwitchRestore::Failed { .. })
        ));
    }

    #[test]
    fn a_journal_without_the_switch_field_reads_as_naming_none() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            Journal::path_in(dir.path()),
            r#"{"version":1,"pid":3,"created_unix_ms":1,"filesystems":[]}"#,
        )
        .unwrap();
        assert_eq!(
            Journal::read(dir.path()).unwrap().unwrap().rcu_expedited,
            None
        );
    }
}
