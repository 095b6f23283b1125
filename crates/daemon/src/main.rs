//! `hv-vssd`: the hv-vss daemon. It answers the Hyper-V host's HOT_BACKUP, FREEZE and THAW
//! (drop-in mode over Linux's `/dev/vmbus/hv_vss`), freezes the filesystems with the
//! freezer on a worker thread, and guarantees the thaw: auto-thaw, a guardian process that
//! thaws when the daemon is killed, and recovery of an earlier instance's journal at start.
//!
//! Startup order (each step before the next, all before any freeze):
//! 1. command line and config file, validated (exit 2, naming the flag or key);
//! 2. logging through the freeze-safe gate ([`logbuf`](hv_vssd::logbuf)), and `/dev/kmsg` for urgent lines
//!    while frozen ([`kmsg`]);
//! 3. the state directory: created, checked not to be on a filesystem the plan may freeze
//!    (exit 5), its instance lock taken (exit 4 if another hv-vssd uses it);
//! 4. recovery: an earlier instance's journal is thawed before the transport opens (R59);
//!    entries that are unmounted or now another device are never thawed: reported, and the
//!    journal is set aside so the daemon can start; exit 6 only if a filesystem that is
//!    ours stays frozen (see `startup::recover_earlier`);
//! 5. the application socket ([`apps`]; exit 8 if it cannot be set up) and what an
//!    earlier instance still owed its clients; first the soft `RLIMIT_NOFILE` is raised if
//!    `[apps] max_clients` needs it ([`fdlimit`]);
//! 6. the guardian process (exit 7 if it cannot start);
//! 7. the transport: open and register (exit 4 if another VSS daemon holds the device,
//!    exit 3 if it cannot be opened);
//! 8. `READY=1` to systemd, then the main loop ([`daemon`]).
//!
//! # Platforms
//!
//! The platform's parts are chosen once each in the library (`src/lib.rs`): see there.

use hv_vssd::{
    apps, config, daemon, fdlimit, fsworker, guardian, kmsg, manpages, safety, startup, transport,
};

use std::path::PathBuf;
use std::time::Instant;

use anyhow::anyhow;
use clap::Parser;
use hv_vss_core::{AutoThaw, Coordinator, Millis};

use hv_vssd::config::{Overrides, Settings, TransportChoice};
use hv_vssd::exit::{ExitKind, Fatal};
use hv_vssd::logbuf::{GATE, LogGate};

/// Hyper-V VSS (Backup) daemon with guaranteed thaw.
#[derive(Debug, Parser)]
#[command(name = "hv-vssd", version, about)]
struct Cli {
    /// TOML configuration file [default: /etc/hv-vss/hv-vss.toml if present].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Drop-in transport: /dev/vmbus/hv_vss, or a SOCK_SEQPACKET Unix socket speaking the
    /// same bytes (simulators) [default: /dev/vmbus/hv_vss].
    #[arg(long, value_name = "PATH", conflicts_with = "uio")]
    device: Option<PathBuf>,
    /// UIO transport: /dev/uioN, or a host simulator's Unix socket.
    #[arg(long, value_name = "PATH")]
    uio: Option<PathBuf>,
    /// Freeze exactly this mount point (repeatable); without it, discovery plus the
    /// config's [freezer] filters.
    #[arg(long = "mount", value_name = "PATH")]
    mounts: Vec<PathBuf>,
    /// State directory (journal, locks, report history); must be on tmpfs
    /// [default: /run/hv-vss].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Application socket path (docs/apps.md) [default: STATE_DIR/app.sock].
    #[arg(long, value_name = "PATH")]
    app_socket: Option<PathBuf>,
    /// Thaw on our own if THAW has not come this many seconds after the freeze (decimals
    /// allowed), or "off" (warned) [default: 60].
    #[arg(long, value_name = "SECONDS")]
    auto_thaw: Option<String>,
    /// Stay in the foreground (always the case; accepted for compatibility).
    #[arg(short = 'n', long)]
    no_daemon: bool,
    /// Debug logging.
    #[arg(short, long)]
    debug: bool,
    /// Internal: run as the guardian of the daemon that started this process.
    #[arg(long, hide = true)]
    guardian: bool,
    /// Internal (tests): where urgent lines go while frozen, instead of /dev/kmsg.
    #[arg(long, hide = true, value_name = "PATH", default_value = kmsg::DEFAULT_KMSG)]
    kmsg: PathBuf,
    /// Internal (packaging): write hv-vssd(8) and hv-vss.toml(5) into DIR and exit.
    #[arg(long, hide = true, value_name = "DIR")]
    generate_man: Option<PathBuf>,
}

