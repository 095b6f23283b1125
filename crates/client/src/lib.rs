//! A blocking client of hv-vssd's application socket (protocol v1: the contract is
//! docs/apps.md and the `hv-vss-app-protocol` crate's documentation).
//!
//! An application that takes part in backups registers under a unique name and then
//! hears, for each backup: `check` (may it start? answer `ok: false` to veto), `freeze`
//! (flush and hold, then ack; the filesystems freeze only after every client acked),
//! and then exactly one of `thaw` (filesystems are thawed: release, then ack) or `abort`
//! (the backup ended otherwise: release; no ack).
//!
//! Two levels:
//! - [`Connection`]: connect, [`Connection::register`], [`Connection::next_event`],
//!   [`Connection::ack`]. No threads, no retries.
//! - [`run`] / [`run_until`] with a [`Handler`]: the loop a long-running client wants. It
//!   reconnects with bounded exponential backoff when the daemon restarts or the socket is
//!   missing, registers again under the same name, and never leaves the application held
//!   when the connection is lost (see [`mod@run`] for the rules).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use hv_vss_client::{Config, Handler, HandlerResult, Registration, Request};
//!
//! struct Cache;
//!
//! impl Handler for Cache {
//!     fn on_freeze(&mut self, request: &Request) -> HandlerResult {
//!         // Write dirty state to disk and stop writing; return before request.deadline.
//!         println!("freeze {}: {:?} left", request.txn, request.remaining());
//!         Ok(())
//!     }
//!     fn on_thaw(&mut self, _request: &Request) -> HandlerResult {
//!         Ok(()) // resume writing
//!     }
//!     fn on_abort(&mut self, _txn: u64, _reason: &str) -> HandlerResult {
//!         Ok(()) // resume writing as well
//!     }
//! }
//!
//! let config = Config::new(Registration::new("cache").tier(50).timeout(Duration::from_secs(10)));
//! hv_vss_client::run(&config, &mut Cache)?;
//! # Ok::<(), hv_vss_client::Error>(())
//! ```

mod connection;
mod error;
pub mod run;

pub use connection::{Connection, DEFAULT_SOCKET, Event, Registration, Request};
pub use error::Error;
pub use hv_vss_app_protocol::{DEFAULT_TIER, MAX_LINE, PROTOCOL_VERSION, validate_name};
pub use run::{Backoff, Config, Handler, HandlerResult, run, run_until};
