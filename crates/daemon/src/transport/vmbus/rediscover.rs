//! Finding the VSS device again after a `/dev/uioN` transport was lost (R15, wire §3.3 step
//! 5, §3.5 caveats).
//!
//! # Kernel contract
//!
//! - A rescind (the host turns the Backup service off, or moves the device) makes calls on
//!   `/dev/uioN` fail (`EIO` from `read`, `EINVAL` from `write`, `POLLERR` from `poll`), and
//!   `uio_hv_generic` unregisters the device and frees the ring pages. A later
//!   offer creates a **new** device object under `/sys/bus/vmbus/devices/<inst>`; its
//!   instance GUID may or may not be the old one, and nothing promises the old `uioN`.
//! - `hv_utils` matches the VSS class statically and `uio_hv_generic` has no id table, so the
//!   new device normally lands on `hv_utils` again: the `driver_override` of the old object
//!   died with it. It must be handed over again exactly as `hv-vss uio bind` does (§3.5).
//! - Once `uio_hv_generic` has probed, `<inst>/uio/uioN` and `/dev/uioN` appear
//!   (devtmpfs creates the node asynchronously).
//!
//! # Design
//!
//! [`locate`] reads sysfs and says where the device stands ([`DeviceState`]); it writes
//! nothing. [`UioRediscovery::attempt`] turns that into one step: open the node, start a
//! bind, or keep waiting. The bind ([`hv_vss_vmbus::bind::bind`]) polls for the node for up
//! to [`BIND_TIMEOUT`], and its `hv_utils/unbind` write blocks while `/dev/vmbus/hv_vss` is
//! open, so it runs on its own thread; the main loop only asks whether it has finished, and
//! stays free for signals, the watchdog and the filesystem worker. Waiting between attempts
//! is the caller's backoff. Every root (`/sys`, `/dev`) is injectable through
//! [`SystemRoots`], so the whole sequence runs against a fake tree in tests.
//!
//! # Limitations
//!
//! - A device that is still unbound when looked at (between the offer and `hv_utils`' probe)
//!   is bound at once; if `hv_utils` wins that race, the bind times out, hands the device
//!   back, and the next attempt binds it from `hv_utils`.
//! - `hv-vss uio unbind --force` while the daemon runs looks exactly like a rescind from
//!   here (`EIO`/`EINVAL`/`POLLERR`, then the device on `hv_utils`): the daemon takes the
//!   device back. Stop the daemon to give the device back for good.
//! - A bind thread still running when the daemon exits is abandoned with the process; the
//!   device may then be left without a driver (`hv-vss uio unbind` repairs it).

use std::fmt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use hv_vss_sys::uio::UioPaths;
use hv_vss_vmbus::bind::{
    self, BindError, BindOptions, BindOutcome, BoundDriver, SystemRoots, VssDeviceStatus,
};

use super::{VmbusError, open_uio_node, uio_index};
use crate::transport::{Transport, TransportError};

/// How long one bind waits for `uio/uioN` and `/dev/uioN` before handing the device back.
pub const BIND_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the VSS device stands, as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceState {
    /// No VSS device: the host has not offered it again (yet).
    Absent,
    /// On `uio_hv_generic` with its node: open `node`.
    Ready { instance: String, node: PathBuf },
    /// On `uio_hv_generic`, but `uio/uioN` or `/dev/uioN` is not there yet.
    Probing { instance: String },
    /// On `hv_utils` (it matched the new device statically) or on no driver: hand it to
    /// `uio_hv_generic`.
    NeedsBind {
        instance: String,
        driver: BoundDriver,
    },
    /// On a driver hv-vss does not touch.
    Foreign { instance: String, driver: String },
    /// Sysfs does not say (no VMBus, several VSS devices, unreadable).
    Unknown { reason: String },
}

