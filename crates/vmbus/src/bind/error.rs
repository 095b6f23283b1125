//! Why a bind, unbind or status query failed, and the class of each failure for exit codes.

use super::*;

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
