//! Expedited RCU grace periods for the duration of the FIFREEZE calls.
//!
//! # Kernel contract
//!
//! `freeze_super` takes each of the superblock's three freeze levels with
//! `percpu_down_write`, whose `rcu_sync_enter` waits for a full RCU grace period
//! (`synchronize_rcu`) unless that level was released within about one grace period. A
//! normal grace period waits for every CPU to pass a quiescent state, which the kernel
//! notices on scheduler ticks: with HZ=250 about 8 ms, so a FIFREEZE of a clean filesystem
//! costs 24-40 ms of waiting and no I/O at all (docs/BENCHMARKS.md, part 3), and writers
//! are blocked from the first level on. `/sys/kernel/rcu_expedited` (an integer,
//! Documentation/RCU/Design/Expedited-Grace-Periods) makes `synchronize_rcu` use expedited
//! grace periods, which interrupt the other CPUs instead of waiting for their ticks: tens of
//! microseconds. `/sys/kernel/rcu_normal` = 1 (real-time kernels) overrides it.
//!
//! So a freeze turns the switch on just before its first FIFREEZE and back off as soon as
//! the last one has returned, only when it found it off (an administrator's setting is
//! left alone), and only after the journal says so: a freezer that dies in between leaves
//! that entry, and whoever recovers the journal turns the switch off again
//! ([`SwitchRestore::turn_off`]). The switch is global: while it is on, every `synchronize_rcu`
//! on the machine is expedited, which costs other CPUs an interrupt each time. That is the
//! trade: a frozen window as short as the disks allow, for a few interrupts during it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::serde_util;

pub use crate::config::RCU_EXPEDITED;
pub use crate::report::Expedite;

/// The switch turned on by us; turned off again on drop.
#[derive(Debug)]
pub struct ExpeditedGracePeriods {
    path: PathBuf,
}

/// Reads the switch: Ok(true) if on.
fn is_on(path: &Path) -> std::io::Result<bool> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.trim().parse::<i64>().map_err(std::io::Error::other)? != 0)
}

/// May the switch be turned on by us? `Ok(Some(path))`: it is off and writable ground
/// (the caller journals `path`, then calls [`ExpeditedGracePeriods::turn_on`]);
/// `Ok(None)`: it is on already; `Err`: it cannot be used.
pub fn check(path: &Path) -> Result<Option<PathBuf>, Expedite> {
    let unavailable = |reason: String| Expedite::Unavailable { reason };
    // rcu_normal overrides rcu_expedited: turning it on would change nothing.
    let normal = path.with_file_name("rcu_normal");
    if matches!(is_on(&normal), Ok(true)) {
        return Err(unavailable(format!("{} is set", normal.display())));
    }
    match is_on(path) {
        Ok(true) => Ok(None),
        Ok(false) => Ok(Some(path.to_path_buf())),
        Err(e) => Err(unavailable(format!("{}: {e}", path.display()))),
    }
}

impl ExpeditedGracePeriods {
    /// Turns the switch on (the caller has journalled `path` first).
    pub fn turn_on(path: PathBuf) -> Result<Self, Expedite> {
        std::fs::write(&path, b"1").map_err(|e| Expedite::Unavailable {
            reason: format!("{}: {e}", path.display()),
        })?;
        Ok(Self { path })
    }
}

impl Drop for ExpeditedGracePeriods {
    fn drop(&mut self) {
        // Nothing else can be done about a failure here; recovery of a journal that still
        // names the switch tries again.
        let _ = turn_off(&self.path);
    }
}

/// Turns the switch off.
pub fn turn_off(path: &Path) -> std::io::Result<()> {
    std::fs::write(path, b"0")
}

/// Recovery turning off the expedited-RCU switch a dead freezer left on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SwitchRestore {
    /// Written 0.
    TurnedOff {
        /// The switch.
        #[serde(with = "serde_util::path")]
        path: PathBuf,
    },
    /// Writing 0 failed.
    Failed {
        /// The switch.
        #[serde(with = "serde_util::path")]
        path: PathBuf,
        /// The error.
        error: String,
    },
}

impl SwitchRestore {
    /// Turns the switch at `path` off, for a freezer that may have died with it on.
    pub fn turn_off(path: &Path) -> Self {
        match turn_off(path) {
            Ok(()) => Self::TurnedOff {
                path: path.to_path_buf(),
            },
            Err(e) => Self::Failed {
                path: path.to_path_buf(),
                error: e.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knob(dir: &Path, value: &str) -> PathBuf {
        let p = dir.join("rcu_expedited");
        std::fs::write(&p, value).unwrap();
        p
    }

    #[test]
    fn off_switch_is_turned_on_and_off_again() {
        let dir = tempfile::tempdir().unwrap();
        let p = knob(dir.path(), "0\n");
        let path = check(&p).unwrap().expect("off: ours to turn on");
        let on = ExpeditedGracePeriods::turn_on(path).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "1");
        drop(on);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "0");
    }

    #[test]
    fn a_switch_already_on_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = knob(dir.path(), "1\n");
        assert_eq!(check(&p), Ok(None));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "1\n");
    }

    #[test]
    fn rcu_normal_missing_switch_or_garbage_make_it_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            check(&dir.path().join("rcu_expedited")),
            Err(Expedite::Unavailable { .. })
        ));
        let p = knob(dir.path(), "yes");
        assert!(matches!(check(&p), Err(Expedite::Unavailable { .. })));
        let p = knob(dir.path(), "0");
        std::fs::write(dir.path().join("rcu_normal"), "1\n").unwrap();
        match check(&p) {
            Err(Expedite::Unavailable { reason }) => assert!(reason.contains("rcu_normal")),
            other => panic!("{other:?}"),
        }
    }
}
