//! Who is connected: connections by id, registered clients by participant id and name,
//! and the translation of coordinator actions into protocol lines.
//!
//! The protocol's `ack` carries only `txn`; the operation it answers is the last event
//! this client was sent ([`Client::told`]), so the coordinator can match it on participant,
//! txn and op as it does for every participant.

use std::collections::BTreeMap;

use hv_vss_app_protocol::{DaemonMessage, EventKind};
use hv_vss_core::{AckRejection, AppOp, Failure, Millis, ParticipantId, Stage, TxnId};

use super::conn::Conn;

/// A connection, numbered by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// A registered client.
#[derive(Debug, Clone)]
pub struct Registered {
    pub participant: ParticipantId,
    pub name: String,
}

#[derive(Debug)]
pub struct Client {
    pub conn: Conn,
    pub registered: Option<Registered>,
    /// The last event sent (check, freeze, thaw or abort) and its txn.
    pub told: Option<(TxnId, AppOp)>,
    /// The last event sent waits for this client's ack.
    pub owes_ack: bool,
}

impl Client {
    pub fn new(conn: Conn) -> Self {
        Self {
            conn,
            registered: None,
            told: None,
            owes_ack: false,
        }
    }

    /// The op an ack for `txn` answers: the last event if it was of that txn. Abort is
    /// never acked, so an ack after an abort answers the freeze it cancelled (and is then
    /// refused as late rather than as unexpected).
    pub fn op_for_ack(&self, txn: TxnId) -> AppOp {
        match self.told {
            Some((t, AppOp::Abort)) if t == txn => AppOp::Freeze,
            Some((_, op)) => op,
            None => AppOp::Check,
        }
    }
}

/// Connections and registered clients.
#[derive(Debug, Default)]
pub struct Registry {
    clients: BTreeMap<ConnId, Client>,
    by_participant: BTreeMap<ParticipantId, ConnId>,
    next_conn: u64,
}

impl Registry {
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn add(&mut self, conn: Conn) -> ConnId {
        self.next_conn += 1;
        let id = ConnId(self.next_conn);
        self.clients.insert(id, Client::new(conn));
        id
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Client> {
        self.clients.get_mut(&id)
    }

    pub fn get(&self, id: ConnId) -> Option<&Client> {
        self.clients.get(&id)
    }

    pub fn ids(&self) -> Vec<ConnId> {
        self.clients.keys().copied().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &Client)> {
        self.clients.iter().map(|(id, c)| (*id, c))
    }

    /// Whether a live client is registered under `name`.
    pub fn name_taken(&self, name: &str) -> bool {
        self.clients
            .values()
            .any(|c| c.registered.as_ref().is_some_and(|r| r.name == name))
    }

    pub fn register(&mut self, id: ConnId, participant: ParticipantId, name: String) {
        if let Some(c) = self.clients.get_mut(&id) {
            c.registered = Some(Registered { participant, name });
            self.by_participant.insert(participant, id);
        }
    }

    pub fn conn_of(&self, participant: ParticipantId) -> Option<ConnId> {
        self.by_participant.get(&participant).copied()
    }

    /// Drops a connection; returns its registration, if any.
    pub fn remove(&mut self, id: ConnId) -> Option<Registered> {
        let client = self.clients.remove(&id)?;
        let reg = client.registered?;
        self.by_participant.remove(&reg.participant);
        Some(reg)
    }
}

/// The line for a notification: events carry the milliseconds left until `deadline`,
/// abort carries the reason.
pub fn notify_message(
    txn: TxnId,
    op: AppOp,
    deadline: Option<Millis>,
    reason: Option<&Failure>,
    now: Millis,
) -> DaemonMessage {
    let deadline_ms = deadline.map_or(0, |d| d.since(now));
    let kind = match op {
        AppOp::Check => EventKind::Check,
        AppOp::Freeze => EventKind::Freeze,
        AppOp::Thaw => EventKind::Thaw,
        AppOp::Abort => {
            return DaemonMessage::Abort {
                txn: txn.0,
                reason: reason.map_or_else(|| "aborted".to_owned(), reason_text),
            };
        }
    };
    DaemonMessage::event(kind, txn.0, deadline_ms)
}

/// The line for a refused ack.
pub fn rejection_message(txn: TxnId, op: AppOp, reason: AckRejection) -> DaemonMessage {
    let op = op_name(op);
    let reason = match reason {
        AckRejection::Late => format!("late: the {op} stage no longer waits for this ack"),
        AckRejection::Unexpected => {
            format!("unexpected: no {op} of this txn waits for an ack from this client")
        }
    };
    DaemonMessage::AckRejected { txn: txn.0, reason }
}

fn op_name(op: AppOp) -> &'static str {
    match op {
        AppOp::Check => "check",
        AppOp::Freeze => "freeze",
        AppOp::Thaw => "thaw",
        AppOp::Abort => "abort",
    }
}

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::CheckApps => "application check",
        Stage::CheckFs => "filesystem check",
        Stage::FreezeApps => "application freeze",
        Stage::FreezeFs => "filesystem freeze",
        Stage::Frozen => "frozen period",
        Stage::ThawFs => "filesystem thaw",
        Stage::ThawApps => "application thaw",
    }
}

/// A sentence for the `reason` of an abort.
pub fn reason_text(failure: &Failure) -> String {
    match failure {
        Failure::AppFailed { stage, participant } => {
            format!("{participant:?} refused the {}", stage_name(*stage))
        }
        Failure::AppTimedOut { stage, participant } => {
            format!(
                "{participant:?} missed its deadline in the {}",
                stage_name(*stage)
            )
        }
        Failure::AppGone { stage, participant } => {
            format!(
                "{participant:?} went away during the {}",
                stage_name(*stage)
            )
        }
        Failure::Deadline { stage, .. } => {
            format!(
                "the host request's deadline ran out in the {}",
                stage_name(*stage)
            )
        }
        Failure::Fs { stage, detail } => format!("{} failed: {detail}", stage_name(*stage)),
        Failure::AbortedByThaw => "the host sent THAW before the freeze completed".into(),
        Failure::AutoThaw => "auto-thaw: no THAW from the host in time".into(),
        Failure::GuardianDied => "the daemon's guardian process died".into(),
        Failure::TransportLost => "the connection to the host was lost".into(),
        Failure::Shutdown => "the daemon is shutting down".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_the_time_left_and_abort_its_reason() {
        let now = Millis(1000);
        assert_eq!(
            notify_message(TxnId(4), AppOp::Freeze, Some(Millis(3500)), None, now),
            DaemonMessage::Freeze {
                txn: 4,
                deadline_ms: 2500
            }
        );
        // A deadline already reached (nobody waits) is 0, never negative.
        assert_eq!(
            notify_message(TxnId(4), AppOp::Thaw, Some(Millis(900)), None, now),
            DaemonMessage::Thaw {
                txn: 4,
                deadline_ms: 0
            }
        );
        let veto = Failure::AppFailed {
            stage: Stage::FreezeApps,
            participant: "db".into(),
        };
        let DaemonMessage::Abort { txn, reason } =
            notify_message(TxnId(4), AppOp::Abort, None, Some(&veto), now)
        else {
            panic!("not an abort");
        };
        assert_eq!(txn, 4);
        assert_eq!(reason, "\"db\" refused the application freeze");
    }
}
