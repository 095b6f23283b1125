//! Flush ahead: write dirty data back between a passing check (HOT_BACKUP) and FREEZE, so
//! the freeze finds little left to write.
//!
//! # Mechanism
//!
//! [`FlushAhead::start`] gives each planned filesystem a thread that calls `syncfs` on it,
//! then again every [`PASS_INTERVAL`] (writers keep dirtying data until FREEZE), until the
//! budget given to `start` runs out or [`FlushAhead::cancel_and_wait`] is called; at most
//! [`CONCURRENCY`] calls run at once, so the writeback does not stall writers the way a
//! burst on every filesystem does. Nothing
//! is frozen meanwhile, so a flush delays no answer and blocks no application (writers and
//! `syncfs` run side by side).
//!
//! FREEZE calls [`FlushAhead::cancel_and_wait`] before its own flush: no new pass starts
//! after the cancel (the flag and the in-flight record share one lock), and the calls
//! already running are waited for, bounded by the freeze deadline. Waiting costs nothing
//! real: such a call writes exactly what the freeze's own `syncfs` would have to write, and
//! FIFREEZE could not start before it anyway (the kernel's `freeze_super` takes `s_umount`
//! for writing, which a running `syncfs` holds for reading). So when it returns Ok, no flush
//! of ours runs and none will start: none ever runs while anything is frozen.
//!
//! A flush thread stopped by `cancel_and_wait` does not exit until the freeze is over
//! ([`FlushAhead::release`], at most [`MAX_HOLD`]): a thread's exit right before a FIFREEZE
//! makes the FIFREEZE slower ([`crate::exit_gate`]). It makes no call meanwhile.
//!
//! # Hung flushes
//!
//! A `syncfs` that does not return by the deadline (say, a loop filesystem whose image lies
//! on a filesystem someone else froze) is reported by `cancel_and_wait` ([`HungFlush`]) and
//! remembered per device: its thread stays in the kernel, and no other flush of that device
//! is started until the call returns (a second call would only hang too). FREEZE then fails
//! at once instead of freezing: FIFREEZE on that filesystem would wait for the same call.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hv_vss_sys::fs::DevNum;

use crate::exit_gate::MAX_HOLD;
use crate::plan::Plan;

/// Pause between two passes on one filesystem.
pub const PASS_INTERVAL: Duration = Duration::from_millis(100);

/// `syncfs` calls of the flush ahead running at once, across filesystems. Measured with 8
/// loop ext4 on one disk, 64 MiB dirty each, writers running (docs/BENCHMARKS.md): all 8
/// at once stalled the writers for ~60 ms during the gap (each loop filesystem's journal
/// commit waits behind the others' writeback on the shared disk); one at a time stalled
/// them ~10 ms but did not always reach the last filesystems before FREEZE; two at a time
/// kept the stall near 15 ms and had every filesystem flushed before FREEZE.
pub const CONCURRENCY: usize = 2;

/// Flushes that did not return by a cancel's deadline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("syncfs has not returned on {} (running for {:?})", .mount_points.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "), .running_for)]
pub struct HungFlush {
    /// Their mount points.
    pub mount_points: Vec<PathBuf>,
    /// Their devices.
    pub devs: Vec<DevNum>,
    /// How long the oldest of them has been running.
    pub running_for: Duration,
}

/// What [`FlushAhead::start`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlushAheadStart {
    /// Filesystems a flush thread was started for.
    pub started: Vec<PathBuf>,
    /// Filesystems whose flush thread from an earlier start still runs (it carries on).
    pub running: Vec<PathBuf>,
    /// Filesystems left alone because an earlier flush of theirs has not returned.
    pub hung: Vec<PathBuf>,
    /// Filesystems that could not be opened (the freeze will say why).
    pub unopened: Vec<PathBuf>,
}

#[derive(Debug)]
struct InFlight {
    mount_point: PathBuf,
    since: Instant,
}

