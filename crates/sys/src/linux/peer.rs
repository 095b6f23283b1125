//! Linux's half of [`crate::peer`]: `SO_PEERCRED` through rustix.

use std::os::fd::BorrowedFd;

use crate::peer::PeerCredentials;

/// `getsockopt(SOL_SOCKET, SO_PEERCRED)`.
pub(crate) fn peer_credentials(socket: BorrowedFd<'_>) -> std::io::Result<PeerCredentials> {
    let cred = rustix::net::sockopt::socket_peercred(socket)?;
    Ok(PeerCredentials {
        pid: Some(cred.pid.as_raw_nonzero().get().unsigned_abs()),
        uid: cred.uid.as_raw(),
        gid: cred.gid.as_raw(),
        groups: None,
    })
}
