//! Pieces the frozen-window benchmarks share (`crates/freezer/benches/freeze_window.rs`,
//! `crates/daemon/benches/daemon_cycle.rs`): benches cannot import each other, so the
//! baseline and the load they measure under live here, once.
//!
//! - [`stock_freeze_thaw`]: the stock Linux daemon's method (tools/hv/hv_vss_daemon.c): for
//!   each filesystem in mount order open, FIFREEZE, close; then the same with FITHAW.
//! - [`prepare_dirty`]: old data removed and written back, then fresh dirty data in each
//!   filesystem, so every trial starts with the same amount to write back.
//! - [`Writers`]: one appending writer per filesystem, each recording its longest `write()`:
//!   the frozen window as applications feel it.
//!
//! Use only on filesystems the benchmark created ([`crate::LoopFs`]).

use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Bytes of each [`Writers`] write (a page).
pub const WRITE_BYTES: usize = 4096;

/// The file each [`Writers`] writer appends to, at the root of its filesystem.
pub const APPENDER_FILE: &str = "appender.log";

/// Should the benchmark binary `name` measure? Not when `cargo test --benches` only probes
/// it with `--list`, and not without root (it says why on stderr).
pub fn should_run(name: &str) -> bool {
    if std::env::args().any(|a| a == "--list") {
        return false;
    }
    if !crate::is_root() {
        eprintln!("{name}: skipped, needs root (loop mounts and FIFREEZE)");
        return false;
    }
    true
}

/// A count from the environment variable `var` (`TRIALS`, `CYCLES`): its value if it is a
/// whole number above 0, else `default`.
pub fn env_count(var: &str, default: usize) -> usize {
    count_or(std::env::var(var).ok().as_deref(), default)
}

