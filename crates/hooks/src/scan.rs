//! Which files of a hook directory may run: the name rules and the ownership and permission
//! rules, applied when a [`HookSet`](crate::HookSet) is loaded and again just before each
//! hook is spawned.
//!
//! # Rules
//!
//! - **Names.** Dot-files and the leftovers of editors and package managers are skipped: names
//!   ending in `~`, or whose last extension is `bak`, `sample`, `rpm*` (`.rpmnew`,
//!   `.rpmsave`, `.rpmorig`) or `dpkg-*` (`.dpkg-old`, `.dpkg-new`, `.dpkg-dist`, ...). The
//!   rule is on the name in the hook directory only: `50-mysql -> mysql.sh.sample` enables a
//!   sample under a name of its own.
//! - **Files.** A hook is a regular file owned by uid 0, executable (any `x` bit, as `execve`
//!   requires for root), and writable by neither its group nor others.
//! - **Directories.** The hook directory is owned by uid 0 and writable by neither group nor
//!   others, so nobody else can add, rename or replace an entry. Each of its ancestors is
//!   owned by uid 0 and either not group/other-writable or sticky (like `/tmp`), since a
//!   sticky directory lets nobody else rename a root-owned entry. When the configured path
//!   is itself a symlink, the directory holding the link must pass the ancestor rule too.
//! - **Symlinks** are followed only when the target passes the file rule and the target's
//!   directory passes the directory rule; a dangling link is skipped.
//!
//! # Limitations
//!
//! The checks use paths, not open descriptors. For a plain file the rules leave only root able
//! to change what the path names between the check and `execve`. A hook symlink is resolved at
//! each check (load, and again before each spawn) and then executed by its own name, so an
//! intermediate symlink on the way to its target that someone else controls could be swapped
//! in that short window; keep hook symlinks pointing at plain paths.

use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode bit: writable by the group.
const GROUP_WRITE: u32 = 0o020;
/// Mode bit: writable by others.
const OTHER_WRITE: u32 = 0o002;
/// Mode bits: executable by anyone.
const ANY_EXEC: u32 = 0o111;
/// Mode bit: sticky (only an entry's owner may rename or delete it).
const STICKY: u32 = 0o1000;

/// Why an owner or mode is not safe enough for code that runs as root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsafe {
    /// Owned by a uid other than 0.
    #[error("owned by uid {uid}, not root")]
    NotRootOwned {
        /// The owner.
        uid: u32,
    },
    /// The group may write to it.
    #[error("writable by its group (mode {mode:o})")]
    GroupWritable {
        /// Permission bits (`st_mode & 0o7777`).
        mode: u32,
    },
    /// Anyone may write to it.
    #[error("writable by others (mode {mode:o})")]
    OtherWritable {
        /// Permission bits (`st_mode & 0o7777`).
        mode: u32,
    },
}

/// Why a directory entry is not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    /// The name starts with `.`.
    #[error("dot-file")]
    DotFile,
    /// The name is a backup or package-manager leftover (`*~`, `.bak`, `.rpm*`, `.dpkg-*`,
    /// `.sample`).
    #[error("backup or package leftover name (*{pattern})")]
    BackupName {
        /// The pattern that matched, such as `~` or `.dpkg-*`.
        pattern: &'static str,
    },
    /// Not a regular file (after following a symlink).
    #[error("not a regular file ({kind})")]
    NotRegular {
        /// What it is instead: `directory`, `fifo`, `socket`, ...
        kind: &'static str,
    },
    /// No execute bit set.
    #[error("not executable (mode {mode:o})")]
    NotExecutable {
        /// Permission bits.
        mode: u32,
    },
    /// The file's owner or mode.
    #[error("{0}")]
    Unsafe(Unsafe),
    /// A symlink whose target does not exist.
    #[error("dangling symlink")]
    DanglingSymlink,
    /// A symlink whose target fails the file rule.
    #[error("symlink target {target}: {reason}")]
    SymlinkTarget {
        /// The resolved target.
        target: PathBuf,
        /// Why the target is not run.
        reason: Box<SkipReason>,
    },
    /// A symlink whose target lies in a directory that fails the directory rule.
    #[error("symlink target directory {dir}: {why}")]
    SymlinkTargetDir {
        /// The directory that fails (the target's directory or one of its ancestors).
        dir: PathBuf,
        /// What is wrong with it.
        why: Unsafe,
    },
    /// The entry could not be examined.
    #[error("cannot stat: {message}")]
    Stat {
        /// The error text.
        message: String,
    },
}

