//! A simulated Hyper-V host on the host side of a shared-memory ring pair
//! ([`hv_vss_vmbus::shm::ShmRings`]), to drive a guest endpoint without Hyper-V.
//!
//! # What a host does (wire-protocol.md §4–§6, README "A normal backup")
//!
//! After the channel opens the host sends NEGOTIATE (by default framework 1.0 and 3.0, VSS
//! 5.0, as in worked example 11.1). For each backup it sends HOT_BACKUP, FREEZE (possibly
//! with LUN data after the 12-byte message, up to 12,500 body bytes), snapshots the disks,
//! then THAW and BU_COMPLETE. Every request carries a fresh VMBus `trans_id`; the guest's
//! reply carries the same one.
//!
//! # What the simulator checks
//!
//! Each reply is checked against its request (§4.3, R4, R7, R8): in-band packet with VMBus
//! flags 0, the same (padded) length, icflags 0x05, status S_OK or HV_E_FAIL only, HOT_BACKUP
//! `flags` 5, GET_DM_INFO `flags` 0, and every other byte echoed (LUN data included).
//! NEGOTIATE replies must declare `icmsgsize` 16 and either choose versions the host offered
//! (S_OK, counts 1) or carry counts 0 with HV_E_FAIL. A violation is a typed
//! [`ReplyViolation`]; no reply within the timeout is [`SimError::Timeout`].
//!
//! # Design
//!
//! Sending and waiting are split ([`HostSimulator::post_vss`] returns a [`Ticket`],
//! [`HostSimulator::await_vss`] waits for its reply), so single-threaded tests can service
//! the guest between the two; the blocking helpers ([`HostSimulator::freeze`], ...) do both.
//! Replies are matched by `trans_id`; replies nobody waits for are kept and shown by
//! [`HostSimulator::unmatched_replies`]. Every request is recorded as an [`Exchange`] with
//! timestamps relative to [`HostSimulator::started_at`].
//!
//! The host's interrupts follow one of the two `uio_hv_generic` generations
//! ([`HostConfig::mask_model`], wire §3.2): the old driver masks the guest's RX ring on every
//! interrupt, the current one never touches the mask. [`HostSimulator::rescind`] does what a
//! rescind does to a guest: the ring pages are poisoned (freed memory on a real kernel) and
//! the interrupt fd hangs up; [`HostSimulator::check_untouched_since_rescind`] tells whether
//! the guest wrote into them afterwards.
//!
//! Faults for tests: garbage payloads, truncated VSS payloads, a non-VSS `icmsgtype`,
//! malformed NEGOTIATE offers, a wrong `icmsgsize`, duplicate `trans_id`s, requests after which no reply is expected
//! ([`HostSimulator::expect_no_reply`]), and corrupt ring indices or descriptors
//! ([`HostSimulator::corrupt_ring`], after which the simulator refuses to send).
//!
//! [`self_test_guest`] is a guest that answers coordinator requests with a fixed policy and
//! freezes nothing: a transport self-test, not a daemon.
//!
//! # Limitations
//!
//! - The host's real pacing (where GET_DM_INFO falls, how long it holds a freeze, whether it
//!   retries) is unconfirmed on a real host; the sequences here follow the spec's diagram.
//! - A dead guest process is noticed only by the reply timeout (or by the caller watching
//!   the hand-over socket).

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use hv_vss_protocol::ic::{self, IcError, IcMessage, IcMsgType, Version};
use hv_vss_protocol::negotiate::{self, NegotiateError};
use hv_vss_protocol::vmbus::PacketType;
use hv_vss_protocol::vss::{self, MAX_FREEZE_BODY_LEN, VSS_HBU_NO_AUTO_RECOVERY, VSS_MSG_LEN};
use hv_vss_protocol::{HvStatus, VssOperation};
use hv_vss_ring::{HeaderWord, RingMem};
use hv_vss_sys::mem::MappedRing;
use hv_vss_vmbus::shm::{InterruptMaskModel, ShmChannel, ShmRings};
use hv_vss_vmbus::uio::{ChannelError, Doorbell, VmbusChannel, Wake};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

/// What [`HostSimulator::rescind`] fills the freed rings' data areas with.
pub const POISON_BYTE: u8 = 0xdb;

/// Every header word a guest could write.
const HEADER_WORDS: [HeaderWord; 5] = [
    HeaderWord::WriteIndex,
    HeaderWord::ReadIndex,
    HeaderWord::InterruptMask,
    HeaderWord::PendingSendSize,
    HeaderWord::FeatureBits,
];

/// What the host offers and how long it waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostConfig {
    /// Framework versions offered in NEGOTIATE (default 1.0, 3.0).
    pub framework_offer: Vec<Version>,
    /// VSS message versions offered (default 5.0).
    pub message_offer: Vec<Version>,
    /// How long to wait for each reply (default 60 s).
    pub reply_timeout: Duration,
    /// Which `uio_hv_generic` generation the host's interrupts reproduce (default: current
    /// kernels, which never touch the mask).
    pub mask_model: InterruptMaskModel,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            framework_offer: vec![Version::new(1, 0), Version::new(3, 0)],
            message_offer: vec![Version::new(5, 0)],
            reply_timeout: Duration::from_secs(60),
            mask_model: InterruptMaskModel::default(),
        }
    }
}

impl HostConfig {
    /// A host that offers only VSS 4.0 (Windows 8): negotiation must fail (R3).
    pub fn vss_4_0_only() -> Self {
        Self {
            message_offer: vec![Version::new(4, 0)],
            ..Self::default()
        }
    }

    /// The same, with another reply timeout.
    pub fn with_reply_timeout(mut self, timeout: Duration) -> Self {
        self.reply_timeout = timeout;
        self
    }

    /// The same, reproducing another `uio_hv_generic` generation.
    pub fn with_mask_model(mut self, model: InterruptMaskModel) -> Self {
        self.mask_model = model;
        self
    }
}

/// What a request was, for the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// A NEGOTIATE offer.
    Negotiate,
    /// A VSS request; `trailing_len` bytes follow the 12-byte message.
    Vss {
        /// The operation.
        op: VssOperation,
        /// LUN or other trailing bytes.
        trailing_len: usize,
    },
    /// A deliberately bad packet.
    Fault(FaultKind),
}

/// The faults the simulator can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Arbitrary bytes as a payload.
    Garbage,
    /// A VSS payload shorter than 40 bytes (R10).
    TruncatedVss,
    /// An IC message of another type (R10).
    NonVssType(u16),
    /// A malformed NEGOTIATE offer (answered counts 0 and E_FAIL, R3).
    MalformedNegotiate(MalformedOffer),
    /// A VSS request whose `icmsgsize` disagrees with its body (served anyway, §4.2).
    WrongIcmsgsize(u16),
}

/// Ways a NEGOTIATE offer can be malformed (wire §5.2 step 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MalformedOffer {
    /// `icframe_vercnt` 0.
    ZeroCount,
    /// `icmsg_vercnt` 101.
    CountAbove100,
    /// Counts that claim more versions than the payload holds.
    VersionsPastPayload,
}

