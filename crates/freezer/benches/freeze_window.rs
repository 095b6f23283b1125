//! Frozen window benchmark: hv-vss's freezer against the stock Linux daemon's method.
//!
//! Setup: 8 loop-mounted ext4 filesystems (images in /tmp), each with 64 MiB of fresh dirty
//! data, and one writer per filesystem appending 4 KiB buffered writes every millisecond.
//! Per trial and method it measures:
//! (a) the longest single write() call of any writer: the frozen window as applications
//!     feel it;
//! (b) the whole freeze + thaw time with a zero hold.
//!
//! Methods, both in every trial of the same run, stock first:
//! - stock: for each filesystem in mount order, open, FIFREEZE, close; then the same for
//!   FITHAW (tools/hv/hv_vss_daemon.c; `hv_vss_testutil::bench::stock_freeze_thaw`, which
//!   the daemon's bench uses too);
//! - hv-vss, one pass: `hv_vss_freezer::freeze` (open, journal, one parallel syncfs pass,
//!   parallel FIFREEZE) then `FrozenSet::thaw` (reverse order), with
//!   `FlushPolicy::Converge { budget: 0 }`. The plan is made beforehand, as the daemon makes
//!   it at CHECK time.
//! - hv-vss, converge: the same with the default policy (passes repeated while they shrink,
//!   within `DEFAULT_CONVERGE_BUDGET`), to measure what the repeats gain.
//!
//! Both hv-vss methods use the default configuration, so their FIFREEZE calls run with the
//! kernel's expedited RCU grace periods (`hv_vss_freezer::expedite`); the table's last
//! line says how many of their freezes did (the stock method never does).
//!
//! Run (root): `cargo bench -p hv-vss-freezer --bench freeze_window` (env `TRIALS`, default
//! 5). Not a test: nothing is asserted; the medians are printed as a Markdown table.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hv_vss_freezer::{
    FlushPolicy, FreezeOptions, FreezerConfig, MountSource, Selection, make_plan,
};
use hv_vss_testutil::bench::{Writers, env_count, prepare_dirty, should_run, stock_freeze_thaw};
use hv_vss_testutil::{FsKind, LoopFs, state_dir};

const FILESYSTEMS: usize = 8;
const DIRTY_MIB: usize = 64;

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    if !should_run("freeze_window") {
        return;
    }
    let trials = env_count("TRIALS", 5);
    let filesystems: Vec<LoopFs> = (0..FILESYSTEMS)
        .map(|_| LoopFs::create(FsKind::Ext4, 256, None).unwrap())
        .collect();
    let mounts: Vec<PathBuf> = filesystems
        .iter()
        .map(|f| f.mount_point().to_path_buf())
        .collect();
    let refs: Vec<&Path> = mounts.iter().map(PathBuf::as_path).collect();
    let plan = make_plan(
        &MountSource::current(),
        &Selection::Explicit(refs.iter().map(|p| p.to_path_buf()).collect()),
        &FreezerConfig::default().compile().unwrap(),
    )
    .unwrap();
    let state = state_dir().unwrap();
    let converge = FreezeOptions::new(&FreezerConfig::default(), state.path());
    let one_pass = FreezeOptions {
        flush: FlushPolicy::Converge {
            budget: Duration::ZERO,
        },
        ..converge.clone()
    };

    const METHODS: [&str; 3] = ["stock", "one pass", "converge"];
    // Per method: longest blocked write, freeze+thaw, frozen window, flush passes.
    let mut blocked: [Vec<u64>; 3] = Default::default();
    let mut total: [Vec<u64>; 3] = Default::default();
    let mut window: [Vec<u64>; 3] = Default::default();
    let mut passes: [Vec<u64>; 3] = Default::default();
    let mut expedited = 0usize;
    for trial in 0..trials {
        for (m, method) in METHODS.into_iter().enumerate() {
            prepare_dirty(&mounts, trial, DIRTY_MIB).unwrap();
            let writers = Writers::start(&mounts);
            std::thread::sleep(Duration::from_millis(100));
            writers.reset();
            let t = Instant::now();
            if m == 0 {
                stock_freeze_thaw(&mounts).unwrap();
            } else {
                let options = if m == 1 { &one_pass } else { &converge };
                let mut frozen = hv_vss_freezer::freeze(&plan, options).unwrap();
                passes[m].push(frozen.report().flush_passes_us.len() as u64);
                if frozen.report().expedite == hv_vss_freezer::Expedite::Expedited {
                    expedited += 1;
                }
                let report = frozen.thaw();
                assert!(report.complete);
                window[m].push(report.frozen_window_us);
            }
            let took = t.elapsed().as_micros() as u64;
            std::thread::sleep(Duration::from_millis(50));
            let worst = writers.finish().unwrap();
            eprintln!(
                "trial {trial} {method:>8}: longest write {worst:>8} us, freeze+thaw {took:>8} us"
            );
            blocked[m].push(worst);
            total[m].push(took);
        }
    }
    let ms = |us: u64| format!("{:.1} ms", us as f64 / 1000.0);
    let (sb, st) = (median(blocked[0].clone()), median(total[0].clone()));
    println!(
        "| method (median of {trials}) | longest blocked write | ratio to stock | freeze+thaw, zero hold | ratio to stock | frozen window | flush passes |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (m, method) in METHODS.into_iter().enumerate() {
        let (b, t) = (median(blocked[m].clone()), median(total[m].clone()));
        let (w, p) = if m == 0 {
            ("(= freeze+thaw)".to_string(), "–".to_string())
        } else {
            (
                ms(median(window[m].clone())),
                format!(
                    "{}–{}",
                    passes[m].iter().min().unwrap_or(&0),
                    passes[m].iter().max().unwrap_or(&0)
                ),
            )
        };
        println!(
            "| {method} | {} | {:.3}x | {} | {:.3}x | {w} | {p} |",
            ms(b),
            b as f64 / sb as f64,
            ms(t),
            t as f64 / st as f64
        );
    }
    println!(
        "hv-vss freezes with expedited RCU grace periods: {expedited} of {}",
        trials * (METHODS.len() - 1)
    );
    drop(filesystems);
}
