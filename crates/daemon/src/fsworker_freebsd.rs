//! The filesystem worker on FreeBSD: the same commands and outcomes as Linux's
//! (`crate::fswork`), over the UFS/ZFS backend.
//!
//! # Mechanism
//!
//! `UFSSUSPEND` refuses a process with more than one thread, and hv-vssd has several, so
//! the suspensions are made and held by a child, `hv-vss freeze --holder-protocol`
//! ([`hv_vss_freezer::holder_process`]): it syncs the ZFS pools, suspends every selected
//! UFS through its own `/dev/ufssuspend` fd (all or nothing), says `frozen`, and holds
//! until its stdin closes; then it resumes and says `thawed`. This worker thread starts it
//! on FREEZE and closes its stdin on THAW. Every wait is bounded; a child that misses its
//! deadline is killed, which resumes what it held (the kernel closes its fds). If the
//! daemon dies, its end of the pipe closes and the child resumes: no guardian and no
//! journal are needed (`guardian_freebsd.rs`).
//!
//! If the daemon hangs or is stopped, the child resumes on its own: the main loop writes
//! it a heartbeat every second through the [`HolderLink`] and the child resumes after
//! [`FsSetup::heartbeat_timeout`] without one, or at its hard bound (what is left of the
//! loop's deadline when it starts). While it holds, this thread looks every
//! [`WATCH_INTERVAL`] for such a resume; on one it reports
//! [`FsOutcome::ThawedOnItsOwn`] (the loop answers as when the Linux guardian thaws) and
//! fails the next `Thaw`, whose host THAW must get E_FAIL.
//!
//! CHECK reads the mount table and selects ([`hv_vss_freezer::freebsd_plan`]): a vetoed
//! plan fails the check, naming the mounts. FREEZE plans again in the child.
//!
//! The logic is platform-neutral (the plan and the child's command are given in
//! [`FsSetup`]) and tested on Linux against a stand-in child; only the real plan and the
//! real child are FreeBSD's.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::Command;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use hv_vss_core::{FsError, FsResult, TxnId};
use hv_vss_freezer::freebsd_plan::FreeBsdPlan;
use hv_vss_freezer::holder_process::{HeldByChild, HoldBounds};
use rustix::pipe::PipeFlags;

pub use self::holder_link::HolderLink;
pub use crate::fswork::{FsCommand, FsOutcome};
use crate::safety::Epoch;

mod holder_link;

/// How often the worker looks whether the holder resumed on its own.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// Reads the mount table and selects.
pub type PlanSource = Arc<dyn Fn() -> Result<FreeBsdPlan, String> + Send + Sync>;
/// Makes the holder's command (`hv-vss freeze --holder-protocol` and the policy).
pub type HolderCommand = Arc<dyn Fn() -> Command + Send + Sync>;

/// What the worker needs.
#[derive(Clone)]
pub struct FsSetup {
    pub plan: PlanSource,
    pub holder: HolderCommand,
    /// How long the child may take to say `frozen` (pool sync and every suspension).
    pub freeze_deadline: Duration,
    /// How long it may take to say `thawed` once its stdin is closed.
    pub thaw_deadline: Duration,
    /// Heartbeats and the hard bound, shared with the main loop.
    pub link: HolderLink,
    /// The child resumes when no heartbeat came for this long.
    pub heartbeat_timeout: Duration,
}

impl std::fmt::Debug for FsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsSetup")
            .field("freeze_deadline", &self.freeze_deadline)
            .field("thaw_deadline", &self.thaw_deadline)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .finish_non_exhaustive()
    }
}

