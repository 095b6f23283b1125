//! What the config means with FreeBSD's `/dev/hv_fsvss_dev` transport.
//!
//! `hv_snapshot` answers the host E_FAIL [`DRIVER_ACK_TIMEOUT`] (15 s) after it dispatched
//! a request and drops a later ack, whatever the daemon was doing. The clock starts at the
//! dispatch to an `/dev/hv_appvss_dev` application when one is registered, so that
//! application's time is taken from ours too. Every whole-chain deadline (HOT_BACKUP,
//! FREEZE, THAW) must therefore end [`ACK_MARGIN`] before the driver's, so the coordinator
//! has rolled back and answered fail itself, and the host hears why in our report rather
//! than from a timer. Linux's deadlines (300 s for FREEZE) cannot work here, so this
//! transport has its own defaults, and explicit values beyond the bound are refused at
//! start-up with the key named.
//!
//! On Linux the same keys are read; only the transport differs: `device` (or `--device`)
//! names `/dev/hv_fsvss_dev`, and `uio` does not exist.

use std::path::PathBuf;
use std::time::Duration;

use hv_vss_core::Limits;
use hv_vss_protocol::freebsd::{DRIVER_ACK_TIMEOUT, FS_VSS_DEVICE};

use super::{ConfigError, TransportChoice, invalid};

/// Kept between our deadline and the driver's: answering, rolling back by closing the
/// suspension fds, and the poll wake-up.
pub const ACK_MARGIN: Duration = Duration::from_secs(2);

/// Default of `limits.check_deadline_seconds`, `limits.freeze_deadline_seconds` and
/// `limits.thaw_deadline_seconds` with this transport.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// Default of `freezer.freeze_deadline_secs` (one filesystem's suspend) with this
/// transport: below [`DEFAULT_DEADLINE`], as the deadlines must nest.
pub const DEFAULT_PER_FS_FREEZE_SECS: u64 = 8;

/// The transport from `device` / `--device`; `uio` is refused.
pub(super) fn choose_transport(
    cli_device: Option<PathBuf>,
    cli_uio: Option<PathBuf>,
    file_device: Option<PathBuf>,
    file_uio: Option<PathBuf>,
) -> Result<TransportChoice, ConfigError> {
    const NO_UIO: &str = "the UIO transport exists only on Linux; on FreeBSD the transport is \
         device (default /dev/hv_fsvss_dev)";
    if cli_uio.is_some() {
        return Err(invalid("--uio", NO_UIO));
    }
    if file_uio.is_some() {
        return Err(invalid("uio", NO_UIO));
    }
    Ok(TransportChoice::FsVss(
        cli_device
            .or(file_device)
            .unwrap_or_else(|| FS_VSS_DEVICE.into()),
    ))
}

/// The defaults this transport starts from.
pub(super) fn default_limits() -> Limits {
    Limits {
        check_deadline: DEFAULT_DEADLINE,
        freeze_deadline: DEFAULT_DEADLINE,
        thaw_deadline: DEFAULT_DEADLINE,
        ..Limits::default()
    }
}

