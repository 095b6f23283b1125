//! Handing the VSS VMBus device from `hv_utils` to `uio_hv_generic` and back
//! (wire-protocol.md §3.5, R1, R16).
//!
//! # Kernel contract
//!
//! - The VSS device is the directory under `<sysfs>/bus/vmbus/devices/` whose `class_id` reads
//!   `{35fa2e29-ea23-4236-96ae-3a6ebacba440}` (braces included). Its name is the *instance*
//!   GUID, which the host assigns: it is never hard-coded (R1).
//! - `uio_hv_generic` has no static id table. A device reaches it only through the instance's
//!   `driver_override` (preferred: per instance, the vmbus match then rejects every other
//!   driver) or through the driver's `new_id` with the bare class GUID (per class, and it also
//!   grabs every unbound device of that class at once). Writing the driver's `bind` without
//!   either fails with `ENODEV`.
//! - Writing the instance GUID to `hv_utils/unbind` removes `/dev/vmbus/hv_vss` and **blocks
//!   until every open fd on it is closed**. We therefore look for holders in `/proc/*/fd`
//!   first and refuse while one exists.
//! - `<sysfs>/bus/vmbus/drivers_probe` re-runs matching for one device; once
//!   `uio_hv_generic` has probed, `<inst>/uio/uioN` appears and the node is `/dev/uioN`.
//! - Map 0 (`<inst>/uio/uioN/maps/map0/size`, hex) holds both rings: ring size = size / 2
//!   (0x402000 on current kernels, 2 MiB + one page per ring; 4 MiB on older ones).
//! - Before the "Low speed Hyper-V devices support" series (Linux 6.10), `uio_hv_generic`
//!   refused channels without a monitor page (all ICs, VSS included: its probe fails with
//!   "vmbus channel requires hypercall") and never signalled the host on `write` (§3.1).
//!   Distribution kernels older than 6.10 may carry the series, and recent stable kernels
//!   with lower numbers may not: the version string decides nothing. [`bind`] **tries** the
//!   bind and reports what happened (the driver refused the device, no `/dev/uioN`
//!   appeared), undoing it on failure; the kernel version only goes into the message as a
//!   hint ([`KernelHint`]).
//! - `write(1)` on `/dev/uioN` signals the host only when the channel has no monitor page.
//!   `<inst>/monitor_id` exists exactly when it has one (§3.4); such a device is refused
//!   before anything is written ([`BindError::MonitorPage`]): its replies would never
//!   reach the host.
//! - The way back: unbind from `uio_hv_generic`, clear `driver_override` with an empty line
//!   (or `remove_id` the class), and `drivers_probe`: `hv_utils` matches statically.
//!
//! # Design
//!
//! Every filesystem root is injectable ([`SystemRoots`]): tests run the whole sequence
//! against a fake tree in a temp dir and play the kernel's part. Attribute writes never
//! create files (a missing attribute is an error naming it), each value is written in one
//! `write` call with a trailing newline, as `echo` would.
//!
//! The wait for `uio/uioN` is a short bounded poll loop (20 ms steps) rather than inotify:
//! it runs once per bind, and a poll loop also covers the `/dev/uioN` node, which devtmpfs
//! creates asynchronously.
//!
//! # Limitations
//!
//! - The holder check and the unbind write are not atomic: a process that opens
//!   `/dev/vmbus/hv_vss` in between makes the unbind write block until it closes the device.
//! - Reading other processes' `/proc/<pid>/fd` needs root; unreadable entries are skipped.
//! - A rescind and re-offer creates a new device object that `hv_utils` probes again, so the
//!   bind must be redone (§3.5 caveats); this module does not watch for that itself. The
//!   daemon does: after a rescind it finds the device again by class and calls [`bind`].

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hv_vss_protocol::guid::VSS_CLASS_GUID_STR;

mod discover;
mod error;

use discover::*;
pub use discover::{find_holders, find_vss_instances, select_instance, status};
pub use error::{BindError, BindErrorKind};
#[cfg(test)]
mod tests;

