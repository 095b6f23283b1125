//! The optional Prometheus textfile (`metrics_textfile`) for node_exporter's textfile
//! collector: the same metrics as `hv-vss metrics`, from the report history, with
//! `hv_vss_up 1`.
//!
//! Written only right after the history was appended, which the main loop does only once
//! nothing of ours is frozen (R60): the file may well live on a filesystem we freeze.
//! Replaced whole through a temp file in the same directory and `rename`, so the collector
//! reads the old or the new file, never half of one.

use std::io::Write;
use std::path::Path;

use hv_vss_history::metrics::{Live, render};

/// Rewrites `textfile` from the history at `history`, with the running daemon's own
/// figures (`live`: registered applications, log lines dropped while frozen).
pub fn write_textfile(textfile: &Path, history: &Path, live: Live) -> std::io::Result<()> {
    let loaded = hv_vss_history::load(history)
        .map_err(std::io::Error::other)?
        .unwrap_or_default();
    let text = render(
        &loaded.records,
        loaded.skipped.len(),
        Live { up: true, ..live },
    );
    let mut tmp_name = textfile.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = Path::new(&tmp_name);
    let mut file = std::fs::File::create(tmp)?;
    file.write_all(text.as_bytes())?;
    file.flush()?;
    drop(file);
    std::fs::rename(tmp, textfile)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::History;

    /// What the daemon appends is what the textfile counts; the old file is replaced.
    #[test]
    fn the_textfile_is_rendered_from_the_history_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let history = History::new(dir.path(), 10);
        let sample = include_str!("../../history/tests/data/history.jsonl");
        for line in sample.lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            history.append(&value).unwrap();
        }
        let textfile = dir.path().join("hv-vss.prom");
        std::fs::write(&textfile, "stale\n").unwrap();
        let live = Live {
            up: false,
            connected_apps: Some(3),
            log_lines_dropped: Some(7),
        };
        write_textfile(&textfile, history.path(), live).unwrap();
        let text = std::fs::read_to_string(&textfile).unwrap();
        assert!(text.contains("hv_vss_up 1"), "{text}");
        assert!(text.contains("hv_vss_connected_apps 3"), "{text}");
        assert!(text.contains("hv_vss_log_lines_dropped_total 7"), "{text}");
        assert!(
            text.contains("hv_vss_backups_total{verdict=\"fs_consistent\"} 1"),
            "{text}"
        );
        assert!(!text.contains("stale"));
        assert!(!dir.path().join("hv-vss.prom.tmp").exists());
    }
}
