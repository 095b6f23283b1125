//! The messages a daemon sends its guardian process (see the daemon's `guardian` module),
//! one per `SOCK_SEQPACKET` datagram, so no framing is needed.
//!
//! # Format
//!
//! Nine bytes: a tag, then a little-endian `u64` argument.
//!
//! | tag | argument | meaning | ancillary data |
//! |-----|----------|---------|----------------|
//! | `A` | `dev` (major << 32 \| minor) | hold this filesystem: FIFREEZE is about to be called on it | one fd (SCM_RIGHTS) |
//! | `C` | `dev` | its FIFREEZE returned success: frozen by us (sent by the thread that made the call) | none |
//! | `D` | `dev` | let go of it: thawed, or never ours | none |
//! | `T` | milliseconds from now, `u64::MAX` for none | thaw everything held at this deadline | none |
//! | `H` | 0 | heartbeat: the daemon's loop is alive | none |
//!
//! Anything else (wrong length, unknown tag) decodes to `None`; the guardian ignores it.
//!
//! One more datagram has a length of its own: `L` followed by up to [`MAX_LOG_LINE`]
//! bytes, a log line the daemon held while frozen and hands over as it exits frozen (its
//! last words); the guardian writes them out once it has thawed ([`encode_log_line`],
//! [`decode_log_line`]).
//!
//! [`decode`] and [`decode_log_line`] never panic (fuzzed by
//! `fuzz/fuzz_targets/guardian_msg.rs`).

use hv_vss_sys::fs::DevNum;

/// Length of every message.
pub const MESSAGE_LEN: usize = 9;

/// Longest log line an `L` datagram carries; longer lines are cut.
pub const MAX_LOG_LINE: usize = 2048;

/// The `L` datagram for `line` (cut at [`MAX_LOG_LINE`] bytes).
pub fn encode_log_line(line: &[u8]) -> Vec<u8> {
    let line = &line[..line.len().min(MAX_LOG_LINE)];
    let mut out = Vec::with_capacity(line.len() + 1);
    out.push(b'L');
    out.extend_from_slice(line);
    out
}

/// The log line in an `L` datagram, or `None` if `bytes` is not one.
pub fn decode_log_line(bytes: &[u8]) -> Option<&[u8]> {
    match bytes.split_first() {
        Some((b'L', line)) if line.len() <= MAX_LOG_LINE => Some(line),
        _ => None,
    }
}

/// One message from the daemon to its guardian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardianMsg {
    /// Hold the fd that comes with this message: FIFREEZE is about to be called on `dev`.
    Arm(DevNum),
    /// The FIFREEZE on `dev` returned success: it is frozen, by us. Until this comes, an
    /// armed filesystem's FIFREEZE may still be in flight.
    Confirm(DevNum),
    /// `dev` is not ours any more.
    Disarm(DevNum),
    /// Thaw everything held once this many milliseconds have passed (`None`: no deadline).
    Deadline(Option<u64>),
    /// The daemon's loop is alive.
    Heartbeat,
}

fn dev_to_u64(dev: DevNum) -> u64 {
    (u64::from(dev.major) << 32) | u64::from(dev.minor)
}

fn dev_from_u64(v: u64) -> DevNum {
    DevNum {
        major: (v >> 32) as u32,
        minor: v as u32,
    }
}

/// The bytes of `msg`.
pub fn encode(msg: GuardianMsg) -> [u8; MESSAGE_LEN] {
    let (tag, arg) = match msg {
        GuardianMsg::Arm(dev) => (b'A', dev_to_u64(dev)),
        GuardianMsg::Confirm(dev) => (b'C', dev_to_u64(dev)),
        GuardianMsg::Disarm(dev) => (b'D', dev_to_u64(dev)),
        GuardianMsg::Deadline(ms) => (b'T', ms.unwrap_or(u64::MAX)),
        GuardianMsg::Heartbeat => (b'H', 0),
    };
    let mut out = [0u8; MESSAGE_LEN];
    out[0] = tag;
    out[1..].copy_from_slice(&arg.to_le_bytes());
    out
}

/// The message in `bytes`, or `None` if it is not one.
pub fn decode(bytes: &[u8]) -> Option<GuardianMsg> {
    let (&tag, rest) = bytes.split_first()?;
    let arg = u64::from_le_bytes(rest.try_into().ok()?);
    match tag {
        b'A' => Some(GuardianMsg::Arm(dev_from_u64(arg))),
        b'C' => Some(GuardianMsg::Confirm(dev_from_u64(arg))),
        b'D' => Some(GuardianMsg::Disarm(dev_from_u64(arg))),
        b'T' => Some(GuardianMsg::Deadline((arg != u64::MAX).then_some(arg))),
        b'H' if arg == 0 => Some(GuardianMsg::Heartbeat),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_message_round_trips() {
        let dev = DevNum {
            major: 259,
            minor: 7,
        };
        for msg in [
            GuardianMsg::Arm(dev),
            GuardianMsg::Confirm(dev),
            GuardianMsg::Disarm(dev),
            GuardianMsg::Deadline(Some(65_000)),
            GuardianMsg::Deadline(None),
            GuardianMsg::Heartbeat,
        ] {
            assert_eq!(decode(&encode(msg)), Some(msg));
        }
    }

    #[test]
    fn wrong_lengths_and_tags_are_not_messages() {
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"H"), None);
        assert_eq!(decode(&[b'H', 1, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode(&[b'H'; 10]), None);
        assert_eq!(decode(&[b'X', 0, 0, 0, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn log_lines_round_trip_and_are_cut_at_the_limit() {
        assert_eq!(
            decode_log_line(&encode_log_line(b"a line\n")),
            Some(&b"a line\n"[..])
        );
        let long = vec![b'x'; MAX_LOG_LINE + 10];
        assert_eq!(
            decode_log_line(&encode_log_line(&long)).map(<[u8]>::len),
            Some(MAX_LOG_LINE)
        );
        assert_eq!(decode_log_line(b""), None);
        assert_eq!(decode_log_line(&[b'H'; 9]), None);
        // A nine-byte log line is not a fixed message.
        assert_eq!(decode(&encode_log_line(b"12345678")), None);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
            let _ = decode(&bytes);
        }
    }
}