/// A posted request, to wait for with [`HostSimulator::await_vss`] and friends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// Index of the [`Exchange`] in the record.
    pub seq: usize,
    /// The VMBus `trans_id` the reply must carry.
    pub trans_id: u64,
}

/// How an exchange ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExchangeOutcome {
    /// Posted, not yet resolved.
    Waiting,
    /// A valid reply with this status arrived at `at` (since the simulator started).
    Replied {
        /// Arrival time.
        at: Duration,
        /// Its status.
        status: HvStatus,
    },
    /// A reply arrived but broke the spec.
    Invalid {
        /// Arrival time.
        at: Duration,
        /// What was wrong.
        violation: ReplyViolation,
    },
    /// No reply within the timeout.
    TimedOut {
        /// How long the simulator waited.
        waited: Duration,
    },
    /// No reply was expected and none came.
    Silent,
    /// No reply was expected but one came.
    UnexpectedReply {
        /// Arrival time.
        at: Duration,
    },
}

/// One request and what came of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// What was sent.
    pub request: RequestKind,
    /// Its VMBus `trans_id`.
    pub trans_id: u64,
    /// Payload length sent.
    pub request_len: usize,
    /// When it was sent, since the simulator started.
    pub sent_at: Duration,
    /// How it ended.
    pub outcome: ExchangeOutcome,
}

/// A way a reply broke the spec.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyViolation {
    /// Not an in-band packet with VMBus flags 0.
    #[error("reply packet type {packet_type:#x} flags {flags:#x}, want 6 and 0")]
    Descriptor {
        /// Packet type.
        packet_type: u16,
        /// VMBus flags.
        flags: u16,
    },
    /// A different (padded) payload length than the request.
    #[error("reply payload of {got} bytes, request had {expected} (padded)")]
    Length {
        /// Padded request length.
        expected: usize,
        /// Reply payload length.
        got: usize,
    },
    /// The IC framing does not parse.
    #[error("reply does not parse: {0}")]
    Unparseable(IcError),
    /// icflags is not 0x05.
    #[error("reply icflags {0:#04x}, want 0x05")]
    IcFlags(u8),
    /// A status other than S_OK and HV_E_FAIL (R8).
    #[error("reply status {0:?} is neither S_OK nor E_FAIL")]
    Status(HvStatus),
    /// HOT_BACKUP reply without flags 5 (R7).
    #[error("HOT_BACKUP reply flags {0}, want 5")]
    HotBackupFlags(u32),
    /// GET_DM_INFO reply with flags other than 0.
    #[error("GET_DM_INFO reply flags {0}, want 0")]
    DmInfoFlags(u32),
    /// A byte that must be echoed changed (pipe header, versions, LUN data...).
    #[error("reply byte {offset:#x} is {got:#04x}, request had {expected:#04x}")]
    Echo {
        /// Payload offset.
        offset: usize,
        /// Request byte.
        expected: u8,
        /// Reply byte.
        got: u8,
    },
    /// A NEGOTIATE reply whose `icmsgsize` is not 16.
    #[error("NEGOTIATE reply icmsgsize {0}, want 16")]
    NegotiateSize(u16),
    /// A NEGOTIATE reply that does not parse or chose something not offered.
    #[error("NEGOTIATE reply invalid: {0}")]
    Negotiate(String),
}

/// A valid VSS reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VssReply {
    /// The request's operation.
    pub op: VssOperation,
    /// Its `trans_id`.
    pub trans_id: u64,
    /// S_OK or HV_E_FAIL.
    pub status: HvStatus,
    /// The reply's `flags` word.
    pub flags: u32,
    /// From sending the request to reading the reply.
    pub latency: Duration,
}

impl VssReply {
    /// True for S_OK.
    pub fn is_ok(&self) -> bool {
        self.status.is_ok()
    }
}

/// The result of a NEGOTIATE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NegotiationResult {
    /// The guest chose these versions.
    Agreed {
        /// Framework version.
        framework: Version,
        /// VSS message version.
        message: Version,
        /// Round trip.
        latency: Duration,
    },
    /// The guest answered counts 0 and HV_E_FAIL.
    Refused {
        /// Round trip.
        latency: Duration,
    },
}

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The ring or a signalling fd failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// A request could not be built.
    #[error("cannot build the request: {0}")]
    Build(String),
    /// No reply with this `trans_id` in time.
    #[error("no reply to trans_id {trans_id:#x} within {waited:?}")]
    Timeout {
        /// The id.
        trans_id: u64,
        /// How long.
        waited: Duration,
    },
    /// The reply broke the spec.
    #[error("reply to trans_id {trans_id:#x} invalid: {violation}")]
    Invalid {
        /// The id.
        trans_id: u64,
        /// What was wrong.
        violation: ReplyViolation,
    },
    /// A reply came where none was expected.
    #[error("unexpected reply to trans_id {trans_id:#x}")]
    UnexpectedReply {
        /// The id.
        trans_id: u64,
    },
    /// The ticket is not from this simulator, or was already resolved.
    #[error("unknown or already resolved ticket {0:?}")]
    BadTicket(Ticket),
    /// The ring was corrupted on purpose; nothing more can be sent.
    #[error("the simulator corrupted its ring and stopped")]
    Corrupted,
    /// The simulator rescinded the channel; nothing more can be sent.
    #[error("the simulator rescinded the channel")]
    Rescinded,
    /// The guest wrote into the rings after the rescind (freed memory on a real kernel).
    #[error("the guest wrote into the rescinded {ring} ring: {what}")]
    WrittenAfterRescind {
        /// `TX` (guest to host) or `RX`.
        ring: &'static str,
        /// Which word or data offset changed.
        what: String,
    },
    /// Setting up or using the hand-over socket failed.
    #[error("{op}: {source}")]
    Io {
        /// The call.
        op: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl From<IcError> for SimError {
    fn from(e: IcError) -> Self {
        SimError::Build(e.to_string())
    }
}

impl From<NegotiateError> for SimError {
    fn from(e: NegotiateError) -> Self {
        SimError::Build(e.to_string())
    }
}

/// Ways to corrupt the host-written side of the guest's receive ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingCorruption {
    /// `write_index` at or past the data area size.
    WriteIndexPastEnd,
    /// `write_index` not a multiple of 8.
    WriteIndexUnaligned,
    /// A packet whose descriptor has `offset8` = 1 (inside the descriptor).
    DescriptorOffset,
    /// A packet whose `len8` runs past the write index.
    LengthPastWriteIndex,
}

/// A reply read from the ring, waiting to be matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedPacket {
    /// Its `trans_id`.
    pub trans_id: u64,
    /// Packet type.
    pub packet_type: u16,
    /// VMBus flags.
    pub flags: u16,
    /// Payload (padded).
    pub payload: Vec<u8>,
    /// Arrival, since the simulator started.
    pub at: Duration,
}

struct Posted {
    ticket: Ticket,
    payload: Vec<u8>,
    sent: Instant,
}

