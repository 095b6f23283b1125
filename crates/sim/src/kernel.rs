//! An emulator of Linux's VSS kernel driver (drivers/hv/hv_snapshot.c with
//! hv_utils_transport.c) serving the daemon ABI of `/dev/vmbus/hv_vss` over a
//! `SOCK_SEQPACKET` Unix socket, so the real daemon can be tested without Hyper-V.
//!
//! Kernel contract being modelled (wire-protocol.md §8, behaviour.md §2):
//!
//! - One daemon at a time: the device open is exclusive. A second connection while one is
//!   open is closed at once (the kernel's `EBUSY`).
//! - States: INIT (connected, not registered) → READY after the REGISTER1 handshake (the
//!   4-byte reply is sent, 129 unless [`EmulatorConfig::handshake_version`] says otherwise; the real kernel turns READY when the daemon reads it, which
//!   differs only by the read's latency) → a request in flight. Legacy REGISTER (128) gets no reply
//!   and never makes the device READY.
//! - The host's HOT_BACKUP, FREEZE and THAW are forwarded as a 12-byte message holding only
//!   the operation; every other operation is answered S_OK by the kernel itself. With no
//!   registered daemon the kernel answers E_FAIL at once.
//! - At most one request in flight: [`KernelEmulator::host_request`] calls are serialised,
//!   as the kernel leaves the host's next request in the ring until the current one is done.
//! - The daemon's reply status (bytes 0–3) goes to the host verbatim. The daemon has
//!   15 min for FREEZE and 30 s for THAW and HOT_BACKUP ([`EmulatorConfig`]); on expiry the
//!   kernel answers E_FAIL and does **not** thaw anything.
//! - A daemon that closes mid-request makes the kernel answer E_FAIL.
//! - Hibernation ([`KernelEmulator::hibernate`]) sends a fake THAW and forces READY; the
//!   daemon's next write is "transaction not active".
//!
//! # Socket model of `EINVAL`
//!
//! The real driver fails a write with `EINVAL` (wrong length, transaction not active,
//! registration mid-transaction) and keeps the fd open; the daemon then closes and reopens
//! (R13). A socket cannot fail a peer's `send` with an errno, so the emulator **closes the
//! connection** instead, and the daemon sees a hang-up (`POLLHUP`, `EPIPE`), which is also a
//! reopen condition. Two consequences:
//!
//! - After a timeout the emulator closes the connection at once, rather than waiting for the
//!   late write: the daemon's late reply then fails (`EPIPE`), as the real write fails, but a
//!   daemon that polls its fd while working learns of the timeout earlier than on Linux.
//! - After the fake THAW of hibernation the connection stays open and is closed when the
//!   daemon writes; that write itself succeeds at the socket level and the daemon learns of
//!   the rejection at its next poll or write.
//!
//! Every step is recorded in an [`Event`] log for tests to assert on.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hv_vss_protocol::kernel::{self, DaemonMessage, KernelMsgError};
use hv_vss_protocol::{HvStatus, VssOperation};
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvFlags, SendFlags, Shutdown, SocketAddrUnix, SocketFlags, SocketType,
};

/// The kernel's reply deadlines for the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmulatorConfig {
    /// FREEZE (`VSS_FREEZE_TIMEOUT`, 15 min).
    pub freeze_timeout: Duration,
    /// THAW (`HV_UTIL_TIMEOUT`, 30 s).
    pub thaw_timeout: Duration,
    /// HOT_BACKUP (`HV_UTIL_TIMEOUT`, 30 s).
    pub hot_backup_timeout: Duration,
    /// The 4-byte value the handshake answers REGISTER1 with (129 from today's kernels;
    /// a daemon must accept any, wire §8.3).
    pub handshake_version: u32,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            freeze_timeout: Duration::from_secs(15 * 60),
            thaw_timeout: Duration::from_secs(30),
            hot_backup_timeout: Duration::from_secs(30),
            handshake_version: kernel::KERNEL_PROTOCOL_VERSION,
        }
    }
}

