//! The simulated host's snapshot and its check.
//!
//! A real host snapshots the virtual disk between its FREEZE reply and its THAW. Here the
//! "disk" is the scratch filesystem's image file: copying it while the daemon holds the
//! freeze is the snapshot. The copy is then checked the way a restore would find it:
//!
//! - ext2/3/4: `e2fsck -fn` must exit 0, and the copy must not need journal recovery. A
//!   mounted ext4 keeps `needs_recovery` set in its superblock; FIFREEZE commits the
//!   journal and clears it (`ext4_freeze`). A copy that still needs recovery was taken
//!   from a live filesystem: it is only crash-consistent, even if a replay would fix it.
//!
//! Other filesystem types are not checked (XFS keeps a dirty log across a freeze, so
//! `xfs_repair -n` cannot tell a frozen copy from a live one); the verdict then says so.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A filesystem the host can snapshot: its backing image and type.
#[derive(Debug, Clone)]
pub struct Snapshottable {
    pub image: PathBuf,
    pub fs_type: String,
}

/// What the copy took.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub bytes: u64,
    pub took: Duration,
}

/// The check of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The checker found the copy clean.
    Consistent { checker: String },
    /// It did not.
    NotConsistent { checker: String, reason: String },
    /// No check ran (why).
    NotChecked { reason: String },
}

impl Check {
    pub fn verdict(&self) -> &'static str {
        match self {
            Check::Consistent { .. } => "consistent (checked)",
            Check::NotConsistent { .. } => "not consistent",
            Check::NotChecked { .. } => "not checked",
        }
    }

    pub fn detail(&self) -> String {
        match self {
            Check::Consistent { checker } => format!("{checker} found the snapshot clean"),
            Check::NotConsistent { checker, reason } => format!("{checker}: {reason}"),
            Check::NotChecked { reason } => reason.clone(),
        }
    }
}

/// Copies `source.image` to `dest` (the snapshot).
pub fn take(source: &Snapshottable, dest: &Path) -> std::io::Result<Snapshot> {
    let started = Instant::now();
    let bytes = std::fs::copy(&source.image, dest)?;
    Ok(Snapshot {
        bytes,
        took: started.elapsed(),
    })
}

/// Checks a copy of a filesystem of type `fs_type`.
pub fn check(copy: &Path, fs_type: &str) -> Check {
    match fs_type {
        "ext2" | "ext3" | "ext4" => check_ext(copy),
        other => Check::NotChecked {
            reason: format!(
                "no offline check of a copied {other} filesystem tells a frozen copy from a live one"
            ),
        },
    }
}

fn check_ext(copy: &Path) -> Check {
    let checker = "e2fsck -fn".to_string();
    let out = match Command::new("e2fsck")
        .arg("-fn")
        .arg(copy)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            return Check::NotChecked {
                reason: format!("cannot run e2fsck ({e}); install e2fsprogs"),
            };
        }
    };
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    if text.contains("skipping journal recovery") {
        return Check::NotConsistent {
            checker,
            reason: "the journal needs recovery: the copy was taken from a live filesystem and is only crash-consistent".into(),
        };
    }
    match out.status.code() {
        Some(0) => Check::Consistent { checker },
        code => {
            let first_problem = text
                .lines()
                .find(|l| l.contains("Fix?") || l.contains("wrong") || l.contains("rror"))
                .unwrap_or("")
                .trim()
                .to_string();
            Check::NotConsistent {
                checker,
                reason: format!(
                    "exit status {}{}",
                    code.map_or_else(|| "(killed)".into(), |c| c.to_string()),
                    if first_problem.is_empty() {
                        String::new()
                    } else {
                        format!(", first problem: {first_problem}")
                    }
                ),
            }
        }
    }
}

/// The image and type behind a mount point, when it is a loop device over a file (the only
/// kind this command copies: anything else may be a real disk).
pub fn find_loop_image(mount_point: &Path) -> Result<Snapshottable, String> {
    let canonical = std::fs::canonicalize(mount_point)
        .map_err(|e| format!("{}: {e}", mount_point.display()))?;
    let table =
        std::fs::read("/proc/self/mountinfo").map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let mounts = hv_vss_freezer::parse_mountinfo(&table).map_err(|e| e.to_string())?;
    let entry = mounts
        .iter()
        .rev()
        .find(|m| m.mount_point == canonical)
        .ok_or_else(|| format!("{} is not a mount point", canonical.display()))?;
    let source = Path::new(&entry.source);
    let name = source
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| n.starts_with("loop") && source.starts_with("/dev"))
        .ok_or_else(|| {
            format!(
                "{} is on {}, not a loop device: simulate copies only loop images",
                canonical.display(),
                source.display()
            )
        })?;
    let backing = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file"))
        .map_err(|e| format!("{name}: no backing file ({e})"))?;
    Ok(Snapshottable {
        image: PathBuf::from(backing.trim_end()),
        fs_type: entry.fs_type.clone(),
    })
}
