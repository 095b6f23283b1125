use super::*;

const RW_LOCAL: u64 = MNT_LOCAL;

/// A `getfsstat` record (also used by the FreeBSD freeze and holder tests).
pub(crate) fn rec(fstype: &str, on: &str, from: &str, flags: u64, fsid: i32) -> StatfsRecord {
    StatfsRecord {
        fstypename: fstype.to_owned(),
        mntonname: on.to_owned(),
        mntfromname: from.to_owned(),
        flags,
        fsid: [fsid, 0x35],
    }
}

/// A default ZFS-root install with a UFS data disk, a jail's nullfs and the usual pseudo
/// filesystems.
fn zfs_root_host() -> Vec<StatfsRecord> {
    vec![
        rec("zfs", "/", "zroot/ROOT/default", RW_LOCAL, 1),
        rec("devfs", "/dev", "devfs", MNT_LOCAL, 2),
        rec("fdescfs", "/dev/fd", "fdescfs", MNT_LOCAL, 3),
        rec("procfs", "/proc", "procfs", MNT_LOCAL, 4),
        rec("zfs", "/usr/home", "zroot/usr/home", RW_LOCAL, 5),
        rec("zfs", "/var/log", "zroot/var/log", RW_LOCAL, 6),
        rec("tmpfs", "/tmp", "tmpfs", MNT_LOCAL, 7),
        rec("ufs", "/data", "/dev/da1p1", RW_LOCAL, 8),
        rec("zfs", "/tank", "tank", RW_LOCAL, 9),
        rec("nullfs", "/jails/www/data", "/data/www", RW_LOCAL, 8),
        rec("cd9660", "/cdrom", "/dev/cd0", MNT_RDONLY | MNT_LOCAL, 10),
        rec("nfs", "/net/share", "server:/export", 0, 11),
    ]
}

fn skipped_reason<'a>(plan: &'a FreeBsdPlan, mount: &str) -> &'a BsdSkipReason {
    &plan
        .skipped
        .iter()
        .find(|skipped| skipped.mount_point == mount)
        .unwrap_or_else(|| panic!("{mount} not skipped: {plan:?}"))
        .reason
}

#[test]
fn default_policy_on_a_zfs_root_host_suspends_ufs_and_syncs_pools() {
    let plan = plan_freebsd(&zfs_root_host(), &FreeBsdPolicy::default());
    assert!(!plan.is_vetoed(), "{:?}", plan.vetoes);
    assert_eq!(
        plan.ufs,
        [UfsTarget {
            mount_point: "/data".into(),
            device: "/dev/da1p1".into(),
            fsid: [8, 0x35],
        }]
    );
    assert_eq!(
        plan.zfs_sync,
        [
            ZfsPool {
                name: "tank".into(),
                mount_points: vec!["/tank".into()],
            },
            ZfsPool {
                name: "zroot".into(),
                mount_points: vec!["/".into(), "/usr/home".into(), "/var/log".into()],
            },
        ]
    );
    for pseudo in ["/dev", "/dev/fd", "/proc", "/tmp"] {
        assert_eq!(skipped_reason(&plan, pseudo), &BsdSkipReason::Pseudo);
    }
    assert_eq!(skipped_reason(&plan, "/cdrom"), &BsdSkipReason::ReadOnly);
    assert_eq!(skipped_reason(&plan, "/net/share"), &BsdSkipReason::Remote);
    assert_eq!(
        skipped_reason(&plan, "/jails/www/data"),
        &BsdSkipReason::NullfsOver {
            covered_by: "/data".into()
        }
    );
    // Every record is accounted for exactly once.
    assert_eq!(plan.mount_count(), zfs_root_host().len());
}

#[test]
fn zfs_veto_and_ignore_policies() {
    let veto = plan_freebsd(
        &zfs_root_host(),
        &FreeBsdPolicy {
            zfs: ZfsPolicy::Veto,
            ..FreeBsdPolicy::default()
        },
    );
    assert!(veto.is_vetoed());
    assert!(veto.zfs_sync.is_empty());
    assert_eq!(veto.vetoes.len(), 4);
    assert!(veto.vetoes.iter().all(|v| v.reason == VetoReason::ZfsVeto));

    let ignore = plan_freebsd(
        &zfs_root_host(),
        &FreeBsdPolicy {
            zfs: ZfsPolicy::Ignore,
            ..FreeBsdPolicy::default()
        },
    );
    assert!(!ignore.is_vetoed());
    assert!(ignore.zfs_sync.is_empty());
    assert_eq!(
        skipped_reason(&ignore, "/usr/home"),
        &BsdSkipReason::ZfsIgnored
    );
    assert_eq!(ignore.ufs.len(), 1);
}

#[test]
fn every_writable_ufs_is_its_own_target_and_read_only_ufs_is_skipped() {
    let records = vec![
        rec("ufs", "/", "/dev/ada0p2", RW_LOCAL, 1),
        rec("ufs", "/var", "/dev/ada0p3", RW_LOCAL, 2),
        rec("ufs", "/usr/obj", "/dev/ada1p1", RW_LOCAL, 3),
        rec("ufs", "/archive", "/dev/ada2p1", MNT_RDONLY | MNT_LOCAL, 4),
    ];
    let plan = plan_freebsd(&records, &FreeBsdPolicy::default());
    let mounts: Vec<_> = plan.ufs.iter().map(|t| t.mount_point.as_str()).collect();
    assert_eq!(mounts, ["/", "/var", "/usr/obj"]);
    assert_eq!(skipped_reason(&plan, "/archive"), &BsdSkipReason::ReadOnly);
    assert!(plan.zfs_sync.is_empty() && plan.vetoes.is_empty());
}

