//! Configuration: the TOML file, the command line, and the validated [`Settings`] the daemon
//! runs with.
//!
//! Parse, then act: [`FileConfig::parse`] turns the file's text into typed values (unknown
//! keys rejected everywhere, `deny_unknown_fields`), [`Settings::resolve`] merges the
//! command line over it (flags win, R67) and checks every value, naming the key or flag in
//! each error. Nothing here touches the system except reading the config file.
//!
//! # Keys
//!
//! ```toml
//! device = "/dev/vmbus/hv_vss"     # drop-in transport (or a SOCK_SEQPACKET socket)
//! # uio = "/dev/uio3"              # UIO transport instead (or a simulator's socket)
//! state_dir = "/run/hv-vss"        # journal, locks, report history; must be tmpfs
//! app_socket = "/run/hv-vss/app.sock"
//! mounts = []                      # explicit freeze set; empty = discovery + [freezer] filters
//! auto_thaw = true                 # false disables the safety net (warned)
//! auto_thaw_seconds = 60
//! log_level = "info"               # error | warn | info | debug | trace
//! log_ring_capacity = 4096         # lines kept in memory while frozen
//! history_limit = 100              # reports kept in <state_dir>/history.jsonl
//! metrics_textfile = "/var/lib/prometheus/node-exporter/hv-vss.prom"  # unset: none
//! control_group = "adm"            # besides root, may ask the control socket; unset: root only
//! stop_timeout_seconds = 45        # the unit's TimeoutStopSec= (deadlines are checked against it)
//!
//! [limits]
//! check_deadline_seconds = 25
//! freeze_deadline_seconds = 300
//! thaw_deadline_seconds = 25
//! client_timeout_seconds = 30
//!
//! [apps]                           # the application socket (docs/apps.md)
//! socket_mode = "0660"            # "0666" by default if anyone besides root is allowed
//! socket_owner = "root"            # user name or uid
//! socket_group = "root"            # group name or gid
//! allowed_users = []               # besides root: names or uids
//! allowed_groups = []              # names or gids (primary or supplementary)
//! max_clients = 256
//! max_pending_bytes = 1048576      # unread bytes to one client before it is dropped
//!
//! [[hooks]]                        # repeatable; default: /etc/hv-vss/hooks.d if it exists
//! dir = "/etc/hv-vss/hooks.d"
//! style = "native"                 # native | qemu-ga | vmware
//! tier = 100
//! timeout_secs = 30
//!
//! [freebsd]                        # FreeBSD only (docs/freebsd.md)
//! zfs = "sync"                     # sync | veto | ignore: writable ZFS datasets' pools
//! other_local = "veto"             # veto | skip: other writable local filesystems
//! hv_vss = "/usr/local/bin/hv-vss" # holds the UFS suspensions (a single-threaded child)
//!
//! [freezer]                        # hv_vss_freezer::FreezerConfig
//! on_unsupported = "skip"
//! on_foreign_freeze = "fail"
//! freeze_deadline_secs = 60
//! expedite_grace_periods = true
//! rcu_expedited_switch = "/sys/kernel/rcu_expedited"
//! include = { mount_points = [], fs_types = [], sources = [] }
//! exclude = { mount_points = [], fs_types = [], sources = [] }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use hv_vss_core::{AutoThaw, Limits, LimitsError};
use hv_vss_freezer::freebsd_plan::{FreeBsdPolicy, OtherFsPolicy, ZfsPolicy};
use hv_vss_freezer::{CompiledConfig, FreezerConfig};
use hv_vss_hooks::{HookDir, HookStyle};
use serde::Deserialize;

mod apps;
pub mod fsvss;

pub use apps::{
    AppSettings, DEFAULT_MAX_CLIENTS, DEFAULT_MAX_PENDING_BYTES, DEFAULT_SOCKET_MODE,
    HookDirSettings, OPEN_SOCKET_MODE,
};
use apps::{resolve_apps, resolve_hooks};

/// Where the daemon looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/hv-vss/hv-vss.toml";
/// Default report history length.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;
/// Default of `stop_timeout_seconds`: the shipped units' `TimeoutStopSec=`.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(45);

