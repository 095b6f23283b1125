//! Which files of a hook directory run: names, owners, modes, symlinks, the directory itself.

mod common;

use std::os::unix::fs::{chown, symlink};
use std::path::PathBuf;
use std::time::Duration;

use common::{Fixture, chmod, write_script};
use hv_vss_hooks::{HookDir, HookError, HookSet, HookStyle, SkipReason, Unsafe};

fn load(fx: &Fixture) -> HookSet {
    HookSet::load(&fx.dir(HookStyle::Native, Duration::from_secs(1))).expect("load hooks.d")
}

fn names(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn reason_for(set: &HookSet, name: &str) -> SkipReason {
    let skipped = set
        .skipped()
        .iter()
        .find(|s| s.path.file_name().unwrap() == name)
        .unwrap_or_else(|| panic!("{name} not skipped: {:?}", set.skipped()));
    // The warning line names the file.
    assert!(skipped.to_string().contains(name), "{skipped}");
    skipped.reason.clone()
}

#[test]
fn missing_directory_is_an_empty_set() {
    let dir = HookDir::new("/nonexistent/hv-vss/hooks.d", HookStyle::Native);
    let set = HookSet::load(&dir).unwrap();
    assert!(set.hooks().is_empty());
    assert!(set.skipped().is_empty());
}

#[test]
fn hooks_are_listed_in_byte_order() {
    let Some(fx) = Fixture::for_root("hooks_are_listed_in_byte_order") else {
        return;
    };
    for name in ["b", "A", "10-x", "9-y", "a", "B"] {
        fx.script(name, "exit 0\n");
    }
    assert_eq!(
        names(load(&fx).hooks()),
        ["10-x", "9-y", "A", "B", "a", "b"]
    );
}

#[test]
fn unsafe_files_are_skipped_with_the_reason() {
    let Some(fx) = Fixture::for_root("unsafe_files_are_skipped_with_the_reason") else {
        return;
    };
    fx.script("ok", "exit 0\n");
    chmod(&fx.script("group-writable", "exit 0\n"), 0o775);
    chmod(&fx.script("other-writable", "exit 0\n"), 0o757);
    chmod(&fx.script("not-executable", "exit 0\n"), 0o644);
    let nobody = fx.script("nobody", "exit 0\n");
    chown(&nobody, Some(65534), None).unwrap();
    std::fs::create_dir(fx.hooks.join("subdir")).unwrap();
    rustix::fs::mkfifoat(rustix::fs::CWD, fx.hooks.join("fifo"), 0o755.into()).unwrap();

    let set = load(&fx);
    assert_eq!(names(set.hooks()), ["ok"]);
    assert!(matches!(
        reason_for(&set, "group-writable"),
        SkipReason::Unsafe(Unsafe::GroupWritable { mode: 0o775 })
    ));
    assert!(matches!(
        reason_for(&set, "other-writable"),
        SkipReason::Unsafe(Unsafe::OtherWritable { mode: 0o757 })
    ));
    assert!(matches!(
        reason_for(&set, "not-executable"),
        SkipReason::NotExecutable { .. }
    ));
    assert_eq!(
        reason_for(&set, "nobody"),
        SkipReason::Unsafe(Unsafe::NotRootOwned { uid: 65534 })
    );
    assert_eq!(
        reason_for(&set, "subdir"),
        SkipReason::NotRegular { kind: "directory" }
    );
    assert_eq!(
        reason_for(&set, "fifo"),
        SkipReason::NotRegular { kind: "fifo" }
    );
    assert_eq!(set.skipped().len(), 6);
}

#[test]
fn backup_and_package_leftovers_are_skipped() {
    let Some(fx) = Fixture::for_root("backup_and_package_leftovers_are_skipped") else {
        return;
    };
    let leftovers = [
        "10-db~",
        "10-db.bak",
        "10-db.rpmnew",
        "10-db.rpmsave",
        "10-db.dpkg-old",
        "10-db.dpkg-dist",
        "mysql-flush.sh.sample",
        ".hidden",
    ];
    for name in leftovers {
        fx.script(name, "exit 0\n");
    }
    fx.script("10-db", "exit 0\n");
    let set = load(&fx);
    assert_eq!(names(set.hooks()), ["10-db"]);
    for name in leftovers {
        let reason = reason_for(&set, name);
        assert!(
            matches!(reason, SkipReason::BackupName { .. } | SkipReason::DotFile),
            "{name}: {reason}"
        );
    }
}

#[test]
fn directory_not_root_owned_is_refused() {
    let Some(fx) = Fixture::for_root("directory_not_root_owned_is_refused") else {
        return;
    };
    fx.script("ok", "exit 0\n");
    chown(&fx.hooks, Some(65534), None).unwrap();
    let err = HookSet::load(&fx.dir(HookStyle::Native, Duration::from_secs(1))).unwrap_err();
    match &err {
        HookError::UnsafeDir { path, why } => {
            assert_eq!(path, &std::fs::canonicalize(&fx.hooks).unwrap());
            assert_eq!(why, &Unsafe::NotRootOwned { uid: 65534 });
        }
        other => panic!("expected UnsafeDir, got {other:?}"),
    }
    assert!(err.to_string().contains("hooks.d"), "{err}");
}

#[test]
fn writable_directory_or_ancestor_is_refused() {
    let Some(fx) = Fixture::for_root("writable_directory_or_ancestor_is_refused") else {
        return;
    };
    fx.script("ok", "exit 0\n");
    let dir = fx.dir(HookStyle::Native, Duration::from_secs(1));

    chmod(&fx.hooks, 0o775);
    let err = HookSet::load(&dir).unwrap_err();
    assert!(
        matches!(
            err,
            HookError::UnsafeDir {
                why: Unsafe::GroupWritable { .. },
                ..
            }
        ),
        "{err}"
    );

    chmod(&fx.hooks, 0o755);
    chmod(fx.tmp.path(), 0o757);
    match HookSet::load(&dir).unwrap_err() {
        HookError::UnsafeDir {
            path,
            why: Unsafe::OtherWritable { .. },
        } => {
            assert_eq!(path, std::fs::canonicalize(fx.tmp.path()).unwrap());
        }
        other => panic!("expected the parent named, got {other:?}"),
    }

    // A sticky ancestor (like /tmp) cannot have root's entries renamed: accepted.
    chmod(fx.tmp.path(), 0o1777);
    assert_eq!(names(HookSet::load(&dir).unwrap().hooks()), ["ok"]);
}

#[test]
fn symlinks_run_only_when_the_target_is_safe() {
    let Some(fx) = Fixture::for_root("symlinks_run_only_when_the_target_is_safe") else {
        return;
    };
    // Safe target in a safe directory, under a name of its own (enables a sample).
    let lib = fx.tmp.path().join("lib");
    std::fs::create_dir(&lib).unwrap();
    chmod(&lib, 0o755);
    write_script(&lib.join("mysql.sh.sample"), "exit 0\n");
    symlink(lib.join("mysql.sh.sample"), fx.hooks.join("50-mysql")).unwrap();
    // Target owned by nobody.
    let theirs = lib.join("theirs");
    write_script(&theirs, "exit 0\n");
    chown(&theirs, Some(65534), None).unwrap();
    symlink(&theirs, fx.hooks.join("60-theirs")).unwrap();
    // Safe file in a directory others may write to (they could replace it).
    let open = fx.tmp.path().join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o757);
    write_script(&open.join("hook"), "exit 0\n");
    symlink(open.join("hook"), fx.hooks.join("70-open")).unwrap();
    // Dangling.
    symlink(fx.tmp.path().join("gone"), fx.hooks.join("80-gone")).unwrap();

    let set = load(&fx);
    assert_eq!(names(set.hooks()), ["50-mysql"]);
    match reason_for(&set, "60-theirs") {
        SkipReason::SymlinkTarget { target, reason } => {
            assert_eq!(target, std::fs::canonicalize(&theirs).unwrap());
            assert_eq!(
                *reason,
                SkipReason::Unsafe(Unsafe::NotRootOwned { uid: 65534 })
            );
        }
        other => panic!("60-theirs: {other}"),
    }
    assert!(matches!(
        reason_for(&set, "70-open"),
        SkipReason::SymlinkTargetDir {
            why: Unsafe::OtherWritable { .. },
            ..
        }
    ));
    assert_eq!(reason_for(&set, "80-gone"), SkipReason::DanglingSymlink);
}

