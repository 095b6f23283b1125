//! The host side of the daemon behind one type: Linux's `/dev/vmbus/hv_vss` (drop-in mode)
//! or the VSS VMBus channel itself (UIO mode), so the main loop polls a few fds and answers
//! each request through the transport it came from.
//!
//! # Drop-in (wire-protocol.md §8, R12, R13)
//!
//! Open exclusively (`EBUSY`: another VSS daemon), REGISTER1 and its 4-byte reply, poll
//! before read, 12-byte requests, the answer as a 32-bit status in bytes 0–3. The kernel
//! forwards only HOT_BACKUP, FREEZE and THAW, one at a time; anything else that arrives is
//! answered E_FAIL here (R5) and never reaches the coordinator. Any failure after open
//! (`EINVAL`, a short write, a wrong-length read, a hang-up) requires closing, thawing and
//! reopening ([`TransportError::requires_reopen`]); the main loop does that.
//!
//! # UIO (R2–R11, R14, R15)
//!
//! [`hv_vss_vmbus::ic_endpoint::IcEndpoint`] does what `hv_utils` does in the kernel:
//! NEGOTIATE, GET_DM_INFO, BU_COMPLETE and the no-ops are answered inside it, unknown
//! operations get E_FAIL, replies echo the request with its `trans_id` and HOT_BACKUP flags
//! 5. BU_COMPLETE is passed on after its answer ([`Incoming::BackupComplete`]: it closes
//! the backup report). HOT_BACKUP, FREEZE and THAW come out as tokens; this module keeps each token until the
//! coordinator answers it (several may be pending: the host can overlap requests, R26). The
//! channel is either:
//!
//! - `/dev/uioN`: the real `uio_hv_generic` device; `EIO`, `EINVAL` or `POLLERR` after the
//!   open is a rescind (wire §3.2), and the endpoint has unmapped the rings before the error
//!   reaches this module (their pages are freed by the kernel). A channel with a monitor page
//!   is refused at open: `write(1)` would never signal the host. The device is then
//!   found again by its class GUID under `/sys/bus/vmbus/devices` once the host offers it
//!   again, handed back to `uio_hv_generic` if `hv_utils` took it, and opened at whatever
//!   `uioN` it has now ([`Reopener`], [`UioRediscovery`]);
//! - a Unix socket: a host simulator's hand-over point. The daemon connects as
//!   `SOCK_SEQPACKET`, receives the shared-memory rings ([`ShmRings::recv_from`]) and keeps
//!   the connection: its hang-up, like the hang-up of the simulator's interrupt pipe (which
//!   the endpoint reports as a rescind), means the host is gone.
//!
//! The endpoint never logs; its notices are logged here, through the log gate (held while
//! frozen, R60).

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use hv_vss_core::{HostOp, Status};
use hv_vss_protocol::negotiate::NegotiateFailure;
use hv_vss_protocol::vss::CoordinatorOp;
use hv_vss_protocol::{HvStatus, VssOperation};
use hv_vss_sys::uio::UioPaths;
use hv_vss_vmbus::bind::SystemRoots;
use hv_vss_vmbus::ic_endpoint::{EndpointError, IcEndpoint, IcEvent, IcNotice, PendingRequest};
use hv_vss_vmbus::kernel_dev::{KernelDevError, KernelDevice};
use hv_vss_vmbus::shm::{ShmChannel, ShmRings};
use hv_vss_vmbus::uio::{ChannelError, UioChannel, VmbusChannel};
use rustix::fs::FileType;
use rustix::net::{AddressFamily, RecvFlags, SocketAddrUnix, SocketFlags, SocketType};

use crate::config::TransportChoice;

mod rediscover;
pub use rediscover::{Attempt, UioRediscovery, Waiting, is_uio_node_path};

