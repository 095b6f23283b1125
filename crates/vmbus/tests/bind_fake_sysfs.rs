//! `bind`/`unbind`/`status` against fake sysfs, /dev and /proc trees in a temp dir.
//!
//! A fake tree cannot react to writes, so a thread plays the kernel's part: it watches the
//! attribute files with inotify (`IN_CLOSE_WRITE`, one queue, so events arrive in write
//! order), records every write with its exact bytes, and reacts as the vmbus core would:
//! `hv_utils/unbind` drops the driver link and `/dev/vmbus/hv_vss`; `drivers_probe` binds
//! `uio_hv_generic` when steered there (creating `uio/uio3`, its map table and `/dev/uio3`),
//! else `hv_utils`.

use std::fs;
use std::mem::MaybeUninit;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hv_vss_protocol::guid::VSS_CLASS_GUID_STR;
use hv_vss_vmbus::bind::{
    self, BindError, BindErrorKind, BindOptions, BoundDriver, OverrideMethod, SystemRoots,
    UnbindOptions,
};
use rustix::fs::inotify;

const INSTANCE: &str = "2450ee40-33bf-4fbd-892e-9fb06e9214cf";
const FCOPY_INSTANCE: &str = "eb765408-105f-49b6-b4aa-c123b64d17d4";
const FCOPY_CLASS: &str = "34d14be3-dee4-41c8-9ae7-6b174977c192";

/// How the fake tree starts out.
#[derive(Clone, Copy)]
struct Setup {
    kernel: &'static str,
    /// The instance has a `driver_override` attribute.
    has_override: bool,
    /// `uio_hv_generic` is loaded (its driver directory exists).
    uio_loaded: bool,
    /// The kernel creates the uio node when probed.
    uio_probes: bool,
}

const MODERN: Setup = Setup {
    kernel: "6.10.0-1-azure",
    has_override: true,
    uio_loaded: true,
    uio_probes: true,
};

struct FakeHost {
    tmp: tempfile::TempDir,
    roots: SystemRoots,
    writes: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
    kernel: Option<JoinHandle<()>>,
}

fn vmbus(root: &Path) -> PathBuf {
    root.join("sys/bus/vmbus")
}

fn add_device(root: &Path, instance: &str, class: &str, has_override: bool) -> PathBuf {
    let dir = vmbus(root).join("devices").join(instance);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("class_id"), format!("{{{class}}}\n")).unwrap();
    if has_override {
        fs::write(dir.join("driver_override"), "(null)\n").unwrap();
    }
    dir
}

fn set_driver(device_dir: &Path, driver: Option<&str>) {
    let link = device_dir.join("driver");
    let _ = fs::remove_file(&link);
    if let Some(driver) = driver {
        symlink(format!("../../drivers/{driver}"), link).unwrap();
    }
}

fn add_uio_driver(root: &Path) {
    let dir = vmbus(root).join("drivers/uio_hv_generic");
    fs::create_dir_all(&dir).unwrap();
    for attr in ["new_id", "remove_id", "bind", "unbind"] {
        fs::write(dir.join(attr), "").unwrap();
    }
}

impl FakeHost {
    fn new(setup: Setup) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let dev_dir = add_device(root, INSTANCE, VSS_CLASS_GUID_STR, setup.has_override);
        add_device(root, FCOPY_INSTANCE, FCOPY_CLASS, setup.has_override);
        set_driver(&dev_dir, Some("hv_utils"));
        let hv_utils = vmbus(root).join("drivers/hv_utils");
        fs::create_dir_all(&hv_utils).unwrap();
        fs::write(hv_utils.join("bind"), "").unwrap();
        fs::write(hv_utils.join("unbind"), "").unwrap();
        fs::write(vmbus(root).join("drivers_probe"), "").unwrap();
        if setup.uio_loaded {
            add_uio_driver(root);
        }
        fs::create_dir_all(root.join("dev/vmbus")).unwrap();
        fs::write(root.join("dev/vmbus/hv_vss"), "").unwrap();
        fs::create_dir_all(root.join("proc/sys/kernel")).unwrap();
        fs::write(
            root.join("proc/sys/kernel/osrelease"),
            format!("{}\n", setup.kernel),
        )
        .unwrap();