/// The config file as written (every key optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub device: Option<PathBuf>,
    pub uio: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub app_socket: Option<PathBuf>,
    pub mounts: Option<Vec<PathBuf>>,
    pub auto_thaw: Option<bool>,
    pub auto_thaw_seconds: Option<f64>,
    pub log_level: Option<String>,
    pub log_ring_capacity: Option<usize>,
    pub history_limit: Option<usize>,
    pub metrics_textfile: Option<PathBuf>,
    pub control_group: Option<IdOrName>,
    pub stop_timeout_seconds: Option<f64>,
    #[serde(default)]
    pub limits: FileLimits,
    #[serde(default)]
    pub apps: FileApps,
    pub hooks: Option<Vec<FileHookDir>>,
    #[serde(default)]
    pub freezer: FreezerConfig,
    /// `[freebsd]`: what FreeBSD's backend does besides suspending UFS ([`fsvss`]).
    #[serde(default)]
    pub freebsd: FileFreeBsd,
    /// Whether the file sets `freezer.freeze_deadline_secs` (its default depends on the
    /// transport: [`fsvss::DEFAULT_PER_FS_FREEZE_SECS`]).
    #[serde(skip)]
    pub freezer_deadline_given: bool,
}

/// A user or group, by name or number.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum IdOrName {
    Id(u32),
    Name(String),
}

/// The `[apps]` table: the application socket's access and limits.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileApps {
    pub socket_mode: Option<String>,
    pub socket_owner: Option<IdOrName>,
    pub socket_group: Option<IdOrName>,
    pub allowed_users: Option<Vec<IdOrName>>,
    pub allowed_groups: Option<Vec<IdOrName>>,
    pub max_clients: Option<usize>,
    pub max_pending_bytes: Option<usize>,
}

/// One `[[hooks]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHookDir {
    pub dir: PathBuf,
    pub style: Option<String>,
    pub tier: Option<u8>,
    pub timeout_secs: Option<f64>,
}

/// The `[freebsd]` table (read on every platform, used on FreeBSD).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFreeBsd {
    /// Writable ZFS: `"sync"` (default) its pools with `zpool sync`, `"veto"`, `"ignore"`.
    pub zfs: Option<ZfsPolicy>,
    /// Other writable local filesystems: `"veto"` (default) or `"skip"`.
    pub other_local: Option<OtherFsPolicy>,
    /// The `hv-vss` binary that holds the UFS suspensions (`hv-vss freeze
    /// --holder-protocol`).
    pub hv_vss: Option<PathBuf>,
}

/// The `[limits]` table.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub check_deadline_seconds: Option<f64>,
    pub freeze_deadline_seconds: Option<f64>,
    pub thaw_deadline_seconds: Option<f64>,
    pub client_timeout_seconds: Option<f64>,
}

impl FileConfig {
    /// Parses the file's text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let syntax = |e: toml::de::Error| ConfigError::Syntax {
            file: origin.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        };
        let mut config: Self = toml::from_str(text).map_err(syntax)?;
        let table: toml::Table = text.parse().map_err(syntax)?;
        config.freezer_deadline_given = table
            .get("freezer")
            .and_then(|f| f.get("freeze_deadline_secs"))
            .is_some();
        Ok(config)
    }
}

/// The command-line values that override the file (None/empty = not given).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub device: Option<PathBuf>,
    pub uio: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub app_socket: Option<PathBuf>,
    pub mounts: Vec<PathBuf>,
    /// `--auto-thaw` as given.
    pub auto_thaw: Option<String>,
    pub debug: bool,
}

/// Which transport carries host requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportChoice {
    /// `/dev/vmbus/hv_vss` or a `SOCK_SEQPACKET` socket speaking the same bytes.
    DropIn(PathBuf),
    /// `/dev/uioN` or a host simulator's socket.
    Uio(PathBuf),
    /// FreeBSD's `/dev/hv_fsvss_dev` ([`fsvss`]).
    FsVss(PathBuf),
}

/// The platform whose transports and defaults the config resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// `/dev/vmbus/hv_vss` or UIO.
    Linux,
    /// `/dev/hv_fsvss_dev`.
    FreeBsd,
}

impl Platform {
    /// The platform this daemon was built for.
    pub const HOST: Self = if cfg!(target_os = "freebsd") {
        Self::FreeBsd
    } else {
        Self::Linux
    };

    /// The default `state_dir`: a tmpfs, never frozen (`/run` on Linux; on FreeBSD the rc.d
    /// script mounts one at `/var/run/hv-vss`).
    pub fn default_state_dir(self) -> &'static str {
        match self {
            Self::Linux => "/run/hv-vss",
            Self::FreeBsd => "/var/run/hv-vss",
        }
    }
}

