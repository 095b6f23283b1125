//! The long-running client loop: connect, register, hand every event to a [`Handler`],
//! ack, and reconnect when the daemon goes away.
//!
//! # Mechanism
//!
//! - **Reconnect.** A missing socket, a refused connect, a closed or broken connection and
//!   a daemon that sends garbage all lead to a new connect after a pause that doubles from
//!   [`Backoff::initial`] up to [`Backoff::max`], and starts over after each successful
//!   registration. The client registers again under the same name, so a restarted daemon
//!   recognises it and sends the abort it owes first.
//! - **Holding across a lost connection.** A client that acked freeze holds (a lock, a
//!   paused writer) until thaw or abort. If the connection is lost while holding, the loop
//!   calls [`Handler::on_abort`] at once with reason [`CONNECTION_LOST`]: the daemon that
//!   asked for the hold is gone, its guardian thaws the filesystems, and its successor
//!   aborts that backup anyway. That later abort for the same txn is then not passed on a
//!   second time. An abort for a txn this process never froze (the client itself was
//!   restarted) is passed on: the handler releases whatever it holds, which may be nothing.
//! - **Stop.** [`run_until`] polls a flag between reads (every [`POLL`]); when it is set
//!   while holding, the handler's `on_abort` runs with reason [`STOPPING`] before the
//!   connection closes, so stopping the client never leaves an application held.
//! - **Fatal errors.** An invalid name ends the loop, and so does a refused registration
//!   (the name is taken by a live client) on the first connect: retrying would not change
//!   it. Once registered, a refusal on a reconnect is retried with the backoff: the daemon
//!   may not have noticed yet that the old connection under that name ended.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{Connection, DEFAULT_SOCKET, Error, Event, Registration, Request};

/// Reason passed to [`Handler::on_abort`] when the connection is lost while holding.
pub const CONNECTION_LOST: &str = "connection to hv-vssd lost while holding";
/// Reason passed to [`Handler::on_abort`] when [`run_until`] stops while holding.
pub const STOPPING: &str = "client stopping while holding";
/// How often [`run_until`] looks at its stop flag while waiting.
pub const POLL: Duration = Duration::from_millis(100);

/// What a handler returns: `Err` becomes an `ok: false` ack whose message is the error's
/// text (a veto on check and freeze).
pub type HandlerResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The application's side of the protocol.
///
/// Each method runs on the loop's thread and should return before the request's
/// [`Request::deadline`]; an ack after the deadline is rejected by the daemon (the stage
/// already failed). `on_abort` must be idempotent: it may come for a txn this process
/// did not freeze, or after a freeze that the handler itself failed.
pub trait Handler {
    /// The host asks whether a backup may start. The default allows it.
    fn on_check(&mut self, request: &Request) -> HandlerResult {
        let _ = request;
        Ok(())
    }
    /// Flush and hold until `on_thaw` or `on_abort`, then return `Ok`.
    fn on_freeze(&mut self, request: &Request) -> HandlerResult;
    /// The filesystems are thawed: release the hold.
    fn on_thaw(&mut self, request: &Request) -> HandlerResult;
    /// The backup `txn` ended without a thaw: release the hold if any. Not acked; an
    /// `Err` is only logged.
    fn on_abort(&mut self, txn: u64, reason: &str) -> HandlerResult;
}

/// Pauses between reconnect attempts: doubling from `initial` to at most `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The pause after `attempt` consecutive failures (0: the first).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// How [`run`] connects.
#[derive(Clone, Debug)]
pub struct Config {
    /// The daemon's app socket.
    pub socket: std::path::PathBuf,
    pub registration: Registration,
    pub backoff: Backoff,
}

impl Config {
    /// `registration` on the default socket with the default backoff.
    pub fn new(registration: Registration) -> Self {
        Self {
            socket: DEFAULT_SOCKET.into(),
            registration,
            backoff: Backoff::default(),
        }
    }
}

/// Serves `handler` forever; returns only on a fatal error (see the module docs).
pub fn run(config: &Config, handler: &mut impl Handler) -> Result<(), Error> {
    run_until(config, handler, &AtomicBool::new(false))
}

