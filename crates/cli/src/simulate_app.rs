//! The demo application client of `hv-vss simulate`: it registers on the daemon's app
//! socket before the first backup cycle, acks every check, freeze and thaw at once, and
//! records (and prints, in text mode) what it was told and when, so the simulation shows
//! where the application's part falls between the host's requests. Also reads back the
//! daemon's verdict for each backup from its report history.
//!
//! Verdicts (the daemon's, from `STATE_DIR/history.jsonl`): a backup is
//! **application-consistent** when every registered client acked its freeze and held
//! until the thaw, **filesystem-consistent** when the filesystems were frozen but no
//! client took part (or one was lost while frozen), and **failed** otherwise.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hv_vss_client::{Connection, Event, Registration};
use serde_json::json;

/// The demo client's name on the app socket.
pub const DEMO_NAME: &str = "hv-vss-simulate-demo";
/// How long to wait for the daemon's app socket to accept the registration.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(15);
/// The demo client's own bound per event, sent in its registration.
const DEMO_TIMEOUT: Duration = Duration::from_secs(10);

/// One thing the demo client was told.
#[derive(Clone, Debug)]
pub struct Told {
    /// Since the simulation started.
    pub at: Duration,
    pub event: &'static str,
    pub txn: u64,
    pub deadline_ms: Option<u64>,
    pub reason: Option<String>,
    /// Whether it acked (always ok); `None` for abort, which is never acked, or when the
    /// ack could not be sent.
    pub acked: Option<bool>,
}

impl Told {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "at_ms": self.at.as_secs_f64() * 1e3,
            "event": self.event,
            "txn": self.txn,
            "deadline_ms": self.deadline_ms,
            "reason": self.reason,
            "acked": self.acked,
        })
    }
}

/// The running demo client; stopped on drop.
#[derive(Debug)]
pub struct DemoClient {
    stop: Arc<AtomicBool>,
    told: Arc<Mutex<Vec<Told>>>,
    thread: Option<std::thread::JoinHandle<Option<String>>>,
}

impl DemoClient {
    /// Connects and registers (retrying while the socket is not there yet), then serves on
    /// a thread. `print`: print each event as it comes.
    pub fn start(socket: &Path, started: Instant, print: bool) -> Result<Self, String> {
        let registration = Registration::new(DEMO_NAME).timeout(DEMO_TIMEOUT);
        let end = Instant::now() + REGISTER_TIMEOUT;
        let conn = loop {
            match Connection::open(socket, &registration) {
                Ok(conn) => break conn,
                Err(e) if e.is_transient() && Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let told = Arc::new(Mutex::new(Vec::new()));
        let (s, t) = (stop.clone(), told.clone());
        let thread = std::thread::spawn(move || serve(conn, started, print, &s, &t));
        Ok(Self {
            stop,
            told,
            thread: Some(thread),
        })
    }

    /// Stops the client: what it was told, and why its connection ended early, if it did.
    pub fn finish(mut self) -> (Vec<Told>, Option<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let ended = self.thread.take().and_then(|t| t.join().ok()).flatten();
        let told = self.told.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (told, ended)
    }
}

impl Drop for DemoClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves until `stop`; returns why the connection ended if it did so first.
fn serve(
    mut conn: Connection,
    started: Instant,
    print: bool,
    stop: &AtomicBool,
    told: &Mutex<Vec<Told>>,
) -> Option<String> {
    while !stop.load(Ordering::SeqCst) {
        let event = match conn.next_event_timeout(Duration::from_millis(100)) {
            Ok(Some(event)) => event,
            Ok(None) => continue,
            Err(e) => return Some(e.to_string()),
        };
        let at = started.elapsed();
        let (name, txn, deadline, reason) = match &event {
            Event::Check(r) => ("check", r.txn, Some(r), None),
            Event::Freeze(r) => ("freeze", r.txn, Some(r), None),
            Event::Thaw(r) => ("thaw", r.txn, Some(r), None),
            Event::Abort { txn, reason } => ("abort", *txn, None, Some(reason.clone())),
            Event::AckRejected { .. } => continue,
        };
        let deadline_ms = deadline.map(|r| r.remaining().as_millis() as u64);
        let acked = deadline.map(|r| conn.ack(r.txn, true, None).is_ok());
        let entry = Told {
            at,
            event: name,
            txn,
            deadline_ms,
            reason,
            acked,
        };
        if print {
            print_told(&entry);
        }
        told.lock().unwrap_or_else(|p| p.into_inner()).push(entry);
    }
    None
}

fn print_told(t: &Told) {
    let detail = match (&t.deadline_ms, &t.reason, t.acked) {
        (Some(ms), _, Some(true)) => format!("deadline {ms} ms, acked ok"),
        (Some(ms), _, _) => format!("deadline {ms} ms, ack not sent"),
        (None, Some(reason), _) => format!("reason: {reason} (not acked)"),
        _ => String::new(),
    };
    println!(
        "  app {DEMO_NAME} told {:<6} txn {:<4} at +{:.3} s  {detail}",
        t.event,
        t.txn,
        t.at.as_secs_f64()
    );
    let _ = std::io::stdout().flush();
}

/// The verdicts of the backups (check reports left out) in `state_dir/history.jsonl`,
/// waiting up to 5 s for `want` of them (the daemon writes a backup's report when the
/// host closes it with BU_COMPLETE).
pub fn backup_verdicts(state_dir: &Path, want: usize) -> Vec<String> {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(state_dir.join("history.jsonl")).unwrap_or_default();
        let verdicts: Vec<String> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|j| j["report"]["verdict"]["kind"].as_str().map(str::to_owned))
            .filter(|k| k != "check_passed")
            .collect();
        if verdicts.len() >= want || Instant::now() >= end {
            return verdicts;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A verdict kind as the summary says it.
pub fn describe_verdict(kind: &str) -> &'static str {
    match kind {
        "app_consistent" => "application-consistent (every registered client acked)",
        "fs_consistent" => {
            "filesystem-consistent (no application client took part, or one did not ack)"
        }
        "failed" => "failed",
        _ => "unknown",
    }
}
