//! Freeze-safe logging: a `tracing` writer that never touches a frozen disk.
//!
//! The stock `hv_vss_daemon` logged "op=FREEZE succeeded" through syslog while `/var` was
//! frozen and before replying; a stuck logger then blocked the daemon, which never replied or
//! thawed (microsoft/backupessentials#1). hv-vss therefore *holds* its log output from just
//! before the first FIFREEZE until after the last FITHAW (R60, R61): formatted lines go to a
//! bounded in-memory ring instead of stderr (which journald may be writing to a frozen
//! `/var`). Lines past the capacity are dropped and counted. [`LogGate::release`] writes the
//! held lines, then a line saying how many were dropped.
//!
//! # Design
//! The gate is a mutex around a small state; a writer holds it only to push one line, so a
//! logging call never waits on I/O while held. While open, lines go to the sink directly
//! (unbuffered, one `write_all` per line, so lines from threads do not interleave).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing_subscriber::fmt::MakeWriter;

/// Default capacity of the in-memory ring (open-vm-tools caches 4096 messages while frozen).
pub const DEFAULT_CAPACITY: usize = 4096;

type Sink = Box<dyn Write + Send>;

#[derive(Debug, Default)]
struct Held {
    lines: VecDeque<Vec<u8>>,
    dropped: u64,
}

struct GateState {
    held: Option<Held>,
    capacity: usize,
    sink: Sink,
}

/// The daemon's one log gate, for the paths that cannot be handed it: the fatal-exit path in
/// `main` and the guardian link's Drop (set once logging is up).
pub static GATE: std::sync::OnceLock<LogGate> = std::sync::OnceLock::new();

/// Shared switch between "write logs now" and "keep them in memory".
#[derive(Clone)]
pub struct LogGate {
    state: Arc<Mutex<GateState>>,
}

impl std::fmt::Debug for LogGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("LogGate")
            .field("held", &state.held.as_ref().map(|h| h.lines.len()))
            .field("capacity", &state.capacity)
            .finish()
    }
}

impl LogGate {
    /// A gate writing to stderr when open.
    pub fn stderr(capacity: usize) -> Self {
        Self::with_sink(Box::new(io::stderr()), capacity)
    }

    /// A gate writing to `sink` when open.
    pub fn with_sink(sink: Sink, capacity: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(GateState {
                held: None,
                capacity: capacity.max(1),
                sink,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        // A panic while holding the lock cannot leave the state inconsistent (every update is
        // a single push or swap), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts keeping lines in memory. Idempotent.
    pub fn hold(&self) {
        let mut state = self.lock();
        if state.held.is_none() {
            state.held = Some(Held::default());
        }
    }

    /// Whether lines are being kept in memory.
    pub fn is_held(&self) -> bool {
        self.lock().held.is_some()
    }

    /// Writes every held line to the sink, then a line counting the dropped ones, and goes
    /// back to writing directly. Returns `(written, dropped)`.
    pub fn release(&self) -> (usize, u64) {
        let mut state = self.lock();
        let Some(held) = state.held.take() else {
            return (0, 0);
        };
        let written = held.lines.len();
        for line in &held.lines {
            let _ = state.sink.write_all(line);
        }
        if held.dropped > 0 {
            let note = format!(
                "hv-vssd: {} log lines were dropped while filesystems were frozen\n",
                held.dropped
            );
            let _ = state.sink.write_all(note.as_bytes());
        }
        let _ = state.sink.flush();
        (written, held.dropped)
    }

    /// Takes the held lines and the count of dropped ones, and keeps holding (nothing
    /// reaches the sink): for handing them to a process that outlives this one while
    /// frozen. `None` if not held.
    pub fn take_held(&self) -> Option<(Vec<Vec<u8>>, u64)> {
        let mut state = self.lock();
        let held = state.held.as_mut()?;
        let dropped = std::mem::take(&mut held.dropped);
        Some((std::mem::take(&mut held.lines).into(), dropped))
    }

    fn emit(&self, line: Vec<u8>) {
        let mut state = self.lock();
        let capacity = state.capacity;
        match state.held.as_mut() {
            Some(held) if held.lines.len() < capacity => held.lines.push_back(line),
            Some(held) => held.dropped += 1,
            None => {
                let _ = state.sink.write_all(&line);
            }
        }
    }
}

/// One log line being formatted; handed to the gate when dropped.
#[derive(Debug)]
pub struct GateWriter {
    gate: LogGate,
    line: Vec<u8>,
}

impl Write for GateWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for GateWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.gate.emit(std::mem::take(&mut self.line));
        }
    }
}

impl<'a> MakeWriter<'a> for LogGate {
    type Writer = GateWriter;

    fn make_writer(&'a self) -> Self::Writer {
        GateWriter {
            gate: self.clone(),
            line: Vec::with_capacity(256),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use hv_vss_testutil::SharedBuf;

    fn line(gate: &LogGate, text: &str) {
        let mut w = gate.make_writer();
        w.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn open_gate_writes_through() {
        let sink = SharedBuf::default();
        let gate = LogGate::with_sink(Box::new(sink.clone()), 4);
        line(&gate, "a\n");
        assert_eq!(sink.text(), "a\n");
    }

    #[test]
    fn held_lines_wait_for_release_and_overflow_is_counted() {
        let sink = SharedBuf::default();
        let gate = LogGate::with_sink(Box::new(sink.clone()), 2);
        gate.hold();
        for t in ["1\n", "2\n", "3\n", "4\n"] {
            line(&gate, t);
        }
        assert_eq!(sink.text(), "", "nothing may reach the sink while held");
        assert_eq!(gate.release(), (2, 2));
        let text = sink.text();
        assert!(text.starts_with("1\n2\n"), "{text}");
        assert!(text.contains("2 log lines were dropped"), "{text}");
        assert!(!gate.is_held());
        line(&gate, "5\n");
        assert!(sink.text().ends_with("5\n"));
    }

    #[test]
    fn release_without_hold_is_a_no_op() {
        let sink = SharedBuf::default();
        let gate = LogGate::with_sink(Box::new(sink.clone()), 2);
        assert_eq!(gate.release(), (0, 0));
        assert_eq!(sink.text(), "");
    }
}