/// How long a host simulator may take to hand over its rings after the connect.
pub const HANDOVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Something that arrived from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// HOT_BACKUP, FREEZE or THAW: for the coordinator; answer with [`Transport::reply`]
    /// and this `key`.
    Request { key: u64, op: HostOp },
    /// An operation that is not ours: already answered E_FAIL here (drop-in mode; in UIO
    /// mode the endpoint reports it as a notice).
    Refused { raw: VssOperation },
    /// BU_COMPLETE, already answered S_OK by the endpoint (UIO mode only: in drop-in mode
    /// the kernel answers it and never forwards it). It closes the backup report.
    BackupComplete { trans_id: u64 },
}

/// What became of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Written to the host (device or ring).
    Sent,
    /// The ring to the host is full: queued, sent when the host makes room (UIO mode).
    Queued,
}

/// A transport failure.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Kernel(#[from] KernelDevError),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// Opening the UIO channel (device, mapping, hand-over) failed.
    #[error("{}: {source}", .path.display())]
    UioOpen {
        path: PathBuf,
        #[source]
        source: ChannelError,
    },
    /// Connecting to the simulator's hand-over socket failed.
    #[error("{}: {source}", .path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The path is neither `/dev/uioN` nor a Unix socket.
    #[error("--uio {}: expected /dev/uioN or a host simulator's Unix socket", .0.display())]
    UioPath(PathBuf),
    /// The simulator closed the hand-over connection (its "rescind").
    #[error("the host simulator hung up")]
    HandoverClosed,
    /// A reply for a request this transport does not hold.
    #[error("no pending request {0}")]
    UnknownRequest(u64),
}

impl TransportError {
    /// Thaw, close, reopen (R13, R15).
    pub fn requires_reopen(&self) -> bool {
        match self {
            Self::Kernel(e) => e.requires_reopen(),
            Self::Endpoint(EndpointError::ForeignRequest { .. }) | Self::UnknownRequest(_) => false,
            Self::Endpoint(_) | Self::HandoverClosed => true,
            Self::UioOpen { .. } | Self::Connect { .. } | Self::UioPath(_) => false,
        }
    }

    /// Another VSS daemon holds the device.
    pub fn is_busy(&self) -> bool {
        matches!(self, Self::Kernel(KernelDevError::Busy { .. }))
    }
}

/// The UIO-mode transport over any channel.
#[derive(Debug)]
pub struct IcTransport<C> {
    endpoint: IcEndpoint<C>,
    /// The hand-over connection (simulator only), watched for hang-up.
    handover: Option<OwnedFd>,
    pending: BTreeMap<u64, PendingRequest>,
    next_key: u64,
    ready: VecDeque<Incoming>,
    /// Framework and message versions agreed in the last NEGOTIATE (for `hv-vss status`).
    negotiated: Option<(hv_vss_protocol::ic::Version, hv_vss_protocol::ic::Version)>,
}

impl<C: VmbusChannel> IcTransport<C> {
    fn new(channel: C, handover: Option<OwnedFd>) -> Result<Self, TransportError> {
        let mut t = Self {
            endpoint: IcEndpoint::new(channel),
            handover,
            pending: BTreeMap::new(),
            next_key: 1,
            ready: VecDeque::new(),
            negotiated: None,
        };
        // NEGOTIATE may already be waiting with no interrupt to announce it (§3.3).
        t.service()?;
        Ok(t)
    }

    fn service(&mut self) -> Result<(), TransportError> {
        if let Some(sock) = &self.handover {
            let mut b = [0u8; 1];
            match rustix::net::recv(sock, &mut b, RecvFlags::DONTWAIT) {
                Ok((0, _)) => return Err(TransportError::HandoverClosed),
                Ok(_) | Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => return Err(TransportError::HandoverClosed),
            }
        }
        for event in self.endpoint.service()? {
            match event {
                IcEvent::Request(request) => {
                    let key = self.next_key;
                    self.next_key += 1;
                    let op = match request.op() {
                        CoordinatorOp::Check => HostOp::Check,
                        CoordinatorOp::Freeze => HostOp::Freeze,
                        CoordinatorOp::Thaw => HostOp::Thaw,
                    };
                    self.pending.insert(key, request);
                    self.ready.push_back(Incoming::Request { key, op });
                }
                IcEvent::BackupComplete { trans_id } => {
                    self.ready.push_back(Incoming::BackupComplete { trans_id });
                }
            }
        }
        for notice in self.endpoint.take_notices() {
            if let IcNotice::Negotiated { framework, message } = &notice {
                self.negotiated = Some((*framework, *message));
            }
            log_ic_notice(&notice);
        }
        Ok(())
    }

