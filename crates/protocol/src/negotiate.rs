//! Version negotiation (`icmsgtype` 0), guest and host sides.
//!
//! Kernel contract (`struct icmsg_negotiate`, include/linux/hyperv.h; wire-protocol.md §5):
//! the body holds `icframe_vercnt`, `icmsg_vercnt`, 4 reserved bytes, then the framework
//! versions followed by the message versions, 4 bytes each. The guest answers by editing a
//! copy: both counts 1, entry \[0\] = chosen framework, entry \[1\] = chosen message version,
//! `icmsgsize` 16, S_OK; or, when nothing fits, both counts 0, `icmsgsize` 16 and HV_E_FAIL
//! (R3). The reply has the request's length (§4.3); entries past \[1\] keep their bytes.
//!
//! Choice rule (hv-vss, like Linux): walk the guest's own list in order and take the first
//! entry the host offers. hv-vss offers framework [3.0] and VSS message [5.0].
//!
//! Every NEGOTIATE that holds the IC header and the two counts (36 bytes) is answered, as
//! Linux and FreeBSD answer every one (§5.2 step 4, R3): a malformed offer (a count of 0 or
//! above 100, versions past the payload) gets the same failure reply as an offer with no
//! common version ([`NegotiateOutcome::Failed`] with [`NegotiateFailure::Malformed`]). Only
//! a payload too short for the counts, or one that is not a NEGOTIATE, is an error: there is
//! nowhere to put the counts. A host that hears nothing loops on NEGOTIATE (WS2012 does).

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::ic::{self, IC_BODY_OFFSET, IcError, IcMessage, IcMsgType, IcReply};
use crate::status::HvStatus;

pub use crate::ic::Version;

/// The framework versions hv-vss accepts, in order of preference.
pub const GUEST_FRAMEWORK_VERSIONS: [Version; 1] = [Version::new(3, 0)];
/// The VSS message versions hv-vss accepts, in order of preference.
pub const GUEST_VSS_VERSIONS: [Version; 1] = [Version::new(5, 0)];
/// Largest count of either kind accepted in an offer.
pub const MAX_VERSION_COUNT: u16 = 100;
/// Payload offset of the first version entry.
pub const VERSIONS_OFFSET: usize = IC_BODY_OFFSET + NEGOTIATE_HEADER_LEN;
/// Size of the counts + reserved header of the negotiate body.
pub const NEGOTIATE_HEADER_LEN: usize = 8;
/// `icmsgsize` of a guest negotiation reply (counts, reserved, two entries).
pub const REPLY_ICMSGSIZE: u16 = 16;

/// The fixed head of `struct icmsg_negotiate` (8 bytes at payload offset 28).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct NegotiateHeader {
    /// Number of framework versions.
    pub icframe_vercnt: U16,
    /// Number of message versions.
    pub icmsg_vercnt: U16,
    /// Reserved.
    pub reserved: U32,
}

const _: () = assert!(core::mem::size_of::<NegotiateHeader>() == NEGOTIATE_HEADER_LEN);

/// Why a negotiate message could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NegotiateError {
    /// The IC framing itself is bad.
    #[error(transparent)]
    Ic(#[from] IcError),
    /// Not a NEGOTIATE message.
    #[error("expected a NEGOTIATE message, got {0:?}")]
    WrongType(IcMsgType),
    /// Payload shorter than 36 bytes.
    #[error("NEGOTIATE payload truncated: {len} bytes, need at least 36")]
    Truncated {
        /// Payload length.
        len: usize,
    },
    /// A count is 0 or above [`MAX_VERSION_COUNT`] (host side: a list is empty or too long).
    #[error("NEGOTIATE counts invalid: {framework} framework, {message} message versions")]
    BadCount {
        /// Framework version count.
        framework: u16,
        /// Message version count.
        message: u16,
    },
    /// The counted versions run past the payload.
    #[error("NEGOTIATE versions need {needed} bytes, payload has {len}")]
    VersionsOverrun {
        /// Bytes needed.
        needed: usize,
        /// Payload length.
        len: usize,
    },
}

