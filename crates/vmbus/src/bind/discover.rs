//! Reading what the kernel shows (reads only): the VSS device instances under
//! /sys/bus/vmbus/devices, the driver bound to each, its uio node and ring size, any override,
//! and the processes holding a device node.

use super::*;

pub(super) fn require_vmbus(roots: &SystemRoots) -> Result<(), BindError> {
    let path = roots.vmbus();
    if path.is_dir() {
        Ok(())
    } else {
        Err(BindError::NoVmbus { path })
    }
}

/// `true` when a `class_id` attribute names the VSS class (`{guid}`, any case).
pub(super) fn is_vss_class(class_id: &str) -> bool {
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
pub(super) fn link_names(target: &Path, device: &Path) -> bool {
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

pub(super) fn read_driver(device_dir: &Path) -> BoundDriver {
    match fs::read_link(device_dir.join("driver")) {
        Ok(target) => target
            .file_name()
            .and_then(|n| n.to_str())
            .map_or(BoundDriver::Unbound, BoundDriver::from_name),
        Err(_) => BoundDriver::Unbound,
    }
}

/// Parses a uio map `size` attribute (`0x400000`, or decimal). Never panics.
pub(super) fn parse_map_size(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// `true` for `uio` followed by decimal digits.
pub(super) fn is_uio_name(name: &str) -> bool {
    name.strip_prefix("uio")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

pub(super) fn read_uio(roots: &SystemRoots, device_dir: &Path) -> Option<UioNode> {
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

pub(super) fn read_override(device_dir: &Path) -> (bool, Option<String>) {
    match fs::read_to_string(device_dir.join("driver_override")) {
        Ok(text) => {
            let text = text.trim();
            let value = (!text.is_empty() && text != "(null)").then(|| text.to_owned());
            (true, value)
        }
        Err(_) => (device_dir.join("driver_override").exists(), None),
    }
}

pub(super) fn status_of(roots: &SystemRoots, instance: &str) -> VssDeviceStatus {
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
