//! IC framing: the 8-byte pipe header, the 20-byte IC message header, and reply framing.
//!
//! Kernel contract (`struct vmbuspipe_hdr` and `struct icmsg_hdr`, include/linux/hyperv.h;
//! wire-protocol.md §4): the payload of every IC packet (the bytes after the VMBus packet
//! descriptor) starts with a pipe header at offset 0 and an IC message header at offset 8;
//! the service body starts at offset 28 ([`IC_BODY_OFFSET`]). A reply is a private copy of
//! the request with `status` set and `icflags` = TRANSACTION|RESPONSE (0x05), every other byte
//! echoed, and the same length (§4.3).
//!
//! # What is tolerated and what is rejected
//!
//! The payload handed to [`IcMessage::parse`] is whatever the ring reader copied out: it may
//! end with up to 7 bytes of ring padding, so its length is not exact.
//!
//! - Rejected ([`IcError`]): a payload shorter than 28 bytes (`Truncated`) or longer than
//!   [`MAX_IC_PAYLOAD_LEN`] (`Oversized`).
//! - Tolerated: a pipe `msgsize` that disagrees with the payload length (Linux and FreeBSD never
//!   read it; the guest echoes it unchanged; see [`IcMessage::pipe_msgsize_matches`] for a log
//!   line), and an `icmsgsize` that disagrees with the bytes after the header, larger,
//!   smaller or zero (§4.2: no guest reads `icmsgsize` on receive; Linux checks only that the
//!   packet holds the IC header and the 12-byte VSS message). The message is served from the
//!   bytes that arrived, all kept in [`IcMessage::body`] and echoed;
//!   [`IcMessage::icmsgsize_matches`] tells the caller to log the mismatch. Dropping such a
//!   FREEZE would fail the backup for a field nobody else reads.
//! - Not interpreted: the pipe flags, the header versions, `ictransaction_id`, the request's
//!   `icflags` (no guest checks them) and the reserved bytes.

use core::fmt;

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::status::HvStatus;

/// Size of the pipe header.
pub const PIPE_HEADER_LEN: usize = 8;
/// Size of the IC message header.
pub const IC_HEADER_LEN: usize = 20;
/// Payload offset of the service body (`ICMSG_HDR` in Linux).
pub const IC_BODY_OFFSET: usize = PIPE_HEADER_LEN + IC_HEADER_LEN;
/// Payload offset of `icmsg_hdr.status`.
pub const STATUS_OFFSET: usize = 20;
/// Payload offset of `icmsg_hdr.icflags`.
pub const ICFLAGS_OFFSET: usize = 25;
/// Largest IC payload hv-vss accepts: its 16 KiB receive buffer (R11). OpenVMM caps IC
/// messages at 13,312 bytes; the largest VSS body (FREEZE or AUTO_RECOVER with OpenVMM's
/// `Message2Ex`, 12,500 bytes) fits.
pub const MAX_IC_PAYLOAD_LEN: usize = 16 * 1024;

/// A version `major.minor` (two u16 values on the wire, major first). Displays as "3.0".
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Version {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
}

impl Version {
    /// Builds `major.minor`.
    pub const fn new(major: u16, minor: u16) -> Self {
        Self { major, minor }
    }

    /// The 4 wire bytes: major then minor, little-endian.
    pub fn to_bytes(self) -> [u8; 4] {
        let [a, b] = self.major.to_le_bytes();
        let [c, d] = self.minor.to_le_bytes();
        [a, b, c, d]
    }

    /// Reads the 4 wire bytes.
    pub fn from_bytes(bytes: [u8; 4]) -> Self {
        Self {
            major: u16::from_le_bytes([bytes[0], bytes[1]]),
            minor: u16::from_le_bytes([bytes[2], bytes[3]]),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A version as it sits on the wire (`struct ic_version`), 4 bytes.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct WireVersion {
    /// Major version.
    pub major: U16,
    /// Minor version.
    pub minor: U16,
}

const _: () = assert!(core::mem::size_of::<WireVersion>() == 4);

impl From<Version> for WireVersion {
    fn from(v: Version) -> Self {
        Self {
            major: U16::new(v.major),
            minor: U16::new(v.minor),
        }
    }
}

impl From<WireVersion> for Version {
    fn from(v: WireVersion) -> Self {
        Self {
            major: v.major.get(),
            minor: v.minor.get(),
        }
    }
}

/// Pipe header packet type. Open newtype.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PipeFlags(pub u32);

impl PipeFlags {
    /// A complete data message (what the host sends).
    pub const DATA: Self = Self(1);
    /// Partial message: defined, never written by the other side.
    pub const PARTIAL: Self = Self(2);
}

impl fmt::Debug for PipeFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::DATA => f.write_str("DATA"),
            Self::PARTIAL => f.write_str("PARTIAL"),
            Self(other) => write!(f, "PipeFlags({other:#x})"),
        }
    }
}

