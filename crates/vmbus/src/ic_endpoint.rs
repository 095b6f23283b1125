//! The guest side of the VSS integration service over a [`VmbusChannel`] (UIO mode): what
//! Linux's `hv_utils` (drivers/hv/hv_snapshot.c) does in the kernel, done in userspace.
//!
//! # Kernel and host contract
//!
//! - wire-protocol.md §3.2–3.3: RX interrupts may be masked at open (old `uio_hv_generic`
//!   masks at open and on every interrupt; since commit b15b7d2a1b09, CVE-2025-40048, it never
//!   touches the mask, which then holds whatever the previous owner left, possibly 1), and
//!   NEGOTIATE may already sit in the ring with no interrupt to announce it. The endpoint owns
//!   the mask and relies on no driver masking: on every wake it drains every packet, answers
//!   each, unmasks, fences, looks at the ring again, and loops if data arrived.
//!   [`IcEndpoint::service`] does exactly that; call it once right after construction.
//! - §2.4 / R11: each packet is copied into the channel's private receive buffer (at least
//!   16 KiB, descriptor included) before it is parsed; a larger packet is
//!   [`EndpointError::Oversize`], never truncated.
//! - §5.2 / R2 / R3: every NEGOTIATE is answered at once, whatever else is going on
//!   (framework 3.0, VSS 5.0), as Linux and FreeBSD answer every one. A failed or malformed
//!   offer (no common version, a count of 0 or above 100, versions past the payload) gets
//!   counts 0, `icmsgsize` 16 and HV_E_FAIL, and so does every repeat: a host that hears
//!   nothing loops on NEGOTIATE. Only the notice is rate-limited. A NEGOTIATE too short to
//!   hold the counts (under 36 bytes) cannot be answered and is dropped.
//! - §6.4 / R5: GET_DM_INFO (S_OK, flags 0), CREATE, DELETE, AUTO_RECOVER and BU_COMPLETE
//!   (S_OK) are answered here; an unknown operation gets HV_E_FAIL (Linux answers S_OK and
//!   FreeBSD stays silent: a host must not read success into an operation nobody performed,
//!   and silence would leave it waiting; docs/daemon.md). HOT_BACKUP, FREEZE and THAW are
//!   handed to the caller as a [`PendingRequest`].
//! - §4.2 / R10: `icmsgsize` is not trusted (no guest reads it on receive). A request whose
//!   `icmsgsize` is larger, smaller or zero against the bytes that arrived is served from
//!   the bytes that arrived and reported ([`IcNotice::IcmsgsizeMismatch`], rate-limited).
//!   Only a packet too short for the IC header plus the 12-byte VSS message, an IC type other
//!   than NEGOTIATE and VSS, or IC framing that does not parse gets no reply; the caller is
//!   told why ([`IcNotice::Dropped`]). A FREEZE body of 12,500 bytes (OpenVMM's
//!   `Message2Ex`) fits the 16 KiB receive buffer and is echoed whole.
//! - §4.3 / R4 / R7 / R8: a reply is the request's private copy with status and icflags 0x05
//!   set, HOT_BACKUP `flags` = 5 on success and failure, everything else echoed (LUN data
//!   too), same length, in-band, VMBus flags 0, the request's `trans_id`. Only S_OK and
//!   HV_E_FAIL go on the wire.
//! - §3.2, §3.3 step 5 / R15: `EIO`, `EINVAL` or `POLLERR` from the device is
//!   [`EndpointError::Rescinded`]. The kernel frees the ring pages on a rescind while they
//!   are still mapped, so every send burst (each [`IcEndpoint::service`] pass, each
//!   [`IcEndpoint::reply`], each [`IcEndpoint::flush`]) starts with a zero-timeout poll
//!   ([`VmbusChannel::check_alive`]), and the rings are unmapped the moment a rescind is
//!   seen: no late reply is written into a rescinded ring. A corrupt ring is
//!   [`EndpointError::Corrupt`]. Both are final: the caller thaws, drops the endpoint,
//!   waits for the device, rebinds and reopens.
//!
//! # Design: exactly one reply
//!
//! A [`PendingRequest`] is a token that is neither `Clone` nor `Copy`; it holds the private
//! copy of the request and its VMBus `trans_id`, and [`IcEndpoint::reply`] consumes it, so a
//! second reply does not compile. A token dropped without a reply is not lost: its `Drop`
//! queues an HV_E_FAIL reply with the endpoint, which sends it on the next call into the
//! endpoint (any of `service`, `reply`, `flush`) and reports [`IcNotice::Abandoned`]. A
//! token replied on the wrong endpoint is refused ([`EndpointError::ForeignRequest`]) and
//! then answered HV_E_FAIL on its own endpoint the same way.
//!
//! Requests that arrive before the caller can serve them (R27) are still delivered as
//! tokens; the caller answers them `reply(token, HvStatus::E_FAIL)` (or
//! [`IcEndpoint::refuse`]).
//!
//! A reply that meets a full TX ring (a non-fatal condition the host creates by not reading)
//! is kept in order in an outbox and sent by the next call; [`IcEndpoint::unsent_replies`]
//! tells the caller to come back soon. The outbox is bounded
//! ([`EndpointConfig::max_unsent_replies`]): a host that keeps sending requests and never
//! reads cannot grow it without end. Past the bound the oldest unsent reply is dropped,
//! counted in [`EndpointStats::replies_dropped`] and reported as
//! [`IcNotice::ReplyDropped`] (that host is not reading the answer anyway).
//!
//! # Design: no logging
//!
//! The daemon calls this while filesystems are frozen, when nothing may touch the disk
//! (R60). The endpoint therefore never logs: notable conditions become [`IcNotice`]s in a
//! bounded queue the caller drains with [`IcEndpoint::take_notices`]
//! and logs once it is safe. Notices the host can provoke are rate-limited per
//! [`NoticeKind`] (a burst per interval, then one [`IcNotice::Suppressed`] with the count).
//!
//! # Use in a poll loop
//!
//! ```text
//! let mut ep = IcEndpoint::new(channel);
//! loop {
//!     for event in ep.service()? { ... }          // also right after construction
//!     // add ep.poll_fd() (POLLIN) to your poll set; when readable, loop again
//! }
//! ```
//!
//! # Limitations
//!
//! - The receive buffer is the channel's ([`hv_vss_ring::RECV_BUFFER_MIN`] = 16 KiB with the
//!   16-byte descriptor), so the largest payload is 16,368 bytes: above every VSS message
//!   (FREEZE or AUTO_RECOVER with `Message2Ex`: 12,528 bytes of payload) and OpenVMM's
//!   13,312-byte cap.
//! - VSS requests are served whether or not a negotiation succeeded (a host that failed to
//!   negotiate should not send them; if it does, answering is the safe choice).
//! - A rescind between the zero-timeout poll and the ring write cannot be excluded from
//!   userspace; the poll narrows the window to one burst.

