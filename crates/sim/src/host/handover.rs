//! The hand-over point between a simulated host and a guest process: the rings travel over
//! a `SOCK_SEQPACKET` Unix socket, which then stays open so its hang-up tells each side the
//! other is gone.

use super::*;

/// A listening `SOCK_SEQPACKET` Unix socket on which a guest process connects to receive
/// the rings ([`ShmRings::send_over`]). The connection then stays open: its hang-up tells
/// either side that the other is gone.
#[derive(Debug)]
pub struct HandoverListener {
    fd: OwnedFd,
}

impl HandoverListener {
    /// Binds and listens at `path` (which must not exist).
    pub fn bind(path: &Path) -> Result<Self, SimError> {
        let (fd, addr) = seqpacket_socket(path)?;
        rustix::net::bind(&fd, &addr).map_err(io("bind"))?;
        rustix::net::listen(&fd, 1).map_err(io("listen"))?;
        Ok(Self { fd })
    }

    /// The listening fd (poll it for `POLLIN` to know a connection waits).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Waits up to `timeout` for a connection. `None` on timeout.
    pub fn accept(&self, timeout: Duration) -> Result<Option<OwnedFd>, SimError> {
        match hv_vss_sys::uio::poll_readable(self.fd.as_fd(), Some(timeout)) {
            Ok(hv_vss_sys::uio::Readable::Yes) => {}
            Ok(_) => return Ok(None),
            Err(e) => return Err(io("poll(listener)")(e)),
        }
        rustix::net::accept_with(&self.fd, SocketFlags::CLOEXEC)
            .map(Some)
            .map_err(io("accept"))
    }
}

/// Guest side of the hand-over: connects a `SOCK_SEQPACKET` socket to `path` and receives
/// the rings. Keep the returned socket open while the rings are in use.
pub fn connect_handover(path: &Path) -> Result<(OwnedFd, ShmRings), SimError> {
    let (fd, addr) = seqpacket_socket(path)?;
    rustix::net::connect(&fd, &addr).map_err(io("connect"))?;
    let rings = ShmRings::recv_from(&fd)?;
    Ok((fd, rings))
}

/// A close-on-exec `SOCK_SEQPACKET` Unix socket and the address of `path`, for either side.
fn seqpacket_socket(path: &Path) -> Result<(OwnedFd, SocketAddrUnix), SimError> {
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(io("socket"))?;
    let addr = SocketAddrUnix::new(path).map_err(io("socket path"))?;
    Ok((fd, addr))
}

/// Maps an errno from the system call `op` to [`SimError::Io`].
fn io(op: &'static str) -> impl Fn(rustix::io::Errno) -> SimError {
    move |e| SimError::Io {
        op,
        source: e.into(),
    }
}