/// `struct vmbuspipe_hdr`, payload offset 0 (8 bytes).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct PipeHeader {
    /// Packet type, see [`PipeFlags`].
    pub flags: U32,
    /// Bytes that follow the pipe header (host-filled, echoed, never interpreted).
    pub msgsize: U32,
}

const _: () = assert!(core::mem::size_of::<PipeHeader>() == PIPE_HEADER_LEN);

impl PipeHeader {
    /// The packet type.
    pub fn kind(&self) -> PipeFlags {
        PipeFlags(self.flags.get())
    }
}

/// The IC message type (`icmsgtype`). Open newtype.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IcMsgType(pub u16);

impl IcMsgType {
    /// Version negotiation.
    pub const NEGOTIATE: Self = Self(0);
    /// Heartbeat IC.
    pub const HEARTBEAT: Self = Self(1);
    /// Key-value pair exchange IC.
    pub const KVP: Self = Self(2);
    /// Shutdown IC.
    pub const SHUTDOWN: Self = Self(3);
    /// Time synchronisation IC.
    pub const TIMESYNC: Self = Self(4);
    /// VSS (Backup) IC.
    pub const VSS: Self = Self(5);
    /// RDV.
    pub const RDV: Self = Self(6);
    /// File copy / guest interface IC.
    pub const FCOPY: Self = Self(7);
    /// VM session.
    pub const VM_SESSION: Self = Self(8);

    fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::NEGOTIATE => "NEGOTIATE",
            Self::HEARTBEAT => "HEARTBEAT",
            Self::KVP => "KVP",
            Self::SHUTDOWN => "SHUTDOWN",
            Self::TIMESYNC => "TIMESYNC",
            Self::VSS => "VSS",
            Self::RDV => "RDV",
            Self::FCOPY => "FCOPY",
            Self::VM_SESSION => "VM_SESSION",
            _ => return None,
        })
    }
}

impl fmt::Debug for IcMsgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "IcMsgType({})", self.0),
        }
    }
}

/// `icflags` bits. Open: reserved bits are kept and shown.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct IcFlags(pub u8);

impl IcFlags {
    /// Bit 0: part of a transaction.
    pub const TRANSACTION: Self = Self(1);
    /// Bit 1: a request (host to guest).
    pub const REQUEST: Self = Self(2);
    /// Bit 2: a response (guest to host).
    pub const RESPONSE: Self = Self(4);
    /// What every guest reply carries: TRANSACTION | RESPONSE = 0x05.
    pub const REPLY: Self = Self(0x05);
    /// What a host request normally carries: TRANSACTION | REQUEST = 0x03.
    pub const HOST_REQUEST: Self = Self(0x03);

    /// True if every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for IcFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl fmt::Debug for IcFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| -> fmt::Result {
            if !core::mem::take(&mut first) {
                f.write_str(" | ")?;
            }
            Ok(())
        };
        for (bit, name) in [(1u8, "TRANSACTION"), (2, "REQUEST"), (4, "RESPONSE")] {
            if self.0 & bit != 0 {
                sep(f)?;
                f.write_str(name)?;
            }
        }
        let rest = self.0 & !0x07;
        if rest != 0 {
            sep(f)?;
            write!(f, "{rest:#04x}")?;
        }
        if first {
            f.write_str("(empty)")?;
        }
        Ok(())
    }
}

