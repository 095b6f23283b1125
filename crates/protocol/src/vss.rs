//! The VSS message (`icmsgtype` 5): operations, the 12-byte `hv_vss_msg`, reply builders and
//! the UIO-mode routing table.
//!
//! Kernel contract (`struct hv_vss_msg`, include/uapi/linux/hyperv.h; wire-protocol.md §6):
//! the body at payload offset 28 starts with the 12-byte message: `operation` (u8), 7
//! reserved bytes, `flags` (u32). FREEZE and AUTO_RECOVER may carry extended bodies of up to
//! 12,500 bytes (OpenVMM's `Message2`, 6,260 bytes, and `Message2Ex`, 12,500 bytes, wire
//! §6.3); those trailing bytes are kept and echoed, never interpreted. Replies follow
//! §6.4: HOT_BACKUP replies carry `flags` = [`VSS_HBU_NO_AUTO_RECOVERY`] on success and on
//! failure (R7), GET_DM_INFO replies carry `flags` 0, everything else is echoed.

use core::fmt;

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::ic::{IC_BODY_OFFSET, IcMessage, IcMsgType, IcReply};
use crate::status::HvStatus;

/// Size of `struct hv_vss_msg`.
pub const VSS_MSG_LEN: usize = 12;
/// Smallest VSS payload: the two IC headers plus the 12-byte message (R10).
pub const MIN_VSS_PAYLOAD_LEN: usize = IC_BODY_OFFSET + VSS_MSG_LEN;
/// `VSS_HBU_NO_AUTO_RECOVERY`: a value written into `flags` of a HOT_BACKUP reply.
pub const VSS_HBU_NO_AUTO_RECOVERY: u32 = 5;
/// Largest FREEZE (or AUTO_RECOVER) body a host is known to send: OpenVMM's `Message2Ex`,
/// the 12-byte message's place taken by backup type and flags, then two 260-entry LUN
/// tables (wire §6.3).
pub const MAX_FREEZE_BODY_LEN: usize = 12_500;
/// OpenVMM's `Message2`: one 260-entry LUN table (6,260 bytes).
pub const MESSAGE2_BODY_LEN: usize = 6_260;
/// Offset of `flags` within the message.
const FLAGS_OFFSET: usize = 8;

/// A VSS operation code. Open newtype: any byte the host sends is representable.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VssOperation(pub u8);

impl VssOperation {
    /// Create a shadow copy (answered locally).
    pub const CREATE: Self = Self(0);
    /// Delete a shadow copy (answered locally).
    pub const DELETE: Self = Self(1);
    /// Can the guest take a live backup? ("CHECK_HOT_BACKUP" in OpenVMM.)
    pub const HOT_BACKUP: Self = Self(2);
    /// Disk-management info (answered locally, flags 0).
    pub const GET_DM_INFO: Self = Self(3);
    /// Backup complete ("BACKUP_COMPLETE" in OpenVMM).
    pub const BU_COMPLETE: Self = Self(4);
    /// Freeze (message version 5.0 and later).
    pub const FREEZE: Self = Self(5);
    /// Thaw (message version 5.0 and later).
    pub const THAW: Self = Self(6);
    /// Auto-recover (message version 5.0 and later).
    pub const AUTO_RECOVER: Self = Self(7);
    /// Guest cluster information (message version 6.0; never sent to a 5.0 guest).
    pub const QUERY_GUEST_CLUSTER_INFORMATION: Self = Self(8);
    /// Daemon ABI only: legacy registration (no reply from current kernels).
    pub const REGISTER: Self = Self(128);
    /// Daemon ABI only: registration answered with the 4-byte version 129.
    pub const REGISTER1: Self = Self(129);

    /// The name of a known code.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::CREATE => "CREATE",
            Self::DELETE => "DELETE",
            Self::HOT_BACKUP => "HOT_BACKUP",
            Self::GET_DM_INFO => "GET_DM_INFO",
            Self::BU_COMPLETE => "BU_COMPLETE",
            Self::FREEZE => "FREEZE",
            Self::THAW => "THAW",
            Self::AUTO_RECOVER => "AUTO_RECOVER",
            Self::QUERY_GUEST_CLUSTER_INFORMATION => "QUERY_GUEST_CLUSTER_INFORMATION",
            Self::REGISTER => "REGISTER",
            Self::REGISTER1 => "REGISTER1",
            _ => return None,
        })
    }
}

impl fmt::Debug for VssOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "VssOperation({})", self.0),
        }
    }
}

