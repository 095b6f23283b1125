use super::*;
use hv_vss_core::Verdict;

/// Three lines hv-vssd wrote in a real `hv-vss simulate --cycles 2` run (a check, a backup,
/// a check), then a backup that ended by auto-thaw and one whose FIFREEZE failed.
pub(crate) const SAMPLE: &str = include_str!("../tests/data/history.jsonl");

#[test]
fn every_line_the_daemon_writes_is_read() {
    let loaded = parse(SAMPLE);
    assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
    assert_eq!(loaded.records.len(), 5);
    let backup = &loaded.records[1];
    assert_eq!(backup.report.verdict, Verdict::FsConsistent);
    let freeze = backup.freeze.as_ref().unwrap();
    assert_eq!(freeze.filesystems[0].fs_type, "ext4");
    assert!(backup.thaw.as_ref().unwrap().complete);
    assert!(backup.host_completion.unwrap().completed);
    assert!(matches!(
        loaded.records[3].report.verdict,
        Verdict::Failed {
            reason: hv_vss_core::Failure::AutoThaw
        }
    ));
}

#[test]
fn corrupt_and_truncated_lines_are_skipped_with_their_line_numbers() {
    let lines: Vec<&str> = SAMPLE.lines().collect();
    let text = format!(
        "{}\nnot json at all\n\n{{\"unix_ms\": 1}}\n{}\n\u{fffd}\u{0}\n{}",
        lines[0],
        lines[1],
        // The last line cut in the middle, without its newline.
        &lines[2][..lines[2].len() / 2]
    );
    let loaded = parse(&text);
    assert_eq!(loaded.records.len(), 2);
    let skipped: Vec<usize> = loaded.skipped.iter().map(|s| s.line).collect();
    assert_eq!(skipped, [2, 4, 6, 7]);
    assert!(loaded.skipped[0].reason.starts_with("not a history record"));
    assert!(
        loaded.skipped[3].reason.starts_with("truncated"),
        "{:?}",
        loaded.skipped[3]
    );
}

#[test]
fn a_missing_file_is_no_history_and_a_huge_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(load(&dir.path().join(HISTORY_FILE)).unwrap().is_none());
    let big = dir.path().join("big.jsonl");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(MAX_HISTORY_BYTES + 1)
        .unwrap();
    assert!(matches!(load(&big), Err(LoadError::TooLarge { .. })));
    let ok = dir.path().join(HISTORY_FILE);
    std::fs::write(&ok, SAMPLE).unwrap();
    assert_eq!(load(&ok).unwrap().unwrap().records.len(), 5);
}