use std::collections::VecDeque;
use std::fmt;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hv_vss_protocol::ic::{IcError, IcMessage, IcReply};
use hv_vss_protocol::negotiate::{self, NegotiateError, NegotiateFailure, NegotiateOutcome};
use hv_vss_protocol::vss::{CoordinatorOp, LocalAnswer, NoReplyReason, UioRoute};
use hv_vss_protocol::{HvStatus, Version, VssOperation};
use hv_vss_ring::{Corruption, RingError};

use crate::uio::{ChannelError, VmbusChannel, Wake};

/// Errors of the endpoint. All but [`EndpointError::ForeignRequest`] are final: drop the
/// endpoint, thaw, and reopen the channel.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The device was removed (`EIO`, `EINVAL` or `POLLERR`): thaw, wait for the re-offer,
    /// rebind, reopen (R15). The rings are unmapped.
    #[error("the VSS channel was rescinded")]
    Rescinded,
    /// The host wrote an impossible index or descriptor (R9).
    #[error("the VSS ring is corrupt: {0}")]
    Corrupt(Corruption),
    /// A packet larger than the receive buffer (R11): it is left in the ring.
    #[error("packet of {len} bytes exceeds the {buffer_len}-byte receive buffer")]
    Oversize {
        /// Packet length in bytes (descriptor included).
        len: usize,
        /// Receive buffer size.
        buffer_len: usize,
    },
    /// Any other channel failure (setup, signalling fd, ring geometry).
    #[error(transparent)]
    Channel(ChannelError),
    /// An earlier call failed with a final error; the endpoint does nothing more.
    #[error("the endpoint stopped after an earlier error: {0}")]
    Stopped(String),
    /// The request was received by another endpoint; it is answered HV_E_FAIL there.
    #[error("request {trans_id:#x} belongs to another endpoint")]
    ForeignRequest {
        /// The request's VMBus transaction id.
        trans_id: u64,
    },
}

