//! The freezer's crash journal (`<state_dir>/freeze-journal.json`), read by start-up
//! recovery, `hv-vss thaw --recover` and the guardian after a crash that may have left it
//! damaged: bad input is an error, never a panic, and whatever reads writes back the same
//! (escaped paths, devices and the expedited-RCU switch included).
#![no_main]

use hv_vss_freezer::Journal;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(journal) = serde_json::from_slice::<Journal>(data) {
        let text = serde_json::to_vec(&journal).expect("a journal read serialises");
        let again: Journal = serde_json::from_slice(&text).expect("what we write reads");
        assert_eq!(again, journal);
    }
});