/// A host's offer, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NegotiateOffer<'a> {
    /// The message the offer came in (for the reply).
    pub message: IcMessage<'a>,
    /// Framework versions offered, in the host's order.
    pub framework_versions: Vec<Version>,
    /// Message versions offered, in the host's order.
    pub message_versions: Vec<Version>,
}

impl<'a> NegotiateOffer<'a> {
    /// Parses and validates an offer (§5.2 step 1). Never panics.
    pub fn parse(message: IcMessage<'a>) -> Result<Self, NegotiateError> {
        if message.msg_type() != IcMsgType::NEGOTIATE {
            return Err(NegotiateError::WrongType(message.msg_type()));
        }
        let raw = message.raw();
        let (head, _) = NegotiateHeader::read_from_prefix(message.body())
            .map_err(|_| NegotiateError::Truncated { len: raw.len() })?;
        let (framework, msg) = (head.icframe_vercnt.get(), head.icmsg_vercnt.get());
        if framework == 0 || msg == 0 || framework > MAX_VERSION_COUNT || msg > MAX_VERSION_COUNT {
            return Err(NegotiateError::BadCount {
                framework,
                message: msg,
            });
        }
        let total = usize::from(framework) + usize::from(msg);
        let needed = VERSIONS_OFFSET + 4 * total;
        if needed > raw.len() {
            return Err(NegotiateError::VersionsOverrun {
                needed,
                len: raw.len(),
            });
        }
        let mut versions = raw[VERSIONS_OFFSET..needed]
            .chunks_exact(4)
            .map(|c| Version::from_bytes([c[0], c[1], c[2], c[3]]));
        let framework_versions = versions.by_ref().take(usize::from(framework)).collect();
        let message_versions = versions.collect();
        Ok(Self {
            message,
            framework_versions,
            message_versions,
        })
    }

    /// The first version of `guest_list` that the host offers in `offered`.
    fn choose(guest_list: &[Version], offered: &[Version]) -> Option<Version> {
        guest_list.iter().copied().find(|v| offered.contains(v))
    }

    /// Answers the offer with the guest's preference lists (§5.2 steps 2–5).
    pub fn answer(&self, framework: &[Version], message: &[Version]) -> NegotiateAnswer {
        let chosen = Self::choose(framework, &self.framework_versions)
            .zip(Self::choose(message, &self.message_versions));
        let (reply, outcome) = match chosen {
            Some((fw, msg)) => {
                let mut reply = self.message.reply(HvStatus::S_OK);
                reply.set_icmsgsize(REPLY_ICMSGSIZE);
                let body = reply.body_mut();
                body[0..2].copy_from_slice(&1u16.to_le_bytes());
                body[2..4].copy_from_slice(&1u16.to_le_bytes());
                body[8..12].copy_from_slice(&fw.to_bytes());
                body[12..16].copy_from_slice(&msg.to_bytes());
                let outcome = NegotiateOutcome::Agreed {
                    framework: fw,
                    message: msg,
                };
                (reply, outcome)
            }
            None => (
                failure_reply(&self.message),
                NegotiateOutcome::Failed(NegotiateFailure::NoCommonVersion),
            ),
        };
        NegotiateAnswer {
            reply,
            outcome,
            offered_framework: self.framework_versions.clone(),
            offered_message: self.message_versions.clone(),
        }
    }
}

/// The failure reply of §5.2 step 4: counts 0, `icmsgsize` 16, HV_E_FAIL. The caller has
/// checked that the payload holds the counts (36 bytes).
fn failure_reply(message: &IcMessage<'_>) -> IcReply {
    let mut reply = message.reply(HvStatus::E_FAIL);
    reply.set_icmsgsize(REPLY_ICMSGSIZE);
    reply.body_mut()[0..4].copy_from_slice(&[0; 4]);
    reply
}