impl From<ChannelError> for EndpointError {
    fn from(e: ChannelError) -> Self {
        match e {
            ChannelError::Rescinded => EndpointError::Rescinded,
            ChannelError::Ring(RingError::Corrupt(c)) => EndpointError::Corrupt(c),
            ChannelError::Ring(RingError::Oversize { len8, buffer_len }) => {
                EndpointError::Oversize {
                    len: usize::from(len8) * 8,
                    buffer_len,
                }
            }
            other => EndpointError::Channel(other),
        }
    }
}

/// State of version negotiation on this channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Negotiation {
    /// No NEGOTIATE answered yet.
    Awaiting,
    /// The last NEGOTIATE agreed on these versions.
    Agreed {
        /// Framework version ("3.0").
        framework: Version,
        /// VSS message version ("5.0").
        message: Version,
    },
    /// The last NEGOTIATE offered nothing we support or was malformed; it got counts 0 and
    /// HV_E_FAIL. A later NEGOTIATE is answered again and may still agree (R3).
    Failed,
}

/// Why a packet got no reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The IC framing did not parse (under 28 bytes, `icmsgsize` past the payload...).
    BadFraming(IcError),
    /// An IC type other than NEGOTIATE and VSS, or a VSS payload under 40 bytes (R10).
    NotForUs(NoReplyReason),
    /// A NEGOTIATE too short to hold the version counts (under 36 bytes): there is nowhere
    /// to write the answer's counts.
    BadNegotiate(NegotiateError),
    /// Not an in-band data packet (type 6).
    NotInband {
        /// The descriptor's packet type.
        packet_type: u16,
    },
}

/// Classes of notices, each rate-limited on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoticeKind {
    /// Negotiation results.
    Negotiation,
    /// Packets that got no reply.
    Dropped,
    /// Unknown operation codes.
    UnknownOperation,
    /// A `trans_id` seen while a request with the same id is still pending.
    DuplicateTransId,
    /// Tokens dropped without a reply.
    Abandoned,
    /// Requests whose `icmsgsize` disagrees with their length.
    IcmsgsizeMismatch,
    /// Unsent replies dropped from a full outbox.
    ReplyDropped,
}

const NOTICE_KINDS: [NoticeKind; 7] = [
    NoticeKind::Negotiation,
    NoticeKind::Dropped,
    NoticeKind::UnknownOperation,
    NoticeKind::DuplicateTransId,
    NoticeKind::Abandoned,
    NoticeKind::IcmsgsizeMismatch,
    NoticeKind::ReplyDropped,
];

/// A condition worth a log line, for the caller to log when it is safe (not while frozen).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IcNotice {
    /// A NEGOTIATE was answered with these versions.
    Negotiated {
        /// Framework version.
        framework: Version,
        /// VSS message version.
        message: Version,
    },
    /// A NEGOTIATE offered nothing we support, or was malformed; answered counts 0,
    /// `icmsgsize` 16, HV_E_FAIL. Every such NEGOTIATE is answered; only this notice is
    /// rate-limited.
    NegotiationFailed {
        /// Why.
        failure: NegotiateFailure,
        /// Framework versions the host offered (empty if malformed).
        offered_framework: Vec<Version>,
        /// Message versions the host offered (empty if malformed).
        offered_message: Vec<Version>,
    },
    /// A VSS request whose `icmsgsize` disagrees with the bytes that arrived; it was served
    /// from the bytes that arrived (wire §4.2, R10).
    IcmsgsizeMismatch {
        /// Its VMBus transaction id.
        trans_id: u64,
        /// The header's `icmsgsize`.
        declared: u16,
        /// Bytes after the IC header, ring padding included.
        arrived: usize,
    },
    /// A packet got no reply.
    Dropped {
        /// Its VMBus transaction id.
        trans_id: u64,
        /// Its payload length.
        len: usize,
        /// Why.
        reason: DropReason,
    },
    /// An unknown operation code was answered HV_E_FAIL (R5).
    UnknownOperation {
        /// Its VMBus transaction id.
        trans_id: u64,
        /// The code.
        op: VssOperation,
    },
    /// A request arrived with the `trans_id` of one still pending; both are delivered and
    /// each gets its own reply.
    DuplicateTransId {
        /// The id.
        trans_id: u64,
    },
    /// A [`PendingRequest`] was dropped without a reply; HV_E_FAIL was sent for it.
    Abandoned {
        /// Its VMBus transaction id.
        trans_id: u64,
        /// Its operation.
        op: VssOperation,
    },
    /// The outbox was full (the host has not read its ring for
    /// [`EndpointConfig::max_unsent_replies`] replies): the oldest unsent reply, to
    /// `trans_id`, was dropped.
    ReplyDropped {
        /// The dropped reply's VMBus transaction id.
        trans_id: u64,
    },
    /// `count` notices of `kind` were not queued (rate limit or full queue).
    Suppressed {
        /// Which class.
        kind: NoticeKind,
        /// How many.
        count: u64,
    },
}