#[test]
fn the_same_ufs_twice_is_suspended_once() {
    let records = vec![
        rec("ufs", "/a", "/dev/ada0p2", RW_LOCAL, 1),
        rec("ufs", "/b", "/dev/ada0p2", RW_LOCAL, 1),
    ];
    let plan = plan_freebsd(&records, &FreeBsdPolicy::default());
    assert_eq!(plan.ufs.len(), 1);
    assert_eq!(
        skipped_reason(&plan, "/b"),
        &BsdSkipReason::SameFilesystemAs {
            suspended_via: "/a".into()
        }
    );
}

#[test]
fn other_writable_local_filesystems_veto_by_default_and_can_be_skipped() {
    let records = vec![
        rec("ufs", "/", "/dev/ada0p2", RW_LOCAL, 1),
        rec("msdosfs", "/boot/efi", "/dev/ada0p1", RW_LOCAL, 2),
        rec(
            "msdosfs",
            "/media/ro",
            "/dev/da0s1",
            MNT_RDONLY | MNT_LOCAL,
            3,
        ),
    ];
    let plan = plan_freebsd(&records, &FreeBsdPolicy::default());
    assert_eq!(
        plan.vetoes,
        [BsdVeto {
            mount_point: "/boot/efi".into(),
            fstype: "msdosfs".into(),
            reason: VetoReason::CannotQuiesce,
        }]
    );
    assert_eq!(skipped_reason(&plan, "/media/ro"), &BsdSkipReason::ReadOnly);

    let skip = plan_freebsd(
        &records,
        &FreeBsdPolicy {
            other_local: OtherFsPolicy::Skip,
            ..FreeBsdPolicy::default()
        },
    );
    assert!(!skip.is_vetoed());
    assert_eq!(
        skipped_reason(&skip, "/boot/efi"),
        &BsdSkipReason::OtherSkipped
    );
}

#[test]
fn nullfs_is_covered_by_the_deepest_mount_holding_its_lower_directory() {
    let records = vec![
        rec("ufs", "/", "/dev/ada0p2", RW_LOCAL, 1),
        rec("ufs", "/usr/local", "/dev/ada0p3", RW_LOCAL, 2),
        rec("nullfs", "/jail/usr/local", "/usr/local/share", RW_LOCAL, 2),
        // A prefix that is not a path component: /usr/localx lies on /, not /usr/local.
        rec("nullfs", "/jail/x", "/usr/localx", RW_LOCAL, 1),
    ];
    let plan = plan_freebsd(&records, &FreeBsdPolicy::default());
    assert_eq!(
        skipped_reason(&plan, "/jail/usr/local"),
        &BsdSkipReason::NullfsOver {
            covered_by: "/usr/local".into()
        }
    );
    assert_eq!(
        skipped_reason(&plan, "/jail/x"),
        &BsdSkipReason::NullfsOver {
            covered_by: "/".into()
        }
    );
}

#[test]
fn nullfs_over_nothing_listed_vetoes() {
    let records = vec![rec("nullfs", "/mnt", "relative/dir", RW_LOCAL, 1)];
    let plan = plan_freebsd(&records, &FreeBsdPolicy::default());
    assert_eq!(plan.vetoes[0].reason, VetoReason::NullfsUnknownLower);
}

#[test]
fn pool_names_from_datasets_and_snapshots() {
    assert_eq!(zfs_pool_name("zroot/ROOT/default"), "zroot");
    assert_eq!(zfs_pool_name("tank"), "tank");
    assert_eq!(zfs_pool_name("tank@snap"), "tank");
    assert_eq!(zfs_pool_name(""), "");
}

#[test]
fn policy_keys_parse_from_toml() {
    let policy: FreeBsdPolicy = toml::from_str("zfs = \"veto\"\nother_local = \"skip\"").unwrap();
    assert_eq!(
        policy,
        FreeBsdPolicy {
            zfs: ZfsPolicy::Veto,
            other_local: OtherFsPolicy::Skip
        }
    );
    assert_eq!(
        toml::from_str::<FreeBsdPolicy>("").unwrap(),
        FreeBsdPolicy {
            zfs: ZfsPolicy::Sync,
            other_local: OtherFsPolicy::Veto
        }
    );
    let bad_value = toml::from_str::<FreeBsdPolicy>("zfs = \"freeze\"").unwrap_err();
    assert!(bad_value.to_string().contains("freeze"), "{bad_value}");
    assert!(toml::from_str::<FreeBsdPolicy>("zfs_mode = \"sync\"").is_err());
}

#[test]
fn plan_serialises_with_reasons() {
    let plan = plan_freebsd(&zfs_root_host(), &FreeBsdPolicy::default());
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["skipped"][0]["reason"], "pseudo");
    assert!(ZFS_CONSISTENCY_NOTE.contains("not frozen"));
}
