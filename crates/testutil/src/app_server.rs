//! A small app socket server for tests of clients: it speaks protocol v1 as the contract in
//! `hv-vss-app-protocol` documents it (register with unique names, `registered` or `error`
//! and close, acks recorded, unknown types answered with `error`), and lets the test decide
//! which events each client hears. It coordinates nothing: tests use it where the point is
//! the client's side of the protocol; the real hv-vssd is used end to end.
//!
//! [`TestAppServer::stop`] closes the listener and every connection and removes the socket,
//! as a daemon that exits does; [`TestAppServer::start`] on the same path brings it back.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hv_vss_app_protocol::{
    Ack, ClientMessage, DaemonMessage, LineBuffer, PROTOCOL_VERSION, Register, parse_client_line,
};

#[derive(Debug, Default)]
struct State {
    /// Live registered clients by name, with their connection's number.
    clients: HashMap<String, (u64, UnixStream)>,
    /// Connections accepted so far (numbers them).
    accepted: u64,
    /// Every accepted registration, in order (also those whose connection ended).
    registrations: Vec<Register>,
    /// Every ack, with the name of the client that sent it.
    acks: Vec<(String, Ack)>,
    /// Registrations refused (duplicate name or a bad first line).
    refused: usize,
    /// Every connection ever accepted (to close them on stop).
    streams: Vec<UnixStream>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An in-test app socket server.
#[derive(Debug)]
pub struct TestAppServer {
    path: PathBuf,
    shared: Arc<Shared>,
    stopping: Arc<AtomicBool>,
    accept_thread: Option<std::thread::JoinHandle<()>>,
}

impl TestAppServer {
    /// Listens on `path` (removed first if a stale socket is there).
    pub fn start(path: &Path) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let (s, stop) = (shared.clone(), stopping.clone());
        let accept_thread = std::thread::spawn(move || accept_loop(listener, s, stop));
        Ok(Self {
            path: path.to_path_buf(),
            shared,
            stopping,
            accept_thread: Some(accept_thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` until `name` is registered and connected.
    pub fn wait_registered(&self, name: &str, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| s.clients.contains_key(name))
    }

    /// Waits up to `timeout` until `name` has no live connection.
    pub fn wait_gone(&self, name: &str, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| !s.clients.contains_key(name))
    }

    /// Every accepted registration so far.
    pub fn registrations(&self) -> Vec<Register> {
        self.shared.lock().registrations.clone()
    }

    /// How many registrations were refused.
    pub fn refused(&self) -> usize {
        self.shared.lock().refused
    }

    /// Sends `message` to the live client `name`.
    pub fn send(&self, name: &str, message: &DaemonMessage) -> std::io::Result<()> {
        self.send_raw(name, &message.to_line())
    }

    /// Sends raw bytes to the live client `name` (to test what clients do with garbage).
    pub fn send_raw(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let mut stream = {
            let state = self.shared.lock();
            let stream = state.clients.get(name).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, format!("no client {name}"))
            })?;
            stream.1.try_clone()?
        };
        stream.write_all(bytes)
    }

    /// Waits up to `timeout` for an ack of `txn` from `name`.
    pub fn wait_ack(&self, name: &str, txn: u64, timeout: Duration) -> Option<Ack> {
        let mut found = None;
        self.wait_for(timeout, |s| {
            found = s
                .acks
                .iter()
                .find(|(n, a)| n == name && a.txn == txn)
                .map(|(_, a)| a.clone());
            found.is_some()
        });
        found
    }

    /// Every ack received so far, with the sender's name.
    pub fn acks(&self) -> Vec<(String, Ack)> {
        self.shared.lock().acks.clone()
    }

    /// Closes the listener and every connection, and removes the socket file.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
        let mut state = self.shared.lock();
        for s in state.streams.drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        state.clients.clear();
        drop(state);
        let _ = std::fs::remove_file(&self.path);
    }

    fn wait_for(&self, timeout: Duration, mut done: impl FnMut(&State) -> bool) -> bool {
        let end = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if done(&state) {
                return true;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for TestAppServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: UnixListener, shared: Arc<Shared>, stopping: Arc<AtomicBool>) {
    while !stopping.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let id = {
                    let mut state = shared.lock();
                    if let Ok(clone) = stream.try_clone() {
                        state.streams.push(clone);
                    }
                    state.accepted += 1;
                    state.accepted
                };
                let s = shared.clone();
                std::thread::spawn(move || serve_client(id, stream, s));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn reply(stream: &mut UnixStream, message: &DaemonMessage) {
    let _ = stream.write_all(&message.to_line());
}

fn serve_client(id: u64, mut stream: UnixStream, shared: Arc<Shared>) {
    let mut lines = LineBuffer::new();
    let mut name: Option<String> = None;
    let mut buf = [0u8; 4096];
    'conn: loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        lines.push(&buf[..n]);
        loop {
            let line = match lines.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(e) => {
                    reply(&mut stream, &error(e.to_string()));
                    break 'conn;
                }
            };
            let message = match parse_client_line(&line) {
                Ok(m) => m,
                Err(e) => {
                    reply(&mut stream, &error(e.to_string()));
                    break 'conn;
                }
            };
            match (message, &name) {
                (ClientMessage::Register(r), None) => {
                    let mut state = shared.lock();
                    if state.clients.contains_key(&r.name) {
                        state.refused += 1;
                        drop(state);
                        reply(
                            &mut stream,
                            &error(format!("name {:?} is taken by a live client", r.name)),
                        );
                        break 'conn;
                    }
                    let Ok(clone) = stream.try_clone() else {
                        break 'conn;
                    };
                    state.clients.insert(r.name.clone(), (id, clone));
                    state.registrations.push(r.clone());
                    name = Some(r.name.clone());
                    // Answered before the lock goes: a test's `send` to this client (which
                    // takes the lock) must not reach it ahead of its `Registered`.
                    reply(
                        &mut stream,
                        &DaemonMessage::Registered {
                            name: r.name,
                            protocol: PROTOCOL_VERSION,
                        },
                    );
                    drop(state);
                    shared.changed.notify_all();
                }
                (ClientMessage::Ack(ack), Some(n)) => {
                    shared.lock().acks.push((n.clone(), ack));
                    shared.changed.notify_all();
                }
                (ClientMessage::Register(_), Some(_)) => {
                    reply(&mut stream, &error("already registered".into()));
                    break 'conn;
                }
                (ClientMessage::Ack(_), None) => {
                    shared.lock().refused += 1;
                    reply(&mut stream, &error("register first".into()));
                    break 'conn;
                }
            }
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    if let Some(n) = name {
        let mut state = shared.lock();
        if state.clients.get(&n).is_some_and(|(i, _)| *i == id) {
            state.clients.remove(&n);
        }
        drop(state);
        shared.changed.notify_all();
    }
}

fn error(message: String) -> DaemonMessage {
    DaemonMessage::Error { message }
}
