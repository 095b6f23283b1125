//! Freezer configuration: which filesystems to freeze and what to do when one refuses.
//!
//! The daemon embeds [`FreezerConfig`] in its TOML configuration (unknown keys rejected);
//! `hv-vss plan --config` reads the `[freezer]` table of such a file.
//!
//! ```toml
//! [freezer]
//! exclude = { mount_points = ["/boot/**", "/var/lib/docker/*"], fs_types = ["btrfs"] }
//! include = { sources = ["/dev/mapper/*"] }
//! on_unsupported = "skip"        # or "fail"
//! on_foreign_freeze = "fail"     # or "ignore"
//! freeze_deadline_secs = 60
//! expedite_grace_periods = true  # Linux: expedited RCU during FIFREEZE (crate::expedite)
//! ```
//!
//! Selection semantics: discovery picks every writable, local, block-backed filesystem. If
//! `include` has any rule, a filesystem must match at least one of them; then any match of
//! an `exclude` rule removes it. Mount-point and source patterns are globs where `*` does not
//! cross `/` and `**` does. A filesystem mounted in several places matches if any of its
//! mount points does. Filters apply to discovery only: an explicit `--mount` list is frozen
//! as given.

use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

/// Default state directory: Linux's `/run` (tmpfs on systemd systems), FreeBSD's
/// `/var/run` (the system's directory for run-time state; not a memory filesystem by
/// default).
#[cfg(target_os = "linux")]
pub const DEFAULT_STATE_DIR: &str = "/run/hv-vss";
/// Default state directory: Linux's `/run` (tmpfs on systemd systems), FreeBSD's
/// `/var/run` (the system's directory for run-time state; not a memory filesystem by
/// default).
#[cfg(target_os = "freebsd")]
pub const DEFAULT_STATE_DIR: &str = "/var/run/hv-vss";

/// Freezer settings (serde, `deny_unknown_fields`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FreezerConfig {
    /// When non-empty, only filesystems matching one of these rules are frozen.
    pub include: MountFilter,
    /// Filesystems matching any of these rules are never frozen.
    pub exclude: MountFilter,
    /// What an `EOPNOTSUPP` from FIFREEZE does (R33).
    pub on_unsupported: UnsupportedPolicy,
    /// What an `EBUSY` (someone else's freeze) does (R38).
    pub on_foreign_freeze: ForeignFreezePolicy,
    /// Deadline of each FIFREEZE call, in seconds (R39).
    pub freeze_deadline_secs: u64,
    /// Linux: turn the kernel's expedited RCU grace periods on for the FIFREEZE calls (and
    /// off after) when they are off: a clean filesystem's FIFREEZE then waits tens of
    /// microseconds instead of tens of milliseconds (`hv_vss_freezer::expedite`).
    pub expedite_grace_periods: bool,
    /// The switch turned on for that: the kernel's `/sys/kernel/rcu_expedited`. (Another
    /// path is for tests, which must not race each other over the machine's switch.)
    pub rcu_expedited_switch: PathBuf,
}

impl Default for FreezerConfig {
    fn default() -> Self {
        Self {
            include: MountFilter::default(),
            exclude: MountFilter::default(),
            on_unsupported: UnsupportedPolicy::Skip,
            on_foreign_freeze: ForeignFreezePolicy::Fail,
            freeze_deadline_secs: 60,
            expedite_grace_periods: true,
            rcu_expedited_switch: PathBuf::from(RCU_EXPEDITED),
        }
    }
}

/// The kernel's switch for expedited RCU grace periods (Linux,
/// Documentation/RCU/Design/Expedited-Grace-Periods).
pub const RCU_EXPEDITED: &str = "/sys/kernel/rcu_expedited";

/// Match rules on a mount; a mount matches the filter if any one rule matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MountFilter {
    /// Mount-point globs, e.g. `/srv/**`.
    pub mount_points: Vec<String>,
    /// Filesystem types, exactly, e.g. `xfs`.
    pub fs_types: Vec<String>,
    /// Source globs, e.g. `/dev/mapper/*`.
    pub sources: Vec<String>,
}

impl MountFilter {
    /// No rule at all.
    pub fn is_empty(&self) -> bool {
        self.mount_points.is_empty() && self.fs_types.is_empty() && self.sources.is_empty()
    }
}