/// Where the VSS device is now. `previous` (the instance we last used) chooses among
/// several VSS devices; with one device it is ignored, since a re-offer may bring a new
/// instance GUID. Reads only.
pub fn locate(roots: &SystemRoots, previous: Option<&str>) -> DeviceState {
    let instances = match bind::find_vss_instances(roots) {
        Ok(found) => found,
        Err(e) => {
            return DeviceState::Unknown {
                reason: e.to_string(),
            };
        }
    };
    let wanted = match (instances.as_slice(), previous) {
        ([], _) => return DeviceState::Absent,
        ([only], _) => only.as_str(),
        (several, Some(prev)) if several.iter().any(|i| i.eq_ignore_ascii_case(prev)) => prev,
        (several, _) => {
            return DeviceState::Unknown {
                reason: format!(
                    "several VSS devices ({}) and none is the one we used",
                    several.join(", ")
                ),
            };
        }
    };
    match bind::status(roots, Some(wanted)) {
        // The device went away between the listing and the status read.
        Err(BindError::UnknownInstance { .. } | BindError::NoVssDevice { .. }) => {
            DeviceState::Absent
        }
        Err(e) => DeviceState::Unknown {
            reason: e.to_string(),
        },
        Ok(status) => classify(status),
    }
}

fn classify(status: VssDeviceStatus) -> DeviceState {
    let VssDeviceStatus {
        instance,
        driver,
        uio,
        ..
    } = status;
    match driver {
        BoundDriver::UioHvGeneric => match uio {
            Some(node) if node.dev_path.exists() => DeviceState::Ready {
                instance,
                node: node.dev_path,
            },
            _ => DeviceState::Probing { instance },
        },
        BoundDriver::HvUtils | BoundDriver::Unbound => DeviceState::NeedsBind { instance, driver },
        BoundDriver::Other(driver) => DeviceState::Foreign { instance, driver },
    }
}

/// Why nothing was opened this time.
#[derive(Debug)]
pub enum Waiting {
    /// No VSS device yet.
    DeviceAbsent,
    /// `uio_hv_generic` holds it; its node is not there yet.
    Probing { instance: String },
    /// Another driver holds it; hv-vss leaves it alone.
    ForeignDriver { instance: String, driver: String },
    /// Sysfs does not tell.
    Unknown { reason: String },
    /// It needs a bind, but filesystems are frozen: binding may exec `modprobe`, which
    /// waits until nothing is frozen (R60).
    BindDeferred { instance: String },
    /// A bind is running (check again soon, not after the backoff).
    Binding { instance: String, from: BoundDriver },
    /// The bind failed; the next attempt looks again.
    BindFailed { instance: String, error: BindError },
}

impl Waiting {
    /// A short label for logs and for telling one step from the next.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::DeviceAbsent => "device_absent",
            Self::Probing { .. } => "probing",
            Self::ForeignDriver { .. } => "foreign_driver",
            Self::Unknown { .. } => "unknown",
            Self::BindDeferred { .. } => "bind_deferred",
            Self::Binding { .. } => "binding",
            Self::BindFailed { .. } => "bind_failed",
        }
    }

    /// Whether to look again shortly (a bind thread is running) instead of after the
    /// reopen backoff.
    pub fn check_soon(&self) -> bool {
        matches!(self, Self::Binding { .. })
    }
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DeviceAbsent => f.write_str(
                "waiting for the host to offer the VSS device again (none under /sys/bus/vmbus/devices)",
            ),
            Self::Probing { instance } => write!(
                f,
                "VSS device {instance} is on uio_hv_generic; waiting for its uio node"
            ),
            Self::ForeignDriver { instance, driver } => write!(
                f,
                "VSS device {instance} is bound to {driver}; hv-vss leaves it alone (unbind it by hand)"
            ),
            Self::Unknown { reason } => write!(f, "cannot locate the VSS device: {reason}"),
            Self::BindDeferred { instance } => write!(
                f,
                "VSS device {instance} needs binding to uio_hv_generic; waiting until nothing is frozen"
            ),
            Self::Binding { instance, from } => write!(
                f,
                "VSS device {instance} came back on {from}; handing it to uio_hv_generic"
            ),
            Self::BindFailed { instance, error } => {
                write!(f, "binding VSS device {instance} to uio_hv_generic failed: {error}")
            }
        }
    }
}

