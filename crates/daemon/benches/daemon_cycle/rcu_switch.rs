//! The kernel's expedited-RCU switch (`/sys/kernel/rcu_expedited`,
//! `hv_vss_freezer::expedite`) as this bench uses it.
//!
//! The switch is global: while it is on, every `synchronize_rcu` on the machine is
//! expedited, the FIFREEZE calls of every method measured here included. So the methods that
//! measure normal grace periods (stock, hv-vssd with expedite off, direct, qemu-ga, part 3's
//! pauses) run with it off, and those that measure the expedited floor turn it on around
//! their FIFREEZE calls exactly as the freezer does ([`expedited`]): only when they find it
//! off ([`check`]; an administrator's setting is left alone), and off again when the guard
//! drops, on success, error and unwinding panic alike. Should the run be cut short while
//! the guard lives (its time limit), [`restore_if_left_on`] turns it off at the end.
//!
//! Other processes on the machine (another freezer) may turn it on at any time: [`normal`]
//! counts the measurements that found it on, before or after, and [`summary`] says how many.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use hv_vss_freezer::expedite::{ExpeditedGracePeriods, RCU_EXPEDITED, check};

/// Set from just before this bench turns the switch on until it is off again.
static HELD: AtomicBool = AtomicBool::new(false);
/// Times this bench turned the switch on.
static TURNED_ON: AtomicUsize = AtomicUsize::new(0);
/// Expedited calls that found the switch on already (someone else's): expedited anyway.
static FOUND_ON: AtomicUsize = AtomicUsize::new(0);
/// Expedited calls that could not use the switch, and the last reason.
static UNAVAILABLE: Mutex<(usize, String)> = Mutex::new((0, String::new()));
/// Normal-grace-period measurements, and how many of them found the switch on.
static NORMAL: AtomicUsize = AtomicUsize::new(0);
static NORMAL_SAW_ON: AtomicUsize = AtomicUsize::new(0);

/// The switch's value now ("0", "1"), or why it cannot be read.
pub fn read() -> String {
    std::fs::read_to_string(RCU_EXPEDITED)
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|e| format!("unreadable ({e})"))
}

fn is_on() -> bool {
    read() == "1"
}

/// Turns the switch off (drop) and only then clears [`HELD`].
struct Held(Option<ExpeditedGracePeriods>);

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.0.take());
        HELD.store(false, Ordering::SeqCst);
    }
}

/// Runs `f` (FIFREEZE calls) with the switch on, as the freezer does: turned on only if
/// found off, off again when `f` returns or unwinds.
pub fn expedited<T>(f: impl FnOnce() -> T) -> T {
    let unavailable = |reason: String| {
        let mut u = UNAVAILABLE.lock().unwrap_or_else(|p| p.into_inner());
        *u = (u.0 + 1, reason);
    };
    let _on = match check(Path::new(RCU_EXPEDITED)) {
        Ok(Some(path)) => {
            HELD.store(true, Ordering::SeqCst);
            match ExpeditedGracePeriods::turn_on(path) {
                Ok(on) => {
                    TURNED_ON.fetch_add(1, Ordering::Relaxed);
                    Some(Held(Some(on)))
                }
                Err(e) => {
                    // The write failed: the switch is as it was, off.
                    HELD.store(false, Ordering::SeqCst);
                    unavailable(format!("{e:?}"));
                    None
                }
            }
        }
        Ok(None) => {
            FOUND_ON.fetch_add(1, Ordering::Relaxed);
            None
        }
        Err(e) => {
            unavailable(format!("{e:?}"));
            None
        }
    };
    f()
}

/// Runs `f`, a measurement meant to see normal grace periods, noting whether the switch
/// was on before or after it (then its FIFREEZE calls may have been expedited).
pub fn normal<T>(f: impl FnOnce() -> T) -> T {
    let before = is_on();
    let out = f();
    NORMAL.fetch_add(1, Ordering::Relaxed);
    if before || is_on() {
        NORMAL_SAW_ON.fetch_add(1, Ordering::Relaxed);
    }
    out
}

/// After a run cut short while this bench held the switch on: turns it off.
pub fn restore_if_left_on() {
    if HELD.load(Ordering::SeqCst) {
        match hv_vss_freezer::expedite::turn_off(Path::new(RCU_EXPEDITED)) {
            Ok(()) => {
                eprintln!("daemon_cycle: turned {RCU_EXPEDITED} off (left on by a cut-short run)")
            }
            Err(e) => eprintln!("daemon_cycle: cannot turn {RCU_EXPEDITED} off: {e}"),
        }
    }
}

/// One line on the switch over the run, for the results.
pub fn summary(at_start: &str) -> String {
    let (unavailable, reason) = UNAVAILABLE
        .lock()
        .map(|u| u.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    let reason = if unavailable > 0 {
        format!(" ({reason})")
    } else {
        String::new()
    };
    format!(
        "{RCU_EXPEDITED}: {at_start} at the start, {} at the end; turned on by the bench {} times, found on already {} times, unavailable {unavailable} times{reason}; normal-grace-period measurements that found it on before or after: {} of {}",
        read(),
        TURNED_ON.load(Ordering::Relaxed),
        FOUND_ON.load(Ordering::Relaxed),
        NORMAL_SAW_ON.load(Ordering::Relaxed),
        NORMAL.load(Ordering::Relaxed),
    )
}
