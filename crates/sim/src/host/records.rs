//! What the simulated host hands back: tickets, exchange records, replies, spec violations
//! and errors.

use super::*;

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

impl SimError {
    /// The ring to the guest has no room for this packet yet: the guest has not read what
    /// came before. A real host waits; a test may retry.
    pub fn is_ring_full(&self) -> bool {
        matches!(
            self,
            SimError::Channel(ChannelError::Ring(hv_vss_ring::RingError::Full { .. }))
        )
    }
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