/// One reopen attempt's result.
#[derive(Debug)]
pub enum Attempt {
    /// Opened this node.
    Opened {
        transport: Box<Transport>,
        node: PathBuf,
    },
    /// Nothing to open yet.
    Waiting(Waiting),
    /// The node was there but opening it failed.
    OpenFailed(TransportError),
}

/// A bind running on its own thread.
#[derive(Debug)]
struct BindJob {
    instance: String,
    from: BoundDriver,
    handle: JoinHandle<Result<BindOutcome, BindError>>,
}

/// Finds the VSS device after a loss, rebinds it if `hv_utils` took it, and opens its node.
#[derive(Debug)]
pub struct UioRediscovery {
    roots: SystemRoots,
    bind_options: BindOptions,
    /// The instance last opened or bound, to choose among several VSS devices.
    instance: Option<String>,
    binding: Option<BindJob>,
}

impl UioRediscovery {
    /// Looks under `roots` (`SystemRoots::host()` in production).
    pub fn new(roots: SystemRoots) -> Self {
        Self {
            roots,
            bind_options: BindOptions {
                uio_timeout: BIND_TIMEOUT,
                ..BindOptions::default()
            },
            instance: None,
            binding: None,
        }
    }

    /// As [`Self::new`], with other bind options (a shorter timeout).
    #[cfg(test)]
    pub fn with_bind_options(roots: SystemRoots, bind_options: BindOptions) -> Self {
        Self {
            bind_options,
            ..Self::new(roots)
        }
    }

    /// Where uio devices are opened: `<dev>/uioN` and `<sysfs>/class/uio`.
    fn uio_paths(&self) -> UioPaths {
        UioPaths {
            sysfs_class_uio: self.roots.sysfs.join("class/uio"),
            dev: self.roots.dev.clone(),
        }
    }

    /// One step: finish a running bind, else look at sysfs and open, bind or wait. Never
    /// blocks for long: opening is the only I/O on this thread besides reading sysfs.
    /// `may_bind` is false while filesystems are frozen.
    pub fn attempt(&mut self, may_bind: bool) -> Attempt {
        if let Some(job) = self.binding.take() {
            if !job.handle.is_finished() {
                let waiting = Waiting::Binding {
                    instance: job.instance.clone(),
                    from: job.from.clone(),
                };
                self.binding = Some(job);
                return Attempt::Waiting(waiting);
            }
            let result = job.handle.join().unwrap_or_else(|_| {
                Err(BindError::Io {
                    op: "bind (the bind thread panicked)",
                    path: self.roots.sysfs.join("bus/vmbus"),
                    source: std::io::Error::other("panic"),
                })
            });
            return match result {
                Ok(outcome) => {
                    tracing::info!(
                        op = "uio_rebind",
                        instance = outcome.instance,
                        node = %outcome.uio.dev_path.display(),
                        "VSS device handed to uio_hv_generic again"
                    );
                    self.instance = Some(outcome.instance);
                    self.open(outcome.uio.dev_path)
                }
                Err(error) => Attempt::Waiting(Waiting::BindFailed {
                    instance: job.instance,
                    error,
                }),
            };
        }
        match locate(&self.roots, self.instance.as_deref()) {
            DeviceState::Absent => Attempt::Waiting(Waiting::DeviceAbsent),
            DeviceState::Ready { instance, node } => {
                self.instance = Some(instance);
                self.open(node)
            }
            DeviceState::Probing { instance } => Attempt::Waiting(Waiting::Probing { instance }),
            DeviceState::Foreign { instance, driver } => {
                Attempt::Waiting(Waiting::ForeignDriver { instance, driver })
            }
            DeviceState::Unknown { reason } => Attempt::Waiting(Waiting::Unknown { reason }),
            DeviceState::NeedsBind { instance, .. } if !may_bind => {
                Attempt::Waiting(Waiting::BindDeferred { instance })
            }
            DeviceState::NeedsBind { instance, driver } => self.start_bind(instance, driver),
        }
    }