/// Why a negotiation failed (answered counts 0, HV_E_FAIL either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NegotiateFailure {
    /// The host offered nothing on the guest's lists (e.g. VSS 4.0 only).
    NoCommonVersion,
    /// The offer is malformed ([`NegotiateError::BadCount`] or
    /// [`NegotiateError::VersionsOverrun`]).
    Malformed(NegotiateError),
}

/// What a negotiation settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NegotiateOutcome {
    /// Both versions chosen.
    Agreed {
        /// Chosen framework version.
        framework: Version,
        /// Chosen message (VSS) version.
        message: Version,
    },
    /// The reply carries counts 0 and E_FAIL.
    Failed(NegotiateFailure),
}

/// The guest's reply payload and what it means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NegotiateAnswer {
    /// The reply payload (same length as the offer).
    pub reply: IcReply,
    /// The result.
    pub outcome: NegotiateOutcome,
    /// Framework versions the host offered (empty when the offer was malformed).
    pub offered_framework: Vec<Version>,
    /// Message versions the host offered (empty when the offer was malformed).
    pub offered_message: Vec<Version>,
}

/// Guest side for one received NEGOTIATE (§5.2): the answer to send, with `framework` and
/// `message` as the guest's preference lists. A malformed offer is answered too
/// ([`NegotiateFailure::Malformed`]). Errors only when there is nothing to answer: not a
/// NEGOTIATE, or a payload shorter than the 36 bytes that hold the counts.
pub fn answer_offer(
    message: IcMessage<'_>,
    framework: &[Version],
    msg: &[Version],
) -> Result<NegotiateAnswer, NegotiateError> {
    match NegotiateOffer::parse(message) {
        Ok(offer) => Ok(offer.answer(framework, msg)),
        Err(e @ (NegotiateError::BadCount { .. } | NegotiateError::VersionsOverrun { .. })) => {
            Ok(NegotiateAnswer {
                reply: failure_reply(&message),
                outcome: NegotiateOutcome::Failed(NegotiateFailure::Malformed(e)),
                offered_framework: Vec::new(),
                offered_message: Vec::new(),
            })
        }
        Err(e) => Err(e),
    }
}

/// Guest side in one call: parse `payload` and answer with hv-vss's lists
/// ([`GUEST_FRAMEWORK_VERSIONS`], [`GUEST_VSS_VERSIONS`]); see [`answer_offer`].
pub fn guest_negotiate(payload: &[u8]) -> Result<NegotiateAnswer, NegotiateError> {
    answer_offer(
        IcMessage::parse(payload)?,
        &GUEST_FRAMEWORK_VERSIONS,
        &GUEST_VSS_VERSIONS,
    )
}

/// Host side: builds a NEGOTIATE offer payload (pipe DATA, header versions 1.0, flags 0x03,
/// status 0, transaction id 0), as in worked example 11.1.
pub fn build_offer(framework: &[Version], message: &[Version]) -> Result<Vec<u8>, NegotiateError> {
    let bad = NegotiateError::BadCount {
        framework: u16::try_from(framework.len()).unwrap_or(u16::MAX),
        message: u16::try_from(message.len()).unwrap_or(u16::MAX),
    };
    let max = usize::from(MAX_VERSION_COUNT);
    if framework.is_empty() || message.is_empty() || framework.len() > max || message.len() > max {
        return Err(bad);
    }
    let head = NegotiateHeader {
        icframe_vercnt: U16::new(framework.len() as u16),
        icmsg_vercnt: U16::new(message.len() as u16),
        reserved: U32::new(0),
    };
    let mut body = head.as_bytes().to_vec();
    for v in framework.iter().chain(message) {
        body.extend_from_slice(&v.to_bytes());
    }
    let one = Version::new(1, 0);
    Ok(ic::build_host_message(
        IcMsgType::NEGOTIATE,
        one,
        one,
        &body,
    )?)
}

/// The guest's answer as the host reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NegotiateReply {
    /// The reply's status.
    pub status: HvStatus,
    /// The versions chosen, if both counts are at least 1 and the status is S_OK.
    pub chosen: Option<(Version, Version)>,
}