/// The generic Hyper-V UIO driver (and module) name.
pub const UIO_DRIVER: &str = "uio_hv_generic";
/// The kernel driver that serves VSS (and shutdown, time sync, heartbeat, KVP).
pub const KERNEL_DRIVER: &str = "hv_utils";
/// The first mainline kernel whose `uio_hv_generic` accepts channels without a monitor
/// page. Only a hint: see [`KernelHint`].
pub const MIN_UIO_KERNEL: KernelVersion = KernelVersion {
    major: 6,
    minor: 10,
    patch: 0,
};
/// `/dev/vmbus/hv_vss`, relative to the /dev root.
pub const KERNEL_DEV_NODE: &str = "vmbus/hv_vss";

/// Daemons known to hold `/dev/vmbus/hv_vss`, and the systemd units that start them.
const STOCK_DAEMON_HINT: &str = "stop it first (stock daemon: `systemctl stop hypervvssd.service \
     hv-vss-daemon.service`; hv-vss drop-in mode: `systemctl stop hv-vssd.service`)";

const POLL_STEP: Duration = Duration::from_millis(20);

/// Where the kernel's interfaces live. Production uses [`SystemRoots::host`]; tests point
/// every root into a temp dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemRoots {
    /// Normally `/sys`.
    pub sysfs: PathBuf,
    /// Normally `/dev`.
    pub dev: PathBuf,
    /// Normally `/proc`.
    pub proc: PathBuf,
    /// The kernel release (`uname -r`). `None`: read `<proc>/sys/kernel/osrelease`.
    pub kernel_release: Option<String>,
}

impl SystemRoots {
    /// The running system: `/sys`, `/dev`, `/proc`.
    pub fn host() -> Self {
        Self {
            sysfs: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
            proc: PathBuf::from("/proc"),
            kernel_release: None,
        }
    }

    /// `<root>/sys`, `<root>/dev`, `<root>/proc`: a fake tree laid out like `/`.
    pub fn under(root: &Path) -> Self {
        Self {
            sysfs: root.join("sys"),
            dev: root.join("dev"),
            proc: root.join("proc"),
            kernel_release: None,
        }
    }

    fn vmbus(&self) -> PathBuf {
        self.sysfs.join("bus/vmbus")
    }

    fn devices_dir(&self) -> PathBuf {
        self.vmbus().join("devices")
    }

    fn device_dir(&self, instance: &str) -> PathBuf {
        self.devices_dir().join(instance)
    }

    fn driver_dir(&self, driver: &str) -> PathBuf {
        self.vmbus().join("drivers").join(driver)
    }

    fn kernel_dev_node(&self) -> PathBuf {
        self.dev.join(KERNEL_DEV_NODE)
    }

    /// The kernel release string: the override, else `<proc>/sys/kernel/osrelease`.
    pub fn kernel_release(&self) -> Result<String, BindError> {
        if let Some(release) = &self.kernel_release {
            return Ok(release.clone());
        }
        let path = self.proc.join("sys/kernel/osrelease");
        fs::read_to_string(&path)
            .map(|s| s.trim().to_owned())
            .map_err(|source| BindError::Io {
                op: "read the kernel release",
                path,
                source,
            })
    }
}

/// A kernel version `major.minor.patch`, ordered numerically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Parses the numeric head of a kernel release (`uname -r`): `"6.10.0-1-azure"` → 6.10.0,
/// `"6.18.44-fc-v669"` → 6.18.44, `"6.10-rc1"` → 6.10.0. `None` when there is no
/// `major.minor` head or a number overflows. Never panics.
pub fn parse_kernel_release(release: &str) -> Option<KernelVersion> {
    let release = release.trim();
    let mut numbers = [0u32; 3];
    let mut count = 0;
    let mut rest = release;
    while count < 3 {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            break;
        }
        numbers[count] = rest[..digits].parse().ok()?;
        count += 1;
        rest = &rest[digits..];
        match rest.strip_prefix('.') {
            Some(after) if count < 3 => rest = after,
            _ => break,
        }
    }
    (count >= 2).then_some(KernelVersion {
        major: numbers[0],
        minor: numbers[1],
        patch: numbers[2],
    })
}

