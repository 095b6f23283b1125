//! `hv-vss uio bind|unbind|status`: hands the VSS VMBus device to `uio_hv_generic` and back
//! (wire-protocol.md §3.5, R16). A thin layer over `hv_vss_vmbus::bind`: parse the flags,
//! call the library, print, and map the error class to an exit code.
//!
//! Whether UIO mode works here is decided by trying the bind (undone on failure), not by
//! the kernel version, which is printed only as a hint: distribution kernels older than
//! 6.10 may carry the 2024 `uio_hv_generic` changes. A device with a monitor page is
//! refused before anything is written, since `write(1)` would never signal the host.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use hv_vss_vmbus::bind::{
    self, BindError, BindErrorKind, BindOptions, SystemRoots, UnbindOptions, VssDeviceStatus,
};

/// Exit status: the UIO mode cannot work on this machine.
pub const EXIT_UNSUPPORTED: u8 = 3;
/// Exit status: a process holds the device.
pub const EXIT_BUSY: u8 = 4;

const EXIT_CODES_HELP: &str = "\
Exit status:
  0  done (also when there was nothing to do)
  1  any other error (a sysfs write failed, uio_hv_generic took the device but no
     /dev/uioN appeared (undone), permission denied: run as root)
  2  command-line usage error
  3  not supported here: no VMBus (not a Hyper-V/Azure guest), no VSS device (Backup
     integration service off), the VSS channel has a monitor page (monitor_id in sysfs:
     replies would never reach the host), uio_hv_generic refused the device (a kernel
     without the 2024 series; the bind is undone), or uio_hv_generic not available
  4  busy: a process holds /dev/vmbus/hv_vss (bind) or /dev/uioN (unbind); stop it and retry";

/// The environment variable `--env-file` sets, for `EnvironmentFile=` in systemd units.
pub const ENV_VAR: &str = "HV_VSS_UIO_DEVICE";

#[derive(Debug, clap::Subcommand)]
#[command(after_help = EXIT_CODES_HELP)]
pub enum UioCommand {
    /// Bind the VSS device to uio_hv_generic; print its /dev/uioN path on stdout.
    ///
    /// Tries the bind and reports what happened (the driver refused the device, no
    /// /dev/uioN appeared), undoing it on failure; the kernel version is only a hint.
    /// Refuses a device with a monitor page and a /dev/vmbus/hv_vss held open by a daemon
    /// (hypervvssd, hv_vss_daemon, hv-vssd): stop it first. Does nothing if already bound.
    #[command(after_help = EXIT_CODES_HELP)]
    Bind(BindArgs),
    /// Give the VSS device back to hv_utils (/dev/vmbus/hv_vss reappears).
    ///
    /// Refuses while /dev/uioN is held open (a UIO daemon runs) unless --force. Does nothing
    /// if hv_utils already holds it.
    #[command(after_help = EXIT_CODES_HELP)]
    Unbind(UnbindArgs),
    /// Show which driver holds the VSS device, its uio node and ring size.
    #[command(after_help = EXIT_CODES_HELP)]
    Status(StatusArgs),
}

/// Where the kernel interfaces live; hidden, for tests against fake trees.
#[derive(Debug, clap::Args)]
pub struct RootArgs {
    #[arg(long, hide = true, default_value = "/sys")]
    sysfs_root: PathBuf,
    #[arg(long, hide = true, default_value = "/dev")]
    dev_root: PathBuf,
    #[arg(long, hide = true, default_value = "/proc")]
    proc_root: PathBuf,
    /// Use this instead of <proc-root>/sys/kernel/osrelease.
    #[arg(long, hide = true)]
    kernel_release: Option<String>,
}

