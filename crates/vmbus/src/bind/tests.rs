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