impl IcNotice {
    /// The class used for rate limiting.
    pub fn kind(&self) -> NoticeKind {
        match self {
            IcNotice::Negotiated { .. } | IcNotice::NegotiationFailed { .. } => {
                NoticeKind::Negotiation
            }
            IcNotice::Dropped { .. } => NoticeKind::Dropped,
            IcNotice::UnknownOperation { .. } => NoticeKind::UnknownOperation,
            IcNotice::DuplicateTransId { .. } => NoticeKind::DuplicateTransId,
            IcNotice::Abandoned { .. } => NoticeKind::Abandoned,
            IcNotice::IcmsgsizeMismatch { .. } => NoticeKind::IcmsgsizeMismatch,
            IcNotice::ReplyDropped { .. } => NoticeKind::ReplyDropped,
            IcNotice::Suppressed { kind, .. } => *kind,
        }
    }
}

/// What [`IcEndpoint::service`] hands to the caller.
#[derive(Debug)]
pub enum IcEvent {
    /// HOT_BACKUP, FREEZE or THAW: answer it exactly once with [`IcEndpoint::reply`].
    Request(PendingRequest),
    /// BU_COMPLETE was answered S_OK: the daemon closes its backup report.
    BackupComplete {
        /// Its VMBus transaction id.
        trans_id: u64,
    },
}

/// Limits of the notice queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointConfig {
    /// Notices of one [`NoticeKind`] queued per `notice_interval`; more are counted.
    pub notice_burst: u32,
    /// Rate-limit window.
    pub notice_interval: Duration,
    /// Most notices held before the caller drains them.
    pub max_queued_notices: usize,
    /// Most replies held back by a full TX ring; past it the oldest is dropped.
    pub max_unsent_replies: usize,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            notice_burst: 10,
            notice_interval: Duration::from_secs(60),
            max_queued_notices: 256,
            // A real host reads each reply before its next request; 256 replies of at most
            // ~12.5 KiB (an echoed FREEZE) bound the outbox at about 3 MiB.
            max_unsent_replies: 256,
        }
    }
}

/// Counters for status output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Packets read from the ring.
    pub packets: u64,
    /// Replies queued on the ring (or the outbox), local and caller's.
    pub replies: u64,
    /// Requests answered here (NEGOTIATE, GET_DM_INFO, no-ops, unknown ops).
    pub answered_locally: u64,
    /// Requests handed to the caller.
    pub delivered: u64,
    /// Packets that got no reply.
    pub dropped: u64,
    /// Tokens dropped without a reply (answered HV_E_FAIL).
    pub abandoned: u64,
    /// Unsent replies dropped from a full outbox.
    pub replies_dropped: u64,
}

/// A reply owed by a dropped token, queued for the endpoint to send.
#[derive(Debug)]
struct OwedReply {
    trans_id: u64,
    op: VssOperation,
    payload: Vec<u8>,
}

/// Where dropped tokens leave their E_FAIL replies.
type AbandonQueue = Mutex<Vec<OwedReply>>;

static NEXT_ENDPOINT_ID: AtomicU64 = AtomicU64::new(1);

/// A HOT_BACKUP, FREEZE or THAW waiting for the caller's answer. Consumed by
/// [`IcEndpoint::reply`]; if dropped unanswered, HV_E_FAIL is sent for it by the endpoint.
#[must_use = "every request needs exactly one reply: pass it to IcEndpoint::reply"]
pub struct PendingRequest {
    endpoint: u64,
    trans_id: u64,
    op: CoordinatorOp,
    vss_op: VssOperation,
    request: Box<[u8]>,
    /// The reply with S_OK; only the status changes for HV_E_FAIL (§6.4: HOT_BACKUP carries
    /// flags 5 either way, FREEZE and THAW echo everything).
    reply: Option<IcReply>,
    received_at: Instant,
    abandon: Weak<AbandonQueue>,
}