#[derive(Debug, Default)]
struct State {
    cancelled: bool,
    /// Set by [`FlushAhead::cancel_and_wait`] (a freeze is about to start): a flush thread
    /// that stops does not exit until [`FlushAhead::release`] (the freeze is over), since a
    /// thread's exit right before a FIFREEZE makes it slower ([`crate::exit_gate`]).
    hold_exits: bool,
    /// When the threads were told to hold (they give up after [`MAX_HOLD`]).
    held_since: Option<Instant>,
    /// Passes stop at this instant.
    until: Option<Instant>,
    /// Devices the current start asked for.
    wanted: BTreeSet<DevNum>,
    /// Devices with a flush thread alive.
    threads: BTreeSet<DevNum>,
    /// `syncfs` calls running now.
    in_flight: BTreeMap<DevNum, InFlight>,
    /// Devices whose call missed a cancel's deadline and has not returned yet.
    hung: BTreeSet<DevNum>,
    /// `syncfs` calls started, per device, since this flusher was made.
    calls: BTreeMap<DevNum, u64>,
    /// Per device: its last pass.
    last_pass: BTreeMap<DevNum, Pass>,
    /// Per device: its shortest pass so far (a clean filesystem's cost of a `syncfs`).
    fastest: BTreeMap<DevNum, Duration>,
    /// The most calls that ran at once.
    peak_in_flight: usize,
}

/// One finished `syncfs` pass on a filesystem.
#[derive(Debug, Clone, Copy)]
struct Pass {
    ended: Instant,
    took: Duration,
    /// Sectors its block device wrote during the pass (`/sys/dev/block/M:m/stat`), when the
    /// device has such a file (not btrfs's anonymous devices).
    wrote_sectors: Option<u64>,
}

impl Pass {
    /// Did it find the filesystem clean? It wrote nothing (where that can be read), else it
    /// took at most twice the fastest pass (a clean pass's cost on this machine).
    fn clean(&self, fastest: Duration) -> bool {
        match self.wrote_sectors {
            Some(sectors) => sectors == 0,
            None => self.took <= fastest * 2,
        }
    }
}

/// Sectors written by the block device `dev` so far: field 7 of `/sys/dev/block/M:m/stat`
/// (Documentation/block/stat.rst). None if the device has no such file or it cannot be read.
fn sectors_written(dev: DevNum) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/sys/dev/block/{dev}/stat")).ok()?;
    parse_sectors_written(&text)
}

