//! `hv-vss plan`, `hv-vss freeze --hold`, `hv-vss thaw --recover`, `hv-vss thaw
//! --all-frozen`: the filesystem freezer from the command line.
//!
//! Exit codes (also in docs/freezer.md): 0 success; 1 other failure; 2 usage; 3 not root;
//! 4 nothing to freeze; 5 unknown or unfreezable mount point, or bad config; 6 another
//! freezer (lock held, foreign freeze, leftover journal, live freezer); 7 state directory
//! unsafe; 8 freeze failed (rolled back); 9 thaw or recovery incomplete.
//!
//! `freeze` prints nothing between the first FIFREEZE and the last FITHAW: stdout may be a
//! file on a filesystem being frozen. For the same reason `thaw` prints (its warning too)
//! only after thawing.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use hv_vss_freezer::hold::{HoldEnd, hold};
use hv_vss_freezer::{
    CompiledConfig, DEFAULT_STATE_DIR, Expedite, FreezeError, FreezeOptions, FreezeReport,
    FreezerConfig, FsFreezeOutcome, MakePlanError, MountSource, Plan, RecoverError, RecoverOptions,
    RecoverOutcome, Selection, SkipReason, SweepOutcome, SwitchRestore, ThawReport,
};

use crate::duration;

/// Exit codes of the freezer subcommands.
mod exit {
    pub const NOT_ROOT: u8 = 3;
    pub const NOTHING_TO_FREEZE: u8 = 4;
    pub const BAD_MOUNT: u8 = 5;
    pub const ANOTHER_FREEZER: u8 = 6;
    pub const STATE_DIR_UNSAFE: u8 = 7;
    pub const FREEZE_FAILED: u8 = 8;
    pub const INCOMPLETE: u8 = 9;
}

