//! The owed-abort journal: which clients were told to freeze and are still owed their thaw
//! or abort, kept in the state directory so that a restarted daemon can pay what the dead
//! one owed.
//!
//! # Mechanism
//!
//! The protocol promises every client told `freeze` exactly one `thaw` or `abort`, also
//! across a daemon restart. The names (and transaction) of the clients told to freeze are
//! written here, atomically (a temporary file renamed over `app-journal.json`), before the
//! `freeze` lines reach any socket; an entry is dropped once its client's `thaw` or `abort`
//! has been written to its socket (or the client went away). When nothing is owed the file
//! is removed.
//!
//! At start the daemon reads what an earlier instance left: a client that registers under a
//! listed name is sent `abort` (reason "daemon restarted") right after `registered`, once,
//! and its entry is dropped. Entries older than [`OWED_EXPIRY`] are forgotten: a client
//! that has not come back by then has long stopped holding.
//!
//! The state directory is a tmpfs the freeze plan never includes (checked at start), so
//! writing here while filesystems are frozen touches no frozen disk.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The journal's file name in the state directory.
pub const JOURNAL_FILE: &str = "app-journal.json";
/// How long an entry inherited from an earlier instance is kept for its client.
pub const OWED_EXPIRY: Duration = Duration::from_secs(10 * 60);
const VERSION: u32 = 1;

/// One client owed a thaw or abort.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owed {
    pub name: String,
    /// The transaction it was told to freeze in (the abort names it).
    pub txn: u64,
    /// Wall clock when it was told, for [`OWED_EXPIRY`] across restarts.
    pub told_unix_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct JournalFile {
    version: u32,
    owed: Vec<Owed>,
}

/// Wall-clock milliseconds since the epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The journal in memory; [`AppJournal::sync`] writes it out.
#[derive(Debug)]
pub struct AppJournal {
    path: PathBuf,
    /// Left by an earlier instance: owed an abort when they register again.
    inherited: BTreeMap<String, Owed>,
    /// Told to freeze by this instance, not yet sent their thaw or abort.
    current: BTreeMap<String, Owed>,
    dirty: bool,
}

/// What [`AppJournal::open`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inherited {
    /// Entries kept, owed an abort.
    pub owed: usize,
    /// Entries older than [`OWED_EXPIRY`], dropped.
    pub expired: usize,
    /// The file could not be read or parsed (it is replaced).
    pub unreadable: Option<String>,
}

