//! `hv-vss plan`, `hv-vss freeze --hold` and `hv-vss thaw` on FreeBSD: the UFS/ZFS backend
//! (`hv_vss_freezer::freebsd`) from the command line.
//!
//! Exit codes, as on Linux where they mean the same: 0 success; 1 other failure; 2 usage;
//! 3 not root; 4 nothing to freeze; 5 the plan is vetoed (a mount that can be neither
//! suspended nor synced); 6 another `hv-vss freeze --hold` holds the state directory;
//! 8 freeze failed (everything resumed); 9 the holder survived SIGKILL (`thaw`).
//!
//! `freeze` prints nothing between the first suspension and the last resume: stdout may be
//! a file on a suspended filesystem, where a write would wait for the resume that this very
//! process is to make. For the same reason the process must not hold any file open for
//! writing on a mount it suspends (`UFSSUSPEND` refuses with `EDEADLK`), and must stay
//! single-threaded (the same refusal): nothing here starts a thread.
//!
//! `thaw` cannot resume another process's suspension (it belongs to the holder's fds); it
//! ends the holder recorded in the state directory (`hv_vss_freezer::holder`), whose fds
//! the kernel then closes.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use hv_vss_freezer::DEFAULT_STATE_DIR;
use hv_vss_freezer::freebsd::{UfsSuspender, make_plan};
use hv_vss_freezer::freebsd_freeze::{FreeBsdFreezeError, ZpoolCommand, freeze as freeze_plan};
use hv_vss_freezer::freebsd_plan::{FreeBsdPlan, FreeBsdPolicy, OtherFsPolicy, ZfsPolicy};
use hv_vss_freezer::hold::{HoldEnd, hold};
use hv_vss_freezer::holder::{self, EndOutcome, HolderError};
use hv_vss_freezer::holder_process;

use crate::duration;

/// Exit codes of the freezer subcommands.
mod exit {
    pub const NOT_ROOT: u8 = 3;
    pub const NOTHING_TO_FREEZE: u8 = 4;
    pub const VETOED: u8 = 5;
    pub const ANOTHER_FREEZER: u8 = 6;
    pub const FREEZE_FAILED: u8 = 8;
    pub const INCOMPLETE: u8 = 9;
}

/// `zfs = "sync" | "veto" | "ignore"`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ZfsArg {
    Sync,
    Veto,
    Ignore,
}

/// `other_local = "veto" | "skip"`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum OtherArg {
    Veto,
    Skip,
}

/// The policy keys, shared by `plan` and `freeze`.
#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    /// Writable ZFS: `zpool sync` its pools (consistent by design, not frozen), veto the
    /// backup, or leave it out.
    #[arg(long, value_enum, default_value = "sync")]
    zfs: ZfsArg,
    /// Writable local filesystems that are neither UFS nor ZFS: veto, or leave out.
    #[arg(long, value_enum, default_value = "veto")]
    other_local: OtherArg,
}