        let roots = SystemRoots::under(root);
        let writes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let kernel = spawn_kernel(
            root.to_owned(),
            setup,
            Arc::clone(&writes),
            Arc::clone(&stop),
        );
        Self {
            tmp,
            roots,
            writes,
            stop,
            kernel: Some(kernel),
        }
    }

    fn root(&self) -> &Path {
        self.tmp.path()
    }

    fn device_dir(&self) -> PathBuf {
        vmbus(self.root()).join("devices").join(INSTANCE)
    }

    /// The writes seen so far, after letting the kernel thread drain its queue.
    fn writes(&self) -> Vec<(String, String)> {
        std::thread::sleep(Duration::from_millis(100));
        self.writes.lock().unwrap().clone()
    }

    fn clear_writes(&self) {
        std::thread::sleep(Duration::from_millis(100));
        self.writes.lock().unwrap().clear();
    }

    fn hold_open(&self, pid: u32, comm: &str, device: &Path) {
        let proc_dir = self.root().join("proc").join(pid.to_string());
        fs::create_dir_all(proc_dir.join("fd")).unwrap();
        fs::write(proc_dir.join("comm"), format!("{comm}\n")).unwrap();
        symlink(device, proc_dir.join("fd/5")).unwrap();
    }
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(kernel) = self.kernel.take() {
            let _ = kernel.join();
        }
    }
}

