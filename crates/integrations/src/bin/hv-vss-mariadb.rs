//! `hv-vss-mariadb`: MariaDB/MySQL takes part in hv-vss backups (FLUSH TABLES WITH READ
//! LOCK held from freeze until thaw or abort). See docs/integrations.md.

use std::process::ExitCode;

use clap::Parser;
use hv_vss_integrations::mariadb::Mariadb;
use hv_vss_integrations::settings::CommonArgs;

/// MariaDB/MySQL integration of hv-vss: FLUSH TABLES WITH READ LOCK across the freeze.
///
/// --connect takes a URL [default: "mysql://root@localhost/?socket=/run/mysqld/mysqld.sock"].
#[derive(Debug, Parser)]
#[command(name = "hv-vss-mariadb", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let program = hv_vss_integrations::Program {
        name: "hv-vss-mariadb",
        default_config: "/etc/hv-vss/mariadb.toml",
        default_name: "mariadb",
        default_connect: "mysql://root@localhost/?socket=/run/mysqld/mysqld.sock",
    };
    hv_vss_integrations::main(program, &Args::parse().common, |s| {
        Mariadb::new(&s.connect, s.password.as_deref(), s.veto_if_unreachable)
    })
}