/// A directory entry that is not run, and why. `Display` gives `PATH: REASON`, the line a log
/// warning should carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The entry as found in the hook directory.
    pub path: PathBuf,
    /// Why it is skipped.
    pub reason: SkipReason,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// The name rule: `Some(reason)` when a file with this name is never run.
pub(crate) fn name_skip_reason(name: &[u8]) -> Option<SkipReason> {
    if name.starts_with(b".") {
        return Some(SkipReason::DotFile);
    }
    if name.ends_with(b"~") {
        return Some(SkipReason::BackupName { pattern: "~" });
    }
    let ext = match name.iter().rposition(|&b| b == b'.') {
        Some(dot) => &name[dot + 1..],
        None => return None,
    };
    let pattern = if ext == b"bak" {
        ".bak"
    } else if ext == b"sample" {
        ".sample"
    } else if ext.starts_with(b"rpm") {
        ".rpm*"
    } else if ext.starts_with(b"dpkg-") {
        ".dpkg-*"
    } else {
        return None;
    };
    Some(SkipReason::BackupName { pattern })
}

/// The owner and write-permission rule shared by files and directories.
fn check_owner_and_mode(meta: &std::fs::Metadata) -> Result<(), Unsafe> {
    let mode = meta.permissions().mode() & 0o7777;
    if meta.uid() != 0 {
        return Err(Unsafe::NotRootOwned { uid: meta.uid() });
    }
    if mode & GROUP_WRITE != 0 {
        return Err(Unsafe::GroupWritable { mode });
    }
    if mode & OTHER_WRITE != 0 {
        return Err(Unsafe::OtherWritable { mode });
    }
    Ok(())
}

/// The file rule on already-followed metadata.
fn check_file_meta(meta: &std::fs::Metadata) -> Result<(), SkipReason> {
    let file_type = meta.file_type();
    if !file_type.is_file() {
        return Err(SkipReason::NotRegular {
            kind: kind_name(&file_type),
        });
    }
    check_owner_and_mode(meta).map_err(SkipReason::Unsafe)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & ANY_EXEC == 0 {
        return Err(SkipReason::NotExecutable { mode });
    }
    Ok(())
}

fn kind_name(file_type: &std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "directory"
    } else if file_type.is_symlink() {
        "symlink"
    } else if file_type.is_fifo() {
        "fifo"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_char_device() {
        "character device"
    } else {
        "unknown type"
    }
}

/// An unsafe directory in a chain: which one, and why. `Err(Io)` when one cannot be read.
#[derive(Debug)]
pub(crate) enum DirChainError {
    Unsafe(PathBuf, Unsafe),
    Io(PathBuf, io::Error),
}

/// The directory rule for `dir` (canonical): strict for `dir`, sticky-tolerant for ancestors.
pub(crate) fn check_dir_chain(dir: &Path) -> Result<(), DirChainError> {
    let meta = std::fs::metadata(dir).map_err(|e| DirChainError::Io(dir.to_owned(), e))?;
    check_owner_and_mode(&meta).map_err(|why| DirChainError::Unsafe(dir.to_owned(), why))?;
    match dir.parent() {
        Some(parent) => check_ancestors(parent),
        None => Ok(()),
    }
}

