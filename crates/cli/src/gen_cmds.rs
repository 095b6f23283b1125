//! `hv-vss generate-docs DIR` (hidden, for packaging): man pages from the clap definition
//! (hv-vss(1) and one page per subcommand, hv-vss-SUB(1)) into `DIR/man`, and shell
//! completions for bash, zsh and fish into `DIR/completions`. hv-vssd(8) and
//! hv-vss.toml(5) come from `hv-vssd --generate-man DIR`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap_complete::Shell;

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Output directory (created).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
}

pub fn run(args: GenerateArgs, cmd: clap::Command) -> anyhow::Result<ExitCode> {
    generate(&args.dir, cmd)?;
    Ok(ExitCode::SUCCESS)
}

fn generate(dir: &Path, mut cmd: clap::Command) -> anyhow::Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // The hidden subcommands (this one, internal helpers) get no page.
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("writing man pages to {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "hv-vss", &completions)
            .with_context(|| format!("writing {shell} completions to {}", completions.display()))?;
    }
    Ok(())
}
