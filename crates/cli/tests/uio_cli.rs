//! The real `hv-vss uio` binary against fake sysfs, /dev and /proc trees, and against this
//! machine's real /sys (which has no VMBus).

use std::fs;
use std::ops::Deref;
use std::path::Path;
use std::process::{Command, Output};

use hv_vss_testutil::fake_vmbus::{
    FakeKernel, FakeVmbus, MAP0_BEFORE_0315FEF2AFF9, MAP0_CURRENT, VSS_INSTANCE as INSTANCE,
};

/// Its `uio_hv_generic` node.
const UIO_NODE: u32 = 7;

struct FakeTree {
    bus: FakeVmbus,
}

impl FakeTree {
    /// A VSS device on hv_utils, uio_hv_generic loaded. The uio node that the kernel would
    /// create on probe already exists (map 0 of an older kernel, 4 MiB), so `bind` finds it
    /// without a kernel to react.
    fn new(kernel: &str) -> Self {
        Self::with_map0(kernel, MAP0_BEFORE_0315FEF2AFF9)
    }

    fn with_map0(kernel: &str, map0_len: u64) -> Self {
        let bus = FakeVmbus::vss_on_hv_utils(kernel, true);
        bus.add_uio_driver();
        bus.add_uio_node(INSTANCE, UIO_NODE, map0_len);
        Self { bus }
    }

    /// A VSS device on hv_utils with a kernel thread that reacts as `kernel` says; no node
    /// exists before the probe.
    fn reacting(release: &str, kernel: FakeKernel) -> Self {
        let mut bus = FakeVmbus::vss_on_hv_utils(release, true);
        bus.add_uio_driver();
        bus.start_kernel(
            INSTANCE,
            FakeKernel {
                uio_node: UIO_NODE,
                ..kernel
            },
        );
        Self { bus }
    }

    fn run(&self, args: &[&str]) -> Output {
        let root = self.root();
        Command::new(env!("CARGO_BIN_EXE_hv-vss"))
            .args(args)
            .arg("--sysfs-root")
            .arg(root.join("sys"))
            .arg("--dev-root")
            .arg(root.join("dev"))
            .arg("--proc-root")
            .arg(root.join("proc"))
            .output()
            .unwrap()
    }
}

impl Deref for FakeTree {
    type Target = FakeVmbus;

