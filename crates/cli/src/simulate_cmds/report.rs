//! What the host saw of a run: each request, each cycle's snapshot check and verdict, the
//! daemon's verdict of each backup (application- or filesystem-consistent) and what the demo
//! client was told, the summary over `--cycles N`, as text or one JSON document.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use hv_vss_core::Verdict;
use hv_vss_history::HistoryRecord;
use hv_vss_protocol::{HvStatus, VssOperation};
use hv_vss_sim::host::{NegotiationResult, Step, StepReport};
use serde_json::json;

use super::demo_client::{DEMO_NAME, DemoReport};
use super::snapshot::Check;
use super::timeline::Timeline;
use super::writer;
use super::{Mode, guest::GuestExit};

/// One request as the host sent it.
#[derive(Debug, Clone)]
pub(super) struct HostStep {
    pub(super) report: StepReport,
    pub(super) sent: Instant,
}

/// One backup cycle as the host ran it.
#[derive(Debug)]
pub(super) struct Cycle {
    pub(super) steps: Vec<HostStep>,
    pub(super) freeze_skipped: bool,
    /// FREEZE sent to THAW reply: the longest the guest can have been frozen.
    pub(super) frozen_window: Option<Duration>,
    /// FREEZE reply to THAW sent: the host's snapshot time.
    pub(super) snapshot_window: Option<Duration>,
    pub(super) snapshots: Vec<(u64, Duration)>,
    pub(super) check: Check,
    /// The longest write the writer saw blocked within this cycle.
    pub(super) writer_blocked: Option<Duration>,
    /// The daemon's own verdict of the backup, from its history.
    pub(super) daemon_verdict: Option<Verdict>,
    /// Span of the cycle, to match the writer's stalls.
    pub(super) span: (Instant, Instant),
}

impl Cycle {
    pub(super) fn steps_ok(&self) -> bool {
        self.steps.iter().all(|s| s.report.is_ok())
    }

    pub(super) fn verdict(&self) -> (&'static str, String) {
        if let Some(bad) = self.steps.iter().find(|s| !s.report.is_ok()) {
            return (
                "not consistent",
                format!(
                    "{} was answered {}{}",
                    bad.report.step,
                    status_name(bad.report.status),
                    bad.report
                        .error
                        .as_ref()
                        .map_or_else(String::new, |e| format!(" ({e})"))
                ),
            );
        }
        (self.check.verdict(), self.check.detail())
    }

    pub(super) fn ok(&self) -> bool {
        self.steps_ok() && !matches!(self.check, Check::NotConsistent { .. })
    }

    pub(super) fn step_latency(&self, op: VssOperation) -> Option<Duration> {
        self.steps
            .iter()
            .find(|s| s.report.step == Step::Vss(op))
            .and_then(|s| s.report.latency)
    }
}

/// What the host saw.
#[derive(Debug)]
pub(super) struct Report {
    pub(super) negotiation: HostStep,
    pub(super) negotiated: Option<NegotiationResult>,
    pub(super) cycles: Vec<Cycle>,
    pub(super) cycles_wanted: u32,
    /// The demo application client (daemon mode, unless `--no-demo-client`).
    pub(super) demo: Option<DemoReport>,
}

impl Report {
    pub(super) fn ok(&self) -> bool {
        matches!(self.negotiated, Some(NegotiationResult::Agreed { .. }))
            && self.cycles.len() == self.cycles_wanted as usize
            && self.cycles.iter().all(Cycle::ok)
    }

    pub(super) fn verdict(&self) -> (&'static str, String) {
        if !matches!(self.negotiated, Some(NegotiationResult::Agreed { .. })) {
            return ("not consistent", "negotiation failed".into());
        }
        if let Some((i, c)) = self.cycles.iter().enumerate().find(|(_, c)| !c.ok()) {
            let (v, why) = c.verdict();
            return (v, format!("cycle {}: {why}", i + 1));
        }
        if self.cycles.len() < self.cycles_wanted as usize {
            return ("not consistent", "not every cycle ran".into());
        }
        match self.cycles.first() {
            Some(c) if self.cycles.len() == 1 => c.verdict(),
            Some(c) => {
                let (v, why) = c.verdict();
                (v, format!("all {} cycles: {why}", self.cycles.len()))
            }
            None => ("not consistent", "no cycle ran".into()),
        }
    }

