//! Who is on the other end of a connected Unix stream socket, as the kernel recorded it
//! when the peer connected (or called `listen`).
//!
//! # Kernel contract
//!
//! - Linux: `getsockopt(SOL_SOCKET, SO_PEERCRED)` gives `struct ucred` (pid, effective uid,
//!   effective gid) of the peer at `connect` time. No group list comes with it.
//! - FreeBSD: `getsockopt(SOL_LOCAL, LOCAL_PEERCRED)` gives `struct xucred` (version
//!   `XUCRED_VERSION`, effective uid, up to 16 groups with the effective gid first, and,
//!   since FreeBSD 13, the pid) of the peer at `connect` time. `getpeereid(3)` is the same
//!   call without groups and pid.
//!
//! Both are recorded by the kernel, so a client cannot claim to be someone else; neither
//! follows a later `setuid` of the peer.

use std::os::fd::AsFd;

/// The peer's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCredentials {
    /// The peer's pid; `None` where the kernel does not record it (FreeBSD before 13).
    pub pid: Option<u32>,
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// The peer's groups as the kernel reported them with the credentials (FreeBSD: the
    /// effective gid and up to 15 more); `None` where the credentials carry none (Linux:
    /// read them from `/proc/PID/status` instead).
    pub groups: Option<Vec<u32>>,
}

/// The credentials of the peer of the connected Unix stream socket `socket`
/// (`SO_PEERCRED` on Linux, `LOCAL_PEERCRED` on FreeBSD).
#[doc(alias = "SO_PEERCRED")]
#[doc(alias = "LOCAL_PEERCRED")]
#[doc(alias = "getpeereid")]
pub fn peer_credentials(socket: impl AsFd) -> std::io::Result<PeerCredentials> {
    crate::platform::peer::peer_credentials(socket.as_fd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_socket_pair_peer_is_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let cred = peer_credentials(&a).unwrap();
        assert_eq!(cred.uid, rustix::process::geteuid().as_raw());
        assert_eq!(cred.gid, rustix::process::getegid().as_raw());
        if let Some(pid) = cred.pid {
            assert_eq!(pid, std::process::id());
        }
        if let Some(groups) = &cred.groups {
            assert_eq!(groups.first(), Some(&cred.gid));
        }
    }

    #[test]
    fn a_socket_that_is_not_connected_has_no_peer() {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(peer_credentials(&file).is_err(), "not a socket");
        // A listening socket has its own credentials on Linux and none on FreeBSD: either
        // way the call must not panic.
        let _ = peer_credentials(&listener);
    }
}