/// The simulated host. See the module docs.
pub struct HostSimulator {
    channel: ShmChannel,
    config: HostConfig,
    next_trans_id: u64,
    started: Instant,
    started_wall: SystemTime,
    log: Vec<Exchange>,
    posted: Vec<Posted>,
    inbox: VecDeque<ReceivedPacket>,
    unmatched: Vec<ReceivedPacket>,
    corrupted: bool,
    rescinded: bool,
}

impl std::fmt::Debug for HostSimulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSimulator")
            .field("config", &self.config)
            .field("exchanges", &self.log.len())
            .field("corrupted", &self.corrupted)
            .finish()
    }
}

impl HostSimulator {
    /// Takes the host's view of `rings` (the guest's view goes to the other process).
    pub fn new(rings: ShmRings, config: HostConfig) -> Result<Self, SimError> {
        Ok(Self {
            channel: rings.with_mask_model(config.mask_model).host()?,
            config,
            // Distinct, recognisable ids: 0x5100_0000_0000_0001, ...
            next_trans_id: 0x5100_0000_0000_0001,
            started: Instant::now(),
            started_wall: SystemTime::now(),
            log: Vec::new(),
            posted: Vec::new(),
            inbox: VecDeque::new(),
            unmatched: Vec::new(),
            corrupted: false,
            rescinded: false,
        })
    }

    /// Creates rings of `ring_len` bytes, keeps the host view and returns the rings for the
    /// guest (in-process tests: `rings.guest()`; other process: `rings.send_over(socket)`).
    pub fn create(ring_len: usize, config: HostConfig) -> Result<(Self, ShmRings), SimError> {
        let rings = ShmRings::create(ring_len)?;
        let guest = rings.try_clone()?;
        Ok((Self::new(rings, config)?, guest))
    }

    /// The configuration.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// Wall-clock time the record's offsets count from.
    pub fn started_at(&self) -> SystemTime {
        self.started_wall
    }

    /// Every request sent so far, in order.
    pub fn exchanges(&self) -> &[Exchange] {
        &self.log
    }

    /// Replies that matched no waiting request (stray or surplus `trans_id`s), plus any
    /// read but not yet claimed.
    pub fn unmatched_replies(&mut self) -> Vec<ReceivedPacket> {
        let _ = self.pump(Some(Duration::ZERO));
        let mut all = self.unmatched.clone();
        all.extend(self.inbox.iter().cloned());
        all
    }

    /// The host's channel (for diagnostics).
    pub fn channel(&self) -> &ShmChannel {
        &self.channel
    }

    fn fresh_trans_id(&mut self) -> u64 {
        let id = self.next_trans_id;
        self.next_trans_id = self.next_trans_id.wrapping_add(1);
        id
    }

