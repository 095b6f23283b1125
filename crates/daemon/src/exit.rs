//! Exit codes: each names what is missing (R71). Documented in docs/daemon.md.

use std::fmt;

/// Why the daemon exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Stopped by SIGTERM/SIGINT after thawing everything.
    Clean = 0,
    /// An unexpected internal error.
    Internal = 1,
    /// Bad command line or configuration (the message names the flag or key).
    Usage = 2,
    /// The transport cannot be opened (device missing, not a device, no permission,
    /// handshake failed, UIO not available).
    TransportUnavailable = 3,
    /// Another VSS daemon holds /dev/vmbus/hv_vss, or another hv-vssd uses the state dir.
    Busy = 4,
    /// The state directory is on a filesystem that may be frozen, or is unusable.
    StateDir = 5,
    /// An earlier instance's freeze journal could not be fully thawed.
    RecoveryIncomplete = 6,
    /// The guardian process could not be started.
    Guardian = 7,
    /// The application socket could not be set up (or another process serves it).
    AppSocket = 8,
}

/// A fatal error with its exit code.
#[derive(Debug)]
pub struct Fatal {
    pub kind: ExitKind,
    pub error: anyhow::Error,
}

impl Fatal {
    pub fn new(kind: ExitKind, error: impl Into<anyhow::Error>) -> Self {
        Self {
            kind,
            error: error.into(),
        }
    }
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}
