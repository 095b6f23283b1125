//! The daemon's FREEZE latency, frozen window and per-cycle overhead, measured end to end:
//! the real `hv-vssd` binary in drop-in mode, driven through the kernel emulator
//! (`hv_vss_sim::kernel::KernelEmulator`, the socket form of `--device`), freezing
//! loop-mounted ext4 filesystems this benchmark creates.
//!
//! # Part 1: FREEZE latency and frozen window, N = 1 and N = 8 filesystems
//!
//! The sequence a host runs: HOT_BACKUP, a gap (env `GAP_MS`, default 1000 ms), FREEZE,
//! THAW, with writers running throughout. Each filesystem (256 MiB sparse image in /tmp)
//! gets 64 MiB of fresh dirty data just before every trial, and one writer per filesystem
//! appends 4 KiB buffered writes every millisecond from before the gap to after the thaw,
//! so the blocked time is what applications feel. Methods take turns in every trial:
//!
//! - **stock** (baseline, in process): the stock daemon's method (tools/hv/hv_vss_daemon.c),
//!   which does nothing at HOT_BACKUP: the gap, then for each filesystem in mount order
//!   open, FIFREEZE, close; then the same with FITHAW, zero hold:
//!   `hv_vss_testutil::bench::stock_freeze_thaw`, which the freezer bench uses too,
//!   recording the all-frozen instant as well.
//! - **hv-vssd**: HOT_BACKUP, the gap, then FREEZE and, as soon as it is answered, THAW,
//!   each through `KernelEmulator::host_request`.
//! - **qemu-ga** (a real peer, if `/usr/sbin/qemu-ga` is installed, Debian package
//!   qemu-guest-agent; `QEMU_GA=0` skips it): `qemu-ga -m unix-listen`, driven over its
//!   JSON socket: the gap, `guest-fsfreeze-freeze-list` with the bench's mount points, then
//!   `guest-fsfreeze-thaw` as soon as it answers.
//!
//! Metrics, per trial:
//! - FREEZE latency: hv-vssd: the host's FREEZE round trip (request sent → answer
//!   received); stock: first FIFREEZE call → last FIFREEZE return (no IPC, no planning: the
//!   stock daemon's answer could not come earlier); qemu-ga: the freeze-list round trip.
//! - Longest blocked write: the longest single `write()` of any writer during the
//!   operation, the frozen window as applications feel it; also split into the gap
//!   (HOT_BACKUP to FREEZE, where hv-vssd flushes ahead) and FREEZE to 50 ms after THAW.
//! - Frozen window: first FIFREEZE call → last FITHAW return, zero hold. hv-vssd: its own
//!   `ThawReport::frozen_window_us` from `STATE_DIR/history.jsonl` (includes the THAW round
//!   trip through the emulator); stock: measured around the loops.
//! - Answer to thaw: hv-vssd: FREEZE answer received → THAW answer received, THAW sent at
//!   once; stock: last FIFREEZE return → last FITHAW return; qemu-ga: freeze-list
//!   answered → thaw answered (also its frozen window, as it reports none).
//!
//! Part 1 also measures the floor in the same trials, two more methods taking their turn:
//! **idle**, nothing dirty (a `syncfs` of each first) and no writer: FIFREEZE on every
//! filesystem at once (one thread each), then FITHAW on every one at once; and **best**, the
//! same with the writers running, after a `syncfs` of all as the gap starts (an ideal flush
//! ahead) and another right before the freeze (what the writers added): what any freezer
//! pays once nothing is left to write. Both turn `/sys/kernel/rcu_expedited` on around
//! their FIFREEZE calls as hv-vssd does (expedited RCU grace periods, below), so the floor
//! is hv-vssd's own.
//!
//! # Part 2: the daemon's own overhead per cycle
//!
//! One clean 32 MiB ext4 filesystem (nothing ever written to it), `--mount` of it only:
//! HOT_BACKUP + FREEZE + THAW through the kernel emulator, against the same three requests
//! answered by the stock daemon's request loop (`hv_vss_testutil::stock_daemon`, in a
//! process of its own, registered with an emulator of its own: the like-with-like
//! baseline, a request and an answer per operation on both sides); by a second hv-vssd
//! whose configuration sets `[freezer] expedite_grace_periods = false` (the behaviour
//! before expedited grace periods, behind a third emulator); and against an in-process
//! open+FIFREEZE+close, open+FITHAW+close with no request at all (the kernel's share), with
//! normal grace periods and **expedited** (the switch on around the FIFREEZE as the freezer
//! turns it on). Twice: with a pause (env `PAUSE_MS`, default 100) between any two cycles,
//! methods taking turns, so each FIFREEZE comes long after the last FITHAW as in real
//! backups (`SPACED_CYCLES`, default 100, each); and back to back, each method in 5 runs of
//! its own (`CYCLES`, default 500, each). The spacing matters: a FIFREEZE within a few
//! milliseconds of the last FITHAW of the same filesystem skips the kernel's RCU grace
//! periods (part 3). The daemons' own phase times from their histories (open+check+journal,
//! waiting for the flush ahead, syncfs, FIFREEZE, FITHAW; and whether the freeze was
//! expedited), the transport's floor (an unknown operation, answered E_FAIL without
//! touching a filesystem) and the in-process cost of reading the mount table and planning
//! locate what the daemon adds.
//!
//! # Part 3: what a FIFREEZE of a clean filesystem waits for
//!
//! In process, on one clean ext4: FIFREEZE + FITHAW after a pause of 0 to 100 ms since the
//! last FITHAW (`PART3_CYCLES`, default 20, per pause), and after 100 ms with the switch on
//! around the FIFREEZE; and, for FIFREEZE calls after a 100 ms pause with normal grace
//! periods, where the calling thread waits: its kernel stack (`/proc/PID/task/TID/stack`)
//! sampled every 0.5 ms while the call runs, counted by the innermost frames.
//!
//! # Expedited RCU grace periods
//!
//! hv-vssd turns `/sys/kernel/rcu_expedited` on for its FIFREEZE calls
//! (`hv_vss_freezer::expedite`). The switch is global, so the methods meant to see normal
//! grace periods need it off: the bench reads it at the start (a warning if it is on: the
//! comparison is then meaningless), the expedited methods turn it on only when they find it
//! off and off again on every path (`rcu_switch`), the normal ones note whether someone
//! else had it on, and the last line printed says how it was at the start and the end.
//!
//! The run re-executes itself under `unshare -m --propagation private`: mounts made by
//! other processes on the machine do not reach it (they would make every FREEZE plan again),
//! and its own mounts vanish with it.
//!
//! Run (root; release build of hv-vssd and this bench; about 5 minutes):
//! `cargo bench -p hv-vssd --bench daemon_cycle` (env `PARTS`, default `1,2,3`; `TRIALS`,
//! default 9; `GAP_MS`, default 1000; `QEMU_GA=0`; `CHECK_GAP_MS`, part 2's pause between
//! HOT_BACKUP's answer and FREEZE, default 0; and the part 2 and 3 counts above). Not a
//! test: nothing is asserted except that every request got S_OK; the results are printed as
//! Markdown tables.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hv_vss_freezer::{FreezerConfig, MountSource, Selection, make_plan};
use hv_vss_protocol::{HvStatus, VssOperation};
use hv_vss_sim::kernel::{EmulatorConfig, HostOutcome, KernelEmulator};
use hv_vss_testutil::bench::{
    Writers, env_count, parallel_freeze_thaw_around, parallel_syncfs, prepare_dirty, should_run,
    stock_freeze_thaw,
};
use hv_vss_testutil::private_ns::enter_private_mount_namespace;
use hv_vss_testutil::{FsKind, LoopFs, freeze_path, thaw_path};
use rustix::process::{Pid, Signal};

