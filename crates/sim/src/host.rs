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

mod checks;
mod handover;
mod records;
pub mod self_test_guest;
#[cfg(test)]
mod tests;

use checks::*;
pub use handover::{HandoverListener, connect_handover};
pub use records::*;
