//! `hv-vss simulate`: a simulated Hyper-V host drives a guest over shared-memory rings, with
//! the same ring code and wake-up rules as `/dev/uioN`, and prints every step.
//!
//! Two guests:
//! - the real daemon (default): `hv-vssd --uio <socket> --state-dir <tmpfs dir> --mount
//!   <fs>... --auto-thaw N -n`. The daemon connects to the `SOCK_SEQPACKET` socket, receives
//!   the rings with `ShmRings::recv_from`, and serves them with its IC endpoint and
//!   coordinator, freezing the named filesystems for real;
//! - `--guest-loopback`: a **transport self-test**. A child process (this binary, with a
//!   hidden flag) serves the rings with an IC endpoint that answers every HOT_BACKUP, FREEZE
//!   and THAW with S_OK. Nothing is frozen and no daemon is involved.
//!
//! Safety: the daemon freezes only what `--mount` names, or, when none is named and we are
//! root, a small ext4 image this command creates, loop-mounts and removes. Never anything
//! else. The daemon's state directory is on tmpfs (`/dev/shm` or `/run`), never on a
//! filesystem that may be frozen.
//!
//! Exit status: 0 when negotiation agreed and every step of every cycle answered S_OK; 1
//! otherwise (including setup errors).

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hv_vss_protocol::HvStatus;
use hv_vss_sim::host::self_test_guest::{self, FixedPolicy};
use hv_vss_sim::host::{
    BackupCycle, HandoverListener, HostConfig, HostSimulator, NegotiationResult, StepReport,
    connect_handover,
};
use hv_vss_vmbus::ic_endpoint::IcEndpoint;
use hv_vss_vmbus::shm::ShmRings;
use serde_json::json;

use crate::duration;

/// Ring size per direction: uio_hv_generic's default for VSS (wire §3.2).
const RING_LEN: usize = 2 << 20;
/// How long the guest may take to connect to the hand-over socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the guest may take to exit after the host hangs up (and SIGTERM, for the
/// daemon).
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// `TMPFS_MAGIC` from linux/magic.h.
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// Size of the scratch ext4 image.
const IMAGE_LEN: u64 = 64 << 20;

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// The daemon binary [default: hv-vssd next to this executable].
    #[arg(long, value_name = "PATH")]
    daemon: Option<PathBuf>,
    /// A filesystem the daemon may freeze (repeatable). Without one, and as root, a
    /// scratch ext4 image is created and loop-mounted; nothing else is ever frozen.
    #[arg(long = "mount", value_name = "PATH")]
    mounts: Vec<PathBuf>,
    /// Backup cycles to run (HOT_BACKUP, FREEZE, hold, THAW, BU_COMPLETE each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    cycles: u32,
    /// How long the host holds the freeze (the snapshot), e.g. 500ms, 2s, 1m, at most 24h.
    #[arg(long, default_value = "1s", value_parser = duration::parse_hold)]
    hold: Duration,
    /// Auto-thaw bound passed to the daemon, in seconds.
    #[arg(long, default_value_t = 60)]
    auto_thaw: u64,
    /// How long the host waits for each reply, at most 1h.
    #[arg(long, default_value = "60s", value_parser = duration::parse_reply_timeout)]
    reply_timeout: Duration,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
    /// Transport self-test: serve the rings from a child process that answers S_OK to
    /// everything, without the daemon; nothing is frozen.
    #[arg(long)]
    guest_loopback: bool,
    /// Internal: run as the loopback guest, connecting to this socket.
    #[arg(long, hide = true, value_name = "SOCKET")]
    loopback_guest_child: Option<PathBuf>,
}

