//! Planning at container scale: `make_plan` with 100, 1,000 and 5,000 extra mounts, against
//! the pairwise (O(N²)) hidden-mount detection the planner used before, measured on the
//! same table in the same run.
//!
//! The bench re-runs itself under `unshare -m --propagation private`, so every mount it
//! makes lives in a private mount namespace and vanishes with it. Each size adds, under a
//! tmpfs in a temp dir: half tmpfs mounts (a container's /dev/shm, secrets: one superblock
//! each), half bind mounts of a directory on the root filesystem (volumes: one superblock,
//! many mounts), and every tenth mount over-mounted by another tmpfs (hidden mounts).
//!
//! Figures, medians of `TRIALS` (default 5) per size, all in the same process:
//! - `make_plan`, discovery (what hv-vssd does without `--mount`): read
//!   `/proc/thread-self/mountinfo`, parse, plan; and with the explicit list of one mount;
//! - the hidden-mount pass alone, indexed (now) and pairwise (before: the old planner ran
//!   it, and a pass like it per loop image, inside every `make_plan`; so its time is a
//!   lower bound of the old planning time);
//! - `MountTableWatch::unchanged`: what FREEZE pays instead of planning when the table has
//!   not changed since the HOT_BACKUP check.
//!
//! Run (root): `cargo bench -p hv-vss-freezer --bench plan_scale` (env `TRIALS`). Not a
//! test: nothing is asserted except that the plans are right; results are printed as a
//! Markdown table.

use std::path::Path;
use std::time::{Duration, Instant};

use hv_vss_freezer::plan::{hidden_by_indexed, hidden_by_pairwise};
use hv_vss_freezer::{
    FreezerConfig, MountSource, MountTableWatch, Selection, make_plan, parse_mountinfo,
};
use hv_vss_testutil::bench::{env_count, should_run};
use hv_vss_testutil::private_ns::enter_private_mount_namespace;
use rustix::mount::{MountFlags, mount, mount_bind};

const SIZES: [usize; 3] = [100, 1_000, 5_000];

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn tmpfs(at: &Path) {
    mount("hv-vss-bench", at, "tmpfs", MountFlags::empty(), None).expect("mount tmpfs");
}

/// Adds `n` mounts under `base` (a tmpfs of this namespace), numbered from `from`.
fn add_mounts(base: &Path, volume: &Path, from: usize, n: usize) {
    for i in from..from + n {
        let at = base.join(format!("m{i}"));
        std::fs::create_dir(&at).expect("mkdir");
        if i % 2 == 0 {
            tmpfs(&at);
        } else {
            mount_bind(volume, &at).expect("bind mount");
        }
        if i % 10 == 0 {
            tmpfs(&at);
        }
    }
}

fn main() {
    if !should_run("plan_scale") {
        return;
    }
    enter_private_mount_namespace("plan_scale");
    let trials = env_count("TRIALS", 5);
    let base = tempfile::Builder::new()
        .prefix("hv-vss-plan-scale-")
        .tempdir()
        .expect("temp dir");
    let volume = tempfile::Builder::new()
        .prefix("hv-vss-plan-volume-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("volume dir");
    tmpfs(base.path());
    let source = MountSource {
        mountinfo: "/proc/thread-self/mountinfo".into(),
        ..MountSource::current()
    };
    let config = FreezerConfig::default().compile().expect("config");
    let baseline = parse_mountinfo(&std::fs::read(&source.mountinfo).expect("mountinfo"))
        .expect("parse")
        .len();
    println!(
        "| extra mounts | table | make_plan, discovery | make_plan, one listed | hidden pass, indexed | hidden pass, pairwise (before) | pairwise / make_plan | unchanged() poll |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut made = 0;
    for size in SIZES {
        add_mounts(base.path(), volume.path(), made, size - made);
        made = size;
        let listed = Selection::Explicit(vec![base.path().join("m1")]);
        let (mut discover, mut one, mut indexed, mut pairwise, mut poll) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut rows = 0;
        for trial in 0..trials {
            let t = Instant::now();
            let plan = make_plan(&source, &Selection::Discover, &config).expect("plan");
            discover.push(t.elapsed());
            let t = Instant::now();
            let p = make_plan(&source, &listed, &config).expect("plan of one");
            one.push(t.elapsed());
            assert_eq!(p.len(), 1);
            assert!(
                plan.skipped.len() >= size,
                "every extra mount is accounted for"
            );
            let mounts =
                parse_mountinfo(&std::fs::read(&source.mountinfo).expect("read")).expect("parse");
            rows = mounts.len();
            let t = Instant::now();
            let fast = hidden_by_indexed(&mounts);
            indexed.push(t.elapsed());
            // The quadratic pass takes seconds at 5,000: three trials are enough.
            if trial < 3 {
                let t = Instant::now();
                let slow = hidden_by_pairwise(&mounts);
                pairwise.push(t.elapsed());
                assert_eq!(fast, slow, "the two passes disagree");
            }
            let (mut watch, _) = MountTableWatch::read(&source).expect("watch");
            let t = Instant::now();
            let same = watch.unchanged();
            poll.push(t.elapsed());
            assert!(same, "nothing else mounts in this namespace");
        }
        let (d, o, i, p, w) = (
            median(discover),
            median(one),
            median(indexed),
            median(pairwise),
            median(poll),
        );
        println!(
            "| {size} | {rows} rows ({baseline} before) | {} | {} | {} | {} | {:.0}x | {:.1} µs |",
            ms(d),
            ms(o),
            ms(i),
            ms(p),
            p.as_secs_f64() / d.as_secs_f64(),
            w.as_secs_f64() * 1e6
        );
    }
    eprintln!("plan_scale: {trials} trials per size; mounts vanish with the namespace");
}