/// `EOPNOTSUPP` policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnsupportedPolicy {
    /// Leave that filesystem unfrozen, record a warning, go on (default).
    Skip,
    /// Fail the freeze and roll back.
    Fail,
}

/// `EBUSY` (foreign freeze) policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForeignFreezePolicy {
    /// Fail the freeze and roll back ours; theirs stays frozen (default).
    Fail,
    /// Count it as frozen for the snapshot, but never thaw it (it is not ours).
    Ignore,
}

/// An invalid configuration value, naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A glob does not compile.
    #[error("freezer.{key}: invalid glob {pattern:?}: {reason}")]
    BadGlob {
        /// e.g. `exclude.mount_points`.
        key: String,
        /// The pattern.
        pattern: String,
        /// globset's message.
        reason: String,
    },
    /// A value out of range.
    #[error("freezer.{key}: {reason}")]
    OutOfRange {
        /// The key.
        key: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// TOML syntax or schema error.
    #[error("{0}")]
    Toml(String),
}

impl FreezerConfig {
    /// Check every value and compile the globs.
    pub fn compile(&self) -> Result<CompiledConfig, ConfigError> {
        if self.freeze_deadline_secs == 0 {
            return Err(ConfigError::OutOfRange {
                key: "freeze_deadline_secs",
                reason: "must be at least 1",
            });
        }
        Ok(CompiledConfig {
            include: CompiledFilter::new(&self.include, "include")?,
            exclude: CompiledFilter::new(&self.exclude, "exclude")?,
            source: self.clone(),
        })
    }

    /// Per-filesystem FIFREEZE deadline.
    pub fn freeze_deadline(&self) -> Duration {
        Duration::from_secs(self.freeze_deadline_secs)
    }

    /// Read the `[table]` of a TOML document (for example the daemon's config file,
    /// `table = "freezer"`); an absent table gives the defaults. Other tables are ignored.
    pub fn from_toml_table(text: &str, table: &str) -> Result<Self, ConfigError> {
        let doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Toml(e.to_string()))?;
        match doc.get(table) {
            None => Ok(Self::default()),
            Some(value) => value
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Toml(format!("[{table}]: {e}"))),
        }
    }
}

/// A validated [`FreezerConfig`] with compiled globs.
#[derive(Debug, Clone)]
pub struct CompiledConfig {
    include: CompiledFilter,
    exclude: CompiledFilter,
    source: FreezerConfig,
}

impl CompiledConfig {
    /// The settings it was compiled from.
    pub fn config(&self) -> &FreezerConfig {
        &self.source
    }

    /// Why a mount is filtered out, if it is: `Some("exclude.fs_types")`, or
    /// `Some("include")` when an include list exists and nothing in it matched.
    pub fn filter_out(
        &self,
        mount_points: &[&Path],
        fs_type: &str,
        source: &Path,
    ) -> Option<String> {
        if !self.source.include.is_empty()
            && self
                .include
                .matches(mount_points, fs_type, source)
                .is_none()
        {
            return Some("not matched by any include rule".to_string());
        }
        self.exclude
            .matches(mount_points, fs_type, source)
            .map(|key| format!("exclude.{key}"))
    }
}

#[derive(Debug, Clone)]
struct CompiledFilter {
    mount_points: GlobSet,
    fs_types: Vec<String>,
    sources: GlobSet,
}

impl CompiledFilter {
    fn new(filter: &MountFilter, name: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            mount_points: globs(&filter.mount_points, &format!("{name}.mount_points"))?,
            fs_types: filter.fs_types.clone(),
            sources: globs(&filter.sources, &format!("{name}.sources"))?,
        })
    }

    fn matches(
        &self,
        mount_points: &[&Path],
        fs_type: &str,
        source: &Path,
    ) -> Option<&'static str> {
        if mount_points.iter().any(|mp| self.mount_points.is_match(mp)) {
            Some("mount_points")
        } else if self.fs_types.iter().any(|t| t == fs_type) {
            Some("fs_types")
        } else if self.sources.is_match(source) {
            Some("sources")
        } else {
            None
        }
    }
}

