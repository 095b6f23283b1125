//! The application socket server (docs/apps.md, protocol v1 in hv-vss-app-protocol).
//!
//! # Mechanism
//!
//! Everything runs on the daemon's loop thread, without blocking: the listener and every
//! client socket are polled with the loop's other descriptors ([`AppServer::poll_fds`],
//! [`AppServer::on_ready`]); what clients say becomes coordinator events (`AppAck`,
//! `AppGone`) or registrations; what the coordinator decides (`NotifyApp`, `RejectAck`)
//! becomes lines queued to the clients ([`AppServer::execute`]). Queued lines are written
//! at the end of each batch by [`AppServer::flush`], after the owed-abort journal
//! ([`journal`]) has recorded every client about to be told `freeze`.
//!
//! A client that breaks the protocol fails only itself: a malformed or oversize line, a
//! second `register`, an `ack` before `register`, or a full outbox ends its connection
//! (`AppGone`: a veto in check and freeze, a recorded failure in thaw); an unknown message
//! type is answered with `error` and fails the ack it owes, if any. Everyone else is served
//! on.
//!
//! Writes go only to sockets and to the journal in the state directory (tmpfs, never in the
//! freeze plan); log lines go through the daemon's log gate, and every line a client can
//! cause is rate-limited ([`ClientLog`]).

pub mod accounts;
mod conn;
mod hooks;
pub mod journal;
pub mod listener;
mod registry;

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use hv_vss_app_protocol::{ClientMessage, DaemonMessage, ProtocolError, parse_client_line};
use hv_vss_core::{Action, Coordinator, Event, Millis, ParticipantId, RegisterError, Registration};
use rustix::event::PollFlags;

use self::conn::{Conn, End};
use self::journal::{AppJournal, unix_ms};
use self::listener::{Listener, Peer};
use self::registry::{ConnId, Registry, notify_message, rejection_message};
use crate::config::AppSettings;

/// Connections accepted per wake-up at most (the rest wait in the backlog).
const ACCEPT_BUDGET: usize = 64;

/// What one polled descriptor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Listener,
    Client(ConnId),
    /// The hook runner's wake descriptor.
    Hooks,
}

