//! `hv-vss simulate`: a simulated Hyper-V backup against the real daemon, shown as a
//! timeline and checked, not claimed.
//!
//! The simulated host drives the guest over shared-memory rings, with the same ring code
//! and wake-up rules as `/dev/uioN`. Two guests:
//! - the real daemon (default): `hv-vssd --uio <socket> --state-dir <tmpfs dir> --mount
//!   <fs>... --auto-thaw N -n`, its log (stdout and stderr) in a file named at the end;
//! - `--guest-loopback`: a **transport self-test**. A child process (this binary, with a
//!   hidden flag) serves the rings with an IC endpoint that answers every HOT_BACKUP, FREEZE
//!   and THAW with S_OK. Nothing is frozen and no daemon is involved.
//!
//! # The demo application client
//!
//! In daemon mode, before the first cycle, a demo client ([`demo_client`]) registers on the
//! daemon's app socket and acks every check, freeze and thaw; the timeline shows what it was
//! told and when. The daemon's verdict of each backup (from its history) is then
//! application-consistent: every registered client acked its freeze and held until the thaw.
//! With `--no-demo-client` no client takes part and it is filesystem-consistent.
//!
//! # The checked verdict
//!
//! Without `--mount`, and as root, a small ext4 image is created and loop-mounted, and a
//! writer thread keeps writing to it. Between the FREEZE reply and THAW the host takes its
//! snapshot by copying the image ([`snapshot`]); after THAW it checks the copy (`e2fsck
//! -fn`, and no journal left to replay). The verdict is "consistent (checked)" only when
//! that check passes. `--mount PATH` of a loop-mounted ext image is copied and checked the
//! same way; anything else is "not checked", with the reason. The hidden test switch
//! `--test-skip-freeze` makes the host skip FREEZE (the snapshot is then taken of a live
//! filesystem) and must give "not consistent".
//!
//! # Safety
//!
//! The daemon freezes only what `--mount` names, or the scratch image. Never anything
//! else. Its state directory is on tmpfs (`/dev/shm` or `/run`), never on a filesystem that
//! may be frozen. Nothing is printed while the scratch filesystem is frozen that could land
//! on it (stdout and stderr are the caller's).
//!
//! # Exit status
//!
//! 0: negotiation agreed, every step of every cycle answered S_OK, and every verdict is
//! "consistent (checked)" (or "not checked", with the reason shown); 1: a step failed or a
//! snapshot is not consistent; 3: needs root; 12: the simulation could not be set up. The
//! daemon's application- or filesystem-consistency is reported, not part of the exit status.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use hv_vss_protocol::{HvStatus, VssOperation};
use hv_vss_sim::host::{
    HandoverListener, HostConfig, HostSimulator, NegotiationResult, SimError, Step, StepReport,
    VssReply,
};
use hv_vss_vmbus::shm::ShmRings;

use crate::duration;
use crate::exit_codes;

mod demo_client;
mod guest;
mod report;
mod snapshot;
mod timeline;
mod writer;

use demo_client::{DemoClient, DemoReport};
use guest::{
    GuestProcess, ScratchFs, accept_guest, check_daemon_supports_uio, daemon_path,
    run_loopback_guest, tmpfs_state_dir,
};
use report::{Cycle, HostStep, Report, ms};
use snapshot::{Check, Snapshottable};
use timeline::{Progress, Timeline, Who};

