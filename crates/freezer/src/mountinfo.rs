//! Parser for `/proc/<pid>/mountinfo`.
//!
//! # Kernel contract
//!
//! One line per mount (fs/proc_namespace.c, `show_mountinfo`):
//!
//! ```text
//! 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//! (1)(2) (3)   (4)   (5)      (6)      (7)   (8) (9)    (10)         (11)
//! ```
//!
//! mount id, parent id, `major:minor` of the superblock's `s_dev`, root of the mount inside
//! its filesystem, mount point, per-mount options, zero or more optional fields, a `-`
//! separator, filesystem type, source, superblock options. Space, tab, newline and backslash
//! inside paths (and in type and source) are written as octal escapes (`\040`, `\011`,
//! `\012`, `\134`). Paths are bytes, not necessarily UTF-8, so they are kept as `OsString`.
//!
//! The parser never panics: every malformed line is an error naming the line and field
//! (fuzzed by `fuzz/fuzz_targets/mountinfo.rs`).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use hv_vss_sys::fs::DevNum;

/// One line of mountinfo: one mount (several mounts may share one superblock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Unique id of the mount (field 1).
    pub mount_id: u64,
    /// Id of the parent mount; for the namespace's root, a mount outside it (field 2).
    pub parent_id: u64,
    /// `st_dev` of the superblock (field 3).
    pub dev: DevNum,
    /// Directory of the filesystem mounted here (`/` unless bind or subvolume) (field 4).
    pub root: PathBuf,
    /// Where it is mounted, relative to the reader's root (field 5).
    pub mount_point: PathBuf,
    /// Per-mount options, e.g. `rw,relatime` (field 6).
    pub mount_options: String,
    /// Optional fields such as `shared:1`, `master:2` (field 7).
    pub optional_fields: Vec<String>,
    /// Filesystem type, e.g. `ext4`, `fuse.sshfs` (field 9).
    pub fs_type: String,
    /// Source, e.g. `/dev/sda1`, `tmpfs`, `server:/export` (field 10).
    pub source: OsString,
    /// Superblock options (field 11).
    pub super_options: String,
}

impl MountEntry {
    /// The filesystem itself is read-only (superblock option `ro`): nothing can write to
    /// it through any mount, so there is nothing to flush or freeze.
    pub fn superblock_read_only(&self) -> bool {
        has_ro(&self.super_options)
    }

    /// This mount is read-only (per-mount `ro`, e.g. `mount --bind -o ro`). Says nothing
    /// about the filesystem: other mounts of the same superblock may still write to it.
    pub fn mount_read_only(&self) -> bool {
        has_ro(&self.mount_options)
    }
}

fn has_ro(options: &str) -> bool {
    options.split(',').any(|o| o == "ro")
}

/// A malformed mountinfo line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mountinfo line {line}: {problem}")]
pub struct MountInfoError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub problem: LineError,
}

/// What is wrong with one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// A required field is absent.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// A numeric field is not a number.
    #[error("field {0} is not a valid number")]
    BadNumber(&'static str),
    /// `major:minor` is malformed.
    #[error("field major:minor is malformed")]
    BadDev,
    /// No ` - ` separator before the filesystem type.
    #[error("no '-' separator after the optional fields")]
    NoSeparator,
}

/// Parse a whole mountinfo file. Empty lines are ignored.
pub fn parse_mountinfo(data: &[u8]) -> Result<Vec<MountEntry>, MountInfoError> {
    data.split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(|b| b.is_ascii_whitespace()))
        .map(|(i, line)| {
            parse_line(line).map_err(|problem| MountInfoError {
                line: i + 1,
                problem,
            })
        })
        .collect()
}

/// Parse one mountinfo line (without its newline).
pub fn parse_line(line: &[u8]) -> Result<MountEntry, LineError> {
    let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
    let mut next = |name| fields.next().ok_or(LineError::Missing(name));
    let mount_id = number(next("mount id")?, "mount id")?;
    let parent_id = number(next("parent id")?, "parent id")?;
    let dev = parse_dev(next("major:minor")?)?;
    let root = PathBuf::from(OsString::from_vec(unescape(next("root")?)));
    let mount_point = PathBuf::from(OsString::from_vec(unescape(next("mount point")?)));
    let mount_options = lossy(next("mount options")?);
    let mut optional_fields = Vec::new();
    loop {
        let field = fields.next().ok_or(LineError::NoSeparator)?;
        if field == b"-" {
            break;
        }
        optional_fields.push(lossy(field));
    }
    let fs_type = lossy(fields.next().ok_or(LineError::Missing("fs type"))?);
    // Source and superblock options can be empty strings in odd cases; tolerate absence.
    let source = OsString::from_vec(fields.next().map(unescape).unwrap_or_default());
    let super_options = fields.next().map(lossy).unwrap_or_default();
    Ok(MountEntry {
        mount_id,
        parent_id,
        dev,
        root,
        mount_point,
        mount_options,
        optional_fields,
        fs_type,
        source,
        super_options,
    })
}

fn number(field: &[u8], name: &'static str) -> Result<u64, LineError> {
    std::str::from_utf8(field)
        .ok()
        .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or(LineError::BadNumber(name))
}