impl fmt::Display for VssOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// `struct hv_vss_msg`, 12 bytes. In the daemon ABI bytes 0–3 are also `int error`
/// (see [`crate::kernel`]).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct VssMsg {
    /// Operation code, see [`VssOperation`].
    pub operation: u8,
    /// Reserved.
    pub reserved: [u8; 7],
    /// "Check feature" flags for HOT_BACKUP, "dm info" flags for GET_DM_INFO.
    pub flags: U32,
}

const _: () = assert!(core::mem::size_of::<VssMsg>() == VSS_MSG_LEN);

impl VssMsg {
    /// A message holding only `op`.
    pub fn new(op: VssOperation) -> Self {
        Self {
            operation: op.0,
            ..Self::default()
        }
    }

    /// The operation.
    pub fn op(&self) -> VssOperation {
        VssOperation(self.operation)
    }
}

/// Why an IC message is not a usable VSS request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VssError {
    /// `icmsgtype` is not VSS.
    #[error("expected a VSS message, got {0:?}")]
    NotVss(IcMsgType),
    /// Payload under 40 bytes: no room for the 12-byte message.
    #[error("VSS payload too short: {len} bytes, need at least 40")]
    TooShort {
        /// Payload length.
        len: usize,
    },
}

/// A parsed VSS request: the IC message, the 12-byte message, and any trailing bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VssRequest<'a> {
    ic: IcMessage<'a>,
    msg: VssMsg,
}

impl<'a> VssRequest<'a> {
    /// Reads the VSS message of `ic`. Never panics.
    pub fn parse(ic: IcMessage<'a>) -> Result<Self, VssError> {
        if ic.msg_type() != IcMsgType::VSS {
            return Err(VssError::NotVss(ic.msg_type()));
        }
        let (msg, _) = VssMsg::read_from_prefix(ic.body())
            .map_err(|_| VssError::TooShort { len: ic.len() })?;
        Ok(Self { ic, msg })
    }

    /// The IC message.
    pub fn ic(&self) -> &IcMessage<'a> {
        &self.ic
    }

    /// The operation.
    pub fn op(&self) -> VssOperation {
        self.msg.op()
    }

    /// The `flags` word as received.
    pub fn flags(&self) -> u32 {
        self.msg.flags.get()
    }

    /// The 12-byte message.
    pub fn msg(&self) -> &VssMsg {
        &self.msg
    }

    /// Bytes after the 12-byte message (FREEZE LUN data, AUTO_RECOVER data, ring padding).
    pub fn trailing(&self) -> &'a [u8] {
        self.ic.body().get(VSS_MSG_LEN..).unwrap_or_default()
    }

    /// The reply of §6.4 with `status`: HOT_BACKUP gets `flags` = 5 whatever the status,
    /// GET_DM_INFO gets `flags` 0, everything else is echoed.
    pub fn reply(&self, status: HvStatus) -> IcReply {
        let mut reply = self.ic.reply(status);
        let flags = match self.op() {
            VssOperation::HOT_BACKUP => Some(VSS_HBU_NO_AUTO_RECOVERY),
            VssOperation::GET_DM_INFO => Some(0),
            _ => None,
        };
        if let Some(flags) = flags {
            reply.body_mut()[FLAGS_OFFSET..FLAGS_OFFSET + 4].copy_from_slice(&flags.to_le_bytes());
        }
        reply
    }
}

/// What the coordinator is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CoordinatorOp {
    /// HOT_BACKUP: can we take a backup?
    Check,
    /// FREEZE.
    Freeze,
    /// THAW.
    Thaw,
}

/// Why a request is answered without the coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LocalAnswer {
    /// GET_DM_INFO: S_OK, flags 0.
    DmInfo,
    /// CREATE, DELETE, AUTO_RECOVER: S_OK, nothing changes.
    Acknowledge,
    /// BU_COMPLETE: S_OK; closes the backup report.
    BackupComplete,
    /// An unknown operation code: E_FAIL and a rate-limited log line (R5).
    UnknownOperation,
}

/// Why a message gets no reply at all (R10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoReplyReason {
    /// `icmsgtype` is neither NEGOTIATE nor VSS.
    UnexpectedType(IcMsgType),
    /// A VSS payload under 40 bytes.
    TooShort {
        /// Payload length.
        len: usize,
    },
}