fn spawn_kernel(
    root: PathBuf,
    setup: Setup,
    writes: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    let vmbus_dir = vmbus(&root);
    let device_dir = vmbus_dir.join("devices").join(INSTANCE);
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK).unwrap();
    let mut watches = Vec::new();
    for dir in [
        vmbus_dir.clone(),
        device_dir.clone(),
        vmbus_dir.join("drivers/hv_utils"),
        vmbus_dir.join("drivers/uio_hv_generic"),
    ] {
        if dir.is_dir() {
            let wd = inotify::add_watch(&fd, &dir, inotify::WatchFlags::CLOSE_WRITE).unwrap();
            watches.push((wd, dir));
        }
    }
    std::thread::spawn(move || {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut new_id_class: Option<String> = None;
        while !stop.load(Ordering::SeqCst) {
            let mut reader = inotify::Reader::new(&fd, &mut buf);
            let mut seen = Vec::new();
            while let Ok(event) = reader.next() {
                let Some(name) = event.file_name() else {
                    continue;
                };
                let Some((_, dir)) = watches.iter().find(|(wd, _)| *wd == event.wd()) else {
                    continue;
                };
                seen.push(dir.join(name.to_str().unwrap()));
            }
            for path in seen {
                let content = fs::read_to_string(&path).unwrap_or_default();
                let rel = path
                    .strip_prefix(&vmbus_dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                writes.lock().unwrap().push((rel.clone(), content.clone()));
                react(&root, setup, &rel, content.trim(), &mut new_id_class);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })
}

/// What the vmbus core does on each write.
fn react(root: &Path, setup: Setup, rel: &str, value: &str, new_id: &mut Option<String>) {
    let device_dir = vmbus(root).join("devices").join(INSTANCE);
    let driver_of = || fs::read_link(device_dir.join("driver")).ok();
    match rel {
        "drivers/hv_utils/unbind" if value == INSTANCE => {
            set_driver(&device_dir, None);
            let _ = fs::remove_file(root.join("dev/vmbus/hv_vss"));
        }
        "drivers/uio_hv_generic/unbind" if value == INSTANCE => {
            set_driver(&device_dir, None);
            let _ = fs::remove_dir_all(device_dir.join("uio"));
            let _ = fs::remove_file(root.join("dev/uio3"));
        }
        "drivers/uio_hv_generic/new_id" => *new_id = Some(value.to_owned()),
        "drivers/uio_hv_generic/remove_id" if new_id.as_deref() == Some(value) => *new_id = None,
        "drivers_probe" if value == INSTANCE && driver_of().is_none() => {
            let override_value = fs::read_to_string(device_dir.join("driver_override"))
                .unwrap_or_default()
                .trim()
                .to_owned();
            let to_uio =
                override_value == "uio_hv_generic" || new_id.as_deref() == Some(VSS_CLASS_GUID_STR);
            if to_uio {
                if setup.uio_probes {
                    let map0 = device_dir.join("uio/uio3/maps/map0");
                    fs::create_dir_all(&map0).unwrap();
                    fs::write(map0.join("size"), "0x400000\n").unwrap();
                    fs::write(root.join("dev/uio3"), "").unwrap();
                    set_driver(&device_dir, Some("uio_hv_generic"));
                }
            } else if override_value.is_empty() || override_value == "(null)" {
                set_driver(&device_dir, Some("hv_utils"));
                fs::write(root.join("dev/vmbus/hv_vss"), "").unwrap();
            }
        }
        _ => {}
    }
}

fn w(rel: &str, value: &str) -> (String, String) {
    (rel.to_owned(), value.to_owned())
}

fn override_rel() -> String {
    format!("devices/{INSTANCE}/driver_override")
}

fn quick() -> BindOptions {
    BindOptions {
        uio_timeout: Duration::from_secs(3),
        ..BindOptions::default()
    }
}

#[test]
fn bind_writes_override_then_unbind_then_probe_and_returns_the_node() {
    let host = FakeHost::new(MODERN);
    let outcome = bind::bind(&host.roots, &quick()).unwrap();
    assert_eq!(outcome.instance, INSTANCE);
    assert!(!outcome.already_bound);
    assert_eq!(outcome.method, Some(OverrideMethod::DriverOverride));
    assert_eq!(outcome.uio.name, "uio3");
    assert_eq!(outcome.uio.dev_path, host.root().join("dev/uio3"));
    assert_eq!(outcome.uio.ring_size_bytes, Some(2 * 1024 * 1024));
    assert_eq!(outcome.kernel.to_string(), "6.10.0");
    assert_eq!(
        host.writes(),
        vec![
            w(&override_rel(), "uio_hv_generic\n"),
            w("drivers/hv_utils/unbind", &format!("{INSTANCE}\n")),
            w("drivers_probe", &format!("{INSTANCE}\n")),
        ]
    );
    // The file-copy device was not touched.
    let fcopy = vmbus(host.root()).join("devices").join(FCOPY_INSTANCE);
    assert_eq!(
        fs::read_to_string(fcopy.join("driver_override")).unwrap(),
        "(null)\n"
    );
}

#[test]
fn bind_falls_back_to_new_id_without_driver_override() {
    let host = FakeHost::new(Setup {
        has_override: false,
        ..MODERN
    });
    let outcome = bind::bind(&host.roots, &quick()).unwrap();
    assert_eq!(outcome.method, Some(OverrideMethod::NewId));
    assert_eq!(
        host.writes(),
        vec![
            w(
                "drivers/uio_hv_generic/new_id",
                &format!("{VSS_CLASS_GUID_STR}\n")
            ),
            w("drivers/hv_utils/unbind", &format!("{INSTANCE}\n")),
            w("drivers_probe", &format!("{INSTANCE}\n")),
        ]
    );
}

#[test]
fn bind_twice_writes_nothing_the_second_time() {
    let host = FakeHost::new(MODERN);
    let first = bind::bind(&host.roots, &quick()).unwrap();
    host.clear_writes();
    let second = bind::bind(&host.roots, &quick()).unwrap();
    assert!(second.already_bound);
    assert_eq!(second.method, None);
    assert_eq!(second.uio, first.uio);
    assert_eq!(host.writes(), vec![]);
}

#[test]
fn old_kernel_is_refused_before_any_write() {
    let host = FakeHost::new(Setup {
        kernel: "5.15.0-1057-azure",
        ..MODERN
    });
    let err = bind::bind(&host.roots, &quick()).unwrap_err();
    assert!(matches!(err, BindError::KernelTooOld { .. }), "{err:?}");
    assert_eq!(err.kind(), BindErrorKind::Unsupported);
    let msg = err.to_string();
    assert!(
        msg.contains("5.15.0-1057-azure") && msg.contains("6.10"),
        "{msg}"
    );
    assert_eq!(host.writes(), vec![]);
    assert_eq!(
        bind::status(&host.roots, None).unwrap().driver,
        BoundDriver::HvUtils
    );
}

#[test]
fn kernel_release_override_wins_over_proc() {
    let mut host = FakeHost::new(MODERN);
    host.roots.kernel_release = Some("6.9.0".to_owned());
    let err = bind::bind(&host.roots, &quick()).unwrap_err();
    assert!(matches!(err, BindError::KernelTooOld { .. }), "{err:?}");
}

#[test]
fn no_vss_device_is_named() {
    let host = FakeHost::new(MODERN);
    fs::remove_dir_all(host.device_dir()).unwrap();
    let err = bind::bind(&host.roots, &quick()).unwrap_err();
    assert!(matches!(err, BindError::NoVssDevice { .. }), "{err:?}");
    assert_eq!(err.kind(), BindErrorKind::Unsupported);
    assert!(
        err.to_string()
            .contains("no VSS device (is the Backup integration service enabled on the host?)"),
        "{err}"
    );
    let err = bind::status(&host.roots, None).unwrap_err();
    assert!(matches!(err, BindError::NoVssDevice { .. }), "{err:?}");
}

#[test]
fn no_vmbus_says_not_a_hyperv_guest() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir_all(tmp.path().join("sys/bus/pci")).unwrap();
    let roots = SystemRoots::under(tmp.path());
    for err in [
        bind::bind(&roots, &quick()).unwrap_err(),
        bind::unbind(&roots, &UnbindOptions::default()).unwrap_err(),
        bind::status(&roots, None).unwrap_err(),
    ] {
        assert!(matches!(err, BindError::NoVmbus { .. }), "{err:?}");
        assert!(
            err.to_string().contains("not a Hyper-V/Azure guest"),
            "{err}"
        );
        assert_eq!(err.kind(), BindErrorKind::Unsupported);
    }
}

#[test]
fn several_devices_are_listed_and_one_can_be_chosen() {
    let host = FakeHost::new(MODERN);
    let other = "aaaaaaaa-0000-0000-0000-000000000001";
    let other_dir = add_device(host.root(), other, VSS_CLASS_GUID_STR, true);
    set_driver(&other_dir, Some("hv_utils"));
    let err = bind::bind(&host.roots, &quick()).unwrap_err();
    let BindError::SeveralVssDevices { instances } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(instances, &vec![INSTANCE.to_owned(), other.to_owned()]);
    assert!(err.to_string().contains("--instance"), "{err}");
    assert_eq!(host.writes(), vec![]);

    let options = BindOptions {
        instance: Some(format!("{{{}}}", INSTANCE.to_uppercase())),
        ..quick()
    };
    let outcome = bind::bind(&host.roots, &options).unwrap();
    assert_eq!(outcome.instance, INSTANCE);

    let options = BindOptions {
        instance: Some(FCOPY_INSTANCE.to_owned()),
        ..quick()
    };
    let err = bind::bind(&host.roots, &options).unwrap_err();
    assert!(matches!(err, BindError::UnknownInstance { .. }), "{err:?}");
}

#[test]
fn busy_kernel_device_is_refused_with_the_holder_named() {
    let host = FakeHost::new(MODERN);
    let node = host.root().join("dev/vmbus/hv_vss");
    host.hold_open(4242, "hypervvssd", &node);
    let err = bind::bind(&host.roots, &quick()).unwrap_err();
    assert_eq!(err.kind(), BindErrorKind::Busy);
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "device busy: {} is held by pid 4242 (hypervvssd)",
            node.display()
        )),
        "{msg}"
    );
    assert!(msg.contains("systemctl stop hypervvssd.service"), "{msg}");
    assert_eq!(host.writes(), vec![], "nothing may be written while busy");
}

