//! FreeBSD's half of [`crate::peer`]: `LOCAL_PEERCRED` through libc (rustix has no
//! wrapper for it).

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::peer::PeerCredentials;

/// `getsockopt(SOL_LOCAL, LOCAL_PEERCRED)` into a `struct xucred`.
pub(crate) fn peer_credentials(socket: BorrowedFd<'_>) -> std::io::Result<PeerCredentials> {
    // SAFETY: xucred is plain integers and a union of an integer with pointer-sized
    // padding; all-zero bytes are a valid value of each.
    let mut cred: libc::xucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::xucred>() as libc::socklen_t;
    // SAFETY: `cred` is a live, writable xucred and `len` tells the kernel its size, so it
    // writes within it; `socket` is a live borrowed descriptor.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_LOCAL,
            libc::LOCAL_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if cred.cr_version != libc::XUCRED_VERSION {
        return Err(std::io::Error::other(format!(
            "LOCAL_PEERCRED: xucred version {}, expected {}",
            cred.cr_version,
            libc::XUCRED_VERSION
        )));
    }
    let ngroups = usize::try_from(cred.cr_ngroups)
        .unwrap_or(0)
        .min(cred.cr_groups.len());
    if ngroups == 0 {
        // cr_groups[0] is the effective gid; without it the zeroes would read as wheel.
        return Err(std::io::Error::other("LOCAL_PEERCRED: no groups"));
    }
    // SAFETY: reading the union as its pid member: both members start at offset 0 and an
    // i32 is valid for any bits. FreeBSD 13 and later store the peer's pid there; older
    // kernels leave our zeroes, which read as 0 (no pid).
    let pid = unsafe { cred.cr_pid__c_anonymous_union.cr_pid };
    Ok(PeerCredentials {
        pid: u32::try_from(pid).ok().filter(|&pid| pid != 0),
        uid: cred.cr_uid,
        gid: cred.cr_groups[0],
        groups: Some(cred.cr_groups[..ngroups].to_vec()),
    })
}