/// Which filesystems: shared by `plan` and `freeze`.
#[derive(Debug, clap::Args)]
pub struct SelectArgs {
    /// Freeze exactly this mount point (repeatable); replaces discovery and config filters.
    #[arg(long = "mount", value_name = "PATH")]
    mounts: Vec<PathBuf>,
    /// TOML file whose `[freezer]` table holds include/exclude rules and policies.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Read pid 1's mount table and open mount points through /proc/1/root.
    #[arg(long)]
    pid1: bool,
    /// Mount table to read (default /proc/self/mountinfo).
    #[arg(long, value_name = "FILE", hide = true)]
    mountinfo: Option<PathBuf>,
    /// sysfs root for the block topology (default /sys).
    #[arg(long, value_name = "DIR", hide = true)]
    sysfs: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    select: SelectArgs,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct FreezeArgs {
    #[command(flatten)]
    select: SelectArgs,
    /// How long to hold the freeze, e.g. 0, 500ms, 5s, 1m, 1h 30m, at most 24h (SIGINT/SIGTERM
    /// end it early).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_hold, default_value = "0")]
    hold: Duration,
    /// State directory for the journal and lock; must not be on a filesystem being frozen.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Print the plan and reports as JSON (after the thaw).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("action").required(true).args(["recover", "all_frozen"])))]
pub struct ThawArgs {
    /// Thaw exactly what the journal of an earlier freeze lists.
    #[arg(long)]
    recover: bool,
    /// Thaw every frozen filesystem in the mount table (or the --mount list), WHOEVER
    /// froze it: backup agents' and fsfreeze's freezes too. Last resort after that: SysRq-j.
    #[arg(long)]
    all_frozen: bool,
    /// With --all-frozen: only the filesystem mounted here (repeatable).
    #[arg(long = "mount", value_name = "PATH", conflicts_with = "recover")]
    mounts: Vec<PathBuf>,
    /// State directory holding the journal (--recover).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Recover even if the freezing process is alive and holds the lock.
    #[arg(long, conflicts_with = "all_frozen")]
    force: bool,
    /// If the freezing process is alive and holds the lock (a killed daemon lingers until a
    /// FIFREEZE it started returns), wait up to this long for it to exit (pidfd), then
    /// recover; e.g. 20s. The systemd units use it in ExecStopPost=.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_hold, default_value = "0", conflicts_with = "all_frozen")]
    wait: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn fail(code: u8, message: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
    eprintln!("hv-vss: {message}");
    Ok(ExitCode::from(code))
}

fn load_config(path: Option<&Path>) -> anyhow::Result<CompiledConfig> {
    let config = match path {
        None => FreezerConfig::default(),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            FreezerConfig::from_toml_table(&text, "freezer")
                .with_context(|| format!("config {}", p.display()))?
        }
    };
    Ok(config.compile()?)
}

/// Build the plan, or the exit code and message to give up with.
fn make_plan(select: &SelectArgs) -> anyhow::Result<Result<(Plan, CompiledConfig), ExitCode>> {
    let config = match load_config(select.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return Ok(Err(fail(exit::BAD_MOUNT, format!("{e:#}"))?)),
    };
    let mut source = if select.pid1 {
        MountSource::pid1()
    } else {
        MountSource::current()
    };
    if let Some(m) = &select.mountinfo {
        source.mountinfo = m.clone();
    }
    if let Some(s) = &select.sysfs {
        source.sysfs_root = s.clone();
    }
    let selection = if select.mounts.is_empty() {
        Selection::Discover
    } else {
        Selection::Explicit(select.mounts.clone())
    };
    match hv_vss_freezer::make_plan(&source, &selection, &config) {
        Ok(plan) => Ok(Ok((plan, config))),
        Err(e @ (MakePlanError::Plan(_) | MakePlanError::NoSuchPath { .. })) => {
            Ok(Err(fail(exit::BAD_MOUNT, e)?))
        }
        Err(e) => Err(e.into()),
    }
}

fn print_plan(plan: &Plan) {
    let levels = plan.levels.len();
    println!(
        "Freeze plan: {} filesystem(s) in {} level(s); level 0 is frozen first, thaw runs in reverse.",
        plan.len(),
        levels
    );
    for (n, level) in plan.levels.iter().enumerate() {
        for fs in level {
            let mut notes = Vec::new();
            if !fs.depends_on.is_empty() {
                let deps: Vec<String> = fs
                    .depends_on
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                notes.push(format!("before {}", deps.join(", ")));
            }
            if !fs.also_mounted_at.is_empty() {
                let also: Vec<String> = fs
                    .also_mounted_at
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                notes.push(format!("also at {}", also.join(", ")));
            }
            let notes = if notes.is_empty() {
                String::new()
            } else {
                format!("  ({})", notes.join("; "))
            };
            println!(
                "  level {n}: {}  {}  {}  {}{notes}",
                fs.mount_point.display(),
                fs.fs_type,
                fs.dev,
                Path::new(&fs.source).display()
            );
        }
    }
    let not_listed = plan
        .skipped
        .iter()
        .filter(|s| s.reason == SkipReason::NotListed)
        .count();
    let shown: Vec<_> = plan
        .skipped
        .iter()
        .filter(|s| s.reason != SkipReason::NotListed)
        .collect();
    if !shown.is_empty() {
        println!("Skipped:");
        for s in shown {
            println!("  {}  {}: {}", s.mount_point.display(), s.fs_type, s.reason);
        }
    }
    if not_listed > 0 {
        println!("{not_listed} other mount(s) not in the --mount list.");
    }
}

pub fn plan(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let (plan, _) = match make_plan(&args.select)? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print_plan(&plan);
    }
    Ok(if plan.is_empty() {
        ExitCode::from(exit::NOTHING_TO_FREEZE)
    } else {
        ExitCode::SUCCESS
    })
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

fn print_freeze(report: &FreezeReport, thaw: Option<&ThawReport>, held: Option<Duration>) {
    for fs in &report.filesystems {
        let thaw_us = thaw
            .and_then(|t| {
                t.filesystems
                    .iter()
                    .find(|f| f.mount_point == fs.mount_point)
            })
            .map(|f| f.thaw_us);
        let outcome = match &fs.outcome {
            FsFreezeOutcome::Frozen => "frozen".to_string(),
            FsFreezeOutcome::NotAttempted => "not attempted".into(),
            FsFreezeOutcome::ForeignFrozen => "frozen by another freezer (left alone)".into(),
            FsFreezeOutcome::Unsupported => "cannot freeze (skipped)".into(),
            FsFreezeOutcome::Failed { error } => format!("failed: {error}"),
            FsFreezeOutcome::TimedOut => "FIFREEZE deadline missed".into(),
            FsFreezeOutcome::Abandoned => "FIFREEZE still running when cancelled".into(),
        };
        println!(
            "  {}  {}  level {}  sync {}  freeze {}{}  thaw {}  {outcome}{}",
            fs.mount_point.display(),
            fs.fs_type,
            fs.level,
            fs.sync_us.map_or("-".into(), ms),
            fs.freeze_us.map_or("-".into(), ms),
            fs.freeze_start_us
                .map_or(String::new(), |s| format!(" (at +{})", ms(s))),
            thaw_us.map_or("-".into(), ms),
            fs.sync_error
                .as_ref()
                .map_or(String::new(), |e| format!(" [syncfs: {e}]")),
        );
    }
    if let Some(t) = thaw {
        println!(
            "sync {}, freeze {}, thaw {}; held {}; frozen window {}",
            ms(report.sync_us),
            ms(report.freeze_us),
            ms(t.thaw_us),
            held.map_or("-".into(), |h| ms(
                u64::try_from(h.as_micros()).unwrap_or(u64::MAX)
            )),
            ms(t.frozen_window_us)
        );
        match &report.expedite {
            Expedite::Off | Expedite::Expedited => {}
            Expedite::AlreadyOn => {
                println!("expedited RCU grace periods: already on (left on)")
            }
            Expedite::Unavailable { reason } => {
                println!("expedited RCU grace periods: not used ({reason})")
            }
        }
        for f in t
            .filesystems
            .iter()
            .filter(|f| !matches!(f.outcome, hv_vss_freezer::FsThawOutcome::Thawed))
        {
            println!("  thaw {}: {:?}", f.mount_point.display(), f.outcome);
        }
    }
}

pub fn freeze(args: FreezeArgs) -> anyhow::Result<ExitCode> {
    if !rustix::process::geteuid().is_root() {
        return fail(
            exit::NOT_ROOT,
            "freeze needs root (FIFREEZE requires CAP_SYS_ADMIN)",
        );
    }
    let (plan, config) = match make_plan(&args.select)? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    if plan.is_empty() {
        return fail(
            exit::NOTHING_TO_FREEZE,
            "nothing to freeze (see `hv-vss plan`)",
        );
    }
    let options = FreezeOptions::new(config.config(), &args.state_dir);

    // From here to the thaw: no output, no logging.
    let mut frozen = match hv_vss_freezer::freeze(&plan, &options) {
        Ok(f) => f,
        Err(mut failure) => {
            // Still ours: members FITHAW refused, or a FIFREEZE abandoned at its deadline
            // that may yet freeze. Retry for a while before printing anything (stdout may
            // be on one of them); what is left stays journaled for `thaw --recover`.
            if let Some(rest) = failure.unthawed.as_mut() {
                let give_up = std::time::Instant::now()
                    + options
                        .freeze_deadline
                        .saturating_mul(2)
                        .min(Duration::from_secs(30));
                while !rest.is_empty() && std::time::Instant::now() < give_up {
                    std::thread::sleep(Duration::from_millis(100));
                    failure.report.rollback = Some(rest.thaw());
                }
            }
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "plan": plan, "freeze": failure.report, "error": failure.error.to_string(),
                    }))?
                );
            } else if failure.report.rollback.is_some() {
                print_freeze(&failure.report, failure.report.rollback.as_ref(), None);
            }
            let code = match &failure.error {
                FreezeError::NothingToFreeze => exit::NOTHING_TO_FREEZE,
                FreezeError::StateDirUnsafe { .. } => exit::STATE_DIR_UNSAFE,
                FreezeError::LockHeld { .. }
                | FreezeError::ForeignFreeze { .. }
                | FreezeError::JournalPresent { .. } => exit::ANOTHER_FREEZER,
                FreezeError::Open { .. } | FreezeError::MountChanged { .. } => exit::BAD_MOUNT,
                _ => exit::FREEZE_FAILED,
            };
            let rollback_incomplete = failure
                .report
                .rollback
                .as_ref()
                .is_some_and(|r| !r.complete);
            let msg = if rollback_incomplete {
                format!(
                    "{}; rollback INCOMPLETE, run `hv-vss thaw --recover`",
                    failure.error
                )
            } else {
                failure.error.to_string()
            };
            return fail(
                if rollback_incomplete {
                    exit::INCOMPLETE
                } else {
                    code
                },
                msg,
            );
        }
    };
    let hold_start = std::time::Instant::now();
    let end = hold(args.hold);
    let held = hold_start.elapsed();
    let thaw = frozen.thaw();
    // Thawed: output is safe again.
    let interrupted = matches!(end, Ok(HoldEnd::Interrupted));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "plan": plan,
                "freeze": frozen.report(),
                "thaw": thaw,
                "held_us": u64::try_from(held.as_micros()).unwrap_or(u64::MAX),
                "interrupted": interrupted,
            }))?
        );
    } else {
        println!(
            "Froze {} filesystem(s) in {} level(s){}:",
            frozen
                .report()
                .filesystems
                .iter()
                .filter(|f| f.outcome == FsFreezeOutcome::Frozen)
                .count(),
            plan.levels.len(),
            if interrupted {
                ", hold interrupted by a signal"
            } else {
                ""
            }
        );
        print_freeze(frozen.report(), Some(&thaw), Some(held));
    }
    if let Err(e) = end {
        eprintln!("hv-vss: signal handling failed, held without it: {e}");
    }
    if !thaw.complete {
        return fail(
            exit::INCOMPLETE,
            "some filesystems could not be thawed; they stay journaled: run `hv-vss thaw --recover`",
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn thaw(args: ThawArgs) -> anyhow::Result<ExitCode> {
    if !rustix::process::geteuid().is_root() {
        return fail(
            exit::NOT_ROOT,
            "thaw needs root (FITHAW requires CAP_SYS_ADMIN)",
        );
    }
    if args.all_frozen {
        return thaw_all_frozen(&args);
    }
    debug_assert!(args.recover);
    let report = match hv_vss_freezer::recover(
        &args.state_dir,
        RecoverOptions {
            force: args.force,
            wait_for_freezer: args.wait,
            ..RecoverOptions::default()
        },
    ) {
        Ok(r) => r,
        Err(e @ RecoverError::FreezerAlive { .. }) => return fail(exit::ANOTHER_FREEZER, e),
        Err(e) => return Err(e.into()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !report.journal_found {
        println!(
            "No journal in {}: nothing to recover.",
            args.state_dir.display()
        );
    } else {
        println!(
            "Journal of pid {} in {}:",
            report.freezer_pid.unwrap_or(0),
            args.state_dir.display()
        );
        for f in &report.filesystems {
            let what = match &f.outcome {
                RecoverOutcome::Thawed => "thawed".to_string(),
                RecoverOutcome::WasNotFrozen => "was not frozen".into(),
                RecoverOutcome::DeviceMismatch { found } => {
                    format!(
                        "NOT thawed: path now leads to device {found}, journal says {}",
                        f.entry.dev
                    )
                }
                RecoverOutcome::Unreachable { error } => {
                    format!("NOT thawed: cannot open: {error}")
                }
                RecoverOutcome::Failed { error } => format!("FITHAW failed: {error}"),
                RecoverOutcome::TimedOut { after_ms } => format!(
                    "NOT known to be thawed: FITHAW did not return within {after_ms} ms (a FIFREEZE of it may still be blocked); run again later"
                ),
            };
            println!(
                "  {}  {}  {}: {what}",
                f.entry.path.display(),
                f.entry.fs_type,
                f.entry.dev
            );
        }
        match &report.rcu_expedited {
            None => {}
            Some(SwitchRestore::TurnedOff { path }) => println!(
                "  expedited RCU grace periods, turned on by that freeze: turned off ({})",
                path.display()
            ),
            Some(SwitchRestore::Failed { path, error }) => println!(
                "  expedited RCU grace periods, turned on by that freeze: cannot turn off ({}: {error}); write 0 to it by hand",
                path.display()
            ),
        }
    }
    if !report.complete() {
        return fail(
            exit::INCOMPLETE,
            "recovery incomplete; the journal is kept. Last resort: `fsfreeze -u MOUNT` or SysRq-j (emergency thaw)",
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `thaw --all-frozen`: FITHAW on every frozen filesystem (or the listed ones), whoever
/// froze it. Prints only after the sweep: stdout and stderr may be on a frozen filesystem.
fn thaw_all_frozen(args: &ThawArgs) -> anyhow::Result<ExitCode> {
    let selection = if args.mounts.is_empty() {
        Selection::Discover
    } else {
        Selection::Explicit(args.mounts.clone())
    };
    let report = match hv_vss_freezer::thaw_all_frozen(&MountSource::current(), &selection) {
        Ok(r) => r,
        Err(e @ (MakePlanError::Plan(_) | MakePlanError::NoSuchPath { .. })) => {
            return fail(exit::BAD_MOUNT, e);
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let count = |f: fn(&SweepOutcome) -> bool| {
            report.filesystems.iter().filter(|s| f(&s.outcome)).count()
        };
        println!(
            "Swept {} filesystem(s): {} thawed, {} not frozen, {} failed.",
            report.filesystems.len(),
            count(|o| *o == SweepOutcome::Thawed),
            count(|o| matches!(o, SweepOutcome::NotFrozen | SweepOutcome::Unsupported)),
            count(|o| !o.is_ok()),
        );
        for f in &report.filesystems {
            let what = match &f.outcome {
                SweepOutcome::Thawed => "was frozen, now thawed".to_string(),
                SweepOutcome::NotFrozen => "not frozen".into(),
                SweepOutcome::Unsupported => "not frozen (cannot freeze)".into(),
                SweepOutcome::Unreachable { error } => format!("FAILED, not reached: {error}"),
                SweepOutcome::Failed { error } => format!("FAILED: FITHAW: {error}"),
                SweepOutcome::TimedOut { deadline_ms } => format!(
                    "FAILED: FITHAW did not return within {deadline_ms} ms (storage below it frozen?)"
                ),
            };
            let also = if f.also_mounted_at.is_empty() {
                String::new()
            } else {
                let also: Vec<String> = f
                    .also_mounted_at
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                format!(" (also at {})", also.join(", "))
            };
            println!(
                "  {}  {}  {}: {what}{also}",
                f.mount_point.display(),
                f.fs_type,
                f.dev
            );
        }
        if report.not_swept > 0 {
            println!(
                "{} other mount(s) not swept (pseudo, remote, cannot freeze, or not listed).",
                report.not_swept
            );
        }
    }
    eprintln!(
        "hv-vss: warning: --all-frozen thaws every frozen filesystem it reaches, including \
         freezes taken by other tools (backup agents, fsfreeze, a running hv-vssd); \
         `hv-vss thaw --recover` thaws only what hv-vss froze"
    );
    if !report.complete() {
        return fail(
            exit::INCOMPLETE,
            "some filesystems could not be thawed. Last resort: SysRq-j (emergency thaw: \
             `echo j > /proc/sysrq-trigger`)",
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: FreezeArgs,
    }

    /// `--hold` goes through the shared parser, capped at 24h before anything is frozen.
    #[test]
    fn freeze_hold_uses_the_shared_bounded_parser() {
        let hold = |value: &str| {
            Cli::try_parse_from(["freeze", "--hold", value])
                .map(|cli| cli.args.hold)
                .map_err(|e| e.to_string())
        };
        assert_eq!(hold("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(hold("0"), Ok(Duration::ZERO));
        let err = hold("10000000000000000000").unwrap_err();
        assert!(err.contains("maximum of 24h"), "{err}");
        assert!(
            Cli::try_parse_from(["freeze"]).unwrap().args.hold.is_zero(),
            "default hold"
        );
    }

    #[derive(Debug, Parser)]
    struct ThawCli {
        #[command(flatten)]
        args: ThawArgs,
    }

    /// `--recover` and `--all-frozen` are two actions: exactly one, and each its own flags.
    #[test]
    fn thaw_takes_exactly_one_action() {
        let parse = |argv: &[&str]| {
            ThawCli::try_parse_from(std::iter::once("thaw").chain(argv.iter().copied()))
                .map(|c| c.args)
        };
        let sweep = parse(&["--all-frozen", "--mount", "/a", "--mount", "/b"]).unwrap();
        assert!(sweep.all_frozen && !sweep.recover);
        assert_eq!(sweep.mounts, [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert!(parse(&["--recover"]).unwrap().recover);
        for bad in [
            &[][..],
            &["--recover", "--all-frozen"],
            &["--recover", "--mount", "/a"],
            &["--all-frozen", "--force"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