    fn since_start(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.started)
    }

    /// Sends `payload` with `trans_id` and records it.
    fn post(
        &mut self,
        request: RequestKind,
        trans_id: u64,
        payload: Vec<u8>,
    ) -> Result<Ticket, SimError> {
        if self.corrupted {
            return Err(SimError::Corrupted);
        }
        if self.rescinded {
            return Err(SimError::Rescinded);
        }
        let sent = Instant::now();
        self.channel.send(trans_id, &payload)?;
        let ticket = Ticket {
            seq: self.log.len(),
            trans_id,
        };
        self.log.push(Exchange {
            request,
            trans_id,
            request_len: payload.len(),
            sent_at: self.since_start(sent),
            outcome: ExchangeOutcome::Waiting,
        });
        self.posted.push(Posted {
            ticket,
            payload,
            sent,
        });
        Ok(ticket)
    }

    /// Sends a NEGOTIATE with the configured offers.
    pub fn post_negotiate(&mut self) -> Result<Ticket, SimError> {
        let offer =
            negotiate::build_offer(&self.config.framework_offer, &self.config.message_offer)?;
        let id = self.fresh_trans_id();
        self.post(RequestKind::Negotiate, id, offer)
    }

    /// Sends a NEGOTIATE with the configured offers, malformed as `how` says. Await it with
    /// [`HostSimulator::await_negotiate`]: the guest must refuse it (counts 0, E_FAIL).
    pub fn post_malformed_negotiate(&mut self, how: MalformedOffer) -> Result<Ticket, SimError> {
        let mut offer =
            negotiate::build_offer(&self.config.framework_offer, &self.config.message_offer)?;
        let at = ic::IC_BODY_OFFSET;
        let (field, value) = match how {
            MalformedOffer::ZeroCount => (at, 0u16),
            MalformedOffer::CountAbove100 => (at + 2, 101),
            MalformedOffer::VersionsPastPayload => {
                let fw = u16::from_le_bytes([offer[at], offer[at + 1]]);
                (at, fw + 4)
            }
        };
        offer[field..field + 2].copy_from_slice(&value.to_le_bytes());
        let id = self.fresh_trans_id();
        self.post(
            RequestKind::Fault(FaultKind::MalformedNegotiate(how)),
            id,
            offer,
        )
    }

    /// [`HostSimulator::post_malformed_negotiate`], then waits for and checks the reply,
    /// which must be a refusal (counts 0, `icmsgsize` 16, E_FAIL) to pass the checker.
    pub fn negotiate_malformed(
        &mut self,
        how: MalformedOffer,
    ) -> Result<NegotiationResult, SimError> {
        let t = self.post_malformed_negotiate(how)?;
        self.await_negotiate(t)
    }

    /// Sends a VSS request for `op` with `trailing` bytes after the 12-byte message and
    /// `icmsgsize` forced to `icmsgsize` (larger, smaller or zero against the real body). The
    /// guest must serve it from the bytes that arrived (wire §4.2); await it with
    /// [`HostSimulator::await_vss`], whose checker wants every other byte echoed.
    pub fn post_vss_with_icmsgsize(
        &mut self,
        op: VssOperation,
        trailing: &[u8],
        icmsgsize: u16,
    ) -> Result<Ticket, SimError> {
        let mut payload = vss::build_request(op, 0, trailing)?;
        payload[18..20].copy_from_slice(&icmsgsize.to_le_bytes());
        let id = self.fresh_trans_id();
        self.post(
            RequestKind::Fault(FaultKind::WrongIcmsgsize(icmsgsize)),
            id,
            payload,
        )
    }

    /// Sends a VSS request for `op` with message `flags` and `trailing` bytes after the
    /// 12-byte message.
    pub fn post_vss(
        &mut self,
        op: VssOperation,
        flags: u32,
        trailing: &[u8],
    ) -> Result<Ticket, SimError> {
        let id = self.fresh_trans_id();
        self.post_vss_with_id(op, flags, trailing, id)
    }

    fn post_vss_with_id(
        &mut self,
        op: VssOperation,
        flags: u32,
        trailing: &[u8],
        trans_id: u64,
    ) -> Result<Ticket, SimError> {
        let payload = vss::build_request(op, flags, trailing)?;
        let kind = RequestKind::Vss {
            op,
            trailing_len: trailing.len(),
        };
        self.post(kind, trans_id, payload)
    }

    /// Sends the same VSS request twice with one `trans_id` (a host fault). Each copy is
    /// a request of its own: the guest answers both.
    pub fn post_duplicate(&mut self, op: VssOperation) -> Result<(Ticket, Ticket), SimError> {
        let id = self.fresh_trans_id();
        let a = self.post_vss_with_id(op, 0, &[], id)?;
        let b = self.post_vss_with_id(op, 0, &[], id)?;
        Ok((a, b))
    }

    /// Sends `len` bytes of deterministic garbage (seeded) as a payload. No reply expected.
    pub fn post_garbage(&mut self, len: usize, seed: u64) -> Result<Ticket, SimError> {
        let mut x = seed | 1;
        let bytes = (0..len)
            .map(|_| {
                // xorshift64: cheap deterministic noise.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let id = self.fresh_trans_id();
        self.post(RequestKind::Fault(FaultKind::Garbage), id, bytes)
    }

    /// Sends a VSS request cut to `len` bytes, with `icmsgsize` and the pipe size shrunk to
    /// match so that only the VSS length check rejects it (R10). `len` is clamped to
    /// 28..=32: the ring pads payloads to 8 bytes and VMBus keeps no unpadded length, so a
    /// 33–39-byte payload reaches the guest as 40 bytes and is indistinguishable from a
    /// minimal VSS message (the kernel has the same blind spot).
    pub fn post_truncated_vss(&mut self, op: VssOperation, len: usize) -> Result<Ticket, SimError> {
        let full = vss::build_request(op, 0, &[])?;
        let len = len.clamp(ic::IC_BODY_OFFSET, 32);
        let mut bytes = full[..len].to_vec();
        let body = (len - ic::IC_BODY_OFFSET) as u16;
        bytes[4..8].copy_from_slice(&(u32::from(body) + ic::IC_HEADER_LEN as u32).to_le_bytes());
        bytes[18..20].copy_from_slice(&body.to_le_bytes());
        let id = self.fresh_trans_id();
        self.post(RequestKind::Fault(FaultKind::TruncatedVss), id, bytes)
    }

    /// Sends a well-formed IC message of type `msg_type` (not 0 or 5): no reply expected.
    pub fn post_non_vss(&mut self, msg_type: u16) -> Result<Ticket, SimError> {
        let body = [0u8; VSS_MSG_LEN];
        let bytes = ic::build_host_message(
            IcMsgType(msg_type),
            Version::new(3, 0),
            Version::new(5, 0),
            &body,
        )?;
        let id = self.fresh_trans_id();
        self.post(
            RequestKind::Fault(FaultKind::NonVssType(msg_type)),
            id,
            bytes,
        )
    }

    /// Reads everything the guest sent into the inbox; waits up to `timeout` for a signal
    /// if nothing is there.
    fn pump(&mut self, timeout: Option<Duration>) -> Result<(), SimError> {
        let mut got = false;
        loop {
            while let Some(p) = self.channel.recv()? {
                let packet = ReceivedPacket {
                    trans_id: p.trans_id(),
                    packet_type: p.descriptor.packet_type.get(),
                    flags: p.descriptor.flags.get(),
                    payload: p.payload().to_vec(),
                    at: Duration::ZERO,
                };
                got = true;
                let at = self.since_start(Instant::now());
                self.inbox.push_back(ReceivedPacket { at, ..packet });
            }
            if got || timeout == Some(Duration::ZERO) {
                return Ok(());
            }
            match self.channel.wait(timeout)? {
                Wake::Ready => continue,
                Wake::TimedOut => return Ok(()),
            }
        }
    }

    /// Waits for the first reply carrying `ticket`'s `trans_id`.
    fn await_packet(
        &mut self,
        ticket: Ticket,
        timeout: Duration,
    ) -> Result<(Posted, Option<ReceivedPacket>), SimError> {
        let at = self
            .posted
            .iter()
            .position(|p| p.ticket == ticket)
            .ok_or(SimError::BadTicket(ticket))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self
                .inbox
                .iter()
                .position(|r| r.trans_id == ticket.trans_id)
            {
                let reply = self.inbox.remove(i);
                return Ok((self.posted.remove(at), reply));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok((self.posted.remove(at), None));
            }
            self.pump(Some(left))?;
        }
    }

    fn resolve(&mut self, ticket: Ticket, outcome: ExchangeOutcome) {
        if let Some(e) = self.log.get_mut(ticket.seq) {
            e.outcome = outcome;
        }
    }

    /// Waits (up to the configured timeout) for the reply to a VSS request and checks it.
    pub fn await_vss(&mut self, ticket: Ticket) -> Result<VssReply, SimError> {
        let timeout = self.config.reply_timeout;
        self.await_vss_within(ticket, timeout)
    }

    /// As [`HostSimulator::await_vss`] with an explicit timeout.
    pub fn await_vss_within(
        &mut self,
        ticket: Ticket,
        timeout: Duration,
    ) -> Result<VssReply, SimError> {
        let (posted, reply) = self.await_packet(ticket, timeout)?;
        let Some(reply) = reply else {
            self.resolve(ticket, ExchangeOutcome::TimedOut { waited: timeout });
            return Err(SimError::Timeout {
                trans_id: ticket.trans_id,
                waited: timeout,
            });
        };
        let at = reply.at;
        let latency = at.saturating_sub(self.since_start(posted.sent));
        match check_vss_reply(&posted.payload, &reply) {
            Ok((op, status, flags)) => {
                self.resolve(ticket, ExchangeOutcome::Replied { at, status });
                Ok(VssReply {
                    op,
                    trans_id: ticket.trans_id,
                    status,
                    flags,
                    latency,
                })
            }
            Err(violation) => {
                self.resolve(
                    ticket,
                    ExchangeOutcome::Invalid {
                        at,
                        violation: violation.clone(),
                    },
                );
                Err(SimError::Invalid {
                    trans_id: ticket.trans_id,
                    violation,
                })
            }
        }
    }

    /// Waits for and checks the reply to a NEGOTIATE.
    pub fn await_negotiate(&mut self, ticket: Ticket) -> Result<NegotiationResult, SimError> {
        let timeout = self.config.reply_timeout;
        let (posted, reply) = self.await_packet(ticket, timeout)?;
        let Some(reply) = reply else {
            self.resolve(ticket, ExchangeOutcome::TimedOut { waited: timeout });
            return Err(SimError::Timeout {
                trans_id: ticket.trans_id,
                waited: timeout,
            });
        };
        let at = reply.at;
        let latency = at.saturating_sub(self.since_start(posted.sent));
        match check_negotiate_reply(&self.config, &posted.payload, &reply) {
            Ok(chosen) => {
                let status = HvStatus::from_success(chosen.is_some());
                self.resolve(ticket, ExchangeOutcome::Replied { at, status });
                Ok(match chosen {
                    Some((framework, message)) => NegotiationResult::Agreed {
                        framework,
                        message,
                        latency,
                    },
                    None => NegotiationResult::Refused { latency },
                })
            }
            Err(violation) => {
                self.resolve(
                    ticket,
                    ExchangeOutcome::Invalid {
                        at,
                        violation: violation.clone(),
                    },
                );
                Err(SimError::Invalid {
                    trans_id: ticket.trans_id,
                    violation,
                })
            }
        }
    }

    /// Checks that no reply to `ticket` arrives within `window` (R3 repeats, R10 drops).
    pub fn expect_no_reply(&mut self, ticket: Ticket, window: Duration) -> Result<(), SimError> {
        let (_, reply) = self.await_packet(ticket, window)?;
        match reply {
            None => {
                self.resolve(ticket, ExchangeOutcome::Silent);
                Ok(())
            }
            Some(r) => {
                self.resolve(ticket, ExchangeOutcome::UnexpectedReply { at: r.at });
                Err(SimError::UnexpectedReply {
                    trans_id: ticket.trans_id,
                })
            }
        }
    }

    /// NEGOTIATE with the configured offers, waiting for the reply.
    pub fn negotiate(&mut self) -> Result<NegotiationResult, SimError> {
        let t = self.post_negotiate()?;
        self.await_negotiate(t)
    }

    /// Sends `op` (no flags, no trailing data) and waits for the checked reply.
    pub fn request(&mut self, op: VssOperation) -> Result<VssReply, SimError> {
        let t = self.post_vss(op, 0, &[])?;
        self.await_vss(t)
    }

    /// HOT_BACKUP.
    pub fn hot_backup(&mut self) -> Result<VssReply, SimError> {
        self.request(VssOperation::HOT_BACKUP)
    }

    /// FREEZE without LUN data.
    pub fn freeze(&mut self) -> Result<VssReply, SimError> {
        self.request(VssOperation::FREEZE)
    }

    /// FREEZE with `lun` bytes after the 12-byte message (at most 12,488, so that the body
    /// stays within OpenVMM's 12,500-byte `Message2Ex`); the reply must echo them.
    pub fn freeze_with_lun(&mut self, lun: &[u8]) -> Result<VssReply, SimError> {
        if VSS_MSG_LEN + lun.len() > MAX_FREEZE_BODY_LEN {
            return Err(SimError::Build(format!(
                "{} LUN bytes exceed the {MAX_FREEZE_BODY_LEN}-byte FREEZE body",
                lun.len()
            )));
        }
        let t = self.post_vss(VssOperation::FREEZE, 0, lun)?;
        self.await_vss(t)
    }

    /// THAW.
    pub fn thaw(&mut self) -> Result<VssReply, SimError> {
        self.request(VssOperation::THAW)
    }

    /// GET_DM_INFO.
    pub fn get_dm_info(&mut self) -> Result<VssReply, SimError> {
        self.request(VssOperation::GET_DM_INFO)
    }

    /// BU_COMPLETE.
    pub fn bu_complete(&mut self) -> Result<VssReply, SimError> {
        self.request(VssOperation::BU_COMPLETE)
    }

    /// Corrupts the guest's receive ring as `how` says and signals the guest (setting its
    /// RX `interrupt_mask` first, as the kernel's interrupt handler does). The simulator
    /// sends nothing afterwards ([`SimError::Corrupted`]).
    pub fn corrupt_ring(&mut self, how: RingCorruption) -> Result<(), SimError> {
        let writer = self.channel.writer().ok_or(SimError::Rescinded)?;
        let ring = writer.mem();
        let data_len = ring.data_len();
        let write_pos = writer.write_pos();
        let write_index = ring.header_word(HeaderWord::WriteIndex);
        let put = |at: usize, bytes: &[u8]| {
            for (i, b) in bytes.iter().enumerate() {
                ring.write_data((at + i) % data_len, std::slice::from_ref(b));
            }
        };
        let bad_index = match how {
            RingCorruption::WriteIndexPastEnd => u32::try_from(data_len + 8).unwrap_or(u32::MAX),
            RingCorruption::WriteIndexUnaligned => write_pos.wrapping_add(4),
            RingCorruption::DescriptorOffset | RingCorruption::LengthPastWriteIndex => {
                // A descriptor and a trailer: 24 bytes published.
                let (offset8, len8) = match how {
                    RingCorruption::DescriptorOffset => (1u16, 2u16),
                    _ => (2u16, 200u16),
                };
                let mut packet = Vec::with_capacity(24);
                packet.extend_from_slice(&PacketType::DATA_INBAND.0.to_le_bytes());
                packet.extend_from_slice(&offset8.to_le_bytes());
                packet.extend_from_slice(&len8.to_le_bytes());
                packet.extend_from_slice(&0u16.to_le_bytes());
                packet.extend_from_slice(&0xbad_u64.to_le_bytes());
                packet.extend_from_slice(&(u64::from(write_pos) << 32).to_le_bytes());
                put(write_pos as usize, &packet);
                ((write_pos as usize + packet.len()) % data_len) as u32
            }
        };
        std::sync::atomic::fence(Ordering::SeqCst);
        write_index.store(bad_index, Ordering::Release);
        self.corrupted = true;
        // An interrupt as the configured driver generation delivers it (old drivers mask
        // RX first), whether or not the ring rules would call for one.
        self.channel.doorbell_mut().ring()?;
        Ok(())
    }

    /// Rescinds the channel as the kernel does when the host removes the device: the ring
    /// pages are freed while the guest still maps them, and the guest's device fd reports
    /// an error. Here the rings are poisoned ([`POISON_BYTE`] in every data byte, 0 in every
    /// header word: freed pages as they might look once reused, with indices that would let
    /// a late writer go ahead), and the interrupt pipe is closed. Nothing can be sent
    /// afterwards; [`HostSimulator::check_untouched_since_rescind`] then tells whether the
    /// guest wrote anything into the freed rings.
    pub fn rescind(&mut self) -> Result<(), SimError> {
        for (_, ring) in self.rings()? {
            for word in HEADER_WORDS {
                ring.header_word(word).store(0, Ordering::SeqCst);
            }
            let data_len = ring.data_len();
            let chunk = [POISON_BYTE; 4096];
            let mut at = 0;
            while at < data_len {
                let n = chunk.len().min(data_len - at);
                ring.write_data(at, &chunk[..n]);
                at += n;
            }
        }
        std::sync::atomic::fence(Ordering::SeqCst);
        self.rescinded = true;
        self.channel.doorbell_mut().hang_up();
        Ok(())
    }

    /// After [`HostSimulator::rescind`]: checks that every byte of both rings still holds
    /// the poison, i.e. the guest wrote nothing after the rescind.
    pub fn check_untouched_since_rescind(&self) -> Result<(), SimError> {
        if !self.rescinded {
            return Err(SimError::Build("the channel was not rescinded".into()));
        }
        for (name, ring) in self.rings()? {
            for word in HEADER_WORDS {
                let v = ring.header_word(word).load(Ordering::SeqCst);
                if v != 0 {
                    return Err(SimError::WrittenAfterRescind {
                        ring: name,
                        what: format!("{word:?} = {v:#x}"),
                    });
                }
            }
            let mut buf = vec![0u8; ring.data_len()];
            ring.read_data(0, &mut buf);
            if let Some(at) = buf.iter().position(|&b| b != POISON_BYTE) {
                return Err(SimError::WrittenAfterRescind {
                    ring: name,
                    what: format!("data byte {at:#x} = {:#04x}", buf[at]),
                });
            }
        }
        Ok(())
    }

    /// Both rings' memory, named from the guest's side.
    fn rings(&self) -> Result<[(&'static str, &MappedRing); 2], SimError> {
        let tx = self.channel.reader().ok_or(SimError::Rescinded)?.mem();
        let rx = self.channel.writer().ok_or(SimError::Rescinded)?.mem();
        Ok([("TX", tx), ("RX", rx)])
    }

    /// One backup as the spec's diagram shows it: HOT_BACKUP → FREEZE → hold → THAW →
    /// BU_COMPLETE. A failed HOT_BACKUP ends the cycle; a failed FREEZE is still followed
    /// by THAW (a careful host makes sure nothing stays frozen).
    pub fn backup_cycle(&mut self, hold: Duration) -> BackupCycle {
        let mut steps = Vec::new();
        let check = self.hot_backup();
        let check_ok = matches!(&check, Ok(r) if r.is_ok());
        steps.push(self.step_report(Step::Vss(VssOperation::HOT_BACKUP), check));
        if !check_ok {
            return BackupCycle::from_steps(steps, None, None);
        }
        let freeze_sent = Instant::now();
        let freeze = self.freeze();
        let freeze_ok = matches!(&freeze, Ok(r) if r.is_ok());
        let freeze_replied = Instant::now();
        steps.push(self.step_report(Step::Vss(VssOperation::FREEZE), freeze));
        if freeze_ok {
            std::thread::sleep(hold);
        }
        let thaw_sent = Instant::now();
        let thaw = self.thaw();
        let thaw_replied = Instant::now();
        let thaw_ok = matches!(&thaw, Ok(r) if r.is_ok());
        steps.push(self.step_report(Step::Vss(VssOperation::THAW), thaw));
        let (frozen, snapshot) = if freeze_ok {
            (
                Some(thaw_replied.duration_since(freeze_sent)),
                Some(thaw_sent.duration_since(freeze_replied)),
            )
        } else {
            (None, None)
        };
        if thaw_ok || !freeze_ok {
            let done = self.bu_complete();
            steps.push(self.step_report(Step::Vss(VssOperation::BU_COMPLETE), done));
        }
        BackupCycle::from_steps(steps, frozen, snapshot)
    }

    /// NEGOTIATE, then one [`HostSimulator::backup_cycle`].
    pub fn full_sequence(&mut self, hold: Duration) -> BackupCycle {
        let negotiated = self.negotiate();
        let agreed = matches!(negotiated, Ok(NegotiationResult::Agreed { .. }));
        let step = match negotiated {
            Ok(NegotiationResult::Agreed { latency, .. }) => StepReport {
                step: Step::Negotiate,
                trans_id: self.log.last().map_or(0, |e| e.trans_id),
                status: Some(HvStatus::S_OK),
                latency: Some(latency),
                error: None,
            },
            Ok(NegotiationResult::Refused { latency }) => StepReport {
                step: Step::Negotiate,
                trans_id: self.log.last().map_or(0, |e| e.trans_id),
                status: Some(HvStatus::E_FAIL),
                latency: Some(latency),
                error: None,
            },
            Err(e) => StepReport {
                step: Step::Negotiate,
                trans_id: self.log.last().map_or(0, |e| e.trans_id),
                status: None,
                latency: None,
                error: Some(e.to_string()),
            },
        };
        if !agreed {
            return BackupCycle::from_steps(vec![step], None, None);
        }
        let mut cycle = self.backup_cycle(hold);
        cycle.steps.insert(0, step);
        cycle
    }

    /// `r` as a [`StepReport`] of `step` (on error, with the last exchange's `trans_id`).
    pub fn step_report(&self, step: Step, r: Result<VssReply, SimError>) -> StepReport {
        let trans_id = self.log.last().map_or(0, |e| e.trans_id);
        match r {
            Ok(reply) => StepReport {
                step,
                trans_id: reply.trans_id,
                status: Some(reply.status),
                latency: Some(reply.latency),
                error: None,
            },
            Err(e) => StepReport {
                step,
                trans_id,
                status: None,
                latency: None,
                error: Some(e.to_string()),
            },
        }
    }
}

/// A step of a backup sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// NEGOTIATE.
    Negotiate,
    /// A VSS operation.
    Vss(VssOperation),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Negotiate => f.write_str("NEGOTIATE"),
            Step::Vss(op) => write!(f, "{op}"),
        }
    }
}

