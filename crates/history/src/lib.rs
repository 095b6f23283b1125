//! The daemon's report history as its readers see it: `STATE_DIR/history.jsonl`, one JSON
//! object per transaction, newest last (R72, R73), written by hv-vssd only after the last
//! thaw and always replaced whole (temp file and `rename`).
//!
//! A reader must still survive a damaged file (a disk error, a hand edit, a copy cut short,
//! a line from a future version): [`parse`] keeps every line it understands and reports
//! each one it skipped, with its line number and why, instead of failing.

pub mod metrics;

use std::path::Path;

use hv_vss_core::TxnReport;
use hv_vss_core::report::HostCompletion;
use hv_vss_freezer::{FreezeReport, ThawReport};
use serde::{Deserialize, Serialize};

/// File name inside the state directory.
pub const HISTORY_FILE: &str = "history.jsonl";

/// Larger than any history the daemon writes (100 entries by default, a few KiB each):
/// a bigger file is not ours, and is not read whole into memory.
pub const MAX_HISTORY_BYTES: u64 = 64 << 20;

/// One line of the history: the coordinator's report with the freezer's reports of the
/// same transaction (the shape hv-vssd's `HistoryEntry` serializes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// Wall-clock time the report was finished (after the last thaw), Unix milliseconds.
    pub unix_ms: u64,
    pub report: TxnReport,
    pub freeze: Option<FreezeReport>,
    pub thaw: Option<ThawReport>,
    /// Whether the host closed this backup with BU_COMPLETE (UIO mode only).
    #[serde(default)]
    pub host_completion: Option<HostCompletion>,
}

/// A line [`parse`] could not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedLine {
    /// 1-based line number.
    pub line: usize,
    pub reason: String,
}

/// What a history file held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Oldest first.
    pub records: Vec<HistoryRecord>,
    pub skipped: Vec<SkippedLine>,
}

/// Why the history could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is {len} bytes, more than any history hv-vssd writes ({MAX_HISTORY_BYTES}); not reading it"
    )]
    TooLarge { path: String, len: u64 },
}

impl LoadError {
    /// The caller lacks permission (the state directory is root's).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied)
    }
}

/// Parses the text of a history file: one record per non-empty line; lines that are not
/// valid UTF-8 were already made lossy by the caller, and lines that are not a record are
/// skipped and listed.
pub fn parse(text: &str) -> Loaded {
    let mut loaded = Loaded::default();
    let ends_with_newline = text.ends_with('\n');
    let count = text.lines().count();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<HistoryRecord>(line) {
            Ok(record) => loaded.records.push(record),
            Err(e) => {
                let truncated = i + 1 == count && !ends_with_newline && e.is_eof();
                loaded.skipped.push(SkippedLine {
                    line: i + 1,
                    reason: if truncated {
                        "truncated (the file ends in the middle of this line)".into()
                    } else {
                        format!("not a history record: {e}")
                    },
                });
            }
        }
    }
    loaded
}

/// Reads `path`; `Ok(None)` when it does not exist (no transaction recorded yet).
pub fn load(path: &Path) -> Result<Option<Loaded>, LoadError> {
    let io = |source| LoadError::Io {
        path: path.display().to_string(),
        source,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    if meta.len() > MAX_HISTORY_BYTES {
        return Err(LoadError::TooLarge {
            path: path.display().to_string(),
            len: meta.len(),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    Ok(Some(parse(&String::from_utf8_lossy(&bytes))))
}

#[cfg(test)]
mod tests;
