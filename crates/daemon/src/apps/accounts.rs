//! Users and groups by name or number, and a peer's groups.
//!
//! Names are looked up in `/etc/passwd` and `/etc/group` (the files NSS reads first; names
//! only a directory service knows must be given as numbers). A peer's supplementary groups
//! come from `/proc/<pid>/status` (`Groups:`), which the kernel fills from the process's
//! credentials; it is read at accept time, never from disk.

use std::path::Path;

use crate::config::IdOrName;

/// Which database a name is looked up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    User,
    Group,
}

/// The number of a user or group given by name or number.
pub fn resolve(kind: Kind, value: &IdOrName) -> Result<u32, String> {
    match value {
        IdOrName::Id(id) => Ok(*id),
        IdOrName::Name(name) => {
            if let Ok(id) = name.parse::<u32>() {
                return Ok(id);
            }
            let (file, what) = match kind {
                Kind::User => ("/etc/passwd", "user"),
                Kind::Group => ("/etc/group", "group"),
            };
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read {file} to look up {what} {name:?}: {e}"))?;
            lookup(&text, name)
                .ok_or_else(|| format!("no {what} named {name:?} in {file} (give its number)"))
        }
    }
}

/// The id (third field) of `name` in a passwd- or group-format text.
fn lookup(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name)
            .then(|| fields.nth(1)?.parse().ok())
            .flatten()
    })
}

/// The supplementary groups of process `pid` (empty if it is gone or unreadable).
pub fn supplementary_groups(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/status");
    std::fs::read_to_string(Path::new(&path))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| {
                l.strip_prefix("Groups:").map(|g| {
                    g.split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect()
                })
            })
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_resolve() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/:/bin/false\n";
        assert_eq!(lookup(passwd, "nobody"), Some(65534));
        assert_eq!(lookup(passwd, "root"), Some(0));
        assert_eq!(lookup(passwd, "nob"), None);
        assert_eq!(resolve(Kind::User, &IdOrName::Id(42)), Ok(42));
        assert_eq!(resolve(Kind::Group, &IdOrName::Name("42".into())), Ok(42));
        assert_eq!(resolve(Kind::User, &IdOrName::Name("root".into())), Ok(0));
        let e = resolve(Kind::Group, &IdOrName::Name("no-such-group-x".into())).unwrap_err();
        assert!(e.contains("no group named"), "{e}");
    }

    #[test]
    fn own_groups_are_read_from_proc() {
        // Every process has a Groups: line (possibly empty); the parse must not fail.
        let _ = supplementary_groups(std::process::id());
        assert!(supplementary_groups(u32::MAX).is_empty());
    }
}