impl EmulatorConfig {
    /// The same deadline for every operation (short ones for tests).
    pub fn with_timeout(timeout: Duration) -> Self {
        Self {
            freeze_timeout: timeout,
            thaw_timeout: timeout,
            hot_backup_timeout: timeout,
            ..Self::default()
        }
    }

    /// The deadline for `op` (THAW's for anything but FREEZE and HOT_BACKUP).
    pub fn timeout_for(&self, op: VssOperation) -> Duration {
        match op {
            VssOperation::FREEZE => self.freeze_timeout,
            VssOperation::HOT_BACKUP => self.hot_backup_timeout,
            _ => self.thaw_timeout,
        }
    }
}

/// The driver's state as tests see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceState {
    /// No daemon connected.
    NoDaemon,
    /// Connected, not registered (INIT).
    Init,
    /// Registered, idle (READY).
    Ready,
    /// A request is waiting for the daemon's reply.
    InFlight(VssOperation),
}

/// Why the kernel answered the host E_FAIL itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// No registered daemon.
    NoDaemon,
    /// The daemon did not reply in time.
    Timeout,
    /// The daemon's connection closed (by the daemon, or by the emulator) mid-request.
    DaemonHungUp,
    /// Hibernation interrupted the request.
    Suspended,
}

/// What the host got back for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostOutcome {
    /// The daemon replied; its status went to the host verbatim.
    Replied(HvStatus),
    /// The kernel answered S_OK itself (operations it never forwards).
    AnsweredLocally,
    /// The kernel answered E_FAIL itself.
    Failed(FailReason),
}

impl HostOutcome {
    /// The status the host received.
    pub fn status(&self) -> HvStatus {
        match self {
            Self::Replied(status) => *status,
            Self::AnsweredLocally => HvStatus::S_OK,
            Self::Failed(_) => HvStatus::E_FAIL,
        }
    }

    /// True if the host received S_OK.
    pub fn is_ok(&self) -> bool {
        self.status().is_ok()
    }
}

/// Why the emulator closed the daemon's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// A write of the wrong length (the kernel's `EINVAL`).
    WrongLength(usize),
    /// A reply with no transaction active: late after a timeout, after hibernation's fake
    /// THAW, or unsolicited (the kernel's `EINVAL`).
    NotActive,
    /// A registration during a transaction (the kernel's `EINVAL`).
    RegisterMidTransaction,
    /// The daemon did not reply in time (see the module docs).
    Timeout,
    /// Fault injection: [`KernelEmulator::hang_up`] or an armed hang-up.
    Injected,
    /// The emulator is shutting down.
    Shutdown,
}

/// One entry of the event log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Time since the emulator started.
    pub at: Duration,
    /// What happened.
    pub kind: EventKind,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A daemon connected (opened the device).
    Connected {
        /// Connection number, from 1.
        conn: u64,
    },
    /// A second connection was closed at once (the kernel's `EBUSY`).
    ConnectionRefused,
    /// REGISTER1 answered with 129; the device is READY.
    Registered {
        /// Connection number.
        conn: u64,
    },
    /// Legacy REGISTER (128): no reply, device stays INIT.
    LegacyRegisterIgnored {
        /// Connection number.
        conn: u64,
    },
    /// REGISTER1 while already READY: ignored.
    ReRegisterIgnored {
        /// Connection number.
        conn: u64,
    },
    /// A host request arrived.
    HostRequest {
        /// Operation.
        op: VssOperation,
    },
    /// A request was sent to the daemon.
    Forwarded {
        /// Operation.
        op: VssOperation,
        /// Connection number.
        conn: u64,
    },
    /// The daemon replied in time.
    DaemonReplied {
        /// Operation.
        op: VssOperation,
        /// The daemon's status.
        status: HvStatus,
        /// Time from forwarding to reply.
        elapsed: Duration,
    },
    /// The reply deadline passed.
    TimedOut {
        /// Operation.
        op: VssOperation,
    },
    /// The host got its answer.
    HostAnswered {
        /// Operation.
        op: VssOperation,
        /// The answer.
        outcome: HostOutcome,
    },
    /// The daemon closed its connection.
    Disconnected {
        /// Connection number.
        conn: u64,
        /// The request it left unanswered, if any.
        in_flight: Option<VssOperation>,
    },
    /// The emulator closed the daemon's connection.
    ClosedByKernel {
        /// Connection number.
        conn: u64,
        /// Why.
        reason: CloseReason,
    },
    /// Hibernation's fake THAW was sent.
    FakeThawSent {
        /// Connection number.
        conn: u64,
    },
    /// Fault injection: raw bytes were sent.
    RawSent {
        /// The bytes.
        bytes: Vec<u8>,
    },
}

