//! Plain values the coordinator speaks in: time, identifiers, operations, limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A monotonic timestamp in milliseconds, supplied by the daemon (e.g. from
/// `CLOCK_MONOTONIC`). The coordinator never reads a clock; it only compares these.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    /// `self + span`, saturating at `u64::MAX` milliseconds.
    #[must_use]
    pub fn after(self, span: Duration) -> Millis {
        let span_ms = u64::try_from(span.as_millis()).unwrap_or(u64::MAX);
        Millis(self.0.saturating_add(span_ms))
    }

    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    #[must_use]
    pub fn since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// One host request (HOT_BACKUP, FREEZE or THAW), numbered by the daemon. The coordinator
/// answers each exactly once with [`crate::Action::Reply`] (or declares it
/// [`crate::Action::Unanswerable`] when the transport is gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub u64);

/// An application participant (socket client or hook set), numbered by the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ParticipantId(pub u64);

/// A coordinator transaction, from a monotonic counter starting at 1 (R23). A HOT_BACKUP is
/// one transaction; a FREEZE opens one that its THAW (or compensation) closes, so a
/// participant sees the same id on `Freeze` and on the `Thaw` or `Abort` that ends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TxnId(pub u64);

/// The host operations the coordinator handles (R17). Everything else is answered by the
/// transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostOp {
    /// HOT_BACKUP: can the guest take part? (CHECK in FreeBSD's terms).
    Check,
    /// FREEZE.
    Freeze,
    /// THAW.
    Thaw,
}

/// What a participant is told. `Abort` is never acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppOp {
    Check,
    Freeze,
    Thaw,
    Abort,
}

/// The answer to a host request; the daemon maps it to HV_S_OK / HV_E_FAIL (R8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Fail,
}

/// Failure detail reported by the filesystem freezer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FsError {
    pub detail: String,
}

impl FsError {
    pub fn new(detail: impl Into<String>) -> Self {
        FsError {
            detail: detail.into(),
        }
    }
}

/// Outcome of one filesystem stage (preflight, freeze or thaw).
pub type FsResult = Result<(), FsError>;

/// Auto-thaw setting (R56). Disabling it is explicit: the daemon warns about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoThaw {
    /// Thaw on our own this long after the FREEZE was answered S_OK if no THAW came.
    After(Duration),
    /// Stay frozen until THAW, transport loss, shutdown or guardian loss.
    Disabled,
}

/// Deadlines (behaviour.md §6). Each host request gets one budget covering all its stages
/// (R20); each participant's wait is its own timeout, bounded by what is left of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Whole-chain budget of a HOT_BACKUP (applications + filesystem preflight).
    pub check_deadline: Duration,
    /// Whole-chain budget of a FREEZE (applications + filesystem freeze).
    pub freeze_deadline: Duration,
    /// Whole-chain budget of a THAW (filesystem thaw + applications).
    pub thaw_deadline: Duration,
    /// Per-participant timeout for participants that register without their own.
    pub client_timeout: Duration,
    /// Guaranteed thaw after the FREEZE reply.
    pub auto_thaw: AutoThaw,
}

/// Linux's `VSS_FREEZE_TIMEOUT` (wire-protocol.md §8.4).
pub const KERNEL_FREEZE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Linux's `HV_UTIL_TIMEOUT`, used for THAW and HOT_BACKUP (wire-protocol.md §8.4).
pub const KERNEL_UTIL_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for Limits {
    fn default() -> Self {
        Limits {
            check_deadline: Duration::from_secs(25),
            freeze_deadline: Duration::from_secs(300),
            thaw_deadline: Duration::from_secs(25),
            client_timeout: Duration::from_secs(30),
            auto_thaw: AutoThaw::After(Duration::from_secs(60)),
        }
    }
}

/// A limit that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum LimitsError {
    #[error("{name} must be at least 1 ms")]
    Zero { name: &'static str },
    #[error("{name} ({ours:?}) must end before the kernel's {kernel:?} in drop-in mode (R20)")]
    NotBeforeKernel {
        name: &'static str,
        ours: Duration,
        kernel: Duration,
    },
}

impl Limits {
    /// Rejects zero durations (a zero deadline would fail every request at once).
    pub fn validate(&self) -> Result<(), LimitsError> {
        let mut all = vec![
            ("check_deadline", self.check_deadline),
            ("freeze_deadline", self.freeze_deadline),
            ("thaw_deadline", self.thaw_deadline),
            ("client_timeout", self.client_timeout),
        ];
        if let AutoThaw::After(d) = self.auto_thaw {
            all.push(("auto_thaw", d));
        }
        match all.into_iter().find(|(_, d)| d.as_millis() == 0) {
            Some((name, _)) => Err(LimitsError::Zero { name }),
            None => Ok(()),
        }
    }

    /// [`Limits::validate`], plus R20: in drop-in mode each whole-chain deadline ends
    /// strictly before the kernel's, so our compensation runs before the kernel gives up.
    pub fn validate_drop_in(&self) -> Result<(), LimitsError> {
        self.validate()?;
        for (name, ours, kernel) in [
            ("check_deadline", self.check_deadline, KERNEL_UTIL_TIMEOUT),
            (
                "freeze_deadline",
                self.freeze_deadline,
                KERNEL_FREEZE_TIMEOUT,
            ),
            ("thaw_deadline", self.thaw_deadline, KERNEL_UTIL_TIMEOUT),
        ] {
            if ours >= kernel {
                return Err(LimitsError::NotBeforeKernel { name, ours, kernel });
            }
        }
        Ok(())
    }

    pub(crate) fn deadline_for(&self, op: HostOp) -> Duration {
        match op {
            HostOp::Check => self.check_deadline,
            HostOp::Freeze => self.freeze_deadline,
            HostOp::Thaw => self.thaw_deadline,
        }
    }
}

/// Default tier of a participant that does not choose one (R44).
pub const DEFAULT_TIER: u8 = 100;

/// A participant joining the coordinator (R44). It takes part in transactions that start
/// after it registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub id: ParticipantId,
    /// Unique among registered participants.
    pub name: String,
    /// 0–255; lower tiers are told Check/Freeze first and Thaw last.
    pub tier: u8,
    /// Its own ack timeout; `None` takes [`Limits::client_timeout`]. Always bounded by what
    /// is left of the request's deadline.
    pub timeout: Option<Duration>,
}

/// Why a registration was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RegisterError {
    #[error("participant id {0:?} is already registered")]
    DuplicateId(ParticipantId),
    #[error("a participant named {0:?} is already registered")]
    DuplicateName(String),
    #[error("participant timeout must be at least 1 ms")]
    ZeroTimeout,
    #[error("the coordinator has shut down")]
    Stopped,
}
