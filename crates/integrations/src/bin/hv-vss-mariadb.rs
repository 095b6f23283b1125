//! `hv-vss-mariadb`: MariaDB/MySQL takes part in hv-vss backups (FLUSH TABLES WITH READ
//! LOCK held from freeze until thaw or abort). See docs/integrations.md.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use hv_vss_integrations::mariadb::Mariadb;
use hv_vss_integrations::settings::{CommonArgs, Settings};

const DEFAULT_CONFIG: &str = "/etc/hv-vss/mariadb.toml";
const DEFAULT_CONNECT: &str = "mysql://root@localhost/?socket=/run/mysqld/mysqld.sock";

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
    let args = Args::parse();
    hv_vss_integrations::init_logging();
    let built = Settings::resolve(
        &args.common,
        Path::new(DEFAULT_CONFIG),
        "mariadb",
        DEFAULT_CONNECT,
    )
    .and_then(|s| {
        let handler = Mariadb::new(&s.connect, s.password.as_deref(), s.veto_if_unreachable)?;
        Ok((s, handler))
    });
    match built {
        Ok((settings, mut handler)) => {
            hv_vss_integrations::serve("hv-vss-mariadb", &settings, &mut handler)
        }
        Err(e) => {
            eprintln!("hv-vss-mariadb: {e:#}");
            ExitCode::from(2)
        }
    }
}
