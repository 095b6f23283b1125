//! Frozen window benchmark: hv-vss's freezer against the stock Linux daemon's method.
//!
//! Setup: 8 loop-mounted ext4 filesystems (images in /tmp), each with 64 MiB of fresh dirty
//! data, and one writer per filesystem appending 4 KiB buffered writes every millisecond.
//! Per trial and method it measures:
//! (a) the longest single write() call of any writer: the frozen window as applications
//!     feel it;
//! (b) the whole freeze + thaw time with a zero hold.
//!
//! Methods, alternated within the same run:
//! - stock: for each filesystem in mount order, open, FIFREEZE, close; then the same for
//!   FITHAW (tools/hv/hv_vss_daemon.c);
//! - hv-vss: `hv_vss_freezer::freeze` (open, journal, parallel syncfs, parallel FIFREEZE)
//!   then `FrozenSet::thaw` (reverse order). The plan is made beforehand, as the daemon
//!   makes it at CHECK time.
//!
//! Run (root): `cargo bench -p hv-vss-freezer --bench freeze_window` (env `TRIALS`, default
//! 5). Not a test: nothing is asserted; the medians are printed as a Markdown table.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hv_vss_freezer::{FreezeOptions, FreezerConfig, MountSource, Selection, make_plan};
use hv_vss_testutil::{FsKind, LoopFs, state_dir};

const FILESYSTEMS: usize = 8;
const DIRTY_MIB: usize = 64;
const WRITE_BYTES: usize = 4096;

struct Writers {
    stop: Arc<AtomicBool>,
    max_us: Vec<Arc<AtomicU64>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn start_writers(mounts: &[PathBuf]) -> Writers {
    let stop = Arc::new(AtomicBool::new(false));
    let mut max_us = Vec::new();
    let mut threads = Vec::new();
    for mp in mounts {
        let max = Arc::new(AtomicU64::new(0));
        max_us.push(max.clone());
        let stop = stop.clone();
        let path = mp.join("appender.log");
        threads.push(std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap();
            let buf = [b'w'; WRITE_BYTES];
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                f.write_all(&buf).unwrap();
                let us = t.elapsed().as_micros() as u64;
                max.fetch_max(us, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        }));
    }
    Writers {
        stop,
        max_us,
        threads,
    }
}

impl Writers {
    fn reset(&self) {
        self.max_us
            .iter()
            .for_each(|m| m.store(0, Ordering::Relaxed));
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.into_iter().for_each(|t| t.join().unwrap());
        self.max_us
            .iter()
            .map(|m| m.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }
}

fn prepare(mounts: &[PathBuf], trial: usize) {
    // Start clean: old data removed and written back, then fresh dirty data everywhere.
    std::thread::scope(|s| {
        for mp in mounts {
            s.spawn(move || {
                for entry in std::fs::read_dir(mp).unwrap().flatten() {
                    if entry.file_name().to_string_lossy().starts_with("dirty-") {
                        std::fs::remove_file(entry.path()).unwrap();
                    }
                }
                let _ = std::fs::remove_file(mp.join("appender.log"));
                let fd = hv_vss_sys::fs::open_mount_point(mp).unwrap();
                hv_vss_sys::fs::syncfs(fd.as_fd()).unwrap();
            });
        }
    });
    std::thread::scope(|s| {
        for mp in mounts {
            s.spawn(move || {
                let chunk = vec![0x5au8; 1024 * 1024];
                let mut f = std::fs::File::create(mp.join(format!("dirty-{trial}"))).unwrap();
                for _ in 0..DIRTY_MIB {
                    f.write_all(&chunk).unwrap();
                }
            });
        }
    });
}

fn stock_method(mounts: &[PathBuf]) {
    for mp in mounts {
        let fd = hv_vss_sys::fs::open_mount_point(mp).unwrap();
        hv_vss_sys::fs::freeze(fd.as_fd()).unwrap();
    }
    for mp in mounts {
        let fd = hv_vss_sys::fs::open_mount_point(mp).unwrap();
        hv_vss_sys::fs::thaw(fd.as_fd()).unwrap();
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list
    }
    if !hv_vss_testutil::is_root() {
        eprintln!("freeze_window: skipped, needs root (loop mounts and FIFREEZE)");
        return;
    }
    let trials: usize = std::env::var("TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(5);
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
            prepare(&mounts, trial);
            let writers = start_writers(&mounts);
            std::thread::sleep(Duration::from_millis(100));
            writers.reset();
            let t = Instant::now();
            if method == "stock" {
                stock_method(&mounts);
            } else {
                let mut frozen = hv_vss_freezer::freeze(&plan, &options).unwrap();
                let report = frozen.thaw();
                assert!(report.complete);
                ours_window.push(report.frozen_window_us);
            }
            let total = t.elapsed().as_micros() as u64;
            std::thread::sleep(Duration::from_millis(50));
            let blocked = writers.finish();
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
