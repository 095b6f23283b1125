//! Start-up on FreeBSD, before the transport opens: the selection as of now (logged; a
//! veto is warned, as FREEZE will fail while it lasts), the state directory (on no UFS the
//! plan suspends) with the instance lock. There is no freeze journal to recover: a
//! suspension cannot outlive its holder (`guardian_freebsd.rs`). Linux's counterpart is
//! `startup.rs`.

use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::anyhow;
use hv_vss_freezer::freebsd_plan::{FreeBsdPlan, FreeBsdPolicy, OtherFsPolicy, ZfsPolicy};

use crate::config::Settings;
use crate::exit::{ExitKind, Fatal};
use crate::fsworker;
use crate::guardian::GuardianLink;
use crate::state_dir;

/// What start-up made ready for the filesystem worker; holds the instance lock.
#[derive(Debug)]
pub struct Prepared {
    _instance_lock: File,
}

fn plan(policy: &FreeBsdPolicy) -> Result<FreeBsdPlan, String> {
    hv_vss_freezer::freebsd::make_plan(policy).map_err(|e| e.to_string())
}

/// Selects, prepares the state directory, takes the lock.
pub fn prepare(settings: &Settings) -> Result<Prepared, Fatal> {
    if !settings.mounts.is_empty() {
        return Err(Fatal::new(
            ExitKind::Usage,
            anyhow!(
                "--mount/mounts: not on FreeBSD: every writable UFS is suspended, ZFS and the rest as [freebsd] says"
            ),
        ));
    }
    let plan =
        plan(&settings.freebsd.policy).map_err(|e| Fatal::new(ExitKind::Usage, anyhow!("{e}")))?;
    let ufs: Vec<&str> = plan.ufs.iter().map(|t| t.mount_point.as_str()).collect();
    let pools: Vec<&str> = plan.zfs_sync.iter().map(|p| p.name.as_str()).collect();
    tracing::info!(ufs = ?ufs, zfs_sync = ?pools, skipped = plan.skipped.len(), "freeze plan");
    if plan.is_vetoed() {
        tracing::warn!(vetoes = %fsworker::vetoes(&plan), "the plan is vetoed: HOT_BACKUP and FREEZE fail while these are mounted ([freebsd] zfs / other_local)");
    }
    let instance_lock = prepare_state_dir(&settings.state_dir, &plan)?;
    Ok(Prepared {
        _instance_lock: instance_lock,
    })
}

impl Prepared {
    /// The worker's setup: the real selection and `hv-vss freeze --holder-protocol`.
    pub fn worker_setup(&self, settings: &Settings, link: &GuardianLink) -> fsworker::FsSetup {
        let policy = settings.freebsd.policy;
        let holder = settings.freebsd.holder.clone();
        fsworker::FsSetup {
            plan: Arc::new(move || plan(&policy)),
            holder: Arc::new(move || holder_command(&holder, &policy)),
            freeze_deadline: settings.limits.freeze_deadline,
            thaw_deadline: settings.limits.thaw_deadline,
            link: link.holder(),
            heartbeat_timeout: hv_vss_freezer::holder_process::HEARTBEAT_TIMEOUT,
        }
    }
}

/// `hv-vss freeze --holder-protocol --zfs … --other-local …` (the worker adds the bounds).
fn holder_command(program: &Path, policy: &FreeBsdPolicy) -> Command {
    let zfs = match policy.zfs {
        ZfsPolicy::Sync => "sync",
        ZfsPolicy::Veto => "veto",
        ZfsPolicy::Ignore => "ignore",
    };
    let other = match policy.other_local {
        OtherFsPolicy::Veto => "veto",
        OtherFsPolicy::Skip => "skip",
    };
    let mut command = Command::new(program);
    command.args([
        "freeze",
        "--holder-protocol",
        "--zfs",
        zfs,
        "--other-local",
        other,
    ]);
    // Its stderr could be a file on a mount it suspends, where a write would wait for its
    // own resume; everything it has to say comes on the protocol pipe.
    command.stderr(std::process::Stdio::null());
    command
}

/// Creates the state directory, refuses one on a UFS the plan suspends (the daemon writes
/// there while frozen), and takes the instance lock.
fn prepare_state_dir(dir: &Path, plan: &FreeBsdPlan) -> Result<File, Fatal> {
    state_dir::create(dir)?;
    let stat = hv_vss_sys::fs::statfs_path(dir).map_err(state_dir::unusable(dir))?;
    if let Some(target) = plan.ufs.iter().find(|t| t.fsid == stat.fsid.val) {
        return Err(Fatal::new(
            ExitKind::StateDir,
            anyhow!(
                "state directory {}: on {}, a UFS that FREEZE suspends; use a tmpfs (the rc.d script mounts one at /var/run/hv-vss)",
                dir.display(),
                target.mount_point
            ),
        ));
    }
    state_dir::lock_instance(dir)
}
