//! One FIFREEZE call as its thread and the freeze both see it: [`JobState`] says whether the
//! caller still waits for it, gave up on it (the thread then undoes a late success), or has
//! had its result; [`AbandonOnUnwind`] gives up on the calls still running when a panic
//! unwinds past the wait, so no late success is left frozen unowned.

use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub(super) enum JobState {
    Running,
    /// The caller gave up at the deadline; the thread undoes a late success itself.
    Abandoned,
    /// Returned and sent its result to the caller, which may not have recorded it yet
    /// (`frozen`: the result was a success, so the filesystem is ours until thawed).
    Delivered {
        frozen: bool,
    },
    /// Collected, or returned after being abandoned and left nothing frozen.
    Done,
    /// Returned after being abandoned, froze, and its FITHAW failed: still frozen, ours.
    StillFrozen,
}

pub(super) struct Job {
    pub(super) state: Mutex<JobState>,
}

/// Marks the jobs still running as abandoned if a panic unwinds past them, so that a
/// FIFREEZE returning later thaws its filesystem instead of leaving it frozen unowned.
pub(super) struct AbandonOnUnwind<'a>(pub(super) &'a [(usize, Arc<Job>)]);

impl Drop for AbandonOnUnwind<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (_, job) in self.0 {
            let mut state = job.state.lock().unwrap_or_else(|p| p.into_inner());
            if matches!(*state, JobState::Running) {
                *state = JobState::Abandoned;
            }
        }
    }
}
