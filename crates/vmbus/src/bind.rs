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

/// Broad classes of [`BindError`], for exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindErrorKind {
    /// UIO mode cannot work on this machine: no VMBus, no VSS device, a monitor page, the
    /// driver refused the device, module missing.
    Unsupported,
    /// A process holds the device; stop it and retry.
    Busy,
    /// Anything else.
    Failed,
}

/// Why a bind, unbind or status query failed. Every message names the cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "no VMBus: {} does not exist; this is not a Hyper-V/Azure guest (or the hv_vmbus driver \
         is not loaded), so there is no VSS device",
        path.display()
    )]
    NoVmbus { path: PathBuf },

    #[error(
        "no VSS device (is the Backup integration service enabled on the host?): no device under \
         {} has class_id {{{VSS_CLASS_GUID_STR}}}; enable \"Backup (volume shadow copy)\" in the \
         VM's Integration Services settings",
        devices_dir.display()
    )]
    NoVssDevice { devices_dir: PathBuf },

    #[error(
        "several VSS devices found ({}); choose one with --instance GUID",
        instances.join(", ")
    )]
    SeveralVssDevices { instances: Vec<String> },

    #[error(
        "{instance} is not a VSS device (VSS devices here: {}); pass one of those to --instance",
        if found.is_empty() { "none".to_owned() } else { found.join(", ") }
    )]
    UnknownInstance {
        instance: String,
        found: Vec<String>,
    },

    #[error(
        "VSS device {instance} has a monitor page ({}): uio_hv_generic does not signal the \
         host for such channels, so replies would never reach it; UIO mode is refused, use \
         drop-in mode over /dev/vmbus/hv_vss",
        monitor_id.display()
    )]
    MonitorPage {
        instance: String,
        monitor_id: PathBuf,
    },

    #[error(
        "{UIO_DRIVER} refused VSS device {instance} (driver after the probe: {driver_now}; {}); \
         {kernel}. `dmesg` names the reason (\"vmbus channel requires hypercall\": this kernel \
         lacks the 2024 series); use drop-in mode on this kernel",
        if *rolled_back { "the device was handed back to hv_utils" }
        else { "the device may be left without a driver: run `hv-vss uio unbind`" }
    )]
    DriverRefused {
        instance: String,
        driver_now: BoundDriver,
        rolled_back: bool,
        kernel: KernelHint,
    },

    #[error(
        "kernel module {module} is not available ({detail}); install the kernel's extra modules \
         package (for example linux-modules-extra-$(uname -r)) or use drop-in mode"
    )]
    ModuleMissing { module: String, detail: String },

    #[error(
        "cannot run {} to load {UIO_DRIVER}: {source}; install kmod or load the module by hand",
        program.display()
    )]
    ModprobeFailed {
        program: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "VSS device {instance} is bound to driver {driver}, not to {KERNEL_DRIVER} or \
         {UIO_DRIVER}; hv-vss leaves it alone: unbind it by hand first"
    )]
    UnexpectedDriver { instance: String, driver: String },

    #[error(
        "device busy: {} is held by {}; {hint}",
        device.display(),
        holders.iter().map(Holder::to_string).collect::<Vec<_>>().join(", ")
    )]
    Busy {
        device: PathBuf,
        holders: Vec<Holder>,
        hint: String,
    },

    #[error(
        "{UIO_DRIVER} took {instance} but no /dev/uioN appeared within {waited_ms} ms ({}); \
         check `dmesg` and udev",
        if *rolled_back { "the bind was undone and the device handed back to hv_utils" }
        else { "the device may be left without a driver: run `hv-vss uio unbind`" }
    )]
    UioTimeout {
        instance: String,
        waited_ms: u128,
        rolled_back: bool,
    },

    #[error(
        "{KERNEL_DRIVER} did not take {instance} back within {waited_ms} ms (driver now: \
         {driver_now}); check `dmesg`, then write the instance to \
         /sys/bus/vmbus/drivers/hv_utils/bind"
    )]
    RebindTimeout {
        instance: String,
        waited_ms: u128,
        driver_now: BoundDriver,
    },

    #[error("permission denied writing {}: run as root", path.display())]
    PermissionDenied { path: PathBuf },

    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl BindError {
    /// The class of this error, for exit codes.
    pub fn kind(&self) -> BindErrorKind {
        match self {
            Self::NoVmbus { .. }
            | Self::NoVssDevice { .. }
            | Self::MonitorPage { .. }
            | Self::DriverRefused { .. }
            | Self::ModuleMissing { .. } => BindErrorKind::Unsupported,
            Self::Busy { .. } => BindErrorKind::Busy,
            _ => BindErrorKind::Failed,
        }
    }
}