/// At most [`ClientLog::BURST`] lines per [`ClientLog::WINDOW`] about things clients
/// cause (connects, refusals, protocol errors); the rest are counted and the count is
/// reported with the next line let through.
#[derive(Debug, Default)]
pub struct ClientLog {
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl ClientLog {
    const BURST: u32 = 20;
    const WINDOW: Duration = Duration::from_secs(10);

    /// `Some(lines suppressed before this one)` if a line may be logged now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .window_start
            .is_none_or(|t| now.duration_since(t) >= Self::WINDOW)
        {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used >= Self::BURST {
            self.suppressed += 1;
            return None;
        }
        self.used += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Logs a client-caused line through the shared limit.
macro_rules! client_log {
    ($self:ident, $level:ident, $($arg:tt)+) => {
        if let Some(suppressed) = $self.log.allow(Instant::now()) {
            tracing::$level!(suppressed, $($arg)+);
        }
    };
}

/// A thaw or abort queued to a client; the journal entry goes once it is written.
#[derive(Debug)]
struct Release {
    conn: ConnId,
    name: String,
    txn: u64,
    offset: u64,
}

/// The application socket server.
#[derive(Debug)]
pub struct AppServer {
    listener: Listener,
    registry: Registry,
    journal: AppJournal,
    releases: Vec<Release>,
    settings: AppSettings,
    next_participant: u64,
    hooks: hooks::Hooks,
    log: ClientLog,
    journal_log: ClientLog,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("app_socket: {0}")]
    Listen(#[from] listener::ListenError),
    #[error("hooks: {0:#}")]
    Hooks(anyhow::Error),
}

impl AppServer {
    /// Binds the socket, reads what an earlier instance still owes (see [`journal`]) and
    /// registers the hook directories with `coord`; their runner asks `exec` before each
    /// hook.
    pub fn start(
        settings: &AppSettings,
        hook_dirs: &[crate::config::HookDirSettings],
        state_dir: &std::path::Path,
        coord: &mut Coordinator,
        exec: crate::safety::ExecPermit,
    ) -> Result<Self, StartError> {
        let listener = Listener::bind(settings)?;
        let mut next_participant = 0;
        let next_id = || {
            next_participant += 1;
            ParticipantId(next_participant)
        };
        let hooks =
            hooks::Hooks::start(hook_dirs, coord, next_id, exec).map_err(StartError::Hooks)?;
        let (journal, inherited) = AppJournal::open(state_dir, unix_ms());
        if let Some(e) = &inherited.unreadable {
            tracing::warn!(path = %journal.path().display(), error = %e, "the owed-abort journal is unreadable; replacing it");
        }
        if inherited.owed > 0 || inherited.expired > 0 {
            tracing::warn!(
                owed = inherited.owed,
                expired = inherited.expired,
                "an earlier instance told clients to freeze and died; each gets an abort when it registers again"
            );
        }
        Ok(Self {
            listener,
            registry: Registry::default(),
            journal,
            releases: Vec::new(),
            settings: settings.clone(),
            next_participant,
            hooks,
            log: ClientLog::default(),
            journal_log: ClientLog::default(),
        })
    }

    /// The freeze-safety owner permits exec again: hook runs deferred meanwhile start.
    pub fn exec_permitted(&mut self) {
        self.hooks.exec_permitted();
    }

    /// A new participant id (clients and hook directories share the space).
    pub fn next_participant_id(&mut self) -> ParticipantId {
        self.next_participant += 1;
        ParticipantId(self.next_participant)
    }

    /// The descriptors to poll, with what they belong to (same order).
    pub fn poll_fds(&self) -> Vec<(BorrowedFd<'_>, PollFlags, Slot)> {
        let mut fds = Vec::with_capacity(self.registry.len() + 1);
        fds.push((self.listener.fd(), PollFlags::IN, Slot::Listener));
        for (id, c) in self.registry.iter() {
            let mut flags = PollFlags::IN;
            if c.conn.wants_write() {
                flags |= PollFlags::OUT;
            }
            fds.push((c.conn.fd(), flags, Slot::Client(id)));
        }
        if let Some(fd) = self.hooks.wake_fd() {
            fds.push((fd, PollFlags::IN, Slot::Hooks));
        }
        fds
    }

    /// Serves what `poll` reported (`ready`: each slot with its revents). Registrations go
    /// straight to `coord`; acks and departures are pushed to `events`.
    pub fn on_ready(
        &mut self,
        ready: &[(Slot, PollFlags)],
        coord: &mut Coordinator,
        events: &mut Vec<Event>,
    ) {
        for &(slot, revents) in ready {
            if revents.is_empty() {
                continue;
            }
            match slot {
                Slot::Listener => self.accept_all(),
                Slot::Hooks => self.hooks.drain(),
                Slot::Client(id) => {
                    if revents.contains(PollFlags::OUT) {
                        self.flush_one(id, events);
                    }
                    if revents.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
                        self.read_client(id, coord, events);
                    }
                }
            }
        }
    }

    fn accept_all(&mut self) {
        for _ in 0..ACCEPT_BUDGET {
            let (stream, peer) = match self.listener.accept() {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(e) => {
                    client_log!(self, warn, error = %e, "accepting an application connection failed");
                    return;
                }
            };
            let conn = Conn::new(stream, peer.clone(), self.settings.max_pending_bytes);
            if !self.listener.admits(&peer) {
                client_log!(
                    self,
                    warn,
                    pid = peer.pid,
                    uid = peer.uid,
                    gid = peer.gid,
                    "application connection refused: user and groups not allowed (apps.allowed_users / apps.allowed_groups)"
                );
                refuse(
                    conn,
                    "permission denied: this user may not take part in backups",
                );
                continue;
            }
            if self.registry.len() >= self.settings.max_clients {
                client_log!(
                    self,
                    warn,
                    pid = peer.pid,
                    max_clients = self.settings.max_clients,
                    "application connection refused: too many clients"
                );
                refuse(conn, "too many clients");
                continue;
            }
            self.registry.add(conn);
        }
    }

    fn read_client(&mut self, id: ConnId, coord: &mut Coordinator, events: &mut Vec<Event>) {
        let Some(client) = self.registry.get_mut(id) else {
            return;
        };
        let (lines, end) = client.conn.read_lines();
        for line in lines {
            if let Err(message) = self.on_line(id, &line, coord, events) {
                self.end_client(id, Some(&message), events);
                return;
            }
        }
        match end {
            None => {}
            Some(End::Eof) => self.end_client(id, None, events),
            Some(End::TooLong) => {
                let m = ProtocolError::TooLong.to_string();
                self.end_client(id, Some(&m), events)
            }
            Some(End::Io(e)) => {
                client_log!(self, info, error = %e, "application connection failed");
                self.end_client(id, None, events)
            }
        }
    }

    /// Handles one line; `Err(message)` ends the connection with that error.
    fn on_line(
        &mut self,
        id: ConnId,
        line: &[u8],
        coord: &mut Coordinator,
        events: &mut Vec<Event>,
    ) -> Result<(), String> {
        let Some(client) = self.registry.get_mut(id) else {
            return Ok(());
        };
        let registered = client.registered.clone();
        match (parse_client_line(line), registered) {
            (Ok(ClientMessage::Register(r)), None) => {
                let peer = client.conn.peer.clone();
                self.register(id, peer, r, coord)
            }
            (Ok(ClientMessage::Register(_)), Some(reg)) => {
                Err(format!("already registered as {:?}", reg.name))
            }
            (Ok(ClientMessage::Ack(_)), None) => Err("ack before register".into()),
            (Ok(ClientMessage::Ack(ack)), Some(reg)) => {
                let txn = hv_vss_core::TxnId(ack.txn);
                let op = client.op_for_ack(txn);
                if client.told.is_some_and(|(t, _)| t == txn) {
                    client.owes_ack = false;
                }
                if !ack.ok {
                    client_log!(self, warn, client = %reg.name, txn = ack.txn, op = ?op, message = ack.message.as_deref().unwrap_or(""), "application answered not ok");
                }
                events.push(Event::AppAck {
                    participant: reg.participant,
                    txn,
                    op,
                    ok: ack.ok,
                });
                Ok(())
            }
            (Err(ProtocolError::UnknownType(kind)), registered) => {
                let message =
                    format!("unknown message type {kind:?} (this daemon speaks protocol v1)");
                client.conn.queue(&DaemonMessage::Error { message });
                // The client breaks the stage it owes an ack in.
                if let (Some(reg), Some((txn, op)), true) =
                    (registered, client.told, client.owes_ack)
                {
                    client.owes_ack = false;
                    client_log!(self, warn, client = %reg.name, kind = %kind, "unknown message type from an application; failing its pending ack");
                    events.push(Event::AppAck {
                        participant: reg.participant,
                        txn,
                        op,
                        ok: false,
                    });
                }
                Ok(())
            }
            (Err(e), _) => Err(e.to_string()),
        }
    }

    fn register(
        &mut self,
        id: ConnId,
        peer: Peer,
        r: hv_vss_app_protocol::Register,
        coord: &mut Coordinator,
    ) -> Result<(), String> {
        if self.registry.name_taken(&r.name) {
            return Err(format!("a client named {:?} is already connected", r.name));
        }
        let participant = self.next_participant_id();
        let registration = Registration {
            id: participant,
            name: r.name.clone(),
            tier: r.tier.unwrap_or(hv_vss_app_protocol::DEFAULT_TIER),
            timeout: r.timeout_ms.map(Duration::from_millis),
        };
        coord.register(registration).map_err(|e| match e {
            RegisterError::DuplicateName(n) => format!("the name {n:?} is taken"),
            RegisterError::Stopped => "the daemon is shutting down".into(),
            other => other.to_string(),
        })?;
        self.registry.register(id, participant, r.name.clone());
        client_log!(self, info, client = %r.name, tier = r.tier.unwrap_or(hv_vss_app_protocol::DEFAULT_TIER), pid = peer.pid, uid = peer.uid, "application registered");
        let owed = self.journal.take_inherited(&r.name, unix_ms());
        let Some(client) = self.registry.get_mut(id) else {
            return Ok(());
        };
        client.conn.queue(&DaemonMessage::Registered {
            name: r.name.clone(),
            protocol: hv_vss_app_protocol::PROTOCOL_VERSION,
        });
        if let Some(owed) = owed {
            client.conn.queue(&DaemonMessage::Abort {
                txn: owed.txn,
                reason: "daemon restarted".into(),
            });
            client_log!(self, warn, client = %r.name, txn = owed.txn, "sent the abort an earlier instance owed this application");
        }
        Ok(())
    }

    /// Ends a connection, sending `error` first if given; a registered client's departure
    /// is an `AppGone`.
    fn end_client(&mut self, id: ConnId, error: Option<&str>, events: &mut Vec<Event>) {
        if let Some(message) = error {
            if let Some(c) = self.registry.get_mut(id) {
                client_log!(
                    self,
                    warn,
                    pid = c.conn.peer.pid,
                    error = message,
                    "application protocol error; closing its connection"
                );
                let c = self.registry.get_mut(id).expect("checked above");
                c.conn.queue(&DaemonMessage::Error {
                    message: message.to_owned(),
                });
                let _ = c.conn.flush();
            }
        }
        if let Some(reg) = self.registry.remove(id) {
            client_log!(self, info, client = %reg.name, "application gone");
            self.journal.forget(&reg.name);
            events.push(Event::AppGone {
                participant: reg.participant,
            });
        }
    }

    fn flush_one(&mut self, id: ConnId, events: &mut Vec<Event>) {
        let Some(c) = self.registry.get_mut(id) else {
            return;
        };
        let result = c.conn.flush().map_err(|e| e.to_string()).and_then(|()| {
            c.conn
                .check_pending()
                .map_err(|o| format!("{} bytes unread (apps.max_pending_bytes)", o.pending))
        });
        if let Err(why) = result {
            client_log!(self, warn, pid = c.conn.peer.pid, why = %why, "application does not read its socket; disconnecting it");
            self.end_client(id, None, events);
        }
    }

    /// Executes an application action of the coordinator; returns false if it is not one
    /// (or names a participant this server does not own).
    pub fn execute(&mut self, action: &Action, now: Millis) -> bool {
        match action {
            Action::NotifyApp {
                participant,
                txn,
                op,
                deadline,
                reason,
            } => {
                if self.hooks.owns(*participant) {
                    self.hooks.notify(*participant, *txn, *op, *deadline, now);
                    return true;
                }
                let Some(id) = self.registry.conn_of(*participant) else {
                    return false;
                };
                let msg = notify_message(*txn, *op, *deadline, reason.as_ref(), now);
                let Some(client) = self.registry.get_mut(id) else {
                    return false;
                };
                let name = client
                    .registered
                    .as_ref()
                    .map(|r| r.name.clone())
                    .unwrap_or_default();
                client.told = Some((*txn, *op));
                client.owes_ack = *op != hv_vss_core::AppOp::Abort;
                let offset = client.conn.queue(&msg);
                match op {
                    // Journaled before the line is written (flush syncs the journal first).
                    hv_vss_core::AppOp::Freeze => self.journal.told_freeze(&name, txn.0, unix_ms()),
                    hv_vss_core::AppOp::Thaw | hv_vss_core::AppOp::Abort => {
                        self.releases.push(Release {
                            conn: id,
                            name,
                            txn: txn.0,
                            offset,
                        })
                    }
                    hv_vss_core::AppOp::Check => {}
                }
                true
            }
            Action::RejectAck {
                participant,
                txn,
                op,
                reason,
            } => {
                if self.hooks.owns(*participant) {
                    // A hook run that reported after its stage gave up on it.
                    tracing::debug!(participant = participant.0, txn = txn.0, op = ?op, reason = ?reason, "late hook report ignored");
                    return true;
                }
                let Some(client) = self
                    .registry
                    .conn_of(*participant)
                    .and_then(|id| self.registry.get_mut(id))
                else {
                    return false;
                };
                client.conn.queue(&rejection_message(*txn, *op, *reason));
                true
            }
            _ => false,
        }
    }

    /// End of a batch: records who is about to be told to freeze, writes every outbox,
    /// drops journal entries whose thaw or abort went out. Hook acks ready and departures
    /// found while writing (a client that does not read) are pushed to `events`.
    pub fn flush(&mut self, events: &mut Vec<Event>) {
        events.extend(self.hooks.take_acks());
        self.sync_journal();
        for id in self.registry.ids() {
            if self.registry.get(id).is_some_and(|c| c.conn.wants_write()) {
                self.flush_one(id, events);
            }
        }
        let journal = &mut self.journal;
        let registry = &self.registry;
        self.releases.retain(|r| {
            let done = registry
                .get(r.conn)
                .is_none_or(|c| c.conn.delivered(r.offset));
            if done {
                journal.released(&r.name, r.txn);
            }
            !done
        });
        self.journal.expire(unix_ms());
        self.sync_journal();
    }

    fn sync_journal(&mut self) {
        if let Err(e) = self.journal.sync() {
            if let Some(suppressed) = self.journal_log.allow(Instant::now()) {
                tracing::error!(suppressed, path = %self.journal.path().display(), error = %e, "cannot write the owed-abort journal: a daemon restart now could leave clients without their abort");
            }
        }
    }
}

/// Sends `error` to a connection that is not taken and closes it.
fn refuse(mut conn: Conn, message: &str) {
    conn.queue(&DaemonMessage::Error {
        message: message.to_owned(),
    });
    let _ = conn.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_log_lets_a_burst_through_per_window_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut l = ClientLog::default();
        for _ in 0..ClientLog::BURST {
            assert_eq!(l.allow(t0), Some(0));
        }
        assert_eq!(l.allow(t0), None);
        assert_eq!(l.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.allow(t0 + ClientLog::WINDOW), Some(2));
    }
}