/// Ring size per direction: uio_hv_generic's default for VSS (wire §3.2).
const RING_LEN: usize = 2 << 20;
/// How long the guest may take to connect to the hand-over socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the guest may take to exit after SIGTERM (the daemon) or the hang-up.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the daemon may take to exit on SIGTERM before the host also hangs up.
const SIGTERM_GRACE: Duration = Duration::from_secs(5);
/// `TMPFS_MAGIC` from linux/magic.h.
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// Size of the scratch ext4 image.
const IMAGE_LEN: u64 = 64 << 20;
/// A write call slower than this counts as blocked by the freeze.
const WRITER_NOTABLE: Duration = Duration::from_millis(5);

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 every cycle consistent (checked) or not checked with \
    the reason; 1 a step failed or a snapshot is not consistent; 2 bad arguments; 3 needs \
    root; 12 the simulation could not be set up (docs/cli.md)."
)]
pub struct SimulateArgs {
    /// The daemon binary [default: hv-vssd next to this executable].
    #[arg(long, value_name = "PATH")]
    daemon: Option<PathBuf>,
    /// A filesystem the daemon may freeze (repeatable). Without one, and as root, a
    /// scratch ext4 image is created and loop-mounted; nothing else is ever frozen.
    #[arg(long = "mount", value_name = "PATH")]
    mounts: Vec<PathBuf>,
    /// Backup cycles to run (HOT_BACKUP, FREEZE, snapshot, THAW, BU_COMPLETE each);
    /// more than one also prints min/median/max.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    cycles: u32,
    /// The least time the host holds the freeze, snapshot included, e.g. 0, 500ms, 2s,
    /// at most 24h.
    #[arg(long, default_value = "0s", value_parser = duration::parse_hold)]
    hold: Duration,
    /// Auto-thaw bound passed to the daemon, in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    auto_thaw: u64,
    /// How long the host waits for each reply, at most 1h.
    #[arg(long, default_value = "60s", value_parser = duration::parse_reply_timeout)]
    reply_timeout: Duration,
    /// Do not register the demo application client (the daemon then has no client to
    /// ask, and a backup is filesystem-consistent).
    #[arg(long)]
    no_demo_client: bool,
    /// Print one JSON document instead of the timeline.
    #[arg(long)]
    json: bool,
    /// Also print the daemon's log at the end (it is always printed on failure).
    #[arg(short, long)]
    verbose: bool,
    /// Transport self-test: serve the rings from a child process that answers S_OK to
    /// everything, without the daemon; nothing is frozen.
    #[arg(long)]
    guest_loopback: bool,
    /// Internal: run as the loopback guest, connecting to this socket.
    #[arg(long, hide = true, value_name = "SOCKET")]
    loopback_guest_child: Option<PathBuf>,
    /// Test only: the host never sends FREEZE, so its snapshot is of a live filesystem
    /// (the checked verdict must say "not consistent").
    #[arg(long, hide = true)]
    test_skip_freeze: bool,
}

/// A reason to give up before anything ran, with its exit code.
#[derive(Debug)]
struct SetupFailure {
    code: u8,
    message: String,
}

fn setup_error(e: anyhow::Error) -> SetupFailure {
    SetupFailure {
        code: exit_codes::SETUP_FAILED,
        message: format!("{e:#}"),
    }
}

pub fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    if let Some(socket) = &args.loopback_guest_child {
        return run_loopback_guest(socket);
    }
    match run_simulation(&args) {
        Ok(code) => Ok(code),
        Err(f) => {
            eprintln!("hv-vss simulate: {}", f.message);
            Ok(ExitCode::from(f.code))
        }
    }
}

/// Everything that lives until the end of a run, dropped in the order listed: the guest
/// first (the daemon stops, thawing), then its state directory, then the scratch
/// filesystem (the writer stops, the image is unmounted).
struct Setup {
    mode: Mode,
    guest: GuestProcess,
    state_dir: Option<tempfile::TempDir>,
    scratch: Option<ScratchFs>,
    /// What the host copies as its snapshot.
    snapshottable: Vec<Result<Snapshottable, String>>,
    log_file: Option<PathBuf>,
}