#[test]
fn a_symlinked_directory_is_checked_where_the_link_lives_and_where_it_points() {
    let Some(fx) = Fixture::for_root(
        "a_symlinked_directory_is_checked_where_the_link_lives_and_where_it_points",
    ) else {
        return;
    };
    fx.script("ok", "exit 0\n");
    let etc = fx.tmp.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    chmod(&etc, 0o755);
    let link = etc.join("hooks.d");
    symlink(&fx.hooks, &link).unwrap();
    let dir = HookDir {
        path: link.clone(),
        ..fx.dir(HookStyle::Native, Duration::from_secs(1))
    };
    let set = HookSet::load(&dir).unwrap();
    assert_eq!(
        set.hooks(),
        [link.join("ok")],
        "hooks keep the configured path"
    );

    // Someone else could replace the link: refused.
    chown(&etc, Some(65534), None).unwrap();
    match HookSet::load(&dir).unwrap_err() {
        HookError::UnsafeDir { path, why } => {
            assert_eq!(path, std::fs::canonicalize(&etc).unwrap());
            assert_eq!(why, Unsafe::NotRootOwned { uid: 65534 });
        }
        other => panic!("{other:?}"),
    }
    // The target directory itself is checked too.
    chown(&etc, Some(0), None).unwrap();
    chmod(&fx.hooks, 0o757);
    assert!(matches!(
        HookSet::load(&dir).unwrap_err(),
        HookError::UnsafeDir {
            why: Unsafe::OtherWritable { .. },
            ..
        }
    ));
}
