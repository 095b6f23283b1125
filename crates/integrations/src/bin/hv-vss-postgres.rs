//! `hv-vss-postgres`: PostgreSQL takes part in hv-vss backups (CHECKPOINT on freeze).
//! See docs/integrations.md.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use hv_vss_integrations::postgresql::Postgres;
use hv_vss_integrations::settings::{CommonArgs, Settings};

const DEFAULT_CONFIG: &str = "/etc/hv-vss/postgres.toml";
const DEFAULT_CONNECT: &str = "host=/run/postgresql user=postgres dbname=postgres";

/// PostgreSQL integration of hv-vss: CHECKPOINT before the filesystems freeze.
///
/// --connect takes a libpq connection string [default: "host=/run/postgresql user=postgres
/// dbname=postgres"].
#[derive(Debug, Parser)]
#[command(name = "hv-vss-postgres", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    hv_vss_integrations::init_logging();
    let built = Settings::resolve(
        &args.common,
        Path::new(DEFAULT_CONFIG),
        "postgres",
        DEFAULT_CONNECT,
    )
    .and_then(|s| {
        let handler = Postgres::new(&s.connect, s.password.as_deref(), s.veto_if_unreachable)?;
        Ok((s, handler))
    });
    match built {
        Ok((settings, mut handler)) => {
            hv_vss_integrations::serve("hv-vss-postgres", &settings, &mut handler)
        }
        Err(e) => {
            eprintln!("hv-vss-postgres: {e:#}");
            ExitCode::from(2)
        }
    }
}
