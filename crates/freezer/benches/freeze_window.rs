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
//! - hv-vss: `hv_vss_freezer::freeze` (open, journal, parallel syncfs, parallel FIFREEZE)
//!   then `FrozenSet::thaw` (reverse order). The plan is made beforehand, as the daemon
//!   makes it at CHECK time.
//!
//! Run (root): `cargo bench -p hv-vss-freezer --bench freeze_window` (env `TRIALS`, default
//! 5). Not a test: nothing is asserted; the medians are printed as a Markdown table.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hv_vss_freezer::{FreezeOptions, FreezerConfig, MountSource, Selection, make_plan};
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
    let options = FreezeOptions::new(&FreezerConfig::default(), state.path());

    let (mut stock_blocked, mut stock_total, mut ours_blocked, mut ours_total) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut ours_window = Vec::new();
    for trial in 0..trials {
        for method in ["stock", "hv-vss"] {
            prepare_dirty(&mounts, trial, DIRTY_MIB).unwrap();
            let writers = Writers::start(&mounts);
            std::thread::sleep(Duration::from_millis(100));
            writers.reset();
            let t = Instant::now();
            if method == "stock" {
                stock_freeze_thaw(&mounts).unwrap();
            } else {
                let mut frozen = hv_vss_freezer::freeze(&plan, &options).unwrap();
                let report = frozen.thaw();
                assert!(report.complete);
                ours_window.push(report.frozen_window_us);
            }
            let total = t.elapsed().as_micros() as u64;
            std::thread::sleep(Duration::from_millis(50));
            let blocked = writers.finish().unwrap();
            eprintln!(
                "trial {trial} {method:>6}: longest write {blocked:>8} us, freeze+thaw {total:>8} us"
            );
            if method == "stock" {
                stock_blocked.push(blocked);
                stock_total.push(total);
            } else {
                ours_blocked.push(blocked);
                ours_total.push(total);
            }
        }
    }
    let (sb, st, ob, ot) = (
        median(stock_blocked),
        median(stock_total),
        median(ours_blocked),
        median(ours_total),
    );
    let ms = |us: u64| format!("{:.1} ms", us as f64 / 1000.0);
    println!("| metric (median of {trials}) | stock method | hv-vss | ratio | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| (a) longest blocked write | {} | {} | {:.3}x | <= 0.10x |",
        ms(sb),
        ms(ob),
        ob as f64 / sb as f64
    );
    println!(
        "| (b) freeze+thaw, zero hold | {} | {} | {:.3}x | <= 0.6x |",
        ms(st),
        ms(ot),
        ot as f64 / st as f64
    );
    println!(
        "| hv-vss frozen window (first FIFREEZE to last FITHAW) | | {} | | |",
        ms(median(ours_window))
    );
    drop(filesystems);
}