/// `struct icmsg_hdr`, payload offset 8 (20 bytes).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct IcMsgHeader {
    /// Framework version (echoed, not interpreted).
    pub icverframe: WireVersion,
    /// Message type, see [`IcMsgType`].
    pub icmsgtype: U16,
    /// Message (service) version (echoed, not interpreted).
    pub icvermsg: WireVersion,
    /// Bytes of service data after this header.
    pub icmsgsize: U16,
    /// HRESULT written by the guest in its reply.
    pub status: U32,
    /// IC transaction id, echoed.
    pub ictransaction_id: u8,
    /// Flags, see [`IcFlags`].
    pub icflags: u8,
    /// Reserved, echoed.
    pub reserved: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<IcMsgHeader>() == IC_HEADER_LEN);

impl IcMsgHeader {
    /// The message type.
    pub fn msg_type(&self) -> IcMsgType {
        IcMsgType(self.icmsgtype.get())
    }

    /// The flags.
    pub fn flags(&self) -> IcFlags {
        IcFlags(self.icflags)
    }

    /// The status.
    pub fn status(&self) -> HvStatus {
        HvStatus(self.status.get())
    }
}

/// Why an IC payload was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IcError {
    /// Shorter than the pipe header plus the IC header.
    #[error("IC payload truncated: {len} bytes, need at least 28")]
    Truncated {
        /// Payload length.
        len: usize,
    },
    /// Longer than the receive buffer allows.
    #[error("IC payload of {len} bytes exceeds the {max}-byte limit")]
    Oversized {
        /// Payload length.
        len: usize,
        /// Limit ([`MAX_IC_PAYLOAD_LEN`]).
        max: usize,
    },
}

/// A parsed IC payload: typed headers plus the body, borrowing the caller's private copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcMessage<'a> {
    pipe: PipeHeader,
    header: IcMsgHeader,
    raw: &'a [u8],
}

impl<'a> IcMessage<'a> {
    /// Parses a whole IC payload (pipe header at offset 0). See the module docs for what is
    /// tolerated. Never panics.
    pub fn parse(payload: &'a [u8]) -> Result<Self, IcError> {
        if payload.len() > MAX_IC_PAYLOAD_LEN {
            return Err(IcError::Oversized {
                len: payload.len(),
                max: MAX_IC_PAYLOAD_LEN,
            });
        }
        let (pipe, rest) = PipeHeader::read_from_prefix(payload)
            .map_err(|_| IcError::Truncated { len: payload.len() })?;
        let (header, _) = IcMsgHeader::read_from_prefix(rest)
            .map_err(|_| IcError::Truncated { len: payload.len() })?;
        Ok(Self {
            pipe,
            header,
            raw: payload,
        })
    }

    /// The pipe header.
    pub fn pipe(&self) -> &PipeHeader {
        &self.pipe
    }

    /// The IC message header.
    pub fn header(&self) -> &IcMsgHeader {
        &self.header
    }

    /// The message type.
    pub fn msg_type(&self) -> IcMsgType {
        self.header.msg_type()
    }

    /// Every byte after the IC header (payload offset 28 to the end), trailing data included.
    pub fn body(&self) -> &'a [u8] {
        self.raw.get(IC_BODY_OFFSET..).unwrap_or_default()
    }

    /// The whole payload as received.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Always false: a parsed message holds at least the two headers.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// True if the pipe `msgsize` equals the bytes that follow the pipe header, give or take
    /// the up to 7 bytes of ring padding. A mismatch is tolerated; callers may log it.
    pub fn pipe_msgsize_matches(&self) -> bool {
        let after_pipe = self.raw.len() - PIPE_HEADER_LEN;
        let declared = self.pipe.msgsize.get() as usize;
        declared <= after_pipe && after_pipe - declared < 8
    }

    /// True if `icmsgsize` equals the bytes after the IC header, give or take the up to 7
    /// bytes of ring padding. A mismatch is tolerated (module docs); callers may log it.
    pub fn icmsgsize_matches(&self) -> bool {
        let declared = usize::from(self.header.icmsgsize.get());
        let arrived = self.body().len();
        declared <= arrived && arrived - declared < 8
    }

    /// Starts a reply: a private copy of this payload with `status` and `icflags` = 0x05 set.
    pub fn reply(&self, status: HvStatus) -> IcReply {
        IcReply::from_request(self, status)
    }
}

