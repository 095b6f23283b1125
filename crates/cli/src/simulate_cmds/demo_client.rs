//! The demo application client of `hv-vss simulate`: it registers on the daemon's app
//! socket (`STATE_DIR/app.sock`) before the first backup cycle, acks every check, freeze
//! and thaw at once, and records what it was told and when, so the timeline shows where the
//! application's part falls between the host's requests.
//!
//! With it registered, the daemon's verdict of a backup is **application-consistent** when
//! it acked its freeze and held until the thaw; without it (`--no-demo-client`) no client
//! takes part and the verdict is **filesystem-consistent**.
//!
//! It records and never prints: the report is printed at the end, after every thaw.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hv_vss_client::{Connection, Event, Registration};
use serde_json::json;

/// The demo client's name on the app socket.
pub(super) const DEMO_NAME: &str = "hv-vss-simulate-demo";
/// How long to wait for the daemon's app socket to accept the registration.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(15);
/// The demo client's own bound per event, sent in its registration.
const DEMO_TIMEOUT: Duration = Duration::from_secs(10);

/// One thing the demo client was told.
#[derive(Clone, Debug)]
pub(super) struct Told {
    /// Since the start of the run.
    pub(super) at: Duration,
    pub(super) event: &'static str,
    pub(super) txn: u64,
    pub(super) deadline_ms: Option<u64>,
    pub(super) reason: Option<String>,
    /// Whether it acked (always ok); `None` for abort, which is never acked, or when the
    /// ack could not be sent.
    pub(super) acked: Option<bool>,
}

impl Told {
    pub(super) fn to_json(&self) -> serde_json::Value {
        json!({
            "at_ms": self.at.as_secs_f64() * 1e3,
            "event": self.event,
            "txn": self.txn,
            "deadline_ms": self.deadline_ms,
            "reason": self.reason,
            "acked": self.acked,
        })
    }

    /// The event as the timeline says it.
    pub(super) fn describe(&self) -> String {
        let (detail, outcome) = match (self.deadline_ms, &self.reason, self.acked) {
            (Some(ms), _, Some(true)) => (format!("deadline {ms} ms"), "acked ok"),
            (Some(ms), _, _) => (format!("deadline {ms} ms"), "the ack could not be sent"),
            (None, Some(reason), _) => (format!("reason: {reason}"), "an abort is not acked"),
            (None, None, _) => ("no deadline".into(), "not acked"),
        };
        format!(
            "told {} (txn {}, {detail}): {outcome}",
            self.event, self.txn
        )
    }
}

/// What the demo client was told, or why it could not take part.
#[derive(Debug, Default)]
pub(super) struct DemoReport {
    pub(super) told: Vec<Told>,
    /// Registration refused, or the connection ended early.
    pub(super) error: Option<String>,
}

impl DemoReport {
    pub(super) fn not_registered(why: String) -> Self {
        Self {
            told: Vec::new(),
            error: Some(format!("not registered: {why}")),
        }
    }

    pub(super) fn to_json(&self) -> serde_json::Value {
        json!({
            "name": DEMO_NAME,
            "told": self.told.iter().map(Told::to_json).collect::<Vec<_>>(),
            "error": self.error,
        })
    }
}

/// The running demo client; stopped on drop.
#[derive(Debug)]
pub(super) struct DemoClient {
    stop: Arc<AtomicBool>,
    told: Arc<Mutex<Vec<Told>>>,
    thread: Option<std::thread::JoinHandle<Option<String>>>,
}

impl DemoClient {
    /// Connects and registers (retrying while the socket is not there yet), then serves on
    /// a thread. `started`: the start of the run, which [`Told::at`] counts from.
    pub(super) fn start(socket: &Path, started: Instant) -> Result<Self, String> {
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
        let thread = std::thread::spawn(move || serve(conn, started, &s, &t));
        Ok(Self {
            stop,
            told,
            thread: Some(thread),
        })
    }

    /// Stops the client: what it was told, and why its connection ended early, if it did.
    pub(super) fn finish(mut self) -> DemoReport {
        self.stop.store(true, Ordering::SeqCst);
        let error = self.thread.take().and_then(|t| t.join().ok()).flatten();
        let told = self.told.lock().unwrap_or_else(|p| p.into_inner()).clone();
        DemoReport {
            told,
            error: error.map(|e| format!("the connection ended early: {e}")),
        }
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
        told.lock().unwrap_or_else(|p| p.into_inner()).push(Told {
            at,
            event: name,
            txn,
            deadline_ms,
            reason,
            acked,
        });
    }
    None
}