/// Each whole-chain deadline ends [`ACK_MARGIN`] before the driver's timer.
pub(super) fn check_deadlines(limits: &Limits) -> Result<(), ConfigError> {
    let bound = DRIVER_ACK_TIMEOUT - ACK_MARGIN;
    for (key, ours) in [
        ("limits.check_deadline_seconds", limits.check_deadline),
        ("limits.freeze_deadline_seconds", limits.freeze_deadline),
        ("limits.thaw_deadline_seconds", limits.thaw_deadline),
    ] {
        if ours >= bound {
            return Err(invalid(
                key,
                format!(
                    "{} s must be below {} s with the FreeBSD transport: hv_snapshot answers the host \
                     E_FAIL {} s after it dispatches a request (to an hv_appvss_dev application \
                     first, if one is registered) and drops a later answer; {} s are kept for \
                     answering",
                    ours.as_secs_f64(),
                    bound.as_secs_f64(),
                    DRIVER_ACK_TIMEOUT.as_secs(),
                    ACK_MARGIN.as_secs()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{FileConfig, Overrides, Platform, Settings};

    fn on_freebsd(text: &str, cli: Overrides) -> Result<Settings, ConfigError> {
        Settings::resolve_on(
            Platform::FreeBsd,
            FileConfig::parse(text, Path::new("test.toml"))?,
            cli,
        )
    }

    fn err(text: &str) -> String {
        on_freebsd(text, Overrides::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults_fit_inside_the_drivers_15_s() {
        let s = on_freebsd("", Overrides::default()).unwrap();
        assert_eq!(
            s.transport,
            TransportChoice::FsVss("/dev/hv_fsvss_dev".into())
        );
        for d in [
            s.limits.check_deadline,
            s.limits.freeze_deadline,
            s.limits.thaw_deadline,
        ] {
            assert!(d + ACK_MARGIN < DRIVER_ACK_TIMEOUT, "{d:?}");
        }
        assert!(s.freezer.config().freeze_deadline() < s.limits.freeze_deadline);
        assert_eq!(s.state_dir, Path::new("/var/run/hv-vss"));
        // Linux keeps its own.
        let linux =
            Settings::resolve_on(Platform::Linux, FileConfig::default(), Overrides::default())
                .unwrap();
        assert_eq!(linux.limits.freeze_deadline, Duration::from_secs(300));
        assert_eq!(linux.freezer.config().freeze_deadline_secs, 60);
    }

    #[test]
    fn device_names_the_fsvss_device_and_uio_is_refused() {
        let s = on_freebsd("device = \"/dev/other\"", Overrides::default()).unwrap();
        assert_eq!(s.transport, TransportChoice::FsVss("/dev/other".into()));
        let cli = Overrides {
            device: Some("/dev/cli".into()),
            ..Overrides::default()
        };
        let s = on_freebsd("device = \"/dev/other\"", cli).unwrap();
        assert_eq!(s.transport, TransportChoice::FsVss("/dev/cli".into()));
        assert!(err("uio = \"/dev/uio0\"").starts_with("uio: "));
        let cli = Overrides {
            uio: Some("/dev/uio0".into()),
            ..Overrides::default()
        };
        let e = on_freebsd("", cli).unwrap_err().to_string();
        assert!(
            e.starts_with("--uio: ") && e.contains("only on Linux"),
            "{e}"
        );
    }

    #[test]
    fn a_deadline_the_driver_would_cut_off_is_refused_naming_its_key() {
        for key in ["check", "freeze", "thaw"] {
            let e = err(&format!("[limits]\n{key}_deadline_seconds = 13"));
            assert!(
                e.starts_with(&format!(
                    "limits.{key}_deadline_seconds: 13 s must be below 13 s with the FreeBSD transport"
                )),
                "{e}"
            );
            // Linux's FREEZE default, given explicitly.
            let e = err(&format!("[limits]\n{key}_deadline_seconds = 300"));
            assert!(e.contains(&format!("limits.{key}_deadline_seconds")), "{e}");
        }
        let text = "[limits]\ncheck_deadline_seconds = 12.5\nfreeze_deadline_seconds = 12.9\n\
                    thaw_deadline_seconds = 12\n[freezer]\nfreeze_deadline_secs = 12";
        let s = on_freebsd(text, Overrides::default()).unwrap();
        assert_eq!(s.limits.freeze_deadline, Duration::from_millis(12_900));
        assert_eq!(s.freezer.config().freeze_deadline_secs, 12);
    }

    #[test]
    fn the_freebsd_table_sets_the_policy_and_the_holder() {
        use hv_vss_freezer::freebsd_plan::{OtherFsPolicy, ZfsPolicy};
        let s = on_freebsd("", Overrides::default()).unwrap();
        assert_eq!(s.freebsd.policy.zfs, ZfsPolicy::Sync);
        assert_eq!(s.freebsd.policy.other_local, OtherFsPolicy::Veto);
        assert_eq!(s.freebsd.holder, Path::new("/usr/local/bin/hv-vss"));
        let s = on_freebsd(
            "[freebsd]\nzfs = \"veto\"\nother_local = \"skip\"\nhv_vss = \"/opt/hv-vss\"",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.freebsd.policy.zfs, ZfsPolicy::Veto);
        assert_eq!(s.freebsd.policy.other_local, OtherFsPolicy::Skip);
        assert_eq!(s.freebsd.holder, Path::new("/opt/hv-vss"));
        assert!(err("[freebsd]\nzfs = \"freeze\"").contains("freeze"));
        assert!(err("[freebsd]\nhv_vss = \"hv-vss\"").starts_with("freebsd.hv_vss: "));
        assert!(err("[freebsd]\nufs = \"x\"").contains("ufs"));
    }

    #[test]
    fn an_explicit_per_fs_deadline_is_kept_and_must_still_nest() {
        let e = err("[freezer]\nfreeze_deadline_secs = 11");
        assert!(
            e.starts_with("freezer.freeze_deadline_secs: 11 s must be below limits.freeze_deadline_seconds (10 s)"),
            "{e}"
        );
        let s = on_freebsd("[freezer]\nfreeze_deadline_secs = 3", Overrides::default()).unwrap();
        assert_eq!(s.freezer.config().freeze_deadline_secs, 3);
    }
}
