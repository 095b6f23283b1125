//! A loaded hook directory and running it for one operation.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::exec::{HookOutcome, HookResult, run_hook};
use crate::scan::{self, DirChainError, Skipped};
use crate::{HookDir, HookError, HookOp, HookStyle};

/// Why a hook the caller's `may_exec` refused was not started.
pub const REFUSED: &str = "refused: nothing may be executed now (filesystems are frozen)";

/// The hooks of one directory, checked once before a freeze. The same set is then given the
/// thaw or abort, so a hook added or removed in between cannot get a thaw without a freeze.
#[derive(Debug, Clone)]
pub struct HookSet {
    dir: PathBuf,
    style: HookStyle,
    timeout: Duration,
    /// In freeze order: byte order of the file name.
    hooks: Vec<PathBuf>,
    skipped: Vec<Skipped>,
}

/// The outcome of running a set for one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// The operation.
    pub op: HookOp,
    /// Every hook that was due ran and exited 0. On freeze, `false` is a veto.
    pub ok: bool,
    /// One entry per hook told or due, in the order they ran.
    pub results: Vec<HookResult>,
}

impl RunReport {
    /// The hooks whose code was started for this operation (whatever the result), in run
    /// order. After a freeze these are the hooks that must get an abort.
    pub fn started(&self) -> impl Iterator<Item = &Path> {
        self.results
            .iter()
            .filter(|r| r.outcome.was_started())
            .map(|r| r.path.as_path())
    }

    /// The results that are not a success.
    pub fn failures(&self) -> impl Iterator<Item = &HookResult> {
        self.results.iter().filter(|r| !r.outcome.is_success())
    }
}

impl HookSet {
    /// Read and check `dir`.
    ///
    /// A directory that does not exist gives an empty set. A directory (or an ancestor) that
    /// fails the directory rule is an error naming it and why; so is one that cannot be read.
    /// Entries that fail the name or file rules are listed in [`HookSet::skipped`].
    pub fn load(dir: &HookDir) -> Result<HookSet, HookError> {
        let empty = |hooks, skipped| HookSet {
            dir: dir.path.clone(),
            style: dir.style,
            timeout: dir.timeout,
            hooks,
            skipped,
        };
        let io_error = |path: &Path, source| HookError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = match std::fs::metadata(&dir.path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(empty(Vec::new(), Vec::new()));
            }
            Err(e) => return Err(io_error(&dir.path, e)),
        };
        if !meta.is_dir() {
            return Err(HookError::NotADirectory {
                path: dir.path.clone(),
            });
        }
        let canonical = std::fs::canonicalize(&dir.path).map_err(|e| io_error(&dir.path, e))?;
        let chain_error = |e| match e {
            DirChainError::Unsafe(path, why) => HookError::UnsafeDir { path, why },
            DirChainError::Io(path, source) => HookError::Io { path, source },
        };
        scan::check_dir_chain(&canonical).map_err(chain_error)?;
        let is_link = std::fs::symlink_metadata(&dir.path).is_ok_and(|m| m.is_symlink());
        if let (true, Some(link_dir)) = (is_link, dir.path.parent()) {
            // Whoever may replace the link chooses the directory.
            let link_dir = std::fs::canonicalize(link_dir).map_err(|e| io_error(link_dir, e))?;
            scan::check_ancestors(&link_dir).map_err(chain_error)?;
        }

