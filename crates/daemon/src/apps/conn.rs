//! One client connection: non-blocking reads framed into lines, and an outbox of lines not
//! yet taken by the kernel.
//!
//! # Mechanism
//!
//! The loop never blocks on a client. Reads take what the socket has (at most
//! [`READ_BUDGET`] per wake-up, so one chatty client cannot starve the others) and frame it
//! with [`LineBuffer`] (64 KiB per line). Lines to send are queued and written when the
//! caller flushes (the loop does so at the end of every batch); what the socket does not
//! take waits in the outbox and is retried when the socket is writable. An outbox still
//! past the configured limit after a flush means the client does not read: it is
//! disconnected, which fails the stage it is in, instead of ever blocking the loop. The
//! limit is checked after each flush, so the outbox may pass it by what one batch queues
//! (for a client flooding bogus acks, the answers to at most [`READ_BUDGET`] bytes).
//!
//! Byte counters (`queued`, `written`) let the caller learn when a given line has been
//! handed to the kernel (see [`Conn::delivered`]).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use hv_vss_app_protocol::{DaemonMessage, LineBuffer, ProtocolError};

use super::listener::Peer;

/// Bytes read from one client per wake-up at most.
pub const READ_BUDGET: usize = 256 * 1024;

/// Why a connection ends.
#[derive(Debug)]
pub enum End {
    /// The client closed its end.
    Eof,
    /// A line longer than the protocol allows.
    TooLong,
    Io(io::Error),
}

/// The outbox is over its limit: the client does not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    pub pending: usize,
}

#[derive(Debug)]
pub struct Conn {
    stream: UnixStream,
    pub peer: Peer,
    lines: LineBuffer,
    outbox: VecDeque<u8>,
    max_pending: usize,
    /// Bytes ever queued / ever written.
    queued: u64,
    written: u64,
}

impl Conn {
    pub fn new(stream: UnixStream, peer: Peer, max_pending: usize) -> Self {
        Self {
            stream,
            peer,
            lines: LineBuffer::new(),
            outbox: VecDeque::new(),
            max_pending,
            queued: 0,
            written: 0,
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Whether the outbox waits for the socket to be writable.
    pub fn wants_write(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Reads what is available and returns the complete lines; `Err` once the connection
    /// must end (lines complete before the end are returned with it).
    pub fn read_lines(&mut self) -> (Vec<Vec<u8>>, Option<End>) {
        let mut lines = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let mut budget = READ_BUDGET;
        let mut end = None;
        while budget > 0 {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    end = Some(End::Eof);
                    break;
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    self.lines.push(&buf[..n]);
                    if let Err(e) = self.drain_lines(&mut lines) {
                        return (lines, Some(e));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    end = Some(End::Io(e));
                    break;
                }
            }
        }
        (lines, end)
    }

    fn drain_lines(&mut self, out: &mut Vec<Vec<u8>>) -> Result<(), End> {
        loop {
            match self.lines.next_line() {
                Ok(Some(line)) => out.push(line),
                Ok(None) => return Ok(()),
                Err(ProtocolError::TooLong) => return Err(End::TooLong),
                // LineBuffer only reports length.
                Err(_) => return Err(End::TooLong),
            }
        }
    }

    /// Queues `msg` (nothing is written until [`Conn::flush`], so the caller decides what
    /// happens first). Returns the byte offset at which the line ends (see
    /// [`Conn::delivered`]).
    pub fn queue(&mut self, msg: &DaemonMessage) -> u64 {
        let line = msg.to_line();
        self.outbox.extend(line.iter().copied());
        self.queued += line.len() as u64;
        self.queued
    }

    /// `Err` when more than the limit waits after a flush: the client does not read.
    pub fn check_pending(&self) -> Result<(), Overflow> {
        if self.outbox.len() > self.max_pending {
            return Err(Overflow {
                pending: self.outbox.len(),
            });
        }
        Ok(())
    }

    /// Writes as much of the outbox as the socket takes, without blocking.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.outbox.is_empty() {
            let (front, _) = self.outbox.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.outbox.drain(..n);
                    self.written += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Whether every byte up to `offset` (from [`Conn::queue`]) was handed to the kernel.
    pub fn delivered(&self, offset: u64) -> bool {
        self.written >= offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(max_pending: usize) -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let peer = Peer {
            pid: Some(std::process::id()),
            uid: 0,
            gid: 0,
            groups: None,
        };
        (Conn::new(a, peer, max_pending), b)
    }

    #[test]
    fn lines_are_framed_across_reads_and_eof_ends() {
        let (mut c, mut other) = pair(1024);
        other.write_all(b"{\"a\":1}\n{\"b\"").unwrap();
        let (lines, end) = c.read_lines();
        assert_eq!(lines, vec![b"{\"a\":1}".to_vec()]);
        assert!(end.is_none());
        other.write_all(b":2}\n").unwrap();
        drop(other);
        let (lines, end) = c.read_lines();
        assert_eq!(lines, vec![b"{\"b\":2}".to_vec()]);
        assert!(matches!(end, Some(End::Eof)));
    }

    #[test]
    fn an_oversize_line_ends_the_connection() {
        let (mut c, mut other) = pair(1024);
        std::thread::spawn(move || {
            let _ = other.write_all(&vec![b'x'; hv_vss_app_protocol::MAX_LINE + 10]);
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let (_, end) = c.read_lines();
            if let Some(e) = end {
                assert!(matches!(e, End::TooLong), "{e:?}");
                break;
            }
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn a_client_that_does_not_read_overflows_instead_of_blocking() {
        let (mut c, _other) = pair(64 * 1024);
        let msg = DaemonMessage::Error {
            message: "x".repeat(1000),
        };
        let mut overflowed = false;
        for _ in 0..10_000 {
            c.queue(&msg);
            c.flush().unwrap();
            if c.check_pending().is_err() {
                overflowed = true;
                break;
            }
        }
        assert!(overflowed);
        assert!(c.wants_write());
    }

    #[test]
    fn delivered_follows_what_the_kernel_took() {
        let (mut c, mut other) = pair(1024);
        let end = c.queue(&DaemonMessage::Registered {
            name: "n".into(),
            protocol: 1,
        });
        assert!(!c.delivered(end));
        c.flush().unwrap();
        assert!(c.delivered(end));
        let mut buf = [0u8; 128];
        let n = other.read(&mut buf).unwrap();
        assert_eq!(n as u64, end);
    }
}