    fn start_bind(&mut self, instance: String, from: BoundDriver) -> Attempt {
        let roots = self.roots.clone();
        let options = BindOptions {
            instance: Some(instance.clone()),
            ..self.bind_options.clone()
        };
        let spawned = std::thread::Builder::new()
            .name("uio-rebind".into())
            .spawn(move || bind::bind(&roots, &options));
        match spawned {
            Ok(handle) => {
                self.binding = Some(BindJob {
                    instance: instance.clone(),
                    from: from.clone(),
                    handle,
                });
                Attempt::Waiting(Waiting::Binding { instance, from })
            }
            Err(source) => Attempt::Waiting(Waiting::BindFailed {
                instance,
                error: BindError::Io {
                    op: "start a thread to bind",
                    path: self.roots.sysfs.join("bus/vmbus"),
                    source,
                },
            }),
        }
    }

    fn open(&self, node: PathBuf) -> Attempt {
        let Some(index) = uio_index(&node) else {
            return Attempt::OpenFailed(VmbusError::UioPath(node).into());
        };
        match open_uio_node(&node, self.uio_paths(), index) {
            Ok(transport) => Attempt::Opened {
                transport: Box::new(transport),
                node,
            },
            Err(e) => Attempt::OpenFailed(e),
        }
    }
}

/// `true` when `path` names a uio device node (`…/uioN`) rather than a simulator socket.
pub fn is_uio_node_path(path: &Path) -> bool {
    uio_index(path).is_some()
        && !rustix::fs::stat(path).is_ok_and(|st| {
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket
        })
}

#[cfg(test)]
mod tests {
    //! Against fake `/sys`, `/dev` and `/proc` trees in a temp dir
    //! (`hv_vss_testutil::fake_vmbus`, as in crates/vmbus/tests/bind_fake_sysfs.rs). A
    //! thread plays the kernel: it records every attribute write with its exact bytes, in
    //! write order, and reacts as the vmbus core would. The re-offered device's node is
    //! `uio5`, not the `uio3` the daemon started with. `/dev/uio5` is a regular file of map
    //! 0's size: the mapping and ring placement work on it as on the real node; `EIO`,
    //! `poll` and the host's interrupts of a real `/dev/uioN` cannot be reproduced here.

    use super::*;
    use std::fs;
    use std::ops::Deref;
    use std::time::Instant;

    use hv_vss_protocol::guid::VSS_CLASS_GUID_STR;
    use hv_vss_testutil::fake_vmbus::{
        FCOPY_CLASS, FCOPY_INSTANCE, FakeKernel, FakeVmbus, MAP0_CURRENT, VSS_INSTANCE as INSTANCE,
        written as w,
    };

    use crate::config::TransportChoice;
    use crate::transport::{ReopenStep, Reopener};
    use hv_vss_vmbus::uio::ChannelError;

    /// Map 0 as current kernels size it: two rings of 2 MiB + one header page
    /// ([`MAP0_CURRENT`] with 4 KiB pages).
    fn map0_len() -> u64 {
        let page = hv_vss_sys::mem::page_size() as u64;
        MAP0_CURRENT - 2 * 4096 + 2 * page
    }
    /// The node `uio_hv_generic` gives the re-offered device.
    const UIO_NODE: u32 = 5;

    struct FakeSystem {
        bus: FakeVmbus,
        roots: SystemRoots,
    }

    impl FakeSystem {
        /// VMBus with the file-copy device only: the VSS device has been rescinded.
        fn rescinded() -> Self {
            let bus = FakeVmbus::new();
            bus.add_uio_driver();
            bus.add_device(FCOPY_INSTANCE, FCOPY_CLASS, false);
            let mut roots = SystemRoots::under(bus.root());
            roots.kernel_release = Some("6.10.0-1-azure".into());
            Self { bus, roots }
        }