    fn reply(&mut self, key: u64, status: HvStatus) -> Result<Delivery, TransportError> {
        let request = self
            .pending
            .remove(&key)
            .ok_or(TransportError::UnknownRequest(key))?;
        self.endpoint.reply(request, status)?;
        // The endpoint sends the older queued replies first and queues this one behind
        // them if any is left or the ring is full: a non-empty outbox means ours waits.
        Ok(if self.endpoint.unsent_replies() > 0 {
            Delivery::Queued
        } else {
            Delivery::Sent
        })
    }

    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds = vec![self.endpoint.poll_fd()];
        if let Some(s) = &self.handover {
            fds.push(s.as_fd());
        }
        fds
    }
}

/// Versions as the host and the docs write them: "3.0, 5.0".
fn versions(list: &[hv_vss_protocol::ic::Version]) -> String {
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn log_ic_notice(notice: &IcNotice) {
    match notice {
        IcNotice::Negotiated { framework, message } => {
            // Not `message`: that name is the event's own text in tracing.
            tracing::info!(%framework, message_version = %message, "VSS channel negotiated")
        }
        IcNotice::NegotiationFailed {
            failure: NegotiateFailure::NoCommonVersion,
            offered_framework,
            offered_message,
        } => tracing::warn!(
            offered_framework = %versions(offered_framework),
            offered_message = %versions(offered_message),
            "VSS negotiation failed: the host offered no version we support; answered E_FAIL"
        ),
        IcNotice::NegotiationFailed {
            failure: NegotiateFailure::Malformed(e),
            ..
        } => tracing::warn!(
            error = %e,
            "malformed VSS NEGOTIATE from the host; answered counts 0 and E_FAIL"
        ),
        IcNotice::IcmsgsizeMismatch {
            trans_id,
            declared,
            arrived,
        } => tracing::warn!(
            trans_id,
            icmsgsize = declared,
            body_bytes = arrived,
            "VSS request icmsgsize disagrees with the bytes received; served from the bytes received"
        ),
        IcNotice::Dropped { .. } => tracing::warn!(notice = ?notice, "VSS channel"),
        IcNotice::UnknownOperation { trans_id, op } => {
            tracing::warn!(trans_id, op = op.0, "unknown VSS operation answered E_FAIL")
        }
        other => tracing::warn!(notice = ?other, "VSS channel"),
    }
}

/// An open, registered transport.
#[derive(Debug)]
pub enum Transport {
    Kernel(KernelDevice),
    Shm(IcTransport<ShmChannel>),
    Uio(IcTransport<UioChannel>),
}

impl Transport {
    /// The framework and VSS message versions this guest agreed with the host (UIO mode,
    /// once NEGOTIATE came); `None` in drop-in mode, where the kernel negotiates.
    pub fn negotiated(
        &self,
    ) -> Option<(hv_vss_protocol::ic::Version, hv_vss_protocol::ic::Version)> {
        match self {
            Transport::Kernel(_) => None,
            Transport::Shm(t) => t.negotiated,
            Transport::Uio(t) => t.negotiated,
        }
    }

    /// Opens (and in drop-in mode registers).
    pub fn open(choice: &TransportChoice) -> Result<Self, TransportError> {
        match choice {
            TransportChoice::DropIn(path) => {
                let mut dev = KernelDevice::open(path)?;
                dev.register()?;
                Ok(Self::Kernel(dev))
            }
            TransportChoice::Uio(path) => open_uio(path),
        }
    }

    /// Whether a poll should come back soon (replies held back by a full ring, or requests
    /// already read).
    pub fn wants_service(&self) -> bool {
        match self {
            Self::Kernel(_) => false,
            Self::Shm(t) => t.endpoint.unsent_replies() > 0 || !t.ready.is_empty(),
            Self::Uio(t) => t.endpoint.unsent_replies() > 0 || !t.ready.is_empty(),
        }
    }

    /// Reads what is pending (call when a fd polled readable, or when [`Self::wants_service`]).
    pub fn recv(&mut self) -> Result<Vec<Incoming>, TransportError> {
        match self {
            Self::Kernel(dev) => {
                let Some(request) = dev.recv_timeout(std::time::Duration::ZERO)? else {
                    return Ok(Vec::new());
                };
                let op = match request.op {
                    VssOperation::HOT_BACKUP => HostOp::Check,
                    VssOperation::FREEZE => HostOp::Freeze,
                    VssOperation::THAW => HostOp::Thaw,
                    raw => {
                        // R5: only HOT_BACKUP, FREEZE and THAW are ours; the kernel answers
                        // the rest itself, so anything else is a faulty peer: E_FAIL.
                        dev.reply(HvStatus::E_FAIL)?;
                        return Ok(vec![Incoming::Refused { raw }]);
                    }
                };
                Ok(vec![Incoming::Request { key: 0, op }])
            }
            Self::Shm(t) => {
                t.service()?;
                Ok(t.ready.drain(..).collect())
            }
            Self::Uio(t) => {
                t.service()?;
                Ok(t.ready.drain(..).collect())
            }
        }
    }

    /// Answers request `key`; in UIO mode a full ring queues the reply instead.
    pub fn reply(&mut self, key: u64, status: Status) -> Result<Delivery, TransportError> {
        let status = match status {
            Status::Ok => HvStatus::S_OK,
            Status::Fail => HvStatus::E_FAIL,
        };
        match self {
            Self::Kernel(dev) => {
                dev.reply(status)?;
                Ok(Delivery::Sent)
            }
            Self::Shm(t) => t.reply(key, status),
            Self::Uio(t) => t.reply(key, status),
        }
    }

    /// The fds to poll for `POLLIN`.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        match self {
            Self::Kernel(dev) => vec![dev.as_fd()],
            Self::Shm(t) => t.fds(),
            Self::Uio(t) => t.fds(),
        }
    }
}