/// Host side: reads a guest's negotiation reply. Never panics.
pub fn parse_reply(payload: &[u8]) -> Result<NegotiateReply, NegotiateError> {
    let message = IcMessage::parse(payload)?;
    if message.msg_type() != IcMsgType::NEGOTIATE {
        return Err(NegotiateError::WrongType(message.msg_type()));
    }
    let status = message.header().status();
    let (head, _) = NegotiateHeader::read_from_prefix(message.body())
        .map_err(|_| NegotiateError::Truncated { len: payload.len() })?;
    let (framework, msg) = (head.icframe_vercnt.get(), head.icmsg_vercnt.get());
    if framework == 0 || msg == 0 || !status.is_ok() {
        return Ok(NegotiateReply {
            status,
            chosen: None,
        });
    }
    let fw_at = VERSIONS_OFFSET;
    let msg_at = VERSIONS_OFFSET + 4 * usize::from(framework);
    let entry = |at: usize| -> Result<Version, NegotiateError> {
        payload
            .get(at..at + 4)
            .map(|c| Version::from_bytes([c[0], c[1], c[2], c[3]]))
            .ok_or(NegotiateError::VersionsOverrun {
                needed: at + 4,
                len: payload.len(),
            })
    };
    Ok(NegotiateReply {
        status,
        chosen: Some((entry(fw_at)?, entry(msg_at)?)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER_11_1: [u8; 48] = [
        0x01, 0x00, 0x00, 0x00, 0x28, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
        0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x02, 0x00,
        0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x05,
        0x00, 0x00, 0x00,
    ];
    const REPLY_11_2: [u8; 48] = [
        0x01, 0x00, 0x00, 0x00, 0x28, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
        0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x01, 0x00,
        0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x05,
        0x00, 0x00, 0x00,
    ];
    const V1: Version = Version::new(1, 0);
    const V3: Version = Version::new(3, 0);
    const V4: Version = Version::new(4, 0);
    const V5: Version = Version::new(5, 0);

    #[test]
    fn example_11_1_parses_and_builds() {
        let offer = NegotiateOffer::parse(IcMessage::parse(&OFFER_11_1).unwrap()).unwrap();
        assert_eq!(offer.framework_versions, [V1, V3]);
        assert_eq!(offer.message_versions, [V5]);
        assert_eq!(build_offer(&[V1, V3], &[V5]).unwrap(), OFFER_11_1);
    }

    #[test]
    fn example_11_2_is_the_guest_reply() {
        let answer = guest_negotiate(&OFFER_11_1).unwrap();
        assert_eq!(answer.reply.as_bytes(), REPLY_11_2);
        assert_eq!(
            answer.outcome,
            NegotiateOutcome::Agreed {
                framework: V3,
                message: V5
            }
        );
        let read = parse_reply(&REPLY_11_2).unwrap();
        assert_eq!(
            read,
            NegotiateReply {
                status: HvStatus::S_OK,
                chosen: Some((V3, V5))
            }
        );
    }

    #[test]
    fn an_offer_of_vss_4_0_only_fails_with_counts_0_and_e_fail() {
        let offer = build_offer(&[V3], &[V4]).unwrap();
        let answer = guest_negotiate(&offer).unwrap();
        assert_eq!(
            answer.outcome,
            NegotiateOutcome::Failed(NegotiateFailure::NoCommonVersion)
        );
        assert_eq!(answer.offered_message, [V4]);
        let bytes = answer.reply.as_bytes();
        assert_eq!(bytes.len(), offer.len());
        assert_eq!(&bytes[0x1c..0x20], &[0, 0, 0, 0]);
        assert_eq!(&bytes[0x14..0x18], &[0x05, 0x40, 0x00, 0x80]);
        assert_eq!(bytes[0x12], 16);
        assert_eq!(bytes[0x19], 0x05);
        let read = parse_reply(bytes).unwrap();
        assert_eq!(
            read,
            NegotiateReply {
                status: HvStatus::E_FAIL,
                chosen: None
            }
        );
    }

    #[test]
    fn guest_takes_first_of_its_own_list() {
        let offer = build_offer(&[V1, V3, V4], &[V4, V5, Version::new(6, 0)]).unwrap();
        let answer = guest_negotiate(&offer).unwrap();
        assert_eq!(
            answer.outcome,
            NegotiateOutcome::Agreed {
                framework: V3,
                message: V5
            }
        );
        let answer = NegotiateOffer::parse(IcMessage::parse(&offer).unwrap())
            .unwrap()
            .answer(&[V4, V3], &[Version::new(6, 0), V5]);
        assert_eq!(
            answer.outcome,
            NegotiateOutcome::Agreed {
                framework: V4,
                message: Version::new(6, 0)
            }
        );
    }

    /// The failure reply of §5.2 step 4, byte by byte against the request.
    fn assert_failure_reply(request: &[u8], answer: &NegotiateAnswer) {
        let bytes = answer.reply.as_bytes();
        assert_eq!(bytes.len(), request.len());
        assert_eq!(&bytes[0x1c..0x20], &[0, 0, 0, 0], "counts 0");
        assert_eq!(&bytes[0x14..0x18], &[0x05, 0x40, 0x00, 0x80], "E_FAIL");
        assert_eq!(&bytes[0x12..0x14], &[16, 0], "icmsgsize 16");
        assert_eq!(bytes[0x19], 0x05);
        for (i, (a, b)) in bytes.iter().zip(request).enumerate() {
            if !matches!(i, 0x12..=0x15 | 0x16..=0x17 | 0x19 | 0x1c..=0x1f) {
                assert_eq!(a, b, "byte {i:#x} echoed");
            }
        }
        assert_eq!(parse_reply(bytes).unwrap().chosen, None);
    }

    /// R3: counts 0, counts above 100 and versions past the payload are answered with counts
    /// 0, icmsgsize 16 and E_FAIL, not left unanswered.
    #[test]
    fn malformed_offers_are_answered_counts_0_and_e_fail() {
        let mut zero = OFFER_11_1;
        zero[0x1c] = 0;
        let mut many = OFFER_11_1;
        many[0x1e] = 101;
        let mut overrun = OFFER_11_1;
        overrun[0x1e] = 2;
        // Exactly the 36 bytes that hold the counts, and a count past them.
        let mut counts_only = OFFER_11_1[..36].to_vec();
        counts_only[18] = 8;
        for (name, offer, failure) in [
            (
                "count 0",
                zero.to_vec(),
                NegotiateError::BadCount {
                    framework: 0,
                    message: 1,
                },
            ),
            (
                "count 101",
                many.to_vec(),
                NegotiateError::BadCount {
                    framework: 2,
                    message: 101,
                },
            ),
            (
                "overrun",
                overrun.to_vec(),
                NegotiateError::VersionsOverrun {
                    needed: 52,
                    len: 48,
                },
            ),
            (
                "36 bytes",
                counts_only,
                NegotiateError::VersionsOverrun {
                    needed: 48,
                    len: 36,
                },
            ),
        ] {
            let answer = guest_negotiate(&offer).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                answer.outcome,
                NegotiateOutcome::Failed(NegotiateFailure::Malformed(failure)),
                "{name}"
            );
            assert_failure_reply(&offer, &answer);
        }
    }

    #[test]
    fn what_cannot_hold_the_counts_is_an_error() {
        assert!(matches!(
            guest_negotiate(&OFFER_11_1[..27]),
            Err(NegotiateError::Ic(_))
        ));
        // 32 bytes: the counts do not fit.
        let mut short = OFFER_11_1[..32].to_vec();
        short[18] = 4;
        assert_eq!(
            guest_negotiate(&short),
            Err(NegotiateError::Truncated { len: 32 })
        );
        let mut vss = OFFER_11_1;
        vss[0x0c] = 5;
        assert_eq!(
            guest_negotiate(&vss),
            Err(NegotiateError::WrongType(IcMsgType::VSS))
        );
        assert!(build_offer(&[], &[V5]).is_err());
        assert!(build_offer(&[V3; 101], &[V5]).is_err());
    }
}