/// Linux's drop-in device, the default transport there.
pub const LINUX_DROP_IN_DEVICE: &str = "/dev/vmbus/hv_vss";

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "error" => Self::Error,
            "warn" => Self::Warn,
            "info" => Self::Info,
            "debug" => Self::Debug,
            "trace" => Self::Trace,
            _ => return None,
        })
    }

    /// As a tracing filter.
    pub fn filter(self) -> tracing::level_filters::LevelFilter {
        use tracing::level_filters::LevelFilter;
        match self {
            Self::Error => LevelFilter::ERROR,
            Self::Warn => LevelFilter::WARN,
            Self::Info => LevelFilter::INFO,
            Self::Debug => LevelFilter::DEBUG,
            Self::Trace => LevelFilter::TRACE,
        }
    }
}

/// Everything the daemon runs with, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub transport: TransportChoice,
    pub state_dir: PathBuf,
    pub app_socket: PathBuf,
    pub apps: AppSettings,
    pub hooks: Vec<HookDirSettings>,
    /// Empty: discovery with the `[freezer]` filters.
    pub mounts: Vec<PathBuf>,
    pub limits: Limits,
    pub freezer: CompiledConfig,
    pub log_level: LogLevel,
    pub log_ring_capacity: usize,
    pub history_limit: usize,
    /// Prometheus textfile rewritten after each history append ([`crate::metrics`]).
    pub metrics_textfile: Option<PathBuf>,
    /// Besides root, this group may ask the control socket ([`crate::control`]).
    pub control_gid: Option<u32>,
    /// `[freebsd]`, validated.
    #[cfg_attr(
        not(target_os = "freebsd"),
        allow(dead_code, reason = "read by FreeBSD's start-up only")
    )]
    pub freebsd: FreeBsdSettings,
}

/// `[freebsd]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeBsdSettings {
    /// The ZFS and other-filesystem policy.
    pub policy: FreeBsdPolicy,
    /// The `hv-vss` binary that holds the suspensions.
    pub holder: PathBuf,
}

/// Default of `[freebsd] hv_vss`: where the rc.d script's package puts it.
pub const DEFAULT_HOLDER: &str = "/usr/local/bin/hv-vss";

/// A configuration problem; every message names the key or flag.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", .file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
    #[error("{}: {message}", .file.display())]
    Syntax { file: PathBuf, message: String },
    /// The freezer's own message, which names its key (`freezer.…`).
    #[error("{0}")]
    Freezer(String),
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// A positive, finite number of seconds.
fn seconds(key: &str, value: f64) -> Result<Duration, ConfigError> {
    if !value.is_finite() || value <= 0.0 {
        return Err(invalid(key, format!("must be > 0 seconds, got {value}")));
    }
    Duration::try_from_secs_f64(value).map_err(|e| invalid(key, e.to_string()))
}

fn absolute(key: &str, path: PathBuf) -> Result<PathBuf, ConfigError> {
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(invalid(
            key,
            format!("must be an absolute path, got {:?}", path.display()),
        ))
    }
}

impl Settings {
    /// Reads the config file: `--config FILE` must exist; without it the default path is
    /// used if present.
    pub fn load_file(
        explicit: Option<&Path>,
    ) -> Result<(FileConfig, Option<PathBuf>), ConfigError> {
        let (path, must_exist) = match explicit {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((FileConfig::parse(&text, &path)?, Some(path))),
            Err(e) if !must_exist && e.kind() == std::io::ErrorKind::NotFound => {
                Ok((FileConfig::default(), None))
            }
            Err(e) => Err(ConfigError::Read {
                file: path,
                source: std::sync::Arc::new(e),
            }),
        }
    }

    /// Merges the command line over the file and validates every value, for this platform.
    pub fn resolve(file: FileConfig, cli: Overrides) -> Result<Self, ConfigError> {
        Self::resolve_on(Platform::HOST, file, cli)
    }