fn open_uio(path: &Path) -> Result<Transport, TransportError> {
    let is_socket = rustix::fs::stat(path)
        .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Socket)
        .map_err(|e| TransportError::Connect {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
    if is_socket {
        let connect_err = |e: rustix::io::Errno| TransportError::Connect {
            path: path.to_path_buf(),
            source: e.into(),
        };
        let sock = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(connect_err)?;
        let addr = SocketAddrUnix::new(path).map_err(connect_err)?;
        rustix::net::connect(&sock, &addr).map_err(connect_err)?;
        // The main loop waits here: a peer that never hands over must not stall it.
        rustix::net::sockopt::set_socket_timeout(
            &sock,
            rustix::net::sockopt::Timeout::Recv,
            Some(HANDOVER_TIMEOUT),
        )
        .map_err(connect_err)?;
        let uio_err = |source| TransportError::UioOpen {
            path: path.to_path_buf(),
            source,
        };
        let channel = ShmRings::recv_from(&sock)
            .and_then(ShmRings::guest)
            .map_err(uio_err)?;
        rustix::net::sockopt::set_socket_timeout(&sock, rustix::net::sockopt::Timeout::Recv, None)
            .map_err(connect_err)?;
        tracing::info!(path = %path.display(), "connected to the host simulator's rings");
        return Ok(Transport::Shm(IcTransport::new(channel, Some(sock))?));
    }
    let index = uio_index(path).ok_or_else(|| TransportError::UioPath(path.to_path_buf()))?;
    open_uio_node(path, UioPaths::default(), index)
}

/// Opens `/dev/uio<index>` (named `path` in messages) under `paths`.
fn open_uio_node(path: &Path, paths: UioPaths, index: u32) -> Result<Transport, TransportError> {
    let channel =
        UioChannel::open_with(paths, index).map_err(|source| TransportError::UioOpen {
            path: path.to_path_buf(),
            source,
        })?;
    tracing::info!(path = %path.display(), "opened the VSS channel through uio_hv_generic");
    Ok(Transport::Uio(IcTransport::new(channel, None)?))
}

/// How the daemon reopens a lost transport.
///
/// Drop-in devices and simulator sockets are reopened at the configured path. A `/dev/uioN`
/// path is only where the device was at start: after a rescind the re-offered device is a
/// new object that may come back as another `uioN`, or on `hv_utils` (R15, wire §3.5
/// caveats), so it is found again through sysfs ([`UioRediscovery`]).
#[derive(Debug)]
pub enum Reopener {
    /// Reopen this choice as configured.
    Fixed(TransportChoice),
    /// Find the VSS device again, rebind it if needed, open its node.
    Rediscover(Box<UioRediscovery>),
}

/// One reopen attempt, as the main loop acts on it.
#[derive(Debug)]
pub enum ReopenStep {
    /// Open (and registered): `node` is the path used.
    Opened {
        transport: Box<Transport>,
        node: PathBuf,
    },
    /// Not yet: log it (rate-limited) and try again (soon if [`Waiting::check_soon`], else
    /// after the backoff).
    Waiting(Waiting),
    /// Opening failed: try again after the backoff.
    Failed(TransportError),
}

impl Reopener {
    /// The reopener for `choice` on this machine (`/sys`, `/dev`).
    pub fn new(choice: &TransportChoice) -> Self {
        Self::with_roots(choice, SystemRoots::host())
    }

    /// As [`Self::new`], looking for the VSS device under `roots`.
    pub fn with_roots(choice: &TransportChoice, roots: SystemRoots) -> Self {
        match choice {
            TransportChoice::Uio(path) if is_uio_node_path(path) => {
                Self::Rediscover(Box::new(UioRediscovery::new(roots)))
            }
            other => Self::Fixed(other.clone()),
        }
    }

    /// One attempt. Never blocks for long (a bind runs on its own thread). `may_bind` is
    /// false while filesystems are frozen.
    pub fn attempt(&mut self, may_bind: bool) -> ReopenStep {
        match self {
            Self::Fixed(choice) => match Transport::open(choice) {
                Ok(transport) => ReopenStep::Opened {
                    transport: Box::new(transport),
                    node: match choice {
                        TransportChoice::DropIn(p) | TransportChoice::Uio(p) => p.clone(),
                    },
                },
                Err(e) => ReopenStep::Failed(e),
            },
            Self::Rediscover(r) => match r.attempt(may_bind) {
                Attempt::Opened { transport, node } => ReopenStep::Opened { transport, node },
                Attempt::Waiting(w) => ReopenStep::Waiting(w),
                Attempt::OpenFailed(e) => ReopenStep::Failed(e),
            },
        }
    }
}

/// `N` of `/dev/uioN`.
fn uio_index(path: &Path) -> Option<u32> {
    path.file_name()?
        .to_str()?
        .strip_prefix("uio")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uio_index_accepts_only_uio_nodes() {
        assert_eq!(uio_index(Path::new("/dev/uio3")), Some(3));
        assert_eq!(uio_index(Path::new("/dev/uio12")), Some(12));
        assert_eq!(uio_index(Path::new("/dev/sda")), None);
        assert_eq!(uio_index(Path::new("/dev/uio")), None);
    }

    /// What `log_ic_notice` writes for `notice`, through a real fmt subscriber.
    fn logged(notice: &IcNotice) -> String {
        let sink = hv_vss_testutil::SharedBuf::default();
        let gate = crate::logbuf::LogGate::with_sink(Box::new(sink.clone()), 16);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(gate)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || log_ic_notice(notice));
        sink.text()
    }

    /// Regression: the negotiated versions were logged with Debug,
    /// `framework=Version { major: 3, minor: 0 }`, instead of "3.0".
    #[test]
    fn negotiated_versions_are_logged_as_major_dot_minor() {
        use hv_vss_protocol::ic::Version;
        let line = logged(&IcNotice::Negotiated {
            framework: Version::new(3, 0),
            message: Version::new(5, 0),
        });
        assert!(line.contains("framework=3.0"), "{line}");
        assert!(line.contains("message_version=5.0"), "{line}");
        assert!(line.contains("VSS channel negotiated"), "{line}");
        assert!(!line.contains("major"), "{line}");
        let line = logged(&IcNotice::NegotiationFailed {
            failure: NegotiateFailure::NoCommonVersion,
            offered_framework: vec![Version::new(1, 0), Version::new(2, 0)],
            offered_message: vec![Version::new(4, 0)],
        });
        assert!(line.contains("1.0, 2.0"), "{line}");
        assert!(!line.contains("major"), "{line}");
    }

    /// Regression: connecting to a simulator socket that accepts but never hands over the
    /// rings blocked the daemon's main loop in `recvmsg` for ever (no poll, no timers, no
    /// signals, no watchdog, also when reopening after a loss).
    #[test]
    fn a_simulator_that_never_hands_over_fails_the_open_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.sock");
        let listener = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        rustix::net::bind(&listener, &SocketAddrUnix::new(&path).unwrap()).unwrap();
        rustix::net::listen(&listener, 4).unwrap();
        let choice = TransportChoice::Uio(path);
        let result = hv_vss_testutil::run_with_timeout(HANDOVER_TIMEOUT * 3, move || {
            Transport::open(&choice).map(|_| ())
        });
        let err = result.expect_err("nothing was handed over");
        assert!(!err.requires_reopen(), "{err}");
        drop(listener);
    }

    /// Regression: in UIO mode a reply the full ring could not take was only queued, yet
    /// the daemon logged "answered". The transport now says which it was.
    #[test]
    fn a_reply_the_full_ring_cannot_take_is_reported_queued() {
        use hv_vss_sim::host::{HostConfig, HostSimulator};
        let (mut host, rings) = HostSimulator::create(2 * 4096, HostConfig::default()).unwrap();
        let mut t = IcTransport::new(rings.guest().unwrap(), None).unwrap();
        host.post_negotiate().unwrap();
        t.service().unwrap();
        // The host never reads its ring: the guest's replies pile up until it is full.
        let mut deliveries = Vec::new();
        for _ in 0..200 {
            host.post_vss(VssOperation::HOT_BACKUP, 0, &[]).unwrap();
            t.service().unwrap();
            let Some(Incoming::Request { key, .. }) = t.ready.pop_front() else {
                panic!("no request came through");
            };
            let d = t.reply(key, HvStatus::S_OK).unwrap();
            deliveries.push(d);
            if d == Delivery::Queued {
                break;
            }
        }
        assert_eq!(deliveries.first(), Some(&Delivery::Sent));
        assert_eq!(
            deliveries.last(),
            Some(&Delivery::Queued),
            "the ring never filled: {} replies",
            deliveries.len()
        );
        assert!(t.endpoint.unsent_replies() > 0);
    }

    #[test]
    fn only_channel_failures_require_a_reopen() {
        assert!(TransportError::HandoverClosed.requires_reopen());
        assert!(TransportError::Endpoint(EndpointError::Rescinded).requires_reopen());
        assert!(!TransportError::UnknownRequest(3).requires_reopen());
        assert!(!TransportError::UioPath("/x".into()).requires_reopen());
    }
}