/// What the kernel release suggests about UIO mode. Only a hint, printed with the outcome
/// of a bind: whether `uio_hv_generic` takes the VSS device is decided by trying (module
/// docs), since distribution kernels below 6.10 may carry the 2024 series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelHint {
    /// `uname -r`, if readable.
    pub release: Option<String>,
    /// Its numeric head, if it parses.
    pub version: Option<KernelVersion>,
}

impl KernelHint {
    /// The hint for `release` (`None`: unreadable).
    pub fn from_release(release: Option<&str>) -> Self {
        Self {
            release: release.map(str::to_owned),
            version: release.and_then(parse_kernel_release),
        }
    }

    /// True when the version is known to be at least [`MIN_UIO_KERNEL`].
    pub fn at_least_6_10(&self) -> Option<bool> {
        self.version.map(|v| v >= MIN_UIO_KERNEL)
    }
}

impl fmt::Display for KernelHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let release = self.release.as_deref().unwrap_or("(unknown)");
        match self.at_least_6_10() {
            Some(true) => write!(f, "kernel {release}"),
            Some(false) => write!(
                f,
                "kernel {release}, older than {MIN_UIO_KERNEL}: uio_hv_generic takes the VSS \
                 device only if this kernel carries the 2024 \"Low speed Hyper-V devices \
                 support\" series"
            ),
            None => write!(f, "kernel {release} (version not recognised)"),
        }
    }
}

/// Which driver holds the VSS device now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundDriver {
    /// No driver (between an unbind and a probe, or nothing matched).
    Unbound,
    /// `hv_utils`: the kernel daemon interface `/dev/vmbus/hv_vss` (drop-in mode).
    HvUtils,
    /// `uio_hv_generic`: UIO mode.
    UioHvGeneric,
    /// Anything else; hv-vss does not touch it.
    Other(String),
}

impl BoundDriver {
    fn from_name(name: &str) -> Self {
        match name {
            KERNEL_DRIVER => Self::HvUtils,
            UIO_DRIVER => Self::UioHvGeneric,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The driver name, or `None` when unbound.
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Unbound => None,
            Self::HvUtils => Some(KERNEL_DRIVER),
            Self::UioHvGeneric => Some(UIO_DRIVER),
            Self::Other(name) => Some(name),
        }
    }
}

impl fmt::Display for BoundDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name().unwrap_or("(none)"))
    }
}

/// The UIO node of a bound VSS device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UioNode {
    /// `uioN`.
    pub name: String,
    /// `<dev>/uioN`.
    pub dev_path: PathBuf,
    /// Bytes per ring (map 0 size / 2); `None` if the map table is unreadable.
    pub ring_size_bytes: Option<u64>,
}

/// What [`status`] reports about the VSS device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VssDeviceStatus {
    /// The instance GUID (the sysfs directory name).
    pub instance: String,
    /// The driver bound now.
    pub driver: BoundDriver,
    /// Whether the device has a `driver_override` attribute.
    pub override_supported: bool,
    /// The override in force, if any (`(null)` and an empty line read as `None`).
    pub driver_override: Option<String>,
    /// The UIO node, when bound to `uio_hv_generic` and probed.
    pub uio: Option<UioNode>,
    /// `<dev>/vmbus/hv_vss`, when it exists (bound to `hv_utils`).
    pub kernel_dev_node: Option<PathBuf>,
    /// The channel has a monitor page (`<inst>/monitor_id` exists): UIO mode is refused.
    pub monitor_page: bool,
}

/// How the device was steered to `uio_hv_generic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideMethod {
    /// `<inst>/driver_override` (per instance).
    DriverOverride,
    /// `uio_hv_generic/new_id` with the class GUID (per class; old kernels without
    /// `driver_override`).
    NewId,
}

/// Options of [`bind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindOptions {
    /// The instance to bind; `None`: the only VSS device.
    pub instance: Option<String>,
    /// The program that loads `uio_hv_generic` when its driver directory is absent.
    pub modprobe: PathBuf,
    /// How long to wait for `<inst>/uio/uioN` and `/dev/uioN`.
    pub uio_timeout: Duration,
}

