//! `simulate` (to be written).
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {}

pub fn run(_: SimulateArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
