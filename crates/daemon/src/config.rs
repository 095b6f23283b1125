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
//! stop_timeout_seconds = 45        # the unit's TimeoutStopSec= (deadlines are checked against it)
//!
//! [limits]
//! check_deadline_seconds = 25
//! freeze_deadline_seconds = 300
//! thaw_deadline_seconds = 25
//! client_timeout_seconds = 30
//!
//! [freezer]                        # hv_vss_freezer::FreezerConfig
//! on_unsupported = "skip"
//! on_foreign_freeze = "fail"
//! freeze_deadline_secs = 60
//! include = { mount_points = [], fs_types = [], sources = [] }
//! exclude = { mount_points = [], fs_types = [], sources = [] }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use hv_vss_core::{AutoThaw, Limits, LimitsError};
use hv_vss_freezer::{CompiledConfig, FreezerConfig};
use serde::Deserialize;

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
    pub stop_timeout_seconds: Option<f64>,
    #[serde(default)]
    pub limits: FileLimits,
    #[serde(default)]
    pub freezer: FreezerConfig,
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
        toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: origin.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })
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
}

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
    /// Validated and reserved; the socket server comes with the applications issue.
    pub app_socket: PathBuf,
    /// Empty: discovery with the `[freezer]` filters.
    pub mounts: Vec<PathBuf>,
    pub limits: Limits,
    pub freezer: CompiledConfig,
    pub log_level: LogLevel,
    pub log_ring_capacity: usize,
    pub history_limit: usize,
}

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

    /// Merges the command line over the file and validates every value.
    pub fn resolve(file: FileConfig, cli: Overrides) -> Result<Self, ConfigError> {
        let transport = match (cli.device, cli.uio) {
            (Some(_), Some(_)) => return Err(invalid("--device", "conflicts with --uio")),
            (Some(d), None) => TransportChoice::DropIn(d),
            (None, Some(u)) => TransportChoice::Uio(u),
            (None, None) => match (file.device, file.uio) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "device",
                        "conflicts with uio: set only one transport",
                    ));
                }
                (Some(d), None) => TransportChoice::DropIn(d),
                (None, Some(u)) => TransportChoice::Uio(u),
                (None, None) => {
                    TransportChoice::DropIn(hv_vss_vmbus::kernel_dev::DEFAULT_DEVICE_PATH.into())
                }
            },
        };

        let state_dir = match cli.state_dir {
            Some(d) => absolute("--state-dir", d)?,
            None => absolute(
                "state_dir",
                file.state_dir
                    .unwrap_or_else(|| hv_vss_freezer::DEFAULT_STATE_DIR.into()),
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

        let mut limits = Limits::default();
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

        let freezer = file
            .freezer
            .compile()
            .map_err(|e| ConfigError::Freezer(e.to_string()))?;
        let stop_timeout = match file.stop_timeout_seconds {
            Some(v) => seconds("stop_timeout_seconds", v)?,
            None => DEFAULT_STOP_TIMEOUT,
        };
        check_deadlines_nest(&limits, freezer.config().freeze_deadline(), stop_timeout)?;

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

        Ok(Settings {
            transport,
            state_dir,
            app_socket,
            mounts,
            limits,
            freezer,
            log_level,
            log_ring_capacity,
            history_limit,
        })
    }
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
mod tests {
    use super::*;

    fn resolve(text: &str, cli: Overrides) -> Result<Settings, ConfigError> {
        Settings::resolve(FileConfig::parse(text, Path::new("test.toml"))?, cli)
    }

    fn err(text: &str, cli: Overrides) -> String {
        resolve(text, cli).unwrap_err().to_string()
    }

    #[test]
    fn defaults_follow_the_spec() {
        let s = resolve("", Overrides::default()).unwrap();
        assert_eq!(
            s.transport,
            TransportChoice::DropIn("/dev/vmbus/hv_vss".into())
        );
        assert_eq!(s.state_dir, PathBuf::from("/run/hv-vss"));
        assert_eq!(s.app_socket, PathBuf::from("/run/hv-vss/app.sock"));
        assert_eq!(s.limits, Limits::default());
        assert_eq!(s.log_level, LogLevel::Info);
        assert!(s.mounts.is_empty());
    }

    #[test]
    fn full_file_is_accepted() {
        let s = resolve(
            r#"
            uio = "/dev/uio3"
            state_dir = "/run/x"
            app_socket = "/run/x/a.sock"
            mounts = ["/srv"]
            auto_thaw_seconds = 12
            log_level = "debug"
            log_ring_capacity = 10
            history_limit = 5
            [limits]
            check_deadline_seconds = 20
            freeze_deadline_seconds = 100.5
            thaw_deadline_seconds = 20
            client_timeout_seconds = 10
            [freezer]
            on_unsupported = "fail"
            "#,
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.transport, TransportChoice::Uio("/dev/uio3".into()));
        assert_eq!(s.limits.auto_thaw, AutoThaw::After(Duration::from_secs(12)));
        assert_eq!(s.limits.freeze_deadline, Duration::from_millis(100_500));
        assert_eq!(s.mounts, vec![PathBuf::from("/srv")]);
        assert_eq!(s.history_limit, 5);
    }

    #[test]
    fn flags_override_the_file() {
        let cli = Overrides {
            device: Some("/tmp/sock".into()),
            state_dir: Some("/dev/shm/s".into()),
            mounts: vec!["/mnt/a".into()],
            auto_thaw: Some("1.5".into()),
            debug: true,
            ..Overrides::default()
        };
        let s = resolve(
            "uio = \"/dev/uio0\"\nmounts = [\"/srv\"]\nauto_thaw_seconds = 9\nlog_level = \"warn\"",
            cli,
        )
        .unwrap();
        assert_eq!(s.transport, TransportChoice::DropIn("/tmp/sock".into()));
        assert_eq!(s.mounts, vec![PathBuf::from("/mnt/a")]);
        assert_eq!(
            s.limits.auto_thaw,
            AutoThaw::After(Duration::from_millis(1500))
        );
        assert_eq!(s.log_level, LogLevel::Debug);
        assert_eq!(s.app_socket, PathBuf::from("/dev/shm/s/app.sock"));
    }

    #[test]
    fn every_error_names_its_key() {
        let cases: &[(&str, Overrides, &str)] = &[
            ("bogus = 1", Overrides::default(), "bogus"),
            ("[limits]\nfoo = 1", Overrides::default(), "foo"),
            ("[freezer]\nfoo = 1", Overrides::default(), "foo"),
            (
                "auto_thaw_seconds = 0",
                Overrides::default(),
                "auto_thaw_seconds: must be > 0; use auto_thaw = false",
            ),
            (
                "auto_thaw_seconds = -3",
                Overrides::default(),
                "auto_thaw_seconds",
            ),
            (
                "auto_thaw = false\nauto_thaw_seconds = 3",
                Overrides::default(),
                "auto_thaw_seconds",
            ),
            (
                "state_dir = \"rel\"",
                Overrides::default(),
                "state_dir: must be an absolute path",
            ),
            (
                "app_socket = \"x.sock\"",
                Overrides::default(),
                "app_socket",
            ),
            ("log_level = \"loud\"", Overrides::default(), "log_level"),
            (
                "log_ring_capacity = 0",
                Overrides::default(),
                "log_ring_capacity",
            ),
            ("history_limit = 0", Overrides::default(), "history_limit"),
            (
                "[limits]\ncheck_deadline_seconds = 0",
                Overrides::default(),
                "limits.check_deadline_seconds",
            ),
            (
                "[limits]\nthaw_deadline_seconds = 30",
                Overrides::default(),
                "limits.thaw_deadline_seconds: 30 s must stay below",
            ),
            (
                "[limits]\nfreeze_deadline_seconds = 900",
                Overrides::default(),
                "limits.freeze_deadline_seconds",
            ),
            (
                "[limits]\nclient_timeout_seconds = nan",
                Overrides::default(),
                "limits.client_timeout_seconds",
            ),
            (
                "[freezer]\nfreeze_deadline_secs = 0",
                Overrides::default(),
                "freezer.freeze_deadline_secs",
            ),
            (
                "[freezer]\nexclude = { mount_points = [\"[\"] }",
                Overrides::default(),
                "freezer.exclude.mount_points",
            ),
            (
                "device = \"/a\"\nuio = \"/b\"",
                Overrides::default(),
                "device: conflicts with uio",
            ),
            (
                "auto_thaw_seconds = \"x\"",
                Overrides::default(),
                "auto_thaw_seconds",
            ),
            (
                "",
                Overrides {
                    auto_thaw: Some("0".into()),
                    ..Overrides::default()
                },
                "--auto-thaw: must be > 0",
            ),
            (
                "",
                Overrides {
                    auto_thaw: Some("soon".into()),
                    ..Overrides::default()
                },
                "--auto-thaw",
            ),
            (
                "",
                Overrides {
                    state_dir: Some("x".into()),
                    ..Overrides::default()
                },
                "--state-dir",
            ),
            (
                "",
                Overrides {
                    device: Some("/a".into()),
                    uio: Some("/b".into()),
                    ..Overrides::default()
                },
                "--device: conflicts with --uio",
            ),
        ];
        for (text, cli, want) in cases {
            let got = err(text, cli.clone());
            assert!(
                got.contains(want),
                "{text:?}: {got:?} should contain {want:?}"
            );
        }
    }

    #[test]
    fn auto_thaw_can_be_disabled_explicitly() {
        let s = resolve("auto_thaw = false", Overrides::default()).unwrap();
        assert_eq!(s.limits.auto_thaw, AutoThaw::Disabled);
        let cli = Overrides {
            auto_thaw: Some("off".into()),
            ..Overrides::default()
        };
        assert_eq!(
            resolve("", cli).unwrap().limits.auto_thaw,
            AutoThaw::Disabled
        );
    }

    /// Deadlines that do not nest are refused at start-up, naming both keys (issue 8).
    #[test]
    fn deadlines_that_do_not_nest_name_their_keys() {
        let cases = [
            (
                "[limits]\nfreeze_deadline_seconds = 30\n[freezer]\nfreeze_deadline_secs = 60",
                "freezer.freeze_deadline_secs: 60 s must be below limits.freeze_deadline_seconds (30 s)",
            ),
            (
                "stop_timeout_seconds = 20",
                "stop_timeout_seconds: 20 s must exceed limits.thaw_deadline_seconds (25 s)",
            ),
            (
                "stop_timeout_seconds = 40\n[limits]\nthaw_deadline_seconds = 24",
                "",
            ),
        ];
        for (text, want) in cases {
            match resolve(text, Overrides::default()) {
                Ok(_) => assert!(want.is_empty(), "{text}: accepted"),
                Err(e) => assert!(
                    !want.is_empty() && e.to_string().contains(want),
                    "{text}: {e}"
                ),
            }
        }
    }

    #[test]
    fn uio_mode_may_exceed_kernel_deadlines() {
        let s = resolve(
            "uio = \"/dev/uio1\"\n[limits]\nthaw_deadline_seconds = 40",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.limits.thaw_deadline, Duration::from_secs(40));
    }

    #[test]
    fn missing_explicit_file_is_an_error_default_is_optional() {
        let e = Settings::load_file(Some(Path::new("/nonexistent/hv-vss.toml"))).unwrap_err();
        assert!(
            e.to_string().starts_with("/nonexistent/hv-vss.toml: "),
            "{e}"
        );
    }
}