#[test]
fn missing_module_is_reported_and_nothing_written() {
    let host = FakeHost::new(Setup {
        uio_loaded: false,
        ..MODERN
    });
    let script = host.root().join("modprobe-fails");
    fs::write(
        &script,
        "#!/bin/sh\necho \"modprobe: FATAL: Module $1 not found in directory /lib/modules/x\" >&2\nexit 1\n",
    )
    .unwrap();
    make_executable(&script);
    let options = BindOptions {
        modprobe: script,
        ..quick()
    };
    let err = bind::bind(&host.roots, &options).unwrap_err();
    assert!(matches!(err, BindError::ModuleMissing { .. }), "{err:?}");
    assert_eq!(err.kind(), BindErrorKind::Unsupported);
    assert!(
        err.to_string().contains("Module uio_hv_generic not found"),
        "{err}"
    );
    assert_eq!(host.writes(), vec![]);

    let options = BindOptions {
        modprobe: host.root().join("no-such-modprobe"),
        ..quick()
    };
    let err = bind::bind(&host.roots, &options).unwrap_err();
    assert!(matches!(err, BindError::ModprobeFailed { .. }), "{err:?}");
}

#[test]
fn modprobe_runs_when_the_driver_is_absent() {
    let host = FakeHost::new(Setup {
        uio_loaded: false,
        has_override: true,
        ..MODERN
    });
    // Plays the kernel: loading the module registers the driver directory.
    let driver_dir = vmbus(host.root()).join("drivers/uio_hv_generic");
    let args_file = host.root().join("modprobe-args");
    let script = host.root().join("modprobe-ok");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$@\" > {}\nmkdir -p {}\n",
            args_file.display(),
            driver_dir.display()
        ),
    )
    .unwrap();
    make_executable(&script);
    let options = BindOptions {
        modprobe: script,
        ..quick()
    };
    bind::bind(&host.roots, &options).unwrap();
    assert_eq!(fs::read_to_string(args_file).unwrap(), "uio_hv_generic\n");
}

