//! What application participants add to the FREEZE stage (issue 7, "Benchmark"): N socket
//! clients that ack at once against N trivial hook scripts run one after another (the
//! qemu-ga way), for N = 1, 10, 100, 1000, through the real `hv-vssd` (release build) in
//! drop-in mode, driven by the kernel emulator (`hv_vss_sim::kernel::KernelEmulator`).
//!
//! # Setup
//!
//! Per N, three daemons run side by side, each with its own emulator, state directory on
//! tmpfs and clean 32 MiB loop-mounted ext4 (nothing written to it) that it freezes with
//! `--mount` (a filesystem of its own, so that what one daemon's thaw leaves for the
//! journal to write never lands in another's freeze):
//!
//! - **baseline**: no participant (`hooks = []`, no client);
//! - **clients**: N clients registered on its app socket (`[apps] max_clients` raised to
//!   fit), all in the default tier, so the daemon tells them `freeze` at once. The clients
//!   are N Unix stream connections served by one thread of this bench, which polls them all
//!   and acks every `check`, `freeze` and `thaw` the moment it reads it;
//! - **hooks**: one `[[hooks]]` directory of style `qemu-ga` holding N scripts
//!   `#!/bin/sh` + `exit 0` (root-owned, 0755), which the daemon's hook runner runs one
//!   after another with `freeze` (and `thaw` in reverse), as qemu-ga's fsfreeze-hook does.
//!
//! Each trial runs one backup against each daemon in turn, starting with the next one each
//! trial (baseline, clients, hooks; then clients, hooks, baseline; ...), so load from
//! elsewhere, and whatever one backup leaves for the next, falls on all three alike: HOT_BACKUP (untimed, hosts send it first),
//! then FREEZE and THAW, each a timed host round trip, THAW sent as soon as FREEZE is
//! answered. Every request must be answered S_OK: a participant that missed its freeze
//! would have vetoed it.
//!
//! Reported per N, as median (min–max), the overhead (median minus the baseline's median)
//! and the ratio of medians to the baseline:
//! - the FREEZE round trip as the host sees it;
//! - the daemon's own account of the participants' freeze stage, from its report in
//!   `STATE_DIR/history.jsonl`: FREEZE received → FIFREEZE issued (whole milliseconds),
//!   free of the FIFREEZE itself, whose time on a loop device varies by tens of ms; and
//!   the rest, FIFREEZE issued → FREEZE answered;
//! - the THAW round trip (the thaw is answered after every participant acked it).
//!
//! Run (root; release build of hv-vssd and this bench):
//! `cargo bench -p hv-vssd --bench app_freeze` (env `TRIALS`, default 9; `COUNTS`, a
//! comma-separated list of N, default `1,10,100,1000`). Not a test: nothing is asserted
//! except that every request got S_OK; the results are printed as a Markdown table.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hv_vss_app_protocol::{
    Ack, ClientMessage, DaemonMessage, EventKind, LineBuffer, Register, parse_daemon_line,
};
use hv_vss_protocol::{HvStatus, VssOperation};
use hv_vss_sim::kernel::{EmulatorConfig, HostOutcome, KernelEmulator};
use hv_vss_testutil::bench::{env_count, should_run};
use hv_vss_testutil::vssd::Vssd;
use hv_vss_testutil::{FsKind, LoopFs, tmpfs_state_dir};
use rustix::event::{PollFd, PollFlags, Timespec};

const READY: Duration = Duration::from_secs(15);
const WARM_UP: usize = 2;
/// The whole run; on expiry every test filesystem is thawed (the daemons die with the
/// process; their guardians thaw what they froze).
const RUN_LIMIT: Duration = Duration::from_secs(900);

/// One daemon with its emulator and state directory.
struct Subject {
    emu: KernelEmulator,
    daemon: Vssd,
    state: tempfile::TempDir,
}

impl Subject {
    fn start(mount: &Path, config: &str) -> anyhow::Result<Self> {
        let emu = KernelEmulator::start(EmulatorConfig::default())?;
        let state = tmpfs_state_dir()?;
        let daemon = Vssd::start_with_config(
            Path::new(env!("CARGO_BIN_EXE_hv-vssd")),
            emu.socket_path(),
            state.path(),
            &[mount],
            config,
        );
        if !emu.wait_ready(READY) {
            bail!("hv-vssd never registered:\n{}", daemon.log());
        }
        Ok(Self { emu, daemon, state })
    }