/// The way to the guardian, for handing over held log lines on a fatal exit while frozen.
static LINK: std::sync::OnceLock<guardian::GuardianLink> = std::sync::OnceLock::new();

fn main() {
    let cli = Cli::parse();
    if let Some(dir) = &cli.generate_man {
        let cmd = <Cli as clap::CommandFactory>::command();
        if let Err(e) = manpages::generate(dir, cmd) {
            eprintln!("hv-vssd: writing man pages to {}: {e}", dir.display());
            std::process::exit(ExitKind::Internal as i32);
        }
        return;
    }
    if cli.guardian {
        init_plain_logging(cli.debug);
        let state_dir = cli
            .state_dir
            .unwrap_or_else(|| config::Platform::HOST.default_state_dir().into());
        std::process::exit(guardian::run(&state_dir));
    }
    // A panic that reaches here ends the process: while frozen its held lines are handed
    // over like a fatal error's (the hook already logged it and put it in the kernel log).
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli)))
        .unwrap_or_else(|_| {
            Err(Fatal::new(
                ExitKind::Internal,
                anyhow!("internal error (panic), see above"),
            ))
        });
    match result {
        Ok(()) => std::process::exit(ExitKind::Clean as i32),
        Err(fatal) => {
            match GATE.get() {
                // Exiting while something of ours is (or may still get) frozen: stderr may
                // be journald writing to a frozen disk (R60). The line is held with the rest;
                // the kernel log already has the urgent one.
                Some(gate) if gate.is_held() => {
                    tracing::error!(error = %fatal, "fatal error while frozen");
                    let (handed, lost) = hand_over_held_lines(gate);
                    kmsg::last_words(
                        kmsg::Urgent::ExitingFrozen,
                        &format!(
                            "fatal error while frozen ({handed} held log lines handed to the guardian, {lost} lost): {fatal}"
                        ),
                    );
                }
                // Logging may not be set up yet: plain stderr.
                _ => eprintln!("hv-vssd: {fatal}"),
            }
            std::process::exit(fatal.kind as i32);
        }
    }
}

/// The lines `gate` holds die with this process: hands them to the guardian, which writes
/// them out once it has thawed. Returns (handed over, lost).
fn hand_over_held_lines(gate: &LogGate) -> (usize, u64) {
    let Some((lines, dropped)) = gate.take_held() else {
        return (0, 0);
    };
    let handed = LINK.get().map_or(0, |link| link.hand_over_log(&lines));
    (handed, dropped + (lines.len() - handed) as u64)
}

/// Routes panic messages through `tracing`, so the log gate holds them in memory while
/// filesystems are frozen like every other line (R60, R61). The default hook writes to
/// stderr directly, which journald may be writing to a frozen `/var`.
///
/// While `gate` holds, the text also goes to the kernel log ([`kmsg::last_words`]): the
/// held line dies with the process if the panic ends it while frozen.
fn install_panic_hook(gate: LogGate) {
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        tracing::error!(thread = name, panic = %info, "internal error (panic)");
        if gate.is_held() {
            kmsg::last_words(
                kmsg::Urgent::Panic,
                &format!("internal error (panic) while frozen, thread {name}: {info}"),
            );
        }
    }));
}

