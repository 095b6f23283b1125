//! Knowing, cheaply, whether the mount table changed since a plan was made from it, so that
//! FREEZE can reuse the plan its HOT_BACKUP check made instead of planning again.
//!
//! # Kernel contract
//!
//! `/proc/<pid>/mountinfo` (and `mounts`) supports `poll`: the open file remembers the mount
//! namespace's event counter as it was at `open`, and `poll` reports `POLLERR | POLLPRI`
//! once the namespace has changed since (a mount, an unmount, a move, a remount, a
//! propagated mount; fs/proc_namespace.c `mounts_poll`, bumped by `touch_mnt_namespace`),
//! then remembers the new value. So the table is read through a file that stays open with
//! the plan, and one `poll` with a zero timeout at FREEZE says whether it may differ. The
//! file is opened before it is read: a change between the two makes the poll report a
//! change that the read may already contain, which only costs a re-plan, never a stale
//! plan.
//!
//! A mount table that is not a proc file (a test's fixed file) cannot be polled that way;
//! its content is compared instead (its bytes, read again).
//!
//! # What a reused plan trusts besides the table
//!
//! Block topology (a loop device's backing file, dm slaves) of a mounted filesystem does not
//! change while it stays mounted, and the planned mounts are checked again when opened for
//! the freeze (statx mount id), so a plan that went stale some other way fails the freeze
//! (`MountChanged`) instead of freezing the wrong filesystem.

use std::io::{Read, Seek};
use std::os::fd::AsFd;

use rustix::event::{PollFd, PollFlags, Timespec};

use crate::plan::{Plan, Selection};
use crate::{CompiledConfig, MakePlanError, MountSource};

/// `statfs.f_type` of procfs.
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// How a [`MountTableWatch`] tells a change.
#[derive(Debug)]
enum Change {
    /// The proc file's poll generation.
    Poll,
    /// The file's bytes, read again and compared.
    Content(Vec<u8>),
}

/// The open mount table a plan was made from, polled later to know whether it changed.
#[derive(Debug)]
pub struct MountTableWatch {
    file: std::fs::File,
    change: Change,
}

impl MountTableWatch {
    /// Opens `source`'s mount table and reads it; keep the watch to ask
    /// [`MountTableWatch::unchanged`] later.
    pub fn read(source: &MountSource) -> Result<(Self, Vec<u8>), MakePlanError> {
        let read_err = |e| MakePlanError::Read {
            path: source.mountinfo.clone(),
            source: e,
        };
        let mut file = std::fs::File::open(&source.mountinfo).map_err(read_err)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(read_err)?;
        let on_proc = rustix::fs::fstatfs(file.as_fd()).is_ok_and(|s| s.f_type == PROC_SUPER_MAGIC);
        let change = if on_proc {
            Change::Poll
        } else {
            Change::Content(data.clone())
        };
        Ok((Self { file, change }, data))
    }

    /// Has the mount table stayed as it was read? A poll (proc) or a second read (any other
    /// file); any error counts as a change. A change is reported once by the proc poll, so
    /// after `false` make a new watch ([`make_plan_watched`]) rather than ask again.
    pub fn unchanged(&mut self) -> bool {
        match &self.change {
            Change::Poll => {
                let mut fds = [PollFd::new(&self.file, PollFlags::PRI)];
                let zero = Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                match rustix::event::poll(&mut fds, Some(&zero)) {
                    Ok(_) => !fds[0]
                        .revents()
                        .intersects(PollFlags::PRI | PollFlags::ERR | PollFlags::NVAL),
                    Err(_) => false,
                }
            }
            Change::Content(before) => {
                let mut now = Vec::with_capacity(before.len());
                self.file.rewind().is_ok()
                    && self.file.read_to_end(&mut now).is_ok()
                    && now == *before
            }
        }
    }
}

/// [`crate::make_plan`], also returning the watch on the mount table it was made from.
pub fn make_plan_watched(
    source: &MountSource,
    selection: &Selection,
    config: &CompiledConfig,
) -> Result<(Plan, MountTableWatch), MakePlanError> {
    let (watch, data) = MountTableWatch::read(source)?;
    let plan = crate::mount_source::plan_from_table(source, &data, selection, config)?;
    Ok((plan, watch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FreezerConfig;

    fn fixed_table(dir: &std::path::Path, text: &str) -> MountSource {
        let path = dir.join("mountinfo");
        std::fs::write(&path, text).unwrap();
        MountSource {
            mountinfo: path,
            sysfs_root: dir.join("sys"),
            open_prefix: Some("/nonexistent".into()),
        }
    }

    const TABLE: &str =
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n2 1 8:2 / /data rw - xfs /dev/sda2 rw\n";

    #[test]
    fn a_plain_file_is_compared_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let source = fixed_table(dir.path(), TABLE);
        let config = FreezerConfig::default().compile().unwrap();
        let (plan, mut watch) = make_plan_watched(&source, &Selection::Discover, &config).unwrap();
        assert_eq!(plan.len(), 2);
        assert!(watch.unchanged());
        assert!(watch.unchanged(), "asking twice changes nothing");
        std::fs::write(
            &source.mountinfo,
            format!("{TABLE}3 1 8:3 / /more rw - ext4 /dev/sda3 rw\n"),
        )
        .unwrap();
        assert!(!watch.unchanged());
        let (plan, mut watch) = make_plan_watched(&source, &Selection::Discover, &config).unwrap();
        assert_eq!(plan.len(), 3);
        assert!(watch.unchanged());
    }

    /// The proc file's poll generation sees a mount made after the table was read (a tmpfs
    /// on a directory of this test, in a private mount namespace so nothing leaks and no
    /// other process's mounts count), and sees nothing when nothing changed.
    #[test]
    fn the_proc_table_reports_a_mount_and_an_unmount_made_after_it_was_read() {
        if hv_vss_testutil::skip_unless_root("mount watch test") {
            return;
        }
        if !hv_vss_testutil::in_private_mount_namespace(
            "mount_watch::tests::the_proc_table_reports_a_mount_and_an_unmount_made_after_it_was_read",
        ) {
            return;
        }
        let source = MountSource {
            mountinfo: "/proc/thread-self/mountinfo".into(),
            ..MountSource::current()
        };
        let dir = tempfile::tempdir().unwrap();
        let (mut watch, _) = MountTableWatch::read(&source).unwrap();
        assert!(watch.unchanged(), "nothing was mounted");
        hv_vss_testutil::mount_tmpfs(dir.path()).unwrap();
        assert!(!watch.unchanged(), "a mount after the read was not seen");
        let (mut watch, data) = MountTableWatch::read(&source).unwrap();
        assert!(String::from_utf8_lossy(&data).contains(&*dir.path().to_string_lossy()));
        assert!(watch.unchanged());
        hv_vss_testutil::unmount(dir.path()).unwrap();
        assert!(!watch.unchanged(), "an unmount after the read was not seen");
    }
}
