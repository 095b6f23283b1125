//! `hv-vssd`: the hv-vss daemon. It answers the Hyper-V host's HOT_BACKUP, FREEZE and THAW
//! (drop-in mode over Linux's `/dev/vmbus/hv_vss`), freezes the filesystems with the
//! freezer on a worker thread, and guarantees the thaw: auto-thaw, a guardian process that
//! thaws when the daemon is killed, and recovery of an earlier instance's journal at start.
//!
//! Startup order (each step before the next, all before any freeze):
//! 1. command line and config file, validated (exit 2, naming the flag or key);
//! 2. logging through the freeze-safe gate ([`logbuf`]), and `/dev/kmsg` for urgent lines
//!    while frozen ([`kmsg`]);
//! 3. the state directory: created, checked not to be on a filesystem the plan may freeze
//!    (exit 5), its instance lock taken (exit 4 if another hv-vssd uses it);
//! 4. recovery: an earlier instance's journal is thawed before the transport opens (R59);
//!    entries that are unmounted or now another device are never thawed: reported, and the
//!    journal is set aside so the daemon can start; exit 6 only if a filesystem that is
//!    ours stays frozen (see [`recover_earlier`]);
//! 5. the application socket ([`apps`]; exit 8 if it cannot be set up) and what an
//!    earlier instance still owed its clients; first the soft `RLIMIT_NOFILE` is raised if
//!    `[apps] max_clients` needs it ([`fdlimit`]);
//! 6. the guardian process (exit 7 if it cannot start);
//! 7. the transport: open and register (exit 4 if another VSS daemon holds the device,
//!    exit 3 if it cannot be opened);
//! 8. `READY=1` to systemd, then the main loop ([`daemon`]).

mod apps;
mod completion;
mod config;
mod control;
mod daemon;
mod exit;
mod fdlimit;
mod fsworker;
mod guardian;
mod history;
mod kmsg;
mod logbuf;
mod manpages;
mod metrics;
mod safety;
mod transport;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::anyhow;
use clap::Parser;
use hv_vss_core::{AutoThaw, Coordinator, Millis};
use hv_vss_freezer::{FreezeOptions, MountSource};

use crate::config::{Overrides, Settings, TransportChoice};
use crate::exit::{ExitKind, Fatal};
use crate::logbuf::LogGate;

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

/// Mode of a state directory the daemon creates: search for everyone (the app socket is in
/// it by default), read and write for root only. The systemd units' RuntimeDirectoryMode.
const STATE_DIR_MODE: u32 = 0o711;

/// The log gate, for the fatal-exit path in [`main`] (set once logging is up).
pub(crate) static GATE: std::sync::OnceLock<LogGate> = std::sync::OnceLock::new();

/// The way to the guardian, for handing over held log lines on a fatal exit while frozen.
static LINK: std::sync::OnceLock<guardian::GuardianLink> = std::sync::OnceLock::new();

/// Name of the instance lock inside the state directory.
const INSTANCE_LOCK: &str = "hv-vssd.lock";

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

    // The plan, as of now: validates --mount / mounts and the state directory's safety.
    let source = MountSource::current();
    let selection = fsworker::selection(&settings.mounts);
    let plan = hv_vss_freezer::make_plan(&source, &selection, &settings.freezer).map_err(|e| {
        let key = if settings.mounts.is_empty() {
            "freezer"
        } else {
            "--mount/mounts"
        };
        Fatal::new(ExitKind::Usage, anyhow!("{key}: {e}"))
    })?;
    let planned: Vec<String> = plan
        .filesystems()
        .map(|f| f.mount_point.display().to_string())
        .collect();
    tracing::info!(mounts = ?planned, skipped = plan.skipped.len(), "freeze plan");
    if plan.is_empty() {
        tracing::warn!(
            "the freeze plan is empty: FREEZE will fail until a freezable filesystem is mounted"
        );
    }

    let _instance_lock = prepare_state_dir(&settings.state_dir, &plan)?;
    recover_earlier(&settings.state_dir)?;

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
    tracing::info!(pid = guardian.pid(), "guardian started");

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
    let worker = fsworker::FsWorker::start(fsworker::FsSetup {
        source,
        selection,
        config: settings.freezer.clone(),
        options: FreezeOptions::new(settings.freezer.config(), settings.state_dir.clone()),
        watch: Some(std::sync::Arc::new(guardian_link.clone())),
    })
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