impl Default for BindOptions {
    fn default() -> Self {
        Self {
            instance: None,
            modprobe: PathBuf::from("modprobe"),
            uio_timeout: Duration::from_secs(5),
        }
    }
}

/// Options of [`unbind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnbindOptions {
    /// The instance to give back; `None`: the only VSS device.
    pub instance: Option<String>,
    /// Unbind even while `/dev/uioN` is open (its holder then gets `EIO`, as on a rescind).
    pub force: bool,
    /// How long to wait for `hv_utils` to take the device back.
    pub rebind_timeout: Duration,
}

impl Default for UnbindOptions {
    fn default() -> Self {
        Self {
            instance: None,
            force: false,
            rebind_timeout: Duration::from_secs(5),
        }
    }
}

/// The result of [`bind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindOutcome {
    pub instance: String,
    pub uio: UioNode,
    /// It was bound to `uio_hv_generic` already; nothing was written.
    pub already_bound: bool,
    /// How the device was steered, when something was written.
    pub method: Option<OverrideMethod>,
    /// What the kernel release suggested (a hint only).
    pub kernel: KernelHint,
}

/// The result of [`unbind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnbindOutcome {
    pub instance: String,
    /// It was bound to `uio_hv_generic` before.
    pub was_bound: bool,
    /// The driver after the call (`hv_utils` on success).
    pub driver_now: BoundDriver,
}

/// A process holding a device node open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// `/proc/<pid>/comm`, or `?` if unreadable.
    pub comm: String,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} ({})", self.pid, self.comm)
    }
}

/// Writes one sysfs attribute in one `write` call. Never creates the file.
fn write_attr(path: &Path, value: &str) -> Result<(), BindError> {
    tracing::info!(op = "sysfs_write", path = %path.display(), value, "writing sysfs attribute");
    let result = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut file| file.write_all(format!("{value}\n").as_bytes()));
    result.map_err(|source| match source.kind() {
        io::ErrorKind::PermissionDenied => BindError::PermissionDenied {
            path: path.to_owned(),
        },
        _ => BindError::Io {
            op: "write",
            path: path.to_owned(),
            source,
        },
    })
}

fn load_uio_module(roots: &SystemRoots, modprobe: &Path) -> Result<(), BindError> {
    let driver_dir = roots.driver_dir(UIO_DRIVER);
    if driver_dir.is_dir() {
        return Ok(());
    }
    tracing::info!(
        op = "modprobe",
        module = UIO_DRIVER,
        "loading kernel module"
    );
    let output = Command::new(modprobe)
        .arg(UIO_DRIVER)
        .output()
        .map_err(|source| BindError::ModprobeFailed {
            program: modprobe.to_owned(),
            source,
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        return Err(BindError::ModuleMissing {
            module: UIO_DRIVER.to_owned(),
            detail: if stderr.is_empty() {
                format!("{} exited with {}", modprobe.display(), output.status)
            } else {
                stderr
            },
        });
    }
    if !driver_dir.is_dir() {
        return Err(BindError::ModuleMissing {
            module: UIO_DRIVER.to_owned(),
            detail: format!("loaded, but {} did not appear", driver_dir.display()),
        });
    }
    Ok(())
}

/// Polls until `probe` returns `Some`, or `timeout` passes.
fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL_STEP);
    }
}

fn wait_for_uio(roots: &SystemRoots, instance: &str, timeout: Duration) -> Option<UioNode> {
    let device_dir = roots.device_dir(instance);
    wait_for(timeout, || {
        read_uio(roots, &device_dir).filter(|uio| uio.dev_path.exists())
    })
}

