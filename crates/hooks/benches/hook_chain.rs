//! Hook chain benchmark: what N trivial hooks cost a freeze (and a thaw), run one after
//! another as R49 asks (and as qemu-ga and open-vm-tools do).
//!
//! Setup per N (1, 10, 100, 1000): a root-owned 0755 directory in /tmp with N scripts
//! `#!/bin/sh` + `exit 0`, mode 0755. Per trial it measures `HookSet::load` (readdir, the
//! name, owner and mode rules), `run(Freeze)` and `run(Thaw)`: each hook is re-checked,
//! spawned with setsid and a pipe, waited for through a pidfd, and reaped.
//!
//! Run (root): `cargo bench -p hv-vss-hooks --bench hook_chain` (env `TRIALS`, default 5).
//! Not a test: nothing is asserted; medians are printed as a Markdown table.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use hv_vss_hooks::{HookDir, HookOp, HookSet, HookStyle};
use hv_vss_testutil::bench::{env_count, should_run};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn main() {
    if !should_run("hook_chain") {
        return;
    }
    let trials = env_count("TRIALS", 5);
    println!("| hooks | load (ms) | freeze (ms) | thaw (ms) | per hook on freeze (ms) |");
    println!("|---:|---:|---:|---:|---:|");
    for count in [1usize, 10, 100, 1000] {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        for i in 0..count {
            let path = tmp.path().join(format!("{i:04}-hook"));
            fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let dir = HookDir::new(tmp.path(), HookStyle::Native);
        let (mut load, mut freeze, mut thaw) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..trials {
            let start = Instant::now();
            let set = HookSet::load(&dir).unwrap();
            load.push(start.elapsed());
            assert_eq!(set.hooks().len(), count);

            let deadline = Instant::now() + set.budget();
            let start = Instant::now();
            let report = set.run(HookOp::Freeze, deadline);
            freeze.push(start.elapsed());
            assert!(report.ok, "{:?}", report.failures().next());

            let start = Instant::now();
            let report = set.run(HookOp::Thaw, Instant::now() + set.budget());
            thaw.push(start.elapsed());
            assert!(report.ok);
        }
        let freeze = median(freeze);
        println!(
            "| {count} | {} | {} | {} | {:.2} |",
            ms(median(load)),
            ms(freeze),
            ms(median(thaw)),
            freeze.as_secs_f64() * 1e3 / count as f64
        );
    }
}
