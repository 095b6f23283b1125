//! Drop-in transport: the daemon end of Linux's `/dev/vmbus/hv_vss`.
//!
//! Kernel contract (drivers/hv/hv_snapshot.c and hv_utils_transport.c; wire-protocol.md §8,
//! R12, R13):
//!
//! - `open` is exclusive: a second open fails with `EBUSY` (another VSS daemon holds the
//!   device); after the device is destroyed, `EBADF`.
//! - The daemon writes the 12-byte REGISTER1 message, then reads exactly 4 bytes: the
//!   kernel's protocol version, 129 today. Any value is accepted, as the stock daemon does
//!   (it only records it); one that is not 129 is logged at warn level (wire §8.3, R12).
//! - `read` **blocks until a message is pending whatever `O_NONBLOCK` says**, so every read
//!   here is preceded by `poll`. Requests are 12 bytes.
//! - `write` must be 12 bytes. `EINVAL` means the transaction is not active (the kernel
//!   already timed out and answered E_FAIL, or hibernation sent a fake THAW) or a bad length.
//! - `poll` reports `POLLERR | POLLHUP` once the device is destroyed.
//!
//! Every failure after open (`EINVAL`, a short write, a read of unexpected length,
//! `POLLERR`/`POLLHUP`, `EBADF`, any other I/O error) means: thaw everything, abort
//! applications, close, reopen and register again (R13). [`KernelDevError::requires_reopen`]
//! says so; the caller does the thawing.
//!
//! # Socket form
//!
//! If the path names a Unix socket, [`KernelDevice::open`] connects to it as
//! `SOCK_SEQPACKET` and speaks the same bytes; tests and `hv-vss-sim`'s kernel emulator use
//! this. A socket cannot fail a write with `EINVAL`, so the emulator closes the connection
//! instead, which shows up here as [`KernelDevError::HangUp`] (also a reopen condition).
//! Writes to the socket use `MSG_NOSIGNAL`, so a closed peer is `EPIPE`, never `SIGPIPE`.
//!
//! # Design
//!
//! One owner type over the fd, synchronous calls with explicit timeouts, and [`AsFd`] so a
//! daemon can put the fd in its own poll set and call [`KernelDevice::recv_timeout`] with a
//! zero timeout once it is readable.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hv_vss_protocol::HvStatus;
use hv_vss_protocol::kernel::{self, KernelMsgError, KernelRequest};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SendFlags, SocketAddrUnix, SocketFlags, SocketType};

/// Where Linux's `hv_utils` puts the VSS device.
pub const DEFAULT_DEVICE_PATH: &str = "/dev/vmbus/hv_vss";
/// How long [`KernelDevice::register`] waits for the handshake reply. The kernel answers at
/// once; this bounds a wedged device.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer: larger than any valid message, so an oversize message is seen as a wrong
/// length rather than an `EINVAL` from the kernel's short-buffer check.
const READ_BUF_LEN: usize = 64;

/// What the fd is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// The kernel's character device.
    CharDevice,
    /// A `SOCK_SEQPACKET` Unix socket speaking the same bytes (emulator).
    Socket,
}

