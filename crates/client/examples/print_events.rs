//! A client that takes part in every backup and prints what it is told and when.
//!
//! ```text
//! cargo run -p hv-vss-client --example print_events -- [SOCKET] [NAME]
//! ```
//!
//! It acks every check, freeze and thaw at once, and keeps running (reconnecting when
//! hv-vssd restarts) until killed.

use std::time::{Duration, Instant};

use hv_vss_client::{Config, Handler, HandlerResult, Registration, Request};

struct Printer {
    started: Instant,
}

impl Printer {
    fn say(&self, what: &str) {
        println!("{:>9.3}s  {what}", self.started.elapsed().as_secs_f64());
    }
}

impl Handler for Printer {
    fn on_check(&mut self, r: &Request) -> HandlerResult {
        self.say(&format!(
            "check  txn {} ({:?} to answer)",
            r.txn,
            r.remaining()
        ));
        Ok(())
    }
    fn on_freeze(&mut self, r: &Request) -> HandlerResult {
        self.say(&format!(
            "freeze txn {} ({:?} to answer)",
            r.txn,
            r.remaining()
        ));
        Ok(())
    }
    fn on_thaw(&mut self, r: &Request) -> HandlerResult {
        self.say(&format!("thaw   txn {}", r.txn));
        Ok(())
    }
    fn on_abort(&mut self, txn: u64, reason: &str) -> HandlerResult {
        self.say(&format!("abort  txn {txn}: {reason}"));
        Ok(())
    }
}

fn main() -> Result<(), hv_vss_client::Error> {
    let mut args = std::env::args().skip(1);
    let socket = args
        .next()
        .unwrap_or_else(|| hv_vss_client::DEFAULT_SOCKET.into());
    let name = args.next().unwrap_or_else(|| "print-events".into());
    let mut config = Config::new(Registration::new(name).timeout(Duration::from_secs(5)));
    config.socket = socket.into();
    hv_vss_client::run(
        &config,
        &mut Printer {
            started: Instant::now(),
        },
    )
}
