//! `hv-vss status`: is the daemon running, is anything frozen, what was the last backup.
//!
//! The running daemon is asked over its read-only control socket `STATE_DIR/control.sock`
//! (one JSON request, one JSON answer: transport, negotiated versions, coordinator state,
//! deadline, registered applications). The state directory says the rest, and is enough
//! with the daemon down: its instance lock in `/proc/locks` (running or not, and its pid),
//! the freezer's journal (present only while something of ours is, or may be, frozen), and
//! the report history (the last backup's verdict).

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use hv_vss_core::report::TxnKind;
use hv_vss_freezer::Journal;
use hv_vss_history::HistoryRecord;
use serde_json::json;

use crate::exit_codes;
use crate::state_files::{self, Asked, CmdError, StateDirArg, ask_daemon};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 the daemon is running; 2 bad arguments; 3 permission \
    denied (run as root); 10 the daemon is not running (what the state files say is shown); \
    11 a state file is unusable (docs/cli.md)."
)]
pub struct StatusArgs {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    state: StateDirArg,
}

/// What the state directory says.
#[derive(Debug)]
struct FromFiles {
    pid: Option<u32>,
    journal: Option<Journal>,
    last: Option<HistoryRecord>,
    last_backup: Option<HistoryRecord>,
    entries: usize,
    skipped: usize,
}

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    match status(&args) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("hv-vss status: {}", e.message);
            Ok(ExitCode::from(e.code))
        }
    }
}

fn read_files(args: &StatusArgs) -> Result<FromFiles, CmdError> {
    let dir = &args.state.state_dir;
    let pid = state_files::daemon_pid(dir)?;
    let journal = Journal::read(dir).map_err(|e| match &e {
        hv_vss_freezer::JournalError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            CmdError::new(
                exit_codes::NOT_ROOT,
                format!("{e} (the daemon's state is root's: run as root)"),
            )
        }
        _ => CmdError::new(exit_codes::STATE_CORRUPT, e.to_string()),
    })?;
    let loaded = state_files::load_history(dir, "status")?.unwrap_or_default();
    Ok(FromFiles {
        pid,
        journal,
        last: loaded.records.last().cloned(),
        last_backup: loaded
            .records
            .iter()
            .rev()
            .find(|r| r.report.kind == TxnKind::Backup)
            .cloned(),
        entries: loaded.records.len(),
        skipped: loaded.skipped.len(),
    })
}

fn when(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

fn verdict(r: &HistoryRecord) -> String {
    let v = serde_json::to_value(&r.report.verdict).unwrap_or_default();
    match (v["kind"].as_str(), v["reason"]["kind"].as_str()) {
        (Some(k), Some(reason)) => format!("{k} ({reason})"),
        (Some(k), None) => k.to_string(),
        _ => "unknown".into(),
    }
}

/// Transport, versions, coordinator state and applications from the daemon's answer.
fn live_lines(v: &serde_json::Value) -> String {
    let mut t = String::new();
    let negotiated = match (v["mode"].as_str(), v["negotiated"].is_object()) {
        (_, true) => format!(
            "negotiated framework {}, VSS {}",
            v["negotiated"]["framework"].as_str().unwrap_or("?"),
            v["negotiated"]["message"].as_str().unwrap_or("?")
        ),
        (Some("drop-in"), false) => "versions negotiated by the kernel (hv_utils)".into(),
        _ => "not negotiated yet".into(),
    };
    t.push_str(&format!(
        "transport:   {} {} ({}); {negotiated}\n",
        v["mode"].as_str().unwrap_or("?"),
        v["transport"].as_str().unwrap_or("?"),
        if v["transport_up"] == true {
            "open"
        } else {
            "being reopened"
        },
    ));
    let deadline = v["deadline_unix_ms"]
        .as_u64()
        .map_or_else(String::new, |ms| {
            format!(", thawed by {} at the latest", when(ms))
        });
    t.push_str(&format!(
        "daemon:      {}{}{deadline}\n",
        v["state"].as_str().unwrap_or("?"),
        if v["frozen"] == true {
            " (filesystems frozen)"
        } else {
            ""
        },
    ));
    let apps: Vec<String> = v["apps"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| format!("{} (tier {})", x["name"].as_str().unwrap_or("?"), x["tier"]))
                .collect()
        })
        .unwrap_or_default();
    t.push_str(&format!(
        "apps:        {}\n",
        if apps.is_empty() {
            "none registered".to_string()
        } else {
            apps.join(", ")
        }
    ));
    t
}