/// A reply under construction: a private, same-length copy of the request payload (§4.3).
#[derive(Clone, PartialEq, Eq)]
pub struct IcReply {
    bytes: Vec<u8>,
}

impl fmt::Debug for IcReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IcReply")
            .field("len", &self.bytes.len())
            .field("status", &self.status())
            .finish()
    }
}

impl IcReply {
    /// Copies `request` and sets `status` and `icflags` = TRANSACTION|RESPONSE.
    pub fn from_request(request: &IcMessage<'_>, status: HvStatus) -> Self {
        let mut reply = Self {
            bytes: request.raw.to_vec(),
        };
        reply.set_status(status);
        reply.bytes[ICFLAGS_OFFSET] = IcFlags::REPLY.0;
        reply
    }

    /// Sets `icmsg_hdr.status`.
    pub fn set_status(&mut self, status: HvStatus) {
        self.bytes[STATUS_OFFSET..STATUS_OFFSET + 4].copy_from_slice(&status.0.to_le_bytes());
    }

    /// The status currently set.
    pub fn status(&self) -> HvStatus {
        let mut word = [0u8; 4];
        word.copy_from_slice(&self.bytes[STATUS_OFFSET..STATUS_OFFSET + 4]);
        HvStatus(u32::from_le_bytes(word))
    }

    /// Sets `icmsg_hdr.icmsgsize` (negotiation replies declare 16).
    pub fn set_icmsgsize(&mut self, size: u16) {
        self.bytes[18..20].copy_from_slice(&size.to_le_bytes());
    }

    /// The body (payload offset 28 to the end), for operation-specific edits.
    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[IC_BODY_OFFSET..]
    }

    /// The reply payload.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The reply payload, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Writes the two IC headers of a host request into a new payload followed by `body`
