//! The history as Prometheus metrics (prometheus-client, OpenMetrics text: `# TYPE`,
//! `# HELP`, counters with `_total`, a final `# EOF`).
//!
//! Everything is computed from the retained history (the daemon keeps the newest
//! `history_limit` transactions, 100 by default), so counters cover that window: they can
//! go down when old entries fall off, which Prometheus' `rate()` reads as a reset. The live
//! families (`hv_vss_connected_apps`, `hv_vss_log_lines_dropped_total`) appear only when the
//! running daemon supplied them; `hv_vss_up` says whether it is running.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use hv_vss_core::report::TxnKind;
use hv_vss_core::{Failure, Verdict};

use crate::HistoryRecord;
use hv_vss_freezer::Expedite;

/// What only the running daemon knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Live {
    /// The daemon is running.
    pub up: bool,
    /// Applications registered on its app socket.
    pub connected_apps: Option<u64>,
    /// Log lines it dropped while filesystems were frozen (the held-log capacity ran out).
    pub log_lines_dropped: Option<u64>,
}

/// Frozen-window buckets, seconds: 1 ms to about 65 s.
fn window_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17)
}

type Labels = Vec<(&'static str, String)>;

/// The metric family names, for tests and docs.
pub const FAMILIES: [&str; 12] = [
    "hv_vss_up",
    "hv_vss_backups",
    "hv_vss_failures",
    "hv_vss_auto_thaws",
    "hv_vss_guardian_thaws",
    "hv_vss_frozen_window_seconds",
    "hv_vss_stage_duration_seconds",
    "hv_vss_last_success_timestamp_seconds",
    "hv_vss_history_entries",
    "hv_vss_freezes",
    "hv_vss_connected_apps",
    "hv_vss_log_lines_dropped",
];

/// Snake-case name of a verdict or failure (its serde tag).
fn kind_of<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v["kind"].as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// Renders the metrics; `skipped` is how many history lines could not be read.
pub fn render(records: &[HistoryRecord], skipped: usize, live: Live) -> String {
    let mut registry = Registry::default();

    let up = Gauge::<i64>::default();
    up.set(i64::from(live.up));
    registry.register("hv_vss_up", "Whether hv-vssd is running (1) or not (0)", up);

    let backups = Family::<Labels, Counter>::default();
    let failures = Family::<Labels, Counter>::default();
    let auto_thaws = Counter::<u64>::default();
    let guardian_thaws = Counter::<u64>::default();
    let window = Histogram::new(window_buckets());
    let stages =
        Family::<Labels, Histogram>::new_with_constructor(|| Histogram::new(window_buckets()));
    let last_success = Gauge::<f64, AtomicU64>::default();
    let mut last_success_ms = None;
    let freezes = Family::<Labels, Counter>::default();

    for r in records {
        if let Some(freeze) = &r.freeze {
            let state = match &freeze.expedite {
                Expedite::Off => "off",
                Expedite::Expedited => "expedited",
                Expedite::AlreadyOn => "already_on",
                Expedite::Unavailable { .. } => "unavailable",
            };
            freezes
                .get_or_create(&vec![("grace_periods", state.into())])
                .inc();
        }
        let report = &r.report;
        if report.kind == TxnKind::Backup {
            backups
                .get_or_create(&vec![("verdict", kind_of(&report.verdict))])
                .inc();
            if matches!(
                report.verdict,
                Verdict::AppConsistent | Verdict::FsConsistent
            ) {
                last_success_ms = Some(r.unix_ms);
            }
            // The freezer's own window (µs, first FIFREEZE to last FITHAW) when present.
            let seconds = r
                .thaw
                .as_ref()
                .map(|t| t.frozen_window_us as f64 / 1e6)
                .or_else(|| report.frozen_window.map(|w| w.duration_ms() as f64 / 1e3));
            if let Some(s) = seconds {
                window.observe(s);
            }
        }
        if let Verdict::Failed { reason } = &report.verdict {
            failures
                .get_or_create(&vec![("reason", kind_of(reason))])
                .inc();
        }
        for failure in &report.failures {
            match failure {
                Failure::AutoThaw => {
                    auto_thaws.inc();
                }
                Failure::GuardianDied => {
                    guardian_thaws.inc();
                }
                _ => {}
            }
        }
        for fs in &report.fs {
            if let Some(done) = fs.completed_at {
                stages
                    .get_or_create(&vec![("stage", kind_of_stage(&fs.stage))])
                    .observe(done.since(fs.issued_at) as f64 / 1e3);
            }
        }
        for p in &report.participants {
            for op in &p.ops {
                if let Some(done) = op.answered_at {
                    stages
                        .get_or_create(&vec![("stage", format!("app_{}", kind_of_stage(&op.op)))])
                        .observe(done.since(op.sent_at) as f64 / 1e3);
                }
            }
        }
    }
    if let Some(ms) = last_success_ms {
        last_success.set(ms as f64 / 1e3);
    }
    registry.register(
        "hv_vss_backups",
        "Backups (FREEZE transactions) in the retained history, by verdict",
        backups,
    );
    registry.register(
        "hv_vss_failures",
        "Failed transactions in the retained history, by the reason of their verdict",
        failures,
    );
    registry.register(
        "hv_vss_auto_thaws",
        "Freezes the daemon ended itself because no THAW came in time",
        auto_thaws,
    );
    registry.register(
        "hv_vss_guardian_thaws",
        "Freezes the guardian process thawed because the daemon died",
        guardian_thaws,
    );
    registry.register(
        "hv_vss_frozen_window_seconds",
        "From the first FIFREEZE to the last FITHAW of each backup",
        window,
    );
    registry.register(
        "hv_vss_stage_duration_seconds",
        "Duration of each stage of a transaction (filesystem stages, app_* notifications)",
        stages,
    );
    if last_success_ms.is_some() {
        registry.register(
            "hv_vss_last_success_timestamp_seconds",
            "When the last consistent backup ended (Unix time)",
            last_success,
        );
    }
    let entries = Family::<Labels, Gauge>::default();
    entries
        .get_or_create(&vec![("state", "read".into())])
        .set(i64::try_from(records.len()).unwrap_or(i64::MAX));
    entries
        .get_or_create(&vec![("state", "skipped".into())])
        .set(i64::try_from(skipped).unwrap_or(i64::MAX));
    registry.register(
        "hv_vss_freezes",
        "Filesystem freezes in the retained history, by how their FIFREEZE calls waited for RCU grace periods (expedited, already_on, unavailable, off)",
        freezes,
    );
    registry.register(
        "hv_vss_history_entries",
        "Lines of the report history these metrics come from (read), and unreadable lines (skipped)",
        entries,
    );
    if let Some(apps) = live.connected_apps {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(apps).unwrap_or(i64::MAX));
        registry.register(
            "hv_vss_connected_apps",
            "Applications registered on the daemon's app socket",
            g,
        );
    }
    if let Some(dropped) = live.log_lines_dropped {
        let c = Counter::<u64>::default();
        c.inc_by(dropped);
        registry.register(
            "hv_vss_log_lines_dropped",
            "Log lines the daemon dropped while filesystems were frozen",
            c,
        );
    }
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

fn kind_of_stage<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests;
