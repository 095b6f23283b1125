//! The FreeBSD backend: mounts from `getfsstat(2)`, selected by [`crate::freebsd_plan`];
//! writable UFS suspended one by one, each through its own `/dev/ufssuspend` fd, all or
//! nothing ([`crate::suspend_set`]); the ZFS pools `zpool sync`ed first when the policy
//! says so; thaw by closing.
//!
//! # Kernel contract
//!
//! See `hv_vss_sys::ufs`: a suspension belongs to its fd and ends when the fd closes, so a
//! holder that dies (even by SIGKILL) thaws; `UFSSUSPEND` needs a **single-threaded**
//! process holding no file open for writing on the mount. Call
//! [`crate::freebsd_freeze::freeze`] from such a
//! process (`hv-vss freeze --hold` is one; hv-vssd must hand the freeze to one).
//!
//! The order, the pool sync and the report are platform-neutral
//! ([`crate::freebsd_freeze`]); this module adds what only FreeBSD has.

use hv_vss_sys::fs::{MountStat, mount_table};
use hv_vss_sys::ufs::{UfsSuspendError, UfsSuspension};

use crate::freebsd_freeze::FreeBsdFreezeError;
use crate::freebsd_plan::{FreeBsdPlan, FreeBsdPolicy, StatfsRecord, UfsTarget, plan_freebsd};
use crate::suspend_set::Suspender;

/// A freeze's error with the real suspender's error type.
pub type UfsFreezeError = FreeBsdFreezeError<UfsSuspendError>;

/// The mount table as the selection reads it.
pub fn mount_records() -> Result<Vec<StatfsRecord>, UfsFreezeError> {
    let table = mount_table().map_err(FreeBsdFreezeError::MountTable)?;
    Ok(table.iter().map(record_of).collect())
}

/// One `getfsstat` entry as a [`StatfsRecord`].
pub fn record_of(stat: &MountStat) -> StatfsRecord {
    StatfsRecord {
        fstypename: stat.fstypename.clone(),
        mntonname: stat.mntonname.clone(),
        mntfromname: stat.mntfromname.clone(),
        flags: stat.flags,
        fsid: stat.fsid.val,
    }
}

/// The plan for the mounts of this system under `policy`.
pub fn make_plan(policy: &FreeBsdPolicy) -> Result<FreeBsdPlan, UfsFreezeError> {
    Ok(plan_freebsd(&mount_records()?, policy))
}

/// The real suspender: one `/dev/ufssuspend` fd per UFS mount.
#[derive(Debug, Default)]
pub struct UfsSuspender;

impl Suspender for UfsSuspender {
    type Target = UfsTarget;
    type Held = UfsSuspension;
    type Error = UfsSuspendError;

    fn suspend(&self, target: &UfsTarget) -> Result<UfsSuspension, UfsSuspendError> {
        UfsSuspension::suspend(hv_vss_protocol::freebsd::FsId { val: target.fsid })
    }

    fn resume(&self, held: UfsSuspension) -> Result<(), UfsSuspendError> {
        held.resume().map_err(UfsSuspendError::Other)
    }
}
