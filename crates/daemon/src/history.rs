//! The bounded report history (R72, R73): one JSON object per line in
//! `<state_dir>/history.jsonl`, newest last, at most `limit` lines.
//!
//! Written only after the last thaw (R60): the caller defers reports while anything may be
//! frozen. Each append rewrites the file through a temp file and `rename`, so a reader sees
//! the old or the new history, never half a line.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hv_vss_core::TxnReport;
use hv_vss_core::report::HostCompletion;
use hv_vss_freezer::{FreezeReport, ThawReport};

/// File name inside the state directory.
pub const HISTORY_FILE: &str = "history.jsonl";

/// One line of the history: the coordinator's report with the freezer's reports of the
/// same transaction.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HistoryEntry {
    /// Wall-clock time the transaction's report was finished (after the last thaw).
    pub unix_ms: u64,
    pub report: TxnReport,
    pub freeze: Option<FreezeReport>,
    pub thaw: Option<ThawReport>,
    /// Whether the host closed this backup with BU_COMPLETE: `None` for HOT_BACKUP checks
    /// and in drop-in mode (the kernel answers BU_COMPLETE; we never see it).
    pub host_completion: Option<HostCompletion>,
}

/// The history file.
#[derive(Debug, Clone)]
pub struct History {
    path: PathBuf,
    limit: usize,
}

impl History {
    pub fn new(state_dir: &Path, limit: usize) -> Self {
        Self {
            path: state_dir.join(HISTORY_FILE),
            limit: limit.max(1),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry, dropping the oldest beyond the limit.
    pub fn append(&self, entry: &impl serde::Serialize) -> std::io::Result<()> {
        let existing = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut lines: Vec<&str> = existing.lines().filter(|l| !l.is_empty()).collect();
        let new_line = serde_json::to_string(entry).map_err(std::io::Error::other)?;
        lines.push(&new_line);
        let skip = lines.len().saturating_sub(self.limit);
        // One buffer, one write: the main loop does this right after an answer, and a host
        // request arriving meanwhile waits for it (a write per line cost ~2 writes per
        // entry, hundreds per append at the default limit).
        let mut text = String::with_capacity(existing.len() + new_line.len() + 1);
        for line in &lines[skip..] {
            text.push_str(line);
            text.push('\n');
        }
        let tmp = self.path.with_extension("jsonl.tmp");
        // 0600: the state directory is searchable by everyone (the app socket is there).
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        drop(file);
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_entries_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::new(dir.path(), 3);
        for i in 0..5 {
            h.append(&serde_json::json!({ "n": i })).unwrap();
        }
        let text = std::fs::read_to_string(h.path()).unwrap();
        let ns: Vec<i64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(ns, vec![2, 3, 4]);
    }
}