/// The ancestor rule for `dir` (canonical) and everything above it: root-owned, and not
/// group/other-writable unless sticky.
pub(crate) fn check_ancestors(dir: &Path) -> Result<(), DirChainError> {
    for ancestor in dir.ancestors() {
        let meta =
            std::fs::metadata(ancestor).map_err(|e| DirChainError::Io(ancestor.to_owned(), e))?;
        match check_owner_and_mode(&meta) {
            Ok(()) => {}
            Err(Unsafe::GroupWritable { mode } | Unsafe::OtherWritable { mode })
                if mode & STICKY != 0 => {}
            Err(why) => return Err(DirChainError::Unsafe(ancestor.to_owned(), why)),
        }
    }
    Ok(())
}

/// Every rule except the name rule, for the entry at `path` in an already-checked hook
/// directory.
pub(crate) fn check_entry(path: &Path) -> Result<(), SkipReason> {
    let stat_error = |e: io::Error| SkipReason::Stat {
        message: e.to_string(),
    };
    let link_meta = std::fs::symlink_metadata(path).map_err(stat_error)?;
    if !link_meta.file_type().is_symlink() {
        return check_file_meta(&link_meta);
    }
    let target = match std::fs::canonicalize(path) {
        Ok(target) => target,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SkipReason::DanglingSymlink),
        Err(e) => return Err(stat_error(e)),
    };
    let target_meta = std::fs::metadata(&target).map_err(stat_error)?;
    if let Err(reason) = check_file_meta(&target_meta) {
        return Err(SkipReason::SymlinkTarget {
            target,
            reason: Box::new(reason),
        });
    }
    let target_dir = target.parent().unwrap_or(Path::new("/"));
    match check_dir_chain(target_dir) {
        Ok(()) => Ok(()),
        Err(DirChainError::Unsafe(dir, why)) => Err(SkipReason::SymlinkTargetDir { dir, why }),
        Err(DirChainError::Io(dir, e)) => Err(SkipReason::Stat {
            message: format!("{}: {e}", dir.display()),
        }),
    }
}

/// The name rule then the rest, for an entry named `name` at `path`.
pub(crate) fn classify(name: &std::ffi::OsStr, path: &Path) -> Result<(), SkipReason> {
    if let Some(reason) = name_skip_reason(name.as_bytes()) {
        return Err(reason);
    }
    check_entry(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skipped_pattern(name: &str) -> Option<&'static str> {
        match name_skip_reason(name.as_bytes()) {
            Some(SkipReason::BackupName { pattern }) => Some(pattern),
            Some(SkipReason::DotFile) => Some("dot"),
            Some(other) => panic!("unexpected {other:?}"),
            None => None,
        }
    }

    #[test]
    fn leftover_names_are_skipped() {
        for (name, pattern) in [
            ("10-db~", "~"),
            ("10-db.bak", ".bak"),
            ("10-db.rpmnew", ".rpm*"),
            ("10-db.rpmsave", ".rpm*"),
            ("10-db.rpmorig", ".rpm*"),
            ("10-db.dpkg-old", ".dpkg-*"),
            ("10-db.dpkg-new", ".dpkg-*"),
            ("10-db.dpkg-dist", ".dpkg-*"),
            ("10-db.dpkg-tmp", ".dpkg-*"),
            ("mysql-flush.sh.sample", ".sample"),
            (".hidden", "dot"),
            (".10-db.swp", "dot"),
        ] {
            assert_eq!(skipped_pattern(name), Some(pattern), "{name}");
        }
    }

    #[test]
    fn ordinary_names_are_kept() {
        for name in [
            "10-db",
            "10-db.sh",
            "mysql-flush.sh",
            "bak",
            "sample",
            "10-db.bak.sh",
            "10-dpkg",
            "rpm-helper",
            "10-db.sh.dpkg",
        ] {
            assert_eq!(skipped_pattern(name), None, "{name}");
        }
    }
}