    /// Matches the daemon's backup reports to the cycles that sent FREEZE, in order, and
    /// puts each filesystem's freeze and thaw on the timeline.
    pub(super) fn attach_daemon_history(
        &mut self,
        history: &[HistoryRecord],
        timeline: &mut Timeline,
    ) {
        let backups = history
            .iter()
            .filter(|r| r.report.kind == hv_vss_core::report::TxnKind::Backup);
        let cycles = self.cycles.iter_mut().filter(|c| !c.freeze_skipped);
        for (record, cycle) in backups.zip(cycles) {
            cycle.daemon_verdict = Some(record.report.verdict.clone());
            timeline.add_daemon_record(record);
        }
    }

    /// The daemon's verdict over all cycles: application-consistent only when every backup
    /// was, with why; `None` when the daemon reported no backup (the transport self-test, a
    /// stand-in daemon).
    pub(super) fn consistency(&self) -> Option<(&'static str, String)> {
        let reported: Vec<(usize, &Verdict)> = self
            .cycles
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.daemon_verdict.as_ref().map(|v| (i + 1, v)))
            .collect();
        if reported.is_empty() {
            return None;
        }
        if let Some((i, v)) = reported
            .iter()
            .find(|(_, v)| !matches!(v, Verdict::AppConsistent | Verdict::FsConsistent))
        {
            return Some((
                "failed (the daemon's verdict)",
                format!("cycle {i}: the daemon's report says {}", daemon_verdict(v)),
            ));
        }
        if let Some((i, _)) = reported
            .iter()
            .find(|(_, v)| matches!(v, Verdict::FsConsistent))
        {
            let why = match &self.demo {
                None => "no application client was registered (--no-demo-client)".to_string(),
                Some(DemoReport { error: Some(e), .. }) => {
                    format!("the demo client {DEMO_NAME}: {e}")
                }
                Some(_) => format!(
                    "cycle {i}: a registered client did not ack its freeze or was lost while \
                     frozen"
                ),
            };
            return Some(("filesystem-consistent", why));
        }
        let who = match &self.demo {
            Some(_) => format!(" (the demo client {DEMO_NAME})"),
            None => String::new(),
        };
        Some((
            "application-consistent",
            format!("every registered client acked its freeze and held until the thaw{who}"),
        ))
    }

    pub(super) fn attach_writer_stalls(
        &mut self,
        stalls: &[writer::Stall],
        timeline: &mut Timeline,
    ) {
        for stall in stalls {
            timeline.add_stall(stall);
            if let Some(cycle) = self
                .cycles
                .iter_mut()
                .find(|c| stall.started >= c.span.0 && stall.started <= c.span.1)
            {
                cycle.writer_blocked =
                    Some(cycle.writer_blocked.unwrap_or_default().max(stall.took));
            }
        }
    }

    pub(super) fn negotiated_text(&self) -> String {
        match self.negotiated {
            Some(NegotiationResult::Agreed {
                framework, message, ..
            }) => format!("framework {framework}, VSS {message}"),
            Some(NegotiationResult::Refused { .. }) => "negotiation refused".into(),
            None => "negotiation failed".into(),
        }
    }

    pub(super) fn print(
        &self,
        out: &mut impl Write,
        mode: &Mode,
        exit: &GuestExit,
        log: Option<&Path>,
        timeline: &Timeline,
    ) -> std::io::Result<()> {
        writeln!(out, "hv-vss simulate: a simulated Hyper-V backup")?;
        for line in mode.describe() {
            writeln!(out, "  {line}")?;
        }
        writeln!(out)?;
        timeline.print(out, mode.guest())?;
        writeln!(out)?;
        let ok_cycles = self.cycles.iter().filter(|c| c.steps_ok()).count();
        writeln!(
            out,
            "summary: negotiated {}; {ok_cycles}/{} cycles answered S_OK at every step",
            self.negotiated_text(),
            self.cycles_wanted
        )?;
        for (i, c) in self.cycles.iter().enumerate() {
            let mut parts = Vec::new();
            if let Some(frozen) = c.frozen_window {
                parts.push(format!("frozen window as seen by the host {}", ms(frozen)));
            }
            if let Some(blocked) = c.writer_blocked {
                parts.push(format!("a writer blocked {}", ms(blocked)));
            }
            if let Some(v) = &c.daemon_verdict {
                parts.push(format!("daemon's verdict: {}", describe_verdict(v)));
            }
            let (verdict, why) = c.verdict();
            parts.push(format!("verdict: {verdict} ({why})"));
            writeln!(out, "  cycle {}: {}", i + 1, parts.join("; "))?;
        }
        if self.cycles.len() > 1 {
            for (name, values) in self.series() {
                if let Some(s) = Stats::of(&values) {
                    writeln!(
                        out,
                        "  {name:<28} min {}  median {}  max {}",
                        ms(s.min),
                        ms(s.median),
                        ms(s.max)
                    )?;
                }
            }
        }
        if let Some(DemoReport { error: Some(e), .. }) = &self.demo {
            writeln!(out, "  demo client {DEMO_NAME}: {e}")?;
        }
        writeln!(out, "  {}: {}", exit.name, exit.description)?;
        if let Some(log) = log {
            writeln!(out, "  daemon log: {}", log.display())?;
        }
        let (verdict, why) = self.verdict();
        match self.consistency() {
            Some((level, level_why)) => {
                writeln!(out, "verdict: {verdict}, {level}: {why}; {level_why}")?
            }
            None => writeln!(out, "verdict: {verdict}: {why}")?,
        }
        Ok(())
    }

    /// The per-cycle durations summarised for `--cycles N`.
    pub(super) fn series(&self) -> Vec<(&'static str, Vec<Duration>)> {
        let of = |f: &dyn Fn(&Cycle) -> Option<Duration>| -> Vec<Duration> {
            self.cycles.iter().filter_map(f).collect()
        };
        vec![
            ("frozen window (host)", of(&|c| c.frozen_window)),
            ("writer blocked", of(&|c| c.writer_blocked)),
            (
                "FREEZE round trip",
                of(&|c| c.step_latency(VssOperation::FREEZE)),
            ),
            (
                "THAW round trip",
                of(&|c| c.step_latency(VssOperation::THAW)),
            ),
            (
                "snapshot copy",
                of(&|c| c.snapshots.iter().map(|s| s.1).max()),
            ),
        ]
    }

    pub(super) fn to_json(
        &self,
        mode: &Mode,
        exit: &GuestExit,
        log: Option<&Path>,
        timeline: &Timeline,
    ) -> serde_json::Value {
        let (mode_name, daemon, mounts) = match mode {
            Mode::Loopback => ("guest-loopback", None, Vec::new()),
            Mode::Daemon { daemon, mounts, .. } => (
                "daemon",
                Some(daemon.display().to_string()),
                mounts.iter().map(|m| m.display().to_string()).collect(),
            ),
        };
        let negotiated = match self.negotiated {
            Some(NegotiationResult::Agreed {
                framework, message, ..
            }) => json!({"framework": framework.to_string(), "message": message.to_string()}),
            _ => serde_json::Value::Null,
        };
        let summary: serde_json::Map<String, serde_json::Value> = self
            .series()
            .into_iter()
            .filter_map(|(name, values)| {
                Stats::of(&values).map(|s| {
                    (
                        name.replace(['(', ')'], "").trim().replace(' ', "_") + "_ms",
                        json!({"min": msf(s.min), "median": msf(s.median), "max": msf(s.max)}),
                    )
                })
            })
            .collect();
        let (verdict, why) = self.verdict();
        let consistency = self.consistency();
        json!({
            "mode": mode_name,
            "daemon": daemon,
            "mounts": mounts,
            "daemon_log": log.map(|l| l.display().to_string()),
            "negotiation": step_json(&self.negotiation.report),
            "negotiated": negotiated,
            "cycles": self.cycles.iter().map(|c| {
                let (v, why) = c.verdict();
                json!({
                    "steps": c.steps.iter().map(|s| step_json(&s.report)).collect::<Vec<_>>(),
                    "freeze_skipped": c.freeze_skipped,
                    "frozen_window_ms": c.frozen_window.map(msf),
                    "snapshot_window_ms": c.snapshot_window.map(msf),
                    "writer_blocked_ms": c.writer_blocked.map(msf),
                    "snapshots": c.snapshots.iter().map(|(bytes, took)| json!({"bytes": bytes, "copy_ms": msf(*took)})).collect::<Vec<_>>(),
                    "daemon_verdict": c.daemon_verdict.as_ref().map(daemon_verdict),
                    "verdict": v,
                    "verdict_detail": why,
                    "ok": c.ok(),
                })
            }).collect::<Vec<_>>(),
            "summary": summary,
            "timeline": timeline.to_json(mode.guest()),
            "demo_client": self.demo.as_ref().map(DemoReport::to_json),
            "verdicts": self.cycles.iter().filter_map(|c| c.daemon_verdict.as_ref().map(verdict_kind)).collect::<Vec<_>>(),
            "guest_exit": {"clean": exit.clean, "description": exit.description},
            "verdict": verdict,
            "verdict_detail": why,
            "consistency": consistency.as_ref().map(|c| c.0),
            "consistency_detail": consistency.map(|c| c.1),
            "ok": self.ok() && exit.clean,
        })
    }
}