fn require_vmbus(roots: &SystemRoots) -> Result<(), BindError> {
    let path = roots.vmbus();
    if path.is_dir() {
        Ok(())
    } else {
        Err(BindError::NoVmbus { path })
    }
}

/// `true` when a `class_id` attribute names the VSS class (`{guid}`, any case).
fn is_vss_class(class_id: &str) -> bool {
    let trimmed = class_id.trim();
    let bare = trimmed
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(trimmed);
    bare.eq_ignore_ascii_case(VSS_CLASS_GUID_STR)
}

/// The instance GUIDs of every VSS device, sorted. Devices whose `class_id` is unreadable
/// are skipped.
pub fn find_vss_instances(roots: &SystemRoots) -> Result<Vec<String>, BindError> {
    require_vmbus(roots)?;
    let devices_dir = roots.devices_dir();
    let entries = fs::read_dir(&devices_dir).map_err(|source| BindError::Io {
        op: "list VMBus devices in",
        path: devices_dir.clone(),
        source,
    })?;
    let mut found: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|entry| {
            fs::read_to_string(entry.path().join("class_id")).is_ok_and(|id| is_vss_class(&id))
        })
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    found.sort();
    Ok(found)
}

/// The VSS instance to act on: `wanted` if it is a VSS device, else the only one.
pub fn select_instance(roots: &SystemRoots, wanted: Option<&str>) -> Result<String, BindError> {
    let found = find_vss_instances(roots)?;
    match wanted {
        Some(wanted) => {
            let wanted = wanted.trim().trim_start_matches('{').trim_end_matches('}');
            found
                .iter()
                .find(|inst| inst.eq_ignore_ascii_case(wanted))
                .cloned()
                .ok_or_else(|| BindError::UnknownInstance {
                    instance: wanted.to_owned(),
                    found: found.clone(),
                })
        }
        None => match found.as_slice() {
            [] => Err(BindError::NoVssDevice {
                devices_dir: roots.devices_dir(),
            }),
            [only] => Ok(only.clone()),
            _ => Err(BindError::SeveralVssDevices { instances: found }),
        },
    }
}

/// `true` if an fd link target (`readlink /proc/<pid>/fd/<n>`) names `device`, including
/// the kernel's ` (deleted)` suffix for a node removed while open.
fn link_names(target: &Path, device: &Path) -> bool {
    if target == device {
        return true;
    }
    let target = target.as_os_str().as_encoded_bytes();
    let device = device.as_os_str().as_encoded_bytes();
    target.strip_suffix(b" (deleted)") == Some(device)
}

/// The processes that hold `device` open, found through `<proc>/<pid>/fd/*` links.
/// Unreadable processes (gone, or not ours without root) are skipped. Sorted by pid.
pub fn find_holders(proc_root: &Path, device: &Path) -> Vec<Holder> {
    let Ok(entries) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut holders: Vec<Holder> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let fds = fs::read_dir(entry.path().join("fd")).ok()?;
            let holds = fds
                .filter_map(Result::ok)
                .any(|fd| fs::read_link(fd.path()).is_ok_and(|t| link_names(&t, device)));
            holds.then(|| Holder {
                pid,
                comm: fs::read_to_string(entry.path().join("comm"))
                    .map(|c| c.trim().to_owned())
                    .unwrap_or_else(|_| "?".to_owned()),
            })
        })
        .collect();
    holders.sort_by_key(|h| h.pid);
    holders
}

