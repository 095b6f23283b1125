//! hv-vss hooks: executables in hook directories, told `freeze` before the first FIFREEZE
//! and `thaw` (or `abort`) after the last FITHAW (R49-R54).
//!
//! # Contract
//!
//! - **Where.** Each [`HookDir`] (default [`HookDir::DEFAULT_PATH`], `/etc/hv-vss/hooks.d`)
//!   has a [`HookStyle`] and a per-hook timeout. A missing directory holds no hooks.
//! - **Which.** [`HookSet::load`] reads the directory once, before a freeze, and keeps the
//!   hooks that pass these rules: root-owned regular files, executable,
//!   not writable by group or others, in a directory with the same owner and mode rule;
//!   dot-files and `*~`, `.bak`, `.rpm*`, `.dpkg-*`, `.sample` names skipped; symlinks
//!   followed only to targets that pass the same rules. Every other entry is in
//!   [`HookSet::skipped`] with the reason; the caller logs them. A directory that fails the
//!   rule is an error ([`HookError::UnsafeDir`]) and none of its files run.
//! - **Order.** Byte order of the file names on freeze; reverse on thaw and abort.
//! - **Veto.** On freeze the first hook that does not exit 0 (exit status, signal, timeout,
//!   spawn failure) stops the run: [`RunReport::ok`] is false and later hooks are not run.
//!   The hooks [`RunReport::started`], the failing one included, then get `abort` in reverse
//!   from [`HookSet::run_abort`]. [`HookSet::run`] with [`HookOp::Abort`] tells every hook,
//!   for when the freeze report is lost.
//! - **Thaw and abort** run every due hook even past failures; failures make `ok` false.
//! - **Arguments** per style: `native` freeze/thaw/abort; `qemu-ga` freeze/thaw with abort
//!   sent as thaw; `vmware` freeze/thaw with abort sent as `freezeFail`.
//! - **Time.** Each hook gets `min(timeout, deadline - now)`; at the end its whole process
//!   group is killed with `SIGKILL`. A hook due after the deadline is not started
//!   ([`HookOutcome::DeadlinePassed`]). [`HookSet::budget`] is the deadline distance that
//!   never cuts a thaw short.
//! - **Process.** New session (`setsid`), stdin `/dev/null`, stdout and stderr captured
//!   together in memory (first [`OUTPUT_LIMIT`] bytes, the rest flagged truncated), cwd `/`,
//!   environment `PATH` only, no inherited descriptor beyond 0-2. See the `exec` module doc.
//! - **Permission.** [`HookSet::run_if`] and [`HookRunner::spawn_gated`] ask the caller's
//!   `may_exec` right before each hook; a refused hook is not started ([`REFUSED`]), which
//!   on freeze is a veto. hv-vssd passes its freeze-safety owner's answer: nothing is
//!   executed while its filesystems are frozen, whatever the order of events.
//! - **No files.** Nothing here writes a file or logs: output goes to the caller in
//!   [`HookResult`], so it is never written while filesystems are frozen unless the caller
//!   does.
//!
//! # Use
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//! use hv_vss_hooks::{HookDir, HookOp, HookRunner, HookSet, HookStyle};
//!
//! let dir = HookDir::new("/etc/hv-vss/hooks.d", HookStyle::Native);
//! let set = Arc::new(HookSet::load(&dir)?);
//! for skipped in set.skipped() {
//!     eprintln!("hook skipped: {skipped}");
//! }
//! // Blocking:
//! let freeze = set.run(HookOp::Freeze, Instant::now() + Duration::from_secs(60));
//! if !freeze.ok {
//!     set.run_abort(&freeze, Instant::now() + set.budget());
//! }
//! // Or from a poll loop: wait for runner.wake_fd() to be readable, then drain().
//! let runner = HookRunner::spawn()?;
//! runner.start(7, Arc::clone(&set), HookOp::Thaw, Instant::now() + set.budget());
//! for (job, report) in runner.drain() {
//!     println!("job {job}: ok={}", report.ok);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod exec;
mod runner;
mod scan;
mod set;
mod style;

use std::path::PathBuf;
use std::time::Duration;

pub use exec::{HOOK_PATH, HookOutcome, HookResult, KILL_GRACE, OUTPUT_LIMIT};
pub use runner::{HookRunner, MayExec};
pub use scan::{SkipReason, Skipped, Unsafe};
pub use set::{HookSet, REFUSED, RunReport};
pub use style::{HookOp, HookStyle, UnknownStyle};

/// One configured hook directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookDir {
    /// Where the hooks are.
    pub path: PathBuf,
    /// How they are called.
    pub style: HookStyle,
    /// The most one hook may take for one operation.
    pub timeout: Duration,
}

impl HookDir {
    /// hv-vss's own hook directory.
    pub const DEFAULT_PATH: &str = "/etc/hv-vss/hooks.d";
    /// Per-hook timeout when the configuration names none.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    /// A directory with the default timeout.
    pub fn new(path: impl Into<PathBuf>, style: HookStyle) -> Self {
        HookDir {
            path: path.into(),
            style,
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }
}

/// Why a hook directory cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The directory, or one of its ancestors, fails the owner and mode rule: none of its
    /// files run.
    #[error("hook directory {path} is unsafe: {why}")]
    UnsafeDir {
        /// The offending directory (the hook directory or an ancestor, resolved).
        path: PathBuf,
        /// What is wrong with it.
        why: Unsafe,
    },
    /// The configured path exists and is not a directory.
    #[error("hook directory {path} is not a directory")]
    NotADirectory {
        /// The configured path.
        path: PathBuf,
    },
    /// The directory could not be read.
    #[error("hook directory {path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}