    fn deref(&self) -> &FakeVmbus {
        &self.bus
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bind_prints_the_node_writes_the_attributes_and_the_env_file() {
    let tree = FakeTree::new("6.18.44-fc-v669");
    let env_file = tree.root().join("uio.env");
    let out = tree.run(&["uio", "bind", "--env-file", env_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let node = tree.root().join("dev/uio7");
    assert_eq!(stdout(&out), format!("{}\n", node.display()));
    assert!(
        stderr(&out).contains("ring 2097152 bytes"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        tree.attr(&format!("devices/{INSTANCE}/driver_override")),
        "uio_hv_generic\n"
    );
    assert_eq!(
        tree.attr("drivers/hv_utils/unbind"),
        format!("{INSTANCE}\n")
    );
    assert_eq!(tree.attr("drivers_probe"), format!("{INSTANCE}\n"));
    assert_eq!(
        fs::read_to_string(&env_file).unwrap(),
        format!("HV_VSS_UIO_DEVICE={}\n", node.display())
    );
}

#[test]
fn status_json_reports_driver_node_and_ring() {
    let tree = FakeTree::new("6.10.0-1-azure");
    let out = tree.run(&["uio", "status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["instance"], INSTANCE);
    assert_eq!(v["driver"], "hv_utils");
    assert_eq!(v["driver_override"], serde_json::Value::Null);
    assert_eq!(
        v["kernel_device"],
        tree.root().join("dev/vmbus/hv_vss").display().to_string()
    );
    assert_eq!(v["kernel_release"], "6.10.0-1-azure");
    assert_eq!(v["kernel_at_least_6_10"], true);
    assert_eq!(v["monitor_page"], false);

    // What the kernel does once bound.
    tree.set_driver(INSTANCE, Some("uio_hv_generic"));
    fs::write(
        tree.device_dir(INSTANCE).join("driver_override"),
        "uio_hv_generic\n",
    )
    .unwrap();
    let out = tree.run(&["uio", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["driver"], "uio_hv_generic");
    assert_eq!(v["driver_override"], "uio_hv_generic");
    assert_eq!(
        v["uio_device"],
        tree.root().join("dev/uio7").display().to_string()
    );
    assert_eq!(v["ring_size_bytes"], 2 * 1024 * 1024);

    let out = tree.run(&["uio", "status"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("driver:          uio_hv_generic"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("2097152 bytes per direction"),
        "{}",
        stdout(&out)
    );
}

/// R16: the kernel version decides nothing. A kernel older than 6.10 whose driver takes
/// the device is bound, with the version printed as a hint.
#[test]
fn an_old_kernel_is_tried_and_its_version_only_printed_as_a_hint() {
    let tree = FakeTree::new("5.15.0-1057-azure");
    let out = tree.run(&["uio", "bind"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("{}\n", tree.root().join("dev/uio7").display())
    );
    let err = stderr(&out);
    assert!(
        err.contains("kernel 5.15.0-1057-azure, older than 6.10"),
        "{err}"
    );
}

/// R16: the driver refusing the device exits 3, says so, and the bind is undone.
#[test]
fn a_driver_that_refuses_the_device_exits_3_and_the_bind_is_undone() {
    let tree = FakeTree::reacting(
        "6.12.53-azure",
        FakeKernel {
            uio_probes: false,
            ..FakeKernel::default()
        },
    );
    let out = tree.run(&["uio", "bind", "--timeout-ms", "300"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("uio_hv_generic refused VSS device"), "{err}");
    assert!(err.contains("handed back to hv_utils"), "{err}");
    assert_eq!(stdout(&out), "");
    assert_eq!(
        tree.attr(&format!("devices/{INSTANCE}/driver_override")),
        "\n",
        "steering undone"
    );
    let _ = tree.writes(); // lets the fake kernel react to the last probe
    assert!(
        tree.root().join("dev/vmbus/hv_vss").exists(),
        "back on hv_utils"
    );
}

/// R16: no /dev/uioN appearing exits 1 and undoes the bind.
#[test]
fn no_uio_node_appearing_exits_1_and_the_bind_is_undone() {
    let tree = FakeTree::reacting(
        "6.12.53-azure",
        FakeKernel {
            creates_node: false,
            ..FakeKernel::default()
        },
    );
    let out = tree.run(&["uio", "bind", "--timeout-ms", "300"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("no /dev/uioN appeared"), "{err}");
    assert!(err.contains("bind was undone"), "{err}");
    assert_eq!(
        tree.attr("drivers/uio_hv_generic/unbind"),
        format!("{INSTANCE}\n")
    );
    let _ = tree.writes(); // lets the fake kernel react to the last probe
    assert!(
        tree.root().join("dev/vmbus/hv_vss").exists(),
        "back on hv_utils"
    );
}

/// R16, wire §3.3: a channel with a monitor page exits 3 before anything is written.
#[test]
fn a_monitor_page_exits_3_before_any_write() {
    let tree = FakeTree::new("6.12.53-azure");
    tree.add_monitor_page(INSTANCE);
    let out = tree.run(&["uio", "bind"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("has a monitor page"), "{err}");
    assert_eq!(stdout(&out), "");
    assert_eq!(tree.attr("drivers_probe"), "", "nothing may be written");
    assert_eq!(
        tree.attr(&format!("devices/{INSTANCE}/driver_override")),
        "(null)\n"
    );
    let out = tree.run(&["uio", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["monitor_page"], true);
}

/// Wire §3.2: the ring size printed is map 0 / 2 as sysfs gives it, on current (0x402000)
/// and older (0x400000) kernels.
#[test]
fn status_reads_the_ring_size_of_current_and_older_kernels() {
    for (map0_len, ring) in [
        (MAP0_CURRENT, 2_101_248),
        (MAP0_BEFORE_0315FEF2AFF9, 2_097_152),
    ] {
        let tree = FakeTree::with_map0("6.12.53-azure", map0_len);
        tree.set_driver(INSTANCE, Some("uio_hv_generic"));
        let out = tree.run(&["uio", "status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(v["ring_size_bytes"], ring, "map 0 {map0_len:#x}");
        let out = tree.run(&["uio", "status"]);
        assert!(
            stdout(&out).contains(&format!("{ring} bytes per direction")),
            "{}",
            stdout(&out)
        );
    }
}

#[test]
fn busy_device_exits_4_and_names_the_holder() {
    let tree = FakeTree::new("6.10.0");
    tree.hold_open(1234, "hv_vss_daemon", &tree.root().join("dev/vmbus/hv_vss"));
    let out = tree.run(&["uio", "bind"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is held by pid 1234 (hv_vss_daemon)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(tree.attr("drivers/hv_utils/unbind"), "");
}

#[test]
fn unbind_gives_the_device_back() {
    let mut tree = FakeTree::new("6.10.0");
    tree.set_driver(INSTANCE, Some("uio_hv_generic"));
    fs::write(
        tree.device_dir(INSTANCE).join("driver_override"),
        "uio_hv_generic\n",
    )
    .unwrap();
    let env_file = tree.root().join("uio.env");
    fs::write(&env_file, "HV_VSS_UIO_DEVICE=/dev/uio7\n").unwrap();

    // The kernel: unbinding from uio_hv_generic drops the node; once drivers_probe is
    // written, hv_utils takes the device.
    tree.bus.start_kernel(
        INSTANCE,
        FakeKernel {
            uio_node: UIO_NODE,
            ..FakeKernel::default()
        },
    );
    let out = tree.run(&["uio", "unbind", "--env-file", env_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("returned to hv_utils"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        tree.attr("drivers/uio_hv_generic/unbind"),
        format!("{INSTANCE}\n")
    );
    assert_eq!(
        tree.attr(&format!("devices/{INSTANCE}/driver_override")),
        "\n"
    );
    assert!(!env_file.exists());

    // Again: nothing to do, still success.
    let out = tree.run(&["uio", "unbind"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("nothing to do"), "{}", stdout(&out));
}

#[test]
fn help_documents_the_exit_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_hv-vss"))
        .args(["uio", "bind", "--help"])
        .output()
        .unwrap();
    let help = stdout(&out);
    assert!(help.contains("3  not supported here"), "{help}");
    assert!(help.contains("monitor page"), "{help}");
    assert!(help.contains("refused the device"), "{help}");
    assert!(help.contains("4  busy"), "{help}");
    assert!(
        !help.contains("--sysfs-root"),
        "test flags stay hidden: {help}"
    );
}

/// This machine is not a Hyper-V guest: the real /sys has no VMBus.
#[test]
fn real_sys_without_vmbus_says_not_a_hyperv_guest() {
    if Path::new("/sys/bus/vmbus").exists() {
        eprintln!("skipped: /sys/bus/vmbus exists here (a Hyper-V guest); not touching it");
        return;
    }
    for args in [
        &["uio", "status"][..],
        &["uio", "bind"][..],
        &["uio", "unbind"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_hv-vss"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("no VMBus: /sys/bus/vmbus does not exist")
                && err.contains("not a Hyper-V/Azure guest"),
            "{args:?}: {err}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_hv-vss"))
        .args(["uio", "status", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["kind"], "unsupported");
}