/// Errors of the drop-in transport.
#[derive(Debug, thiserror::Error)]
pub enum KernelDevError {
    /// `EBUSY` on open.
    #[error("another VSS daemon holds {path}")]
    Busy {
        /// Device path.
        path: PathBuf,
    },
    /// Open or connect failed for another reason (missing device, permissions...).
    #[error("cannot open {path}: {source}")]
    Open {
        /// Device path.
        path: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// The handshake reply did not come in time.
    #[error("no handshake reply from the VSS device within {0:?}")]
    RegisterTimeout(Duration),
    /// The handshake reply was not 4 bytes long.
    #[error("bad handshake reply: {0}")]
    Handshake(#[source] KernelMsgError),
    /// A read returned a message of the wrong length.
    #[error("bad message from the VSS device: {0}")]
    BadMessage(#[source] KernelMsgError),
    /// `write` failed with `EINVAL`: transaction not active (kernel timeout, hibernation) or
    /// a registration in the middle of a transaction.
    #[error("VSS device rejected the write: transaction not active (EINVAL)")]
    TransactionNotActive,
    /// `write` wrote fewer than 12 bytes.
    #[error("short write to the VSS device: {written} of 12 bytes")]
    ShortWrite {
        /// Bytes written.
        written: usize,
    },
    /// `EBADF`: the device was destroyed under us.
    #[error("the VSS device is gone (EBADF)")]
    DeviceGone,
    /// `POLLERR`/`POLLHUP`, end of file, or a closed socket peer.
    #[error("the VSS device hung up")]
    HangUp,
    /// Any other I/O error after open.
    #[error("{op} on the VSS device failed: {source}")]
    Io {
        /// The call that failed.
        op: &'static str,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
}

impl KernelDevError {
    /// True when the daemon must thaw everything it froze, abort applications, close this
    /// device, reopen and register again (R13). False only for open failures, where there is
    /// nothing to close: retry the open later (for `Busy`, after the other daemon exits).
    pub fn requires_reopen(&self) -> bool {
        !matches!(self, Self::Busy { .. } | Self::Open { .. })
    }

    fn from_errno(op: &'static str, errno: Errno) -> Self {
        match errno {
            Errno::BADF => Self::DeviceGone,
            Errno::PIPE | Errno::CONNRESET | Errno::NOTCONN => Self::HangUp,
            Errno::INVAL if op == "write" => Self::TransactionNotActive,
            other => Self::Io {
                op,
                source: other.into(),
            },
        }
    }
}

/// The daemon's open `/dev/vmbus/hv_vss` (or emulator socket).
#[derive(Debug)]
pub struct KernelDevice {
    fd: OwnedFd,
    kind: DeviceKind,
    path: PathBuf,
    /// The 4-byte handshake reply, once registered.
    kernel_version: Option<u32>,
}

impl AsFd for KernelDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl KernelDevice {
    /// Opens the device: connects as `SOCK_SEQPACKET` if `path` is a Unix socket, otherwise
    /// `open(path, O_RDWR | O_CLOEXEC)`. `EBUSY` becomes [`KernelDevError::Busy`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, KernelDevError> {
        let path = path.as_ref().to_path_buf();
        let open_err = |errno: Errno| match errno {
            Errno::BUSY => KernelDevError::Busy { path: path.clone() },
            other => KernelDevError::Open {
                path: path.clone(),
                source: other.into(),
            },
        };
        let is_socket = rustix::fs::stat(&path)
            .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Socket)
            .map_err(open_err)?;
        let (fd, kind) = if is_socket {
            let fd = rustix::net::socket_with(
                AddressFamily::UNIX,
                SocketType::SEQPACKET,
                SocketFlags::CLOEXEC,
                None,
            )
            .map_err(open_err)?;
            let addr = SocketAddrUnix::new(&path).map_err(open_err)?;
            rustix::net::connect(&fd, &addr).map_err(open_err)?;
            (fd, DeviceKind::Socket)
        } else {
            let fd = rustix::fs::open(&path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
                .map_err(open_err)?;
            (fd, DeviceKind::CharDevice)
        };
        tracing::debug!(path = %path.display(), ?kind, "opened VSS device");
        Ok(Self {
            fd,
            kind,
            path,
            kernel_version: None,
        })
    }

    /// The path this device was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Character device or emulator socket.
    pub fn kind(&self) -> DeviceKind {
        self.kind
    }

    /// True once [`register`](Self::register) succeeded.
    pub fn is_registered(&self) -> bool {
        self.kernel_version.is_some()
    }

    /// The kernel's protocol version from the handshake reply, once registered.
    pub fn kernel_version(&self) -> Option<u32> {
        self.kernel_version
    }

    /// Registers with REGISTER1 and reads the 4-byte reply (any value; logged at warn level
    /// when it is not 129), waiting at most [`REGISTER_TIMEOUT`].
    pub fn register(&mut self) -> Result<(), KernelDevError> {
        self.register_timeout(REGISTER_TIMEOUT)
    }

    /// [`register`](Self::register) with an explicit wait for the reply.
    pub fn register_timeout(&mut self, timeout: Duration) -> Result<(), KernelDevError> {
        self.write_msg(&kernel::register1_message())?;
        if !self.wait_readable(Some(timeout))? {
            return Err(KernelDevError::RegisterTimeout(timeout));
        }
        let mut buf = [0u8; READ_BUF_LEN];
        let len = self.read_msg(&mut buf)?;
        let version =
            kernel::parse_handshake_reply(&buf[..len]).map_err(KernelDevError::Handshake)?;
        self.kernel_version = Some(version);
        if version == kernel::KERNEL_PROTOCOL_VERSION {
            tracing::info!(path = %self.path.display(), version, "registered with the VSS device");
        } else {
            tracing::warn!(
                path = %self.path.display(),
                version,
                expected = kernel::KERNEL_PROTOCOL_VERSION,
                "registered with the VSS device; its handshake reply is not the expected version, accepted as the stock daemon does"
            );
        }
        Ok(())
    }

    /// Waits for the next request without a time limit.
    pub fn recv(&mut self) -> Result<KernelRequest, KernelDevError> {
        loop {
            if let Some(request) = self.recv_inner(None)? {
                return Ok(request);
            }
        }
    }

    /// Waits up to `timeout` for the next request; `Ok(None)` if none came. A zero timeout
    /// checks once without blocking (use it after your own poll said the fd is readable).
    pub fn recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<KernelRequest>, KernelDevError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_inner(Some(left))? {
                Some(request) => return Ok(Some(request)),
                None if left.is_zero() => return Ok(None),
                None => {}
            }
        }
    }

    /// One poll then, if readable, one read. `None`: nothing yet (timeout or spurious wake).
    fn recv_inner(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<KernelRequest>, KernelDevError> {
        if !self.wait_readable(timeout)? {
            return Ok(None);
        }
        let mut buf = [0u8; READ_BUF_LEN];
        let len = match self.read_msg(&mut buf) {
            // The kernel wakes readers with nothing queued now and then.
            Err(KernelDevError::Io { source, .. })
                if source.raw_os_error() == Some(Errno::AGAIN.raw_os_error()) =>
            {
                return Ok(None);
            }
            other => other?,
        };
        let request = kernel::parse_request(&buf[..len]).map_err(KernelDevError::BadMessage)?;
        // Trace, not debug: one line per request the host can repeat at will; the daemon
        // logs each request itself, rate-limited while frozen (its held log ring is bounded).
        tracing::trace!(op = ?request.op, "VSS request from the kernel");
        Ok(Some(request))
    }

    /// Writes the 12-byte reply carrying `status` in bytes 0–3.
    pub fn reply(&mut self, status: HvStatus) -> Result<(), KernelDevError> {
        self.write_msg(&kernel::build_reply(status))
    }

    /// `poll` for `POLLIN`. Ok(false) on timeout; `POLLERR`/`POLLHUP` is a hang-up.
    fn wait_readable(&self, timeout: Option<Duration>) -> Result<bool, KernelDevError> {
        let timespec = timeout.map(|t| {
            Timespec::try_from(t).unwrap_or(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            })
        });
        loop {
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match rustix::event::poll(&mut fds, timespec.as_ref()) {
                Ok(0) => return Ok(false),
                Ok(_) => {
                    let revents = fds[0].revents();
                    if revents.intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL) {
                        return Err(KernelDevError::HangUp);
                    }
                    return Ok(revents.contains(PollFlags::IN));
                }
                Err(Errno::INTR) => continue,
                Err(errno) => return Err(KernelDevError::from_errno("poll", errno)),
            }
        }
    }

