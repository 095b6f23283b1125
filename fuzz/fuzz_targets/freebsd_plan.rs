#![no_main]
//! The FreeBSD policy keys (`zfs`, `other_local`) from TOML, and the mount selection over
//! records cut from arbitrary text. Bad input must come back as an error, never a panic,
//! and every record must end up in exactly one place of the plan.
use hv_vss_freezer::freebsd_plan::{self, FreeBsdPolicy, StatfsRecord};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policy = toml::from_str::<FreeBsdPolicy>(text).unwrap_or_default();
    // One record per line: type, mount point, source, flags, fsid, separated by spaces.
    let records: Vec<StatfsRecord> = text
        .lines()
        .map(|line| {
            let mut fields = line.split(' ');
            let mut next = || fields.next().unwrap_or("").to_owned();
            StatfsRecord {
                fstypename: next(),
                mntonname: next(),
                mntfromname: next(),
                flags: next().parse().unwrap_or(0),
                fsid: [next().parse().unwrap_or(0), 0],
            }
        })
        .collect();
    let plan = freebsd_plan::plan_freebsd(&records, &policy);
    assert_eq!(plan.mount_count(), records.len());
});
