//! The run as a person reads it: who was told what, and when, from three clocks merged into
//! one list — the host's own requests and snapshot, and what the demo application client was
//! told (both on the run's monotonic clock), the daemon's report of each filesystem's
//! FIFREEZE and FITHAW (from its history, wall-clock), and the writer's blocked writes.
//!
//! And the progress line: one line on stderr, rewritten in place, only when stderr is a
//! terminal (never in a pipe or a log).

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hv_vss_freezer::FsFreezeOutcome;
use hv_vss_history::HistoryRecord;
use serde_json::json;

use super::HostStep;
use super::demo_client::Told;
use super::writer::Stall;

/// Who did something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// The simulated host's own doing.
    Host,
    /// A request from the host to the guest.
    HostToGuest,
    /// A reply from the guest to the host.
    GuestToHost,
    /// The daemon (from its report).
    Daemon,
    /// The writer thread on the frozen filesystem.
    Writer,
    /// The demo application client on the daemon's app socket.
    DemoClient,
}

impl Who {
    fn label(self, guest: &str) -> String {
        match self {
            Who::Host => "host".into(),
            Who::HostToGuest => format!("host → {guest}"),
            Who::GuestToHost => format!("{guest} → host"),
            Who::Daemon => "daemon".into(),
            Who::Writer => "writer".into(),
            Who::DemoClient => "demo client".into(),
        }
    }
}

#[derive(Debug, Clone)]
struct Event {
    /// Since the start of the run (negative: before it, impossible but not fatal).
    at_ms: f64,
    /// Insertion order, to keep simultaneous events as they were added.
    seq: usize,
    who: Option<Who>,
    what: String,
}

/// The events of one run.
#[derive(Debug)]
pub struct Timeline {
    start: Instant,
    start_unix_ms: f64,
    events: Vec<Event>,
}