fn init_plain_logging(debug: bool) {
    let level = if debug {
        tracing::level_filters::LevelFilter::DEBUG
    } else {
        tracing::level_filters::LevelFilter::INFO
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

fn run(cli: Cli) -> Result<(), Fatal> {
    let start = Instant::now();
    let usage = |e: config::ConfigError| Fatal::new(ExitKind::Usage, e);
    let (file, config_path) = Settings::load_file(cli.config.as_deref()).map_err(usage)?;
    let debug = cli.debug;
    let settings = Settings::resolve(
        file,
        Overrides {
            device: cli.device,
            uio: cli.uio,
            state_dir: cli.state_dir,
            app_socket: cli.app_socket,
            mounts: cli.mounts,
            auto_thaw: cli.auto_thaw,
            debug,
        },
    )
    .map_err(usage)?;

    let gate = LogGate::stderr(settings.log_ring_capacity);
    let _ = GATE.set(gate.clone());
    let _ = tracing_subscriber::fmt()
        .with_writer(gate.clone())
        .with_max_level(settings.log_level.filter())
        .with_ansi(false)
        .with_target(false)
        .try_init();
    install_panic_hook(gate.clone());
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = ?config_path,
        transport = ?settings.transport,
        state_dir = %settings.state_dir.display(),
        "hv-vssd starting"
    );
    match settings.limits.auto_thaw {
        AutoThaw::Disabled => tracing::warn!(
            "auto-thaw is DISABLED: if the host never sends THAW, filesystems stay frozen until shutdown, transport loss or guardian loss"
        ),
        AutoThaw::After(d) => {
            tracing::info!(auto_thaw_ms = d.as_millis() as u64, "auto-thaw armed")
        }
    }

    // Opened once, before anything can be frozen (R60, R61).
    let (kmsg, kmsg_error) = kmsg::Kmsg::open(&cli.kmsg);
    kmsg::set_last_words(kmsg::Kmsg::open(&cli.kmsg).0);
    if let Some(e) = kmsg_error {
        tracing::info!(path = %cli.kmsg.display(), error = %e, "kernel log unavailable: urgent lines while frozen stay in the held log only");
    }

    let signals = daemon::signal_pipe()
        .map_err(|e| Fatal::new(ExitKind::Internal, anyhow!("signal handlers: {e}")))?;

    // The plan (validates --mount / mounts), the state directory, an earlier freeze.
    let prepared = startup::prepare(&settings)?;

    // Before the socket: room for max_clients connections.
    fdlimit::log(
        fdlimit::ensure_for_clients(settings.apps.max_clients),
        settings.apps.max_clients,
    );
    // Before the transport: a client may register before the first request.
    let mut coord = Coordinator::new(settings.limits, Millis(0))
        .map_err(|e| Fatal::new(ExitKind::Usage, anyhow!("limits: {e}")))?;
    let exec = safety::ExecPermit::default();
    let apps = apps::AppServer::start(
        &settings.apps,
        &settings.hooks,
        &settings.state_dir,
        &mut coord,
        exec.clone(),
    )
    .map_err(|e| Fatal::new(ExitKind::AppSocket, e))?;
    tracing::info!(
        app_socket = %settings.app_socket.display(),
        mode = format!("{:o}", settings.apps.mode),
        "application socket listening"
    );

    let guardian = guardian::Guardian::spawn(&settings.state_dir, debug)
        .map_err(|e| Fatal::new(ExitKind::Guardian, e))?;
    guardian.log_started();

    let transport = match transport::Transport::open(&settings.transport) {
        Ok(t) => Some(t),
        // Opened, then lost during the handshake (e.g. the device hung up at once): the
        // loop reopens it with backoff, as after any later loss.
        Err(e) if e.requires_reopen() => {
            tracing::warn!(error = %e, "VSS transport lost during start-up; reopening");
            None
        }
        Err(e) => return Err(transport_fatal(&settings, &e)),
    };

    let guardian_link = guardian::GuardianLink::default();
    let _ = LINK.set(guardian_link.clone());
    let worker = fsworker::FsWorker::start(prepared.worker_setup(&settings, &guardian_link))
        .map_err(|e| Fatal::new(ExitKind::Internal, anyhow!("filesystem worker: {e}")))?;

    daemon::Daemon::new(daemon::Parts {
        settings,
        gate,
        exec,
        debug,
        start,
        coord,
        transport,
        worker,
        guardian,
        guardian_link,
        signals,
        kmsg,
        apps,
    })
    .run()
    .map_err(|e| Fatal::new(ExitKind::Internal, e))
}

fn transport_fatal(settings: &Settings, e: &transport::TransportError) -> Fatal {
    let kind = if e.is_busy() {
        ExitKind::Busy
    } else {
        ExitKind::TransportUnavailable
    };
    let flag = match &settings.transport {
        TransportChoice::DropIn(_) | TransportChoice::FsVss(_) => "--device",
        TransportChoice::Uio(_) => "--uio",
    };
    let hint = if e.is_busy() {
        " (stop hypervvssd / hv_vss_daemon, or the other hv-vssd, first)"
    } else {
        ""
    };
    Fatal::new(kind, anyhow!("{flag}: {e}{hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hv_vss_testutil::SharedBuf;

    /// The tests that replace the process's panic hook, one at a time.
    static HOOK_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Regression: a panic (the fs worker now survives one in the freezer, which can
    /// happen while filesystems are frozen) was printed by the default hook straight to
    /// stderr, past the log gate: a disk write while frozen (R60), which can block on a
    /// journald stuck on a frozen /var. The daemon's hook logs it through the gate.
    #[test]
    fn a_panic_while_the_gate_is_held_is_kept_in_memory() {
        let sink = SharedBuf::default();
        let gate = LogGate::with_sink(Box::new(sink.clone()), 16);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(gate.clone())
            .with_ansi(false)
            .finish();
        let _hook = HOOK_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        let previous = std::panic::take_hook();
        install_panic_hook(gate.clone());
        gate.hold();
        tracing::subscriber::with_default(subscriber, || {
            let _ = std::panic::catch_unwind(|| panic!("injected panic 4711"));
        });
        std::panic::set_hook(previous);
        assert!(
            !sink.text().contains("4711"),
            "the panic reached the sink while held"
        );
        let (written, _) = gate.release();
        assert!(written >= 1);
        assert!(
            sink.text().contains("injected panic 4711"),
            "{}",
            sink.text()
        );
    }

    /// A panic while the gate holds leaves its text in the kernel log (docs/daemon.md,
    /// "Logging while frozen"), where it survives the process ending while frozen; the
    /// held copy would not.
    #[test]
    fn a_panic_while_the_gate_is_held_leaves_its_text_in_the_kernel_log() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("kmsg");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // A non-blocking reader first: a non-blocking writer needs one.
        let mut reader = std::fs::File::from(
            rustix::fs::open(
                &fifo,
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK,
                rustix::fs::Mode::empty(),
            )
            .unwrap(),
        );
        let _hook = HOOK_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        kmsg::set_last_words(kmsg::Kmsg::open(&fifo).0);
        let gate = LogGate::with_sink(Box::new(SharedBuf::default()), 16);
        let subscriber = tracing_subscriber::fmt().with_writer(gate.clone()).finish();
        let previous = std::panic::take_hook();
        install_panic_hook(gate.clone());
        tracing::subscriber::with_default(subscriber, || {
            // Open gate: nothing for the kernel log.
            let _ = std::panic::catch_unwind(|| panic!("injected open panic 17"));
            gate.hold();
            let _ = std::panic::catch_unwind(|| panic!("injected held panic 4712"));
            gate.release();
        });
        std::panic::set_hook(previous);
        kmsg::set_last_words(kmsg::Kmsg::default());
        let mut buf = vec![0u8; 1 << 16];
        let n = reader.read(&mut buf).unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(
            text.lines().any(
                |l| l.starts_with("<3>hv-vssd: internal error (panic) while frozen")
                    && l.contains("injected held panic 4712")
            ),
            "{text:?}"
        );
        assert!(!text.contains("injected open panic 17"), "{text:?}");
    }
}
