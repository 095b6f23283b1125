//! Start-up on Linux, before the transport opens: the freeze plan as of now (it validates
//! `--mount` / `mounts` and the `[freezer]` filters), the state directory (on no filesystem
//! the plan may freeze, R59) with the instance lock, and the recovery of what an earlier
//! instance's freeze journal lists. What the filesystem worker then needs is kept in
//! [`Prepared`]. FreeBSD's counterpart is `startup_freebsd.rs`.

use std::fs::File;
use std::path::Path;
use std::time::Instant;

use anyhow::anyhow;
use hv_vss_freezer::{FreezeOptions, MountSource, Selection};

use crate::config::Settings;
use crate::exit::{ExitKind, Fatal};
use crate::fsworker;
use crate::guardian::GuardianLink;
use crate::state_dir;

/// What start-up made ready for the filesystem worker; holds the instance lock.
#[derive(Debug)]
pub struct Prepared {
    source: MountSource,
    selection: Selection,
    _instance_lock: File,
}

/// Plans, prepares the state directory and recovers an earlier freeze (R59).
pub fn prepare(settings: &Settings) -> Result<Prepared, Fatal> {
    let source = MountSource::current();
    let selection = fsworker::selection(&settings.mounts);
    let plan = hv_vss_freezer::make_plan(&source, &selection, &settings.freezer).map_err(|e| {
        let key = if settings.mounts.is_empty() {
            "freezer"
        } else {
            "--mount/mounts"
        };
        Fatal::new(ExitKind::Usage, anyhow!("{key}: {e}"))
    })?;
    let planned: Vec<String> = plan
        .filesystems()
        .map(|f| f.mount_point.display().to_string())
        .collect();
    tracing::info!(mounts = ?planned, skipped = plan.skipped.len(), "freeze plan");
    if plan.is_empty() {
        tracing::warn!(
            "the freeze plan is empty: FREEZE will fail until a freezable filesystem is mounted"
        );
    }

    let instance_lock = prepare_state_dir(&settings.state_dir, &plan)?;
    recover_earlier(&settings.state_dir)?;
    Ok(Prepared {
        source,
        selection,
        _instance_lock: instance_lock,
    })
}

impl Prepared {
    /// The worker's setup: the guardian gets each filesystem's fd before its FIFREEZE.
    pub fn worker_setup(&self, settings: &Settings, link: &GuardianLink) -> fsworker::FsSetup {
        fsworker::FsSetup {
            source: self.source.clone(),
            selection: self.selection.clone(),
            config: settings.freezer.clone(),
            options: FreezeOptions::new(settings.freezer.config(), settings.state_dir.clone()),
            watch: Some(std::sync::Arc::new(link.clone())),
        }
    }
}

/// Creates the state directory (0711: only root lists or reads it, while clients allowed in
/// `[apps]` can reach the default socket in it by name; every file in it is 0600), refuses
/// one the plan may freeze (R59), and takes the instance lock.
fn prepare_state_dir(dir: &Path, plan: &hv_vss_freezer::Plan) -> Result<File, Fatal> {
    state_dir::create(dir)?;
    let handle = File::open(dir).map_err(state_dir::unusable(dir))?;
    let id = hv_vss_sys::fs::identify(std::os::fd::AsFd::as_fd(&handle))
        .map_err(state_dir::unusable(dir))?;
    let dev = id
        .mount_id
        .and_then(|m| plan.dev_of_mount_id(m))
        .unwrap_or(id.dev);
    if plan.may_freeze(dev) {
        return Err(Fatal::new(
            ExitKind::StateDir,
            anyhow!(
                "state directory {}: on a filesystem that may be frozen (device {dev}); use a tmpfs such as /run/hv-vss",
                dir.display()
            ),
        ));
    }
    state_dir::lock_instance(dir)
}

