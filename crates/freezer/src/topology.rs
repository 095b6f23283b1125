//! Block-device topology from sysfs: what each filesystem's device is built on.
//!
//! # Kernel contract
//!
//! - `/sys/dev/block/M:m` is a symlink to the device's directory under `/sys/devices`.
//! - A loop device has `loop/backing_file`: the path of its image as the process that set
//!   it up saw it (` (deleted)` appended when unlinked).
//! - A stacked device (dm, md, ...) lists the devices below it in `slaves/` (symlinks to
//!   their directories, each with a `dev` file holding `M:m`).
//! - A partition has a `partition` file; the whole disk is its parent directory. A loop
//!   device's partitions (`loop0p1`, major 259) have neither `loop/` nor `slaves/`, so the
//!   walk must go through the parent (the stock daemon misses them).
//!
//! The root of the sysfs tree is a parameter so that tests can use a fake tree.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use hv_vss_sys::fs::DevNum;

/// What a block device is directly built on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lower {
    /// Another block device (dm/md slave, or the disk a partition belongs to).
    Device(DevNum),
    /// A file (a loop device's image).
    BackingFile(PathBuf),
}

/// Source of topology facts; [`SysfsTopology`] in production, fakes in tests.
pub trait Topology {
    /// Devices and files directly below `dev`.
    fn lower(&self, dev: DevNum) -> Vec<Lower>;
    /// `st_dev` of a path, if it can be stat'ed.
    fn dev_of_path(&self, path: &Path) -> Option<DevNum>;
    /// `st_rdev` of a path that is a block device (a mount's source).
    fn block_device(&self, path: &Path) -> Option<DevNum>;
}

/// Reads `/sys/dev/block` under a configurable root and stats real paths.
#[derive(Debug, Clone)]
pub struct SysfsTopology {
    sysfs_root: PathBuf,
}

impl SysfsTopology {
    /// `sysfs_root` is normally `/sys`.
    pub fn new(sysfs_root: impl Into<PathBuf>) -> Self {
        Self {
            sysfs_root: sysfs_root.into(),
        }
    }

    fn dev_dir(&self, dev: DevNum) -> PathBuf {
        self.sysfs_root.join(format!("dev/block/{dev}"))
    }
}

impl Default for SysfsTopology {
    fn default() -> Self {
        Self::new("/sys")
    }
}

/// Parse a sysfs `dev` file (`"7:0\n"`).
pub fn parse_dev_file(text: &str) -> Option<DevNum> {
    DevNum::parse(text)
}

impl Topology for SysfsTopology {
    fn lower(&self, dev: DevNum) -> Vec<Lower> {
        let dir = self.dev_dir(dev);
        let mut out = BTreeSet::new();
        if let Ok(bytes) = std::fs::read(dir.join("loop/backing_file")) {
            let mut bytes = bytes;
            while bytes.last() == Some(&b'\n') {
                bytes.pop();
            }
            if let Some(stripped) = bytes.strip_suffix(b" (deleted)") {
                bytes = stripped.to_vec();
            }
            if !bytes.is_empty() {
                out.insert(Lower::BackingFile(PathBuf::from(OsString::from_vec(bytes))));
            }
        }
        if let Ok(entries) = std::fs::read_dir(dir.join("slaves")) {
            for entry in entries.flatten() {
                if let Some(d) = std::fs::read_to_string(entry.path().join("dev"))
                    .ok()
                    .and_then(|t| parse_dev_file(&t))
                {
                    out.insert(Lower::Device(d));
                }
            }
        }
        if dir.join("partition").exists()
            && let Ok(real) = std::fs::canonicalize(&dir)
            && let Some(parent) = real.parent()
            && let Some(d) = std::fs::read_to_string(parent.join("dev"))
                .ok()
                .and_then(|t| parse_dev_file(&t))
        {
            out.insert(Lower::Device(d));
        }
        out.into_iter().collect()
    }

    fn dev_of_path(&self, path: &Path) -> Option<DevNum> {
        hv_vss_sys::fs::stat_path(path).ok().map(|(dev, _)| dev)
    }

    fn block_device(&self, path: &Path) -> Option<DevNum> {
        if !path.as_os_str().as_bytes().starts_with(b"/") {
            return None;
        }
        hv_vss_sys::fs::stat_path(path)
            .ok()
            .and_then(|(_, rdev)| rdev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A fake sysfs: loop0 (7:0) with a partition loop0p1 (259:0); dm-0 (253:0) over
    /// loop1 (7:1) whose image was deleted.
    fn fake_tree() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let devices = r.join("devices/virtual/block");
        write(&devices.join("loop0/dev"), "7:0\n");
        write(
            &devices.join("loop0/loop/backing_file"),
            "/data/img 1.raw\n",
        );
        write(&devices.join("loop0/loop0p1/dev"), "259:0\n");
        write(&devices.join("loop0/loop0p1/partition"), "1\n");
        write(&devices.join("loop1/dev"), "7:1\n");
        write(
            &devices.join("loop1/loop/backing_file"),
            "/old.img (deleted)\n",
        );
        write(&devices.join("dm-0/dev"), "253:0\n");
        std::fs::create_dir_all(devices.join("dm-0/slaves")).unwrap();
        std::os::unix::fs::symlink("../../loop1", devices.join("dm-0/slaves/loop1")).unwrap();
        std::fs::create_dir_all(r.join("dev/block")).unwrap();
        for (dev, target) in [
            ("7:0", "loop0"),
            ("259:0", "loop0/loop0p1"),
            ("7:1", "loop1"),
            ("253:0", "dm-0"),
        ] {
            std::os::unix::fs::symlink(
                format!("../../devices/virtual/block/{target}"),
                r.join("dev/block").join(dev),
            )
            .unwrap();
        }
        root
    }

    #[test]
    fn loop_backing_file_partition_parent_and_dm_slaves() {
        let root = fake_tree();
        let t = SysfsTopology::new(root.path());
        let dev = |major, minor| DevNum { major, minor };
        assert_eq!(
            t.lower(dev(7, 0)),
            vec![Lower::BackingFile("/data/img 1.raw".into())]
        );
        assert_eq!(t.lower(dev(259, 0)), vec![Lower::Device(dev(7, 0))]);
        assert_eq!(t.lower(dev(253, 0)), vec![Lower::Device(dev(7, 1))]);
        assert_eq!(
            t.lower(dev(7, 1)),
            vec![Lower::BackingFile("/old.img".into())]
        );
        assert_eq!(t.lower(dev(8, 0)), vec![]);
    }

    #[test]
    fn dev_file_parsing() {
        assert_eq!(
            parse_dev_file("8:16\n"),
            Some(DevNum {
                major: 8,
                minor: 16
            })
        );
        assert_eq!(parse_dev_file("8"), None);
        assert_eq!(parse_dev_file("a:b"), None);
    }
}