impl fmt::Debug for PendingRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingRequest")
            .field("trans_id", &self.trans_id)
            .field("op", &self.vss_op)
            .field("len", &self.request.len())
            .finish()
    }
}

impl PendingRequest {
    /// The coordinator operation: Check (HOT_BACKUP), Freeze or Thaw.
    pub fn op(&self) -> CoordinatorOp {
        self.op
    }

    /// The VSS operation code.
    pub fn vss_op(&self) -> VssOperation {
        self.vss_op
    }

    /// The VMBus transaction id the reply will carry.
    pub fn trans_id(&self) -> u64 {
        self.trans_id
    }

    /// The private copy of the request payload (ring padding included).
    pub fn request_bytes(&self) -> &[u8] {
        &self.request
    }

    /// Bytes after the 12-byte VSS message (FREEZE LUN data, ring padding).
    pub fn trailing_len(&self) -> usize {
        self.request
            .len()
            .saturating_sub(hv_vss_protocol::vss::MIN_VSS_PAYLOAD_LEN)
    }

    /// When the packet was read from the ring.
    pub fn received_at(&self) -> Instant {
        self.received_at
    }

    /// Takes the reply payload for `status` (R8: anything but S_OK goes out as HV_E_FAIL).
    fn take_reply(&mut self, status: HvStatus) -> Option<Vec<u8>> {
        let mut reply = self.reply.take()?;
        reply.set_status(wire_status(status));
        Some(reply.into_bytes())
    }
}

impl Drop for PendingRequest {
    fn drop(&mut self) {
        let Some(payload) = self.take_reply(HvStatus::E_FAIL) else {
            return;
        };
        if let Some(queue) = self.abandon.upgrade() {
            let owed = OwedReply {
                trans_id: self.trans_id,
                op: self.vss_op,
                payload,
            };
            // A poisoned lock only means another thread panicked while pushing; the queue
            // itself is still a valid Vec.
            queue.lock().unwrap_or_else(|p| p.into_inner()).push(owed);
        }
    }
}

/// R8: only S_OK and HV_E_FAIL go on the wire.
fn wire_status(status: HvStatus) -> HvStatus {
    HvStatus::from_success(status.is_ok())
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Option<Instant>,
    emitted: u32,
    suppressed: u64,
}

/// The guest side of the VSS IC over one channel. See the module docs.
#[derive(Debug)]
pub struct IcEndpoint<C> {
    channel: C,
    id: u64,
    config: EndpointConfig,
    negotiation: Negotiation,
    /// `trans_id`s of tokens handed out and not yet answered (for duplicate detection).
    pending: Vec<u64>,
    abandon: Arc<AbandonQueue>,
    outbox: VecDeque<(u64, Vec<u8>)>,
    notices: VecDeque<IcNotice>,
    windows: [Window; NOTICE_KINDS.len()],
    stats: EndpointStats,
    stopped: Option<String>,
}

impl<C: VmbusChannel> IcEndpoint<C> {
    /// An endpoint over `channel` with default notice limits. Does no I/O: call
    /// [`IcEndpoint::service`] at once, since NEGOTIATE may already be waiting.
    pub fn new(channel: C) -> Self {
        Self::with_config(channel, EndpointConfig::default())
    }

    /// An endpoint with explicit notice limits.
    pub fn with_config(channel: C, config: EndpointConfig) -> Self {
        Self {
            channel,
            id: NEXT_ENDPOINT_ID.fetch_add(1, Ordering::Relaxed),
            config,
            negotiation: Negotiation::Awaiting,
            pending: Vec::new(),
            abandon: Arc::new(Mutex::new(Vec::new())),
            outbox: VecDeque::new(),
            notices: VecDeque::new(),
            windows: [Window {
                start: None,
                emitted: 0,
                suppressed: 0,
            }; NOTICE_KINDS.len()],
            stats: EndpointStats::default(),
            stopped: None,
        }
    }

    /// The negotiation state.
    pub fn negotiation(&self) -> Negotiation {
        self.negotiation
    }