        /// The host offers the VSS device again as `instance`, on `driver` (a new object:
        /// `driver_override` reads `(null)`).
        fn reoffer(&self, instance: &str, driver: Option<&str>) {
            self.add_device(instance, VSS_CLASS_GUID_STR, true);
            self.set_driver(instance, driver);
            match driver {
                Some("hv_utils") => {
                    self.add_hv_vss_node();
                }
                Some("uio_hv_generic") => {
                    self.add_uio_node(instance, UIO_NODE, map0_len());
                }
                _ => {}
            }
        }

        /// Starts the thread that plays the kernel for `instance`.
        fn start_kernel(&mut self, instance: &str) {
            self.bus.start_kernel(
                instance,
                FakeKernel {
                    uio_node: UIO_NODE,
                    map0_len: map0_len(),
                    ..FakeKernel::default()
                },
            );
        }
    }

    impl Deref for FakeSystem {
        type Target = FakeVmbus;

        fn deref(&self) -> &FakeVmbus {
            &self.bus
        }
    }

    fn rediscovery(sys: &FakeSystem) -> UioRediscovery {
        UioRediscovery::with_bind_options(
            sys.roots.clone(),
            BindOptions {
                uio_timeout: Duration::from_secs(3),
                ..BindOptions::default()
            },
        )
    }