#[test]
fn a_node_that_never_appears_times_out_and_hands_the_device_back() {
    let host = FakeHost::new(Setup {
        uio_probes: false,
        ..MODERN
    });
    let options = BindOptions {
        uio_timeout: Duration::from_millis(300),
        ..BindOptions::default()
    };
    let err = bind::bind(&host.roots, &options).unwrap_err();
    let BindError::UioTimeout { rolled_back, .. } = err else {
        panic!("{err:?}");
    };
    assert!(rolled_back);
    assert_eq!(
        host.writes(),
        vec![
            w(&override_rel(), "uio_hv_generic\n"),
            w("drivers/hv_utils/unbind", &format!("{INSTANCE}\n")),
            w("drivers_probe", &format!("{INSTANCE}\n")),
            w(&override_rel(), "\n"),
            w("drivers_probe", &format!("{INSTANCE}\n")),
        ]
    );
    let status = bind::status(&host.roots, None).unwrap();
    assert_eq!(status.driver, BoundDriver::HvUtils);
    assert!(status.kernel_dev_node.is_some());
}

#[test]
fn unbind_reverses_bind_in_order() {
    let host = FakeHost::new(MODERN);
    bind::bind(&host.roots, &quick()).unwrap();
    host.clear_writes();
    let outcome = bind::unbind(&host.roots, &UnbindOptions::default()).unwrap();
    assert!(outcome.was_bound);
    assert_eq!(outcome.driver_now, BoundDriver::HvUtils);
    assert_eq!(
        host.writes(),
        vec![
            w("drivers/uio_hv_generic/unbind", &format!("{INSTANCE}\n")),
            w(&override_rel(), "\n"),
            w("drivers_probe", &format!("{INSTANCE}\n")),
        ]
    );
    let status = bind::status(&host.roots, None).unwrap();
    assert_eq!(status.driver, BoundDriver::HvUtils);
    assert_eq!(status.driver_override, None);
    assert_eq!(status.uio, None);
    assert_eq!(
        status.kernel_dev_node,
        Some(host.root().join("dev/vmbus/hv_vss"))
    );
}