    /// The agreed `(framework, message)` versions, if a negotiation succeeded.
    pub fn versions(&self) -> Option<(Version, Version)> {
        match self.negotiation {
            Negotiation::Agreed { framework, message } => Some((framework, message)),
            _ => None,
        }
    }

    /// Counters.
    pub fn stats(&self) -> EndpointStats {
        self.stats
    }

    /// Requests handed out and not yet answered.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// Replies waiting for room in a full TX ring; call [`IcEndpoint::flush`] soon.
    pub fn unsent_replies(&self) -> usize {
        self.outbox.len()
    }

    /// The channel.
    pub fn channel(&self) -> &C {
        &self.channel
    }

    /// The channel, mutably (diagnostics and fault injection in tests).
    pub fn channel_mut(&mut self) -> &mut C {
        &mut self.channel
    }

    /// The fd to poll for `POLLIN`: the host signalled. Then call [`IcEndpoint::service`].
    pub fn poll_fd(&self) -> BorrowedFd<'_> {
        self.channel.signal_fd()
    }

    /// Blocks until the host may have sent something or `timeout` passes (`None`: forever).
    /// For callers without their own poll loop; then call [`IcEndpoint::service`].
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<Wake, EndpointError> {
        self.check_running()?;
        let r = self.channel.wait(timeout).map_err(EndpointError::from);
        self.guard(r)
    }

    /// Drains the receive ring, answers everything answered locally, and returns the events
    /// for the caller in arrival order; then unmasks and re-checks, looping until the ring
    /// is empty and unmasked (§3.3). Also sends replies owed by dropped tokens and the
    /// outbox first.
    pub fn service(&mut self) -> Result<Vec<IcEvent>, EndpointError> {
        self.check_running()?;
        let r = self.service_inner();
        self.guard(r)
    }

    /// Sends the replies owed by dropped tokens and those held back by a full ring.
    pub fn flush(&mut self) -> Result<(), EndpointError> {
        self.check_running()?;
        let r = self
            .channel
            .check_alive()
            .map_err(EndpointError::from)
            .and_then(|()| self.flush_inner());
        self.guard(r)
    }

    /// Answers `request` (consumed): S_OK, or HV_E_FAIL for any other status (R8). The
    /// reply echoes the request (§4.3) with its `trans_id`; HOT_BACKUP carries flags 5
    /// (R7). On a final error the request is unanswerable (the channel is gone).
    pub fn reply(
        &mut self,
        request: PendingRequest,
        status: HvStatus,
    ) -> Result<(), EndpointError> {
        let mut request = request;
        if request.endpoint != self.id {
            // Its own Drop answers it HV_E_FAIL on the endpoint that received it.
            return Err(EndpointError::ForeignRequest {
                trans_id: request.trans_id,
            });
        }
        let trans_id = request.trans_id;
        if let Some(at) = self.pending.iter().position(|&t| t == trans_id) {
            self.pending.swap_remove(at);
        }
        let payload = request.take_reply(status);
        drop(request);
        self.check_running()?;
        let r = (|| {
            // A late reply must never land in a rescinded ring (freed memory).
            self.channel.check_alive()?;
            self.flush_inner()?;
            if let Some(payload) = payload {
                self.send_reply(trans_id, payload)?;
            }
            Ok(())
        })();
        self.guard(r)
    }

    /// `reply(request, HvStatus::E_FAIL)`: for requests the caller cannot serve (R27).
    pub fn refuse(&mut self, request: PendingRequest) -> Result<(), EndpointError> {
        self.reply(request, HvStatus::E_FAIL)
    }

    /// Takes the queued notices (oldest first), with a [`IcNotice::Suppressed`] for every
    /// class whose rate-limit window has ended with notices held back.
    pub fn take_notices(&mut self) -> Vec<IcNotice> {
        let now = Instant::now();
        for (i, kind) in NOTICE_KINDS.iter().enumerate() {
            let w = &mut self.windows[i];
            let ended = w
                .start
                .is_some_and(|s| now.duration_since(s) >= self.config.notice_interval);
            if ended && w.suppressed > 0 {
                self.notices.push_back(IcNotice::Suppressed {
                    kind: *kind,
                    count: w.suppressed,
                });
                *w = Window {
                    start: None,
                    emitted: 0,
                    suppressed: 0,
                };
            }
        }
        self.notices.drain(..).collect()
    }

    /// Notices suppressed so far in the current windows (not yet reported).
    pub fn suppressed_notices(&self) -> u64 {
        self.windows.iter().map(|w| w.suppressed).sum()
    }

    fn check_running(&self) -> Result<(), EndpointError> {
        match &self.stopped {
            Some(why) => Err(EndpointError::Stopped(why.clone())),
            None => Ok(()),
        }
    }

    /// Records a final error so that later calls refuse at once. On a rescind the rings
    /// are unmapped at once: the kernel frees their pages while they are still mapped.
    fn guard<T>(&mut self, r: Result<T, EndpointError>) -> Result<T, EndpointError> {
        if let Err(e) = &r
            && !matches!(e, EndpointError::ForeignRequest { .. })
        {
            if matches!(e, EndpointError::Rescinded) {
                self.channel.unmap();
            }
            self.stopped = Some(e.to_string());
        }
        r
    }

    fn notice(&mut self, notice: IcNotice) {
        let kind = notice.kind();
        let i = NOTICE_KINDS.iter().position(|k| *k == kind).unwrap_or(0);
        let now = Instant::now();
        let w = &mut self.windows[i];
        match w.start {
            Some(s) if now.duration_since(s) < self.config.notice_interval => {}
            _ => {
                if w.suppressed > 0 && self.notices.len() < self.config.max_queued_notices {
                    self.notices.push_back(IcNotice::Suppressed {
                        kind,
                        count: w.suppressed,
                    });
                }
                *w = Window {
                    start: Some(now),
                    emitted: 0,
                    suppressed: 0,
                };
            }
        }
        if w.emitted < self.config.notice_burst
            && self.notices.len() < self.config.max_queued_notices
        {
            w.emitted += 1;
            self.notices.push_back(notice);
        } else {
            w.suppressed += 1;
        }
    }

    fn flush_inner(&mut self) -> Result<(), EndpointError> {
        let owed = std::mem::take(&mut *self.abandon.lock().unwrap_or_else(|p| p.into_inner()));
        for o in owed {
            if let Some(at) = self.pending.iter().position(|&t| t == o.trans_id) {
                self.pending.swap_remove(at);
            }
            self.stats.abandoned += 1;
            self.notice(IcNotice::Abandoned {
                trans_id: o.trans_id,
                op: o.op,
            });
            self.queue_unsent(o.trans_id, o.payload);
            self.stats.replies += 1;
        }
        while let Some((trans_id, payload)) = self.outbox.front() {
            match self.channel.send(*trans_id, payload) {
                Ok(()) => {
                    self.outbox.pop_front();
                }
                Err(ChannelError::Ring(RingError::Full { .. })) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Sends one reply, or queues it behind earlier ones / a full ring.
    fn send_reply(&mut self, trans_id: u64, payload: Vec<u8>) -> Result<(), EndpointError> {
        self.stats.replies += 1;
        if self.outbox.is_empty() {
            match self.channel.send(trans_id, &payload) {
                Ok(()) => return Ok(()),
                Err(ChannelError::Ring(RingError::Full { .. })) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.queue_unsent(trans_id, payload);
        Ok(())
    }

    /// Queues a reply behind the full ring, dropping the oldest when the outbox is full.
    fn queue_unsent(&mut self, trans_id: u64, payload: Vec<u8>) {
        if self.outbox.len() >= self.config.max_unsent_replies.max(1)
            && let Some((dropped, _)) = self.outbox.pop_front()
        {
            self.stats.replies_dropped += 1;
            self.notice(IcNotice::ReplyDropped { trans_id: dropped });
        }
        self.outbox.push_back((trans_id, payload));
    }

    fn service_inner(&mut self) -> Result<Vec<IcEvent>, EndpointError> {
        // Consume the wake-up first: a signal that arrives while we drain makes the fd
        // readable again, which at worst costs one empty pass. Then make sure the device is
        // still there before this pass writes any reply (§3.2: POLLERR after a rescind).
        self.channel.ack_signals()?;
        self.channel.check_alive()?;
        self.flush_inner()?;
        let mut events = Vec::new();
        loop {
            while self.service_one(&mut events)? {}
            // Unmask, fence, look again: anything published before the host saw the unmask
            // gets no signal (§3.3 step 3).
            if !self.channel.unmask()? {
                break;
            }
        }
        Ok(events)
    }

    /// Reads and handles one packet; false when the ring is empty.
    fn service_one(&mut self, events: &mut Vec<IcEvent>) -> Result<bool, EndpointError> {
        // The channel's buffer is borrowed from the channel; copy what we need out so the
        // channel can be used to send the reply.
        let (trans_id, packet_type, payload) = match self.channel.recv()? {
            None => return Ok(false),
            Some(p) => (
                p.trans_id(),
                p.descriptor.packet_type.get(),
                p.payload().to_vec(),
            ),
        };
        self.stats.packets += 1;
        let now = Instant::now();
        if packet_type != hv_vss_protocol::vmbus::PacketType::DATA_INBAND.0 {
            self.drop_packet(
                trans_id,
                payload.len(),
                DropReason::NotInband { packet_type },
            );
            return Ok(true);
        }
        let ic = match IcMessage::parse(&payload) {
            Ok(ic) => ic,
            Err(e) => {
                self.drop_packet(trans_id, payload.len(), DropReason::BadFraming(e));
                return Ok(true);
            }
        };
        let route = hv_vss_protocol::vss::route_uio(ic);
        if !ic.icmsgsize_matches()
            && matches!(
                route,
                UioRoute::AnswerLocally { .. } | UioRoute::Coordinator { .. }
            )
        {
            self.notice(IcNotice::IcmsgsizeMismatch {
                trans_id,
                declared: ic.header().icmsgsize.get(),
                arrived: ic.body().len(),
            });
        }
        match route {
            UioRoute::Negotiate => self.negotiate(trans_id, ic)?,
            UioRoute::NoReply(reason) => {
                self.drop_packet(trans_id, payload.len(), DropReason::NotForUs(reason));
            }
            UioRoute::AnswerLocally {
                request,
                status,
                why,
            } => {
                let reply = request.reply(status).into_bytes();
                self.stats.answered_locally += 1;
                self.send_reply(trans_id, reply)?;
                match why {
                    LocalAnswer::BackupComplete => {
                        events.push(IcEvent::BackupComplete { trans_id })
                    }
                    LocalAnswer::UnknownOperation => self.notice(IcNotice::UnknownOperation {
                        trans_id,
                        op: request.op(),
                    }),
                    LocalAnswer::DmInfo | LocalAnswer::Acknowledge => {}
                }
            }
            UioRoute::Coordinator { request, op } => {
                if self.pending.contains(&trans_id) {
                    self.notice(IcNotice::DuplicateTransId { trans_id });
                }
                self.pending.push(trans_id);
                self.stats.delivered += 1;
                events.push(IcEvent::Request(PendingRequest {
                    endpoint: self.id,
                    trans_id,
                    op,
                    vss_op: request.op(),
                    reply: Some(request.reply(HvStatus::S_OK)),
                    request: payload.clone().into_boxed_slice(),
                    received_at: now,
                    abandon: Arc::downgrade(&self.abandon),
                }));
            }
        }
        Ok(true)
    }

    fn negotiate(&mut self, trans_id: u64, ic: IcMessage<'_>) -> Result<(), EndpointError> {
        // R3: every NEGOTIATE that holds the counts is answered, also after a failed one and
        // also when malformed; only a payload too short for the counts goes unanswered.
        let answer = match negotiate::answer_offer(
            ic,
            &negotiate::GUEST_FRAMEWORK_VERSIONS,
            &negotiate::GUEST_VSS_VERSIONS,
        ) {
            Ok(answer) => answer,
            Err(e) => {
                self.drop_packet(trans_id, ic.len(), DropReason::BadNegotiate(e));
                return Ok(());
            }
        };
        self.stats.answered_locally += 1;
        // R2: the reply goes out before anything else happens.
        self.send_reply(trans_id, answer.reply.into_bytes())?;
        match answer.outcome {
            NegotiateOutcome::Agreed { framework, message } => {
                self.negotiation = Negotiation::Agreed { framework, message };
                self.notice(IcNotice::Negotiated { framework, message });
            }
            NegotiateOutcome::Failed(failure) => {
                self.negotiation = Negotiation::Failed;
                self.notice(IcNotice::NegotiationFailed {
                    failure,
                    offered_framework: answer.offered_framework,
                    offered_message: answer.offered_message,
                });
            }
        }
        Ok(())
    }

    fn drop_packet(&mut self, trans_id: u64, len: usize, reason: DropReason) {
        self.stats.dropped += 1;
        self.notice(IcNotice::Dropped {
            trans_id,
            len,
            reason,
        });
    }
}

#[cfg(test)]
mod tests;
