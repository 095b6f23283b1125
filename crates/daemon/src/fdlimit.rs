//! Enough file descriptors for `[apps] max_clients`.
//!
//! # Kernel contract
//!
//! Every open descriptor counts against `RLIMIT_NOFILE`; past the soft limit `accept`,
//! `open` and `pipe` fail with `EMFILE`. An unprivileged process may raise its soft limit up
//! to its hard limit. systemd starts services with soft 1024 and a much higher hard limit
//! (524288 on current versions) and advises programs that need more than 1024 to raise the
//! soft limit themselves, because raising it for everyone would break programs that still
//! use `select(2)` (which cannot watch descriptors of 1024 and above).
//!
//! # Policy
//!
//! Each application client holds one descriptor; the daemon needs some of its own besides
//! (transport, journals, the guardian link, one per filesystem during a freeze, the hook
//! runner's pipes). When `max_clients` + [`RESERVE`] exceeds the soft limit, the soft limit
//! is raised to the hard limit, once, at start. Otherwise it is left alone, so hooks (which
//! inherit it) keep the usual 1024 with the default `max_clients` (256). When even the hard
//! limit is too small, start-up goes on and warns, naming `LimitNOFILE=`.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors the daemon keeps for itself beyond one per client.
pub const RESERVE: u64 = 512;

/// What [`ensure_for_clients`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdLimit {
    /// The soft limit already fits.
    Enough { soft: u64 },
    /// The soft limit was raised from `from` to `to` (the hard limit).
    Raised { from: u64, to: u64 },
    /// The hard limit `hard` (or the raise) does not reach `needed`; the soft limit is now
    /// `soft`.
    TooLow { soft: u64, hard: u64, needed: u64 },
}

/// The soft limit to set for `needed` descriptors given the current limits: `None` to leave
/// it, else the new soft limit (the hard limit; `None` there means unlimited).
fn plan(current: Option<u64>, maximum: Option<u64>, needed: u64) -> Option<Option<u64>> {
    match current {
        None => None,
        Some(soft) if soft >= needed => None,
        Some(soft) if maximum.is_some_and(|hard| hard <= soft) => None,
        Some(_) => Some(maximum),
    }
}

/// Makes room for `max_clients` connections, as the module documentation says.
pub fn ensure_for_clients(max_clients: usize) -> FdLimit {
    let needed = (max_clients as u64).saturating_add(RESERVE);
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    let Some(to) = plan(limit.current, limit.maximum, needed) else {
        return if soft >= needed {
            FdLimit::Enough { soft }
        } else {
            FdLimit::TooLow { soft, hard, needed }
        };
    };
    let raised = Rlimit {
        current: to,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            let to = to.unwrap_or(u64::MAX);
            if to >= needed {
                FdLimit::Raised { from: soft, to }
            } else {
                FdLimit::TooLow {
                    soft: to,
                    hard,
                    needed,
                }
            }
        }
        Err(_) => FdLimit::TooLow { soft, hard, needed },
    }
}

/// Logs what [`ensure_for_clients`] did.
pub fn log(outcome: FdLimit, max_clients: usize) {
    match outcome {
        FdLimit::Enough { .. } => {}
        FdLimit::Raised { from, to } => tracing::info!(
            from,
            to,
            max_clients,
            "raised the soft RLIMIT_NOFILE to the hard limit for apps.max_clients"
        ),
        FdLimit::TooLow { soft, hard, needed } => tracing::warn!(
            soft,
            hard,
            needed,
            max_clients,
            "RLIMIT_NOFILE is too low for apps.max_clients: connections beyond it fail; raise LimitNOFILE= in the unit or lower max_clients"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_to_the_hard_limit_only_when_the_soft_one_is_short() {
        // systemd's defaults and the default max_clients: left alone.
        assert_eq!(plan(Some(1024), Some(524_288), 256 + RESERVE), None);
        // 1000 clients: raised to the hard limit.
        assert_eq!(
            plan(Some(1024), Some(524_288), 1000 + RESERVE),
            Some(Some(524_288))
        );
        // Unlimited hard limit.
        assert_eq!(plan(Some(1024), None, 5000), Some(None));
        // Nothing to gain: the hard limit is not above the soft one.
        assert_eq!(plan(Some(1024), Some(1024), 5000), None);
        // Unlimited soft limit.
        assert_eq!(plan(None, None, 5000), None);
    }
}