/// The "write sectors" field (the 7th) of a block device's `stat` file.
pub fn parse_sectors_written(stat: &str) -> Option<u64> {
    stat.split_ascii_whitespace().nth(6)?.parse().ok()
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when a call returns and when the flusher is cancelled.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The flusher of one daemon (or CLI run): starts and cancels flush-ahead passes and keeps
/// the hung devices across transactions.
#[derive(Debug, Default)]
pub struct FlushAhead {
    shared: Arc<Shared>,
}

impl FlushAhead {
    /// A flusher with nothing running.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts flushing every filesystem of `plan`, in passes, for at most `budget`.
    /// Returns at once; opening the mount points is the only work done on this thread.
    pub fn start(&self, plan: &Plan, budget: Duration) -> FlushAheadStart {
        let mut out = FlushAheadStart::default();
        let mut state = self.shared.lock();
        state.cancelled = false;
        state.hold_exits = false;
        state.until = Instant::now().checked_add(budget);
        state.wanted = plan.filesystems().map(|f| f.dev).collect();
        for fs in plan.filesystems() {
            if state.hung.contains(&fs.dev) {
                out.hung.push(fs.mount_point.clone());
                continue;
            }
            if state.threads.contains(&fs.dev) {
                out.running.push(fs.mount_point.clone());
                continue;
            }
            let Ok(fd) = hv_vss_sys::fs::open_mount_point(&fs.open_path) else {
                out.unopened.push(fs.mount_point.clone());
                continue;
            };
            let shared = Arc::clone(&self.shared);
            let (dev, mount_point) = (fs.dev, fs.mount_point.clone());
            let spawned = std::thread::Builder::new()
                .name("hv-vss-flush".into())
                .spawn(move || passes(&shared, dev, &mount_point, &fd));
            if spawned.is_ok() {
                state.threads.insert(fs.dev);
                out.started.push(fs.mount_point.clone());
            } else {
                out.unopened.push(fs.mount_point.clone());
            }
        }
        self.shared.changed.notify_all();
        out
    }

    /// Stops the passes without waiting (a failed check).
    pub fn cancel(&self) {
        let mut state = self.shared.lock();
        state.cancelled = true;
        state.hold_exits = false;
        drop(state);
        self.shared.changed.notify_all();
    }

    /// The freeze that [`FlushAhead::cancel_and_wait`] made way for is over: the stopped
    /// flush threads may exit now.
    pub fn release(&self) {
        self.shared.lock().hold_exits = false;
        self.shared.changed.notify_all();
    }

    /// Flush threads alive (running, pausing, or held until [`FlushAhead::release`]).
    pub fn threads(&self) -> usize {
        self.shared.lock().threads.len()
    }

    /// Stops the passes and waits, at most `deadline`, for the `syncfs` calls still
    /// running. Ok: none runs and none will start until the next [`FlushAhead::start`].
    /// Err: the calls that missed the deadline; their devices are remembered as hung.
    pub fn cancel_and_wait(&self, deadline: Duration) -> Result<(), HungFlush> {
        let end = Instant::now().checked_add(deadline);
        let mut state = self.shared.lock();
        state.cancelled = true;
        state.hold_exits = true;
        state.held_since = Some(Instant::now());
        self.shared.changed.notify_all();
        loop {
            // Calls already known to hang are not waited for again.
            let waiting = state.in_flight.keys().any(|dev| !state.hung.contains(dev));
            if !waiting {
                break;
            }
            let now = Instant::now();
            let left = match end {
                Some(e) if now >= e => break,
                Some(e) => e - now,
                None => Duration::from_secs(3600),
            };
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if state.in_flight.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let running: Vec<(DevNum, PathBuf, Duration)> = state
            .in_flight
            .iter()
            .map(|(&dev, f)| (dev, f.mount_point.clone(), now - f.since))
            .collect();
        for (dev, _, _) in &running {
            state.hung.insert(*dev);
        }
        Err(HungFlush {
            running_for: running.iter().map(|r| r.2).max().unwrap_or_default(),
            devs: running.iter().map(|r| r.0).collect(),
            mount_points: running.into_iter().map(|r| r.1).collect(),
        })
    }

    /// Did the last pass on every filesystem of `plan` find it clean, and recently? True
    /// when, for each, a pass ended less than `within` ago and its block device wrote
    /// nothing during it (read from the device's I/O counters); for a filesystem without
    /// such counters, when the pass took at most twice its fastest pass so far (its cost
    /// with nothing to write, as measured on this machine). Then another flush before
    /// FIFREEZE would only add its own cost ([`crate::FlushPolicy::Skip`]).
    pub fn found_clean(&self, plan: &Plan, within: Duration) -> bool {
        let state = self.shared.lock();
        let now = Instant::now();
        !plan.is_empty()
            && plan.filesystems().all(|fs| {
                match (state.last_pass.get(&fs.dev), state.fastest.get(&fs.dev)) {
                    (Some(pass), Some(&fastest)) => {
                        now.saturating_duration_since(pass.ended) < within && pass.clean(fastest)
                    }
                    _ => false,
                }
            })
    }

    /// Sectors the block device of `dev` wrote during its last pass (None: no pass yet, or
    /// the device has no I/O counters).
    pub fn last_pass_wrote_sectors(&self, dev: DevNum) -> Option<u64> {
        self.shared.lock().last_pass.get(&dev)?.wrote_sectors
    }

    /// `syncfs` calls started on `dev` so far (by any start).
    pub fn calls(&self, dev: DevNum) -> u64 {
        self.shared.lock().calls.get(&dev).copied().unwrap_or(0)
    }

    /// The most `syncfs` calls that ran at once so far.
    pub fn peak_in_flight(&self) -> usize {
        self.shared.lock().peak_in_flight
    }

    /// Calls running now.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().in_flight.len()
    }

    /// Devices whose flush missed a deadline and has not returned.
    pub fn hung(&self) -> Vec<DevNum> {
        self.shared.lock().hung.iter().copied().collect()
    }
}

impl Drop for FlushAhead {
    /// No pass outlives its flusher (a call already running finishes on its thread).
    fn drop(&mut self) {
        self.cancel();
    }
}

/// One filesystem's passes: a `syncfs`, then another every [`PASS_INTERVAL`] while the
/// flusher is not cancelled, the budget lasts and the plan still wants it.
fn passes(shared: &Shared, dev: DevNum, mount_point: &std::path::Path, fd: &OwnedFd) {
    let mut state = shared.lock();
    loop {
        // Stopped for a freeze: stay (no pass) until it is over, then exit, or carry on if
        // a new start came meanwhile.
        let held_until = state.held_since.and_then(|t| t.checked_add(MAX_HOLD));
        if state.cancelled && state.hold_exits && held_until.is_some_and(|u| Instant::now() < u) {
            let left = held_until.map_or(MAX_HOLD, |u| u.saturating_duration_since(Instant::now()));
            state = shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            continue;
        }
        let go_on = !state.cancelled
            && state.wanted.contains(&dev)
            && state.until.is_some_and(|u| Instant::now() < u);
        if !go_on {
            break;
        }
        // At most CONCURRENCY calls at once (a call known to hang does not count).
        let running = state
            .in_flight
            .keys()
            .filter(|d| !state.hung.contains(d))
            .count();
        if running >= CONCURRENCY {
            state = shared
                .changed
                .wait_timeout(state, PASS_INTERVAL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            continue;
        }
        state.in_flight.insert(
            dev,
            InFlight {
                mount_point: mount_point.to_path_buf(),
                since: Instant::now(),
            },
        );
        *state.calls.entry(dev).or_default() += 1;
        state.peak_in_flight = state.peak_in_flight.max(state.in_flight.len());
        drop(state);
        // The result does not matter here: the freeze's own flush reports errors.
        let sectors_before = sectors_written(dev);
        let started = Instant::now();
        let ok = hv_vss_sys::fs::syncfs(fd.as_fd()).is_ok();
        let took = started.elapsed();
        let wrote_sectors = sectors_before
            .zip(sectors_written(dev))
            .map(|(before, after)| after.saturating_sub(before));
        state = shared.lock();
        if ok {
            state.last_pass.insert(
                dev,
                Pass {
                    ended: Instant::now(),
                    took,
                    wrote_sectors,
                },
            );
            let fastest = state.fastest.entry(dev).or_insert(took);
            *fastest = (*fastest).min(took);
        } else {
            state.last_pass.remove(&dev);
        }
        state.in_flight.remove(&dev);
        state.hung.remove(&dev);
        shared.changed.notify_all();
        // Pause, woken early by a cancel.
        let resume = Instant::now() + PASS_INTERVAL;
        while !state.cancelled && Instant::now() < resume {
            state = shared
                .changed
                .wait_timeout(state, resume.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
    state.threads.remove(&dev);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FreezerConfig, MountSource, Selection, make_plan};
    use hv_vss_testutil::{FsKind, LoopFs, freeze_path, freezing_test, thaw_path};
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    fn plan_of(fs: &LoopFs) -> Plan {
        make_plan(
            &MountSource::current(),
            &Selection::Explicit(vec![fs.mount_point().to_path_buf()]),
            &FreezerConfig::default().compile().unwrap(),
        )
        .unwrap()
    }

    fn dirty(fs: &LoopFs, name: &str, mib: usize) {
        let mut f = std::fs::File::create(fs.mount_point().join(name)).unwrap();
        let chunk = vec![0x5a_u8; 1 << 20];
        for _ in 0..mib {
            f.write_all(&chunk).unwrap();
        }
    }

    /// Bytes the loop device has written into its image so far (a sparse file grows as the
    /// filesystem's data is written back through the loop device).
    fn image_bytes(fs: &LoopFs) -> u64 {
        std::fs::metadata(fs.image()).unwrap().blocks() * 512
    }

    fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
        let end = Instant::now() + within;
        while !cond() {
            assert!(Instant::now() < end, "{what}: not within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Dirty data is written back by the flush, in repeated passes, with nothing frozen;
    /// after `cancel_and_wait` no call runs and none starts, so a freeze that follows never
    /// has a flush of ours beside it.
    #[test]
    fn passes_write_back_until_cancelled_and_none_starts_after() {
        freezing_test(Duration::from_secs(120), || {
            let fs = LoopFs::new(FsKind::Ext4).unwrap();
            let dev = fs.dev().unwrap();
            let plan = plan_of(&fs);
            let before = image_bytes(&fs);
            dirty(&fs, "dirty", 16);
            let flusher = FlushAhead::new();
            let started = flusher.start(&plan, Duration::from_secs(60));
            assert_eq!(started.started, vec![fs.mount_point().to_path_buf()]);
            // Writeback would otherwise wait for dirty_expire (30 s by default).
            wait_for(
                "the dirty data written back",
                Duration::from_secs(20),
                || image_bytes(&fs) >= before + (16 << 20),
            );
            wait_for("a second pass", Duration::from_secs(20), || {
                flusher.calls(dev) >= 2
            });
            flusher.cancel_and_wait(Duration::from_secs(30)).unwrap();
            assert_eq!(flusher.in_flight(), 0);
            let calls = flusher.calls(dev);
            freeze_path(fs.mount_point()).unwrap();
            std::thread::sleep(PASS_INTERVAL * 5);
            let during_freeze = flusher.calls(dev);
            // Stopped, but its thread stays until the freeze is over (no exit beside a
            // FIFREEZE), and goes once released.
            assert_eq!(
                flusher.threads(),
                1,
                "the flush thread exited beside the freeze"
            );
            assert!(thaw_path(fs.mount_point()).unwrap());
            assert_eq!(during_freeze, calls, "a flush started while frozen");
            flusher.release();
            wait_for(
                "the released thread to exit",
                Duration::from_secs(10),
                || flusher.threads() == 0,
            );
            assert_eq!(flusher.calls(dev), calls, "a released thread flushed again");
        });
    }

    /// Three dirty filesystems are all written back, never more than [`CONCURRENCY`] at a
    /// time.
    #[test]
    fn at_most_concurrency_calls_run_at_once_and_every_filesystem_is_flushed() {
        freezing_test(Duration::from_secs(120), || {
            let all: Vec<LoopFs> = (0..3).map(|_| LoopFs::new(FsKind::Ext4).unwrap()).collect();
            let plan = make_plan(
                &MountSource::current(),
                &Selection::Explicit(all.iter().map(|f| f.mount_point().to_path_buf()).collect()),
                &FreezerConfig::default().compile().unwrap(),
            )
            .unwrap();
            let before: Vec<u64> = all.iter().map(image_bytes).collect();
            for fs in &all {
                dirty(fs, "dirty", 8);
            }
            let flusher = FlushAhead::new();
            flusher.start(&plan, Duration::from_secs(60));
            for (fs, before) in all.iter().zip(before) {
                wait_for(
                    "every filesystem written back",
                    Duration::from_secs(30),
                    || image_bytes(fs) >= before + (8 << 20),
                );
            }
            flusher.cancel_and_wait(Duration::from_secs(30)).unwrap();
            let peak = flusher.peak_in_flight();
            assert!((1..=CONCURRENCY).contains(&peak), "{peak} calls at once");
        });
    }

    /// A clean filesystem is found clean once its passes have run; no pass is recent: not
    /// clean any more.
    #[test]
    fn found_clean_after_passes_on_a_clean_filesystem_only() {
        freezing_test(Duration::from_secs(120), || {
            let fs = LoopFs::new(FsKind::Ext4).unwrap();
            let dev = fs.dev().unwrap();
            let plan = plan_of(&fs);
            let flusher = FlushAhead::new();
            assert!(
                !flusher.found_clean(&plan, Duration::from_secs(1)),
                "no pass yet"
            );
            flusher.start(&plan, Duration::from_secs(60));
            wait_for("three passes", Duration::from_secs(20), || {
                flusher.calls(dev) >= 4
            });
            wait_for("found clean", Duration::from_secs(20), || {
                flusher.found_clean(&plan, Duration::from_secs(1))
            });
            flusher.cancel_and_wait(Duration::from_secs(30)).unwrap();
            std::thread::sleep(PASS_INTERVAL * 3);
            assert!(
                !flusher.found_clean(&plan, PASS_INTERVAL),
                "a pass long ago says nothing about now"
            );
        });
    }

    /// A pass that wrote dirty data back is not a clean one, whatever it cost; the passes
    /// after it, with nothing left to write, write nothing and find the filesystem clean.
    #[test]
    fn a_pass_that_wrote_data_is_not_clean_and_the_next_ones_are() {
        freezing_test(Duration::from_secs(120), || {
            let fs = LoopFs::new(FsKind::Ext4).unwrap();
            let dev = fs.dev().unwrap();
            let plan = plan_of(&fs);
            dirty(&fs, "dirty", 16);
            let flusher = FlushAhead::new();
            flusher.start(&plan, Duration::from_secs(60));
            wait_for("the first pass", Duration::from_secs(20), || {
                flusher.calls(dev) >= 1 && flusher.in_flight() == 0
            });
            // Read while no second pass had started (the count is the same on both sides).
            let before = flusher.calls(dev);
            let clean = flusher.found_clean(&plan, Duration::from_secs(10));
            let wrote = flusher.last_pass_wrote_sectors(dev);
            if before == 1 && flusher.calls(dev) == 1 {
                // (The kernel's own writeback may have written some of it first.)
                assert!(wrote.is_some(), "no write counter for a loop device");
                assert_eq!(
                    clean,
                    wrote == Some(0),
                    "the first pass wrote {wrote:?} sectors"
                );
            }
            wait_for(
                "a pass that writes nothing",
                Duration::from_secs(20),
                || flusher.found_clean(&plan, Duration::from_secs(10)),
            );
            assert_eq!(flusher.last_pass_wrote_sectors(dev), Some(0));
            flusher.cancel_and_wait(Duration::from_secs(30)).unwrap();
        });
    }

    #[test]
    fn the_write_sectors_field_of_a_block_stat_line() {
        let line = "   26058      655   615546     4843    99467    56432 28187047   724435        0   462608   809246        0        0        0        0    51615    79968\n";
        assert_eq!(parse_sectors_written(line), Some(28_187_047));
        assert_eq!(parse_sectors_written("1 2 3 4 5 6"), None);
        assert_eq!(parse_sectors_written("1 2 3 4 5 6 x"), None);
        assert_eq!(parse_sectors_written(""), None);
    }

    /// A flush that cannot finish (a loop filesystem whose image lies on a filesystem this
    /// test froze) is reported by the cancel, remembered per device, and not started again
    /// by the next start; once it returns, the device is no longer hung.
    #[test]
    fn a_hung_flush_is_reported_and_not_started_again() {
        freezing_test(Duration::from_secs(120), || {
            let lower = LoopFs::create(FsKind::Ext4, 128, None).unwrap();
            let upper = LoopFs::new_in(FsKind::Ext4, lower.mount_point()).unwrap();
            let dev = upper.dev().unwrap();
            let plan = plan_of(&upper);
            freeze_path(lower.mount_point()).unwrap();
            // Dirty in `upper`'s page cache; its writeback must go into the frozen `lower`.
            dirty(&upper, "dirty", 4);
            let flusher = FlushAhead::new();
            flusher.start(&plan, Duration::from_secs(60));
            wait_for("the flush to start", Duration::from_secs(10), || {
                flusher.calls(dev) == 1
            });
            let hung = flusher
                .cancel_and_wait(Duration::from_millis(500))
                .unwrap_err();
            assert_eq!(hung.devs, vec![dev]);
            assert_eq!(hung.mount_points, vec![upper.mount_point().to_path_buf()]);
            assert_eq!(flusher.hung(), vec![dev]);
            // The next check's start leaves it alone.
            let again = flusher.start(&plan, Duration::from_secs(60));
            assert_eq!(again.hung, vec![upper.mount_point().to_path_buf()]);
            assert!(again.started.is_empty());
            std::thread::sleep(PASS_INTERVAL * 3);
            assert_eq!(flusher.calls(dev), 1, "a hung flush was started again");
            // A second cancel does not wait for it again, and still reports it.
            assert!(flusher.cancel_and_wait(Duration::from_secs(30)).is_err());
            assert!(thaw_path(lower.mount_point()).unwrap());
            wait_for("the hung call to return", Duration::from_secs(30), || {
                flusher.hung().is_empty() && flusher.in_flight() == 0
            });
            flusher.cancel_and_wait(Duration::from_secs(30)).unwrap();
        });
    }
}