/// What one step gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepReport {
    /// Which step.
    pub step: Step,
    /// Its `trans_id`.
    pub trans_id: u64,
    /// The valid reply's status (`None` on error).
    pub status: Option<HvStatus>,
    /// Round trip of a valid reply.
    pub latency: Option<Duration>,
    /// Timeout, invalid reply, or channel failure.
    pub error: Option<String>,
}

impl StepReport {
    /// A valid S_OK reply.
    pub fn is_ok(&self) -> bool {
        self.status == Some(HvStatus::S_OK)
    }
}

/// A backup sequence as the host saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupCycle {
    /// Each step, in order.
    pub steps: Vec<StepReport>,
    /// From sending FREEZE to the THAW reply: the longest the guest can have been frozen.
    pub frozen_window: Option<Duration>,
    /// From the FREEZE reply to sending THAW: the host's snapshot time.
    pub snapshot_window: Option<Duration>,
    /// Every step answered S_OK.
    pub all_ok: bool,
}

impl BackupCycle {
    fn from_steps(
        steps: Vec<StepReport>,
        frozen_window: Option<Duration>,
        snapshot_window: Option<Duration>,
    ) -> Self {
        let all_ok = steps.iter().all(StepReport::is_ok);
        Self {
            steps,
            frozen_window,
            snapshot_window,
            all_ok,
        }
    }
}

