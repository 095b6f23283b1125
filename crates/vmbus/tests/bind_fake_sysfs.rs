//! `bind`/`unbind`/`status` against fake sysfs, /dev and /proc trees in a temp dir.
//!
//! The trees and the thread that plays the kernel's part (recording every attribute write
//! with its exact bytes, in order, and reacting as the vmbus core would) are
//! `hv_vss_testutil::fake_vmbus`, shared with the CLI's and the daemon's tests. Here the
//! kernel's `uio_hv_generic` node is `uio3`, with a current kernel's map 0 (0x402000 bytes:
//! rings of 2 MiB + one page) unless a test says otherwise.

use std::fs;
use std::ops::Deref;
use std::path::Path;
use std::time::Duration;

use hv_vss_protocol::guid::VSS_CLASS_GUID_STR;
use hv_vss_testutil::fake_vmbus::{
    FCOPY_INSTANCE, FakeKernel, FakeVmbus, MAP0_BEFORE_0315FEF2AFF9, MAP0_CURRENT,
    VSS_INSTANCE as INSTANCE, written as w,
};
use hv_vss_vmbus::bind::{
    self, BindError, BindErrorKind, BindOptions, BoundDriver, OverrideMethod, SystemRoots,
    UnbindOptions,
};

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

/// The VSS device on `hv_utils` (the file-copy device beside it), with the fake kernel
/// running for it; its `uio_hv_generic` node is `uio3`.
struct FakeHost {
    bus: FakeVmbus,
    roots: SystemRoots,
}

impl FakeHost {
    fn new(setup: Setup) -> Self {
        let mut bus = FakeVmbus::vss_on_hv_utils(setup.kernel, setup.has_override);
        if setup.uio_loaded {
            bus.add_uio_driver();
        }
        bus.start_kernel(
            INSTANCE,
            FakeKernel {
                uio_probes: setup.uio_probes,
                ..FakeKernel::default()
            },
        );
        let roots = SystemRoots::under(bus.root());
        Self { bus, roots }
    }
}

impl Deref for FakeHost {
    type Target = FakeVmbus;

    fn deref(&self) -> &FakeVmbus {
        &self.bus
    }
}

fn override_rel() -> String {
    format!("devices/{INSTANCE}/driver_override")
}

/// The writes of a bind from `hv_utils` with `driver_override`, in order.
fn bind_writes() -> Vec<(String, String)> {
    vec![
        w(&override_rel(), "uio_hv_generic\n"),
        w("drivers/hv_utils/unbind", &format!("{INSTANCE}\n")),
        w("drivers_probe", &format!("{INSTANCE}\n")),
    ]
}

