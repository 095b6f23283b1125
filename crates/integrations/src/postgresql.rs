//! PostgreSQL: `CHECKPOINT` on freeze.
//!
//! # Mechanism and guarantee
//!
//! PostgreSQL writes every commit to its WAL before it answers the commit, so a snapshot of
//! a filesystem holding both the data directory and `pg_wal` is crash-consistent on its
//! own: started on the copy, the server replays the WAL from the last checkpoint and has
//! every transaction committed before the snapshot. A `CHECKPOINT` right before the freeze
//! writes all dirty buffers to the data files and moves the redo point to now, so the
//! replay on the copy is short and the data files themselves are current. It does not hold
//! writers: commits continue during and after it, and the ones that committed before the
//! filesystems froze are in the WAL on the snapshot.
//!
//! - check: ok; when the server cannot be reached, not ok only with
//!   `veto_if_unreachable`.
//! - freeze: connect, `SET statement_timeout` to the time left before the deadline,
//!   `CHECKPOINT`, ack. A checkpoint that fails or runs out of time acks not ok (the backup
//!   is vetoed: it would still be crash-consistent, but not what was asked for). An
//!   unreachable server is treated as on check.
//! - thaw, abort: nothing to release; ack ok.
//!
//! `CHECKPOINT` needs a superuser or (PostgreSQL 15+) a member of `pg_checkpoint`.

use std::time::{Duration, Instant};

use hv_vss_client::{Handler, HandlerResult, Request};

/// Time kept back from the event's deadline to send the ack.
const ACK_MARGIN: Duration = Duration::from_millis(200);

/// The PostgreSQL handler.
#[derive(Debug)]
pub struct Postgres {
    config: postgres::Config,
    veto_if_unreachable: bool,
}

impl Postgres {
    /// `connect` is a libpq-style connection string
    /// (`host=/run/postgresql user=postgres dbname=postgres`) or URL.
    pub fn new(
        connect: &str,
        password: Option<&str>,
        veto_if_unreachable: bool,
    ) -> anyhow::Result<Self> {
        let mut config: postgres::Config = connect
            .parse()
            .map_err(|e| anyhow::anyhow!("connection string {connect:?}: {e}"))?;
        if let Some(password) = password {
            config.password(password);
        }
        if config.get_application_name().is_none() {
            config.application_name("hv-vss-postgres");
        }
        Ok(Self {
            config,
            veto_if_unreachable,
        })
    }

    fn connect(&self, deadline: Instant) -> Result<postgres::Client, postgres::Error> {
        let mut config = self.config.clone();
        config.connect_timeout(time_left(deadline).max(Duration::from_millis(1)));
        config.connect(postgres::NoTls)
    }

    /// Runs `CHECKPOINT` within `deadline`.
    pub fn checkpoint(&self, deadline: Instant) -> HandlerResult {
        let mut client = match self.connect(deadline) {
            Ok(c) => c,
            Err(e) => return self.unreachable(&e),
        };
        let ms = time_left(deadline).as_millis().max(1);
        let started = Instant::now();
        client
            .batch_execute(&format!("SET statement_timeout = {ms}; CHECKPOINT"))
            .map_err(|e| format!("CHECKPOINT failed: {}", describe(&e)))?;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "CHECKPOINT done"
        );
        Ok(())
    }

    fn unreachable(&self, e: &postgres::Error) -> HandlerResult {
        let what = format!("PostgreSQL unreachable: {}", describe(e));
        if self.veto_if_unreachable {
            return Err(what.into());
        }
        tracing::warn!(error = what, "not vetoing (veto_if_unreachable is off)");
        Ok(())
    }
}

/// Time until `deadline` less the ack margin.
fn time_left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .saturating_sub(ACK_MARGIN)
}

/// The error with the server's message when there is one (postgres::Error's Display
/// says only "db error").
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

impl Handler for Postgres {
    fn on_check(&mut self, request: &Request) -> HandlerResult {
        match self.connect(request.deadline) {
            Ok(mut client) => match client.simple_query("SELECT 1") {
                Ok(_) => Ok(()),
                Err(e) => self.unreachable(&e),
            },
            Err(e) => self.unreachable(&e),
        }
    }

    fn on_freeze(&mut self, request: &Request) -> HandlerResult {
        self.checkpoint(request.deadline)
    }

    fn on_thaw(&mut self, _request: &Request) -> HandlerResult {
        Ok(())
    }

    fn on_abort(&mut self, _txn: u64, _reason: &str) -> HandlerResult {
        Ok(())
    }
}