pub fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    if let Some(socket) = &args.loopback_guest_child {
        return run_loopback_guest(socket);
    }
    let work = tempfile::Builder::new()
        .prefix("hv-vss-simulate-")
        .tempdir()
        .context("creating a temporary directory")?;
    let socket = work.path().join("vss.sock");
    let listener = HandoverListener::bind(&socket)
        .with_context(|| format!("listening on {}", socket.display()))?;

    // Everything the guest needs lives until the end of this function; the scratch
    // filesystem is unmounted last (after the daemon is gone).
    let mut scratch = None;
    let mut state_dir = None;
    let (mode, mut guest) = if args.guest_loopback {
        let exe = std::env::current_exe().context("locating this executable")?;
        let child = Command::new(exe)
            .arg("simulate")
            .arg("--loopback-guest-child")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the loopback guest")?;
        (Mode::Loopback, GuestProcess::new(child, "loopback guest"))
    } else {
        let daemon = daemon_path(args.daemon.as_deref())?;
        check_daemon_supports_uio(&daemon)?;
        let mounts = if args.mounts.is_empty() {
            if !rustix::process::geteuid().is_root() {
                bail!(
                    "no --mount given: name a filesystem the daemon may freeze (e.g. a \
                     loop-mounted test image), or run as root to let simulate create a \
                     scratch ext4 image; use --guest-loopback for a transport self-test \
                     that freezes nothing"
                );
            }
            let fs = ScratchFs::create(work.path())?;
            let mount = fs.mount_point.clone();
            scratch = Some(fs);
            vec![mount]
        } else {
            args.mounts.clone()
        };
        let dir = tmpfs_state_dir()?;
        let mut cmd = Command::new(&daemon);
        cmd.arg("--uio")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path());
        for m in &mounts {
            cmd.arg("--mount").arg(m);
        }
        cmd.arg("--auto-thaw")
            .arg(args.auto_thaw.to_string())
            .arg("-n")
            .stdin(Stdio::null());
        if args.json {
            // Keep stdout a single JSON document.
            cmd.stdout(Stdio::null());
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", daemon.display()))?;
        state_dir = Some(dir);
        (
            Mode::Daemon { daemon, mounts },
            GuestProcess::new(child, "daemon"),
        )
    };

    let result = drive(&args, &listener, &mut guest, &mode);
    let exit = guest.stop();
    drop(state_dir);
    drop(scratch);
    let report = result?;
    let exit = exit?;

    if args.json {
        let doc = report.to_json(&mode, &exit);
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        report.print_summary(&exit);
    }
    Ok(if report.ok() && exit.clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Which guest runs.
#[derive(Debug)]
enum Mode {
    Loopback,
    Daemon {
        daemon: PathBuf,
        mounts: Vec<PathBuf>,
    },
}

impl Mode {
    fn describe(&self) -> String {
        match self {
            Mode::Loopback => "transport self-test: guest endpoint in a child process with a \
                               fixed S_OK policy; no daemon, nothing is frozen"
                .into(),
            Mode::Daemon { daemon, mounts } => format!(
                "daemon {} freezing {}",
                daemon.display(),
                mounts
                    .iter()
                    .map(|m| m.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// What the host saw.
#[derive(Debug)]
struct Report {
    negotiation: StepReport,
    negotiated: Option<NegotiationResult>,
    cycles: Vec<BackupCycle>,
    cycles_wanted: u32,
}

impl Report {
    fn ok(&self) -> bool {
        matches!(self.negotiated, Some(NegotiationResult::Agreed { .. }))
            && self.cycles.len() == self.cycles_wanted as usize
            && self.cycles.iter().all(|c| c.all_ok)
    }

    fn print_summary(&self, exit: &GuestExit) {
        let ok_cycles = self.cycles.iter().filter(|c| c.all_ok).count();
        println!(
            "summary: {}; {ok_cycles}/{} cycles answered S_OK at every step",
            match self.negotiated {
                Some(NegotiationResult::Agreed {
                    framework, message, ..
                }) => format!("negotiated framework {framework}, VSS {message}"),
                Some(NegotiationResult::Refused { .. }) => "negotiation refused".into(),
                None => "negotiation failed".into(),
            },
            self.cycles_wanted
        );
        for (i, c) in self.cycles.iter().enumerate() {
            if let (Some(frozen), Some(snap)) = (c.frozen_window, c.snapshot_window) {
                println!(
                    "  cycle {}: frozen window as seen by the host {} (FREEZE sent to THAW \
                     reply), snapshot window {} (FREEZE reply to THAW sent)",
                    i + 1,
                    ms(frozen),
                    ms(snap)
                );
            }
        }
        println!("  {}: {}", exit.name, exit.description);
    }

    fn to_json(&self, mode: &Mode, exit: &GuestExit) -> serde_json::Value {
        let (mode_name, daemon, mounts) = match mode {
            Mode::Loopback => ("guest-loopback", None, Vec::new()),
            Mode::Daemon { daemon, mounts } => (
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
        json!({
            "mode": mode_name,
            "daemon": daemon,
            "mounts": mounts,
            "negotiation": step_json(&self.negotiation),
            "negotiated": negotiated,
            "cycles": self.cycles.iter().map(|c| json!({
                "steps": c.steps.iter().map(step_json).collect::<Vec<_>>(),
                "frozen_window_ms": c.frozen_window.map(|d| d.as_secs_f64() * 1e3),
                "snapshot_window_ms": c.snapshot_window.map(|d| d.as_secs_f64() * 1e3),
                "ok": c.all_ok,
            })).collect::<Vec<_>>(),
            "guest_exit": {"clean": exit.clean, "description": exit.description},
            "ok": self.ok() && exit.clean,
        })
    }
}

fn status_name(s: Option<HvStatus>) -> String {
    match s {
        Some(s) => s
            .name()
            .map_or_else(|| format!("{:#010x}", s.0), str::to_string),
        None => "-".into(),
    }
}

fn step_json(s: &StepReport) -> serde_json::Value {
    json!({
        "op": s.step.to_string(),
        "trans_id": format!("{:#x}", s.trans_id),
        "status": s.status.map(|_| status_name(s.status)),
        "latency_ms": s.latency.map(|d| d.as_secs_f64() * 1e3),
        "error": s.error,
    })
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn print_step(json: bool, step: &StepReport) {
    if json {
        return;
    }
    let latency = step.latency.map_or_else(|| "-".into(), ms);
    let mut line = format!(
        "  {:<12} trans_id {:#018x}  {:<7} {latency:>12}",
        step.step.to_string(),
        step.trans_id,
        status_name(step.status)
    );
    if let Some(e) = &step.error {
        line.push_str(&format!("  error: {e}"));
    }
    println!("{line}");
    let _ = std::io::stdout().flush();
}

/// Accepts the guest, hands it the rings, and runs NEGOTIATE and the cycles.
fn drive(
    args: &SimulateArgs,
    listener: &HandoverListener,
    guest: &mut GuestProcess,
    mode: &Mode,
) -> anyhow::Result<Report> {
    if !args.json {
        println!("hv-vss simulate: {}", mode.describe());
    }
    let conn = accept_guest(listener, guest)?;
    let rings = ShmRings::create(RING_LEN).context("creating the shared-memory rings")?;
    rings
        .send_over(&conn)
        .context("handing the rings to the guest")?;
    let config = HostConfig::default().with_reply_timeout(args.reply_timeout);
    let mut sim = HostSimulator::new(rings, config).context("starting the host simulator")?;
    guest.conn = Some(conn);

    let negotiated = sim.negotiate();
    let trans_id = sim.exchanges().last().map_or(0, |e| e.trans_id);
    let negotiation = match &negotiated {
        Ok(NegotiationResult::Agreed { latency, .. }) => StepReport {
            step: hv_vss_sim::host::Step::Negotiate,
            trans_id,
            status: Some(HvStatus::S_OK),
            latency: Some(*latency),
            error: None,
        },
        Ok(NegotiationResult::Refused { latency }) => StepReport {
            step: hv_vss_sim::host::Step::Negotiate,
            trans_id,
            status: Some(HvStatus::E_FAIL),
            latency: Some(*latency),
            error: None,
        },
        Err(e) => StepReport {
            step: hv_vss_sim::host::Step::Negotiate,
            trans_id,
            status: None,
            latency: None,
            error: Some(e.to_string()),
        },
    };
    if !args.json {
        println!(
            "  {:<12} {:<27} {:<7} {:>12}",
            "op", "transaction", "status", "latency"
        );
    }
    print_step(args.json, &negotiation);
    let mut report = Report {
        negotiation,
        negotiated: negotiated.ok(),
        cycles: Vec::new(),
        cycles_wanted: args.cycles,
    };
    if !matches!(report.negotiated, Some(NegotiationResult::Agreed { .. })) {
        return Ok(report);
    }
    for i in 0..args.cycles {
        if !args.json {
            println!("cycle {} of {}:", i + 1, args.cycles);
        }
        let cycle = sim.backup_cycle(args.hold);
        for s in &cycle.steps {
            print_step(args.json, s);
        }
        let ok = cycle.all_ok;
        report.cycles.push(cycle);
        if !ok {
            break;
        }
    }
    Ok(report)
}

/// Waits for the guest's connection, failing early if the guest exits.
fn accept_guest(listener: &HandoverListener, guest: &mut GuestProcess) -> anyhow::Result<OwnedFd> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        if let Some(conn) = listener.accept(Duration::from_millis(100))? {
            return Ok(conn);
        }
        if let Some(status) = guest.child.try_wait()? {
            bail!(
                "the {} exited ({status}) before connecting to the hand-over socket",
                guest.name
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the {} did not connect to the hand-over socket within {CONNECT_TIMEOUT:?}",
                guest.name
            );
        }
    }
}

/// The child serving the guest side, stopped when this command ends.
struct GuestProcess {
    child: Child,
    name: &'static str,
    conn: Option<OwnedFd>,
    stopped: bool,
}

/// How the guest process ended.
#[derive(Debug)]
struct GuestExit {
    name: &'static str,
    clean: bool,
    description: String,
}

impl GuestProcess {
    fn new(child: Child, name: &'static str) -> Self {
        Self {
            child,
            name,
            conn: None,
            stopped: false,
        }
    }

    /// Hangs up the hand-over socket, asks the child to stop (SIGTERM for the daemon) and
    /// waits; kills it after [`EXIT_TIMEOUT`].
    fn stop(&mut self) -> anyhow::Result<GuestExit> {
        self.stopped = true;
        drop(self.conn.take());
        if self.name == "daemon" {
            self.signal(rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(GuestExit {
                    name: self.name,
                    clean: status.success(),
                    description: format!("exited with {status}"),
                });
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let status = self.child.wait()?;
                return Ok(GuestExit {
                    name: self.name,
                    clean: false,
                    description: format!("did not exit within {EXIT_TIMEOUT:?}; killed ({status})"),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: rustix::process::Signal) {
        if let Some(pid) = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
}

impl Drop for GuestProcess {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.stop();
        }
    }
}

/// `--daemon`, or `hv-vssd` next to this executable.
fn daemon_path(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    let path = exe.with_file_name("hv-vssd");
    if !path.exists() {
        bail!(
            "{} not found; pass --daemon PATH, or --guest-loopback for a transport self-test",
            path.display()
        );
    }
    Ok(path)
}

/// Refuses a daemon whose `--help` does not mention `--uio`.
fn check_daemon_supports_uio(daemon: &Path) -> anyhow::Result<()> {
    let out = Command::new(daemon)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --help", daemon.display()))?;
    let help = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    if !help.contains("--uio") {
        bail!(
            "{} does not support --uio yet; use --guest-loopback for a transport self-test",
            daemon.display()
        );
    }
    Ok(())
}

// f_type is i64 on x86_64 glibc but i32 or u32 on other targets.
#[allow(clippy::unnecessary_cast)]
fn is_tmpfs_magic(f_type: rustix::fs::FsWord) -> bool {
    f_type as i64 == TMPFS_MAGIC
}

/// A state directory on tmpfs (R59: never on a filesystem that may be frozen).
fn tmpfs_state_dir() -> anyhow::Result<tempfile::TempDir> {
    for base in ["/dev/shm", "/run"] {
        let is_tmpfs = rustix::fs::statfs(base)
            .map(|s| is_tmpfs_magic(s.f_type))
            .unwrap_or(false);
        if is_tmpfs
            && let Ok(dir) = tempfile::Builder::new()
                .prefix("hv-vss-simulate-")
                .tempdir_in(base)
        {
            return Ok(dir);
        }
    }
    bail!("no writable tmpfs for the daemon's state directory (tried /dev/shm and /run)")
}

/// A scratch ext4 image, loop-mounted in the work directory; thawed (in case), unmounted
/// and deleted on drop.
struct ScratchFs {
    mount_point: PathBuf,
    mounted: bool,
}

impl ScratchFs {
    fn create(work: &Path) -> anyhow::Result<Self> {
        let image = work.join("scratch.ext4");
        let mount_point = work.join("scratch");
        std::fs::create_dir(&mount_point)?;
        let file = std::fs::File::create(&image)?;
        file.set_len(IMAGE_LEN)?;
        drop(file);
        run_tool(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))?;
        run_tool(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mount_point),
        )?;
        std::fs::write(mount_point.join("hello"), "written before the freeze\n")?;
        Ok(Self {
            mount_point,
            mounted: true,
        })
    }
}

impl Drop for ScratchFs {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        // We created this filesystem; if anything left it frozen, thaw it before unmounting.
        if let Ok(fd) = hv_vss_sys::fs::open_mount_point(&self.mount_point) {
            let _ = hv_vss_sys::fs::thaw(fd.as_fd());
        }
        let ok = Command::new("umount")
            .arg(&self.mount_point)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mount_point)
                .status();
        }
    }
}

fn run_tool(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The loopback guest (child process): receive the rings, serve with the fixed policy
/// until the host hangs up.
fn run_loopback_guest(socket: &Path) -> anyhow::Result<ExitCode> {
    let (conn, rings) = connect_handover(socket).context("receiving the rings")?;
    let channel = rings.guest().context("mapping the rings")?;
    let mut endpoint = IcEndpoint::new(channel);
    self_test_guest::serve(&mut endpoint, FixedPolicy::ALWAYS_OK, conn.as_fd())
        .context("serving the channel")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }

    fn parse(args: &[&str]) -> Result<SimulateArgs, String> {
        Cli::try_parse_from(std::iter::once("simulate").chain(args.iter().copied()))
            .map(|cli| cli.args)
            .map_err(|e| e.to_string())
    }

    /// `--hold` and `--reply-timeout` go through the shared, bounded duration parsers.
    #[test]
    fn durations_are_parsed_by_the_shared_bounded_parsers() {
        let args = parse(&["--hold", "1m 30s", "--reply-timeout", "500ms"]).unwrap();
        assert_eq!(args.hold, Duration::from_secs(90));
        assert_eq!(args.reply_timeout, Duration::from_millis(500));
        let defaults = parse(&[]).unwrap();
        assert_eq!(defaults.hold, Duration::from_secs(1));
        assert_eq!(defaults.reply_timeout, Duration::from_secs(60));
        let err = parse(&["--hold", "25h"]).unwrap_err();
        assert!(err.contains("maximum of 24h"), "{err}");
        let err = parse(&["--reply-timeout", "10000000000000000000"]).unwrap_err();
        assert!(err.contains("maximum of 1h"), "{err}");
        let err = parse(&["--hold", "soon"]).unwrap_err();
        assert!(err.contains("not a duration"), "{err}");
    }
}
