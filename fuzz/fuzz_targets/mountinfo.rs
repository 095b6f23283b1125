#![no_main]
//! Fuzz the mountinfo parser: arbitrary bytes must parse or give an error, never panic; a
//! parsed table must also plan without panicking.
use hv_vss_freezer::{FreezerConfig, Selection, build_plan, parse_mountinfo};

struct NoTopology;

impl hv_vss_freezer::Topology for NoTopology {
    fn lower(&self, _: hv_vss_freezer::DevNum) -> Vec<hv_vss_freezer::topology::Lower> {
        Vec::new()
    }
    fn dev_of_path(&self, _: &std::path::Path) -> Option<hv_vss_freezer::DevNum> {
        None
    }
    fn block_device(&self, _: &std::path::Path) -> Option<hv_vss_freezer::DevNum> {
        None
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(mounts) = parse_mountinfo(data) {
        if mounts.len() <= 64 {
            let config = FreezerConfig::default()
                .compile()
                .expect("default config compiles");
            let _ = build_plan(&mounts, &NoTopology, &Selection::Discover, &config, None);
        }
    }
});