impl AppJournal {
    /// Reads what an earlier instance left in `state_dir`, dropping expired entries.
    pub fn open(state_dir: &Path, now_unix_ms: u64) -> (Self, Inherited) {
        let path = state_dir.join(JOURNAL_FILE);
        let mut found = Inherited::default();
        let mut journal = Self {
            path,
            inherited: BTreeMap::new(),
            current: BTreeMap::new(),
            dirty: false,
        };
        let bytes = match std::fs::read(&journal.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return (journal, found),
            Err(e) => {
                found.unreadable = Some(e.to_string());
                journal.dirty = true;
                return (journal, found);
            }
        };
        match parse(&bytes) {
            Ok(owed) => {
                for o in owed {
                    if expired(&o, now_unix_ms) {
                        found.expired += 1;
                        journal.dirty = true;
                    } else {
                        journal.inherited.insert(o.name.clone(), o);
                    }
                }
                found.owed = journal.inherited.len();
            }
            Err(e) => {
                found.unreadable = Some(e);
                journal.dirty = true;
            }
        }
        (journal, found)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The earlier instance's entry for `name`, removed: the caller sends its abort now.
    pub fn take_inherited(&mut self, name: &str, now_unix_ms: u64) -> Option<Owed> {
        let owed = self.inherited.remove(name)?;
        self.dirty = true;
        (!expired(&owed, now_unix_ms)).then_some(owed)
    }

    /// `name` is being told to freeze in `txn`.
    pub fn told_freeze(&mut self, name: &str, txn: u64, now_unix_ms: u64) {
        self.current.insert(
            name.to_owned(),
            Owed {
                name: name.to_owned(),
                txn,
                told_unix_ms: now_unix_ms,
            },
        );
        self.dirty = true;
    }

    /// `name` got its thaw or abort of `txn`: nothing is owed to it any more, unless it has
    /// been told to freeze in a later transaction meanwhile.
    pub fn released(&mut self, name: &str, txn: u64) {
        if self.current.get(name).is_some_and(|o| o.txn == txn) {
            self.current.remove(name);
            self.dirty = true;
        }
    }

    /// `name` is gone: it is owed nothing by this instance.
    pub fn forget(&mut self, name: &str) {
        if self.current.remove(name).is_some() {
            self.dirty = true;
        }
    }

    /// Forgets inherited entries past [`OWED_EXPIRY`].
    pub fn expire(&mut self, now_unix_ms: u64) {
        let before = self.inherited.len();
        self.inherited.retain(|_, o| !expired(o, now_unix_ms));
        self.dirty |= self.inherited.len() != before;
    }

    /// True while anything is owed (the file exists after the next sync).
    pub fn owes_anything(&self) -> bool {
        !self.inherited.is_empty() || !self.current.is_empty()
    }

    /// Writes the journal if it changed: atomically replaced, or removed when empty.
    pub fn sync(&mut self) -> io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        if !self.owes_anything() {
            match std::fs::remove_file(&self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            self.dirty = false;
            return Ok(());
        }
        let file = JournalFile {
            version: VERSION,
            owed: self
                .inherited
                .values()
                .chain(self.current.values())
                .cloned()
                .collect(),
        };
        let bytes = serde_json::to_vec(&file).map_err(io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        // tmpfs: no fsync needed for the rename to be atomic for a reader. 0600: the state
        // directory is searchable by everyone (the app socket is there).
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?
                .write_all(&bytes)?;
        }
        std::fs::rename(&tmp, &self.path)?;
        self.dirty = false;
        Ok(())
    }
}

fn expired(owed: &Owed, now_unix_ms: u64) -> bool {
    now_unix_ms.saturating_sub(owed.told_unix_ms) > OWED_EXPIRY.as_millis() as u64
}

/// Parses the file's bytes into its entries (the file is untrusted: a damaged one is an
/// error, never a panic; fuzz target `app_journal`).
pub fn parse(bytes: &[u8]) -> Result<Vec<Owed>, String> {
    let file: JournalFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if file.version != VERSION {
        return Err(format!("unknown journal version {}", file.version));
    }
    Ok(file.owed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn told_then_released_writes_then_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, found) = AppJournal::open(dir.path(), T0);
        assert_eq!(found, Inherited::default());
        j.told_freeze("db", 7, T0);
        j.sync().unwrap();
        let text = std::fs::read_to_string(j.path()).unwrap();
        assert!(
            text.contains("\"db\"") && text.contains("\"txn\":7"),
            "{text}"
        );
        // The thaw of an earlier txn does not release a later freeze.
        j.released("db", 6);
        j.sync().unwrap();
        assert!(j.path().exists());
        j.released("db", 7);
        j.sync().unwrap();
        assert!(!j.path().exists());
        j.told_freeze("db", 8, T0);
        j.forget("db");
        j.sync().unwrap();
        assert!(!j.path().exists());
    }

    #[test]
    fn a_restart_inherits_what_is_owed_once_and_expires_old_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = AppJournal::open(dir.path(), T0);
        j.told_freeze("db", 3, T0);
        j.told_freeze("old", 2, T0 - OWED_EXPIRY.as_millis() as u64 - 1);
        j.sync().unwrap();
        drop(j);

        let (mut j, found) = AppJournal::open(dir.path(), T0 + 1000);
        assert_eq!(found.owed, 1);
        assert_eq!(found.expired, 1);
        let owed = j.take_inherited("db", T0 + 1000).unwrap();
        assert_eq!(owed.txn, 3);
        assert_eq!(j.take_inherited("db", T0 + 1000), None, "only once");
        j.sync().unwrap();
        assert!(!j.path().exists());
    }

    /// The binary crate has no fuzz target (cargo-fuzz needs a library): every prefix and
    /// many byte flips of a valid file are parsed without a panic.
    #[test]
    fn damaged_files_never_panic_the_parser() {
        let good = br#"{"version":1,"owed":[{"name":"db","txn":3,"told_unix_ms":5}]}"#;
        assert_eq!(parse(good).unwrap().len(), 1);
        for end in 0..good.len() {
            let _ = parse(&good[..end]);
        }
        let mut seed = 0x9e37_79b9_u32;
        for _ in 0..5000 {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let mut bytes = good.to_vec();
            let at = (seed >> 8) as usize % bytes.len();
            bytes[at] = (seed >> 24) as u8;
            let _ = parse(&bytes);
        }
    }

    #[test]
    fn garbage_is_reported_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(JOURNAL_FILE), b"{not json").unwrap();
        let (mut j, found) = AppJournal::open(dir.path(), T0);
        assert!(found.unreadable.is_some());
        j.sync().unwrap();
        assert!(!j.path().exists());
        assert!(parse(br#"{"version":9,"owed":[]}"#).is_err());
    }
}