/// (simulator side). `icmsgsize` = `body.len()`, pipe DATA with `msgsize` = 20 + body, flags
/// 0x03, status 0, IC transaction id 0.
pub fn build_host_message(
    msg_type: IcMsgType,
    framework: Version,
    message: Version,
    body: &[u8],
) -> Result<Vec<u8>, IcError> {
    let len = IC_BODY_OFFSET + body.len();
    if len > MAX_IC_PAYLOAD_LEN {
        return Err(IcError::Oversized {
            len,
            max: MAX_IC_PAYLOAD_LEN,
        });
    }
    let pipe = PipeHeader {
        flags: U32::new(PipeFlags::DATA.0),
        msgsize: U32::new((IC_HEADER_LEN + body.len()) as u32),
    };
    let header = IcMsgHeader {
        icverframe: framework.into(),
        icmsgtype: U16::new(msg_type.0),
        icvermsg: message.into(),
        icmsgsize: U16::new(body.len() as u16),
        status: U32::new(0),
        ictransaction_id: 0,
        icflags: IcFlags::HOST_REQUEST.0,
        reserved: [0; 2],
    };
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(pipe.as_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Worked example 11.4: a minimal FREEZE request.
    pub(crate) const FREEZE_11_4: [u8; 40] = [
        0x01, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x05, 0x00, 0x05,
        0x00, 0x00, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x05, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    #[test]
    fn parses_the_headers_of_example_11_4() {
        let m = IcMessage::parse(&FREEZE_11_4).unwrap();
        assert_eq!(m.pipe().kind(), PipeFlags::DATA);
        assert_eq!(m.pipe().msgsize.get(), 32);
        assert!(m.pipe_msgsize_matches());
        assert_eq!(Version::from(m.header().icverframe), Version::new(3, 0));
        assert_eq!(Version::from(m.header().icvermsg), Version::new(5, 0));
        assert_eq!(m.msg_type(), IcMsgType::VSS);
        assert_eq!(m.header().icmsgsize.get(), 12);
        assert_eq!(m.header().flags(), IcFlags::TRANSACTION | IcFlags::REQUEST);
        assert_eq!(m.header().status(), HvStatus::S_OK);
        assert_eq!(m.body().len(), 12);
        assert_eq!(m.body()[0], 5);
    }

    #[test]
    fn builds_example_11_4_from_its_fields() {
        let mut body = [0u8; 12];
        body[0] = 5;
        let bytes = build_host_message(
            IcMsgType::VSS,
            Version::new(3, 0),
            Version::new(5, 0),
            &body,
        )
        .unwrap();
        assert_eq!(bytes, FREEZE_11_4);
    }

    #[test]
    fn reply_sets_status_and_flags_and_echoes_the_rest() {
        let m = IcMessage::parse(&FREEZE_11_4).unwrap();
        let reply = m.reply(HvStatus::E_FAIL);
        let bytes = reply.as_bytes();
        assert_eq!(bytes.len(), FREEZE_11_4.len());
        for (i, (a, b)) in bytes.iter().zip(FREEZE_11_4.iter()).enumerate() {
            match i {
                20..=23 => {}
                25 => assert_eq!(*a, 0x05),
                _ => assert_eq!(a, b, "byte {i} changed"),
            }
        }
        assert_eq!(&bytes[20..24], &[0x05, 0x40, 0x00, 0x80]);
        assert_eq!(reply.status(), HvStatus::E_FAIL);
    }

    #[test]
    fn short_and_oversized_payloads_are_rejected() {
        assert_eq!(
            IcMessage::parse(&FREEZE_11_4[..27]),
            Err(IcError::Truncated { len: 27 })
        );
        assert_eq!(IcMessage::parse(&[]), Err(IcError::Truncated { len: 0 }));
        let big = vec![0u8; MAX_IC_PAYLOAD_LEN + 1];
        assert!(matches!(
            IcMessage::parse(&big),
            Err(IcError::Oversized { .. })
        ));
    }

    /// §4.2: `icmsgsize` is not trusted. Too large, too small and zero all parse, keep
    /// every byte that arrived, and are flagged for a log line.
    #[test]
    fn any_icmsgsize_parses_and_keeps_the_bytes_that_arrived() {
        for (icmsgsize, matches) in [
            (12u16, true),
            (13, false),
            (0xffff, false),
            (4, false),
            (0, false),
        ] {
            let mut bytes = FREEZE_11_4;
            bytes[18..20].copy_from_slice(&icmsgsize.to_le_bytes());
            let m = IcMessage::parse(&bytes).unwrap();
            assert_eq!(m.body().len(), 12, "icmsgsize {icmsgsize}");
            assert_eq!(m.icmsgsize_matches(), matches, "icmsgsize {icmsgsize}");
            assert_eq!(
                m.reply(HvStatus::S_OK).as_bytes()[18..20],
                icmsgsize.to_le_bytes()
            );
        }
        let mut padded = FREEZE_11_4.to_vec();
        padded.extend_from_slice(&[0; 4]);
        assert!(IcMessage::parse(&padded).unwrap().icmsgsize_matches());
    }

    #[test]
    fn padding_and_a_wrong_pipe_size_are_tolerated() {
        let mut padded = FREEZE_11_4.to_vec();
        padded.extend_from_slice(&[0; 4]);
        let m = IcMessage::parse(&padded).unwrap();
        assert!(m.pipe_msgsize_matches());
        assert_eq!(m.body().len(), 16);
        assert_eq!(m.reply(HvStatus::S_OK).as_bytes().len(), 44);

        let mut wrong_pipe = FREEZE_11_4;
        wrong_pipe[4] = 0xff;
        let m = IcMessage::parse(&wrong_pipe).unwrap();
        assert!(!m.pipe_msgsize_matches());
        assert_eq!(m.reply(HvStatus::S_OK).as_bytes()[4], 0xff);
    }

    #[test]
    fn open_newtypes_debug_by_name_or_value() {
        assert_eq!(format!("{:?}", IcMsgType::VSS), "VSS");
        assert_eq!(format!("{:?}", IcMsgType(42)), "IcMsgType(42)");
        assert_eq!(format!("{:?}", IcFlags::REPLY), "TRANSACTION | RESPONSE");
        assert_eq!(format!("{:?}", IcFlags(0x81)), "TRANSACTION | 0x80");
        assert_eq!(format!("{:?}", IcFlags(0)), "(empty)");
        assert_eq!(format!("{:?}", PipeFlags(9)), "PipeFlags(0x9)");
        assert_eq!(Version::new(3, 0).to_string(), "3.0");
        assert_eq!(Version::new(3, 0).to_bytes(), [3, 0, 0, 0]);
    }
}