/// Removes the steering towards `uio_hv_generic`: an empty line in `driver_override`, or the
/// class GUID in `remove_id` when there is no override attribute.
fn clear_override(roots: &SystemRoots, status: &VssDeviceStatus) -> Result<(), BindError> {
    if status.override_supported {
        if status.driver_override.is_some() {
            write_attr(
                &roots.device_dir(&status.instance).join("driver_override"),
                "",
            )?;
        }
        return Ok(());
    }
    let remove_id = roots.driver_dir(UIO_DRIVER).join("remove_id");
    if !remove_id.exists() {
        return Ok(());
    }
    match write_attr(&remove_id, VSS_CLASS_GUID_STR) {
        // ENODEV: the class was never added; nothing to remove.
        Err(BindError::Io { source, .. }) if source.raw_os_error() == Some(19) => Ok(()),
        other => other,
    }
}

/// Hands the VSS device to `uio_hv_generic` (wire §3.5) and returns its uio node.
///
/// Order: VMBus present → instance → monitor page? (refused, nothing written) → already
/// bound? → holders of `/dev/vmbus/hv_vss` → load the module → `driver_override` (or
/// `new_id`) → `hv_utils/unbind` → `drivers_probe` → wait for `uio/uioN` and `/dev/uioN`.
/// Idempotent: a device already bound to `uio_hv_generic` is reported, not touched.
///
/// Eligibility is decided by trying, not by the kernel version (module docs). If the
/// driver does not take the device ([`BindError::DriverRefused`]) or takes it without a
/// node appearing ([`BindError::UioTimeout`]), the bind is undone (unbound from
/// `uio_hv_generic` if needed, steering cleared, probed again so `hv_utils` takes it back)
/// and the error says whether that worked; the kernel version rides along as a hint.
pub fn bind(roots: &SystemRoots, options: &BindOptions) -> Result<BindOutcome, BindError> {
    require_vmbus(roots)?;
    let kernel = KernelHint::from_release(roots.kernel_release().ok().as_deref());
    let instance = select_instance(roots, options.instance.as_deref())?;
    let monitor_id = roots.device_dir(&instance).join("monitor_id");
    if monitor_id.exists() {
        return Err(BindError::MonitorPage {
            instance,
            monitor_id,
        });
    }
    let before = status_of(roots, &instance);
    match &before.driver {
        BoundDriver::UioHvGeneric => {
            let uio = wait_for_uio(roots, &instance, options.uio_timeout).ok_or_else(|| {
                BindError::UioTimeout {
                    instance: instance.clone(),
                    waited_ms: options.uio_timeout.as_millis(),
                    rolled_back: false,
                }
            })?;
            tracing::info!(op = "uio_bind", instance, uio = %uio.dev_path.display(), "already bound");
            return Ok(BindOutcome {
                instance,
                uio,
                already_bound: true,
                method: None,
                kernel,
            });
        }
        BoundDriver::Other(driver) => {
            return Err(BindError::UnexpectedDriver {
                instance,
                driver: driver.clone(),
            });
        }
        BoundDriver::HvUtils | BoundDriver::Unbound => {}
    }
    if before.driver == BoundDriver::HvUtils {
        let device = roots.kernel_dev_node();
        let holders = find_holders(&roots.proc, &device);
        if !holders.is_empty() {
            return Err(BindError::Busy {
                device,
                holders,
                hint: STOCK_DAEMON_HINT.to_owned(),
            });
        }
    }
    load_uio_module(roots, &options.modprobe)?;

    let device_dir = roots.device_dir(&instance);
    let method = if before.override_supported {
        write_attr(&device_dir.join("driver_override"), UIO_DRIVER)?;
        OverrideMethod::DriverOverride
    } else {
        write_attr(
            &roots.driver_dir(UIO_DRIVER).join("new_id"),
            VSS_CLASS_GUID_STR,
        )?;
        OverrideMethod::NewId
    };
    if before.driver == BoundDriver::HvUtils {
        // Blocks while /dev/vmbus/hv_vss is open; checked above.
        write_attr(&roots.driver_dir(KERNEL_DRIVER).join("unbind"), &instance)?;
    }
    // With new_id the kernel may already have probed the device; probing again is harmless.
    write_attr(&roots.vmbus().join("drivers_probe"), &instance)?;

    if let Some(uio) = wait_for_uio(roots, &instance, options.uio_timeout) {
        tracing::info!(op = "uio_bind", instance, uio = %uio.dev_path.display(), ?method, %kernel, "bound");
        return Ok(BindOutcome {
            instance,
            uio,
            already_bound: false,
            method: Some(method),
            kernel,
        });
    }
    // The attempt failed: say how, and undo it.
    let now = status_of(roots, &instance);
    let took_it = now.driver == BoundDriver::UioHvGeneric;
    let rolled_back = undo_bind(roots, &now);
    tracing::warn!(op = "uio_bind", instance, driver_now = %now.driver, rolled_back, %kernel, "bind failed");
    if took_it {
        Err(BindError::UioTimeout {
            instance,
            waited_ms: options.uio_timeout.as_millis(),
            rolled_back,
        })
    } else {
        Err(BindError::DriverRefused {
            instance,
            driver_now: now.driver,
            rolled_back,
            kernel,
        })
    }
}

