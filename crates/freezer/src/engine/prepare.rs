//! Before anything is frozen: the state directory (its lock taken, no journal left from an
//! earlier freeze, not on or built on anything the plan may freeze: R59) and every planned
//! mount opened and checked to be the planned mount. The preflight (R42) is exactly these.
//!
//! # Kernel contract
//!
//! Mount points are opened `O_RDONLY|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC|O_NONBLOCK`, and a
//! failed open or stat is an error (R40). Each is identified by statx mount id (else
//! `st_dev`): a path that leads elsewhere since planning (an unmount, a mount on top) is
//! refused before any FIFREEZE.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use hv_vss_sys::fs::DevNum;
use serde::{Deserialize, Serialize};

use super::{FreezeError, FreezeOptions, FrozenFs, FsOps, KernelOps};
use crate::journal::{Journal, StateLock};
use crate::plan::{Plan, PlannedFs};

/// Facts gathered by the preflight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightReport {
    /// Filesystems checked.
    pub checked: usize,
}

/// R42 preflight: the state directory is safe and free (no lock holder, no journal), and
/// every planned mount opens and is the planned mount. Nothing is frozen or written except
/// creating the state directory and lock file.
///
/// A freeze by another tool cannot be seen without freezing (the kernel offers no query);
/// it is detected by FIFREEZE's EBUSY at freeze time and handled by policy (R38).
pub fn preflight(plan: &Plan, options: &FreezeOptions) -> Result<PreflightReport, FreezeError> {
    let ops = KernelOps;
    let lock = prepare_state_dir(plan, options, &ops)?;
    drop(lock);
    let handles = open_all(plan, &ops)?;
    Ok(PreflightReport {
        checked: handles.len(),
    })
}

pub(super) fn prepare_state_dir(
    plan: &Plan,
    options: &FreezeOptions,
    ops: &dyn FsOps,
) -> Result<StateLock, FreezeError> {
    let state_dir = &options.state_dir;
    let state_err = |source| FreezeError::StateDir {
        state_dir: state_dir.clone(),
        source,
    };
    let lock = StateLock::try_acquire(state_dir)
        .map_err(state_err)?
        .ok_or_else(|| FreezeError::LockHeld {
            lock_path: state_dir.join(crate::journal::LOCK_FILE),
        })?;
    let id = ops.identify_path(state_dir).map_err(state_err)?;
    let dev = id
        .mount_id
        .and_then(|m| plan.dev_of_mount_id(m))
        .unwrap_or(id.dev);
    if plan.may_freeze(dev) {
        return Err(FreezeError::StateDirUnsafe {
            state_dir: state_dir.clone(),
            reason: format!("device {dev} is in the freeze set or built on it"),
        });
    }
    if let Some(j) = Journal::read(state_dir)? {
        return Err(FreezeError::JournalPresent {
            path: Journal::path_in(state_dir),
            pid: j.pid,
        });
    }
    Ok(lock)
}

pub(super) struct Handle {
    pub(super) planned: PlannedFs,
    pub(super) dev: DevNum,
    pub(super) fd: Arc<OwnedFd>,
}

impl Handle {
    /// The member this filesystem becomes once frozen.
    pub(super) fn member(&self) -> FrozenFs {
        FrozenFs {
            mount_point: self.planned.mount_point.clone(),
            dev: self.dev,
            fs_type: self.planned.fs_type.clone(),
            level: self.planned.level,
            open_path: self.planned.open_path.clone(),
            fd: self.fd.clone(),
        }
    }
}

pub(super) fn open_all(plan: &Plan, ops: &dyn FsOps) -> Result<Vec<Handle>, FreezeError> {
    plan.filesystems()
        .map(|p| {
            let open_err = |source| FreezeError::Open {
                mount_point: p.mount_point.clone(),
                source,
            };
            let fd = ops.open(&p.open_path).map_err(open_err)?;
            let id = ops.identify(fd.as_fd()).map_err(open_err)?;
            let matches = match id.mount_id {
                Some(mnt) => mnt == p.mount_id,
                None => id.dev == p.dev,
            };
            if !matches {
                return Err(FreezeError::MountChanged {
                    mount_point: p.mount_point.clone(),
                    expected: format!("mount {} on {}", p.mount_id, p.dev),
                    found: format!(
                        "mount {} on {}",
                        id.mount_id.map_or("?".into(), |m| m.to_string()),
                        id.dev
                    ),
                });
            }
            Ok(Handle {
                planned: p.clone(),
                dev: id.dev,
                fd: Arc::new(fd),
            })
        })
        .collect()
}
