//! `hv-vss app run`: take part in backups through hv-vssd's app socket by running shell
//! commands, so any program can be quiesced without writing a client.
//!
//! Each event runs its command with `sh -c CMD` in a new process group, with
//! `HV_VSS_EVENT` (`check`, `freeze`, `thaw`, `abort`), `HV_VSS_TXN` and, for events that
//! are acked, `HV_VSS_DEADLINE_MS` (time left to ack) in its environment; `HV_VSS_REASON`
//! on abort. The ack is ok exactly when the command exits 0 before the event's deadline.
//! A command still running at the deadline is killed with its whole process group
//! (SIGKILL) and the ack is not ok, so a stuck script never holds a backup.
//!
//! - `--on-check` is optional: without it every check is acked ok.
//! - On abort `--on-abort` runs, or `--on-thaw` when no `--on-abort` is given: an abort
//!   ends the hold just as a thaw does, and a program wrapped with only freeze and thaw
//!   commands must not stay held because a backup failed. The abort command is bounded by
//!   `--timeout` (default [`DEFAULT_ABORT_TIMEOUT`]); aborts are not acked.
//! - The connection is kept with `hv_vss_client::run_until`: reconnects with backoff when
//!   hv-vssd restarts, and releases (runs the abort command) when the connection is lost or
//!   the command is stopped while holding.
//! - SIGTERM or SIGINT stops it (exit 0). Commands inherit stdout and stderr.

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context;
use hv_vss_client::{Backoff, Config, Handler, HandlerResult, Registration, Request};

use crate::duration;

/// Bound of the abort command when `--timeout` is not given (aborts carry no deadline).
pub const DEFAULT_ABORT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `--timeout`: the host's own deadlines are minutes.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// How often a running command is polled for exit.
const POLL: Duration = Duration::from_millis(10);

#[derive(Debug, clap::Subcommand)]
pub enum AppCommand {
    /// Register with hv-vssd's app socket and run a shell command for each backup event.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Name to register under (unique among live clients).
    #[arg(long)]
    name: String,
    /// Tier 0-255: lower tiers freeze first and thaw last [daemon default: 100].
    #[arg(long)]
    tier: Option<u8>,
    /// This client's bound per event, e.g. 5s (the daemon caps it by the host's deadline);
    /// also bounds the abort command.
    #[arg(long, value_parser = parse_timeout)]
    timeout: Option<Duration>,
    /// The daemon's app socket.
    #[arg(long, value_name = "PATH", default_value = hv_vss_client::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Run on freeze: flush and hold; exit 0 to let the filesystems freeze.
    #[arg(long, value_name = "CMD")]
    on_freeze: String,
    /// Run on thaw: resume.
    #[arg(long, value_name = "CMD")]
    on_thaw: String,
    /// Run on abort (the backup ended without a thaw) [default: the --on-thaw command].
    #[arg(long, value_name = "CMD")]
    on_abort: Option<String>,
    /// Run on check (may a backup start?); non-zero exit vetoes [default: always yes].
    #[arg(long, value_name = "CMD")]
    on_check: Option<String>,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let t = duration::parse_at_most(text, MAX_TIMEOUT, "timeout")?;
    if t < Duration::from_millis(1) {
        return Err(format!("timeout {text:?} is zero: every event would fail"));
    }
    Ok(t)
}

pub fn run(command: AppCommand) -> anyhow::Result<ExitCode> {
    match command {
        AppCommand::Run(args) => run_commands(args),
    }
}

fn run_commands(args: RunArgs) -> anyhow::Result<ExitCode> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(tracing::Level::INFO)
        .try_init();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handler")?;
    }
    let mut registration = Registration::new(args.name.clone());
    registration.tier = args.tier;
    registration.timeout = args.timeout;
    let config = Config {
        socket: args.socket.clone(),
        registration,
        backoff: Backoff::default(),
    };
    let mut handler = ShellHandler {
        abort_timeout: args.timeout.unwrap_or(DEFAULT_ABORT_TIMEOUT),
        on_abort: args.on_abort.unwrap_or_else(|| args.on_thaw.clone()),
        on_freeze: args.on_freeze,
        on_thaw: args.on_thaw,
        on_check: args.on_check,
    };
    hv_vss_client::run_until(&config, &mut handler, &stop)
        .with_context(|| format!("app client {:?} on {}", args.name, config.socket.display()))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug)]
struct ShellHandler {
    on_check: Option<String>,
    on_freeze: String,
    on_thaw: String,
    on_abort: String,
    abort_timeout: Duration,
}

impl Handler for ShellHandler {
    fn on_check(&mut self, request: &Request) -> HandlerResult {
        match &self.on_check {
            Some(cmd) => run_event_command(cmd, "check", request.txn, request.deadline, None),
            None => Ok(()),
        }
    }
    fn on_freeze(&mut self, request: &Request) -> HandlerResult {
        run_event_command(
            &self.on_freeze,
            "freeze",
            request.txn,
            request.deadline,
            None,
        )
    }
    fn on_thaw(&mut self, request: &Request) -> HandlerResult {
        run_event_command(&self.on_thaw, "thaw", request.txn, request.deadline, None)
    }
    fn on_abort(&mut self, txn: u64, reason: &str) -> HandlerResult {
        let deadline = Instant::now() + self.abort_timeout;
        run_event_command(&self.on_abort, "abort", txn, deadline, Some(reason))
    }
}

/// Runs `sh -c cmd` for `event`; `Ok` iff it exits 0 before `deadline`.
fn run_event_command(
    cmd: &str,
    event: &str,
    txn: u64,
    deadline: Instant,
    reason: Option<&str>,
) -> HandlerResult {
    use std::os::unix::process::CommandExt;
    let left = deadline.saturating_duration_since(Instant::now());
    tracing::info!(
        event,
        txn,
        deadline_ms = left.as_millis() as u64,
        "running command"
    );
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .env("HV_VSS_EVENT", event)
        .env("HV_VSS_TXN", txn.to_string())
        .stdin(Stdio::null())
        .process_group(0);
    match reason {
        Some(reason) => command.env("HV_VSS_REASON", reason),
        None => command.env("HV_VSS_DEADLINE_MS", left.as_millis().to_string()),
    };
    let started = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|e| format!("on-{event} command could not start: {e}"))?;
    let status = wait_until(&mut child, deadline).map_err(|e| {
        kill_group(&child);
        format!("on-{event} command: waiting failed: {e}")
    })?;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match status {
        Some(status) if status.success() => {
            tracing::info!(event, txn, elapsed_ms, "command succeeded");
            Ok(())
        }
        Some(status) => Err(format!("on-{event} command failed ({status})").into()),
        None => {
            kill_group(&child);
            let _ = child.wait();
            Err(format!(
                "on-{event} command still running at the deadline ({} ms); killed",
                left.as_millis()
            )
            .into())
        }
    }
}

/// The child's exit status, or `None` if it is still running at `deadline`.
fn wait_until(
    child: &mut Child,
    deadline: Instant,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        std::thread::sleep(left.min(POLL));
    }
}

/// SIGKILL to the child's process group (it leads one: `process_group(0)`), so whatever
/// the command forked dies with it.
fn kill_group(child: &Child) {
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}