    fn request(&self, op: VssOperation) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let outcome = self.emu.host_request(op);
        let took = t.elapsed();
        if outcome != HostOutcome::Replied(HvStatus::S_OK) {
            bail!("{op:?}: {outcome:?}\n{}", self.daemon.log());
        }
        Ok(took)
    }

    /// One backup: (FREEZE round trip, THAW round trip, the daemon's (FREEZE received →
    /// FIFREEZE issued, FIFREEZE issued → FREEZE answered) in ms).
    fn backup(&self, number: usize) -> anyhow::Result<(Duration, Duration, (u64, u64))> {
        self.request(VssOperation::HOT_BACKUP)?;
        let freeze = self.request(VssOperation::FREEZE)?;
        let thaw = self.request(VssOperation::THAW)?;
        Ok((freeze, thaw, self.freeze_phases_ms(number)?))
    }

    /// From backup `number`'s report in the history (written after its THAW), in the
    /// daemon's own milliseconds: FREEZE received → FIFREEZE issued (the freeze stage of the
    /// participants), and FIFREEZE issued → FREEZE answered.
    fn freeze_phases_ms(&self, number: usize) -> anyhow::Result<(u64, u64)> {
        let path = self.state.path().join("history.jsonl");
        let give_up = Instant::now() + Duration::from_secs(10);
        let entry = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let backups: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|e| e["report"]["kind"] == "backup")
                .collect();
            if let Some(e) = backups.into_iter().nth(number - 1) {
                break e;
            }
            if Instant::now() >= give_up {
                bail!("no report of backup {number}:\n{}", self.daemon.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let report = &entry["report"];
        let freeze = report["requests"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["op"] == "freeze"))
            .context("report: the FREEZE request")?;
        let received = freeze["received_at"]
            .as_u64()
            .context("report: FREEZE received_at")?;
        let answered = freeze["answer"]["at"]
            .as_u64()
            .context("report: FREEZE answer")?;
        let issued = report["fs"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["stage"] == "freeze_fs"))
            .and_then(|f| f["issued_at"].as_u64())
            .context("report: the freeze_fs stage")?;
        Ok((
            issued.saturating_sub(received),
            answered.saturating_sub(issued),
        ))
    }
}