/// The daemon's verdict as its history names it, with the failure's reason:
/// `app_consistent`, `failed (auto_thaw)`.
pub(super) fn daemon_verdict(v: &Verdict) -> String {
    match serde_json::to_value(v) {
        Ok(value) => match (&value["kind"], &value["reason"]["kind"]) {
            (serde_json::Value::String(k), serde_json::Value::String(r)) => format!("{k} ({r})"),
            (serde_json::Value::String(k), _) => k.clone(),
            _ => value.to_string(),
        },
        Err(_) => format!("{v:?}"),
    }
}

/// The verdict's kind alone, as the history names it (`app_consistent`).
fn verdict_kind(v: &Verdict) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|value| value["kind"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{v:?}"))
}

/// The daemon's verdict of a backup as the summary says it.
fn describe_verdict(v: &Verdict) -> String {
    match v {
        Verdict::AppConsistent => "application-consistent (every registered client acked)".into(),
        Verdict::FsConsistent => {
            "filesystem-consistent (no application client took part, or one did not ack)".into()
        }
        other => daemon_verdict(other),
    }
}

/// min, median and max of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stats {
    pub(super) min: Duration,
    pub(super) median: Duration,
    pub(super) max: Duration,
}

impl Stats {
    pub(super) fn of(values: &[Duration]) -> Option<Self> {
        let mut v = values.to_vec();
        v.sort();
        let n = v.len();
        if n == 0 {
            return None;
        }
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2
        };
        Some(Self {
            min: v[0],
            median,
            max: v[n - 1],
        })
    }
}

pub(super) fn status_name(s: Option<HvStatus>) -> String {
    match s {
        Some(s) => s
            .name()
            .map_or_else(|| format!("{:#010x}", s.0), str::to_string),
        None => "no reply".into(),
    }
}

pub(super) fn step_json(s: &StepReport) -> serde_json::Value {
    json!({
        "op": s.step.to_string(),
        "trans_id": format!("{:#x}", s.trans_id),
        "status": s.status.map(|_| status_name(s.status)),
        "latency_ms": s.latency.map(msf),
        "error": s.error,
    })
}

pub(super) fn msf(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(super) fn ms(d: Duration) -> String {
    format!("{:.3} ms", msf(d))
}