fn padded(len: usize) -> usize {
    len.div_ceil(8) * 8
}

fn check_descriptor_and_length(
    request: &[u8],
    reply: &ReceivedPacket,
) -> Result<(), ReplyViolation> {
    if reply.packet_type != PacketType::DATA_INBAND.0 || reply.flags != 0 {
        return Err(ReplyViolation::Descriptor {
            packet_type: reply.packet_type,
            flags: reply.flags,
        });
    }
    if reply.payload.len() != padded(request.len()) {
        return Err(ReplyViolation::Length {
            expected: padded(request.len()),
            got: reply.payload.len(),
        });
    }
    Ok(())
}

fn check_echo(
    request: &[u8],
    reply: &[u8],
    changed: impl Fn(usize) -> bool,
) -> Result<(), ReplyViolation> {
    for (offset, &got) in reply.iter().enumerate() {
        if changed(offset) {
            continue;
        }
        // Past the request's end, the host's ring padding (zeros) is echoed.
        let expected = request.get(offset).copied().unwrap_or(0);
        if got != expected {
            return Err(ReplyViolation::Echo {
                offset,
                expected,
                got,
            });
        }
    }
    Ok(())
}

fn check_common(reply: &[u8]) -> Result<HvStatus, ReplyViolation> {
    let ic = IcMessage::parse(reply).map_err(ReplyViolation::Unparseable)?;
    let flags = ic.header().icflags;
    if flags != ic::IcFlags::REPLY.0 {
        return Err(ReplyViolation::IcFlags(flags));
    }
    let status = ic.header().status();
    if status != HvStatus::S_OK && status != HvStatus::E_FAIL {
        return Err(ReplyViolation::Status(status));
    }
    Ok(status)
}