/// Handle to the worker thread.
#[derive(Debug)]
pub struct FsWorker {
    commands: Option<Sender<FsCommand>>,
    outcomes: Receiver<FsOutcome>,
    /// Readable while outcomes wait (a pipe: FreeBSD's eventfd is not in every release).
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl FsWorker {
    /// Starts the worker thread.
    pub fn start(setup: FsSetup) -> std::io::Result<Self> {
        let (wake, wake_writer) =
            rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (out_tx, out_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("hv-vss-fs".into())
            .spawn(move || run(&setup, &cmd_rx, &out_tx, &wake_writer))?;
        Ok(Self {
            commands: Some(cmd_tx),
            outcomes: out_rx,
            wake,
            thread: Some(thread),
        })
    }

    /// Queues a command.
    pub fn send(&self, command: FsCommand) {
        if let Some(tx) = &self.commands {
            let _ = tx.send(command);
        }
    }

    /// The fd that becomes readable when outcomes are waiting.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Takes every outcome waiting (and empties the wake pipe).
    pub fn drain(&self) -> Vec<FsOutcome> {
        let mut buf = [0u8; 64];
        while matches!(rustix::io::read(&self.wake, &mut buf), Ok(n) if n > 0) {}
        self.outcomes.try_iter().collect()
    }
}

impl Drop for FsWorker {
    fn drop(&mut self) {
        // Ends the loop; a freeze still held is ended by closing the child's stdin.
        self.commands = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(setup: &FsSetup, commands: &Receiver<FsCommand>, out: &Sender<FsOutcome>, wake: &OwnedFd) {
    let emit = |outcome| {
        let sent = out.send(outcome).is_ok();
        let _ = rustix::io::write(wake, &[1]);
        sent
    };
    let mut held: Option<HeldByChild> = None;
    // Why the holder resumed without a Thaw, until the next Thaw fails with it.
    let mut resumed_early: Option<String> = None;
    let mut epoch = Epoch::default();
    loop {
        let command = match held.as_mut() {
            None => match commands.recv() {
                Ok(command) => command,
                Err(_) => break,
            },
            Some(child) => match commands.recv_timeout(WATCH_INTERVAL) {
                Ok(command) => command,
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let Some(ended) = child.resumed_on_its_own() else {
                        continue;
                    };
                    held = None;
                    setup.link.holding(None);
                    let cause = match ended {
                        Ok(resumed) => format!("the holder resumed on its own: {}", resumed.reason),
                        Err(e) => {
                            format!("the holder ended ({e}); the kernel resumed what it held")
                        }
                    };
                    resumed_early = Some(cause.clone());
                    if !emit(FsOutcome::ThawedOnItsOwn { epoch, cause }) {
                        break;
                    }
                    continue;
                }
            },
        };
        let outcome = match command {
            FsCommand::Check { txn } => FsOutcome::Checked {
                txn,
                result: check(setup),
            },
            FsCommand::Freeze {
                txn,
                epoch: freeze_epoch,
            } => {
                epoch = freeze_epoch;
                resumed_early = None;
                let result = if held.is_some() {
                    // The coordinator answers a FREEZE while frozen itself; never two holds.
                    Err(FsError::new("a freeze is already held"))
                } else {
                    match HeldByChild::spawn(holder_command(setup), setup.freeze_deadline) {
                        Ok(child) => {
                            log_frozen(txn, &child);
                            setup.link.holding(Some(child.heartbeat_sender()));
                            held = Some(child);
                            Ok(())
                        }
                        Err(e) => Err(FsError::new(e.to_string())),
                    }
                };
                FsOutcome::Frozen {
                    txn,
                    epoch,
                    nothing_frozen: held.is_none(),
                    result,
                    report: None,
                }
            }
            FsCommand::Thaw { txn } => {
                setup.link.holding(None);
                let result = match resumed_early.take() {
                    Some(cause) => Err(FsError::new(format!(
                        "the freeze was undone before THAW: {cause}"
                    ))),
                    None => thaw(held.take(), setup.thaw_deadline),
                };
                FsOutcome::Thawed {
                    txn,
                    epoch,
                    result,
                    report: None,
                    // Either the child resumed and exited, or it was killed and the kernel
                    // resumed what it held.
                    all_thawed: true,
                }
            }
        };
        if !emit(outcome) {
            break;
        }
    }
    // The loop is gone: closing the child's stdin ends the hold.
    setup.link.holding(None);
    if let Some(child) = held.take() {
        let _ = child.thaw(setup.thaw_deadline);
    }
}

/// The holder's command with its bounds: the heartbeat timeout, and what is left of the
/// main loop's deadline.
fn holder_command(setup: &FsSetup) -> Command {
    let mut command = (setup.holder)();
    command.args(
        HoldBounds {
            max_hold: setup.link.hold_limit(),
            heartbeat_timeout: setup.heartbeat_timeout,
        }
        .args(),
    );
    command
}

/// A vetoed or unreadable plan fails the check.
fn check(setup: &FsSetup) -> FsResult {
    let plan = (setup.plan)().map_err(FsError::new)?;
    if plan.is_vetoed() {
        return Err(FsError::new(format!(
            "vetoed by {}: neither suspended nor synced ([freebsd] zfs / other_local)",
            vetoes(&plan)
        )));
    }
    Ok(())
}

/// The mounts that veto `plan`: "/data (ext2fs), /srv (msdosfs)".
pub fn vetoes(plan: &FreeBsdPlan) -> String {
    plan.vetoes
        .iter()
        .map(|v| format!("{} ({})", v.mount_point, v.fstype))
        .collect::<Vec<_>>()
        .join(", ")
}

fn thaw(held: Option<HeldByChild>, deadline: Duration) -> FsResult {
    let Some(child) = held else {
        return Ok(());
    };
    let resumed = child
        .thaw(deadline)
        .map_err(|e| FsError::new(e.to_string()))?;
    if !resumed.reason.was_asked() {
        return Err(FsError::new(format!(
            "the holder had already resumed on its own before THAW: {}",
            resumed.reason
        )));
    }
    let failed: Vec<String> = resumed
        .outcomes
        .iter()
        .filter_map(|o| o.error.as_ref().map(|e| format!("{}: {e}", o.name)))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        // UFSRESUME failed, but the suspension still ended when the child closed the fd.
        Err(FsError::new(format!(
            "resume reported {}",
            failed.join("; ")
        )))
    }
}

fn log_frozen(txn: TxnId, child: &HeldByChild) {
    let r = &child.report;
    tracing::info!(
        txn = txn.0,
        holder_pid = child.pid(),
        suspended = ?r.suspended,
        zfs_synced = ?r.zfs_synced,
        zfs_note = r.zfs_note.as_deref().unwrap_or(""),
        skipped = r.skipped.len(),
        zfs_sync_ms = r.zfs_sync_took.as_millis() as u64,
        suspend_ms = r.suspend_took.as_millis() as u64,
        "frozen (UFS suspended by the holder)"
    );
}

#[cfg(test)]
mod tests;
