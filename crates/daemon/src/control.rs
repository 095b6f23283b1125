//! The read-only control socket, `STATE_DIR/control.sock`: `hv-vss status` asks the running
//! daemon what only it knows (transport, negotiated versions, coordinator state, the
//! deadline of a freeze, registered applications).
//!
//! Protocol: one connection, one request, one answer, each a JSON object on one line:
//! `{"request":"status"}` → the [`StatusAnswer`] object, or `{"error":"..."}`. Nothing can
//! be changed through it.
//!
//! Who may ask: root, and the members of `control_group` when it is configured (the socket
//! is then `0660 root:GROUP` and the state directory is made group-traversable). The peer
//! is checked again with its kernel credentials (uid 0, or the group as its primary or
//! supplementary group: [`crate::apps::listener::Peer`]).
//!
//! It must never hold up the main loop, which may be serving a FREEZE: the listener is
//! non-blocking, each connection gets [`IO_TIMEOUT`] to send its request and take its
//! answer, and at most [`MAX_PER_WAKE`] connections are served per wake-up. Refusals are
//! logged at most once per [`DENIED_LOG_INTERVAL`] (local clients can trigger them); like
//! every log line they go through the log gate, held while frozen.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

/// File name inside the state directory.
pub const CONTROL_SOCKET: &str = "control.sock";
/// How long one client may take to send its request and read the answer.
pub const IO_TIMEOUT: Duration = Duration::from_millis(100);
/// Connections served per wake-up; the rest wait for the next one.
pub const MAX_PER_WAKE: usize = 8;
/// A request is one short line.
const MAX_REQUEST: u64 = 4096;
const DENIED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What the running daemon says about itself.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StatusAnswer {
    pub version: &'static str,
    pub pid: u32,
    /// `drop-in` or `uio`.
    pub mode: &'static str,
    /// The device or socket path.
    pub transport: String,
    /// Open and registered now (false while it is being reopened).
    pub transport_up: bool,
    /// `{"framework": "3.0", "message": "5.0"}` in UIO mode once negotiated.
    pub negotiated: Option<serde_json::Value>,
    /// The coordinator's state (`idle`, `checking`, `freezing_fs`, `frozen`, ...).
    pub state: String,
    /// Something of ours is frozen now.
    pub frozen: bool,
    /// When the current request's deadline or the auto-thaw runs out (Unix ms).
    pub deadline_unix_ms: Option<u64>,
    /// Registered participants (application clients and hooks).
    pub apps: Vec<AppInfo>,
    /// Log lines dropped while frozen since the daemon started.
    pub log_lines_dropped: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AppInfo {
    pub name: String,
    pub tier: u8,
}

/// The listening socket.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    group: Option<u32>,
    denied_logged: Option<Instant>,
}

