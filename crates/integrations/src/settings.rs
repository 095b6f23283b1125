//! Settings shared by the integrations: command-line flags over an optional TOML file.
//!
//! ```toml
//! # /etc/hv-vss/postgres.toml (every key optional; a flag given on the command line wins)
//! name = "postgres"                 # registration name, unique on the app socket
//! tier = 50                         # 0-255, lower freezes first (default 100)
//! timeout = "30s"                   # this client's bound per event
//! socket = "/run/hv-vss/app.sock"   # hv-vssd's app socket
//! connect = "host=/run/postgresql user=postgres dbname=postgres"
//! password_file = "/etc/hv-vss/postgres.password"
//! veto_if_unreachable = false       # veto backups while the database is unreachable
//! ```
//!
//! The password is read from `password_file` (first line, without its newline), never
//! from the command line where `ps` would show it. A password file readable by group or
//! others is refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use hv_vss_client::{Config, Registration};
use serde::Deserialize;

/// Flags every integration takes.
#[derive(Debug, Default, clap::Args)]
pub struct CommonArgs {
    /// TOML file with any of the settings below (flags win) [default:
    /// /etc/hv-vss/<integration>.toml if it exists].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Registration name on the app socket.
    #[arg(long)]
    pub name: Option<String>,
    /// Tier 0-255 (lower freezes first) [default: 100].
    #[arg(long)]
    pub tier: Option<u8>,
    /// Bound per event, e.g. 30s (the daemon caps it by the host's deadline).
    #[arg(long, value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// hv-vssd's app socket [default: /run/hv-vss/app.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Database connection string (see docs/integrations.md for each database's form).
    #[arg(long, value_name = "STRING")]
    pub connect: Option<String>,
    /// File holding the database password (first line).
    #[arg(long, value_name = "PATH")]
    pub password_file: Option<PathBuf>,
    /// Veto backups (ack check and freeze not ok) while the database cannot be reached;
    /// by default an unreachable database does not stop a backup.
    #[arg(long)]
    pub veto_if_unreachable: bool,
}

/// The TOML file: the same settings, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub name: Option<String>,
    pub tier: Option<u8>,
    pub timeout: Option<String>,
    pub socket: Option<PathBuf>,
    pub connect: Option<String>,
    pub password_file: Option<PathBuf>,
    pub veto_if_unreachable: Option<bool>,
}

/// Everything an integration needs, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub client: Config,
    pub connect: String,
    pub password: Option<String>,
    pub veto_if_unreachable: bool,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let t = humantime::parse_duration(text.trim()).map_err(|e| format!("{text:?}: {e}"))?;
    if t.is_zero() || t > Duration::from_secs(3600) {
        return Err(format!(
            "timeout {text:?} must be more than 0 and at most 1h"
        ));
    }
    Ok(t)
}

impl FileSettings {
    /// Parses and checks the file's text: unknown keys, a bad `timeout` or `name` are
    /// errors. Pure: reads no other file (`password_file` is read when settings merge).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let file: FileSettings = toml::from_str(text).context("parsing TOML")?;
        if let Some(t) = &file.timeout {
            file_timeout(t)?;
        }
        if let Some(name) = &file.name {
            hv_vss_client::validate_name(name)
                .map_err(|e| anyhow::anyhow!("name {name:?}: {e}"))?;
        }
        Ok(file)
    }
}

fn file_timeout(text: &str) -> anyhow::Result<Duration> {
    parse_timeout(text).map_err(|e| anyhow::anyhow!("timeout: {e}"))
}