impl RootArgs {
    fn roots(&self) -> SystemRoots {
        SystemRoots {
            sysfs: self.sysfs_root.clone(),
            dev: self.dev_root.clone(),
            proc: self.proc_root.clone(),
            kernel_release: self.kernel_release.clone(),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct BindArgs {
    /// The VSS device instance GUID (default: the only VSS device).
    #[arg(long, value_name = "GUID")]
    instance: Option<String>,
    /// Also write `HV_VSS_UIO_DEVICE=/dev/uioN` to FILE (for systemd's EnvironmentFile=).
    #[arg(long, value_name = "FILE")]
    env_file: Option<PathBuf>,
    /// How long to wait for the uio node to appear.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    timeout_ms: u64,
    /// The program that loads kernel modules.
    #[arg(long, hide = true, default_value = "modprobe")]
    modprobe: PathBuf,
    #[command(flatten)]
    roots: RootArgs,
}

#[derive(Debug, clap::Args)]
pub struct UnbindArgs {
    /// The VSS device instance GUID (default: the only VSS device).
    #[arg(long, value_name = "GUID")]
    instance: Option<String>,
    /// Unbind even while /dev/uioN is open; its holder then gets EIO, as on a rescind.
    #[arg(long)]
    force: bool,
    /// Remove this file (written by `bind --env-file`) once unbound.
    #[arg(long, value_name = "FILE")]
    env_file: Option<PathBuf>,
    /// How long to wait for hv_utils to take the device back.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    timeout_ms: u64,
    #[command(flatten)]
    roots: RootArgs,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The VSS device instance GUID (default: the only VSS device).
    #[arg(long, value_name = "GUID")]
    instance: Option<String>,
    /// Print one JSON object (on error: `{"error": ..., "kind": ...}`).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    roots: RootArgs,
}

pub fn run(cmd: UioCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        UioCommand::Bind(args) => run_bind(&args),
        UioCommand::Unbind(args) => run_unbind(&args),
        UioCommand::Status(args) => run_status(&args),
    }
}

fn exit_code(kind: BindErrorKind) -> ExitCode {
    match kind {
        BindErrorKind::Unsupported => ExitCode::from(EXIT_UNSUPPORTED),
        BindErrorKind::Busy => ExitCode::from(EXIT_BUSY),
        BindErrorKind::Failed => ExitCode::FAILURE,
    }
}

fn kind_name(kind: BindErrorKind) -> &'static str {
    match kind {
        BindErrorKind::Unsupported => "unsupported",
        BindErrorKind::Busy => "busy",
        BindErrorKind::Failed => "failed",
    }
}

fn report(err: &BindError) -> ExitCode {
    eprintln!("hv-vss: {err}");
    exit_code(err.kind())
}

/// Writes `file` through a temporary sibling and a rename, so a reader never sees half of it.
fn write_env_file(file: &Path, dev_path: &Path) -> anyhow::Result<()> {
    let tmp = file.with_extension("tmp");
    let content = format!("{ENV_VAR}={}\n", dev_path.display());
    fs::write(&tmp, content).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, file)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), file.display()))
}

