//! One connection to the app socket: connect, register, read events, ack.
//!
//! # Mechanism
//!
//! A blocking `UnixStream`. Reads go through the protocol crate's [`LineBuffer`], which
//! refuses a line longer than [`MAX_LINE`] before it is complete, so a daemon (or anything
//! else listening on the path) that sends endless bytes costs at most 64 KiB of memory and
//! ends in [`Error::Protocol`], never a panic. Daemon messages of a type protocol v1 does
//! not know are skipped, as the contract says. Writes have a timeout so a daemon that stops
//! reading cannot block the client forever.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hv_vss_app_protocol::{
    Ack, ClientMessage, DaemonMessage, LineBuffer, ProtocolError, Register, parse_daemon_line,
    validate_name,
};

use crate::Error;

/// The daemon's default app socket.
pub const DEFAULT_SOCKET: &str = "/run/hv-vss/app.sock";

/// How long a write (register, ack) may block before the connection is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a client introduces itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// Unique among live clients: 1–128 bytes, no control characters.
    pub name: String,
    /// 0–255; lower tiers are told to freeze first and thaw last. `None`: the daemon's
    /// default (100).
    pub tier: Option<u8>,
    /// The client's own bound per event; the daemon caps it by the host's deadline.
    pub timeout: Option<Duration>,
}

impl Registration {
    /// A registration with the daemon's default tier and timeout.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            tier: None,
            timeout: None,
        }
    }

    /// Sets the tier.
    pub fn tier(mut self, tier: u8) -> Self {
        self.tier = Some(tier);
        self
    }

    /// Sets the per-event timeout (sent in whole milliseconds, at least 1).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    fn message(&self) -> Result<ClientMessage, Error> {
        validate_name(&self.name).map_err(Error::InvalidRegistration)?;
        let timeout_ms = self
            .timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1));
        Ok(ClientMessage::Register(Register {
            name: self.name.clone(),
            tier: self.tier,
            timeout_ms,
        }))
    }
}

/// A request the client must answer with [`Connection::ack`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// The transaction to name in the ack.
    pub txn: u64,
    /// When the daemon stops waiting for the ack (its `deadline_ms` from the moment the
    /// event was read).
    pub deadline: Instant,
}

impl Request {
    /// Time left until the deadline (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// What the daemon told the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// May a backup start? Ack `ok: false` to veto it.
    Check(Request),
    /// Flush and hold, then ack; the filesystems freeze after every client acked ok.
    Freeze(Request),
    /// The filesystems are thawed: resume, then ack.
    Thaw(Request),
    /// The backup `txn` ended without a thaw (failed, timed out, auto-thawed, or the
    /// daemon restarted): release whatever is held. Never acked.
    Abort { txn: u64, reason: String },
    /// An ack matched nothing in flight (late, duplicate, wrong txn); it changed nothing.
    AckRejected { txn: u64, reason: String },
}

/// A connection to hv-vssd's app socket.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    lines: LineBuffer,
    path: PathBuf,
}

impl Connection {
    /// Connects to the socket at `path` (nothing is sent yet).
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path).map_err(|source| Error::Connect {
            path: path.clone(),
            source,
        })?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        Ok(Self {
            stream,
            lines: LineBuffer::new(),
            path,
        })
    }

    /// Connects and registers: the usual way to start.
    pub fn open(path: impl AsRef<Path>, registration: &Registration) -> Result<Self, Error> {
        let mut conn = Self::connect(path)?;
        conn.register(registration)?;
        Ok(conn)
    }

    /// The socket path this connection was made to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `register` and waits up to `WRITE_TIMEOUT` for `registered`. A refusal
    /// (`error`) is [`Error::Rejected`] with the daemon's message.
    pub fn register(&mut self, registration: &Registration) -> Result<(), Error> {
        let line = registration.message()?.to_line();
        self.stream.write_all(&line)?;
        let answer = self
            .read_message(Some(Instant::now() + WRITE_TIMEOUT))?
            .ok_or_else(|| Error::Unexpected("no answer to register".into()))?;
        match answer {
            DaemonMessage::Registered { name, .. } if name == registration.name => Ok(()),
            DaemonMessage::Registered { name, .. } => Err(Error::Unexpected(format!(
                "registered as {name:?}, asked for {:?}",
                registration.name
            ))),
            DaemonMessage::Error { message } => Err(Error::Rejected(message)),
            other => Err(Error::Unexpected(format!(
                "{other:?} before registration was confirmed"
            ))),
        }
    }

    /// Blocks until the next event.
    pub fn next_event(&mut self) -> Result<Event, Error> {
        loop {
            if let Some(event) = self.next_event_until(None)? {
                return Ok(event);
            }
        }
    }

    /// The next event, or `Ok(None)` if none arrived within `timeout`.
    pub fn next_event_timeout(&mut self, timeout: Duration) -> Result<Option<Event>, Error> {
        self.next_event_until(Some(Instant::now() + timeout))
    }

    fn next_event_until(&mut self, until: Option<Instant>) -> Result<Option<Event>, Error> {
        let Some(message) = self.read_message(until)? else {
            return Ok(None);
        };
        let received = Instant::now();
        let request = |txn: u64, deadline_ms: u64| Request {
            txn,
            deadline: received
                .checked_add(Duration::from_millis(deadline_ms))
                .unwrap_or(received + Duration::from_secs(24 * 3600)),
        };
        Ok(Some(match message {
            DaemonMessage::Check { txn, deadline_ms } => Event::Check(request(txn, deadline_ms)),
            DaemonMessage::Freeze { txn, deadline_ms } => Event::Freeze(request(txn, deadline_ms)),
            DaemonMessage::Thaw { txn, deadline_ms } => Event::Thaw(request(txn, deadline_ms)),
            DaemonMessage::Abort { txn, reason } => Event::Abort { txn, reason },
            DaemonMessage::AckRejected { txn, reason } => Event::AckRejected { txn, reason },
            DaemonMessage::Error { message } => return Err(Error::Daemon(message)),
            DaemonMessage::Registered { name, .. } => {
                return Err(Error::Unexpected(format!(
                    "a second registered ({name:?}) on one connection"
                )));
            }
        }))
    }

    /// Answers a check, freeze or thaw. `message` says why when `ok` is false.
    pub fn ack(&mut self, txn: u64, ok: bool, message: Option<&str>) -> Result<(), Error> {
        let line = ClientMessage::Ack(Ack {
            txn,
            ok,
            message: message.map(str::to_owned),
        })
        .to_line();
        self.stream.write_all(&line)?;
        Ok(())
    }

    /// The next known message, skipping unknown types; `Ok(None)` when `until` passed.
    fn read_message(&mut self, until: Option<Instant>) -> Result<Option<DaemonMessage>, Error> {
        loop {
            while let Some(line) = self.lines.next_line()? {
                match parse_daemon_line(&line) {
                    Ok(message) => return Ok(Some(message)),
                    Err(ProtocolError::UnknownType(kind)) => {
                        tracing::debug!(kind, "ignoring a daemon message of unknown type");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let timeout = match until {
                None => None,
                Some(t) => match t.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Ok(None),
                },
            };
            self.stream.set_read_timeout(timeout)?;
            let mut buf = [0u8; 8192];
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(Error::Closed),
                Ok(n) => self.lines.push(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(None);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}