impl Settings {
    /// Flags over the file named by `--config` (or `default_config` if that exists), over
    /// the defaults.
    pub fn resolve(
        args: &CommonArgs,
        default_config: &Path,
        default_name: &str,
        default_connect: &str,
    ) -> anyhow::Result<Self> {
        let config = args.config.clone().or_else(|| {
            default_config
                .exists()
                .then(|| default_config.to_path_buf())
        });
        let file = match &config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                FileSettings::parse(&text).with_context(|| format!("in {}", path.display()))?
            }
            None => FileSettings::default(),
        };
        Self::merge(args, file, default_name, default_connect)
    }

    fn merge(
        args: &CommonArgs,
        file: FileSettings,
        default_name: &str,
        default_connect: &str,
    ) -> anyhow::Result<Self> {
        let timeout = match (args.timeout, &file.timeout) {
            (Some(t), _) => Some(t),
            (None, Some(text)) => Some(file_timeout(text)?),
            (None, None) => None,
        };
        let name = args
            .name
            .clone()
            .or(file.name)
            .unwrap_or_else(|| default_name.to_owned());
        hv_vss_client::validate_name(&name).map_err(|e| anyhow::anyhow!("name {name:?}: {e}"))?;
        let mut registration = Registration::new(name);
        registration.tier = args.tier.or(file.tier);
        registration.timeout = timeout;
        let mut client = Config::new(registration);
        if let Some(socket) = args.socket.clone().or(file.socket) {
            client.socket = socket;
        }
        let password = match args.password_file.clone().or(file.password_file) {
            Some(path) => Some(read_password(&path)?),
            None => None,
        };
        Ok(Self {
            client,
            connect: args
                .connect
                .clone()
                .or(file.connect)
                .unwrap_or_else(|| default_connect.to_owned()),
            password,
            veto_if_unreachable: args.veto_if_unreachable
                || file.veto_if_unreachable.unwrap_or(false),
        })
    }
}

/// The first line of `path`; refused when group or others may read it.
pub fn read_password(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).with_context(|| format!("password file {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "password file {} is accessible by group or others (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading password file {}", path.display()))?;
    Ok(text.lines().next().unwrap_or("").to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn flags_win_over_the_file_over_defaults() {
        let file: FileSettings = toml::from_str(
            "name = \"pg-main\"\ntier = 40\ntimeout = \"20s\"\nsocket = \"/tmp/x.sock\"\n\
             connect = \"host=/tmp\"\nveto_if_unreachable = true\n",
        )
        .unwrap();
        let args = CommonArgs {
            tier: Some(7),
            ..CommonArgs::default()
        };
        let s = Settings::merge(&args, file, "postgres", "host=/run/postgresql").unwrap();
        assert_eq!(s.client.registration.name, "pg-main");
        assert_eq!(s.client.registration.tier, Some(7));
        assert_eq!(s.client.registration.timeout, Some(Duration::from_secs(20)));
        assert_eq!(s.client.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(s.connect, "host=/tmp");
        assert!(s.veto_if_unreachable);

        let s = Settings::merge(
            &CommonArgs::default(),
            FileSettings::default(),
            "postgres",
            "host=/run/postgresql",
        )
        .unwrap();
        assert_eq!(s.client.registration.name, "postgres");
        assert_eq!(s.client.registration.tier, None);
        assert_eq!(
            s.client.socket,
            PathBuf::from(hv_vss_client::DEFAULT_SOCKET)
        );
        assert_eq!(s.connect, "host=/run/postgresql");
        assert!(!s.veto_if_unreachable);
        assert!(s.password.is_none());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        for bad in [
            "nmae = \"x\"",
            "tier = 300",
            "timeout = \"soon\"",
            "timeout = \"0s\"",
            "name = \"\"",
            "name = \"a\\nb\"",
            "veto_if_unreachable = \"yes\"",
        ] {
            assert!(FileSettings::parse(bad).is_err(), "{bad}");
        }
        let file = FileSettings::parse("timeout = \"90s\"\nname = \"pg\"").unwrap();
        assert_eq!(file.timeout.as_deref(), Some("90s"));
        let file: FileSettings = toml::from_str("timeout = \"soon\"").unwrap();
        let err = Settings::merge(&CommonArgs::default(), file, "n", "c").unwrap_err();
        assert!(err.to_string().contains("timeout"), "{err}");
        let file: FileSettings = toml::from_str("name = \"\"").unwrap();
        assert!(Settings::merge(&CommonArgs::default(), file, "n", "c").is_err());
    }

    #[test]
    fn the_password_file_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\nignored\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password(&path).unwrap(), "s3cret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = read_password(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert!(read_password(&dir.path().join("none")).is_err());
    }
}