fn globs(patterns: &[String], key: &str) -> Result<GlobSet, ConfigError> {
    let mut set = GlobSetBuilder::new();
    for pattern in patterns {
        let glob: Glob = GlobBuilder::new(pattern)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| ConfigError::BadGlob {
                key: key.to_string(),
                pattern: pattern.clone(),
                reason: e.kind().to_string(),
            })?;
        set.add(glob);
    }
    set.build().map_err(|e| ConfigError::BadGlob {
        key: key.to_string(),
        pattern: patterns.join(", "),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let c = FreezerConfig::default();
        assert_eq!(c.freeze_deadline(), Duration::from_secs(60));
        assert_eq!(c.on_unsupported, UnsupportedPolicy::Skip);
        assert_eq!(c.on_foreign_freeze, ForeignFreezePolicy::Fail);
        assert_eq!(FreezerConfig::from_toml_table("", "freezer").unwrap(), c);
    }

    #[test]
    fn toml_round_trip_and_unknown_keys_rejected() {
        let text = r#"
            [daemon]
            whatever = 1
            [freezer]
            exclude = { mount_points = ["/boot/**"], fs_types = ["btrfs"] }
            on_unsupported = "fail"
            on_foreign_freeze = "ignore"
            freeze_deadline_secs = 5
        "#;
        let c = FreezerConfig::from_toml_table(text, "freezer").unwrap();
        assert_eq!(c.exclude.mount_points, vec!["/boot/**"]);
        assert_eq!(c.on_unsupported, UnsupportedPolicy::Fail);
        assert_eq!(c.on_foreign_freeze, ForeignFreezePolicy::Ignore);
        assert_eq!(c.freeze_deadline_secs, 5);

        let err = FreezerConfig::from_toml_table("[freezer]\nexclude_mounts = []\n", "freezer")
            .unwrap_err();
        assert!(err.to_string().contains("exclude_mounts"), "{err}");
        let err =
            FreezerConfig::from_toml_table("[freezer]\nexclude = { paths = [] }\n", "freezer")
                .unwrap_err();
        assert!(err.to_string().contains("paths"), "{err}");
        let err =
            FreezerConfig::from_toml_table("[freezer]\non_unsupported = \"maybe\"\n", "freezer")
                .unwrap_err();
        assert!(err.to_string().contains("maybe"), "{err}");
    }

    #[test]
    fn compile_names_the_bad_key() {
        let mut c = FreezerConfig::default();
        c.exclude.mount_points = vec!["/a/[".into()];
        let err = c.compile().unwrap_err();
        assert!(
            err.to_string().contains("freezer.exclude.mount_points"),
            "{err}"
        );
        c.exclude.mount_points.clear();
        c.freeze_deadline_secs = 0;
        assert!(
            c.compile()
                .unwrap_err()
                .to_string()
                .contains("freeze_deadline_secs")
        );
    }

    #[test]
    fn include_then_exclude() {
        let mut c = FreezerConfig::default();
        let p = |s: &'static str| Path::new(s);
        c.exclude.mount_points = vec!["/srv/*".into()];
        let cc = c.compile().unwrap();
        assert_eq!(
            cc.filter_out(&[p("/srv/a")], "ext4", p("/dev/sda")),
            Some("exclude.mount_points".into())
        );
        // `*` does not cross `/`.
        assert_eq!(cc.filter_out(&[p("/srv/a/b")], "ext4", p("/dev/sda")), None);
        // Any mount point of the filesystem matching is enough.
        assert!(
            cc.filter_out(&[p("/x"), p("/srv/b")], "ext4", p("/dev/sda"))
                .is_some()
        );

        c.include.sources = vec!["/dev/mapper/**".into()];
        c.exclude.fs_types = vec!["xfs".into()];
        let cc = c.compile().unwrap();
        assert!(
            cc.filter_out(&[p("/data")], "ext4", p("/dev/sdb"))
                .is_some()
        );
        assert_eq!(
            cc.filter_out(&[p("/data")], "ext4", p("/dev/mapper/vg-data")),
            None
        );
        assert_eq!(
            cc.filter_out(&[p("/data")], "xfs", p("/dev/mapper/vg-data")),
            Some("exclude.fs_types".into())
        );
    }
}