/// How long start-up retries thawing a journaled filesystem that is ours but whose FITHAW
/// fails, before giving up with exit 6.
const RECOVER_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// R59: thaw what an earlier instance's journal lists, before the transport opens.
///
/// # Policy
///
/// Recovery never thaws what it cannot show is ours: each entry is thawed only through its
/// recorded path, and only if that path still leads to the recorded device.
///
/// - Every entry thawed or found not frozen: the journal is removed; start.
/// - Some entries unreachable (mount gone) or on another device (the path now leads
///   elsewhere), the rest thawed or not frozen: nothing more can be done for them, and
///   refusing to start would keep the daemon down for ever (every restart would find the
///   same journal). They are logged at error level and the journal is renamed
///   `freeze-journal.json.stale-<unix_ms>` in the state directory for the operator; start.
/// - An entry whose device matches but whose FITHAW fails is ours and still frozen:
///   retried for [`RECOVER_RETRY_FOR`], then start-up fails (exit 6) with the journal kept,
///   so the guardian-less state is never entered while we know something is frozen. A
///   FITHAW that does not return within the per-filesystem deadline
///   ([`hv_vss_freezer::DEFAULT_RECOVER_THAW_DEADLINE`]) counts the same: the others are
///   thawed meanwhile, and start-up ends instead of hanging in it.
fn recover_earlier(dir: &Path) -> Result<(), Fatal> {
    let started = Instant::now();
    let report = loop {
        let report = hv_vss_freezer::recover(dir, hv_vss_freezer::RecoverOptions::default())
            .map_err(|e| match e {
                hv_vss_freezer::RecoverError::FreezerAlive { pid, .. } => Fatal::new(
                    ExitKind::Busy,
                    anyhow!(
                        "process {pid} froze filesystems listed in {} and still holds them",
                        dir.display()
                    ),
                ),
                other => Fatal::new(
                    ExitKind::RecoveryIncomplete,
                    anyhow::Error::new(other).context("recovering the earlier freeze journal"),
                ),
            })?;
        let ours_still_frozen = report.ours_may_be_frozen();
        if !ours_still_frozen || started.elapsed() >= RECOVER_RETRY_FOR {
            break report;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    if !report.journal_found {
        return Ok(());
    }
    match &report.rcu_expedited {
        None => {}
        Some(hv_vss_freezer::SwitchRestore::TurnedOff { path }) => tracing::warn!(
            switch = %path.display(),
            "the earlier instance's freeze left expedited RCU grace periods on; turned them off"
        ),
        Some(hv_vss_freezer::SwitchRestore::Failed { path, error }) => tracing::error!(
            switch = %path.display(),
            %error,
            "the earlier instance's freeze left expedited RCU grace periods on; cannot turn them off"
        ),
    }
    let detail = serde_json::to_string(&report.filesystems).unwrap_or_default();
    if report.complete() {
        tracing::warn!(
            earlier_pid = report.freezer_pid,
            filesystems = %detail,
            "an earlier instance left filesystems frozen; thawed them from its journal"
        );
        return Ok(());
    }
    if report.ours_may_be_frozen() {
        return Err(Fatal::new(
            ExitKind::RecoveryIncomplete,
            anyhow!(
                "the earlier freeze journal in {} could not be fully thawed: {detail}; see `hv-vss thaw --recover`",
                dir.display()
            ),
        ));
    }
    // Only unreachable or foreign entries are left: never thawed, set aside, start.
    let aside = hv_vss_freezer::Journal::set_aside(dir).map_err(|e| {
        Fatal::new(
            ExitKind::RecoveryIncomplete,
            anyhow::Error::new(e).context("setting aside the earlier freeze journal"),
        )
    })?;
    tracing::error!(
        earlier_pid = report.freezer_pid,
        filesystems = %detail,
        moved_to = %aside.display(),
        "the earlier freeze journal lists filesystems that are unmounted or now another device; NOT thawed (they may not be ours). Journal set aside; check them by hand (SysRq-j thaws everything as a last resort)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// Start-up recovery over a journal an earlier instance left, listing `path` on `dev`:
    /// it must go on (not exit) and remove the journal. Returns the journals it set aside.
    fn start_up_over_journal_listing(
        state: &Path,
        path: &Path,
        dev: hv_vss_freezer::DevNum,
    ) -> Vec<PathBuf> {
        start_up_over_journal(state, path, dev, None)
    }

    /// The same, the journal also naming an expedited-RCU switch its freezer turned on.
    fn start_up_over_journal(
        state: &Path,
        path: &Path,
        dev: hv_vss_freezer::DevNum,
        rcu_expedited: Option<PathBuf>,
    ) -> Vec<PathBuf> {
        hv_vss_freezer::Journal {
            version: 1,
            pid: 999_999_999,
            created_unix_ms: 1,
            filesystems: vec![hv_vss_freezer::JournalEntry {
                path: path.to_path_buf(),
                dev,
                fs_type: "ext4".into(),
                pid: 999_999_999,
            }],
            rcu_expedited,
        }
        .write(state)
        .unwrap();
        recover_earlier(state).map_err(|f| f.to_string()).unwrap();
        assert!(hv_vss_freezer::Journal::read(state).unwrap().is_none());
        std::fs::read_dir(state)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".stale-"))
            .collect()
    }

    /// An earlier instance killed (with its guardian) during its FIFREEZE calls left the
    /// expedited-RCU switch on: start-up turns it off.
    #[test]
    fn start_up_turns_off_the_expedite_switch_an_earlier_instance_left_on() {
        let state = tempfile::tempdir().unwrap();
        let switch = state.path().join("rcu_expedited-stand-in");
        std::fs::write(&switch, "1\n").unwrap();
        let gone = state.path().join("unmounted-long-ago");
        let dev = hv_vss_freezer::DevNum { major: 7, minor: 3 };
        start_up_over_journal(state.path(), &gone, dev, Some(switch.clone()));
        assert_eq!(std::fs::read_to_string(&switch).unwrap(), "0");
    }

    /// Regression: a journal entry whose mount is gone made start-up exit 6 on every
    /// restart, so the daemon could never start again. It is reported and set aside.
    #[test]
    fn a_journal_entry_whose_mount_is_gone_is_set_aside_and_start_up_goes_on() {
        let state = tempfile::tempdir().unwrap();
        let gone = state.path().join("unmounted-long-ago");
        let dev = hv_vss_freezer::DevNum { major: 7, minor: 3 };
        let aside = start_up_over_journal_listing(state.path(), &gone, dev);
        assert_eq!(aside.len(), 1, "{aside:?}");
        let kept: hv_vss_freezer::Journal =
            serde_json::from_slice(&std::fs::read(&aside[0]).unwrap()).unwrap();
        assert_eq!(kept.filesystems[0].path, gone);
    }

    /// Same for an entry whose path now leads to another device: never thawed (it may not
    /// be ours), set aside, start.
    #[test]
    fn a_journal_entry_on_another_device_is_not_thawed_but_set_aside() {
        let state = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let dev = hv_vss_freezer::DevNum {
            major: 4095,
            minor: 77,
        };
        let aside = start_up_over_journal_listing(state.path(), elsewhere.path(), dev);
        assert_eq!(aside.len(), 1, "{aside:?}");
    }
}