/// Undoes a failed bind (best effort): unbind from `uio_hv_generic` if it holds the device,
/// clear the steering, probe again so `hv_utils` takes it. True when every write worked.
fn undo_bind(roots: &SystemRoots, now: &VssDeviceStatus) -> bool {
    let unbound = now.driver != BoundDriver::UioHvGeneric
        || write_attr(&roots.driver_dir(UIO_DRIVER).join("unbind"), &now.instance).is_ok();
    unbound
        && clear_override(roots, now).is_ok()
        && write_attr(&roots.vmbus().join("drivers_probe"), &now.instance).is_ok()
}

/// Gives the VSS device back to `hv_utils` (wire §3.5 step 6).
///
/// Order: holders of `/dev/uioN` (refused unless `force`) → `uio_hv_generic/unbind` → clear
/// `driver_override` (or `remove_id`) → `drivers_probe` → wait for `hv_utils`. Idempotent: a
/// device already on `hv_utils` only has a stale override cleared. Works on any kernel.
pub fn unbind(roots: &SystemRoots, options: &UnbindOptions) -> Result<UnbindOutcome, BindError> {
    let instance = select_instance(roots, options.instance.as_deref())?;
    let before = status_of(roots, &instance);
    match &before.driver {
        BoundDriver::HvUtils => {
            if before.driver_override.as_deref() == Some(UIO_DRIVER) {
                clear_override(roots, &before)?;
            }
            return Ok(UnbindOutcome {
                instance,
                was_bound: false,
                driver_now: BoundDriver::HvUtils,
            });
        }
        BoundDriver::Other(driver) => {
            return Err(BindError::UnexpectedDriver {
                instance,
                driver: driver.clone(),
            });
        }
        BoundDriver::UioHvGeneric => {
            if let Some(uio) = &before.uio {
                let holders = find_holders(&roots.proc, &uio.dev_path);
                if !holders.is_empty() && !options.force {
                    return Err(BindError::Busy {
                        device: uio.dev_path.clone(),
                        holders,
                        hint: "stop the UIO daemon first (`systemctl stop hv-vssd-uio.service`), \
                               or pass --force: the holder then sees EIO, as on a rescind"
                            .to_owned(),
                    });
                }
            }
            write_attr(&roots.driver_dir(UIO_DRIVER).join("unbind"), &instance)?;
        }
        BoundDriver::Unbound => {}
    }
    clear_override(roots, &before)?;
    write_attr(&roots.vmbus().join("drivers_probe"), &instance)?;
    let device_dir = roots.device_dir(&instance);
    let back = wait_for(options.rebind_timeout, || {
        (read_driver(&device_dir) == BoundDriver::HvUtils).then_some(())
    });
    if back.is_none() {
        return Err(BindError::RebindTimeout {
            instance,
            waited_ms: options.rebind_timeout.as_millis(),
            driver_now: read_driver(&device_dir),
        });
    }
    tracing::info!(op = "uio_unbind", instance, "returned to hv_utils");
    Ok(UnbindOutcome {
        instance,
        was_bound: before.driver == BoundDriver::UioHvGeneric,
        driver_now: BoundDriver::HvUtils,
    })
}
