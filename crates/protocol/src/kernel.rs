//! Linux `/dev/vmbus/hv_vss` daemon ABI (drop-in mode), both ends.
//!
//! Kernel contract (drivers/hv/hv_snapshot.c, hv_utils_transport.c; wire-protocol.md §8):
//! every message is the 12-byte `hv_vss_msg` except the kernel's 4-byte handshake reply.
//! The daemon registers with REGISTER1 (operation 129, all else 0) and reads back exactly
//! 4 bytes: the kernel's protocol version, 129 today. Like the stock daemon
//! (tools/hv/hv_vss_daemon.c, which only records it), hv-vss accepts any value there and
//! leaves it to the caller to log one that is not 129 (wire §8.3, R12): the kernel is READY
//! once those 4 bytes are read, whatever they say. Requests from the kernel are zeroed except `operation` (FREEZE,
//! THAW or HOT_BACKUP). The daemon's reply carries its status as a 32-bit integer in bytes
//! 0–3 (the `error` member of a union with `operation`); the kernel reads only those.
//!
//! The kernel side here (for the emulator) classifies a daemon write the way
//! `vss_on_msg` does: first by the operation byte (128/129 are registrations), otherwise as
//! a reply whose status is bytes 0–3.

use zerocopy::FromBytes;

use crate::status::HvStatus;
use crate::vss::{VSS_MSG_LEN, VssMsg, VssOperation};

/// Length of every message but the handshake reply.
pub const KERNEL_MSG_LEN: usize = VSS_MSG_LEN;
/// Length of the kernel's handshake reply.
pub const HANDSHAKE_REPLY_LEN: usize = 4;
/// The kernel's protocol version as today's kernels return it in the handshake (equal to
/// REGISTER1). Other values are accepted ([`parse_handshake_reply`]).
pub const KERNEL_PROTOCOL_VERSION: u32 = 129;

/// A daemon-ABI message that does not have the expected shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KernelMsgError {
    /// The message has the wrong length.
    #[error("hv_vss message of {len} bytes, expected {expected}")]
    WrongLength {
        /// Bytes received.
        len: usize,
        /// Bytes expected.
        expected: usize,
    },
}

fn check_len(bytes: &[u8], expected: usize) -> Result<(), KernelMsgError> {
    if bytes.len() == expected {
        Ok(())
    } else {
        Err(KernelMsgError::WrongLength {
            len: bytes.len(),
            expected,
        })
    }
}

fn word0(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

// ---- daemon side ----

/// The 12-byte REGISTER1 message a daemon writes first.
pub fn register1_message() -> [u8; KERNEL_MSG_LEN] {
    build_request(VssOperation::REGISTER1)
}

/// Reads the kernel's handshake reply: exactly 4 bytes, any value (the kernel's protocol
/// version; 129 today). Only the length is checked.
pub fn parse_handshake_reply(bytes: &[u8]) -> Result<u32, KernelMsgError> {
    check_len(bytes, HANDSHAKE_REPLY_LEN)?;
    Ok(word0(bytes))
}

/// A request the kernel forwarded to the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelRequest {
    /// The operation (FREEZE, THAW or HOT_BACKUP from a real kernel; anything from a faulty
    /// one).
    pub op: VssOperation,
    /// The `flags` word (0 from a real kernel).
    pub flags: u32,
}

/// Parses a 12-byte request read from the device.
pub fn parse_request(bytes: &[u8]) -> Result<KernelRequest, KernelMsgError> {
    check_len(bytes, KERNEL_MSG_LEN)?;
    let msg = VssMsg::read_from_bytes(bytes).map_err(|_| KernelMsgError::WrongLength {
        len: bytes.len(),
        expected: KERNEL_MSG_LEN,
    })?;
    Ok(KernelRequest {
        op: msg.op(),
        flags: msg.flags.get(),
    })
}

/// The daemon's 12-byte reply: `status` in bytes 0–3, the rest 0.
pub fn build_reply(status: HvStatus) -> [u8; KERNEL_MSG_LEN] {
    let mut out = [0u8; KERNEL_MSG_LEN];
    out[..4].copy_from_slice(&status.0.to_le_bytes());
    out
}

// ---- kernel side (emulator) ----