fn run_simulation(args: &SimulateArgs) -> Result<ExitCode, SetupFailure> {
    let started = Instant::now();
    let started_unix = SystemTime::now();
    let work = tempfile::Builder::new()
        .prefix("hv-vss-simulate-")
        .tempdir()
        .context("creating a temporary directory")
        .map_err(setup_error)?;
    let socket = work.path().join("vss.sock");
    let listener = HandoverListener::bind(&socket)
        .with_context(|| format!("listening on {}", socket.display()))
        .map_err(setup_error)?;
    let mut setup = start_guest(args, work.path(), &socket)?;

    let progress = Progress::new(!args.json && std::io::stderr().is_terminal());
    let mut timeline = Timeline::new(started, started_unix);
    let driven = drive(
        args,
        &listener,
        &mut setup,
        &mut timeline,
        &progress,
        work.path(),
    );
    progress.clear();
    let exit = setup.guest.stop();
    // The daemon's history (read before its tmpfs state directory goes): its own report
    // of each transaction, and each filesystem's freeze and thaw.
    let history = setup
        .state_dir
        .as_ref()
        .and_then(|d| hv_vss_history::load(&d.path().join(hv_vss_history::HISTORY_FILE)).ok())
        .flatten()
        .map(|l| l.records)
        .unwrap_or_default();
    let stalls = setup
        .scratch
        .as_mut()
        .and_then(|s| s.writer.take())
        .map(writer::Writer::join)
        .unwrap_or_default();
    let log_file = setup.log_file.clone();
    let mode = std::mem::replace(&mut setup.mode, Mode::Loopback);
    drop(setup);
    let mut report = driven.map_err(setup_error)?;
    report.attach_daemon_history(&history, &mut timeline);
    report.attach_writer_stalls(&stalls, &mut timeline);
    let exit = exit.map_err(setup_error)?;

    let ok = report.ok() && exit.clean;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let printed = if args.json {
        let doc = report.to_json(&mode, &exit, log_file.as_deref(), &timeline);
        serde_json::to_string_pretty(&doc)
            .map_err(std::io::Error::other)
            .and_then(|text| writeln!(out, "{text}"))
    } else {
        report.print(&mut out, &mode, &exit, log_file.as_deref(), &timeline)
    };
    drop(out);
    if let Err(e) = printed
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("hv-vss simulate: writing the report: {e}");
    }
    if let Some(log) = &log_file
        && (args.verbose || !ok)
    {
        show_log(log);
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Copies the daemon's log to stderr.
fn show_log(log: &Path) {
    match std::fs::read_to_string(log) {
        Ok(text) => {
            eprintln!("---- daemon log ({}) ----", log.display());
            eprint!("{text}");
            eprintln!("---- end of daemon log ----");
        }
        Err(e) => eprintln!(
            "hv-vss simulate: cannot read the daemon log {}: {e}",
            log.display()
        ),
    }
}

/// Creates what the guest needs and starts it.
fn start_guest(args: &SimulateArgs, work: &Path, socket: &Path) -> Result<Setup, SetupFailure> {
    if args.guest_loopback {
        let exe = std::env::current_exe()
            .context("locating this executable")
            .map_err(setup_error)?;
        let child = Command::new(exe)
            .arg("simulate")
            .arg("--loopback-guest-child")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the loopback guest")
            .map_err(setup_error)?;
        return Ok(Setup {
            mode: Mode::Loopback,
            guest: GuestProcess::new(child, "loopback guest", false),
            state_dir: None,
            scratch: None,
            snapshottable: Vec::new(),
            log_file: None,
        });
    }
    let daemon = daemon_path(args.daemon.as_deref()).map_err(setup_error)?;
    check_daemon_supports_uio(&daemon).map_err(setup_error)?;
    let root = rustix::process::geteuid().is_root();
    if !root {
        return Err(SetupFailure {
            code: exit_codes::NOT_ROOT,
            message: "freezing a filesystem needs root (CAP_SYS_ADMIN): run `sudo hv-vss \
                      simulate` for the checked backup of a scratch image, or `hv-vss \
                      simulate --guest-loopback` for the transport self-test, which freezes \
                      nothing"
                .into(),
        });
    }
    let mut scratch = None;
    let (mounts, snapshottable) = if args.mounts.is_empty() {
        let fs = ScratchFs::create(work).map_err(setup_error)?;
        let mount = fs.mount_point.clone();
        let snap = Snapshottable {
            image: fs.image.clone(),
            fs_type: "ext4".into(),
        };
        scratch = Some(fs);
        (vec![mount], vec![Ok(snap)])
    } else {
        let snaps = args
            .mounts
            .iter()
            .map(|m| snapshot::find_loop_image(m))
            .collect();
        (args.mounts.clone(), snaps)
    };
    let state_dir = tmpfs_state_dir().map_err(setup_error)?;
    let log = tempfile::Builder::new()
        .prefix("hv-vss-simulate-daemon-")
        .suffix(".log")
        .tempfile()
        .context("creating the daemon's log file")
        .map_err(setup_error)?;
    let (log_handle, log_path) = log
        .keep()
        .context("keeping the daemon's log file")
        .map_err(setup_error)?;
    let log_err = log_handle
        .try_clone()
        .context("duplicating the log file handle")
        .map_err(setup_error)?;
    let mut cmd = Command::new(&daemon);
    cmd.arg("--uio")
        .arg(socket)
        .arg("--state-dir")
        .arg(state_dir.path());
    for m in &mounts {
        cmd.arg("--mount").arg(m);
    }
    cmd.arg("--auto-thaw")
        .arg(args.auto_thaw.to_string())
        .arg("-n")
        .stdin(Stdio::null())
        .stdout(log_handle)
        .stderr(log_err);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", daemon.display()))
        .map_err(setup_error)?;
    Ok(Setup {
        mode: Mode::Daemon {
            daemon,
            mounts,
            scratch: scratch.is_some(),
        },
        guest: GuestProcess::new(child, "daemon", true),
        state_dir: Some(state_dir),
        scratch,
        snapshottable,
        log_file: Some(log_path),
    })
}

/// Which guest runs.
#[derive(Debug)]
enum Mode {
    Loopback,
    Daemon {
        daemon: PathBuf,
        mounts: Vec<PathBuf>,
        /// The one mount is the scratch image this command created.
        scratch: bool,
    },
}

impl Mode {
    fn guest(&self) -> &'static str {
        match self {
            Mode::Loopback => "guest",
            Mode::Daemon { .. } => "daemon",
        }
    }

    fn describe(&self) -> Vec<String> {
        match self {
            Mode::Loopback => vec![
                "transport self-test: guest endpoint in a child process with a fixed S_OK \
                 policy; no daemon, nothing is frozen"
                    .into(),
            ],
            Mode::Daemon {
                daemon,
                mounts,
                scratch,
            } => {
                let list = mounts
                    .iter()
                    .map(|m| m.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                vec![
                    format!(
                        "guest:  the daemon {} in UIO mode, over shared-memory VMBus rings",
                        daemon.display()
                    ),
                    if *scratch {
                        format!(
                            "frozen: {list} (a {} MiB ext4 scratch image made for this run; a \
                             writer keeps writing to it)",
                            IMAGE_LEN >> 20
                        )
                    } else {
                        format!("frozen: {list}")
                    },
                ]
            }
        }
    }
}

/// Sends one request and records it on the timeline.
fn request(
    sim: &mut HostSimulator,
    op: VssOperation,
    timeline: &mut Timeline,
    progress: &Progress,
    label: &str,
) -> HostStep {
    progress.show(&format!("{label}: {op} sent, waiting for the reply"));
    let sent = Instant::now();
    let result = sim.request(op);
    let step = host_step(sim, Step::Vss(op), result, sent);
    timeline.add_host_step(&step);
    step
}

fn host_step(
    sim: &HostSimulator,
    step: Step,
    result: Result<VssReply, SimError>,
    sent: Instant,
) -> HostStep {
    HostStep {
        report: sim.step_report(step, result),
        sent,
    }
}

/// Accepts the guest, hands it the rings, and runs NEGOTIATE and the cycles.
fn drive(
    args: &SimulateArgs,
    listener: &HandoverListener,
    setup: &mut Setup,
    timeline: &mut Timeline,
    progress: &Progress,
    work: &Path,
) -> anyhow::Result<Report> {
    progress.show(&format!("waiting for the {} to connect", setup.guest.name));
    let conn = accept_guest(listener, &mut setup.guest)?;
    let rings = ShmRings::create(RING_LEN).context("creating the shared-memory rings")?;
    rings
        .send_over(&conn)
        .context("handing the rings to the guest")?;
    let config = HostConfig::default().with_reply_timeout(args.reply_timeout);
    let mut sim = HostSimulator::new(rings, config).context("starting the host simulator")?;
    setup.guest.conn = Some(conn);

    progress.show("NEGOTIATE sent, waiting for the reply");
    let sent = Instant::now();
    let negotiated = sim.negotiate();
    let trans_id = sim.exchanges().last().map_or(0, |e| e.trans_id);
    let (status, latency, error) = match &negotiated {
        Ok(NegotiationResult::Agreed { latency, .. }) => {
            (Some(HvStatus::S_OK), Some(*latency), None)
        }
        Ok(NegotiationResult::Refused { latency }) => {
            (Some(HvStatus::E_FAIL), Some(*latency), None)
        }
        Err(e) => (None, None, Some(e.to_string())),
    };
    let negotiation = HostStep {
        report: StepReport {
            step: Step::Negotiate,
            trans_id,
            status,
            latency,
            error,
        },
        sent,
    };
    timeline.add_host_step(&negotiation);
    let mut report = Report {
        negotiation,
        negotiated: negotiated.ok(),
        cycles: Vec::new(),
        cycles_wanted: args.cycles,
        demo: None,
    };
    if let Some(NegotiationResult::Agreed {
        framework, message, ..
    }) = report.negotiated
    {
        timeline.note(
            Who::Host,
            format!("agreed on framework {framework}, VSS {message}"),
        );
    } else {
        setup.guest.host = Some(sim);
        return Ok(report);
    }
    let demo = start_demo_client(args, setup, timeline, progress);
    for i in 0..args.cycles {
        let label = format!("cycle {} of {}", i + 1, args.cycles);
        timeline.section(label.clone());
        let cycle = run_cycle(args, &mut sim, setup, timeline, progress, &label, work);
        let ok = cycle.ok();
        report.cycles.push(cycle);
        if !ok {
            break;
        }
    }
    report.demo = demo.map(|d| match d {
        Ok(client) => {
            let demo = client.finish();
            for told in &demo.told {
                timeline.add_told(told);
            }
            if let Some(e) = &demo.error {
                timeline.note(Who::DemoClient, e.clone());
            }
            demo
        }
        Err(not_registered) => not_registered,
    });
    // The simulator's end is the host's hang-up (its interrupt pipe closing reads as a
    // rescind): it lives until the guest has been stopped.
    setup.guest.host = Some(sim);
    Ok(report)
}

/// Registers the demo client on the daemon's app socket, before the first HOT_BACKUP so it
/// takes part in every cycle. `None` in loopback mode and with `--no-demo-client`; the
/// inner error is the report of a client that could not register.
fn start_demo_client(
    args: &SimulateArgs,
    setup: &Setup,
    timeline: &mut Timeline,
    progress: &Progress,
) -> Option<Result<DemoClient, DemoReport>> {
    let state_dir = setup.state_dir.as_ref()?;
    if args.no_demo_client || !matches!(setup.mode, Mode::Daemon { .. }) {
        return None;
    }
    let socket = state_dir.path().join("app.sock");
    progress.show(&format!(
        "registering the demo client on {}",
        socket.display()
    ));
    Some(match DemoClient::start(&socket, timeline.start()) {
        Ok(client) => {
            timeline.note(
                Who::DemoClient,
                format!(
                    "registered as {} on {}",
                    demo_client::DEMO_NAME,
                    socket.display()
                ),
            );
            Ok(client)
        }
        Err(why) => {
            let report = DemoReport::not_registered(why);
            if let Some(e) = &report.error {
                timeline.note(Who::DemoClient, e.clone());
            }
            Err(report)
        }
    })
}

/// HOT_BACKUP, FREEZE (unless the test switch skips it), snapshot, hold, THAW,
/// BU_COMPLETE, then the check of the snapshot.
fn run_cycle(
    args: &SimulateArgs,
    sim: &mut HostSimulator,
    setup: &Setup,
    timeline: &mut Timeline,
    progress: &Progress,
    label: &str,
    work: &Path,
) -> Cycle {
    let begin = Instant::now();
    let mut steps = Vec::new();
    let mut snapshots = Vec::new();
    let not_run = |reason: &str| Check::NotChecked {
        reason: reason.into(),
    };
    let check_step = request(sim, VssOperation::HOT_BACKUP, timeline, progress, label);
    let check_ok = check_step.report.is_ok();
    steps.push(check_step);
    if !check_ok {
        return Cycle {
            steps,
            freeze_skipped: false,
            frozen_window: None,
            snapshot_window: None,
            snapshots,
            check: not_run("HOT_BACKUP failed: no snapshot was taken"),
            writer_blocked: None,
            daemon_verdict: None,
            span: (begin, Instant::now()),
        };
    }
    let (freeze_sent, freeze_ok, freeze_replied) = if args.test_skip_freeze {
        timeline.note(
            Who::Host,
            "FREEZE skipped (--test-skip-freeze): the snapshot is of a live filesystem".into(),
        );
        (Instant::now(), true, Instant::now())
    } else {
        let step = request(sim, VssOperation::FREEZE, timeline, progress, label);
        let ok = step.report.is_ok();
        let sent = step.sent;
        steps.push(step);
        (sent, ok, Instant::now())
    };
    // The snapshot: every copyable filesystem's image, while frozen.
    let mut copies = Vec::new();
    if freeze_ok {
        for (n, source) in setup.snapshottable.iter().enumerate() {
            let Ok(source) = source else { continue };
            progress.show(&format!(
                "{label}: frozen; snapshot: copying {}",
                source.image.display()
            ));
            timeline.note(
                Who::Host,
                format!("snapshot: copying {}", source.image.display()),
            );
            let dest = work.join(format!("snapshot-{n}.img"));
            match snapshot::take(source, &dest) {
                Ok(s) => {
                    timeline.note(
                        Who::Host,
                        format!("snapshot taken: {} MiB in {}", s.bytes >> 20, ms(s.took)),
                    );
                    snapshots.push((s.bytes, s.took));
                    copies.push((dest, source.fs_type.clone()));
                }
                Err(e) => timeline.note(Who::Host, format!("snapshot failed: {e}")),
            }
        }
        let left = args.hold.saturating_sub(freeze_replied.elapsed());
        if !left.is_zero() {
            progress.show(&format!("{label}: holding the freeze for {}", ms(left)));
            std::thread::sleep(left);
        }
    }
    let thaw = request(sim, VssOperation::THAW, timeline, progress, label);
    let thaw_ok = thaw.report.is_ok();
    let thaw_sent = thaw.sent;
    steps.push(thaw);
    let thaw_replied = Instant::now();
    if thaw_ok || !freeze_ok {
        steps.push(request(
            sim,
            VssOperation::BU_COMPLETE,
            timeline,
            progress,
            label,
        ));
    }
    let end = Instant::now();
    let (frozen_window, snapshot_window) = if freeze_ok && !args.test_skip_freeze {
        (
            Some(thaw_replied.duration_since(freeze_sent)),
            Some(thaw_sent.duration_since(freeze_replied)),
        )
    } else {
        (None, None)
    };
    let check = check_copies(setup, &copies, freeze_ok, timeline, progress, label);
    for (copy, _) in &copies {
        let _ = std::fs::remove_file(copy);
    }
    Cycle {
        steps,
        freeze_skipped: args.test_skip_freeze,
        frozen_window,
        snapshot_window,
        snapshots,
        check,
        writer_blocked: None,
        daemon_verdict: None,
        span: (begin, end),
    }
}

/// Checks every copy; the first one that is not consistent decides.
fn check_copies(
    setup: &Setup,
    copies: &[(PathBuf, String)],
    freeze_ok: bool,
    timeline: &mut Timeline,
    progress: &Progress,
    label: &str,
) -> Check {
    if matches!(setup.mode, Mode::Loopback) {
        return Check::NotChecked {
            reason: "transport self-test: nothing was frozen or copied".into(),
        };
    }
    if !freeze_ok {
        return Check::NotChecked {
            reason: "FREEZE failed: no snapshot was taken".into(),
        };
    }
    if let Some(Err(why)) = setup.snapshottable.iter().find(|s| s.is_err()) {
        return Check::NotChecked {
            reason: why.clone(),
        };
    }
    if copies.is_empty() {
        return Check::NotChecked {
            reason: "the snapshot could not be copied".into(),
        };
    }
    let mut result = None;
    for (copy, fs_type) in copies {
        progress.show(&format!("{label}: checking the snapshot"));
        let check = snapshot::check(copy, fs_type);
        timeline.note(
            Who::Host,
            format!(
                "check of the snapshot: {}: {}",
                check.verdict(),
                check.detail()
            ),
        );
        let worse = matches!(
            (&result, &check),
            (None | Some(Check::Consistent { .. }), _)
                | (Some(Check::NotChecked { .. }), Check::NotConsistent { .. })
        );
        if worse {
            result = Some(check);
        }
    }
    result.unwrap_or(Check::NotChecked {
        reason: "nothing to check".into(),
    })
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
        assert_eq!(defaults.hold, Duration::ZERO);
        assert_eq!(defaults.reply_timeout, Duration::from_secs(60));
        let err = parse(&["--hold", "25h"]).unwrap_err();
        assert!(err.contains("maximum of 24h"), "{err}");
        let err = parse(&["--reply-timeout", "10000000000000000000"]).unwrap_err();
        assert!(err.contains("maximum of 1h"), "{err}");
        let err = parse(&["--hold", "soon"]).unwrap_err();
        assert!(err.contains("not a duration"), "{err}");
    }
}
