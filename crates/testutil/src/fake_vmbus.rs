//! A fake VMBus for tests of binding, status and rediscovery: `sys`, `dev` and `proc` trees
//! in a temp dir, laid out as the kernel shows them, and optionally a thread that plays the
//! kernel's part.
//!
//! # What the kernel shows (and the fake reproduces)
//!
//! - `sys/bus/vmbus/devices/<instance>/`: `class_id` (`{guid}\n`), `driver_override`
//!   (`(null)\n` until written; absent on kernels without it), `driver` (a symlink
//!   `../../drivers/<name>`, absent while unbound) and, once `uio_hv_generic` probed,
//!   `uio/uioN/maps/map0/size` (hex; map 0 holds both rings: [`MAP0_CURRENT`] =
//!   0x402000 on current kernels, 2 MiB + one page per ring, [`MAP0_BEFORE_0315FEF2AFF9`] =
//!   0x400000 before commit 0315fef2aff9), and `monitor_id` only when the channel has a
//!   monitor page ([`FakeVmbus::add_monitor_page`]).
//! - `sys/bus/vmbus/drivers/<name>/{bind,unbind,new_id,remove_id}` and
//!   `sys/bus/vmbus/drivers_probe`; `sys/class/uio/uioN/maps/map0/size` and
//!   `sys/class/uio/uioN/device` (a link to the VMBus device).
//! - `dev/vmbus/hv_vss` while `hv_utils` has the device; `dev/uioN` while `uio_hv_generic`
//!   has it (here a sparse regular file of map 0's size, so it can be mapped).
//! - `proc/sys/kernel/osrelease`; `proc/<pid>/{comm,fd/N}` for a process holding a node.
//!
//! # The fake kernel
//!
//! A tree cannot react to writes, so [`FakeVmbus::start_kernel`] starts a thread that
//! watches the attribute files with inotify (`IN_CLOSE_WRITE`, one queue, so events arrive
//! in write order), records every write with its exact bytes ([`FakeVmbus::writes`]) and
//! reacts as the vmbus core would: `hv_utils/unbind` drops the driver link and
//! `/dev/vmbus/hv_vss`; `uio_hv_generic/unbind` drops the link and the uio node;
//! `drivers_probe` of an unbound device binds `uio_hv_generic` when steered there
//! (`driver_override`, or the class in `new_id`) and creates its node, else `hv_utils`
//! when no other driver is named. [`FakeKernel`] can make `uio_hv_generic` refuse the
//! device (as kernels without the 2024 series do) or bind it without a node appearing.
//!
//! # Limitations
//!
//! Only directories that exist when the kernel starts are watched. A real `/dev/uioN`'s
//! `poll`, interrupts and `EIO` after a rescind cannot be reproduced.

use std::fs;
use std::mem::MaybeUninit;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub use hv_vss_protocol::guid::VSS_CLASS_GUID_STR as VSS_CLASS;
use rustix::fs::inotify;

/// The instance GUID the fixtures give the VSS device.
pub const VSS_INSTANCE: &str = "2450ee40-33bf-4fbd-892e-9fb06e9214cf";
/// The instance GUID of the file-copy device placed beside it.
pub const FCOPY_INSTANCE: &str = "eb765408-105f-49b6-b4aa-c123b64d17d4";
/// The file-copy service's class GUID (a device a VSS tool must leave alone).
pub const FCOPY_CLASS: &str = "34d14be3-dee4-41c8-9ae7-6b174977c192";

/// Attribute writes seen by the fake kernel: (path below `sys/bus/vmbus`, bytes written).
type Writes = Arc<Mutex<Vec<(String, String)>>>;

/// Map 0 on current kernels: two rings of `VMBUS_RING_SIZE(2 MiB)` = 2 MiB + one 4 KiB
/// header page each (commit 0315fef2aff9, also in stable kernels).
pub const MAP0_CURRENT: u64 = 0x40_2000;
/// Map 0 on kernels before commit 0315fef2aff9: two rings of 2 MiB.
pub const MAP0_BEFORE_0315FEF2AFF9: u64 = 0x40_0000;

/// How the fake kernel reacts (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeKernel {
    /// N of the `uioN` node `uio_hv_generic`'s probe creates.
    pub uio_node: u32,
    /// Size of that node's map 0 (both rings), bytes.
    pub map0_len: u64,
    /// `false`: `uio_hv_generic` refuses the device (its probe fails, as on kernels without
    /// the 2024 series): it stays unbound and no node appears.
    pub uio_probes: bool,
    /// `false`: `uio_hv_generic` binds the device but no `uioN` node appears.
    pub creates_node: bool,
}