fn word(bytes: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(s) = bytes.get(at..at + 4) {
        w.copy_from_slice(s);
    }
    u32::from_le_bytes(w)
}

/// Checks a VSS reply against its request (§4.3, §6.4). Returns op, status, flags.
fn check_vss_reply(
    request: &[u8],
    reply: &ReceivedPacket,
) -> Result<(VssOperation, HvStatus, u32), ReplyViolation> {
    check_descriptor_and_length(request, reply)?;
    let status = check_common(&reply.payload)?;
    let op = VssOperation(request.get(ic::IC_BODY_OFFSET).copied().unwrap_or(0));
    let flags_at = ic::IC_BODY_OFFSET + 8;
    let flags = word(&reply.payload, flags_at);
    let flags_change = match op {
        VssOperation::HOT_BACKUP if flags != VSS_HBU_NO_AUTO_RECOVERY => {
            return Err(ReplyViolation::HotBackupFlags(flags));
        }
        VssOperation::GET_DM_INFO if flags != 0 => return Err(ReplyViolation::DmInfoFlags(flags)),
        VssOperation::HOT_BACKUP | VssOperation::GET_DM_INFO => true,
        _ => false,
    };
    check_echo(request, &reply.payload, |o| {
        (ic::STATUS_OFFSET..ic::STATUS_OFFSET + 4).contains(&o)
            || o == ic::ICFLAGS_OFFSET
            || (flags_change && (flags_at..flags_at + 4).contains(&o))
    })?;
    Ok((op, status, flags))
}

/// Checks a NEGOTIATE reply (§5.2). Returns the chosen versions, or `None` for a refusal.
fn check_negotiate_reply(
    config: &HostConfig,
    request: &[u8],
    reply: &ReceivedPacket,
) -> Result<Option<(Version, Version)>, ReplyViolation> {
    check_descriptor_and_length(request, reply)?;
    let status = check_common(&reply.payload)?;
    let ic = IcMessage::parse(&reply.payload).map_err(ReplyViolation::Unparseable)?;
    let size = ic.header().icmsgsize.get();
    if size != negotiate::REPLY_ICMSGSIZE {
        return Err(ReplyViolation::NegotiateSize(size));
    }
    let parsed = negotiate::parse_reply(&reply.payload)
        .map_err(|e| ReplyViolation::Negotiate(e.to_string()))?;
    let counts = (
        u16::from_le_bytes([reply.payload[28], reply.payload[29]]),
        u16::from_le_bytes([reply.payload[30], reply.payload[31]]),
    );
    // Echoed: pipe header, versions, type (0..18), IC transaction id and reserved
    // (24, 26..28), the negotiate reserved word (32..36).
    check_echo(request, &reply.payload[..36], |o| {
        (18..24).contains(&o) || o == 25 || (28..32).contains(&o)
    })?;
    match (status, parsed.chosen) {
        (HvStatus::S_OK, Some((fw, msg))) => {
            if counts != (1, 1) {
                return Err(ReplyViolation::Negotiate(format!(
                    "S_OK with counts {counts:?}, want (1, 1)"
                )));
            }
            if !config.framework_offer.contains(&fw) || !config.message_offer.contains(&msg) {
                return Err(ReplyViolation::Negotiate(format!(
                    "chose framework {fw} and message {msg}, not both offered"
                )));
            }
            Ok(Some((fw, msg)))
        }
        (HvStatus::E_FAIL, _) if counts == (0, 0) => Ok(None),
        (status, _) => Err(ReplyViolation::Negotiate(format!(
            "status {status:?} with counts {counts:?}"
        ))),
    }
}

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
        let io = |op| {
            move |e: rustix::io::Errno| SimError::Io {
                op,
                source: e.into(),
            }
        };
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(io("socket"))?;
        let addr = SocketAddrUnix::new(path).map_err(io("socket path"))?;
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
            Err(e) => {
                return Err(SimError::Io {
                    op: "poll(listener)",
                    source: e.into(),
                });
            }
        }
        rustix::net::accept_with(&self.fd, SocketFlags::CLOEXEC)
            .map(Some)
            .map_err(|e| SimError::Io {
                op: "accept",
                source: e.into(),
            })
    }
}

/// Guest side of the hand-over: connects a `SOCK_SEQPACKET` socket to `path` and receives
/// the rings. Keep the returned socket open while the rings are in use.
pub fn connect_handover(path: &Path) -> Result<(OwnedFd, ShmRings), SimError> {
    let io = |op| {
        move |e: rustix::io::Errno| SimError::Io {
            op,
            source: e.into(),
        }
    };
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(io("socket"))?;
    let addr = SocketAddrUnix::new(path).map_err(io("socket path"))?;
    rustix::net::connect(&fd, &addr).map_err(io("connect"))?;
    let rings = ShmRings::recv_from(&fd)?;
    Ok((fd, rings))
}

pub mod self_test_guest {
    //! A guest for **transport self-tests**: an [`IcEndpoint`] whose HOT_BACKUP, FREEZE
    //! and THAW are answered by a fixed policy. It freezes nothing and involves no
    //! coordinator; it shows that bytes, wake-ups and reply framing work end to end.

    use std::os::fd::BorrowedFd;
    use std::time::Duration;

    use hv_vss_protocol::HvStatus;
    use hv_vss_protocol::vss::CoordinatorOp;
    use hv_vss_vmbus::ic_endpoint::{EndpointError, IcEndpoint, IcEvent, IcNotice};
    use hv_vss_vmbus::uio::VmbusChannel;
    use rustix::event::{PollFd, PollFlags, Timespec};