fn read_driver(device_dir: &Path) -> BoundDriver {
    match fs::read_link(device_dir.join("driver")) {
        Ok(target) => target
            .file_name()
            .and_then(|n| n.to_str())
            .map_or(BoundDriver::Unbound, BoundDriver::from_name),
        Err(_) => BoundDriver::Unbound,
    }
}

/// Parses a uio map `size` attribute (`0x400000`, or decimal). Never panics.
fn parse_map_size(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// `true` for `uio` followed by decimal digits.
fn is_uio_name(name: &str) -> bool {
    name.strip_prefix("uio")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn read_uio(roots: &SystemRoots, device_dir: &Path) -> Option<UioNode> {
    let uio_dir = device_dir.join("uio");
    let mut names: Vec<String> = fs::read_dir(&uio_dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_uio_name(n))
        .collect();
    names.sort();
    let name = names.into_iter().next()?;
    let ring_size_bytes = fs::read_to_string(uio_dir.join(&name).join("maps/map0/size"))
        .ok()
        .and_then(|s| parse_map_size(&s))
        .map(|size| size / 2);
    Some(UioNode {
        dev_path: roots.dev.join(&name),
        name,
        ring_size_bytes,
    })
}

fn read_override(device_dir: &Path) -> (bool, Option<String>) {
    match fs::read_to_string(device_dir.join("driver_override")) {
        Ok(text) => {
            let text = text.trim();
            let value = (!text.is_empty() && text != "(null)").then(|| text.to_owned());
            (true, value)
        }
        Err(_) => (device_dir.join("driver_override").exists(), None),
    }
}

fn status_of(roots: &SystemRoots, instance: &str) -> VssDeviceStatus {
    let device_dir = roots.device_dir(instance);
    let (override_supported, driver_override) = read_override(&device_dir);
    let kernel_dev_node = roots.kernel_dev_node();
    VssDeviceStatus {
        instance: instance.to_owned(),
        driver: read_driver(&device_dir),
        override_supported,
        driver_override,
        uio: read_uio(roots, &device_dir),
        kernel_dev_node: kernel_dev_node.exists().then_some(kernel_dev_node),
        monitor_page: device_dir.join("monitor_id").exists(),
    }
}

/// Which driver holds the VSS device, its uio node and ring size. Reads only.
pub fn status(roots: &SystemRoots, instance: Option<&str>) -> Result<VssDeviceStatus, BindError> {
    let instance = select_instance(roots, instance)?;
    Ok(status_of(roots, &instance))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32, patch: u32) -> KernelVersion {
        KernelVersion {
            major,
            minor,
            patch,
        }
    }

    #[test]
    fn parses_real_release_strings() {
        assert_eq!(parse_kernel_release("6.10.0-1-azure"), Some(v(6, 10, 0)));
        assert_eq!(parse_kernel_release("5.15.0-1057-azure"), Some(v(5, 15, 0)));
        assert_eq!(parse_kernel_release("6.18.44-fc-v669"), Some(v(6, 18, 44)));
        assert_eq!(parse_kernel_release("6.10-rc1"), Some(v(6, 10, 0)));
        assert_eq!(parse_kernel_release("6.9\n"), Some(v(6, 9, 0)));
        assert_eq!(
            parse_kernel_release("4.18.0-553.el8_10.x86_64"),
            Some(v(4, 18, 0))
        );
        assert_eq!(parse_kernel_release("6.1.2.3"), Some(v(6, 1, 2)));
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in [
            "",
            "6",
            "6.",
            ".10",
            "azure-6.10",
            "99999999999.1",
            "6.99999999999",
            "é.1",
            "6.é",
        ] {
            assert_eq!(parse_kernel_release(bad), None, "{bad:?}");
        }
    }

    /// The version is a hint only: it never refuses, it only shapes the message.
    #[test]
    fn kernel_version_is_only_a_hint() {
        let new = KernelHint::from_release(Some("6.10.0-1-azure"));
        assert_eq!(new.version, Some(v(6, 10, 0)));
        assert_eq!(new.at_least_6_10(), Some(true));
        assert_eq!(new.to_string(), "kernel 6.10.0-1-azure");
        let old = KernelHint::from_release(Some("5.15.0-1057-azure"));
        assert_eq!(old.at_least_6_10(), Some(false));
        let msg = old.to_string();
        assert!(
            msg.contains("5.15.0-1057-azure") && msg.contains("6.10"),
            "{msg}"
        );
        assert!(msg.contains("only if this kernel carries"), "{msg}");
        let odd = KernelHint::from_release(Some("banana"));
        assert_eq!(odd.at_least_6_10(), None);
        assert!(odd.to_string().contains("not recognised"));
        assert_eq!(KernelHint::from_release(None).release, None);
    }

    #[test]
    fn class_id_match_takes_braces_and_case() {
        assert!(is_vss_class("{35fa2e29-ea23-4236-96ae-3a6ebacba440}\n"));
        assert!(is_vss_class("{35FA2E29-EA23-4236-96AE-3A6EBACBA440}"));
        assert!(is_vss_class("35fa2e29-ea23-4236-96ae-3a6ebacba440"));
        assert!(!is_vss_class("{34d14be3-dee4-41c8-9ae7-6b174977c192}"));
        assert!(!is_vss_class("{35fa2e29-ea23-4236-96ae-3a6ebacba44}"));
    }

    #[test]
    fn map_size_parses_hex_and_decimal() {
        assert_eq!(parse_map_size("0x400000\n"), Some(0x40_0000));
        assert_eq!(parse_map_size("4096"), Some(4096));
        assert_eq!(parse_map_size("0xzz"), None);
        assert_eq!(parse_map_size(""), None);
    }

    #[test]
    fn uio_names() {
        assert!(is_uio_name("uio0"));
        assert!(is_uio_name("uio13"));
        assert!(!is_uio_name("uio"));
        assert!(!is_uio_name("uiox"));
        assert!(!is_uio_name("event"));
    }

    #[test]
    fn deleted_links_still_name_the_device() {
        let dev = Path::new("/dev/vmbus/hv_vss");
        assert!(link_names(Path::new("/dev/vmbus/hv_vss"), dev));
        assert!(link_names(Path::new("/dev/vmbus/hv_vss (deleted)"), dev));
        assert!(!link_names(Path::new("/dev/vmbus/hv_vss2"), dev));
        assert!(!link_names(Path::new("/dev/null"), dev));
    }

    #[test]
    fn finds_holders_in_a_fake_proc() {
        let tmp = tempfile::tempdir().unwrap();
        let proc_root = tmp.path();
        let device = Path::new("/dev/vmbus/hv_vss");
        for (pid, comm, target) in [
            (812, "hypervvssd", "/dev/vmbus/hv_vss"),
            (900, "bash", "/dev/pts/0"),
            (77, "hv_vss_daemon", "/dev/vmbus/hv_vss (deleted)"),
        ] {
            let fd_dir = proc_root.join(pid.to_string()).join("fd");
            fs::create_dir_all(&fd_dir).unwrap();
            std::os::unix::fs::symlink(target, fd_dir.join("3")).unwrap();
            fs::write(
                proc_root.join(pid.to_string()).join("comm"),
                format!("{comm}\n"),
            )
            .unwrap();
        }
        fs::create_dir_all(proc_root.join("self/fd")).unwrap();
        fs::create_dir_all(proc_root.join("sys")).unwrap();
        let holders = find_holders(proc_root, device);
        assert_eq!(
            holders,
            vec![
                Holder {
                    pid: 77,
                    comm: "hv_vss_daemon".into()
                },
                Holder {
                    pid: 812,
                    comm: "hypervvssd".into()
                },
            ]
        );
    }

    #[test]
    fn finds_this_process_as_a_holder_in_real_proc() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let path = fs::canonicalize(tmp.path()).unwrap();
        let holders = find_holders(Path::new("/proc"), &path);
        assert!(
            holders.iter().any(|h| h.pid == std::process::id()),
            "{holders:?}"
        );
    }
}
