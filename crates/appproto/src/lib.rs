//! The hv-vss application socket protocol, version 1: message types and line framing.
//!
//! # Contract
//!
//! hv-vssd listens on a Unix stream socket (default `/run/hv-vss/app.sock`). Each message is
//! one JSON object on one line: UTF-8, terminated by `\n`, at most [`MAX_LINE`] bytes
//! including the newline. Every object has a `"type"` string. Unknown fields are ignored in
//! both directions, so later versions may add fields; a message of an unknown type sent to
//! the daemon is answered with `{"type":"error",...}`, and a client ignores daemon messages
//! of a type it does not know.
//!
//! Client to daemon ([`ClientMessage`]):
//! - `{"type":"register","name":S,"tier":N?,"timeout_ms":N?}`: first message of every
//!   connection. `name` is unique among live clients (1–128 bytes, no control characters);
//!   `tier` 0–255 (default [`DEFAULT_TIER`]); `timeout_ms` bounds each of this client's acks
//!   (the daemon caps it by the host request's deadline).
//! - `{"type":"ack","txn":N,"ok":B,"message":S?}`: the answer to a check, freeze or thaw.
//!
//! Daemon to client ([`DaemonMessage`]):
//! - `{"type":"registered","name":S,"protocol":1}`, or `{"type":"error","message":S}` and
//!   the connection is closed.
//! - events `check`, `freeze`, `thaw` with `txn` and `deadline_ms` (milliseconds left to
//!   ack), and `abort` with `txn` and `reason` (never acked).
//! - `{"type":"ack_rejected","txn":N,"reason":S}`: an ack that matched nothing in flight
//!   (late, duplicate, wrong txn); it changed nothing.
//!
//! This crate is pure data: it parses and encodes lines and frames a byte stream into
//! lines. It does no I/O.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The protocol version this crate speaks, sent in `registered`.
pub const PROTOCOL_VERSION: u32 = 1;
/// The longest line either side may send, newline included.
pub const MAX_LINE: usize = 64 * 1024;
/// The tier of a client that does not name one. Lower tiers are told check and freeze
/// first, and thaw and abort last.
pub const DEFAULT_TIER: u8 = 100;
/// The longest client name, in bytes.
pub const MAX_NAME: usize = 128;

/// A message from a client to the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    Register(Register),
    Ack(Ack),
}

/// `{"type":"register",...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Register {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// `{"type":"ack",...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub txn: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What the daemon asks of a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The host asks whether a backup may start (HOT_BACKUP). `ok: false` vetoes it.
    Check,
    /// Flush and hold, then ack. Filesystems freeze only after every client acked ok.
    Freeze,
    /// Filesystems are thawed: resume, then ack.
    Thaw,
}

/// A message from the daemon to a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DaemonMessage {
    Registered {
        name: String,
        #[serde(default = "default_protocol")]
        protocol: u32,
    },
    Error {
        message: String,
    },
    Check {
        txn: u64,
        deadline_ms: u64,
    },
    Freeze {
        txn: u64,
        deadline_ms: u64,
    },
    Thaw {
        txn: u64,
        deadline_ms: u64,
    },
    Abort {
        txn: u64,
        reason: String,
    },
    AckRejected {
        txn: u64,
        reason: String,
    },
}

fn default_protocol() -> u32 {
    PROTOCOL_VERSION
}

impl DaemonMessage {
    /// The event for `kind`.
    pub fn event(kind: EventKind, txn: u64, deadline_ms: u64) -> Self {
        match kind {
            EventKind::Check => DaemonMessage::Check { txn, deadline_ms },
            EventKind::Freeze => DaemonMessage::Freeze { txn, deadline_ms },
            EventKind::Thaw => DaemonMessage::Thaw { txn, deadline_ms },
        }
    }

    /// `(kind, txn, deadline_ms)` when this is a check, freeze or thaw event.
    pub fn as_event(&self) -> Option<(EventKind, u64, u64)> {
        match *self {
            DaemonMessage::Check { txn, deadline_ms } => Some((EventKind::Check, txn, deadline_ms)),
            DaemonMessage::Freeze { txn, deadline_ms } => {
                Some((EventKind::Freeze, txn, deadline_ms))
            }
            DaemonMessage::Thaw { txn, deadline_ms } => Some((EventKind::Thaw, txn, deadline_ms)),
            _ => None,
        }
    }

    /// The line to send: compact JSON and `\n`.
    pub fn to_line(&self) -> Vec<u8> {
        to_line(self)
    }
}

impl ClientMessage {
    /// The line to send: compact JSON and `\n`.
    pub fn to_line(&self) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum Wire<'a> {
            Register(&'a Register),
            Ack(&'a Ack),
        }
        match self {
            ClientMessage::Register(r) => to_line(&Wire::Register(r)),
            ClientMessage::Ack(a) => to_line(&Wire::Ack(a)),
        }
    }
}

