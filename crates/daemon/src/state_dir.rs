//! The state directory and the instance lock, the same on every platform. Which
//! filesystems the directory must not be on (one that FREEZE may freeze or suspend: the
//! daemon writes there while frozen) is each platform's start-up's check, between
//! [`create`] and [`lock_instance`].

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use anyhow::anyhow;

use crate::exit::{ExitKind, Fatal};

/// Mode of a state directory the daemon creates: search for everyone (the app socket is in
/// it by default), read and write for root only. The systemd units' RuntimeDirectoryMode.
pub const STATE_DIR_MODE: u32 = 0o711;

/// Name of the instance lock inside the state directory.
pub const INSTANCE_LOCK: &str = "hv-vssd.lock";

/// An I/O failure on the state directory: exit 5.
pub fn unusable(dir: &Path) -> impl Fn(std::io::Error) -> Fatal + '_ {
    move |e| {
        Fatal::new(
            ExitKind::StateDir,
            anyhow!("state directory {}: {e}", dir.display()),
        )
    }
}

/// Creates the state directory (and its parents) with [`STATE_DIR_MODE`].
pub fn create(dir: &Path) -> Result<(), Fatal> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(STATE_DIR_MODE)
        .create(dir)
        .map_err(unusable(dir))
}

/// Takes the instance lock without waiting: exit 4 while another hv-vssd holds it.
pub fn lock_instance(dir: &Path) -> Result<File, Fatal> {
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(INSTANCE_LOCK))
        .map_err(unusable(dir))?;
    if hv_vss_sys::fs::try_lock_exclusive(lock.as_fd()).map_err(unusable(dir))? {
        Ok(lock)
    } else {
        Err(Fatal::new(
            ExitKind::Busy,
            anyhow!(
                "another hv-vssd uses the state directory {} (lock {INSTANCE_LOCK})",
                dir.display()
            ),
        ))
    }
}
