//! `plan`, `freeze`, `thaw` (to be written by the freezer work).
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct PlanArgs {}
#[derive(Debug, clap::Args)]
pub struct FreezeArgs {}
#[derive(Debug, clap::Args)]
pub struct ThawArgs {}

pub fn plan(_: PlanArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
pub fn freeze(_: FreezeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
pub fn thaw(_: ThawArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