/// What UIO mode does with one IC message (§6.4 "hv-vss in UIO mode").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UioRoute<'a> {
    /// `icmsgtype` 0: run [`crate::negotiate`] and send its reply.
    Negotiate,
    /// Answer at once with `status`; build the reply with [`VssRequest::reply`].
    AnswerLocally {
        /// The request.
        request: VssRequest<'a>,
        /// S_OK or E_FAIL.
        status: HvStatus,
        /// Which row of the table.
        why: LocalAnswer,
    },
    /// Hand to the coordinator, which answers later with [`VssRequest::reply`].
    Coordinator {
        /// The request.
        request: VssRequest<'a>,
        /// The coordinator operation.
        op: CoordinatorOp,
    },
    /// Send nothing; log (rate-limited).
    NoReply(NoReplyReason),
}

/// Routes one parsed IC message per §6.4 and R5/R10. Pure: no I/O.
pub fn route_uio(ic: IcMessage<'_>) -> UioRoute<'_> {
    let request = match VssRequest::parse(ic) {
        Ok(request) => request,
        Err(VssError::NotVss(IcMsgType::NEGOTIATE)) => return UioRoute::Negotiate,
        Err(VssError::NotVss(other)) => {
            return UioRoute::NoReply(NoReplyReason::UnexpectedType(other));
        }
        Err(VssError::TooShort { len }) => {
            return UioRoute::NoReply(NoReplyReason::TooShort { len });
        }
    };
    let coordinator = |op| UioRoute::Coordinator { request, op };
    let local = |status, why| UioRoute::AnswerLocally {
        request,
        status,
        why,
    };
    match request.op() {
        VssOperation::HOT_BACKUP => coordinator(CoordinatorOp::Check),
        VssOperation::FREEZE => coordinator(CoordinatorOp::Freeze),
        VssOperation::THAW => coordinator(CoordinatorOp::Thaw),
        VssOperation::GET_DM_INFO => local(HvStatus::S_OK, LocalAnswer::DmInfo),
        VssOperation::BU_COMPLETE => local(HvStatus::S_OK, LocalAnswer::BackupComplete),
        VssOperation::CREATE | VssOperation::DELETE | VssOperation::AUTO_RECOVER => {
            local(HvStatus::S_OK, LocalAnswer::Acknowledge)
        }
        _ => local(HvStatus::E_FAIL, LocalAnswer::UnknownOperation),
    }
}

/// Host side (simulator): a VSS request payload for `op` with message `flags` and trailing
/// body bytes, framework 3.0 and message 5.0 in the header, as in worked example 11.4.
pub fn build_request(
    op: VssOperation,
    flags: u32,
    trailing: &[u8],
) -> Result<Vec<u8>, crate::ic::IcError> {
    let mut msg = VssMsg::new(op);
    msg.flags = U32::new(flags);
    let mut body = msg.as_bytes().to_vec();
    body.extend_from_slice(trailing);
    crate::ic::build_host_message(
        IcMsgType::VSS,
        crate::ic::Version::new(3, 0),
        crate::ic::Version::new(5, 0),
        &body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const FREEZE_11_4: [u8; 40] = [
        0x01, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x05, 0x00, 0x05,
        0x00, 0x00, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x05, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    const FREEZE_OK_11_5: [u8; 40] = [
        0x01, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x05, 0x00, 0x05,
        0x00, 0x00, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x05, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    const HOT_BACKUP_OK_11_6: [u8; 40] = [
        0x01, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x05, 0x00, 0x05,
        0x00, 0x00, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x02, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00,
    ];

    fn request(bytes: &[u8]) -> VssRequest<'_> {
        VssRequest::parse(IcMessage::parse(bytes).unwrap()).unwrap()
    }

    #[test]
    fn example_11_4_builds_and_parses() {
        assert_eq!(
            build_request(VssOperation::FREEZE, 0, &[]).unwrap(),
            FREEZE_11_4
        );
        let r = request(&FREEZE_11_4);
        assert_eq!(r.op(), VssOperation::FREEZE);
        assert_eq!(r.flags(), 0);
        assert!(r.trailing().is_empty());
    }

    #[test]
    fn example_11_5_freeze_replies() {
        let r = request(&FREEZE_11_4);
        assert_eq!(r.reply(HvStatus::S_OK).as_bytes(), FREEZE_OK_11_5);
        let mut fail = FREEZE_OK_11_5;
        fail[0x14..0x18].copy_from_slice(&[0x05, 0x40, 0x00, 0x80]);
        assert_eq!(r.reply(HvStatus::E_FAIL).as_bytes(), fail);
    }

    #[test]
    fn example_11_6_hot_backup_reply_has_flags_5_on_success_and_failure() {
        let mut req = FREEZE_11_4;
        req[0x1c] = 2;
        let r = request(&req);
        assert_eq!(r.reply(HvStatus::S_OK).as_bytes(), HOT_BACKUP_OK_11_6);
        let mut veto = HOT_BACKUP_OK_11_6;
        veto[0x14..0x18].copy_from_slice(&[0x05, 0x40, 0x00, 0x80]);
        assert_eq!(r.reply(HvStatus::E_FAIL).as_bytes(), veto);
    }

    #[test]
    fn get_dm_info_reply_clears_flags_and_others_echo_them() {
        let dm = build_request(VssOperation::GET_DM_INFO, 0xdead_beef, &[]).unwrap();
        let reply = request(&dm).reply(HvStatus::S_OK);
        assert_eq!(&reply.as_bytes()[36..40], &[0, 0, 0, 0]);
        let thaw = build_request(VssOperation::THAW, 0xdead_beef, &[]).unwrap();
        let reply = request(&thaw).reply(HvStatus::S_OK);
        assert_eq!(&reply.as_bytes()[36..40], &0xdead_beef_u32.to_le_bytes());
    }

    #[test]
    fn freeze_lun_data_is_kept_and_echoed() {
        let lun: Vec<u8> = (0..MAX_FREEZE_BODY_LEN - VSS_MSG_LEN)
            .map(|i| i as u8)
            .collect();
        let bytes = build_request(VssOperation::FREEZE, 0, &lun).unwrap();
        let r = request(&bytes);
        assert_eq!(r.trailing(), &lun[..]);
        let reply = r.reply(HvStatus::S_OK);
        assert_eq!(reply.as_bytes().len(), bytes.len());
        assert_eq!(&reply.as_bytes()[MIN_VSS_PAYLOAD_LEN..], &lun[..]);
        let auto = vec![7u8; MESSAGE2_BODY_LEN - VSS_MSG_LEN];
        let bytes = build_request(VssOperation::AUTO_RECOVER, 0, &auto).unwrap();
        assert_eq!(request(&bytes).trailing().len(), auto.len());
    }

    #[test]
    fn routing_follows_the_table() {
        let route = |op: u8| {
            let bytes = build_request(VssOperation(op), 0, &[]).unwrap();
            match route_uio(IcMessage::parse(&bytes).unwrap()) {
                UioRoute::Coordinator { op, .. } => format!("coord {op:?}"),
                UioRoute::AnswerLocally { status, why, .. } => format!("local {status:?} {why:?}"),
                other => format!("{other:?}"),
            }
        };
        assert_eq!(route(2), "coord Check");
        assert_eq!(route(5), "coord Freeze");
        assert_eq!(route(6), "coord Thaw");
        assert_eq!(route(3), "local S_OK DmInfo");
        assert_eq!(route(0), "local S_OK Acknowledge");
        assert_eq!(route(1), "local S_OK Acknowledge");
        assert_eq!(route(7), "local S_OK Acknowledge");
        assert_eq!(route(4), "local S_OK BackupComplete");
        assert_eq!(route(8), "local E_FAIL UnknownOperation");
        assert_eq!(route(129), "local E_FAIL UnknownOperation");
    }

    #[test]
    fn non_vss_and_short_payloads_get_no_reply() {
        let mut kvp = FREEZE_11_4;
        kvp[0x0c] = 2;
        assert_eq!(
            route_uio(IcMessage::parse(&kvp).unwrap()),
            UioRoute::NoReply(NoReplyReason::UnexpectedType(IcMsgType::KVP))
        );
        let mut short = FREEZE_11_4[..36].to_vec();
        short[18] = 8;
        assert_eq!(
            route_uio(IcMessage::parse(&short).unwrap()),
            UioRoute::NoReply(NoReplyReason::TooShort { len: 36 })
        );
        let negotiate = crate::negotiate::build_offer(
            &[crate::ic::Version::new(3, 0)],
            &[crate::ic::Version::new(5, 0)],
        )
        .unwrap();
        assert_eq!(
            route_uio(IcMessage::parse(&negotiate).unwrap()),
            UioRoute::Negotiate
        );
    }

    #[test]
    fn operation_debug_prints_name_or_value() {
        assert_eq!(format!("{:?}", VssOperation::HOT_BACKUP), "HOT_BACKUP");
        assert_eq!(format!("{:?}", VssOperation::REGISTER1), "REGISTER1");
        assert_eq!(format!("{:?}", VssOperation(42)), "VssOperation(42)");
    }
}