fn to_line<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail (string keys, no maps with other keys).
    let mut line = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

/// Why a line could not be taken.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ProtocolError {
    #[error("line is longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("line is not UTF-8")]
    NotUtf8,
    #[error("line is not a JSON object: {0}")]
    NotJson(String),
    #[error("message has no \"type\" string")]
    NoType,
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("bad {kind} message: {detail}")]
    BadField { kind: &'static str, detail: String },
}

#[derive(Deserialize)]
struct RegisterWire {
    name: String,
    #[serde(default)]
    tier: Option<u64>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// Checks a client name: 1–[`MAX_NAME`] bytes, no control characters.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name must not be empty".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!("name is longer than {MAX_NAME} bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err("name must not contain control characters".into());
    }
    Ok(())
}

fn object_of(line: &[u8]) -> Result<(String, serde_json::Value), ProtocolError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    if line.len() >= MAX_LINE {
        return Err(ProtocolError::TooLong);
    }
    let text = std::str::from_utf8(line).map_err(|_| ProtocolError::NotUtf8)?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ProtocolError::NotJson(e.to_string()))?;
    if !value.is_object() {
        return Err(ProtocolError::NotJson("not an object".into()));
    }
    let kind = value
        .get("type")
        .and_then(serde_json::Value::as_str)
        .ok_or(ProtocolError::NoType)?
        .to_owned();
    Ok((kind, value))
}

/// Parses one line from a client (the trailing `\n` is optional).
pub fn parse_client_line(line: &[u8]) -> Result<ClientMessage, ProtocolError> {
    let (kind, value) = object_of(line)?;
    match kind.as_str() {
        "register" => {
            let r: RegisterWire =
                serde_json::from_value(value).map_err(|e| ProtocolError::BadField {
                    kind: "register",
                    detail: e.to_string(),
                })?;
            validate_name(&r.name).map_err(|detail| ProtocolError::BadField {
                kind: "register",
                detail,
            })?;
            let tier = match r.tier {
                None => None,
                Some(t) => Some(u8::try_from(t).map_err(|_| ProtocolError::BadField {
                    kind: "register",
                    detail: format!("tier {t} is not in 0-255"),
                })?),
            };
            if r.timeout_ms == Some(0) {
                return Err(ProtocolError::BadField {
                    kind: "register",
                    detail: "timeout_ms must be at least 1".into(),
                });
            }
            Ok(ClientMessage::Register(Register {
                name: r.name,
                tier,
                timeout_ms: r.timeout_ms,
            }))
        }
        "ack" => serde_json::from_value::<Ack>(value)
            .map(ClientMessage::Ack)
            .map_err(|e| ProtocolError::BadField {
                kind: "ack",
                detail: e.to_string(),
            }),
        _ => Err(ProtocolError::UnknownType(kind)),
    }
}

/// Parses one line from the daemon (the trailing `\n` is optional). A well-formed message
/// of a type this version does not know is [`ProtocolError::UnknownType`]: clients skip it.
pub fn parse_daemon_line(line: &[u8]) -> Result<DaemonMessage, ProtocolError> {
    let (kind, value) = object_of(line)?;
    const KNOWN: [&str; 7] = [
        "registered",
        "error",
        "check",
        "freeze",
        "thaw",
        "abort",
        "ack_rejected",
    ];
    let Some(known) = KNOWN.iter().find(|k| **k == kind) else {
        return Err(ProtocolError::UnknownType(kind));
    };
    serde_json::from_value(value).map_err(|e| ProtocolError::BadField {
        kind: known,
        detail: e.to_string(),
    })
}

/// Splits a byte stream into lines of at most [`MAX_LINE`] bytes.
///
/// Bytes go in with [`LineBuffer::push`]; complete lines (without the `\n`) come out of
/// [`LineBuffer::next_line`]. A line that grows past the limit before its newline is
/// [`ProtocolError::TooLong`]: the peer broke the contract and the connection should end.
#[derive(Debug, Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
    /// How far `buf` has been searched for a newline.
    scanned: usize,
}

impl LineBuffer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that are not yet a whole line.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete line, `Ok(None)` if none is complete yet.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, ProtocolError> {
        match self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let end = self.scanned + i;
                if end + 1 > MAX_LINE {
                    return Err(ProtocolError::TooLong);
                }
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                self.scanned = 0;
                Ok(Some(line))
            }
            None => {
                self.scanned = self.buf.len();
                if self.buf.len() >= MAX_LINE {
                    Err(ProtocolError::TooLong)
                } else {
                    Ok(None)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