fn parse_dev(field: &[u8]) -> Result<DevNum, LineError> {
    let mut parts = field.splitn(2, |&b| b == b':');
    let major = parts.next().ok_or(LineError::BadDev)?;
    let minor = parts.next().ok_or(LineError::BadDev)?;
    let to_u32 = |f: &[u8]| {
        number(f, "major:minor")
            .ok()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(LineError::BadDev)
    };
    Ok(DevNum {
        major: to_u32(major)?,
        minor: to_u32(minor)?,
    })
}

/// Undo the kernel's `\ooo` octal escapes; anything else (including a malformed escape or
/// one above `\377`) is kept as it is.
pub fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && let Some(digits) = field.get(i + 1..i + 4)
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let value = u32::from(digits[0] - b'0') * 64
                + u32::from(digits[1] - b'0') * 8
                + u32::from(digits[2] - b'0');
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

fn lossy(field: &[u8]) -> String {
    String::from_utf8_lossy(&unescape(field)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn parses_the_kernel_documentation_example() {
        let e = parse_line(
            b"36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue",
        )
        .unwrap();
        assert_eq!(e.mount_id, 36);
        assert_eq!(e.parent_id, 35);
        assert_eq!(
            e.dev,
            DevNum {
                major: 98,
                minor: 0
            }
        );
        assert_eq!(e.root, PathBuf::from("/mnt1"));
        assert_eq!(e.mount_point, PathBuf::from("/mnt2"));
        assert_eq!(e.mount_options, "rw,noatime");
        assert_eq!(e.optional_fields, vec!["master:1".to_string()]);
        assert_eq!(e.fs_type, "ext3");
        assert_eq!(e.source, OsString::from("/dev/root"));
        assert_eq!(e.super_options, "rw,errors=continue");
        assert!(!e.superblock_read_only());
        assert!(!e.mount_read_only());
    }

    #[test]
    fn decodes_octal_escapes_and_non_utf8_bytes() {
        let e = parse_line(b"1 0 7:3 / /mnt/a\\040b\\011c\\012d\\134e\\377 ro shared:4 master:2 - xfs /dev/loop3 rw")
            .unwrap();
        assert_eq!(
            e.mount_point.as_os_str().as_bytes(),
            b"/mnt/a b\tc\nd\\e\xff"
        );
        assert_eq!(e.optional_fields.len(), 2);
        // A read-only mount of a writable superblock (a `-o ro` bind mount).
        assert!(e.mount_read_only());
        assert!(!e.superblock_read_only());
    }

    #[test]
    fn no_optional_fields_and_missing_super_options() {
        let e = parse_line(b"22 27 0:21 / /proc rw,relatime - proc proc").unwrap();
        assert!(e.optional_fields.is_empty());
        assert_eq!(e.fs_type, "proc");
        assert_eq!(e.super_options, "");
    }

    #[test]
    fn malformed_lines_are_named_errors() {
        assert_eq!(parse_line(b"").unwrap_err(), LineError::Missing("mount id"));
        assert_eq!(
            parse_line(b"x 1 8:1 / / rw - ext4 /dev/sda rw").unwrap_err(),
            LineError::BadNumber("mount id")
        );
        assert_eq!(
            parse_line(b"1 1 8-1 / / rw - ext4 /dev/sda rw").unwrap_err(),
            LineError::BadDev
        );
        assert_eq!(
            parse_line(b"1 1 8:1 / / rw shared:1 ext4").unwrap_err(),
            LineError::NoSeparator
        );
        assert_eq!(
            parse_line(b"1 1 8:1 / / rw -").unwrap_err(),
            LineError::Missing("fs type")
        );
        assert_eq!(
            parse_line(b"1 1 8:99999999999 / / rw - e s o").unwrap_err(),
            LineError::BadDev
        );
        let err = parse_mountinfo(b"1 0 8:1 / / rw - ext4 /dev/sda rw\n\nbad\n").unwrap_err();
        assert_eq!(err.line, 3);
    }

    #[test]
    fn parses_this_machines_mountinfo() {
        let data = std::fs::read("/proc/self/mountinfo").unwrap();
        let mounts = parse_mountinfo(&data).unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.mount_point == std::path::Path::new("/"))
        );
    }

    #[test]
    fn malformed_escapes_are_kept_literally() {
        assert_eq!(unescape(b"a\\9b\\"), b"a\\9b\\".to_vec());
        assert_eq!(unescape(b"\\400"), b"\\400".to_vec());
        assert_eq!(unescape(b"\\1"), b"\\1".to_vec());
    }

    fn escape(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for &b in bytes {
            if matches!(b, b' ' | b'\t' | b'\n' | b'\\') {
                out.extend_from_slice(format!("\\{b:03o}").as_bytes());
            } else {
                out.push(b);
            }
        }
        out
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_mountinfo(&data);
        }

        #[test]
        fn escaped_paths_round_trip(path in proptest::collection::vec(1u8..=255, 1..40)) {
            let mut line = b"5 1 8:2 / ".to_vec();
            line.extend(escape(&path));
            line.extend_from_slice(b" rw - ext4 /dev/sda2 rw");
            let e = parse_line(&line).unwrap();
            prop_assert_eq!(e.mount_point.as_os_str().as_bytes(), &path[..]);
        }
    }
}