/// N registered clients served by one polling thread that acks every event at once.
struct Clients {
    stop: Arc<AtomicBool>,
    freezes: Arc<AtomicU64>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Clients {
    fn register(socket: &Path, count: usize) -> anyhow::Result<Self> {
        let mut conns = Vec::with_capacity(count);
        for i in 0..count {
            let mut stream = UnixStream::connect(socket)
                .with_context(|| format!("client {i}: connect {}", socket.display()))?;
            let register = ClientMessage::Register(Register {
                name: format!("bench-{i:04}"),
                tier: None,
                timeout_ms: None,
            });
            stream.write_all(&register.to_line())?;
            let mut lines = LineBuffer::new();
            let line = loop {
                if let Some(line) = lines.next_line()? {
                    break line;
                }
                let mut buf = [0u8; 512];
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    bail!("client {i}: closed before registered");
                }
                lines.push(&buf[..n]);
            };
            match parse_daemon_line(&line)? {
                DaemonMessage::Registered { .. } => {}
                other => bail!("client {i}: {other:?}"),
            }
            stream.set_nonblocking(true)?;
            conns.push((stream, lines));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let freezes = Arc::new(AtomicU64::new(0));
        let thread = std::thread::Builder::new().name("clients".into()).spawn({
            let (stop, freezes) = (stop.clone(), freezes.clone());
            move || serve(conns, &stop, &freezes)
        })?;
        Ok(Self {
            stop,
            freezes,
            thread: Some(thread),
        })
    }

    fn finish(mut self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        }
        Ok(self.freezes.load(Ordering::Relaxed))
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The clients' loop: poll every connection, ack each check, freeze and thaw as read.
fn serve(
    mut conns: Vec<(UnixStream, LineBuffer)>,
    stop: &AtomicBool,
    freezes: &AtomicU64,
) -> anyhow::Result<()> {
    let tick = Timespec {
        tv_sec: 0,
        tv_nsec: 50_000_000,
    };
    let mut ready = Vec::with_capacity(conns.len());
    while !stop.load(Ordering::Relaxed) {
        ready.clear();
        {
            let mut fds: Vec<PollFd<'_>> = conns
                .iter()
                .map(|(s, _)| PollFd::new(s, PollFlags::IN))
                .collect();
            match rustix::event::poll(&mut fds, Some(&tick)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            ready.extend(
                fds.iter()
                    .enumerate()
                    .filter(|(_, fd)| !fd.revents().is_empty())
                    .map(|(i, _)| i),
            );
        }
        for &i in &ready {
            let (stream, lines) = &mut conns[i];
            let mut buf = [0u8; 4096];
            match stream.read(&mut buf) {
                Ok(0) => bail!("client {i}: the daemon closed the connection"),
                Ok(n) => lines.push(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
            while let Some(line) = lines.next_line()? {
                let msg = parse_daemon_line(&line)?;
                let Some((kind, txn, _)) = msg.as_event() else {
                    continue;
                };
                if kind == EventKind::Freeze {
                    freezes.fetch_add(1, Ordering::Relaxed);
                }
                let ack = ClientMessage::Ack(Ack {
                    txn,
                    ok: true,
                    message: None,
                });
                write_all_nonblocking(stream, &ack.to_line())?;
            }
        }
    }
    Ok(())
}

fn write_all_nonblocking(stream: &mut UnixStream, mut bytes: &[u8]) -> anyhow::Result<()> {
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A hook directory with `count` trivial scripts, as the daemon's scan accepts them.
fn hook_dir(count: usize) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix("hv-vss-hooks-").tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    for i in 0..count {
        let path = dir.path().join(format!("{i:04}-hook"));
        std::fs::write(&path, "#!/bin/sh\nexit 0\n")?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(dir)
}

/// Samples in µs.
#[derive(Default)]
struct Samples(Vec<u64>);

impl Samples {
    fn push(&mut self, d: Duration) {
        self.0.push(d.as_micros() as u64);
    }

    fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0) as f64
    }

    fn cell(&self) -> String {
        let lo = self.0.iter().min().copied().unwrap_or(0);
        let hi = self.0.iter().max().copied().unwrap_or(0);
        format!(
            "{} ({}–{})",
            ms(self.median()),
            ms(lo as f64),
            ms(hi as f64)
        )
    }
}

fn ms(us: f64) -> String {
    format!("{:.1}", us / 1000.0)
}

/// Baseline, clients and hooks for one N: (freeze, thaw) samples of each, in that order.
fn measure(count: usize, trials: usize) -> anyhow::Result<[[Samples; 4]; 3]> {
    let hooks = hook_dir(count)?;
    let filesystems: Vec<LoopFs> = (0..3)
        .map(|_| LoopFs::create(FsKind::Ext4, 32, None))
        .collect::<anyhow::Result<_>>()?;
    let mount = |i: usize| filesystems[i].mount_point();
    let base = Subject::start(mount(0), "hooks = []\n")?;
    let clients_daemon = Subject::start(
        mount(1),
        &format!("hooks = []\n[apps]\nmax_clients = {}\n", count + 16),
    )?;
    let hooks_daemon = Subject::start(
        mount(2),
        &format!(
            "[[hooks]]\ndir = \"{}\"\nstyle = \"qemu-ga\"\n",
            hooks.path().display()
        ),
    )?;
    let clients = Clients::register(&clients_daemon.daemon.socket(), count)?;
    let subjects = [&base, &clients_daemon, &hooks_daemon];
    let mut out: [[Samples; 4]; 3] = Default::default();
    for trial in 0..WARM_UP + trials {
        // Each trial starts with the next subject, so none always follows the same one.
        for k in 0..subjects.len() {
            let i = (trial + k) % subjects.len();
            let (freeze, thaw, (stage_ms, rest_ms)) = subjects[i].backup(trial + 1)?;
            if trial >= WARM_UP {
                out[i][0].push(freeze);
                out[i][1].push(thaw);
                out[i][2].push(Duration::from_millis(stage_ms));
                out[i][3].push(Duration::from_millis(rest_ms));
            }
        }
    }
    let told = clients.finish()?;
    drop([base, clients_daemon, hooks_daemon]);
    drop(filesystems);
    let want = (count * (WARM_UP + trials)) as u64;
    if told != want {
        bail!("the clients were told to freeze {told} times, expected {want}");
    }
    Ok(out)
}

fn counts() -> Vec<usize> {
    std::env::var("COUNTS")
        .ok()
        .and_then(|v| v.split(',').map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 10, 100, 1000])
}

/// 1000 connections need more descriptors than the usual soft limit of 1024.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

fn run(trials: usize) -> anyhow::Result<()> {
    raise_fd_limit();
    let started = Instant::now();
    println!(
        "FREEZE and THAW host round trips, ms, median (min–max) of {trials} trials; overhead = median − baseline median; ratio of medians"
    );
    println!();
    println!(
        "| N | stage | baseline (no participant) | N clients | overhead | ratio | N hooks (qemu-ga way) | overhead | ratio |"
    );
    println!("|---:|---|---|---|---:|---:|---|---:|---:|");
    for count in counts() {
        let [base, clients, hooks] = measure(count, trials)?;
        for (stage, i) in [
            ("FREEZE round trip", 0),
            ("daemon: FREEZE received → FIFREEZE", 2),
            ("daemon: FIFREEZE → FREEZE answered", 3),
            ("THAW round trip", 1),
        ] {
            let b = base[i].median();
            // A baseline of 0 (the stage as the daemon reports it) has no ratio.
            let ratio = |m: f64| {
                if b > 0.0 {
                    format!("{:.2}x", m / b)
                } else {
                    "–".into()
                }
            };
            println!(
                "| {count} | {stage} | {} | {} | {} | {} | {} | {} | {} |",
                base[i].cell(),
                clients[i].cell(),
                ms(clients[i].median() - b),
                ratio(clients[i].median()),
                hooks[i].cell(),
                ms(hooks[i].median() - b),
                ratio(hooks[i].median()),
            );
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "measured in {:.0} s; load average at the end: {}",
        started.elapsed().as_secs_f64(),
        load.trim()
    );
    Ok(())
}

fn main() {
    if !should_run("app_freeze") {
        return;
    }
    let trials = env_count("TRIALS", 9);
    // An error or panic drops every Vssd (SIGTERM: it thaws and exits; its guardian thaws
    // what a killed one froze); a run past the limit thaws the test filesystem.
    if let Err(e) = hv_vss_testutil::run_with_timeout(RUN_LIMIT, move || run(trials)) {
        eprintln!("app_freeze: {e:#}");
        std::process::exit(1);
    }
}