impl PolicyArgs {
    fn policy(&self) -> FreeBsdPolicy {
        FreeBsdPolicy {
            zfs: match self.zfs {
                ZfsArg::Sync => ZfsPolicy::Sync,
                ZfsArg::Veto => ZfsPolicy::Veto,
                ZfsArg::Ignore => ZfsPolicy::Ignore,
            },
            other_local: match self.other_local {
                OtherArg::Veto => OtherFsPolicy::Veto,
                OtherArg::Skip => OtherFsPolicy::Skip,
            },
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    policy: PolicyArgs,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct FreezeArgs {
    #[command(flatten)]
    policy: PolicyArgs,
    /// How long to hold the freeze, e.g. 0, 500ms, 5s, 1m, at most 24h (SIGINT/SIGTERM, or
    /// `hv-vss thaw`, end it early).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_hold, default_value = "0")]
    hold: Duration,
    /// State directory for the holder record that `hv-vss thaw` reads.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Print the report as JSON (after the thaw).
    #[arg(long)]
    json: bool,
    /// Be the holder of a multi-threaded parent (hv-vssd): speak the holder protocol on
    /// stdin and stdout (`hv_vss_freezer::holder_process`) instead of holding for --hold.
    #[arg(long, hide = true, conflicts_with_all = ["hold", "json"])]
    holder_protocol: bool,
    /// With --holder-protocol: resume when the parent wrote no heartbeat for this many
    /// milliseconds (it is hung or stopped); 5000 if not given.
    #[arg(long, hide = true, requires = "holder_protocol", value_name = "MS")]
    heartbeat_timeout_ms: Option<u64>,
    /// With --holder-protocol: resume at the latest this many milliseconds after starting,
    /// heartbeats or not.
    #[arg(long, hide = true, requires = "holder_protocol", value_name = "MS")]
    max_hold_ms: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct ThawArgs {
    /// State directory holding the holder record.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// How long the holder gets to exit after SIGTERM, and again after SIGKILL.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_hold, default_value = "10s")]
    wait: Duration,
}

fn fail(code: u8, message: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
    eprintln!("hv-vss: {message}");
    Ok(ExitCode::from(code))
}

fn print_plan(plan: &FreeBsdPlan) {
    println!("suspend (UFS, each through its own /dev/ufssuspend fd, newest mount first):");
    for target in plan.ufs.iter().rev() {
        println!("  {}  ({})", target.mount_point, target.device);
    }
    if !plan.zfs_sync.is_empty() {
        println!("zpool sync (ZFS: consistent by its transactional design, not frozen):");
        for pool in &plan.zfs_sync {
            println!("  {}  ({})", pool.name, pool.mount_points.join(", "));
        }
    }
    for skipped in &plan.skipped {
        let reason = reason_of(serde_json::to_value(&skipped.reason));
        println!(
            "skip {}  ({}): {reason}",
            skipped.mount_point, skipped.fstype
        );
    }
    for veto in &plan.vetoes {
        let reason = reason_of(serde_json::to_value(&veto.reason));
        println!("VETO {}  ({}): {reason}", veto.mount_point, veto.fstype);
    }
}

/// The `reason` tag a skip or veto reason serializes with (`pseudo`, `read_only`, ...).
fn reason_of(reason: serde_json::Result<serde_json::Value>) -> String {
    reason
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

pub fn plan(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let plan = make_plan(&args.policy.policy())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print_plan(&plan);
    }
    if plan.is_vetoed() {
        return fail(exit::VETOED, "the backup would be vetoed (see VETO above)");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn freeze(args: FreezeArgs) -> anyhow::Result<ExitCode> {
    if args.holder_protocol {
        return serve_holder(&args);
    }
    if !rustix::process::geteuid().is_root() {
        return fail(exit::NOT_ROOT, "suspending UFS needs root");
    }
    let plan = make_plan(&args.policy.policy())?;
    if plan.is_vetoed() {
        print_plan(&plan);
        return fail(exit::VETOED, "vetoed: nothing was synced or suspended");
    }
    if plan.ufs.is_empty() && plan.zfs_sync.is_empty() {
        return fail(exit::NOTHING_TO_FREEZE, "nothing to suspend or sync");
    }
    // Declared before the freeze, so dropped after it: the record is removed only once
    // everything is resumed.
    let _claim = match holder::claim(&args.state_dir) {
        Ok(claim) => claim,
        Err(e @ HolderError::Busy { .. }) => return fail(exit::ANOTHER_FREEZER, e),
        Err(e) => return Err(e.into()),
    };
    let suspender = UfsSuspender;
    let frozen = match freeze_plan(&plan, &suspender, &ZpoolCommand::default()) {
        Ok(frozen) => frozen,
        Err(e @ (FreeBsdFreezeError::Suspend(_) | FreeBsdFreezeError::ZpoolSync { .. })) => {
            return fail(exit::FREEZE_FAILED, e);
        }
        Err(e) => return Err(e.into()),
    };
    // Nothing is printed until the resume: stdout may be on a suspended filesystem.
    let ended = hold(args.hold);
    let report = frozen.report.clone();
    let resumed = frozen.thaw();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "freeze": report,
                "thaw": resumed,
                "interrupted": matches!(ended, Ok(HoldEnd::Interrupted)),
            }))?
        );
    } else {
        for mount in &report.suspended {
            println!("suspended {mount}");
        }
        if let Some(note) = &report.zfs_note {
            println!("{note}: {}", report.zfs_synced.join(", "));
        }
        for outcome in &resumed {
            match &outcome.error {
                None => println!("resumed {}", outcome.name),
                Some(error) => println!(
                    "resumed {} by closing its fd (UFSRESUME said: {error})",
                    outcome.name
                ),
            }
        }
        println!(
            "zpool sync {} ms, suspend {} ms",
            report.zfs_sync_took.as_millis(),
            report.suspend_took.as_millis()
        );
    }
    ended?;
    Ok(ExitCode::SUCCESS)
}

/// `--holder-protocol`: freeze, report on stdout, hold until stdin closes, SIGTERM, the
/// parent's heartbeats stop or the hard bound passes, resume, report. The parent owns the
/// hold, so no holder record is written.
fn serve_holder(args: &FreezeArgs) -> anyhow::Result<ExitCode> {
    let bounds = holder_process::HoldBounds {
        max_hold: args.max_hold_ms.map(Duration::from_millis),
        heartbeat_timeout: args
            .heartbeat_timeout_ms
            .map_or(holder_process::HEARTBEAT_TIMEOUT, Duration::from_millis),
    };
    let stop = holder_process::stop_on_signals()?;
    let plan = make_plan(&args.policy.policy());
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    holder_process::serve(
        plan,
        &UfsSuspender,
        &ZpoolCommand::default(),
        stdin.as_fd(),
        &mut stdout,
        &stop,
        &bounds,
    )?;
    Ok(ExitCode::SUCCESS)
}

pub fn thaw(args: ThawArgs) -> anyhow::Result<ExitCode> {
    match holder::end_holder(&args.state_dir, args.wait)? {
        EndOutcome::NothingHeld => println!("nothing held: no hv-vss freeze --hold is running"),
        EndOutcome::Ended { pid, killed: false } => {
            println!("ended the holder (pid {pid}); it resumed everything")
        }
        EndOutcome::Ended { pid, killed: true } => println!(
            "killed the holder (pid {pid}) after SIGTERM was not enough; the kernel resumed its suspensions"
        ),
        EndOutcome::StillRunning { pid } => {
            return fail(
                exit::INCOMPLETE,
                format!(
                    "the holder (pid {pid}) survived SIGKILL for {}: it is stuck in the kernel, and its suspensions end when it exits",
                    humantime::format_duration(args.wait)
                ),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