fn status(args: &StatusArgs) -> Result<ExitCode, CmdError> {
    let asked = ask_daemon(&args.state.state_dir);
    let live = match &asked {
        Asked::Answer(v) => Some(v.clone()),
        _ => None,
    };
    // With the daemon's answer, unreadable state files (a control_group member) only
    // leave out what they would add.
    let files = match read_files(args) {
        Ok(f) => f,
        Err(e) if live.is_some() => {
            eprintln!(
                "hv-vss status: {} (showing the daemon's answer only)",
                e.message
            );
            FromFiles {
                pid: live
                    .as_ref()
                    .and_then(|v| v["pid"].as_u64())
                    .map(|p| p as u32),
                journal: None,
                last: None,
                last_backup: None,
                entries: 0,
                skipped: 0,
            }
        }
        Err(e) => return Err(e),
    };
    let running = files.pid.is_some() || live.is_some();
    let frozen = files.journal.as_ref().filter(|j| !j.filesystems.is_empty());
    let text = if args.json {
        let record = |r: &HistoryRecord| {
            json!({
                "unix_ms": r.unix_ms,
                "kind": r.report.kind,
                "verdict": r.report.verdict,
                "frozen_window_us": r.thaw.as_ref().map(|t| t.frozen_window_us),
                "expedite": r.freeze.as_ref().map(|f| &f.expedite),
            })
        };
        let doc = json!({
            "state_dir": args.state.state_dir.display().to_string(),
            "daemon": {
                "running": running,
                "pid": files.pid,
                "answer": live,
                "asked": match &asked {
                    Asked::Answer(_) => "answered".to_string(),
                    Asked::NoDaemon => "no control socket".to_string(),
                    Asked::Denied => "permission denied".to_string(),
                    Asked::Failed(why) => why.clone(),
                },
            },
            "frozen": frozen.map(|j| json!({
                "since_unix_ms": j.created_unix_ms,
                "by_pid": j.pid,
                "filesystems": j.filesystems.iter().map(|f| f.path.display().to_string()).collect::<Vec<_>>(),
            })),
            "last_transaction": files.last.as_ref().map(record),
            "last_backup": files.last_backup.as_ref().map(record),
            "history": {"entries": files.entries, "skipped": files.skipped},
        });
        format!(
            "{}\n",
            serde_json::to_string_pretty(&doc).unwrap_or_default()
        )
    } else {
        let mut t = String::new();
        match (files.pid, &live) {
            (_, Some(v)) => t.push_str(&format!(
                "hv-vssd:     running (pid {}, version {})\n",
                v["pid"],
                v["version"].as_str().unwrap_or("?")
            )),
            (Some(pid), None) => t.push_str(&format!("hv-vssd:     running (pid {pid})\n")),
            (None, None) => t.push_str("hv-vssd:     not running\n"),
        }
        if let Some(v) = &live {
            t.push_str(&live_lines(v));
        } else if running {
            t.push_str(&format!(
                "             (no answer on its control socket: {})\n",
                match &asked {
                    Asked::Denied =>
                        "permission denied: run as root or join its control_group".to_string(),
                    Asked::Failed(why) => why.clone(),
                    _ => "none".to_string(),
                }
            ));
        }
        match frozen {
            Some(j) => {
                t.push_str(&format!(
                    "state:       frozen since {} by pid {}: {}\n",
                    when(j.created_unix_ms),
                    j.pid,
                    j.filesystems
                        .iter()
                        .map(|f| f.path.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                if !running {
                    t.push_str(
                        "             the daemon is down with a freeze journal: if these are \
                         still frozen, run `hv-vss thaw --recover`\n",
                    );
                }
            }
            None => t.push_str("state:       idle (nothing of ours is frozen)\n"),
        }
        match &files.last_backup {
            Some(r) => t.push_str(&format!(
                "last backup: {} at {}{}\n",
                verdict(r),
                when(r.unix_ms),
                r.thaw.as_ref().map_or_else(String::new, |th| format!(
                    ", frozen {:.1} ms",
                    th.frozen_window_us as f64 / 1e3
                ))
            )),
            None => t.push_str("last backup: none recorded\n"),
        }
        if let Some(hv_vss_freezer::Expedite::Unavailable { reason }) = files
            .last_backup
            .as_ref()
            .and_then(|r| r.freeze.as_ref())
            .map(|f| &f.expedite)
        {
            t.push_str(&format!(
                "             its FIFREEZE calls waited for normal RCU grace periods: {reason}\n"
            ));
        }
        if let Some(r) = &files.last {
            t.push_str(&format!(
                "last request: {} at {}\n",
                verdict(r),
                when(r.unix_ms)
            ));
        }
        t.push_str(&format!(
            "history:     {} transactions in {}{}\n",
            files.entries,
            args.state
                .state_dir
                .join(hv_vss_history::HISTORY_FILE)
                .display(),
            if files.skipped > 0 {
                format!(" ({} damaged lines skipped)", files.skipped)
            } else {
                String::new()
            }
        ));
        t
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    Ok(if running {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit_codes::DAEMON_DOWN)
    })
}