impl Timeline {
    pub fn new(start: Instant, start_unix: SystemTime) -> Self {
        Self {
            start,
            start_unix_ms: start_unix
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64() * 1e3),
            events: Vec::new(),
        }
    }

    /// The start of the run: every time on the timeline counts from it.
    pub fn start(&self) -> Instant {
        self.start
    }

    fn since(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.start).as_secs_f64() * 1e3
    }

    fn push(&mut self, at_ms: f64, who: Option<Who>, what: String) {
        let seq = self.events.len();
        self.events.push(Event {
            at_ms,
            seq,
            who,
            what,
        });
    }

    /// A heading ("cycle 1 of 3"), placed now.
    pub fn section(&mut self, title: String) {
        self.push(self.since(Instant::now()), None, title);
    }

    /// Something the host did, now.
    pub fn note(&mut self, who: Who, what: String) {
        self.push(self.since(Instant::now()), Some(who), what);
    }

    /// A request: when it was sent, and its reply.
    pub fn add_host_step(&mut self, step: &HostStep) {
        let r = &step.report;
        let sent = self.since(step.sent);
        self.push(
            sent,
            Some(Who::HostToGuest),
            format!("{} (trans_id {:#x})", r.step, r.trans_id),
        );
        match (r.status, r.latency) {
            (Some(_), Some(latency)) => self.push(
                sent + latency.as_secs_f64() * 1e3,
                Some(Who::GuestToHost),
                format!(
                    "{} {} after {}",
                    r.step,
                    super::report::status_name(r.status),
                    super::report::ms(latency)
                ),
            ),
            _ => self.note(
                Who::Host,
                format!(
                    "{}: no valid reply ({})",
                    r.step,
                    r.error.as_deref().unwrap_or("unknown error")
                ),
            ),
        }
    }

    /// The daemon's account of one backup: each filesystem's FIFREEZE and FITHAW, and its
    /// verdict.
    pub fn add_daemon_record(&mut self, record: &HistoryRecord) {
        if let Some(freeze) = &record.freeze {
            // `freeze_start_us` counts from the first FIFREEZE call, after preparing and
            // syncing.
            let first_fifreeze = freeze.started_unix_ms as f64 - self.start_unix_ms
                + (freeze.prepare_us + freeze.sync_us) as f64 / 1e3;
            for fs in &freeze.filesystems {
                let at = first_fifreeze + fs.freeze_start_us.unwrap_or(0) as f64 / 1e3;
                let outcome = match &fs.outcome {
                    FsFreezeOutcome::Frozen => "frozen".to_string(),
                    other => format!("{other:?}").to_lowercase(),
                };
                self.push(
                    at,
                    Some(Who::Daemon),
                    format!(
                        "FIFREEZE {} ({}): {outcome} in {}",
                        fs.mount_point.display(),
                        fs.fs_type,
                        us(fs.freeze_us.unwrap_or(0))
                    ),
                );
            }
            if let Some(thaw) = &record.thaw {
                let last_fithaw = first_fifreeze + thaw.frozen_window_us as f64 / 1e3;
                for fs in &thaw.filesystems {
                    self.push(
                        last_fithaw - fs.thaw_us as f64 / 1e3,
                        Some(Who::Daemon),
                        format!(
                            "FITHAW {}: {:?} in {}",
                            fs.mount_point.display(),
                            fs.outcome,
                            us(fs.thaw_us)
                        )
                        .replace("Thawed", "thawed"),
                    );
                }
                self.push(
                    last_fithaw,
                    Some(Who::Daemon),
                    format!(
                        "frozen {} in all (first FIFREEZE to last FITHAW)",
                        us(thaw.frozen_window_us)
                    ),
                );
            }
        }
        self.push(
            record.unix_ms as f64 - self.start_unix_ms,
            Some(Who::Daemon),
            format!(
                "report of the backup: {}",
                super::report::daemon_verdict(&record.report.verdict)
            ),
        );
    }

    /// Something the demo client was told, when it arrived.
    pub fn add_told(&mut self, told: &Told) {
        self.push(
            told.at.as_secs_f64() * 1e3,
            Some(Who::DemoClient),
            told.describe(),
        );
    }

    /// A blocked write of the writer thread.
    pub fn add_stall(&mut self, stall: &Stall) {
        self.push(
            self.since(stall.started),
            Some(Who::Writer),
            format!(
                "a write blocked for {} (resumed at {})",
                super::report::ms(stall.took),
                at_text(self.since(stall.started + stall.took))
            ),
        );
    }

    /// By time; simultaneous events (and a section and what starts it) in the order added.
    /// The daemon's times come from its wall clock in whole milliseconds, so they may sit
    /// up to 1 ms early next to the host's.
    fn sorted(&self) -> Vec<&Event> {
        let mut events: Vec<&Event> = self.events.iter().collect();
        events.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms).then(a.seq.cmp(&b.seq)));
        events
    }

    pub fn print(&self, out: &mut impl Write, guest: &str) -> std::io::Result<()> {
        writeln!(out, "  {:>10}  {:<16} what", "time", "who")?;
        for e in self.sorted() {
            match e.who {
                None => writeln!(out, "  {}", e.what)?,
                Some(who) => writeln!(
                    out,
                    "  {:>10}  {:<16} {}",
                    at_text(e.at_ms),
                    who.label(guest),
                    e.what
                )?,
            }
        }
        Ok(())
    }

    pub fn to_json(&self, guest: &str) -> serde_json::Value {
        json!(
            self.sorted()
                .iter()
                .map(|e| json!({
                    "at_ms": (e.at_ms * 1e3).round() / 1e3,
                    "who": e.who.map_or_else(|| "section".to_string(), |w| w.label(guest)),
                    "what": e.what,
                }))
                .collect::<Vec<_>>()
        )
    }
}

fn at_text(ms: f64) -> String {
    format!("{:+.3}s", ms / 1e3)
}

fn us(us: u64) -> String {
    super::report::ms(Duration::from_micros(us))
}

/// The progress line on a terminal.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        Self { enabled }
    }

    pub fn show(&self, text: &str) {
        if self.enabled {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K… {text}");
            let _ = err.flush();
        }
    }

    pub fn clear(&self) {
        if self.enabled {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}