        let absolute_dir = std::path::absolute(&dir.path).map_err(|e| io_error(&dir.path, e))?;
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&dir.path).map_err(|e| io_error(&dir.path, e))? {
            let entry = entry.map_err(|e| io_error(&dir.path, e))?;
            entries.push(entry.file_name());
        }
        // OsString orders by bytes on Unix: the lexical order R49 asks for.
        entries.sort();

        let mut hooks = Vec::new();
        let mut skipped = Vec::new();
        for name in entries {
            // Absolute: hooks run with the working directory `/`, where a relative program
            // path would name something else.
            let path = absolute_dir.join(&name);
            match scan::classify(&name, &path) {
                Ok(()) => hooks.push(path),
                Err(reason) => skipped.push(Skipped { path, reason }),
            }
        }
        Ok(empty(hooks, skipped))
    }

    /// The directory as configured.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory's style.
    pub fn style(&self) -> HookStyle {
        self.style
    }

    /// The per-hook timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The hooks that run, in freeze order: absolute paths, the directory as configured (not
    /// resolved) joined with the file name.
    pub fn hooks(&self) -> &[PathBuf] {
        &self.hooks
    }

    /// The entries that do not run, with the reason; each deserves a warning in the log.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// The longest a run of every hook can take (hooks × timeout, plus the kill grace of
    /// each): a thaw or abort deadline at least this far away never cuts a hook short.
    pub fn budget(&self) -> Duration {
        let per_hook = self.timeout.saturating_add(crate::exec::KILL_GRACE);
        per_hook.saturating_mul(self.hooks.len().try_into().unwrap_or(u32::MAX))
    }

    /// Run every hook for `op`. Blocking.
    ///
    /// - `Freeze`: in order; stops at the first hook that does not exit 0 (the veto); the
    ///   hooks after it are not run. The report's [`RunReport::started`] are then the hooks to
    ///   abort (see [`HookSet::run_abort`]).
    /// - `Thaw`, `Abort`: in reverse order, every hook, past failures.
    ///
    /// Each hook gets `min(timeout, deadline - now)`. A hook due after the deadline is not
    /// started and is reported [`HookOutcome::DeadlinePassed`].
    pub fn run(&self, op: HookOp, deadline: Instant) -> RunReport {
        self.run_if(op, deadline, &|| true)
    }

    /// [`HookSet::run`], asking `may_exec` right before each hook is started: a hook it
    /// refuses is not started and is reported [`HookOutcome::SpawnFailed`] (on freeze, a
    /// veto). The caller's own rule (a daemon: nothing is executed while filesystems are
    /// frozen, R60), checked by every hook.
    pub fn run_if(&self, op: HookOp, deadline: Instant, may_exec: &dyn Fn() -> bool) -> RunReport {
        match op {
            HookOp::Freeze => self.run_in_order(op, self.hooks.iter(), deadline, may_exec),
            HookOp::Thaw | HookOp::Abort => {
                self.run_in_order(op, self.hooks.iter().rev(), deadline, may_exec)
            }
        }
    }

    /// Abort after a failed backup: run `abort` on exactly the hooks that `freeze` started,
    /// including the one that vetoed or timed out, in reverse order, every one past failures.
    /// Hooks that never started (after a veto, past the deadline, or failing to spawn) are not
    /// told. Use [`HookSet::run`] with [`HookOp::Abort`] only when the freeze report is lost.
    pub fn run_abort(&self, freeze: &RunReport, deadline: Instant) -> RunReport {
        self.run_abort_if(freeze, deadline, &|| true)
    }

    /// [`HookSet::run_abort`], asking `may_exec` before each hook as [`HookSet::run_if`].
    pub fn run_abort_if(
        &self,
        freeze: &RunReport,
        deadline: Instant,
        may_exec: &dyn Fn() -> bool,
    ) -> RunReport {
        let told: HashSet<&Path> = freeze.started().collect();
        let hooks = self
            .hooks
            .iter()
            .rev()
            .filter(|p| told.contains(p.as_path()));
        self.run_in_order(HookOp::Abort, hooks, deadline, may_exec)
    }

    fn run_in_order<'a>(
        &self,
        op: HookOp,
        hooks: impl Iterator<Item = &'a PathBuf>,
        deadline: Instant,
        may_exec: &dyn Fn() -> bool,
    ) -> RunReport {
        let arg = self.style.arg(op);
        let mut results = Vec::new();
        let mut ok = true;
        for path in hooks {
            let result = self.run_one(path, arg, deadline, may_exec);
            let failed = !result.outcome.is_success();
            results.push(result);
            if failed {
                ok = false;
                if op == HookOp::Freeze {
                    break;
                }
            }
        }
        RunReport { op, ok, results }
    }

    fn run_one(
        &self,
        path: &Path,
        arg: &'static str,
        deadline: Instant,
        may_exec: &dyn Fn() -> bool,
    ) -> HookResult {
        let now = Instant::now();
        if now >= deadline {
            return HookResult::not_started(path, arg, HookOutcome::DeadlinePassed);
        }
        // The file may have changed since load: apply the rules again, right before exec.
        if let Err(reason) = scan::check_entry(path) {
            let why = format!("no longer safe to run: {reason}");
            return HookResult::not_started(path, arg, HookOutcome::SpawnFailed(why));
        }
        if !may_exec() {
            let why = REFUSED.to_owned();
            return HookResult::not_started(path, arg, HookOutcome::SpawnFailed(why));
        }
        run_hook(path, arg, self.timeout.min(deadline - now))
    }
}
