//! `hv-vss`: the command-line tool of hv-vss (plan, self-test freeze, recovery, UIO binding,
//! simulation). A thin layer: every subcommand parses its arguments here and calls a library.
//!
//! On FreeBSD `plan`, `freeze` and `thaw` come from `freebsd_fs_cmds.rs`; `uio`, `simulate`
//! and `status` (Linux's UIO, simulator, freeze journal and /proc/locks) do not exist
//! there, so some shared helpers only they use are unused on FreeBSD.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod app_cmds;
mod duration;
mod exit_codes;
// `plan`, `freeze` and `thaw`: one module per platform, the same arguments' names.
#[cfg(target_os = "linux")]
mod fs_cmds;
#[cfg(target_os = "freebsd")]
#[path = "freebsd_fs_cmds.rs"]
mod fs_cmds;
mod gen_cmds;
mod history_cmds;
mod panic_exit;
// The simulator and the UIO transport are Linux's.
#[cfg(target_os = "linux")]
mod simulate_cmds;
mod state_files;
// `status` reads Linux's freeze journal and /proc/locks.
#[cfg(target_os = "linux")]
mod status_cmds;
#[cfg(target_os = "linux")]
mod uio_cmds;

/// Hyper-V VSS backup quiesce agent: command-line tool.
#[derive(Debug, Parser)]
#[command(name = "hv-vss", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show what a freeze would freeze, in which order, and why every other mount is skipped.
    Plan(fs_cmds::PlanArgs),
    /// Self-test: freeze the selected filesystems, hold, thaw, and print timings.
    Freeze(fs_cmds::FreezeArgs),
    /// Thaw what the journal of an earlier freeze lists (`--recover`), or sweep every frozen
    /// filesystem, whoever froze it (`--all-frozen`).
    Thaw(fs_cmds::ThawArgs),
    /// Hand the VSS VMBus device to uio_hv_generic and back.
    #[cfg(target_os = "linux")]
    #[command(subcommand)]
    Uio(uio_cmds::UioCommand),
    /// Run a simulated Hyper-V host against a guest endpoint.
    #[cfg(target_os = "linux")]
    Simulate(simulate_cmds::SimulateArgs),
    /// Take part in backups through hv-vssd's app socket.
    #[command(subcommand)]
    App(app_cmds::AppCommand),
    /// Is the daemon running, is anything frozen, what was the last backup.
    #[cfg(target_os = "linux")]
    Status(status_cmds::StatusArgs),
    /// List past backups from the daemon's report history (verdict, frozen window, stage
    /// times, failure reasons).
    History(history_cmds::HistoryArgs),
    /// Print Prometheus metrics from the report history (works with the daemon down).
    Metrics(history_cmds::MetricsArgs),
    /// Write man pages and shell completions (packaging).
    #[command(hide = true)]
    GenerateDocs(gen_cmds::GenerateArgs),
}

fn main() -> ExitCode {
    panic_exit::guard(run)
}

fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plan(args) => fs_cmds::plan(args),
        Command::Freeze(args) => fs_cmds::freeze(args),
        Command::Thaw(args) => fs_cmds::thaw(args),
        #[cfg(target_os = "linux")]
        Command::Uio(cmd) => uio_cmds::run(cmd),
        #[cfg(target_os = "linux")]
        Command::Simulate(args) => simulate_cmds::run(args),
        Command::App(cmd) => app_cmds::run(cmd),
        #[cfg(target_os = "linux")]
        Command::Status(args) => status_cmds::run(args),
        Command::History(args) => history_cmds::history(args),
        Command::Metrics(args) => history_cmds::metrics(args),
        Command::GenerateDocs(args) => gen_cmds::run(args, Cli::command()),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("hv-vss: {err:#}");
            ExitCode::FAILURE
        }
    }
}
