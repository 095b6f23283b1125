//! The modules of `hv-vssd` (the binary is `src/main.rs`). This library exists so that the
//! daemon's parsers of untrusted input (the config file, control requests, the app journal)
//! can be fuzzed from `fuzz/` and benched; it is not a stable API.
//!
//! The platform's parts are chosen here, once each: on Linux `startup.rs`, `fsworker.rs`
//! (FIFREEZE engine) and `guardian.rs`; on FreeBSD `startup_freebsd.rs`,
//! `fsworker_freebsd.rs` (UFS suspensions held by a single-threaded child) and
//! `guardian_freebsd.rs` (no process: the kernel resumes when the holder's fds close, and
//! the holder resumes on its own when the loop's heartbeats stop; it forwards them).
//! The transports choose theirs in [`transport`]. The rest is shared; on FreeBSD that leaves
//! some variants of shared types (UIO's queued replies, the Linux worker's retried thaw,
//! the recovery exit code) never constructed, hence the `dead_code` allowance there.

#![cfg_attr(
    not(target_os = "linux"),
    allow(
        dead_code,
        reason = "shared types keep their Linux-only variants (see above)"
    )
)]

pub mod apps;
pub mod completion;
pub mod config;
pub mod control;
pub mod daemon;
pub mod exit;
pub mod fdlimit;
#[cfg(target_os = "linux")]
pub mod fsworker;
// FreeBSD's worker is platform-neutral logic over a child process: its tests run on Linux.
#[cfg(any(target_os = "freebsd", all(test, target_os = "linux")))]
pub mod fsworker_freebsd;
#[cfg(target_os = "freebsd")]
pub use fsworker_freebsd as fsworker;
pub mod fswork;
#[cfg(target_os = "linux")]
pub mod guardian;
#[cfg(target_os = "freebsd")]
#[path = "guardian_freebsd.rs"]
pub mod guardian;
pub mod history;
pub mod kmsg;
pub mod logbuf;
pub mod manpages;
pub mod metrics;
pub mod safety;
#[cfg(target_os = "linux")]
pub mod startup;
#[cfg(target_os = "freebsd")]
#[path = "startup_freebsd.rs"]
pub mod startup;
pub mod state_dir;
pub mod transport;
