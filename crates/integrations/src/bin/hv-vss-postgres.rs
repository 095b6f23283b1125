//! `hv-vss-postgres`: PostgreSQL takes part in hv-vss backups (CHECKPOINT on freeze).
//! See docs/integrations.md.

use std::process::ExitCode;

use clap::Parser;
use hv_vss_integrations::postgresql::Postgres;
use hv_vss_integrations::settings::CommonArgs;

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
    let program = hv_vss_integrations::Program {
        name: "hv-vss-postgres",
        default_config: "/etc/hv-vss/postgres.toml",
        default_name: "postgres",
        default_connect: "host=/run/postgresql user=postgres dbname=postgres",
    };
    hv_vss_integrations::main(program, &Args::parse().common, |s| {
        Postgres::new(&s.connect, s.password.as_deref(), s.veto_if_unreachable)
    })
}
