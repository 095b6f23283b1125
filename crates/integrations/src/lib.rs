//! hv-vss application integrations: clients of hv-vssd's app socket that make backups of a
//! database application-consistent. Each is its own binary so the daemon's dependency tree
//! stays small:
//!
//! - `hv-vss-postgres` ([`postgresql`]): `CHECKPOINT` on freeze.
//! - `hv-vss-mariadb` ([`mariadb`]): `FLUSH TABLES WITH READ LOCK` held in one session from
//!   freeze until thaw or abort.
//!
//! Both take the flags and TOML file of [`settings`], run the reconnecting loop of
//! `hv_vss_client`, and stop on SIGTERM or SIGINT (releasing anything held). See
//! docs/integrations.md.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use hv_vss_client::Handler;

pub mod mariadb;
pub mod postgresql;
pub mod settings;

/// The body of each integration's `main`: logging, signals, then the client loop until
/// SIGTERM/SIGINT (exit 0) or a fatal error (exit 1, printed).
pub fn serve(program: &str, settings: &settings::Settings, handler: &mut impl Handler) -> ExitCode {
    match serve_inner(settings, handler) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr (the journal under systemd), plain text unless a terminal.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(tracing::Level::INFO)
        .try_init();
}

fn serve_inner(settings: &settings::Settings, handler: &mut impl Handler) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handler")?;
    }
    hv_vss_client::run_until(&settings.client, handler, &stop).with_context(|| {
        format!(
            "app client {:?} on {}",
            settings.client.registration.name,
            settings.client.socket.display()
        )
    })
}