    /// The fixed answers: true = S_OK, false = HV_E_FAIL.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct FixedPolicy {
        /// Answer to HOT_BACKUP.
        pub check: bool,
        /// Answer to FREEZE.
        pub freeze: bool,
        /// Answer to THAW.
        pub thaw: bool,
    }

    impl FixedPolicy {
        /// S_OK to everything.
        pub const ALWAYS_OK: Self = Self {
            check: true,
            freeze: true,
            thaw: true,
        };

        fn answer(&self, op: CoordinatorOp) -> HvStatus {
            HvStatus::from_success(match op {
                CoordinatorOp::Check => self.check,
                CoordinatorOp::Freeze => self.freeze,
                CoordinatorOp::Thaw => self.thaw,
            })
        }
    }

    /// Why [`serve`] ended.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub enum ServeEnd {
        /// The stop fd fired (or, for [`serve_for`], the time ran out).
        #[default]
        Stopped,
        /// The host went away: its interrupt fd closed, which the endpoint reports as a
        /// rescind.
        HostGone,
    }

    /// What the self-test guest saw.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct SelfTestSummary {
        /// Why serving ended.
        pub ended_by: ServeEnd,
        /// Coordinator requests answered by the policy.
        pub requests: u64,
        /// BU_COMPLETE notices.
        pub backup_completes: u64,
        /// Notices from the endpoint, in order.
        pub notices: Vec<IcNotice>,
    }

    /// Serves until `stop` (e.g. the hand-over socket) polls readable or hangs up, the host
    /// goes away, or the endpoint fails. Each coordinator request is answered at once by
    /// `policy`. The host going away closes its interrupt fd, which the endpoint reports as
    /// a rescind: for this guest, whose only host is the simulator, that is a normal end
    /// ([`ServeEnd::HostGone`]), and nothing is written into the rings afterwards.
    pub fn serve<C: VmbusChannel>(
        endpoint: &mut IcEndpoint<C>,
        policy: FixedPolicy,
        stop: BorrowedFd<'_>,
    ) -> Result<SelfTestSummary, EndpointError> {
        let mut summary = SelfTestSummary::default();
        match serve_until_stopped(endpoint, policy, stop, &mut summary) {
            Ok(()) => {}
            Err(EndpointError::Rescinded) => {
                summary.ended_by = ServeEnd::HostGone;
                summary.notices.extend(endpoint.take_notices());
            }
            Err(e) => return Err(e),
        }
        Ok(summary)
    }

    fn answer_all<C: VmbusChannel>(
        endpoint: &mut IcEndpoint<C>,
        policy: FixedPolicy,
        summary: &mut SelfTestSummary,
    ) -> Result<(), EndpointError> {
        for event in endpoint.service()? {
            match event {
                IcEvent::Request(req) => {
                    let status = policy.answer(req.op());
                    endpoint.reply(req, status)?;
                    summary.requests += 1;
                }
                IcEvent::BackupComplete { .. } => summary.backup_completes += 1,
            }
        }
        summary.notices.extend(endpoint.take_notices());
        Ok(())
    }

    fn serve_until_stopped<C: VmbusChannel>(
        endpoint: &mut IcEndpoint<C>,
        policy: FixedPolicy,
        stop: BorrowedFd<'_>,
        summary: &mut SelfTestSummary,
    ) -> Result<(), EndpointError> {
        loop {
            answer_all(endpoint, policy, summary)?;
            let timeout = (endpoint.unsent_replies() > 0).then_some(Timespec {
                tv_sec: 0,
                tv_nsec: 10_000_000,
            });
            let mut fds = [
                PollFd::from_borrowed_fd(endpoint.poll_fd(), PollFlags::IN),
                PollFd::from_borrowed_fd(stop, PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(EndpointError::Channel(
                        hv_vss_vmbus::uio::ChannelError::Io {
                            op: "poll",
                            source: e.into(),
                        },
                    ));
                }
            }
            if !fds[1].revents().is_empty() {
                // Answer whatever came with the hang-up, then stop.
                return answer_all(endpoint, policy, summary);
            }
        }
    }

    /// Serves for at most `for_at_most` with no stop fd (in-process tests).
    pub fn serve_for<C: VmbusChannel>(
        endpoint: &mut IcEndpoint<C>,
        policy: FixedPolicy,
        for_at_most: Duration,
    ) -> Result<SelfTestSummary, EndpointError> {
        let end = std::time::Instant::now() + for_at_most;
        let mut summary = SelfTestSummary::default();
        loop {
            answer_all(endpoint, policy, &mut summary)?;
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(summary);
            }
            endpoint.wait(Some(left.min(Duration::from_millis(50))))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hv_vss_vmbus::ic_endpoint::{IcEndpoint, IcEvent};

    fn setup() -> (HostSimulator, IcEndpoint<ShmChannel>) {
        let (sim, rings) = HostSimulator::create(64 * 1024, HostConfig::default()).unwrap();
        (sim, IcEndpoint::new(rings.guest().unwrap()))
    }

    #[test]
    fn single_threaded_freeze_round_trip_with_lun_bytes() {
        let (mut sim, mut ep) = setup();
        let n = sim.post_negotiate().unwrap();
        ep.service().unwrap();
        assert!(matches!(
            sim.await_negotiate(n).unwrap(),
            NegotiationResult::Agreed { .. }
        ));
        let lun: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let t = sim.post_vss(VssOperation::FREEZE, 0, &lun).unwrap();
        let mut events = ep.service().unwrap();
        let Some(IcEvent::Request(req)) = events.pop() else {
            panic!("no request")
        };
        assert_eq!(req.trans_id(), t.trans_id);
        ep.reply(req, HvStatus::S_OK).unwrap();
        let reply = sim.await_vss(t).unwrap();
        assert_eq!(reply.status, HvStatus::S_OK);
        assert_eq!(sim.exchanges().len(), 2);
        assert!(matches!(
            sim.exchanges()[1].outcome,
            ExchangeOutcome::Replied {
                status: HvStatus::S_OK,
                ..
            }
        ));
    }

    #[test]
    fn checker_flags_a_missing_hot_backup_flag_and_a_changed_lun_byte() {
        let req = vss::build_request(VssOperation::HOT_BACKUP, 0, &[]).unwrap();
        let mut good = req.clone();
        good[25] = 5;
        good[36] = 5;
        let packet = |payload: Vec<u8>| ReceivedPacket {
            trans_id: 1,
            packet_type: 6,
            flags: 0,
            payload,
            at: Duration::ZERO,
        };
        assert!(check_vss_reply(&req, &packet(good.clone())).is_ok());
        let mut no_flag = good.clone();
        no_flag[36] = 0;
        assert_eq!(
            check_vss_reply(&req, &packet(no_flag)),
            Err(ReplyViolation::HotBackupFlags(0))
        );
        let freeze = vss::build_request(VssOperation::FREEZE, 0, &[1, 2, 3, 4]).unwrap();
        let mut reply = freeze.clone();
        reply[25] = 5;
        reply[41] = 9;
        reply.resize(48, 0); // the ring pads the 44-byte payload to 48
        assert_eq!(
            check_vss_reply(&freeze, &packet(reply)),
            Err(ReplyViolation::Echo {
                offset: 41,
                expected: 2,
                got: 9
            })
        );
        let mut bad_status = good;
        bad_status[20..24].copy_from_slice(&HvStatus::INVALIDARG.0.to_le_bytes());
        assert_eq!(
            check_vss_reply(&req, &packet(bad_status)),
            Err(ReplyViolation::Status(HvStatus::INVALIDARG))
        );
    }
}