impl ControlServer {
    /// Binds `STATE_DIR/control.sock` (a stale socket there is replaced; anything else is
    /// an error).
    pub fn bind(state_dir: &Path, group: Option<u32>) -> std::io::Result<Self> {
        let path = state_dir.join(CONTROL_SOCKET);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
                std::fs::remove_file(&path)?;
            }
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "{} exists and is not a socket",
                    path.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        let mode = if group.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = group {
            let gid = rustix::fs::Gid::from_raw(gid);
            rustix::fs::chown(&path, None, Some(gid))?;
            // Members must be able to reach the socket: traverse, not list.
            rustix::fs::chown(state_dir, None, Some(gid))?;
            let dir_mode = std::fs::metadata(state_dir)?.permissions().mode() | 0o010;
            std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(dir_mode))?;
        }
        Ok(Self {
            listener,
            path,
            group,
            denied_logged: None,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Serves the waiting connections with `answer()`.
    pub fn serve(&mut self, answer: impl Fn() -> StatusAnswer) {
        for _ in 0..MAX_PER_WAKE {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(_) => return,
            };
            if !self.allowed(&stream) {
                let now = Instant::now();
                if self
                    .denied_logged
                    .is_none_or(|t| now.duration_since(t) >= DENIED_LOG_INTERVAL)
                {
                    self.denied_logged = Some(now);
                    tracing::warn!(path = %self.path.display(), "control socket: a client that is neither root nor in control_group was refused");
                }
                let _ = reply(&stream, &serde_json::json!({"error": "permission denied"}));
                continue;
            }
            let _ = handle(&stream, &answer);
        }
    }

    fn allowed(&self, stream: &UnixStream) -> bool {
        let Ok(peer) = crate::apps::listener::Peer::of(stream) else {
            return false;
        };
        if peer.uid == 0 {
            return true;
        }
        self.group.is_some_and(|gid| peer.in_group(gid))
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn reply(stream: &UnixStream, value: &impl Serialize) -> std::io::Result<()> {
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    (&*stream).write_all(&line)
}

fn handle(stream: &UnixStream, answer: &impl Fn() -> StatusAnswer) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut line = Vec::new();
    BufReader::new(std::io::Read::take(stream, MAX_REQUEST)).read_until(b'\n', &mut line)?;
    match parse_request(&String::from_utf8_lossy(&line)) {
        Ok(()) => reply(stream, &answer()),
        Err(e) => reply(stream, &serde_json::json!({ "error": e })),
    }
}

/// The one request there is: `{"request":"status"}`.
pub fn parse_request(line: &str) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(line.trim()).map_err(|e| format!("not a JSON request: {e}"))?;
    match value.get("request").and_then(|r| r.as_str()) {
        Some("status") => Ok(()),
        Some(other) => Err(format!(
            "unknown request {other:?}: the only one is \"status\""
        )),
        None => Err("no \"request\" field: send {\"request\":\"status\"}".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> StatusAnswer {
        StatusAnswer {
            version: "0",
            pid: 1,
            mode: "uio",
            transport: "/dev/uio0".into(),
            transport_up: true,
            negotiated: None,
            state: "idle".into(),
            frozen: false,
            deadline_unix_ms: None,
            apps: vec![AppInfo {
                name: "pg".into(),
                tier: 1,
            }],
            log_lines_dropped: 0,
        }
    }

    fn ask(path: &Path, request: &[u8]) -> serde_json::Value {
        let mut s = UnixStream::connect(path).unwrap();
        s.write_all(request).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn one_request_one_answer_and_bad_requests_get_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut server = ControlServer::bind(dir.path(), None).unwrap();
        let path = dir.path().join(CONTROL_SOCKET);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let client = std::thread::spawn({
            let path = path.clone();
            move || {
                (
                    ask(&path, b"{\"request\":\"status\"}\n"),
                    ask(&path, b"{\"request\":\"thaw\"}\n"),
                    ask(&path, b"\xff garbage\n"),
                )
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !client.is_finished() && Instant::now() < deadline {
            server.serve(answer);
            std::thread::sleep(Duration::from_millis(5));
        }
        let (ok, unknown, garbage) = client.join().unwrap();
        assert_eq!(ok["apps"][0]["name"], "pg");
        assert_eq!(ok["mode"], "uio");
        assert!(
            unknown["error"]
                .as_str()
                .unwrap()
                .contains("unknown request")
        );
        assert!(garbage["error"].is_string());
        drop(server);
        assert!(!path.exists(), "the socket is removed on drop");
    }

    /// A client that connects and sends nothing does not keep the loop: serve returns (its
    /// read times out) and the next client is answered.
    #[test]
    fn a_silent_client_does_not_hold_the_loop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONTROL_SOCKET);
        let mut server = ControlServer::bind(dir.path(), None).unwrap();
        let silent = UnixStream::connect(&path).unwrap();
        let server = hv_vss_testutil::run_with_timeout(Duration::from_secs(10), move || {
            server.serve(answer);
            server
        });
        drop(silent);
        let mut server = server;
        let client = std::thread::spawn(move || ask(&path, b"{\"request\":\"status\"}\n"));
        while !client.is_finished() {
            server.serve(answer);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(client.join().unwrap()["state"], "idle");
    }

    #[test]
    fn anything_but_a_stale_socket_at_the_path_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONTROL_SOCKET), "mine").unwrap();
        assert!(ControlServer::bind(dir.path(), None).is_err());
        assert_eq!(
            std::fs::read_to_string(dir.path().join(CONTROL_SOCKET)).unwrap(),
            "mine"
        );
    }
}
