use std::collections::BTreeMap;

use super::*;
use crate::parse;

fn scrape(text: &str) -> prometheus_parse::Scrape {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("Prometheus text format")
}

/// value of `name` with the one label `key=value` (or no label).
fn value(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    label: Option<(&str, &str)>,
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[test]
fn the_history_gives_every_family_with_the_daemon_down() {
    let loaded = parse(crate::tests::SAMPLE);
    let text = render(&loaded.records, 2, Live::default());
    let s = scrape(&text);
    assert_eq!(value(&s, "hv_vss_up", None), Some(0.0), "{text}");
    assert_eq!(
        value(
            &s,
            "hv_vss_backups_total",
            Some(("verdict", "fs_consistent"))
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&s, "hv_vss_backups_total", Some(("verdict", "failed"))),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(&s, "hv_vss_failures_total", Some(("reason", "auto_thaw"))),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&s, "hv_vss_failures_total", Some(("reason", "fs"))),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value(&s, "hv_vss_auto_thaws_total", None), Some(1.0));
    assert_eq!(value(&s, "hv_vss_guardian_thaws_total", None), Some(0.0));
    assert_eq!(
        value(&s, "hv_vss_history_entries", Some(("state", "read"))),
        Some(5.0)
    );
    assert_eq!(
        value(&s, "hv_vss_history_entries", Some(("state", "skipped"))),
        Some(2.0)
    );
    let last = value(&s, "hv_vss_last_success_timestamp_seconds", None).unwrap();
    assert!((last - loaded.records[1].unix_ms as f64 / 1e3).abs() < 1e-3);
    // Histograms: the two backups that have a frozen window; fs stage latencies.
    let window: BTreeMap<_, _> = s
        .samples
        .iter()
        .filter(|x| x.metric.starts_with("hv_vss_frozen_window_seconds"))
        .map(|x| (x.metric.clone(), x.value.clone()))
        .collect();
    match window.get("hv_vss_frozen_window_seconds") {
        Some(prometheus_parse::Value::Histogram(h)) => {
            assert_eq!(h.last().unwrap().count, 2.0, "{h:?}");
        }
        other => panic!("frozen window histogram: {other:?}\n{text}"),
    }
    let stages: Vec<&str> = s
        .samples
        .iter()
        .filter(|x| x.metric == "hv_vss_stage_duration_seconds")
        .filter_map(|x| x.labels.get("stage"))
        .collect();
    for stage in ["check_fs", "freeze_fs", "thaw_fs"] {
        assert!(stages.contains(&stage), "{stage} in {stages:?}\n{text}");
    }
    // Only the running daemon knows these.
    assert!(!text.contains("hv_vss_connected_apps"));
    assert!(!text.contains("hv_vss_log_lines_dropped"));
    for family in FAMILIES.iter().take(10) {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family}\n{text}"
        );
    }
}

#[test]
fn the_running_daemon_adds_its_live_families() {
    let text = render(
        &[],
        0,
        Live {
            up: true,
            connected_apps: Some(3),
            log_lines_dropped: Some(7),
        },
    );
    let s = scrape(&text);
    assert_eq!(value(&s, "hv_vss_up", None), Some(1.0), "{text}");
    assert_eq!(
        value(&s, "hv_vss_connected_apps", None),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(&s, "hv_vss_log_lines_dropped_total", None),
        Some(7.0),
        "{text}"
    );
    // Nothing succeeded yet: no timestamp rather than 1970.
    assert!(
        !text.contains("hv_vss_last_success_timestamp_seconds"),
        "{text}"
    );
}

#[test]
fn freezes_are_counted_by_how_they_used_rcu_grace_periods() {
    let mut loaded = parse(crate::tests::SAMPLE);
    // The sample's two freeze reports predate the field (off); make one unavailable.
    let freeze = loaded
        .records
        .iter_mut()
        .filter_map(|r| r.freeze.as_mut())
        .nth(1)
        .expect("two freeze reports in the sample");
    freeze.expedite = Expedite::Unavailable {
        reason: "/sys/kernel/rcu_expedited: Read-only file system".into(),
    };
    let text = render(&loaded.records, 0, Live::default());
    let s = scrape(&text);
    let count = |state| value(&s, "hv_vss_freezes_total", Some(("grace_periods", state)));
    assert_eq!(count("off"), Some(1.0), "{text}");
    assert_eq!(count("unavailable"), Some(1.0), "{text}");
    assert_eq!(count("expedited"), None, "{text}");
}