    /// One read of a whole message. 0 bytes is a hang-up (closed socket).
    fn read_msg(&self, buf: &mut [u8]) -> Result<usize, KernelDevError> {
        loop {
            match rustix::io::read(&self.fd, &mut *buf) {
                Ok(0) => return Err(KernelDevError::HangUp),
                Ok(len) => return Ok(len),
                Err(Errno::INTR) => continue,
                Err(errno) => return Err(KernelDevError::from_errno("read", errno)),
            }
        }
    }

    fn write_msg(&self, msg: &[u8; 12]) -> Result<(), KernelDevError> {
        let written = loop {
            let result = match self.kind {
                DeviceKind::CharDevice => rustix::io::write(&self.fd, msg),
                DeviceKind::Socket => rustix::net::send(&self.fd, msg, SendFlags::NOSIGNAL),
            };
            match result {
                Ok(written) => break written,
                Err(Errno::INTR) => continue,
                Err(errno) => return Err(KernelDevError::from_errno("write", errno)),
            }
        };
        if written != msg.len() {
            return Err(KernelDevError::ShortWrite { written });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_open_failures_allow_keeping_state() {
        let path = PathBuf::from(DEFAULT_DEVICE_PATH);
        assert!(!KernelDevError::Busy { path: path.clone() }.requires_reopen());
        assert!(
            !KernelDevError::Open {
                path,
                source: Errno::NOENT.into()
            }
            .requires_reopen()
        );
        for e in [
            KernelDevError::TransactionNotActive,
            KernelDevError::ShortWrite { written: 4 },
            KernelDevError::DeviceGone,
            KernelDevError::HangUp,
            KernelDevError::BadMessage(KernelMsgError::WrongLength {
                len: 4,
                expected: 12,
            }),
            KernelDevError::RegisterTimeout(REGISTER_TIMEOUT),
        ] {
            assert!(e.requires_reopen(), "{e}");
        }
    }

    #[test]
    fn errnos_map_to_named_errors() {
        assert!(matches!(
            KernelDevError::from_errno("write", Errno::INVAL),
            KernelDevError::TransactionNotActive
        ));
        assert!(matches!(
            KernelDevError::from_errno("read", Errno::INVAL),
            KernelDevError::Io { .. }
        ));
        assert!(matches!(
            KernelDevError::from_errno("read", Errno::BADF),
            KernelDevError::DeviceGone
        ));
        assert!(matches!(
            KernelDevError::from_errno("write", Errno::PIPE),
            KernelDevError::HangUp
        ));
    }

    #[test]
    fn busy_message_names_the_other_daemon() {
        let e = KernelDevError::Busy {
            path: DEFAULT_DEVICE_PATH.into(),
        };
        assert_eq!(e.to_string(), "another VSS daemon holds /dev/vmbus/hv_vss");
    }

    #[test]
    fn missing_device_is_an_open_error() {
        let e = KernelDevice::open("/nonexistent/hv_vss").unwrap_err();
        assert!(matches!(e, KernelDevError::Open { .. }), "{e}");
    }

    #[test]
    fn regular_file_wrong_length_read_is_a_bad_message() {
        // A regular file stands in for a misbehaving device: poll says readable, read gives
        // 5 bytes.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dev");
        std::fs::write(&file, [1, 2, 3, 4, 5]).unwrap();
        let mut dev = KernelDevice::open(&file).unwrap();
        assert_eq!(dev.kind(), DeviceKind::CharDevice);
        let e = dev.recv_timeout(Duration::from_secs(1)).unwrap_err();
        assert!(
            matches!(
                e,
                KernelDevError::BadMessage(KernelMsgError::WrongLength { len: 5, .. })
            ),
            "{e}"
        );
        assert!(e.requires_reopen());
    }
}
