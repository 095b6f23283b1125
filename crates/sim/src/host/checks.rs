//! How the simulated host checks each reply against its request (wire-protocol.md §4.3,
//! R4, R7, R8): descriptor, padded length, the echoed bytes, icflags, status, and the
//! NEGOTIATE answer's version choice.

use super::*;

pub(super) fn padded(len: usize) -> usize {
    len.div_ceil(8) * 8
}

pub(super) fn check_descriptor_and_length(
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

pub(super) fn check_echo(
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

pub(super) fn check_common(reply: &[u8]) -> Result<HvStatus, ReplyViolation> {
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

pub(super) fn word(bytes: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(s) = bytes.get(at..at + 4) {
        w.copy_from_slice(s);
    }
    u32::from_le_bytes(w)
}

/// Checks a VSS reply against its request (§4.3, §6.4). Returns op, status, flags.
pub(super) fn check_vss_reply(
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
pub(super) fn check_negotiate_reply(
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