    /// [`Self::resolve`] for `platform`'s transports and defaults.
    pub fn resolve_on(
        platform: Platform,
        mut file: FileConfig,
        cli: Overrides,
    ) -> Result<Self, ConfigError> {
        let transport = match platform {
            Platform::Linux => linux_transport(cli.device, cli.uio, file.device, file.uio)?,
            Platform::FreeBsd => {
                fsvss::choose_transport(cli.device, cli.uio, file.device, file.uio)?
            }
        };
        let on_fsvss = matches!(transport, TransportChoice::FsVss(_));
        if on_fsvss && !file.freezer_deadline_given {
            file.freezer.freeze_deadline_secs = fsvss::DEFAULT_PER_FS_FREEZE_SECS;
        }

        let state_dir = match cli.state_dir {
            Some(d) => absolute("--state-dir", d)?,
            None => absolute(
                "state_dir",
                file.state_dir
                    .unwrap_or_else(|| platform.default_state_dir().into()),
            )?,
        };
        let app_socket = match cli.app_socket {
            Some(p) => absolute("--app-socket", p)?,
            None => match file.app_socket {
                Some(p) => absolute("app_socket", p)?,
                None => state_dir.join("app.sock"),
            },
        };
        let mounts = if cli.mounts.is_empty() {
            file.mounts.unwrap_or_default()
        } else {
            cli.mounts
        };
        if mounts.iter().any(|m| m.as_os_str().is_empty()) {
            return Err(invalid("mounts", "an empty path is not a mount point"));
        }

        let mut limits = if on_fsvss {
            fsvss::default_limits()
        } else {
            Limits::default()
        };
        let l = &file.limits;
        if let Some(v) = l.check_deadline_seconds {
            limits.check_deadline = seconds("limits.check_deadline_seconds", v)?;
        }
        if let Some(v) = l.freeze_deadline_seconds {
            limits.freeze_deadline = seconds("limits.freeze_deadline_seconds", v)?;
        }
        if let Some(v) = l.thaw_deadline_seconds {
            limits.thaw_deadline = seconds("limits.thaw_deadline_seconds", v)?;
        }
        if let Some(v) = l.client_timeout_seconds {
            limits.client_timeout = seconds("limits.client_timeout_seconds", v)?;
        }
        limits.auto_thaw = match cli.auto_thaw {
            Some(arg) => parse_auto_thaw_flag(&arg)?,
            None => match (file.auto_thaw, file.auto_thaw_seconds) {
                (Some(false), Some(_)) => {
                    return Err(invalid(
                        "auto_thaw_seconds",
                        "set, but auto_thaw = false disables auto-thaw; remove one of them",
                    ));
                }
                (Some(false), None) => AutoThaw::Disabled,
                (_, Some(v)) if v <= 0.0 => {
                    return Err(invalid(
                        "auto_thaw_seconds",
                        "must be > 0; use auto_thaw = false to disable, which is warned",
                    ));
                }
                (_, Some(v)) => AutoThaw::After(seconds("auto_thaw_seconds", v)?),
                (_, None) => limits.auto_thaw,
            },
        };
        let check = if matches!(transport, TransportChoice::DropIn(_)) {
            limits.validate_drop_in()
        } else {
            limits.validate()
        };
        check.map_err(|e| limits_error(&e))?;
        if on_fsvss {
            fsvss::check_deadlines(&limits)?;
        }

        let freezer = file
            .freezer
            .compile()
            .map_err(|e| ConfigError::Freezer(e.to_string()))?;
        let stop_timeout = match file.stop_timeout_seconds {
            Some(v) => seconds("stop_timeout_seconds", v)?,
            None => DEFAULT_STOP_TIMEOUT,
        };
        check_deadlines_nest(&limits, freezer.config().freeze_deadline(), stop_timeout)?;

        let apps = resolve_apps(&file.apps, app_socket.clone())?;
        let hooks = resolve_hooks(file.hooks)?;

        let log_level = if cli.debug {
            LogLevel::Debug
        } else {
            match file.log_level.as_deref() {
                None => LogLevel::Info,
                Some(s) => LogLevel::parse(s).ok_or_else(|| {
                    invalid(
                        "log_level",
                        format!("{s:?} is not one of error, warn, info, debug, trace"),
                    )
                })?,
            }
        };
        let log_ring_capacity = match file.log_ring_capacity {
            Some(0) => return Err(invalid("log_ring_capacity", "must be at least 1")),
            Some(n) => n,
            None => crate::logbuf::DEFAULT_CAPACITY,
        };
        let history_limit = match file.history_limit {
            Some(0) => return Err(invalid("history_limit", "must be at least 1")),
            Some(n) => n,
            None => DEFAULT_HISTORY_LIMIT,
        };
        let control_gid = file
            .control_group
            .as_ref()
            .map(|g| {
                crate::apps::accounts::resolve(crate::apps::accounts::Kind::Group, g)
                    .map_err(|e| invalid("control_group", e))
            })
            .transpose()?;
        let metrics_textfile = file
            .metrics_textfile
            .map(|p| absolute("metrics_textfile", p))
            .transpose()?;

        let freebsd = FreeBsdSettings {
            policy: FreeBsdPolicy {
                zfs: file.freebsd.zfs.unwrap_or_default(),
                other_local: file.freebsd.other_local.unwrap_or_default(),
            },
            holder: match file.freebsd.hv_vss {
                Some(p) => absolute("freebsd.hv_vss", p)?,
                None => DEFAULT_HOLDER.into(),
            },
        };

        Ok(Settings {
            transport,
            state_dir,
            app_socket,
            apps,
            hooks,
            mounts,
            limits,
            freezer,
            log_level,
            log_ring_capacity,
            history_limit,
            metrics_textfile,
            control_gid,
            freebsd,
        })
    }
}

