//! `uio bind`, `uio unbind` (to be written).
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum UioCommand {
    /// Bind the VSS device to uio_hv_generic.
    Bind,
    /// Give the VSS device back to hv_utils.
    Unbind,
}

pub fn run(_: UioCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