/// Serves `handler` until `stop` is set (then `Ok`), or a fatal error.
pub fn run_until(
    config: &Config,
    handler: &mut impl Handler,
    stop: &AtomicBool,
) -> Result<(), Error> {
    let mut state = LoopState::default();
    let mut failures = 0u32;
    let mut registered_once = false;
    while !stop.load(Ordering::SeqCst) {
        match Connection::open(&config.socket, &config.registration) {
            Ok(mut conn) => {
                failures = 0;
                registered_once = true;
                tracing::info!(
                    socket = %config.socket.display(),
                    name = config.registration.name,
                    "registered with hv-vssd"
                );
                let result = serve(&mut conn, handler, &mut state, stop);
                state.release_if_held(
                    handler,
                    if stop.load(Ordering::SeqCst) {
                        STOPPING
                    } else {
                        CONNECTION_LOST
                    },
                );
                match result {
                    Ok(()) => return Ok(()),
                    Err(e) if e.is_transient() => {
                        tracing::warn!(error = %e, "app socket connection ended; reconnecting");
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) if e.is_transient() || (registered_once && matches!(e, Error::Rejected(_))) => {
                if failures == 0 {
                    tracing::warn!(error = %e, "cannot register with hv-vssd; retrying");
                }
                let pause = config.backoff.delay(failures);
                failures = failures.saturating_add(1);
                sleep_unless_stopped(pause, stop);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What the loop remembers across connections.
#[derive(Debug, Default)]
struct LoopState {
    /// The txn whose freeze the handler acked ok and that is neither thawed nor aborted.
    held: Option<u64>,
    /// A txn this loop aborted itself (connection lost while holding): the daemon's own
    /// abort for it is not passed on again.
    released_locally: Option<u64>,
}

impl LoopState {
    fn release_if_held(&mut self, handler: &mut impl Handler, reason: &str) {
        if let Some(txn) = self.held.take() {
            tracing::warn!(txn, reason, "releasing the hold");
            if let Err(e) = handler.on_abort(txn, reason) {
                tracing::error!(txn, error = %e, "abort handler failed");
            }
            self.released_locally = Some(txn);
        }
    }
}

fn serve(
    conn: &mut Connection,
    handler: &mut impl Handler,
    state: &mut LoopState,
    stop: &AtomicBool,
) -> Result<(), Error> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some(event) = conn.next_event_timeout(POLL)? else {
            continue;
        };
        match event {
            Event::Check(req) => {
                let result = handler.on_check(&req);
                send_ack(conn, &req, "check", result)?;
            }
            Event::Freeze(req) => {
                let result = handler.on_freeze(&req);
                if result.is_ok() {
                    state.held = Some(req.txn);
                }
                send_ack(conn, &req, "freeze", result)?;
            }
            Event::Thaw(req) => {
                if state.held == Some(req.txn) {
                    state.held = None;
                }
                let result = handler.on_thaw(&req);
                send_ack(conn, &req, "thaw", result)?;
            }
            Event::Abort { txn, reason } => {
                if state.held == Some(txn) {
                    state.held = None;
                } else if state.released_locally == Some(txn) {
                    tracing::info!(txn, reason, "abort for a hold already released");
                    continue;
                }
                tracing::info!(txn, reason, "backup aborted");
                if let Err(e) = handler.on_abort(txn, &reason) {
                    tracing::error!(txn, error = %e, "abort handler failed");
                }
            }
            Event::AckRejected { txn, reason } => {
                tracing::warn!(txn, reason, "hv-vssd rejected an ack");
            }
        }
    }
}

fn send_ack(
    conn: &mut Connection,
    req: &Request,
    stage: &str,
    result: HandlerResult,
) -> Result<(), Error> {
    match result {
        Ok(()) => conn.ack(req.txn, true, None),
        Err(e) => {
            let message = e.to_string();
            tracing::warn!(txn = req.txn, stage, error = message, "acking not ok");
            conn.ack(req.txn, false, Some(&message))
        }
    }
}

fn sleep_unless_stopped(pause: Duration, stop: &AtomicBool) {
    let end = Instant::now() + pause;
    while !stop.load(Ordering::SeqCst) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(POLL));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound_and_never_overflows() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        let delays: Vec<u64> = (0..8).map(|i| b.delay(i).as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(5));
        let huge = Backoff {
            initial: Duration::MAX,
            max: Duration::MAX,
        };
        assert_eq!(huge.delay(40), Duration::MAX);
    }
}
