//! A protocol v1 application client of the real daemon, on a plain blocking `UnixStream`
//! speaking through hv-vss-app-protocol: what the app and fault suites connect with.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use hv_vss_app_protocol::{
    Ack, ClientMessage, DaemonMessage, EventKind, LineBuffer, Register, parse_daemon_line,
};

/// How long a connect retries while the socket is not there yet, and how long a client
/// waits for the answer to its registration.
pub const APP_READY: Duration = Duration::from_secs(15);

/// Why no message came.
#[derive(Debug, PartialEq, Eq)]
pub enum Silence {
    Timeout,
    Closed,
}

/// One client connection.
pub struct AppClient {
    /// The socket itself, for tests that write raw or partial lines.
    pub stream: UnixStream,
    lines: LineBuffer,
}

impl AppClient {
    /// Connects, retrying while the socket is not there yet.
    pub fn connect(path: &Path) -> AppClient {
        let deadline = Instant::now() + APP_READY;
        loop {
            match UnixStream::connect(path) {
                Ok(stream) => {
                    return AppClient {
                        stream,
                        lines: LineBuffer::new(),
                    };
                }
                Err(e) if Instant::now() >= deadline => panic!("connect {}: {e}", path.display()),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Connects and registers; panics unless the answer is `registered` (protocol 1).
    pub fn register(
        path: &Path,
        name: &str,
        tier: Option<u8>,
        timeout_ms: Option<u64>,
    ) -> AppClient {
        let mut app = AppClient::connect(path);
        app.send(&ClientMessage::Register(Register {
            name: name.into(),
            tier,
            timeout_ms,
        }));
        match app.next(APP_READY) {
            Ok(DaemonMessage::Registered { name: n, protocol }) => {
                assert_eq!((n.as_str(), protocol), (name, 1));
            }
            other => panic!("{name}: expected registered, got {other:?}"),
        }
        app
    }

    pub fn send(&mut self, msg: &ClientMessage) {
        self.send_raw(&msg.to_line());
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Acks `txn`; a refusal carries a message.
    pub fn ack(&mut self, txn: u64, ok: bool) {
        self.send(&ClientMessage::Ack(Ack {
            txn,
            ok,
            message: (!ok).then(|| "not now".into()),
        }));
    }

    /// The next message within `limit`.
    pub fn next(&mut self, limit: Duration) -> Result<DaemonMessage, Silence> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.lines.next_line().unwrap() {
                return Ok(parse_daemon_line(&line).unwrap());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Silence::Timeout);
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(Silence::Closed),
                Ok(n) => self.lines.push(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Err(Silence::Closed);
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The next message within `limit` must be the event `kind`: its `(txn, deadline_ms)`.
    pub fn expect_event_within(&mut self, kind: EventKind, limit: Duration) -> (u64, u64) {
        let msg = self.next(limit);
        match msg.as_ref().ok().and_then(DaemonMessage::as_event) {
            Some((k, txn, deadline_ms)) if k == kind => (txn, deadline_ms),
            _ => panic!("expected {kind:?}, got {msg:?}"),
        }
    }
}