#[path = "daemon_cycle/rcu_switch.rs"]
mod rcu_switch;

/// hv-vssd's configuration: the defaults (expedited RCU grace periods on).
const DEFAULTS: &str = "";
/// hv-vssd's configuration with normal grace periods: the behaviour before they were
/// expedited.
const EXPEDITE_OFF: &str = "[freezer]\nexpedite_grace_periods = false\n";

const DIRTY_MIB: usize = 64;
const IMAGE_MIB: u64 = 256;
const READY: Duration = Duration::from_secs(15);
/// The whole run; on expiry every test filesystem is thawed and every daemon killed.
const RUN_LIMIT: Duration = Duration::from_secs(900);

/// Daemons started by this run, killed if the run panics or times out.
static DAEMON_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn pids() -> std::sync::MutexGuard<'static, Vec<u32>> {
    DAEMON_PIDS.lock().unwrap_or_else(|p| p.into_inner())
}

fn signal(pid: u32, sig: Signal) {
    if let Some(pid) = Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Live (non-zombie) processes whose parent is `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // "pid (comm) state ppid ...": comm may hold spaces, so parse after the last ')'.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or("", |(_, rest)| rest)
                .split_whitespace()
                .collect();
            fields.first() != Some(&"Z") && fields.get(1) == Some(&parent.to_string().as_str())
        })
        .collect()
}

fn process_exists(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// The real hv-vssd (release build next to this bench), registered with `emu`; stopped with
/// SIGTERM on drop (it thaws and exits), killed if it does not exit, guardian included.
struct VssDaemon {
    child: Child,
    guardian: Option<u32>,
    dir: tempfile::TempDir,
}

impl VssDaemon {
    /// `config`: the text of its configuration file (TOML).
    fn start(emu: &KernelEmulator, mounts: &[PathBuf], config: &str) -> anyhow::Result<Self> {
        // Config, log and state directory on tmpfs, which nothing here freezes.
        let dir = tempfile::Builder::new()
            .prefix("hv-vssd-bench-")
            .tempdir_in("/dev/shm")?;
        let text = config;
        let config = dir.path().join("hv-vssd.toml");
        std::fs::write(&config, text)?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hv-vssd"));
        cmd.arg("--config")
            .arg(&config)
            .arg("--device")
            .arg(emu.socket_path())
            .arg("--state-dir")
            .arg(dir.path().join("state"));
        for m in mounts {
            cmd.arg("--mount").arg(m);
        }
        let child = cmd
            .arg("-n")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.path().join("stderr.log"))?)
            .spawn()
            .context("starting hv-vssd")?;
        pids().push(child.id());
        let mut daemon = Self {
            child,
            guardian: None,
            dir,
        };
        if !emu.wait_ready(READY) {
            bail!("hv-vssd never registered:\n{}", daemon.log());
        }
        // The guardian is started before the transport opens, so it exists by now.
        daemon.guardian = children_of(daemon.child.id()).first().copied();
        Ok(daemon)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// History entries of finished FREEZE transactions (those with a thaw report).
    fn backups(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("state/history.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| !e["thaw"].is_null())
            .collect()
    }

    /// How its freezes used expedited RCU grace periods (the reports' `expedite` states) in
    /// the last `n` finished backups: "expedited 9" etc.
    fn expedite_states(&self, n: usize) -> String {
        let kept = self.backups();
        let mut states: std::collections::BTreeMap<String, usize> = Default::default();
        for entry in kept.iter().skip(kept.len().saturating_sub(n)) {
            let state = entry["freeze"]["expedite"]["state"].as_str().unwrap_or("?");
            *states.entry(state.to_string()).or_default() += 1;
        }
        let states: Vec<String> = states.iter().map(|(s, n)| format!("{s} {n}")).collect();
        states.join(", ")
    }

    /// Waits (the report is written after the THAW answer) for backup number `n` (1-based).
    fn backup(&self, n: usize) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(entry) = self.backups().into_iter().nth(n - 1) {
                return Ok(entry);
            }
            if Instant::now() >= deadline {
                bail!("no report of backup {n} in the history:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for VssDaemon {
    fn drop(&mut self) {
        let pid = self.child.id();
        signal(pid, Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The guardian exits once the daemon's socket closes; make sure.
        if let Some(g) = self.guardian {
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && process_exists(g) {
                std::thread::sleep(Duration::from_millis(10));
            }
            if process_exists(g) {
                signal(g, Signal::KILL);
            }
        }
        pids().retain(|p| *p != pid);
    }
}

/// Where Debian's qemu-guest-agent puts the agent.
const QEMU_GA: &str = "/usr/sbin/qemu-ga";

/// A real qemu-ga listening on a Unix socket (`-m unix-listen`), as the peer to compare with;
/// killed on drop.
struct QemuGa {
    child: Child,
    conn: BufReader<UnixStream>,
    _dir: tempfile::TempDir,
}

impl QemuGa {
    /// None when qemu-ga is not installed or `QEMU_GA=0`.
    fn start() -> anyhow::Result<Option<Self>> {
        if std::env::var("QEMU_GA").is_ok_and(|v| v == "0")
            || !std::path::Path::new(QEMU_GA).exists()
        {
            return Ok(None);
        }
        let dir = tempfile::Builder::new()
            .prefix("qemu-ga-bench-")
            .tempdir_in("/dev/shm")?;
        let sock = dir.path().join("sock");
        std::fs::create_dir(dir.path().join("state"))?;
        let child = Command::new(QEMU_GA)
            .args(["-m", "unix-listen", "-p"])
            .arg(&sock)
            .arg("-t")
            .arg(dir.path().join("state"))
            .arg("-l")
            .arg(dir.path().join("log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting qemu-ga")?;
        pids().push(child.id());
        let deadline = Instant::now() + READY;
        let stream = loop {
            match UnixStream::connect(&sock) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(e).context("qemu-ga socket"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        Ok(Some(Self {
            child,
            conn: BufReader::new(stream),
            _dir: dir,
        }))
    }

    /// One command; its `return` value, or an error.
    fn execute(&mut self, command: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let mut line = serde_json::to_vec(&command)?;
        line.push(b'\n');
        self.conn.get_mut().write_all(&line)?;
        let mut answer = String::new();
        self.conn.read_line(&mut answer)?;
        let v: serde_json::Value = serde_json::from_str(&answer).context("qemu-ga answer")?;
        v.get("return")
            .cloned()
            .with_context(|| format!("qemu-ga: {answer}"))
    }

    fn freeze(&mut self, mounts: &[PathBuf]) -> anyhow::Result<()> {
        let list: Vec<String> = mounts.iter().map(|m| m.display().to_string()).collect();
        let n = self.execute(serde_json::json!({
            "execute": "guest-fsfreeze-freeze-list",
            "arguments": { "mountpoints": list }
        }))?;
        if n.as_u64() != Some(mounts.len() as u64) {
            bail!("qemu-ga froze {n} of {}", mounts.len());
        }
        Ok(())
    }

    fn thaw(&mut self) -> anyhow::Result<()> {
        self.execute(serde_json::json!({ "execute": "guest-fsfreeze-thaw" }))
            .map(drop)
    }
}

impl Drop for QemuGa {
    fn drop(&mut self) {
        let _ = self.thaw();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pid = self.child.id();
        pids().retain(|p| *p != pid);
    }
}

/// Set in the child that plays the stock daemon: the emulator socket it serves.
const STOCK_DAEMON_ENV: &str = "DAEMON_CYCLE_STOCK_DAEMON";

/// The stock daemon's request loop (`hv_vss_testutil::stock_daemon`) in a process of its
/// own (this bench, re-executed), registered with `emu` like hv-vssd: the like-with-like
/// baseline, a request and an answer through a device per operation. Killed on drop, then
/// its filesystems thawed.
struct StockDaemon {
    child: Child,
    mounts: Vec<PathBuf>,
}

impl StockDaemon {
    fn start(emu: &KernelEmulator, mounts: &[PathBuf]) -> anyhow::Result<Self> {
        let child = Command::new(std::env::current_exe()?)
            .args(mounts)
            .env(STOCK_DAEMON_ENV, emu.socket_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the stock daemon")?;
        pids().push(child.id());
        let daemon = Self {
            child,
            mounts: mounts.to_vec(),
        };
        if !emu.wait_ready(READY) {
            bail!("the stock daemon never registered");
        }
        Ok(daemon)
    }
}

impl Drop for StockDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pid = self.child.id();
        pids().retain(|p| *p != pid);
        for m in &self.mounts {
            let _ = thaw_path(m);
        }
    }
}

/// One host request through the emulator; its round trip, or an error unless S_OK.
fn request(emu: &KernelEmulator, op: VssOperation) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let outcome = emu.host_request(op);
    let took = t.elapsed();
    if outcome != HostOutcome::Replied(HvStatus::S_OK) {
        bail!("{op:?}: {outcome:?}");
    }
    Ok(took)
}

/// Samples in µs; median (upper median for even counts), min, max.
#[derive(Default)]
struct Samples(Vec<u64>);

impl Samples {
    fn push(&mut self, d: Duration) {
        self.0.push(d.as_micros() as u64);
    }

    fn push_us(&mut self, us: u64) {
        self.0.push(us);
    }

    fn sorted(&self) -> Vec<u64> {
        let mut v = self.0.clone();
        v.sort_unstable();
        v
    }

    fn median(&self) -> f64 {
        let v = self.sorted();
        v.get(v.len() / 2).copied().unwrap_or(0) as f64
    }

    fn cell(&self, unit: Unit) -> String {
        let v = self.sorted();
        let (Some(lo), Some(hi)) = (v.first(), v.last()) else {
            return "–".into();
        };
        format!(
            "{} ({}–{})",
            unit.fmt(self.median()),
            unit.fmt(*lo as f64),
            unit.fmt(*hi as f64)
        )
    }
}

#[derive(Clone, Copy)]
enum Unit {
    Ms,
    Us,
}

impl Unit {
    fn fmt(self, us: f64) -> String {
        match self {
            Self::Ms => format!("{:.1} ms", us / 1000.0),
            Self::Us => format!("{us:.0} µs"),
        }
    }
}

fn ratio(ours: &Samples, base: &Samples) -> String {
    format!("{:.3}x", ours.median() / base.median())
}

/// Part 1's figures of one method (module docs define them).
#[derive(Default)]
struct Figures {
    latency: Samples,
    blocked: Samples,
    /// Longest write during the gap (HOT_BACKUP to FREEZE), and from FREEZE on.
    gap_blocked: Samples,
    freeze_blocked: Samples,
    window: Samples,
    after: Samples,
}

impl Figures {
    /// Records the longest writes of the gap and from FREEZE on; the longer of the two.
    fn push_blocked(&mut self, in_gap: u64, from_freeze: u64) -> u64 {
        self.gap_blocked.push_us(in_gap);
        self.freeze_blocked.push_us(from_freeze);
        in_gap.max(from_freeze)
    }
}

/// Part 1 on `mounts`, with a daemon that freezes exactly those.
fn frozen_window(
    emu: &KernelEmulator,
    mounts: &[PathBuf],
    trials: usize,
    gap: Duration,
) -> anyhow::Result<()> {
    let n = mounts.len();
    let daemon = VssDaemon::start(emu, mounts, DEFAULTS)?;
    let mut qemu_ga = QemuGa::start()?;
    let (mut stock, mut ours, mut peer) =
        (Figures::default(), Figures::default(), Figures::default());
    // The floor (module docs): nothing left to write, all at once; idle and with writers.
    let (mut idle, mut best) = (Figures::default(), Figures::default());
    let (mut d_sync, mut d_fifreeze) = (Samples::default(), Samples::default());
    let mut reused = 0;
    let methods: &[&str] = if qemu_ga.is_some() {
        &["stock", "hv-vssd", "qemu-ga", "idle", "best"]
    } else {
        &["stock", "hv-vssd", "idle", "best"]
    };
    for trial in 0..trials {
        for &method in methods {
            prepare_dirty(mounts, trial, DIRTY_MIB)?;
            if method == "idle" {
                // Nothing dirty, no writer, and as long since the last thaw as the others.
                parallel_syncfs(mounts)?;
                std::thread::sleep(gap);
                let (frozen, thawed) =
                    parallel_freeze_thaw_around(mounts, |freeze| rcu_switch::expedited(freeze))?;
                eprintln!(
                    "N={n} trial {trial} {method:>7}: all frozen {:>7.1} ms, window {:>7.1} ms",
                    frozen.as_secs_f64() * 1e3,
                    thawed.as_secs_f64() * 1e3
                );
                idle.latency.push(frozen);
                idle.window.push(thawed);
                idle.after.push(thawed - frozen);
                continue;
            }
            let writers = Writers::start(mounts);
            std::thread::sleep(Duration::from_millis(100));
            writers.reset();
            if method == "stock" {
                std::thread::sleep(gap);
                let in_gap = writers.longest();
                writers.reset();
                let (frozen, thawed) = rcu_switch::normal(|| stock_freeze_thaw(mounts))?;
                std::thread::sleep(Duration::from_millis(50));
                let blocked = stock.push_blocked(in_gap, writers.finish()?);
                eprintln!(
                    "N={n} trial {trial} {method:>7}: all frozen {:>7.1} ms, longest write {:>7.1} ms, window {:>7.1} ms",
                    frozen.as_secs_f64() * 1e3,
                    blocked as f64 / 1e3,
                    thawed.as_secs_f64() * 1e3
                );
                stock.latency.push(frozen);
                stock.blocked.push_us(blocked);
                stock.window.push(thawed);
                stock.after.push(thawed - frozen);
            } else if method == "best" {
                // An ideal flush ahead: everything written back as the gap starts, then,
                // after the gap, what the writers added, and the parallel freeze and thaw.
                parallel_syncfs(mounts)?;
                std::thread::sleep(gap);
                let in_gap = writers.longest();
                writers.reset();
                let synced = parallel_syncfs(mounts)?;
                let (frozen, thawed) =
                    parallel_freeze_thaw_around(mounts, |freeze| rcu_switch::expedited(freeze))?;
                std::thread::sleep(Duration::from_millis(50));
                let blocked = best.push_blocked(in_gap, writers.finish()?);
                eprintln!(
                    "N={n} trial {trial} {method:>7}: syncfs {:>5.1} ms, all frozen {:>7.1} ms, longest write {:>7.1} ms, window {:>7.1} ms",
                    synced.as_secs_f64() * 1e3,
                    frozen.as_secs_f64() * 1e3,
                    blocked as f64 / 1e3,
                    thawed.as_secs_f64() * 1e3
                );
                best.latency.push(synced + frozen);
                best.blocked.push_us(blocked);
                best.window.push(thawed);
                best.after.push(thawed - frozen);
            } else if method == "qemu-ga" {
                let ga = qemu_ga.as_mut().context("qemu-ga")?;
                std::thread::sleep(gap);
                let in_gap = writers.longest();
                writers.reset();
                let (answered, thawed) = rcu_switch::normal(|| -> anyhow::Result<_> {
                    let t = Instant::now();
                    ga.freeze(mounts)?;
                    let answered = t.elapsed();
                    ga.thaw()?;
                    Ok((answered, t.elapsed()))
                })?;
                std::thread::sleep(Duration::from_millis(50));
                let blocked = peer.push_blocked(in_gap, writers.finish()?);
                eprintln!(
                    "N={n} trial {trial} {method:>7}: freeze-list answer {:>7.1} ms, longest write {:>7.1} ms",
                    answered.as_secs_f64() * 1e3,
                    blocked as f64 / 1e3,
                );
                peer.latency.push(answered);
                peer.blocked.push_us(blocked);
                peer.window.push(thawed);
                peer.after.push(thawed - answered);
            } else {
                request(emu, VssOperation::HOT_BACKUP)?;
                std::thread::sleep(gap);
                let in_gap = writers.longest();
                writers.reset();
                let t = Instant::now();
                request(emu, VssOperation::FREEZE)?;
                let answered = t.elapsed();
                request(emu, VssOperation::THAW)?;
                let thawed = t.elapsed();
                std::thread::sleep(Duration::from_millis(50));
                let blocked = ours.push_blocked(in_gap, writers.finish()?);
                let entry = daemon.backup(trial + 1)?;
                let window = entry["thaw"]["frozen_window_us"]
                    .as_u64()
                    .context("history: thaw.frozen_window_us")?;
                let sync = entry["freeze"]["sync_us"]
                    .as_u64()
                    .context("history: freeze.sync_us")?;
                let fifreeze = entry["freeze"]["freeze_us"]
                    .as_u64()
                    .context("history: freeze.freeze_us")?;
                reused += usize::from(entry["freeze"]["plan_reused"] == true);
                eprintln!(
                    "N={n} trial {trial} {method:>7}: FREEZE answer {:>7.1} ms (syncfs {:.1}), longest write {:>7.1} ms, window {:>7.1} ms",
                    answered.as_secs_f64() * 1e3,
                    sync as f64 / 1e3,
                    blocked as f64 / 1e3,
                    window as f64 / 1e3
                );
                ours.latency.push(answered);
                ours.blocked.push_us(blocked);
                ours.window.push_us(window);
                ours.after.push(thawed - answered);
                d_sync.push_us(sync);
                d_fifreeze.push_us(fifreeze);
            }
        }
    }
    let expedite = daemon.expedite_states(trials);
    drop(daemon);
    drop(qemu_ga);
    let ms = Unit::Ms;
    println!();
    println!(
        "N = {n} ext4, {DIRTY_MIB} MiB dirty each, HOT_BACKUP then {} ms then FREEZE, writers running; median (min–max) of {trials} trials, ratio of medians",
        gap.as_millis()
    );
    println!();
    println!(
        "| metric | stock method | hv-vssd | hv-vssd / stock | qemu-ga | qemu-ga / stock | hv-vssd / qemu-ga |"
    );
    println!("|---|---|---|---|---|---|---|");
    let has_peer = !peer.latency.0.is_empty();
    for (name, stock, ours, peer) in [
        (
            "FREEZE latency (hv-vssd: host round trip; stock: first FIFREEZE → all frozen; qemu-ga: freeze-list round trip)",
            &stock.latency,
            &ours.latency,
            &peer.latency,
        ),
        (
            "longest blocked write, whole sequence",
            &stock.blocked,
            &ours.blocked,
            &peer.blocked,
        ),
        (
            "of which during the gap (HOT_BACKUP → FREEZE)",
            &stock.gap_blocked,
            &ours.gap_blocked,
            &peer.gap_blocked,
        ),
        (
            "of which from FREEZE to 50 ms after THAW",
            &stock.freeze_blocked,
            &ours.freeze_blocked,
            &peer.freeze_blocked,
        ),
        (
            "frozen window, first FIFREEZE → last FITHAW, zero hold (qemu-ga: freeze-list sent → thaw answered)",
            &stock.window,
            &ours.window,
            &peer.window,
        ),
        (
            "FREEZE answered → THAW answered (stock: all frozen → all thawed)",
            &stock.after,
            &ours.after,
            &peer.after,
        ),
    ] {
        let (p, ps, op) = if has_peer {
            (peer.cell(ms), ratio(peer, stock), ratio(ours, peer))
        } else {
            ("–".into(), "–".into(), "–".into())
        };
        println!(
            "| {name} | {} | {} | {} | {p} | {ps} | {op} |",
            stock.cell(ms),
            ours.cell(ms),
            ratio(ours, stock)
        );
    }
    println!(
        "| hv-vssd: syncfs phase inside FREEZE (not frozen) | | {} | | | | |",
        d_sync.cell(ms)
    );
    println!(
        "| hv-vssd: parallel FIFREEZE (first call → last return) | | {} | | | | |",
        d_fifreeze.cell(ms)
    );
    println!("| hv-vssd: FREEZE reused the HOT_BACKUP plan | | {reused} of {trials} | | | | |");
    println!("| hv-vssd: expedited RCU grace periods (its reports) | | {expedite} | | | | |");
    println!();
    println!(
        "The floor, N = {n}, same trials: idle = FIFREEZE on all at once then FITHAW on all at once, nothing dirty, no writer; best = the same with writers running, after a syncfs of all as the gap starts and another right before (FREEZE latency: that syncfs + all frozen); both with /sys/kernel/rcu_expedited turned on around their FIFREEZE calls, as hv-vssd does"
    );
    println!();
    println!(
        "| metric | idle, expedited | best, expedited | best / stock | hv-vssd / best | hv-vssd / idle |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, idle, best, stock, ours) in [
        (
            "FREEZE latency (idle: all frozen)",
            &idle.latency,
            &best.latency,
            &stock.latency,
            &ours.latency,
        ),
        (
            "longest blocked write, whole sequence",
            &idle.blocked,
            &best.blocked,
            &stock.blocked,
            &ours.blocked,
        ),
        (
            "of which during the gap",
            &idle.gap_blocked,
            &best.gap_blocked,
            &stock.gap_blocked,
            &ours.gap_blocked,
        ),
        (
            "of which from FREEZE on",
            &idle.freeze_blocked,
            &best.freeze_blocked,
            &stock.freeze_blocked,
            &ours.freeze_blocked,
        ),
        (
            "frozen window, first FIFREEZE → last FITHAW",
            &idle.window,
            &best.window,
            &stock.window,
            &ours.window,
        ),
    ] {
        let vs_idle = if idle.0.is_empty() {
            "–".into()
        } else {
            ratio(ours, idle)
        };
        println!(
            "| {name} | {} | {} | {} | {} | {vs_idle} |",
            idle.cell(ms),
            best.cell(ms),
            ratio(best, stock),
            ratio(ours, best)
        );
    }
    Ok(())
}

/// One clean cycle's samples per method (module docs, part 2).
#[derive(Default)]
struct CycleFigures {
    /// Stock daemon: whole, HOT_BACKUP, FREEZE, THAW round trips.
    stock: [Samples; 4],
    /// hv-vssd: the same.
    ours: [Samples; 4],
    /// hv-vssd with `expedite_grace_periods = false`: the same.
    ours_off: [Samples; 4],
    /// In process, no request: open+FIFREEZE+close, open+FITHAW+close; and the first half.
    direct: [Samples; 2],
    /// The same with the switch on around the FIFREEZE.
    direct_expedited: [Samples; 2],
}

/// How part 2 spaces its cycles.
#[derive(Clone, Copy)]
enum Spacing {
    /// `pause` between any two cycles, methods taking turns cycle by cycle: each FIFREEZE
    /// comes long after the last FITHAW, as in real backups.
    Spaced { pause: Duration },
    /// No pause, each method's cycles in runs of their own (5 slices): each method in its
    /// own steady state.
    BackToBack,
}

/// A daemon's own phase times in its last `n` finished backups (history): open+check+
/// journal, wait for the flush ahead, syncfs, FIFREEZE, FITHAW.
fn phases(daemon: &VssDaemon, n: usize) -> [Samples; 5] {
    let kept = daemon.backups();
    let mut phases: [Samples; 5] = Default::default();
    for entry in kept.iter().skip(kept.len().saturating_sub(n)) {
        for (slot, value) in phases.iter_mut().zip([
            &entry["freeze"]["prepare_us"],
            &entry["freeze"]["flush_ahead_wait_us"],
            &entry["freeze"]["sync_us"],
            &entry["freeze"]["freeze_us"],
            &entry["thaw"]["thaw_us"],
        ]) {
            slot.push_us(value.as_u64().unwrap_or(0));
        }
    }
    phases
}

/// Part 2's daemons, each registered with an emulator of its own.
struct Part2Daemons<'a> {
    /// hv-vssd, defaults.
    ours: (&'a KernelEmulator, VssDaemon),
    /// hv-vssd, `expedite_grace_periods = false`.
    ours_off: (&'a KernelEmulator, VssDaemon),
    stock: (&'a KernelEmulator, StockDaemon),
}

/// A part 2 run's figures: cycles, and each hv-vssd's phases and expedite states.
struct Part2Run {
    spacing: Spacing,
    figures: CycleFigures,
    phases: [[Samples; 5]; 2],
    expedite: [String; 2],
}

/// Part 2: per-cycle cost with nothing to freeze.
fn overhead(
    emus: [&KernelEmulator; 3],
    spaced_cycles: usize,
    cycles: usize,
    pause: Duration,
) -> anyhow::Result<()> {
    const WARM_UP: usize = 10;
    let fs = LoopFs::new(FsKind::Ext4)?;
    let mp = fs.mount_point().to_path_buf();
    hv_vss_sys::fs::syncfs(hv_vss_sys::fs::open_mount_point(&mp)?.as_fd())?;
    let one = std::slice::from_ref(&mp);
    let [emu, off_emu, stock_emu] = emus;
    let d = Part2Daemons {
        ours: (emu, VssDaemon::start(emu, one, DEFAULTS)?),
        ours_off: (off_emu, VssDaemon::start(off_emu, one, EXPEDITE_OFF)?),
        stock: (stock_emu, StockDaemon::start(stock_emu, one)?),
    };
    // Between HOT_BACKUP's answer and FREEZE (env `CHECK_GAP_MS`, default 0: FREEZE at
    // once, stricter than any host, which sends HOT_BACKUP seconds before).
    let check_gap = Duration::from_millis(
        std::env::var("CHECK_GAP_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    println!();
    println!(
        "Part 2: {} ms between HOT_BACKUP's answer and FREEZE (CHECK_GAP_MS; not counted in the cycle)",
        check_gap.as_millis()
    );
    // HOT_BACKUP + FREEZE + THAW through `emu`: (whole, check, freeze, thaw).
    let host_cycle =
        |emu: &KernelEmulator, samples: Option<&mut [Samples; 4]>| -> anyhow::Result<()> {
            let t = Instant::now();
            let check = request(emu, VssOperation::HOT_BACKUP)?;
            std::thread::sleep(check_gap);
            let freeze = request(emu, VssOperation::FREEZE)?;
            let thaw = request(emu, VssOperation::THAW)?;
            let whole = t.elapsed().saturating_sub(check_gap);
            if let Some(s) = samples {
                for (slot, d) in s.iter_mut().zip([whole, check, freeze, thaw]) {
                    slot.push(d);
                }
            }
            Ok(())
        };
    // In process, no request: (whole, open+FIFREEZE+close); `expedite`: the switch on around
    // the FIFREEZE as the freezer turns it on.
    let direct_cycle = |expedite: bool, samples: Option<&mut [Samples; 2]>| -> anyhow::Result<()> {
        let t = Instant::now();
        if expedite {
            rcu_switch::expedited(|| freeze_path(&mp))?;
        } else {
            freeze_path(&mp)?;
        }
        let frozen = t.elapsed();
        if !thaw_path(&mp)? {
            bail!("FITHAW {}: was not frozen", mp.display());
        }
        if let Some([whole, freeze]) = samples {
            whole.push(t.elapsed());
            freeze.push(frozen);
        }
        Ok(())
    };
    // One cycle of method `m` (0..5), into `f` if given; the methods that should see
    // normal grace periods note whether the switch was on.
    let cycle = |m: usize, f: Option<&mut CycleFigures>| -> anyhow::Result<()> {
        match (m, f) {
            (0, f) => rcu_switch::normal(|| host_cycle(d.stock.0, f.map(|f| &mut f.stock))),
            (1, f) => host_cycle(d.ours.0, f.map(|f| &mut f.ours)),
            (2, f) => rcu_switch::normal(|| host_cycle(d.ours_off.0, f.map(|f| &mut f.ours_off))),
            (3, f) => rcu_switch::normal(|| direct_cycle(false, f.map(|f| &mut f.direct))),
            (_, f) => direct_cycle(true, f.map(|f| &mut f.direct_expedited)),
        }
    };
    const METHODS: usize = 5;
    // The transport's floor: an operation the daemon does not know, answered E_FAIL at
    // once by its coordinator, with no filesystem work (its log line is rate-limited).
    let unknown = VssOperation(42);
    let floor_trip = |samples: Option<&mut Samples>| -> anyhow::Result<()> {
        let t = Instant::now();
        let outcome = emu.forward_request(unknown);
        let took = t.elapsed();
        if outcome != HostOutcome::Replied(HvStatus::E_FAIL) {
            bail!("unknown operation: {outcome:?}");
        }
        if let Some(s) = samples {
            s.push(took);
        }
        Ok(())
    };
    // What the daemon does before every check and every freeze: read the mount table and
    // plan (in process here, with the daemon's default freezer settings).
    let config = FreezerConfig::default().compile()?;
    let selection = Selection::Explicit(vec![mp.clone()]);
    let planning = |samples: Option<&mut Samples>| -> anyhow::Result<()> {
        let t = Instant::now();
        let plan = make_plan(&MountSource::current(), &selection, &config)?;
        let took = t.elapsed();
        if plan.filesystems().count() != 1 {
            bail!("plan: expected the one filesystem");
        }
        if let Some(s) = samples {
            s.push(took);
        }
        Ok(())
    };
    for _ in 0..WARM_UP {
        for m in 0..METHODS {
            cycle(m, None)?;
        }
        floor_trip(None)?;
        planning(None)?;
    }
    let mut runs = Vec::new();
    for spacing in [Spacing::Spaced { pause }, Spacing::BackToBack] {
        let mut f = CycleFigures::default();
        let before = [d.ours.1.backups().len(), d.ours_off.1.backups().len()];
        match spacing {
            Spacing::Spaced { pause } => {
                for i in 0..spaced_cycles {
                    // Each method first in turn.
                    for m in 0..METHODS {
                        std::thread::sleep(pause);
                        cycle((i + m) % METHODS, Some(&mut f))?;
                    }
                }
            }
            Spacing::BackToBack => {
                const SLICES: usize = 5;
                let per_slice = cycles.div_ceil(SLICES);
                for _ in 0..SLICES {
                    for m in 0..METHODS {
                        for _ in 0..per_slice {
                            cycle(m, Some(&mut f))?;
                        }
                    }
                }
            }
        }
        // The daemons' own phase times of this run's cycles their histories still keep.
        let n = f.ours[0].0.len();
        for (daemon, before) in [&d.ours.1, &d.ours_off.1].into_iter().zip(before) {
            daemon.backup((before + n).min(50))?;
        }
        runs.push(Part2Run {
            spacing,
            phases: [phases(&d.ours.1, n), phases(&d.ours_off.1, n)],
            expedite: [
                d.ours.1.expedite_states(n.min(50)),
                d.ours_off.1.expedite_states(n.min(50)),
            ],
            figures: f,
        });
    }
    let (mut floor, mut plans) = (Samples::default(), Samples::default());
    for _ in 0..cycles {
        floor_trip(Some(&mut floor))?;
        planning(Some(&mut plans))?;
    }
    drop(d);
    drop(fs);
    for run in &runs {
        print_overhead(run);
    }
    let us = Unit::Us;
    println!();
    println!(
        "| transport floor, {cycles} round trips: hv-vssd, unknown op answered E_FAIL | {} |",
        floor.cell(us)
    );
    println!(
        "| in process: reading the mount table and planning (`make_plan`) | {} |",
        plans.cell(us)
    );
    Ok(())
}

/// Part 2's tables for one run.
fn print_overhead(run: &Part2Run) {
    let us = Unit::Us;
    let f = &run.figures;
    let [whole, ..] = &f.ours;
    let [s_whole, _, s_freeze, _] = &f.stock;
    println!();
    match run.spacing {
        Spacing::Spaced { pause } => println!(
            "One clean ext4, {} cycles each, {} ms between any two cycles, methods taking turns; median (min–max), ratios of medians",
            whole.0.len(),
            pause.as_millis()
        ),
        Spacing::BackToBack => println!(
            "One clean ext4, {} cycles each, back to back, each method in 5 runs of its own; median (min–max), ratios of medians",
            whole.0.len()
        ),
    }
    println!();
    println!(
        "| per cycle | stock daemon (baseline) | hv-vssd | hv-vssd / stock daemon | hv-vssd, expedite off | expedite off / stock daemon |"
    );
    println!("|---|---|---|---|---|---|");
    for (i, name) in [
        "HOT_BACKUP + FREEZE + THAW, host round trips",
        "of which HOT_BACKUP",
        "of which FREEZE",
        "of which THAW",
    ]
    .into_iter()
    .enumerate()
    {
        let (stock, ours, off) = (&f.stock[i], &f.ours[i], &f.ours_off[i]);
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            stock.cell(us),
            ours.cell(us),
            ratio(ours, stock),
            off.cell(us),
            ratio(off, stock)
        );
    }
    for (k, name) in ["hv-vssd", "hv-vssd, expedite off"].into_iter().enumerate() {
        let [prepare, flush_wait, sync, fifreeze, fithaw] = &run.phases[k];
        println!(
            "| {name}'s reports, last {} cycles: open+check+journal / wait for the flush ahead / syncfs / FIFREEZE / FITHAW; expedite | | {} / {} / {} / {} / {}; {} | | | |",
            prepare.0.len(),
            us.fmt(prepare.median()),
            us.fmt(flush_wait.median()),
            us.fmt(sync.median()),
            us.fmt(fifreeze.median()),
            us.fmt(fithaw.median()),
            run.expedite[k]
        );
    }
    println!();
    println!(
        "| in process, no request | open+FIFREEZE+close, open+FITHAW+close | / stock daemon's whole cycle | of which open+FIFREEZE+close | / stock daemon's FREEZE | hv-vssd's whole cycle / this |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, [d_whole, d_freeze]) in [
        ("direct (normal grace periods)", &f.direct),
        (
            "direct, expedited (rcu_expedited on around the FIFREEZE)",
            &f.direct_expedited,
        ),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            d_whole.cell(us),
            ratio(d_whole, s_whole),
            d_freeze.cell(us),
            ratio(d_freeze, s_freeze),
            ratio(whole, d_whole)
        );
    }
}

fn run(
    trials: usize,
    spaced_cycles: usize,
    cycles: usize,
    gap: Duration,
    pause: Duration,
) -> anyhow::Result<()> {
    let parts = std::env::var("PARTS").unwrap_or_else(|_| "1,2,3".into());
    let emu = KernelEmulator::start(EmulatorConfig::default())?;
    let started = Instant::now();
    if parts.contains('1') {
        part1(&emu, trials, gap)?;
    }
    if parts.contains('2') {
        let off_emu = KernelEmulator::start(EmulatorConfig::default())?;
        let stock_emu = KernelEmulator::start(EmulatorConfig::default())?;
        overhead([&emu, &off_emu, &stock_emu], spaced_cycles, cycles, pause)?;
    }
    if parts.contains('3') {
        kernel_share(env_count("PART3_CYCLES", 20))?;
    }
    eprintln!("measured in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Part 3: FIFREEZE + FITHAW of a clean filesystem after pauses, and where FIFREEZE waits.
fn kernel_share(cycles: usize) -> anyhow::Result<()> {
    let fs = LoopFs::new(FsKind::Ext4)?;
    let mp = fs.mount_point().to_path_buf();
    hv_vss_sys::fs::syncfs(hv_vss_sys::fs::open_mount_point(&mp)?.as_fd())?;
    println!();
    println!(
        "One clean ext4, in process: FIFREEZE and FITHAW after a pause since the last FITHAW; median (min–max) of {cycles}"
    );
    println!();
    println!("| pause | FIFREEZE | FITHAW |");
    println!("|---|---|---|");
    // Normal grace periods, then, after the longest pause, expedited ones (the switch on
    // around the FIFREEZE, its turning on and off timed with it, as in the freezer).
    let pauses = [0u64, 1, 2, 4, 8, 16, 32, 64, 100].map(|p| (p, false));
    for (pause_ms, expedite) in pauses.into_iter().chain([(100, true)]) {
        let (mut freeze, mut thaw) = (Samples::default(), Samples::default());
        for _ in 0..cycles {
            std::thread::sleep(Duration::from_millis(pause_ms));
            let fd = hv_vss_sys::fs::open_mount_point(&mp)?;
            let timed_freeze = || -> anyhow::Result<Duration> {
                let t = Instant::now();
                hv_vss_sys::fs::freeze(fd.as_fd())?;
                Ok(t.elapsed())
            };
            let took = if expedite {
                let t = Instant::now();
                rcu_switch::expedited(timed_freeze)?;
                t.elapsed()
            } else {
                rcu_switch::normal(timed_freeze)?
            };
            freeze.push(took);
            let t = Instant::now();
            hv_vss_sys::fs::thaw(fd.as_fd())?;
            thaw.push(t.elapsed());
        }
        let how = if expedite { ", rcu_expedited on" } else { "" };
        println!(
            "| {pause_ms} ms{how} | {} | {} |",
            freeze.cell(Unit::Us),
            thaw.cell(Unit::Us)
        );
    }
    // Where the call waits: its thread's kernel stack, sampled while it runs.
    let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
    let mut samples = 0;
    for _ in 0..cycles {
        std::thread::sleep(Duration::from_millis(100));
        let fd = hv_vss_sys::fs::open_mount_point(&mp)?;
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| -> anyhow::Result<()> {
            let caller = s.spawn(|| {
                // "PID/task/TID": this thread's directory under /proc.
                let _ = tid_tx.send(std::fs::read_link("/proc/thread-self"));
                let frozen = hv_vss_sys::fs::freeze(fd.as_fd());
                done.store(true, std::sync::atomic::Ordering::SeqCst);
                frozen
            });
            let task = tid_rx.recv()??;
            let path = format!("/proc/{}/stack", task.display());
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(stack) = std::fs::read_to_string(&path) {
                    let frames: Vec<&str> = stack
                        .lines()
                        .filter_map(|l| l.split_whitespace().nth(1))
                        .map(|f| f.split('+').next().unwrap_or(f))
                        .take(3)
                        .collect();
                    if !frames.is_empty() {
                        *seen.entry(frames.join(" < ")).or_default() += 1;
                        samples += 1;
                    }
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            caller
                .join()
                .map_err(|_| anyhow::anyhow!("FIFREEZE thread panicked"))??;
            Ok(())
        })?;
        hv_vss_sys::fs::thaw(fd.as_fd())?;
    }
    drop(fs);
    let mut by_count: Vec<(String, usize)> = seen.into_iter().collect();
    by_count.sort_by_key(|e| std::cmp::Reverse(e.1));
    println!();
    println!(
        "Where FIFREEZE waits after a 100 ms pause: {samples} kernel-stack samples of the calling thread over {cycles} calls, innermost three frames"
    );
    println!();
    println!("| frames (innermost first) | samples | share |");
    println!("|---|---|---|");
    for (frames, n) in by_count.iter().take(6) {
        println!(
            "| {frames} | {n} | {:.0}% |",
            100.0 * *n as f64 / samples.max(1) as f64
        );
    }
    Ok(())
}

fn part1(emu: &KernelEmulator, trials: usize, gap: Duration) -> anyhow::Result<()> {
    let filesystems: Vec<LoopFs> = (0..8)
        .map(|_| LoopFs::create(FsKind::Ext4, IMAGE_MIB, None))
        .collect::<anyhow::Result<_>>()?;
    let mounts: Vec<PathBuf> = filesystems
        .iter()
        .map(|f| f.mount_point().to_path_buf())
        .collect();
    frozen_window(emu, &mounts[..1], trials, gap)?;
    frozen_window(emu, &mounts, trials, gap)?;
    drop(filesystems);
    Ok(())
}

fn main() {
    if let Some(socket) = std::env::var_os(STOCK_DAEMON_ENV) {
        let mounts: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
        if let Err(e) = hv_vss_testutil::stock_daemon::serve(socket.as_ref(), &mounts) {
            eprintln!("stock daemon: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if !should_run("daemon_cycle") {
        return;
    }
    // Mounts made by other processes on this machine would make every FREEZE plan again
    // (the mount table changed since HOT_BACKUP): measure in a private mount namespace, as
    // a guest whose mounts hold still. Everything this run mounts vanishes with it.
    enter_private_mount_namespace("daemon_cycle");
    // The comparison needs the switch off between the expedited methods' FIFREEZE calls.
    let switch_at_start = rcu_switch::read();
    if switch_at_start != "0" {
        let warning = format!(
            "WARNING: {} is {switch_at_start} at the start: every method's FIFREEZE may be expedited, the comparison of normal and expedited grace periods is meaningless",
            hv_vss_freezer::expedite::RCU_EXPEDITED
        );
        eprintln!("{warning}");
        println!("{warning}");
    }
    let trials = env_count("TRIALS", 9);
    let spaced_cycles = env_count("SPACED_CYCLES", 100);
    let cycles = env_count("CYCLES", 500);
    let gap = Duration::from_millis(env_count("GAP_MS", 1000) as u64);
    let pause = Duration::from_millis(env_count("PAUSE_MS", 100) as u64);
    let outcome = std::panic::catch_unwind(|| {
        hv_vss_testutil::run_with_timeout(RUN_LIMIT, move || {
            run(trials, spaced_cycles, cycles, gap, pause)
        })
    });
    // A panic or timeout may leave a daemon running (its guard never dropped): kill it; its
    // guardian then thaws whatever it froze.
    for pid in pids().drain(..) {
        signal(pid, Signal::KILL);
    }
    rcu_switch::restore_if_left_on();
    println!();
    println!("{}", rcu_switch::summary(&switch_at_start));
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("daemon_cycle: {e:#}");
            std::process::exit(1);
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
