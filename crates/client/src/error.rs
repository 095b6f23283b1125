//! What can go wrong talking to hv-vssd.

use std::path::PathBuf;

use hv_vss_app_protocol::ProtocolError;
use thiserror::Error;

/// An error of the app socket client.
#[derive(Debug, Error)]
pub enum Error {
    /// The socket could not be connected (missing: the daemon is not running or has no app
    /// socket; refused: nobody listens on it).
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Reading from or writing to the connection failed.
    #[error("app socket I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon closed the connection.
    #[error("hv-vssd closed the connection")]
    Closed,
    /// The daemon refused the registration (for example: the name is taken by a live
    /// client) and closed the connection.
    #[error("hv-vssd refused the registration: {0}")]
    Rejected(String),
    /// The daemon reported an error after registration and closed the connection.
    #[error("hv-vssd reported an error: {0}")]
    Daemon(String),
    /// The daemon sent a line that breaks protocol v1 (too long, not UTF-8, not JSON, a
    /// known type with bad fields).
    #[error("hv-vssd sent a bad line: {0}")]
    Protocol(#[from] ProtocolError),
    /// The daemon sent a well-formed message at a point where it makes no sense (an event
    /// before `registered`, `registered` for another name).
    #[error("unexpected message from hv-vssd: {0}")]
    Unexpected(String),
    /// The registration is invalid before anything was sent (bad name).
    #[error("invalid registration: {0}")]
    InvalidRegistration(String),
}

impl Error {
    /// Does this error end the connection but leave a later reconnect worth trying? A
    /// missing socket, a closed or broken connection, or a daemon that talks nonsense
    /// (it may be restarting mid-upgrade) are; a refused registration or an invalid
    /// name will not change by retrying.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Error::Rejected(_) | Error::InvalidRegistration(_))
    }
}