#[test]
fn unbind_after_new_id_removes_the_id() {
    let host = FakeHost::new(Setup {
        has_override: false,
        ..MODERN
    });
    bind::bind(&host.roots, &quick()).unwrap();
    host.clear_writes();
    bind::unbind(&host.roots, &UnbindOptions::default()).unwrap();
    assert_eq!(
        host.writes(),
        vec![
            w("drivers/uio_hv_generic/unbind", &format!("{INSTANCE}\n")),
            w(
                "drivers/uio_hv_generic/remove_id",
                &format!("{VSS_CLASS_GUID_STR}\n")
            ),
            w("drivers_probe", &format!("{INSTANCE}\n")),
        ]
    );
}

#[test]
fn unbind_of_a_device_on_hv_utils_writes_nothing() {
    let host = FakeHost::new(MODERN);
    let outcome = bind::unbind(&host.roots, &UnbindOptions::default()).unwrap();
    assert!(!outcome.was_bound);
    assert_eq!(outcome.driver_now, BoundDriver::HvUtils);
    assert_eq!(host.writes(), vec![]);
}

#[test]
fn unbind_refuses_a_held_uio_node_unless_forced() {
    let host = FakeHost::new(MODERN);
    let outcome = bind::bind(&host.roots, &quick()).unwrap();
    host.hold_open(777, "hv-vssd", &outcome.uio.dev_path);
    host.clear_writes();
    let err = bind::unbind(&host.roots, &UnbindOptions::default()).unwrap_err();
    assert_eq!(err.kind(), BindErrorKind::Busy);
    assert!(
        err.to_string().contains("is held by pid 777 (hv-vssd)")
            && err.to_string().contains("--force"),
        "{err}"
    );
    assert_eq!(host.writes(), vec![]);

    let forced = UnbindOptions {
        force: true,
        ..UnbindOptions::default()
    };
    let outcome = bind::unbind(&host.roots, &forced).unwrap();
    assert!(outcome.was_bound);
    assert_eq!(host.writes().len(), 3);
}

#[test]
fn a_foreign_driver_is_left_alone() {
    let host = FakeHost::new(MODERN);
    set_driver(&host.device_dir(), Some("vfio_vmbus"));
    let err = bind::bind(&host.roots, &quick()).unwrap_err();
    assert!(err.to_string().contains("vfio_vmbus"), "{err}");
    let err = bind::unbind(&host.roots, &UnbindOptions::default()).unwrap_err();
    assert!(matches!(err, BindError::UnexpectedDriver { .. }), "{err:?}");
    assert_eq!(host.writes(), vec![]);
}

#[test]
fn status_reports_driver_node_and_ring_size() {
    let host = FakeHost::new(MODERN);
    let before = bind::status(&host.roots, None).unwrap();
    assert_eq!(before.instance, INSTANCE);
    assert_eq!(before.driver, BoundDriver::HvUtils);
    assert!(before.override_supported);
    assert_eq!(before.driver_override, None);
    assert_eq!(before.uio, None);
    assert!(before.kernel_dev_node.is_some());

    bind::bind(&host.roots, &quick()).unwrap();
    let after = bind::status(&host.roots, Some(INSTANCE)).unwrap();
    assert_eq!(after.driver, BoundDriver::UioHvGeneric);
    assert_eq!(after.driver_override.as_deref(), Some("uio_hv_generic"));
    let uio = after.uio.unwrap();
    assert_eq!(uio.dev_path, host.root().join("dev/uio3"));
    assert_eq!(uio.ring_size_bytes, Some(0x20_0000));
    assert_eq!(after.kernel_dev_node, None);
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}