impl Default for FakeKernel {
    /// `uio3`, a current kernel's map 0 ([`MAP0_CURRENT`]), probes succeed.
    fn default() -> Self {
        Self {
            uio_node: 3,
            map0_len: MAP0_CURRENT,
            uio_probes: true,
            creates_node: true,
        }
    }
}

/// The fake `sys`/`dev`/`proc` trees in a temp dir; the kernel thread, if started, is
/// stopped on drop.
#[derive(Debug)]
pub struct FakeVmbus {
    tmp: tempfile::TempDir,
    writes: Writes,
    stop: Arc<AtomicBool>,
    kernel: Option<JoinHandle<()>>,
}

impl FakeVmbus {
    /// A VMBus with no device yet: `hv_utils` loaded (its attributes empty),
    /// `drivers_probe`, empty `sys/class/uio`, `dev/vmbus` and `proc`.
    pub fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("hv-vss-vmbus-")
            .tempdir()
            .expect("temp dir");
        let bus = Self {
            tmp,
            writes: Writes::default(),
            stop: Arc::default(),
            kernel: None,
        };
        bus.add_driver("hv_utils");
        fs::create_dir_all(bus.vmbus().join("devices")).unwrap();
        fs::write(bus.vmbus().join("drivers_probe"), "").unwrap();
        for dir in ["sys/class/uio", "dev/vmbus", "proc"] {
            fs::create_dir_all(bus.root().join(dir)).unwrap();
        }
        bus
    }

    /// A guest as it boots: [`VSS_INSTANCE`] bound to `hv_utils` with `/dev/vmbus/hv_vss`,
    /// the file-copy device beside it (both with a `driver_override` attribute if
    /// `has_override`), and kernel release `release`. `uio_hv_generic` is not loaded.
    pub fn vss_on_hv_utils(release: &str, has_override: bool) -> Self {
        let bus = Self::new();
        bus.add_device(VSS_INSTANCE, VSS_CLASS, has_override);
        bus.add_device(FCOPY_INSTANCE, FCOPY_CLASS, has_override);
        bus.set_driver(VSS_INSTANCE, Some("hv_utils"));
        bus.add_hv_vss_node();
        bus.set_kernel_release(release);
        bus
    }

    /// The root holding `sys`, `dev` and `proc` (for `SystemRoots::under`).
    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// `sys/bus/vmbus`.
    pub fn vmbus(&self) -> PathBuf {
        self.root().join("sys/bus/vmbus")
    }

    /// `sys/bus/vmbus/devices/<instance>`.
    pub fn device_dir(&self, instance: &str) -> PathBuf {
        self.vmbus().join("devices").join(instance)
    }

    /// The content of `sys/bus/vmbus/<rel>`.
    pub fn attr(&self, rel: &str) -> String {
        fs::read_to_string(self.vmbus().join(rel)).unwrap()
    }

    /// Writes `proc/sys/kernel/osrelease`.
    pub fn set_kernel_release(&self, release: &str) {
        let kernel = self.root().join("proc/sys/kernel");
        fs::create_dir_all(&kernel).unwrap();
        fs::write(kernel.join("osrelease"), format!("{release}\n")).unwrap();
    }

    /// Loads `uio_hv_generic`: its driver directory with empty attributes.
    pub fn add_uio_driver(&self) {
        self.add_driver("uio_hv_generic");
    }

    fn add_driver(&self, name: &str) {
        let dir = self.vmbus().join("drivers").join(name);
        fs::create_dir_all(&dir).unwrap();
        for attr in ["bind", "unbind", "new_id", "remove_id"] {
            fs::write(dir.join(attr), "").unwrap();
        }
    }

    /// The host offers a device: its directory with `class_id` (and `driver_override`
    /// reading `(null)` if `has_override`), unbound. Returns the directory.
    pub fn add_device(&self, instance: &str, class: &str, has_override: bool) -> PathBuf {
        let dir = self.device_dir(instance);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("class_id"), format!("{{{class}}}\n")).unwrap();
        if has_override {
            fs::write(dir.join("driver_override"), "(null)\n").unwrap();
        }
        dir
    }

    /// Points the device's `driver` link at `driver` (`None`: unbound).
    pub fn set_driver(&self, instance: &str, driver: Option<&str>) {
        set_driver(&self.device_dir(instance), driver);
    }

    /// What `hv_utils` creates: `dev/vmbus/hv_vss`. Returns its path.
    pub fn add_hv_vss_node(&self) -> PathBuf {
        let node = self.root().join("dev/vmbus/hv_vss");
        fs::write(&node, "").unwrap();
        node
    }

    /// What `uio_hv_generic`'s probe creates for `instance`: `uio/uioN` with its map table,
    /// the `sys/class/uio` entry and `dev/uioN` (of `map0_len` bytes). Returns the node.
    pub fn add_uio_node(&self, instance: &str, n: u32, map0_len: u64) -> PathBuf {
        add_uio_node(self.root(), instance, n, map0_len)
    }

    /// The channel has a monitor page: `monitor_id` appears in the device directory.
    pub fn add_monitor_page(&self, instance: &str) {
        fs::write(self.device_dir(instance).join("monitor_id"), "2\n").unwrap();
    }

    /// Process `pid` (named `comm`) holds `node` open as its fd 3.
    pub fn hold_open(&self, pid: u32, comm: &str, node: &Path) {
        let proc_dir = self.root().join("proc").join(pid.to_string());
        fs::create_dir_all(proc_dir.join("fd")).unwrap();
        fs::write(proc_dir.join("comm"), format!("{comm}\n")).unwrap();
        symlink(node, proc_dir.join("fd/3")).unwrap();
    }

    /// Starts the thread that plays the kernel for `instance` (module docs). Call once.
    pub fn start_kernel(&mut self, instance: &str, kernel: FakeKernel) {
        assert!(self.kernel.is_none(), "the fake kernel is already running");
        let fd =
            inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK).unwrap();
        let vmbus = self.vmbus();
        let watches: Vec<_> = [
            vmbus.clone(),
            self.device_dir(instance),
            vmbus.join("drivers/hv_utils"),
            vmbus.join("drivers/uio_hv_generic"),
        ]
        .into_iter()
        .filter(|dir| dir.is_dir())
        .map(|dir| {
            let wd = inotify::add_watch(&fd, &dir, inotify::WatchFlags::CLOSE_WRITE).unwrap();
            (wd, dir)
        })
        .collect();
        let (root, writes, stop) = (
            self.root().to_owned(),
            Arc::clone(&self.writes),
            Arc::clone(&self.stop),
        );
        let instance = instance.to_owned();
        self.kernel = Some(std::thread::spawn(move || {
            let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
            let mut new_id: Option<String> = None;
            while !stop.load(Ordering::SeqCst) {
                let mut reader = inotify::Reader::new(&fd, &mut buf);
                let mut seen = Vec::new();
                while let Ok(event) = reader.next() {
                    let (Some(name), Some((_, dir))) = (
                        event.file_name(),
                        watches.iter().find(|(wd, _)| *wd == event.wd()),
                    ) else {
                        continue;
                    };
                    seen.push(dir.join(name.to_str().unwrap()));
                }
                for path in seen {
                    let value = fs::read_to_string(&path).unwrap_or_default();
                    let rel = path
                        .strip_prefix(&vmbus)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    writes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((rel.clone(), value.clone()));
                    react(&root, &instance, kernel, &rel, value.trim(), &mut new_id);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }));
    }

    /// The writes the fake kernel saw so far, after letting it drain its queue.
    pub fn writes(&self) -> Vec<(String, String)> {
        std::thread::sleep(Duration::from_millis(100));
        self.writes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Forgets the writes seen so far, after letting the kernel drain its queue.
    pub fn clear_writes(&self) {
        std::thread::sleep(Duration::from_millis(100));
        self.writes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

impl Default for FakeVmbus {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FakeVmbus {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(kernel) = self.kernel.take() {
            let _ = kernel.join();
        }
    }
}

/// One expected attribute write, as [`FakeVmbus::writes`] lists it.
pub fn written(rel: &str, value: &str) -> (String, String) {
    (rel.to_owned(), value.to_owned())
}

fn set_driver(device_dir: &Path, driver: Option<&str>) {
    let link = device_dir.join("driver");
    let _ = fs::remove_file(&link);
    if let Some(driver) = driver {
        symlink(format!("../../drivers/{driver}"), link).unwrap();
    }
}

fn add_uio_node(root: &Path, instance: &str, n: u32, map0_len: u64) -> PathBuf {
    let device_dir = root.join("sys/bus/vmbus/devices").join(instance);
    for map0 in [
        device_dir.join(format!("uio/uio{n}/maps/map0")),
        root.join(format!("sys/class/uio/uio{n}/maps/map0")),
    ] {
        fs::create_dir_all(&map0).unwrap();
        fs::write(map0.join("size"), format!("{map0_len:#x}\n")).unwrap();
    }
    let device_link = root.join(format!("sys/class/uio/uio{n}/device"));
    let _ = fs::remove_file(&device_link);
    symlink(&device_dir, device_link).unwrap();
    let node = root.join(format!("dev/uio{n}"));
    fs::File::create(&node).unwrap().set_len(map0_len).unwrap();
    node
}

/// What the vmbus core does on a write of `value` to `sys/bus/vmbus/<rel>`.
fn react(
    root: &Path,
    instance: &str,
    kernel: FakeKernel,
    rel: &str,
    value: &str,
    new_id: &mut Option<String>,
) {
    let device_dir = root.join("sys/bus/vmbus/devices").join(instance);
    let n = kernel.uio_node;
    match rel {
        "drivers/hv_utils/unbind" if value == instance => {
            set_driver(&device_dir, None);
            let _ = fs::remove_file(root.join("dev/vmbus/hv_vss"));
        }
        "drivers/uio_hv_generic/unbind" if value == instance => {
            set_driver(&device_dir, None);
            let _ = fs::remove_dir_all(device_dir.join("uio"));
            let _ = fs::remove_dir_all(root.join(format!("sys/class/uio/uio{n}")));
            let _ = fs::remove_file(root.join(format!("dev/uio{n}")));
        }
        "drivers/uio_hv_generic/new_id" => *new_id = Some(value.to_owned()),
        "drivers/uio_hv_generic/remove_id" if new_id.as_deref() == Some(value) => *new_id = None,
        "drivers_probe"
            if value == instance && fs::read_link(device_dir.join("driver")).is_err() =>
        {
            let wanted = fs::read_to_string(device_dir.join("driver_override")).unwrap_or_default();
            let wanted = wanted.trim();
            if wanted == "uio_hv_generic" || new_id.as_deref() == Some(VSS_CLASS) {
                if kernel.uio_probes {
                    if kernel.creates_node {
                        add_uio_node(root, instance, n, kernel.map0_len);
                    }
                    set_driver(&device_dir, Some("uio_hv_generic"));
                }
            } else if wanted.is_empty() || wanted == "(null)" {
                set_driver(&device_dir, Some("hv_utils"));
                fs::write(root.join("dev/vmbus/hv_vss"), "").unwrap();
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_records_writes_in_order_and_binds_as_steered() {
        let mut bus = FakeVmbus::vss_on_hv_utils("6.10.0", true);
        bus.add_uio_driver();
        bus.start_kernel(VSS_INSTANCE, FakeKernel::default());
        let device = bus.device_dir(VSS_INSTANCE);
        fs::write(device.join("driver_override"), "uio_hv_generic\n").unwrap();
        fs::write(bus.vmbus().join("drivers/hv_utils/unbind"), VSS_INSTANCE).unwrap();
        // The kernel reacts on its own thread.
        let eventually = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !done() {
                assert!(std::time::Instant::now() < deadline, "{what}");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        eventually("hv_vss removed on unbind", &|| {
            !bus.root().join("dev/vmbus/hv_vss").exists()
        });
        assert!(fs::read_link(device.join("driver")).is_err(), "unbound");
        fs::write(bus.vmbus().join("drivers_probe"), VSS_INSTANCE).unwrap();
        eventually("bound to uio_hv_generic on probe", &|| {
            fs::read_link(device.join("driver"))
                .is_ok_and(|l| l == Path::new("../../drivers/uio_hv_generic"))
        });
        assert_eq!(
            bus.attr(&format!("devices/{VSS_INSTANCE}/uio/uio3/maps/map0/size")),
            "0x402000\n"
        );
        assert_eq!(
            fs::metadata(bus.root().join("dev/uio3")).unwrap().len(),
            MAP0_CURRENT
        );
        assert_eq!(
            bus.writes(),
            vec![
                written(
                    &format!("devices/{VSS_INSTANCE}/driver_override"),
                    "uio_hv_generic\n"
                ),
                written("drivers/hv_utils/unbind", VSS_INSTANCE),
                written("drivers_probe", VSS_INSTANCE),
            ]
        );
        // The file-copy device is there, untouched.
        assert_eq!(
            bus.attr(&format!("devices/{FCOPY_INSTANCE}/driver_override")),
            "(null)\n"
        );
    }
}