/// `bind_writes`, then `more`.
fn bind_writes_then(more: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut all = bind_writes();
    all.extend(more.iter().map(|(rel, value)| w(rel, value)));
    all
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
    assert_eq!(outcome.uio.ring_size_bytes, Some(0x20_1000));
    assert_eq!(outcome.kernel.to_string(), "kernel 6.10.0-1-azure");
    assert_eq!(host.writes(), bind_writes());
    // The file-copy device was not touched.
    assert_eq!(
        fs::read_to_string(host.device_dir(FCOPY_INSTANCE).join("driver_override")).unwrap(),
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

/// Eligibility is decided by trying: a kernel older than 6.10 whose `uio_hv_generic`
/// takes the device (a distribution kernel carrying the 2024 series) is bound; the version
/// is only a hint.
#[test]
fn an_old_kernel_that_carries_the_series_is_bound() {
    let host = FakeHost::new(Setup {
        kernel: "5.15.0-1057-azure",
        ..MODERN
    });
    let outcome = bind::bind(&host.roots, &quick()).unwrap();
    assert_eq!(outcome.uio.dev_path, host.root().join("dev/uio3"));
    assert_eq!(outcome.kernel.at_least_6_10(), Some(false));
    assert_eq!(
        bind::status(&host.roots, None).unwrap().driver,
        BoundDriver::UioHvGeneric
    );
}

#[test]
fn kernel_release_override_wins_over_proc() {
    let mut host = FakeHost::new(MODERN);
    host.roots.kernel_release = Some("6.9.0".to_owned());
    let outcome = bind::bind(&host.roots, &quick()).unwrap();
    assert_eq!(outcome.kernel.release.as_deref(), Some("6.9.0"));
}

/// R16: the driver refusing the device (as kernels without the series do, whatever their
/// version) is reported as such, with the version as a hint, and the bind is undone.
#[test]
fn a_driver_that_refuses_the_device_is_reported_and_the_bind_undone() {
    for kernel in ["6.12.53-azure", "5.15.0-1057-azure"] {
        let host = FakeHost::new(Setup {
            kernel,
            uio_probes: false,
            ..MODERN
        });
        let options = BindOptions {
            uio_timeout: Duration::from_millis(300),
            ..BindOptions::default()
        };
        let err = bind::bind(&host.roots, &options).unwrap_err();
        let BindError::DriverRefused {
            rolled_back,
            ref driver_now,
            ..
        } = err
        else {
            panic!("{err:?}");
        };
        assert!(rolled_back);
        assert_eq!(*driver_now, BoundDriver::Unbound);
        assert_eq!(err.kind(), BindErrorKind::Unsupported);
        let msg = err.to_string();
        assert!(msg.contains("refused") && msg.contains(kernel), "{msg}");
        assert_eq!(
            msg.contains("older than 6.10"),
            kernel.starts_with('5'),
            "{msg}"
        );
        let probe = format!("{INSTANCE}\n");
        assert_eq!(
            host.writes(),
            bind_writes_then(&[(&override_rel(), "\n"), ("drivers_probe", &probe)])
        );
        let status = bind::status(&host.roots, None).unwrap();
        assert_eq!(status.driver, BoundDriver::HvUtils, "handed back");
        assert!(status.kernel_dev_node.is_some());
    }
}

/// R16, wire §3.3: a channel with a monitor page would never get its replies signalled;
/// it is refused before anything is written.
#[test]
fn a_device_with_a_monitor_page_is_refused_before_any_write() {
    let host = FakeHost::new(MODERN);
    host.add_monitor_page(INSTANCE);
    host.clear_writes();
    let err = bind::bind(&host.roots, &quick()).unwrap_err();
    assert!(matches!(err, BindError::MonitorPage { .. }), "{err:?}");
    assert_eq!(err.kind(), BindErrorKind::Unsupported);
    assert!(err.to_string().contains("monitor page"), "{err}");
    assert_eq!(host.writes(), vec![]);
    assert_eq!(
        bind::status(&host.roots, None).unwrap().driver,
        BoundDriver::HvUtils
    );
}

#[test]
fn no_vss_device_is_named() {
    let host = FakeHost::new(MODERN);
    fs::remove_dir_all(host.device_dir(INSTANCE)).unwrap();
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
    host.add_device(other, VSS_CLASS_GUID_STR, true);
    host.set_driver(other, Some("hv_utils"));
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
    let driver_dir = host.vmbus().join("drivers/uio_hv_generic");
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

/// The driver takes the device but no node appears: reported as such, and undone (unbound
/// from uio_hv_generic, override cleared, probed back to hv_utils).
#[test]
fn a_node_that_never_appears_times_out_and_hands_the_device_back() {
    let mut bus = FakeVmbus::vss_on_hv_utils(MODERN.kernel, true);
    bus.add_uio_driver();
    bus.start_kernel(
        INSTANCE,
        FakeKernel {
            creates_node: false,
            ..FakeKernel::default()
        },
    );
    let roots = SystemRoots::under(bus.root());
    let options = BindOptions {
        uio_timeout: Duration::from_millis(300),
        ..BindOptions::default()
    };
    let err = bind::bind(&roots, &options).unwrap_err();
    let BindError::UioTimeout { rolled_back, .. } = err else {
        panic!("{err:?}");
    };
    assert!(rolled_back);
    let instance = format!("{INSTANCE}\n");
    assert_eq!(
        bus.writes(),
        bind_writes_then(&[
            ("drivers/uio_hv_generic/unbind", &instance),
            (&override_rel(), "\n"),
            ("drivers_probe", &instance),
        ])
    );
    let status = bind::status(&roots, None).unwrap();
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
    host.set_driver(INSTANCE, Some("vfio_vmbus"));
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
    assert_eq!(uio.ring_size_bytes, Some(0x20_1000));
    assert_eq!(after.kernel_dev_node, None);
}

/// Wire §3.2, §3.4: map 0 is 0x402000 bytes on current kernels (2 MiB + one page per ring)
/// and 0x400000 on older ones; the ring size is read from sysfs, never assumed.
#[test]
fn ring_size_comes_from_map0_on_current_and_older_kernels() {
    for (map0_len, ring) in [
        (MAP0_CURRENT, 0x20_1000),
        (MAP0_BEFORE_0315FEF2AFF9, 0x20_0000),
    ] {
        let mut bus = FakeVmbus::vss_on_hv_utils(MODERN.kernel, true);
        bus.add_uio_driver();
        bus.start_kernel(
            INSTANCE,
            FakeKernel {
                map0_len,
                ..FakeKernel::default()
            },
        );
        let roots = SystemRoots::under(bus.root());
        let outcome = bind::bind(&roots, &quick()).unwrap();
        assert_eq!(
            outcome.uio.ring_size_bytes,
            Some(ring),
            "map 0 {map0_len:#x}"
        );
        let status = bind::status(&roots, None).unwrap();
        assert_eq!(status.uio.unwrap().ring_size_bytes, Some(ring));
    }
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}