/// Errors starting the emulator.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// Creating, binding or listening on the socket failed.
    #[error("kernel emulator socket {path}: {source}")]
    Socket {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Creating the temporary directory or the thread failed.
    #[error("kernel emulator setup: {0}")]
    Setup(#[source] std::io::Error),
}

struct Conn {
    id: u64,
    fd: Arc<OwnedFd>,
    registered: bool,
}

struct Pending {
    id: u64,
    op: VssOperation,
    sent: Instant,
}

#[derive(Clone, Copy)]
enum Completion {
    Replied(HvStatus),
    HungUp,
    Suspended,
}

struct Inner {
    conn: Option<Conn>,
    conns_seen: u64,
    next_txn: u64,
    pending: Option<Pending>,
    completion: Option<(u64, Completion)>,
    /// After hibernation's fake THAW: the next daemon write is "not active".
    reject_next_write: bool,
    hang_up_after_forward: bool,
    events: Vec<Event>,
    shutdown: bool,
}

struct Shared {
    inner: Mutex<Inner>,
    changed: Condvar,
    request_serial: Mutex<()>,
    config: EmulatorConfig,
    started: Instant,
    stop: OwnedFd,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, inner: &mut Inner, kind: EventKind) {
        tracing::debug!(event = ?kind, "kernel emulator");
        inner.events.push(Event {
            at: self.started.elapsed(),
            kind,
        });
        self.changed.notify_all();
    }

    /// Closes the daemon's connection (shutdown both ways so the peer sees a hang-up even
    /// while the reader thread still holds the fd) and fails a pending request.
    fn close_conn(&self, inner: &mut Inner, reason: CloseReason) {
        if let Some(conn) = inner.conn.take() {
            let _ = rustix::net::shutdown(&*conn.fd, Shutdown::Both);
            self.record(
                inner,
                EventKind::ClosedByKernel {
                    conn: conn.id,
                    reason,
                },
            );
            self.fail_pending(inner, Completion::HungUp);
        }
    }

    fn fail_pending(&self, inner: &mut Inner, completion: Completion) {
        if let Some(pending) = inner.pending.take() {
            inner.completion = Some((pending.id, completion));
            self.changed.notify_all();
        }
    }

    fn send(fd: &OwnedFd, bytes: &[u8]) -> Result<(), Errno> {
        let sent = rustix::net::send(fd, bytes, SendFlags::NOSIGNAL | SendFlags::DONTWAIT)?;
        if sent == bytes.len() {
            Ok(())
        } else {
            Err(Errno::MSGSIZE)
        }
    }

    /// A daemon write, classified as `vss_on_msg` does.
    fn on_daemon_message(&self, inner: &mut Inner, bytes: &[u8]) {
        let Some(conn) = inner.conn.as_mut() else {
            return;
        };
        let conn_id = conn.id;
        match kernel::parse_daemon_message(bytes) {
            Err(KernelMsgError::WrongLength { len, .. }) => {
                self.close_conn(inner, CloseReason::WrongLength(len));
            }
            Ok(DaemonMessage::Register1) | Ok(DaemonMessage::Register)
                if inner.pending.is_some() =>
            {
                self.close_conn(inner, CloseReason::RegisterMidTransaction);
            }
            Ok(DaemonMessage::Register1) if conn.registered => {
                self.record(inner, EventKind::ReRegisterIgnored { conn: conn_id });
            }
            Ok(DaemonMessage::Register1) => {
                let reply = kernel::build_handshake_reply(self.config.handshake_version);
                if Self::send(&conn.fd, &reply).is_err() {
                    self.close_conn(inner, CloseReason::NotActive);
                    return;
                }
                conn.registered = true;
                self.record(inner, EventKind::Registered { conn: conn_id });
            }
            Ok(DaemonMessage::Register) => {
                self.record(inner, EventKind::LegacyRegisterIgnored { conn: conn_id });
            }
            Ok(DaemonMessage::Reply(status)) => {
                if std::mem::take(&mut inner.reject_next_write) {
                    self.close_conn(inner, CloseReason::NotActive);
                    return;
                }
                match inner.pending.take() {
                    Some(pending) => {
                        let elapsed = pending.sent.elapsed();
                        inner.completion = Some((pending.id, Completion::Replied(status)));
                        self.record(
                            inner,
                            EventKind::DaemonReplied {
                                op: pending.op,
                                status,
                                elapsed,
                            },
                        );
                    }
                    None => self.close_conn(inner, CloseReason::NotActive),
                }
            }
        }
    }

    fn on_daemon_closed(&self, inner: &mut Inner) {
        if let Some(conn) = inner.conn.take() {
            let in_flight = inner.pending.as_ref().map(|p| p.op);
            self.record(
                inner,
                EventKind::Disconnected {
                    conn: conn.id,
                    in_flight,
                },
            );
            inner.reject_next_write = false;
            self.fail_pending(inner, Completion::HungUp);
        }
    }
}