    /// Attempts (as the main loop does, `check_soon` steps quickly) until one is not
    /// "waiting", or 10 s pass; returns every waiting step seen and the last attempt.
    fn attempt_until_done(r: &mut UioRediscovery) -> (Vec<&'static str>, Attempt) {
        let give_up = Instant::now() + Duration::from_secs(10);
        let mut steps = Vec::new();
        loop {
            match r.attempt(true) {
                Attempt::Waiting(w) if w.check_soon() && Instant::now() < give_up => {
                    steps.push(w.kind());
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return (steps, other),
            }
        }
    }

    #[test]
    fn device_absent_keeps_waiting_and_writes_nothing() {
        let mut sys = FakeSystem::rescinded();
        sys.start_kernel(INSTANCE);
        let mut r = rediscovery(&sys);
        assert_eq!(locate(&sys.roots, None), DeviceState::Absent);
        for _ in 0..3 {
            match r.attempt(true) {
                Attempt::Waiting(w @ Waiting::DeviceAbsent) => {
                    assert!(!w.check_soon(), "absent: wait the backoff, not poll fast");
                    assert!(w.to_string().contains("offer the VSS device again"), "{w}");
                }
                other => panic!("expected to keep waiting, got {other:?}"),
            }
        }
        assert_eq!(sys.writes(), vec![]);
    }

    #[test]
    fn device_back_on_uio_hv_generic_as_uio5_opens_dev_uio5() {
        let mut sys = FakeSystem::rescinded();
        sys.reoffer(INSTANCE, Some("uio_hv_generic"));
        sys.start_kernel(INSTANCE);
        let node = sys.root().join("dev/uio5");
        assert_eq!(
            locate(&sys.roots, None),
            DeviceState::Ready {
                instance: INSTANCE.into(),
                node: node.clone()
            }
        );
        match rediscovery(&sys).attempt(true) {
            Attempt::Opened {
                transport,
                node: opened,
            } => {
                assert!(
                    matches!(
                        *transport,
                        Transport::Vmbus(crate::transport::VmbusTransport::Uio(_))
                    ),
                    "{transport:?}"
                );
                assert_eq!(opened, node);
            }
            other => panic!("expected /dev/uio5 open, got {other:?}"),
        }
        assert_eq!(sys.writes(), vec![], "nothing to bind");
    }

    #[test]
    fn device_back_on_hv_utils_is_bound_again_and_its_new_node_opened() {
        let mut sys = FakeSystem::rescinded();
        sys.reoffer(INSTANCE, Some("hv_utils"));
        sys.start_kernel(INSTANCE);
        assert_eq!(
            locate(&sys.roots, None),
            DeviceState::NeedsBind {
                instance: INSTANCE.into(),
                driver: BoundDriver::HvUtils
            }
        );
        let mut r = rediscovery(&sys);
        match r.attempt(true) {
            Attempt::Waiting(w @ Waiting::Binding { .. }) => {
                assert!(w.check_soon());
                assert!(w.to_string().contains("came back on hv_utils"), "{w}");
            }
            other => panic!("expected a bind to start, got {other:?}"),
        }
        let (_, last) = attempt_until_done(&mut r);
        match last {
            Attempt::Opened { transport, node } => {
                assert!(
                    matches!(
                        *transport,
                        Transport::Vmbus(crate::transport::VmbusTransport::Uio(_))
                    ),
                    "{transport:?}"
                );
                assert_eq!(node, sys.root().join("dev/uio5"));
            }
            other => panic!("expected the new node open, got {other:?}"),
        }
        assert_eq!(
            sys.writes(),
            vec![
                w(
                    &format!("devices/{INSTANCE}/driver_override"),
                    "uio_hv_generic\n"
                ),
                w("drivers/hv_utils/unbind", &format!("{INSTANCE}\n")),
                w("drivers_probe", &format!("{INSTANCE}\n")),
            ]
        );
        assert!(!sys.root().join("dev/vmbus/hv_vss").exists());
        // The file-copy device was not touched.
        assert!(
            !sys.device_dir(FCOPY_INSTANCE)
                .join("driver_override")
                .exists()
        );
    }

    #[test]
    fn a_device_needing_a_bind_waits_while_filesystems_are_frozen() {
        let mut sys = FakeSystem::rescinded();
        sys.reoffer(INSTANCE, Some("hv_utils"));
        sys.start_kernel(INSTANCE);
        let mut r = rediscovery(&sys);
        match r.attempt(false) {
            Attempt::Waiting(w @ Waiting::BindDeferred { .. }) => assert!(!w.check_soon()),
            other => panic!("expected the bind deferred, got {other:?}"),
        }
        assert_eq!(sys.writes(), vec![]);
        assert!(sys.root().join("dev/vmbus/hv_vss").exists());
    }

    #[test]
    fn a_bind_refused_because_hv_vss_is_held_is_reported_and_retried_later() {
        let mut sys = FakeSystem::rescinded();
        sys.reoffer(INSTANCE, Some("hv_utils"));
        // A drop-in daemon (started by udev when /dev/vmbus/hv_vss reappeared) holds it.
        sys.hold_open(812, "hypervvssd", &sys.root().join("dev/vmbus/hv_vss"));
        sys.start_kernel(INSTANCE);
        let mut r = rediscovery(&sys);
        let (steps, last) = attempt_until_done(&mut r);
        assert!(steps.iter().all(|s| *s == "binding"), "{steps:?}");
        match last {
            Attempt::Waiting(
                w @ Waiting::BindFailed {
                    error: BindError::Busy { .. },
                    ..
                },
            ) => {
                assert!(!w.check_soon());
                let msg = w.to_string();
                assert!(msg.contains("pid 812 (hypervvssd)"), "{msg}");
            }
            other => panic!("expected a busy bind failure, got {other:?}"),
        }
        assert_eq!(sys.writes(), vec![], "nothing written while held");
        // The next attempt looks again (and starts another bind).
        assert!(matches!(
            r.attempt(true),
            Attempt::Waiting(Waiting::Binding { .. })
        ));
    }

    #[test]
    fn uio_driver_without_its_node_yet_is_probing_and_foreign_drivers_are_left_alone() {
        let sys = FakeSystem::rescinded();
        sys.reoffer(INSTANCE, Some("uio_hv_generic"));
        fs::remove_file(sys.root().join("dev/uio5")).unwrap();
        assert_eq!(
            locate(&sys.roots, None),
            DeviceState::Probing {
                instance: INSTANCE.into()
            }
        );
        sys.set_driver(INSTANCE, Some("vfio_vmbus"));
        let mut r = rediscovery(&sys);
        match r.attempt(true) {
            Attempt::Waiting(Waiting::ForeignDriver { driver, .. }) => {
                assert_eq!(driver, "vfio_vmbus")
            }
            other => panic!("expected a foreign driver, got {other:?}"),
        }
    }

    #[test]
    fn a_reoffer_under_a_new_instance_guid_is_found_by_class() {
        let sys = FakeSystem::rescinded();
        let new_instance = "aaaaaaaa-0000-0000-0000-000000000001";
        sys.reoffer(new_instance, Some("uio_hv_generic"));
        let mut r = rediscovery(&sys);
        r.instance = Some(INSTANCE.into());
        assert!(matches!(r.attempt(true), Attempt::Opened { .. }));
        assert_eq!(r.instance.as_deref(), Some(new_instance));
        // With two VSS devices, the one used before is chosen; with neither, none is.
        sys.reoffer(INSTANCE, Some("hv_utils"));
        assert!(matches!(
            locate(&sys.roots, Some(new_instance)),
            DeviceState::Ready { instance, .. } if instance == new_instance
        ));
        assert!(matches!(
            locate(&sys.roots, Some(INSTANCE)),
            DeviceState::NeedsBind { instance, .. } if instance == INSTANCE
        ));
        assert!(matches!(
            locate(&sys.roots, None),
            DeviceState::Unknown { reason } if reason.contains("several VSS devices")
        ));
    }

    /// Wire §3.3: a re-offered channel with a monitor page is not opened: `write(1)` would
    /// never signal the host. The open fails with the reason; nothing is mapped.
    #[test]
    fn a_reoffered_device_with_a_monitor_page_is_not_opened() {
        let sys = FakeSystem::rescinded();
        sys.reoffer(INSTANCE, Some("uio_hv_generic"));
        sys.add_monitor_page(INSTANCE);
        match rediscovery(&sys).attempt(true) {
            Attempt::OpenFailed(
                e @ TransportError::Vmbus(VmbusError::UioOpen {
                    source: ChannelError::MonitorPage { .. },
                    ..
                }),
            ) => assert!(e.to_string().contains("monitor page"), "{e}"),
            other => panic!("expected the open refused, got {other:?}"),
        }
    }

    #[test]
    fn no_vmbus_is_unknown_not_absent() {
        let tmp = tempfile::tempdir().unwrap();
        let state = locate(&SystemRoots::under(tmp.path()), None);
        assert!(
            matches!(&state, DeviceState::Unknown { reason } if reason.contains("no VMBus")),
            "{state:?}"
        );
    }

    #[test]
    fn only_uio_node_paths_are_rediscovered() {
        let sys = FakeSystem::rescinded();
        let reopener = |choice: TransportChoice| Reopener::with_roots(&choice, sys.roots.clone());
        assert!(matches!(
            reopener(TransportChoice::Uio("/dev/uio3".into())),
            Reopener::Rediscover(_)
        ));
        assert!(matches!(
            reopener(TransportChoice::DropIn("/dev/vmbus/hv_vss".into())),
            Reopener::Fixed(_)
        ));
        assert!(matches!(
            reopener(TransportChoice::Uio(sys.root().join("host.sock"))),
            Reopener::Fixed(_)
        ));
        // A simulator socket is a socket even if it is called uio3.
        let sock_path = sys.root().join("uio3");
        let _listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
        assert!(matches!(
            reopener(TransportChoice::Uio(sock_path)),
            Reopener::Fixed(_)
        ));
    }

    #[test]
    fn the_reopener_opens_the_rediscovered_node_not_the_configured_one() {
        let mut sys = FakeSystem::rescinded();
        sys.reoffer(INSTANCE, Some("hv_utils"));
        sys.start_kernel(INSTANCE);
        let mut reopener = Reopener::with_roots(
            &TransportChoice::Uio(sys.root().join("dev/uio3")),
            sys.roots.clone(),
        );
        let give_up = Instant::now() + Duration::from_secs(10);
        let node = loop {
            match reopener.attempt(true) {
                ReopenStep::Opened { node, .. } => break node,
                ReopenStep::Waiting(w) if w.check_soon() && Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(node, sys.root().join("dev/uio5"));
    }
}