/// The 12-byte request the kernel sends: zeroed except `operation`.
pub fn build_request(op: VssOperation) -> [u8; KERNEL_MSG_LEN] {
    let mut out = [0u8; KERNEL_MSG_LEN];
    out[0] = op.0;
    out
}

/// The kernel's 4-byte handshake reply carrying `version` (129 from today's kernels).
pub fn build_handshake_reply(version: u32) -> [u8; HANDSHAKE_REPLY_LEN] {
    version.to_le_bytes()
}

/// A daemon write, as the kernel classifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DaemonMessage {
    /// Legacy REGISTER (128): no reply; the device never becomes READY.
    Register,
    /// REGISTER1 (129): answered with the 4-byte version.
    Register1,
    /// A reply to the pending request, carrying the daemon's status.
    Reply(HvStatus),
}

/// Classifies a daemon write (operation byte first, as `vss_on_msg` does).
pub fn parse_daemon_message(bytes: &[u8]) -> Result<DaemonMessage, KernelMsgError> {
    check_len(bytes, KERNEL_MSG_LEN)?;
    Ok(match VssOperation(bytes[0]) {
        VssOperation::REGISTER => DaemonMessage::Register,
        VssOperation::REGISTER1 => DaemonMessage::Register1,
        _ => DaemonMessage::Reply(HvStatus(word0(bytes))),
    })
}

/// Reads the status of a daemon reply (bytes 0–3 of a 12-byte message).
pub fn parse_daemon_reply(bytes: &[u8]) -> Result<HvStatus, KernelMsgError> {
    check_len(bytes, KERNEL_MSG_LEN)?;
    Ok(HvStatus(word0(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_of_example_11_7() {
        assert_eq!(register1_message(), [0x81, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(build_handshake_reply(129), [0x81, 0, 0, 0]);
        assert_eq!(parse_handshake_reply(&[0x81, 0, 0, 0]), Ok(129));
        let freeze = [5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(build_request(VssOperation::FREEZE), freeze);
        assert_eq!(
            parse_request(&freeze),
            Ok(KernelRequest {
                op: VssOperation::FREEZE,
                flags: 0
            })
        );
        let hot = [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(build_request(VssOperation::HOT_BACKUP), hot);
        assert_eq!(parse_request(&hot).unwrap().op, VssOperation::HOT_BACKUP);
        let ok = [0u8; 12];
        let fail = [0x05, 0x40, 0x00, 0x80, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(build_reply(HvStatus::S_OK), ok);
        assert_eq!(build_reply(HvStatus::E_FAIL), fail);
        assert_eq!(parse_daemon_reply(&ok), Ok(HvStatus::S_OK));
        assert_eq!(parse_daemon_reply(&fail), Ok(HvStatus::E_FAIL));
        assert_eq!(
            parse_daemon_message(&fail),
            Ok(DaemonMessage::Reply(HvStatus::E_FAIL))
        );
        assert_eq!(
            parse_daemon_message(&register1_message()),
            Ok(DaemonMessage::Register1)
        );
        let mut legacy = [0u8; 12];
        legacy[0] = 128;
        assert_eq!(parse_daemon_message(&legacy), Ok(DaemonMessage::Register));
    }

    /// Wire §8.3: the stock daemon accepts any 4-byte reply; so does hv-vss.
    #[test]
    fn any_handshake_version_is_accepted() {
        assert_eq!(parse_handshake_reply(&[0x81, 0, 0, 0]), Ok(129));
        assert_eq!(parse_handshake_reply(&[0x82, 0, 0, 0]), Ok(130));
        assert_eq!(parse_handshake_reply(&[0x80, 0, 0, 0]), Ok(128));
        assert_eq!(parse_handshake_reply(&build_handshake_reply(130)), Ok(130));
    }

    #[test]
    fn wrong_lengths_are_errors() {
        assert_eq!(
            parse_handshake_reply(&[0x81, 0, 0, 0, 0]),
            Err(KernelMsgError::WrongLength {
                len: 5,
                expected: 4
            })
        );
        assert_eq!(
            parse_request(&[5, 0, 0, 0]),
            Err(KernelMsgError::WrongLength {
                len: 4,
                expected: 12
            })
        );
        assert!(parse_request(&[0; 13]).is_err());
        assert!(parse_daemon_message(&[]).is_err());
        assert!(parse_daemon_reply(&[0; 11]).is_err());
    }
}