fn count_or(value: Option<&str>, default: usize) -> usize {
    value
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

/// The stock daemon's method on `mounts`: open, FIFREEZE, close for each in the given
/// (mount) order; then the same with FITHAW. Returns (first FIFREEZE → all frozen, first
/// FIFREEZE → all thawed). A filesystem found not frozen at thaw time is an error.
pub fn stock_freeze_thaw(mounts: &[PathBuf]) -> anyhow::Result<(Duration, Duration)> {
    let t = Instant::now();
    for mp in mounts {
        crate::freeze_path(mp)?;
    }
    let frozen = t.elapsed();
    for mp in mounts {
        if !crate::thaw_path(mp)? {
            bail!("FITHAW {}: was not frozen", mp.display());
        }
    }
    Ok((frozen, t.elapsed()))
}

/// The best a freezer can do once nothing is left to write: FIFREEZE on every filesystem of
/// `mounts` at once (one thread each), then FITHAW on every one at once as soon as all are
/// frozen. Returns (first FIFREEZE → all frozen, first FIFREEZE → all thawed). For the
/// floor of the frozen-window benchmarks: call it on filesystems that were just flushed.
pub fn parallel_freeze_thaw(mounts: &[PathBuf]) -> anyhow::Result<(Duration, Duration)> {
    parallel_freeze_thaw_around(mounts, |freeze| freeze())
}

/// [`parallel_freeze_thaw`] with `around` wrapped around the FIFREEZE calls (its argument
/// makes them, and its time counts): for a floor that sets something up for exactly their
/// duration, as a freezer does (the daemon bench's expedited RCU grace periods).
pub fn parallel_freeze_thaw_around(
    mounts: &[PathBuf],
    around: impl FnOnce(&dyn Fn() -> anyhow::Result<()>) -> anyhow::Result<()>,
) -> anyhow::Result<(Duration, Duration)> {
    let t = Instant::now();
    around(&|| on_each_at_once(mounts, crate::freeze_path))?;
    let frozen = t.elapsed();
    on_each_at_once(mounts, |mp| {
        if crate::thaw_path(mp)? {
            Ok(())
        } else {
            bail!("FITHAW {}: was not frozen", mp.display())
        }
    })?;
    Ok((frozen, t.elapsed()))
}

/// `syncfs` on every filesystem of `mounts` at once; how long until all returned.
pub fn parallel_syncfs(mounts: &[PathBuf]) -> anyhow::Result<Duration> {
    let t = Instant::now();
    on_each_at_once(mounts, |mp| {
        let fd = hv_vss_sys::fs::open_mount_point(mp)?;
        Ok(hv_vss_sys::fs::syncfs(fd.as_fd())?)
    })?;
    Ok(t.elapsed())
}

/// `op` on every path of `mounts` at once, one thread each; the first error, if any.
pub fn on_each_at_once(
    mounts: &[PathBuf],
    op: impl Fn(&Path) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<()> {
    std::thread::scope(|s| {
        let op = &op;
        let jobs: Vec<_> = mounts.iter().map(|mp| s.spawn(move || op(mp))).collect();
        jobs.into_iter()
            .try_for_each(|j| j.join().map_err(|_| anyhow::anyhow!("panicked"))?)
    })
}

/// Before trial `trial`: in every filesystem of `mounts` (in parallel) remove earlier
/// `dirty-*` files and the [`APPENDER_FILE`] and write that back (syncfs); then write
/// `dirty_mib` MiB of fresh, not yet written back, data to `dirty-<trial>`.
pub fn prepare_dirty(mounts: &[PathBuf], trial: usize, dirty_mib: usize) -> anyhow::Result<()> {
    on_each_at_once(mounts, |mp| {
        for entry in std::fs::read_dir(mp)?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("dirty-") || name == APPENDER_FILE {
                std::fs::remove_file(entry.path())?;
            }
        }
        let fd = hv_vss_sys::fs::open_mount_point(mp)?;
        hv_vss_sys::fs::syncfs(fd.as_fd())?;
        Ok(())
    })?;
    on_each_at_once(mounts, |mp| {
        let chunk = vec![0x5au8; 1024 * 1024];
        let mut f = std::fs::File::create(mp.join(format!("dirty-{trial}")))?;
        for _ in 0..dirty_mib {
            f.write_all(&chunk)?;
        }
        Ok(())
    })
}

/// One writer thread per filesystem, appending [`WRITE_BYTES`] buffered writes to
/// [`APPENDER_FILE`] every millisecond, each recording its longest single `write()`.
/// Dropping it stops the writers without waiting for them.
#[derive(Debug)]
pub struct Writers {
    stop: Arc<AtomicBool>,
    max_us: Vec<Arc<AtomicU64>>,
    threads: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Writers {
    /// Starts one writer in each of `mounts`.
    pub fn start(mounts: &[PathBuf]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut max_us = Vec::new();
        let mut threads = Vec::new();
        for mp in mounts {
            let max = Arc::new(AtomicU64::new(0));
            max_us.push(max.clone());
            let stop = stop.clone();
            let path = mp.join(APPENDER_FILE);
            threads.push(std::thread::spawn(move || {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?;
                let buf = [b'w'; WRITE_BYTES];
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    f.write_all(&buf)?;
                    max.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(())
            }));
        }
        Self {
            stop,
            max_us,
            threads,
        }
    }

    /// Forgets the longest writes so far (call once the writers are under way).
    pub fn reset(&self) {
        self.max_us
            .iter()
            .for_each(|m| m.store(0, Ordering::Relaxed));
    }

    /// The longest write of any writer since the last reset, µs, while they go on.
    pub fn longest(&self) -> u64 {
        self.max_us
            .iter()
            .map(|m| m.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }

    /// Stops the writers; the longest write of any of them since the last reset, µs.
    pub fn finish(mut self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join()
                .map_err(|_| anyhow::anyhow!("writer panicked"))?
                .context("writer")?;
        }
        Ok(self.longest())
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_positive_whole_numbers_else_the_default() {
        assert_eq!(count_or(Some("3"), 7), 3);
        for bad in [
            None,
            Some(""),
            Some("0"),
            Some("-1"),
            Some("2.5"),
            Some("many"),
        ] {
            assert_eq!(count_or(bad, 7), 7, "{bad:?}");
        }
    }

    #[test]
    fn prepare_dirty_replaces_old_data_and_writers_append_until_finished() {
        let dir = tempfile::tempdir().unwrap();
        let mounts = vec![dir.path().to_path_buf()];
        std::fs::write(dir.path().join(APPENDER_FILE), b"old").unwrap();
        std::fs::write(dir.path().join("keep"), b"k").unwrap();
        prepare_dirty(&mounts, 0, 1).unwrap();
        prepare_dirty(&mounts, 1, 2).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["dirty-1", "keep"]);
        let len = std::fs::metadata(dir.path().join("dirty-1")).unwrap().len();
        assert_eq!(len, 2 * 1024 * 1024);

        let writers = Writers::start(&mounts);
        std::thread::sleep(Duration::from_millis(50));
        writers.reset();
        std::thread::sleep(Duration::from_millis(20));
        writers.finish().unwrap();
        let appended = std::fs::metadata(dir.path().join(APPENDER_FILE))
            .unwrap()
            .len();
        assert!(
            appended > 0 && appended % WRITE_BYTES as u64 == 0,
            "{appended}"
        );
    }
}
