//! A FreeBSD freeze's order, veto, rollback and report, over a fake suspender and a fake
//! pool syncer sharing one log.
//!
//! Fakes, because neither real part can run on Linux, where these tests run: there is no
//! UFS suspension and no ZFS here. [`ZpoolCommand`] itself is tested against a stand-in
//! `zpool` script, which is what it runs.

use std::cell::RefCell;
use std::rc::Rc;

use super::*;
use crate::freebsd_plan::tests::rec;
use crate::freebsd_plan::{FreeBsdPolicy, MNT_LOCAL, MNT_RDONLY, StatfsRecord, plan_freebsd};

type Log = Rc<RefCell<Vec<String>>>;

#[derive(Debug)]
struct FakeError(&'static str);

impl std::fmt::Display for FakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for FakeError {}

struct FakeUfs {
    log: Log,
    fail: Option<&'static str>,
}

#[derive(Debug)]
struct Held(String, Log);

impl Drop for Held {
    fn drop(&mut self) {
        self.1.borrow_mut().push(format!("close {}", self.0));
    }
}

impl Suspender for FakeUfs {
    type Target = UfsTarget;
    type Held = Held;
    type Error = FakeError;

    fn suspend(&self, target: &UfsTarget) -> Result<Held, FakeError> {
        self.log
            .borrow_mut()
            .push(format!("suspend {}", target.mount_point));
        if self.fail == Some(target.mount_point.as_str()) {
            return Err(FakeError("EBUSY"));
        }
        Ok(Held(target.mount_point.clone(), self.log.clone()))
    }

    fn resume(&self, held: Held) -> Result<(), FakeError> {
        self.log.borrow_mut().push(format!("resume {}", held.0));
        Ok(())
    }
}

struct FakePools {
    log: Log,
    fail: bool,
}

impl PoolSyncer for FakePools {
    fn sync(&self, pools: &[String]) -> Result<(), String> {
        self.log
            .borrow_mut()
            .push(format!("zpool sync {}", pools.join(" ")));
        if self.fail {
            Err("pool I/O is currently suspended".into())
        } else {
            Ok(())
        }
    }
}

/// A UFS root, a ZFS pool, a read-only UFS, devfs, and a UFS on an md image under /var.
fn mixed_system() -> Vec<StatfsRecord> {
    vec![
        rec("ufs", "/", "/dev/ada0p2", MNT_LOCAL, 1),
        rec("devfs", "/dev", "devfs", MNT_LOCAL, 2),
        rec("zfs", "/var", "zdata/var", MNT_LOCAL, 3),
        rec("zfs", "/home", "zdata/home", MNT_LOCAL, 4),
        rec("ufs", "/cdrom", "/dev/cd0", MNT_LOCAL | MNT_RDONLY, 5),
        rec("ufs", "/mnt/img", "/dev/md0", MNT_LOCAL, 6),
    ]
}

fn parts(fail_ufs: Option<&'static str>, fail_pools: bool) -> (Log, FakeUfs, FakePools) {
    let log = Log::default();
    let ufs = FakeUfs {
        log: log.clone(),
        fail: fail_ufs,
    };
    let pools = FakePools {
        log: log.clone(),
        fail: fail_pools,
    };
    (log, ufs, pools)
}

#[test]
fn pools_sync_first_then_ufs_newest_mount_first_and_thaw_oldest_first() {
    let plan = plan_freebsd(&mixed_system(), &FreeBsdPolicy::default());
    let (log, ufs, pools) = parts(None, false);
    let frozen = freeze(&plan, &ufs, &pools).unwrap();
    assert_eq!(frozen.report.suspended, ["/mnt/img", "/"]);
    assert_eq!(frozen.report.zfs_synced, ["zdata"]);
    assert_eq!(
        frozen.report.zfs_note.as_deref(),
        Some(ZFS_CONSISTENCY_NOTE)
    );
    assert!(ZFS_CONSISTENCY_NOTE.contains("not frozen"));
    let skipped: Vec<_> = frozen
        .report
        .skipped
        .iter()
        .map(|s| s.mount_point.as_str())
        .collect();
    assert_eq!(skipped, ["/dev", "/cdrom"]);
    assert_eq!(
        *log.borrow(),
        ["zpool sync zdata", "suspend /mnt/img", "suspend /"]
    );
    let outcomes = frozen.thaw();
    assert!(outcomes.iter().all(|o| o.error.is_none()));
    assert_eq!(
        log.borrow()[3..],
        ["resume /", "close /", "resume /mnt/img", "close /mnt/img"].map(String::from)
    );
}

#[test]
fn a_vetoed_plan_syncs_and_suspends_nothing() {
    let mut records = mixed_system();
    records.push(rec("msdosfs", "/boot/efi", "/dev/ada0p1", MNT_LOCAL, 7));
    let plan = plan_freebsd(&records, &FreeBsdPolicy::default());
    let (log, ufs, pools) = parts(None, false);
    let err = freeze(&plan, &ufs, &pools).unwrap_err();
    assert!(
        matches!(&err, FreeBsdFreezeError::Vetoed(v) if v.len() == 1),
        "{err}"
    );
    assert!(err.to_string().contains("/boot/efi (msdosfs)"), "{err}");
    assert!(log.borrow().is_empty());
}

#[test]
fn a_failed_pool_sync_suspends_nothing() {
    let plan = plan_freebsd(&mixed_system(), &FreeBsdPolicy::default());
    let (log, ufs, pools) = parts(None, true);
    let err = freeze(&plan, &ufs, &pools).unwrap_err();
    assert!(
        matches!(&err, FreeBsdFreezeError::ZpoolSync { pools, .. } if pools == "zdata"),
        "{err}"
    );
    assert_eq!(*log.borrow(), ["zpool sync zdata"]);
}

#[test]
fn a_failed_suspension_resumes_the_others_and_names_the_mount() {
    let plan = plan_freebsd(&mixed_system(), &FreeBsdPolicy::default());
    let (log, ufs, pools) = parts(Some("/"), false);
    let err = freeze(&plan, &ufs, &pools).unwrap_err();
    let FreeBsdFreezeError::Suspend(failure) = &err else {
        panic!("{err}");
    };
    assert_eq!(failure.failed, "/");
    assert_eq!(failure.rolled_back.len(), 1);
    assert_eq!(
        *log.borrow(),
        [
            "zpool sync zdata",
            "suspend /mnt/img",
            "suspend /",
            "resume /mnt/img",
            "close /mnt/img"
        ]
    );
}

#[test]
fn without_pools_to_sync_the_report_makes_no_zfs_claim() {
    let policy = FreeBsdPolicy {
        zfs: crate::freebsd_plan::ZfsPolicy::Ignore,
        ..FreeBsdPolicy::default()
    };
    let plan = plan_freebsd(&mixed_system(), &policy);
    let (log, ufs, pools) = parts(None, false);
    let frozen = freeze(&plan, &ufs, &pools).unwrap();
    assert!(frozen.report.zfs_synced.is_empty());
    assert_eq!(frozen.report.zfs_note, None);
    assert!(!log.borrow().iter().any(|l| l.starts_with("zpool")));
}

/// A stand-in `zpool` that appends its arguments to a file and exits with `status`.
fn fake_zpool(dir: &std::path::Path, status: i32) -> ZpoolCommand {
    use std::os::unix::fs::PermissionsExt;
    let program = dir.join("zpool");
    let args = dir.join("args");
    std::fs::write(
        &program,
        format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\necho 'cannot sync: no such pool' >&2\nexit {status}\n",
            args.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    ZpoolCommand { program }
}

#[test]
fn zpool_command_runs_zpool_sync_with_every_pool() {
    let dir = tempfile::tempdir().unwrap();
    let zpool = fake_zpool(dir.path(), 0);
    zpool.sync(&["zroot".into(), "zdata".into()]).unwrap();
    let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
    assert_eq!(args, "sync zroot zdata\n");
}

#[test]
fn zpool_command_failure_carries_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let err = fake_zpool(dir.path(), 1)
        .sync(&["gone".into()])
        .unwrap_err();
    assert!(err.contains("cannot sync: no such pool"), "{err}");
    let missing = ZpoolCommand {
        program: dir.path().join("no-zpool"),
    };
    assert!(
        missing
            .sync(&["x".into()])
            .unwrap_err()
            .contains("cannot run")
    );
}
