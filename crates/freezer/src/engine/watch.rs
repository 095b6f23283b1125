//! The ownership seam: [`FreezeWatch`] is told, before each FIFREEZE, that a filesystem may
//! become ours to thaw, and when it stops being ours, so a watcher (the daemon's guardian)
//! always holds exactly what the freeze may have frozen.

use std::os::fd::BorrowedFd;

use hv_vss_sys::fs::DevNum;

/// Told about each filesystem the moment it may become ours to thaw (before its FIFREEZE
/// is called) and the moment it no longer is (thawed, found not frozen, someone else's
/// freeze, or a late FIFREEZE undone by its thread). The daemon passes the fds to its
/// guardian this way, so the guardian holds exactly what the freeze may have frozen.
pub trait FreezeWatch: Send + Sync {
    /// Before FIFREEZE on `fd`. An error fails the freeze before that call is made.
    fn arm(&self, dev: DevNum, fd: BorrowedFd<'_>) -> std::io::Result<()>;
    /// `dev` is not ours to thaw any more.
    fn disarm(&self, dev: DevNum);
    /// FIFREEZE on `dev` returned success: it is frozen, by us. Called by the thread that
    /// made the call, the moment it returns (before anything else it does), so a watcher
    /// can tell a frozen filesystem from one whose FIFREEZE is still in flight even when
    /// the rest of the process is hung.
    fn frozen(&self, dev: DevNum) {
        let _ = dev;
    }
}
