//! `hv-vss history` and `hv-vss metrics`: the daemon's report history
//! (`STATE_DIR/history.jsonl`) as a table, as JSON, or as Prometheus metrics. Both only
//! read; both work with the daemon down. A damaged line is skipped with a warning on
//! stderr, never a failure.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use hv_vss_core::report::{Answer, TxnKind};
use hv_vss_core::{Failure, Verdict};
use hv_vss_history::HistoryRecord;
use hv_vss_history::metrics::{self, Live};
use serde_json::json;

use crate::state_files::{self, CmdError, StateDirArg};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 listed (damaged lines are skipped with a warning); 2 bad \
    arguments; 3 permission denied (run as root); 11 the history file is unusable \
    (docs/cli.md)."
)]
pub struct HistoryArgs {
    /// Print one JSON document: {"entries": [...], "skipped": [...]}.
    #[arg(long)]
    json: bool,
    /// Only the newest N transactions.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    last: Option<u64>,
    #[command(flatten)]
    state: StateDirArg,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 printed (hv_vss_up is 0 when the daemon is down); 2 bad \
    arguments; 3 permission denied (run as root); 11 the history file is unusable \
    (docs/cli.md)."
)]
pub struct MetricsArgs {
    #[command(flatten)]
    state: StateDirArg,
}

fn finish(result: Result<(), CmdError>, cmd: &str) -> anyhow::Result<ExitCode> {
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("hv-vss {cmd}: {}", e.message);
            Ok(ExitCode::from(e.code))
        }
    }
}

/// Writes to stdout; a closed pipe (`| head`) ends the output quietly.
fn print(text: &str) -> Result<(), CmdError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CmdError::new(
            crate::exit_codes::STATE_CORRUPT,
            format!("writing to stdout: {e}"),
        )),
        _ => Ok(()),
    }
}

pub fn history(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    finish(run_history(&args), "history")
}

fn run_history(args: &HistoryArgs) -> Result<(), CmdError> {
    let loaded = state_files::load_history(&args.state.state_dir, "history")?.unwrap_or_default();
    let mut records: &[HistoryRecord] = &loaded.records;
    if let Some(n) = args.last {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        records = &records[records.len().saturating_sub(n)..];
    }
    if args.json {
        let doc = json!({
            "entries": records,
            "skipped": loaded.skipped.iter().map(|s| json!({"line": s.line, "reason": s.reason})).collect::<Vec<_>>(),
        });
        return print(&format!(
            "{}\n",
            serde_json::to_string_pretty(&doc).unwrap_or_default()
        ));
    }
    if records.is_empty() {
        return print(&format!(
            "no transactions recorded in {}\n",
            args.state
                .state_dir
                .join(hv_vss_history::HISTORY_FILE)
                .display()
        ));
    }
    let mut text = String::new();
    for r in records {
        text.push_str(&line(r));
        text.push('\n');
    }
    print(&text)
}

/// One transaction on one line: when, what, verdict, frozen window, stage times, why.
fn line(r: &HistoryRecord) -> String {
    let when = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(r.unix_ms));
    let report = &r.report;
    let kind = match report.kind {
        TxnKind::Check => "check ",
        TxnKind::Backup => "backup",
    };
    let mut parts = vec![format!(
        "{when}  {kind}  {:<16}",
        verdict_text(&report.verdict)
    )];
    if let Some(thaw) = &r.thaw {
        parts.push(format!(
            "frozen {:.1} ms",
            thaw.frozen_window_us as f64 / 1e3
        ));
    } else if let Some(w) = report.frozen_window {
        parts.push(format!("frozen {} ms", w.duration_ms()));
    }
    let stages: Vec<String> = report
        .fs
        .iter()
        .filter_map(|s| {
            s.completed_at.map(|done| {
                format!(
                    "{} {} ms",
                    serde_json::to_value(s.stage)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    done.since(s.issued_at)
                )
            })
        })
        .collect();
    if !stages.is_empty() {
        parts.push(stages.join(", "));
    }
    if let Some(fs) = &r.freeze {
        parts.push(format!(
            "{} filesystem{}",
            fs.filesystems.len(),
            if fs.filesystems.len() == 1 { "" } else { "s" }
        ));
    }
    let unanswered = report
        .requests
        .iter()
        .filter(|q| matches!(q.answer, Answer::Unanswerable { .. }))
        .count();
    if unanswered > 0 {
        parts.push(format!("{unanswered} request(s) unanswerable"));
    }
    if let Some(c) = r.host_completion {
        parts.push(if c.completed {
            format!("BU_COMPLETE after {} ms", c.after_ms)
        } else {
            "no BU_COMPLETE".into()
        });
    }
    if let Some(first) = report.failures.first() {
        parts.push(format!("reason: {}", failure_text(first)));
    }
    parts.join("  ")
}

fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::CheckPassed => "check_passed".into(),
        Verdict::AppConsistent => "app_consistent".into(),
        Verdict::FsConsistent => "fs_consistent".into(),
        Verdict::Failed { .. } => "failed".into(),
    }
}

fn failure_text(f: &Failure) -> String {
    match f {
        Failure::AppFailed { stage, participant } => format!("{participant} failed in {stage:?}"),
        Failure::AppTimedOut { stage, participant } => {
            format!("{participant} timed out in {stage:?}")
        }
        Failure::AppGone { stage, participant } => {
            format!("{participant} disconnected in {stage:?}")
        }
        Failure::Deadline { stage, waiting_for } => {
            format!(
                "deadline in {stage:?}, waiting for {}",
                waiting_for.join(", ")
            )
        }
        Failure::Fs { stage, detail } => format!("{stage:?}: {detail}"),
        Failure::AbortedByThaw => "THAW arrived during the FREEZE".into(),
        Failure::AutoThaw => "no THAW in time: auto-thawed".into(),
        Failure::GuardianDied => "the guardian died while frozen".into(),
        Failure::TransportLost => "the host transport was lost".into(),
        Failure::Shutdown => "the daemon was stopped".into(),
    }
}

pub fn metrics(args: MetricsArgs) -> anyhow::Result<ExitCode> {
    finish(run_metrics(&args), "metrics")
}

fn run_metrics(args: &MetricsArgs) -> Result<(), CmdError> {
    let dir = &args.state.state_dir;
    let up = state_files::daemon_pid(dir)?.is_some();
    // Registered applications: only the running daemon knows them.
    let (connected_apps, log_lines_dropped) = match crate::state_files::ask_daemon(dir) {
        crate::state_files::Asked::Answer(v) => (
            v["apps"].as_array().map(|a| a.len() as u64),
            v["log_lines_dropped"].as_u64(),
        ),
        _ => (None, None),
    };
    let loaded = state_files::load_history(dir, "metrics")?.unwrap_or_default();
    print(&metrics::render(
        &loaded.records,
        loaded.skipped.len(),
        Live {
            up,
            connected_apps,
            log_lines_dropped,
        },
    ))
}