/// The kernel emulator. Runs its own thread; every method takes `&self` and may be called
/// from any thread (share it with `Arc` or scoped threads). Dropping it stops the thread.
pub struct KernelEmulator {
    shared: Arc<Shared>,
    path: PathBuf,
    thread: Option<JoinHandle<()>>,
    dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for KernelEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelEmulator")
            .field("path", &self.path)
            .field("state", &self.state())
            .finish()
    }
}

impl KernelEmulator {
    /// Starts an emulator listening on `hv_vss.sock` in a fresh temporary directory.
    pub fn start(config: EmulatorConfig) -> Result<Self, EmulatorError> {
        let dir = tempfile::Builder::new()
            .prefix("hv-vss-kernel-emu")
            .tempdir()
            .map_err(EmulatorError::Setup)?;
        let mut emulator = Self::start_at(dir.path().join("hv_vss.sock"), config)?;
        emulator.dir = Some(dir);
        Ok(emulator)
    }

    /// Starts an emulator listening on `path`, which must not exist yet.
    pub fn start_at(
        path: impl Into<PathBuf>,
        config: EmulatorConfig,
    ) -> Result<Self, EmulatorError> {
        let path = path.into();
        let socket_err = |e: Errno| EmulatorError::Socket {
            path: path.clone(),
            source: e.into(),
        };
        let listener = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(socket_err)?;
        let addr = SocketAddrUnix::new(&path).map_err(socket_err)?;
        rustix::net::bind(&listener, &addr).map_err(socket_err)?;
        rustix::net::listen(&listener, 8).map_err(socket_err)?;
        let stop = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| EmulatorError::Setup(e.into()))?;
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                conn: None,
                conns_seen: 0,
                next_txn: 0,
                pending: None,
                completion: None,
                reject_next_write: false,
                hang_up_after_forward: false,
                events: Vec::new(),
                shutdown: false,
            }),
            changed: Condvar::new(),
            request_serial: Mutex::new(()),
            config,
            started: Instant::now(),
            stop,
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("kernel-emulator".into())
            .spawn(move || serve(&thread_shared, &listener))
            .map_err(EmulatorError::Setup)?;
        Ok(Self {
            shared,
            path,
            thread: Some(thread),
            dir: None,
        })
    }

    /// The socket path to hand to the daemon (`KernelDevice::open`, `--device`).
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// The deadlines in use.
    pub fn config(&self) -> EmulatorConfig {
        self.shared.config
    }

    /// The current state.
    pub fn state(&self) -> DeviceState {
        let inner = self.shared.lock();
        match (&inner.conn, &inner.pending) {
            (None, _) => DeviceState::NoDaemon,
            (Some(_), Some(pending)) => DeviceState::InFlight(pending.op),
            (Some(conn), None) if conn.registered => DeviceState::Ready,
            (Some(_), None) => DeviceState::Init,
        }
    }

    /// Waits until a daemon is registered and idle; false on timeout.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |inner| {
            inner.conn.as_ref().is_some_and(|c| c.registered) && inner.pending.is_none()
        })
    }

    /// Waits until an event matching `pred` is in the log (including past ones) and returns
    /// the first such event; None on timeout.
    pub fn wait_for_event(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&EventKind) -> bool,
    ) -> Option<Event> {
        let mut found = None;
        self.wait_until(timeout, |inner| {
            found = inner.events.iter().find(|e| pred(&e.kind)).cloned();
            found.is_some()
        });
        found
    }

    fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&Inner) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut inner = self.shared.lock();
        loop {
            if done(&inner) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            inner = self
                .shared
                .changed
                .wait_timeout(inner, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// A snapshot of the event log.
    pub fn events(&self) -> Vec<Event> {
        self.shared.lock().events.clone()
    }

    /// The host sends `op`, routed as the kernel does: HOT_BACKUP, FREEZE and THAW go to the
    /// daemon; everything else is answered S_OK locally. Blocks until the host has its answer
    /// (at most the operation's deadline). Concurrent calls are served one at a time.
    pub fn host_request(&self, op: VssOperation) -> HostOutcome {
        match op {
            VssOperation::HOT_BACKUP | VssOperation::FREEZE | VssOperation::THAW => {
                self.forward_request(op)
            }
            _ => {
                let _serial = self.serialise();
                let mut inner = self.shared.lock();
                self.shared
                    .record(&mut inner, EventKind::HostRequest { op });
                let outcome = HostOutcome::AnsweredLocally;
                self.shared
                    .record(&mut inner, EventKind::HostAnswered { op, outcome });
                outcome
            }
        }
    }

    /// Forwards `op` to the daemon whatever it is (fault injection: unknown op codes) and
    /// waits for the answer with [`EmulatorConfig::timeout_for`] `op`.
    pub fn forward_request(&self, op: VssOperation) -> HostOutcome {
        let _serial = self.serialise();
        let shared = &*self.shared;
        let mut inner = shared.lock();
        shared.record(&mut inner, EventKind::HostRequest { op });
        let (mut inner, outcome) = self.forward_locked(inner, op);
        shared.record(&mut inner, EventKind::HostAnswered { op, outcome });
        outcome
    }

    fn serialise(&self) -> MutexGuard<'_, ()> {
        self.shared
            .request_serial
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn forward_locked<'a>(
        &'a self,
        mut inner: MutexGuard<'a, Inner>,
        op: VssOperation,
    ) -> (MutexGuard<'a, Inner>, HostOutcome) {
        let shared = &*self.shared;
        let Some(conn) = inner.conn.as_ref().filter(|c| c.registered) else {
            return (inner, HostOutcome::Failed(FailReason::NoDaemon));
        };
        let conn_id = conn.id;
        if Shared::send(&conn.fd, &kernel::build_request(op)).is_err() {
            shared.close_conn(&mut inner, CloseReason::NotActive);
            return (inner, HostOutcome::Failed(FailReason::DaemonHungUp));
        }
        inner.next_txn += 1;
        let id = inner.next_txn;
        let sent = Instant::now();
        inner.pending = Some(Pending { id, op, sent });
        inner.completion = None;
        shared.record(&mut inner, EventKind::Forwarded { op, conn: conn_id });
        if std::mem::take(&mut inner.hang_up_after_forward) {
            shared.close_conn(&mut inner, CloseReason::Injected);
        }
        let deadline = sent + shared.config.timeout_for(op);
        loop {
            if let Some((done_id, completion)) = inner.completion {
                if done_id == id {
                    inner.completion = None;
                    let outcome = match completion {
                        Completion::Replied(status) => HostOutcome::Replied(status),
                        Completion::HungUp => HostOutcome::Failed(FailReason::DaemonHungUp),
                        Completion::Suspended => HostOutcome::Failed(FailReason::Suspended),
                    };
                    return (inner, outcome);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || inner.shutdown {
                // The kernel answers E_FAIL and thaws nothing; the late write must fail, which
                // over a socket means closing the connection (module docs).
                inner.pending = None;
                shared.record(&mut inner, EventKind::TimedOut { op });
                shared.close_conn(&mut inner, CloseReason::Timeout);
                return (inner, HostOutcome::Failed(FailReason::Timeout));
            }
            inner = shared
                .changed
                .wait_timeout(inner, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Fault injection: sends `bytes` to the daemon as one message, whatever they are (wrong
    /// length, unknown op code). Changes no state. False if no daemon is connected or the
    /// send failed.
    pub fn send_raw(&self, bytes: &[u8]) -> bool {
        let mut inner = self.shared.lock();
        let Some(conn) = inner.conn.as_ref() else {
            return false;
        };
        let sent = Shared::send(&conn.fd, bytes).is_ok();
        if sent {
            self.shared.record(
                &mut inner,
                EventKind::RawSent {
                    bytes: bytes.to_vec(),
                },
            );
        }
        sent
    }

    /// Fault injection: closes the daemon's connection now (the device going away). A request
    /// in flight is answered E_FAIL ([`FailReason::DaemonHungUp`]). False if none connected.
    pub fn hang_up(&self) -> bool {
        let mut inner = self.shared.lock();
        let connected = inner.conn.is_some();
        self.shared.close_conn(&mut inner, CloseReason::Injected);
        connected
    }

    /// Fault injection: the next forwarded request is followed at once by a hang-up, so the
    /// daemon receives a request and then loses the device mid-request.
    pub fn hang_up_after_next_forward(&self) {
        self.shared.lock().hang_up_after_forward = true;
    }

    /// Hibernation: sends the daemon a fake THAW, forces READY (a request in flight is
    /// answered E_FAIL, [`FailReason::Suspended`]), and treats the daemon's next write as
    /// "transaction not active" (closing the connection). False if no daemon is registered.
    pub fn hibernate(&self) -> bool {
        let mut inner = self.shared.lock();
        let Some(conn) = inner.conn.as_ref().filter(|c| c.registered) else {
            return false;
        };
        let conn_id = conn.id;
        if Shared::send(&conn.fd, &kernel::build_request(VssOperation::THAW)).is_err() {
            self.shared.close_conn(&mut inner, CloseReason::NotActive);
            return false;
        }
        self.shared
            .record(&mut inner, EventKind::FakeThawSent { conn: conn_id });
        self.shared.fail_pending(&mut inner, Completion::Suspended);
        inner.reject_next_write = true;
        true
    }
}

impl Drop for KernelEmulator {
    fn drop(&mut self) {
        {
            let mut inner = self.shared.lock();
            inner.shutdown = true;
            self.shared.close_conn(&mut inner, CloseReason::Shutdown);
        }
        let _ = rustix::io::write(&self.shared.stop, &1u64.to_ne_bytes());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if self.dir.is_none() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The emulator thread: accepts daemons and reads their writes until stopped.
fn serve(shared: &Shared, listener: &OwnedFd) {
    // Bounds how long a connection change made by another thread goes unnoticed.
    let tick = Timespec {
        tv_sec: 0,
        tv_nsec: 50_000_000,
    };
    loop {
        let conn = {
            let inner = shared.lock();
            if inner.shutdown {
                return;
            }
            inner.conn.as_ref().map(|c| (c.id, Arc::clone(&c.fd)))
        };
        let mut fds = vec![
            PollFd::new(&shared.stop, PollFlags::IN),
            PollFd::new(listener, PollFlags::IN),
        ];
        if let Some((_, fd)) = &conn {
            fds.push(PollFd::new(&**fd, PollFlags::IN));
        }
        match rustix::event::poll(&mut fds, Some(&tick)) {
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(errno) => {
                tracing::error!(%errno, "kernel emulator poll failed");
                return;
            }
        }
        if !fds[0].revents().is_empty() {
            return;
        }
        let listener_ready = !fds[1].revents().is_empty();
        let conn_ready = fds.get(2).is_some_and(|fd| !fd.revents().is_empty());
        drop(fds);
        if listener_ready {
            accept(shared, listener);
        }
        if let (true, Some((id, fd))) = (conn_ready, conn) {
            read_daemon(shared, id, &fd);
        }
    }
}

fn accept(shared: &Shared, listener: &OwnedFd) {
    let fd = match rustix::net::accept_with(listener, SocketFlags::CLOEXEC) {
        Ok(fd) => fd,
        Err(Errno::AGAIN | Errno::INTR) => return,
        Err(errno) => {
            tracing::warn!(%errno, "kernel emulator accept failed");
            return;
        }
    };
    let mut inner = shared.lock();
    if inner.conn.is_some() || inner.shutdown {
        // The device open is exclusive: the kernel's EBUSY.
        let _ = rustix::net::shutdown(&fd, Shutdown::Both);
        shared.record(&mut inner, EventKind::ConnectionRefused);
        return;
    }
    inner.conns_seen += 1;
    let id = inner.conns_seen;
    inner.conn = Some(Conn {
        id,
        fd: Arc::new(fd),
        registered: false,
    });
    shared.record(&mut inner, EventKind::Connected { conn: id });
}

fn read_daemon(shared: &Shared, id: u64, fd: &OwnedFd) {
    let mut buf = [0u8; 64];
    let received = rustix::net::recv(fd.as_fd(), &mut buf, RecvFlags::DONTWAIT);
    let mut inner = shared.lock();
    if inner.conn.as_ref().map(|c| c.id) != Some(id) {
        return; // closed by another thread meanwhile
    }
    match received {
        Ok((_, 0)) => shared.on_daemon_closed(&mut inner),
        Ok((_, len)) => {
            let len = len.min(buf.len());
            shared.on_daemon_message(&mut inner, &buf[..len]);
        }
        Err(Errno::AGAIN | Errno::INTR) => {}
        Err(_) => shared.on_daemon_closed(&mut inner),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_deadlines_are_the_current_kernel_ones() {
        let config = EmulatorConfig::default();
        assert_eq!(
            config.timeout_for(VssOperation::FREEZE),
            Duration::from_secs(900)
        );
        assert_eq!(
            config.timeout_for(VssOperation::THAW),
            Duration::from_secs(30)
        );
        assert_eq!(
            config.timeout_for(VssOperation::HOT_BACKUP),
            Duration::from_secs(30)
        );
        let short = EmulatorConfig::with_timeout(Duration::from_millis(5));
        assert_eq!(
            short.timeout_for(VssOperation::FREEZE),
            Duration::from_millis(5)
        );
    }

    #[test]
    fn outcome_status_is_what_the_host_sees() {
        assert_eq!(HostOutcome::AnsweredLocally.status(), HvStatus::S_OK);
        assert_eq!(
            HostOutcome::Failed(FailReason::Timeout).status(),
            HvStatus::E_FAIL
        );
        assert_eq!(HostOutcome::Replied(HvStatus(7)).status(), HvStatus(7));
        assert!(!HostOutcome::Replied(HvStatus(7)).is_ok());
    }

    #[test]
    fn start_at_an_existing_path_fails_and_drop_removes_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let emu = KernelEmulator::start_at(&path, EmulatorConfig::default()).unwrap();
        assert_eq!(emu.state(), DeviceState::NoDaemon);
        assert!(matches!(
            KernelEmulator::start_at(&path, EmulatorConfig::default()),
            Err(EmulatorError::Socket { .. })
        ));
        drop(emu);
        assert!(!path.exists());
    }
}