/// Linux: `device` (drop-in) or `uio`, never both; the command line wins over the file.
fn linux_transport(
    cli_device: Option<PathBuf>,
    cli_uio: Option<PathBuf>,
    file_device: Option<PathBuf>,
    file_uio: Option<PathBuf>,
) -> Result<TransportChoice, ConfigError> {
    Ok(match (cli_device, cli_uio) {
        (Some(_), Some(_)) => return Err(invalid("--device", "conflicts with --uio")),
        (Some(d), None) => TransportChoice::DropIn(d),
        (None, Some(u)) => TransportChoice::Uio(u),
        (None, None) => match (file_device, file_uio) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "device",
                    "conflicts with uio: set only one transport",
                ));
            }
            (Some(d), None) => TransportChoice::DropIn(d),
            (None, Some(u)) => TransportChoice::Uio(u),
            (None, None) => TransportChoice::DropIn(LINUX_DROP_IN_DEVICE.into()),
        },
    })
}

/// The deadlines must nest, or one safety bound defeats another (issue 8):
/// - a FIFREEZE may take `freezer.freeze_deadline_secs`; that must end within the FREEZE
///   budget `limits.freeze_deadline_seconds`, or the request runs out while the freezer
///   still waits and the answer says less than the freezer knows;
/// - on SIGTERM the daemon cancels the freeze at once but may wait up to
///   `limits.thaw_deadline_seconds` for a FITHAW being retried; systemd must not SIGKILL it
///   before (`stop_timeout_seconds`, the unit's `TimeoutStopSec=`), with a margin for the
///   rest of the stop.
fn check_deadlines_nest(
    limits: &Limits,
    per_fs_freeze: Duration,
    stop_timeout: Duration,
) -> Result<(), ConfigError> {
    if per_fs_freeze >= limits.freeze_deadline {
        return Err(invalid(
            "freezer.freeze_deadline_secs",
            format!(
                "{} s must be below limits.freeze_deadline_seconds ({} s): one FIFREEZE must fit in the FREEZE budget",
                per_fs_freeze.as_secs_f64(),
                limits.freeze_deadline.as_secs_f64()
            ),
        ));
    }
    if limits.thaw_deadline + STOP_MARGIN > stop_timeout {
        return Err(invalid(
            "stop_timeout_seconds",
            format!(
                "{} s must exceed limits.thaw_deadline_seconds ({} s) by at least {} s: a stop waits up to the THAW budget for a thaw being retried before systemd may SIGKILL (set it to the unit's TimeoutStopSec=)",
                stop_timeout.as_secs_f64(),
                limits.thaw_deadline.as_secs_f64(),
                STOP_MARGIN.as_secs()
            ),
        ));
    }
    Ok(())
}

/// Time a stop needs besides waiting for the thaw (answering, closing, exiting).
const STOP_MARGIN: Duration = Duration::from_secs(5);

/// `--auto-thaw SECONDS` (> 0, decimals allowed) or `--auto-thaw off`.
fn parse_auto_thaw_flag(arg: &str) -> Result<AutoThaw, ConfigError> {
    if arg == "off" {
        return Ok(AutoThaw::Disabled);
    }
    let value: f64 = arg.parse().map_err(|_| {
        invalid(
            "--auto-thaw",
            format!("{arg:?} is not a number of seconds (or \"off\")"),
        )
    })?;
    if value <= 0.0 {
        return Err(invalid(
            "--auto-thaw",
            "must be > 0 seconds; use --auto-thaw off to disable, which is warned",
        ));
    }
    Ok(AutoThaw::After(seconds("--auto-thaw", value)?))
}

fn limits_error(e: &LimitsError) -> ConfigError {
    let name = match e {
        LimitsError::Zero { name } | LimitsError::NotBeforeKernel { name, .. } => *name,
    };
    let key = match name {
        "auto_thaw" => "auto_thaw_seconds".to_string(),
        other => format!("limits.{other}_seconds"),
    };
    let reason = match e {
        LimitsError::Zero { .. } => "must be at least 1 ms".to_string(),
        LimitsError::NotBeforeKernel { ours, kernel, .. } => format!(
            "{} s must stay below the kernel's {} s in drop-in mode, so rollback runs first",
            ours.as_secs_f64(),
            kernel.as_secs_f64()
        ),
    };
    invalid(key, reason)
}

#[cfg(test)]
mod tests;