fn run_bind(args: &BindArgs) -> anyhow::Result<ExitCode> {
    let options = BindOptions {
        instance: args.instance.clone(),
        modprobe: args.modprobe.clone(),
        uio_timeout: Duration::from_millis(args.timeout_ms),
    };
    let outcome = match bind::bind(&args.roots.roots(), &options) {
        Ok(outcome) => outcome,
        Err(err) => return Ok(report(&err)),
    };
    if let Some(file) = &args.env_file {
        write_env_file(file, &outcome.uio.dev_path)?;
    }
    let ring = outcome
        .uio
        .ring_size_bytes
        .map_or_else(|| "unknown".to_owned(), |n| format!("{n} bytes"));
    if outcome.already_bound {
        eprintln!(
            "hv-vss: VSS device {} was already bound to uio_hv_generic ({}, ring {ring})",
            outcome.instance,
            outcome.uio.dev_path.display()
        );
    } else {
        eprintln!(
            "hv-vss: VSS device {} bound to uio_hv_generic ({}, ring {ring}, {})",
            outcome.instance,
            outcome.uio.dev_path.display(),
            outcome.kernel
        );
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", outcome.uio.dev_path.display())?;
    Ok(ExitCode::SUCCESS)
}

fn run_unbind(args: &UnbindArgs) -> anyhow::Result<ExitCode> {
    let options = UnbindOptions {
        instance: args.instance.clone(),
        force: args.force,
        rebind_timeout: Duration::from_millis(args.timeout_ms),
    };
    let outcome = match bind::unbind(&args.roots.roots(), &options) {
        Ok(outcome) => outcome,
        Err(err) => return Ok(report(&err)),
    };
    if let Some(file) = &args.env_file {
        match fs::remove_file(file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove {}", file.display()));
            }
            _ => {}
        }
    }
    if outcome.was_bound {
        println!(
            "VSS device {} returned to {}",
            outcome.instance, outcome.driver_now
        );
    } else {
        println!(
            "VSS device {} is already on {}; nothing to do",
            outcome.instance, outcome.driver_now
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn status_json(status: &VssDeviceStatus, roots: &SystemRoots) -> serde_json::Value {
    let release = roots.kernel_release().ok();
    let hint = bind::KernelHint::from_release(release.as_deref());
    serde_json::json!({
        "instance": status.instance,
        "driver": status.driver.name(),
        "override_supported": status.override_supported,
        "driver_override": status.driver_override,
        "uio_device": status.uio.as_ref().map(|u| u.dev_path.display().to_string()),
        "uio_name": status.uio.as_ref().map(|u| u.name.clone()),
        "ring_size_bytes": status.uio.as_ref().and_then(|u| u.ring_size_bytes),
        "kernel_device": status.kernel_dev_node.as_ref().map(|p| p.display().to_string()),
        "kernel_release": release,
        "kernel_at_least_6_10": hint.at_least_6_10(),
        "monitor_page": status.monitor_page,
    })
}

fn run_status(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let roots = args.roots.roots();
    let status = match bind::status(&roots, args.instance.as_deref()) {
        Ok(status) => status,
        Err(err) if args.json => {
            let value = serde_json::json!({
                "error": err.to_string(),
                "kind": kind_name(err.kind()),
            });
            println!("{value}");
            return Ok(report(&err));
        }
        Err(err) => return Ok(report(&err)),
    };
    let value = status_json(&status, &roots);
    if args.json {
        println!("{value}");
        return Ok(ExitCode::SUCCESS);
    }
    let text = |key: &str| value[key].as_str().map(str::to_owned);
    let none = || "(none)".to_owned();
    println!("instance:        {}", status.instance);
    println!("driver:          {}", status.driver);
    let override_line = if status.override_supported {
        text("driver_override").unwrap_or_else(none)
    } else {
        "(attribute absent: new_id is used)".to_owned()
    };
    println!("driver_override: {override_line}");
    println!(
        "uio device:      {}",
        text("uio_device").unwrap_or_else(none)
    );
    if let Some(ring) = value["ring_size_bytes"].as_u64() {
        println!("ring size:       {ring} bytes per direction");
    }
    println!(
        "kernel device:   {}",
        text("kernel_device").unwrap_or_else(none)
    );
    if status.monitor_page {
        println!("monitor page:    yes: UIO mode is refused (replies would never reach the host)");
    }
    match (
        text("kernel_release"),
        value["kernel_at_least_6_10"].as_bool(),
    ) {
        (Some(release), Some(true)) => println!("kernel:          {release}"),
        (Some(release), _) => println!(
            "kernel:          {release} (older than {} or unrecognised: uio_hv_generic takes \
             the device only if this kernel carries the 2024 series; `hv-vss uio bind` tries)",
            bind::MIN_UIO_KERNEL
        ),
        (None, _) => println!("kernel:          (unknown)"),
    }
    Ok(ExitCode::SUCCESS)
}