/// Creates the state directory (0711: only root lists or reads it, while clients allowed in
/// `[apps]` can reach the default socket in it by name; every file in it is 0600), refuses
/// one the plan may freeze (R59), and takes the instance lock.
fn prepare_state_dir(dir: &Path, plan: &hv_vss_freezer::Plan) -> Result<File, Fatal> {
    use std::os::unix::fs::DirBuilderExt;
    let unusable = |e: std::io::Error| {
        Fatal::new(
            ExitKind::StateDir,
            anyhow!("state directory {}: {e}", dir.display()),
        )
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(STATE_DIR_MODE)
        .create(dir)
        .map_err(unusable)?;
    let handle = File::open(dir).map_err(unusable)?;
    let id = hv_vss_sys::fs::identify(std::os::fd::AsFd::as_fd(&handle)).map_err(unusable)?;
    let dev = id
        .mount_id
        .and_then(|m| plan.dev_of_mount_id(m))
        .unwrap_or(id.dev);
    if plan.may_freeze(dev) {
        return Err(Fatal::new(
            ExitKind::StateDir,
            anyhow!(
                "state directory {}: on a filesystem that may be frozen (device {dev}); use a tmpfs such as /run/hv-vss",
                dir.display()
            ),
        ));
    }
    hv_vss_freezer::journal::try_lock_file(&dir.join(INSTANCE_LOCK))
        .map_err(unusable)?
        .ok_or_else(|| {
            Fatal::new(
                ExitKind::Busy,
                anyhow!(
                    "another hv-vssd uses the state directory {} (lock {INSTANCE_LOCK})",
                    dir.display()
                ),
            )
        })
}

/// How long start-up retries thawing a journaled filesystem that is ours but whose FITHAW
/// fails, before giving up with exit 6.
const RECOVER_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// R59: thaw what an earlier instance's journal lists, before the transport opens.
///
/// # Policy
///
/// Recovery never thaws what it cannot show is ours: each entry is thawed only through its
/// recorded path, and only if that path still leads to the recorded device.
///
/// - Every entry thawed or found not frozen: the journal is removed; start.
/// - Some entries unreachable (mount gone) or on another device (the path now leads
///   elsewhere), the rest thawed or not frozen: nothing more can be done for them, and
///   refusing to start would keep the daemon down for ever (every restart would find the
///   same journal). They are logged at error level and the journal is renamed
///   `freeze-journal.json.stale-<unix_ms>` in the state directory for the operator; start.
/// - An entry whose device matches but whose FITHAW fails is ours and still frozen:
///   retried for [`RECOVER_RETRY_FOR`], then start-up fails (exit 6) with the journal kept,
///   so the guardian-less state is never entered while we know something is frozen. A
///   FITHAW that does not return within the per-filesystem deadline
///   ([`hv_vss_freezer::DEFAULT_RECOVER_THAW_DEADLINE`]) counts the same: the others are
///   thawed meanwhile, and start-up ends instead of hanging in it.
fn recover_earlier(dir: &Path) -> Result<(), Fatal> {
    let started = Instant::now();
    let report = loop {
        let report = hv_vss_freezer::recover(dir, hv_vss_freezer::RecoverOptions::default())
            .map_err(|e| match e {
                hv_vss_freezer::RecoverError::FreezerAlive { pid, .. } => Fatal::new(
                    ExitKind::Busy,
                    anyhow!(
                        "process {pid} froze filesystems listed in {} and still holds them",
                        dir.display()
                    ),
                ),
                other => Fatal::new(
                    ExitKind::RecoveryIncomplete,
                    anyhow::Error::new(other).context("recovering the earlier freeze journal"),
                ),
            })?;
        let ours_still_frozen = report.ours_may_be_frozen();
        if !ours_still_frozen || started.elapsed() >= RECOVER_RETRY_FOR {
            break report;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    if !report.journal_found {
        return Ok(());
    }
    let detail = serde_json::to_string(&report.filesystems).unwrap_or_default();
    if report.complete() {
        tracing::warn!(
            earlier_pid = report.freezer_pid,
            filesystems = %detail,
            "an earlier instance left filesystems frozen; thawed them from its journal"
        );
        return Ok(());
    }
    if report.ours_may_be_frozen() {
        return Err(Fatal::new(
            ExitKind::RecoveryIncomplete,
            anyhow!(
                "the earlier freeze journal in {} could not be fully thawed: {detail}; see `hv-vss thaw --recover`",
                dir.display()
            ),
        ));
    }
    // Only unreachable or foreign entries are left: never thawed, set aside, start.
    let aside = hv_vss_freezer::Journal::set_aside(dir).map_err(|e| {
        Fatal::new(
            ExitKind::RecoveryIncomplete,
            anyhow::Error::new(e).context("setting aside the earlier freeze journal"),
        )
    })?;
    tracing::error!(
        earlier_pid = report.freezer_pid,
        filesystems = %detail,
        moved_to = %aside.display(),
        "the earlier freeze journal lists filesystems that are unmounted or now another device; NOT thawed (they may not be ours). Journal set aside; check them by hand (SysRq-j thaws everything as a last resort)"
    );
    Ok(())
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

    /// Start-up recovery over a journal an earlier instance left, listing `path` on `dev`:
    /// it must go on (not exit) and remove the journal. Returns the journals it set aside.
    fn start_up_over_journal_listing(
        state: &Path,
        path: &Path,
        dev: hv_vss_freezer::DevNum,
    ) -> Vec<PathBuf> {
        hv_vss_freezer::Journal {
            version: 1,
            pid: 999_999_999,
            created_unix_ms: 1,
            filesystems: vec![hv_vss_freezer::JournalEntry {
                path: path.to_path_buf(),
                dev,
                fs_type: "ext4".into(),
                pid: 999_999_999,
            }],
        }
        .write(state)
        .unwrap();
        recover_earlier(state).map_err(|f| f.to_string()).unwrap();
        assert!(hv_vss_freezer::Journal::read(state).unwrap().is_none());
        std::fs::read_dir(state)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".stale-"))
            .collect()
    }

    /// Regression: a journal entry whose mount is gone made start-up exit 6 on every
    /// restart, so the daemon could never start again. It is reported and set aside.
    #[test]
    fn a_journal_entry_whose_mount_is_gone_is_set_aside_and_start_up_goes_on() {
        let state = tempfile::tempdir().unwrap();
        let gone = state.path().join("unmounted-long-ago");
        let dev = hv_vss_freezer::DevNum { major: 7, minor: 3 };
        let aside = start_up_over_journal_listing(state.path(), &gone, dev);
        assert_eq!(aside.len(), 1, "{aside:?}");
        let kept: hv_vss_freezer::Journal =
            serde_json::from_slice(&std::fs::read(&aside[0]).unwrap()).unwrap();
        assert_eq!(kept.filesystems[0].path, gone);
    }

    /// Same for an entry whose path now leads to another device: never thawed (it may not
    /// be ours), set aside, start.
    #[test]
    fn a_journal_entry_on_another_device_is_not_thawed_but_set_aside() {
        let state = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let dev = hv_vss_freezer::DevNum {
            major: 4095,
            minor: 77,
        };
        let aside = start_up_over_journal_listing(state.path(), elsewhere.path(), dev);
        assert_eq!(aside.len(), 1, "{aside:?}");
    }

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
