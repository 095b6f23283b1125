//! MariaDB / MySQL: `FLUSH TABLES WITH READ LOCK` held across the freeze.
//!
//! # Mechanism and guarantee
//!
//! On freeze the integration opens one session, bounds its lock wait by the event's
//! deadline (`SET SESSION lock_wait_timeout`, whole seconds, at least 1), and runs
//! `FLUSH TABLES WITH READ LOCK`: the server closes and flushes every table (MyISAM and
//! Aria files are complete on disk, InnoDB's redo log is flushed) and blocks every write
//! until the lock is released. The session stays open, holding the lock, until thaw or
//! abort, when it runs `UNLOCK TABLES` and closes. A snapshot taken while the lock is held
//! therefore has every table, of every engine, consistent, and every transaction
//! committed before the freeze ack.
//!
//! If the session ends while holding (this process is killed, the connection breaks),
//! the server releases the lock itself: a dead integration cannot leave the database
//! blocked. If this process loses hv-vssd's socket while holding, the client loop
//! releases the lock at once (see `hv_vss_client::run`).
//!
//! - check: ok; when the server cannot be reached, not ok only with `veto_if_unreachable`.
//! - freeze: as above; a lock that cannot be taken in time acks not ok (veto). An
//!   unreachable server is treated as on check (nothing runs, so nothing to hold).
//! - thaw, abort: `UNLOCK TABLES`, close the session; ack ok (a failed unlock still closes
//!   the session, which releases the lock).
//!
//! The user needs the `RELOAD` privilege, which `FLUSH TABLES WITH READ LOCK` requires.

use std::time::{Duration, Instant};

use hv_vss_client::{Handler, HandlerResult, Request};
use mysql::prelude::Queryable;

/// Time kept back from the event's deadline to send the ack.
const ACK_MARGIN: Duration = Duration::from_millis(200);
/// Least socket read/write timeout of a session: it also serves `UNLOCK TABLES` after the
/// freeze deadline; the lock wait itself is bounded by `lock_wait_timeout`.
const MIN_IO_TIMEOUT: Duration = Duration::from_secs(2);

/// The MariaDB/MySQL handler.
#[derive(Debug)]
pub struct Mariadb {
    opts: mysql::Opts,
    veto_if_unreachable: bool,
    /// The session holding the read lock, with the txn it was taken for.
    held: Option<(u64, mysql::Conn)>,
}

impl Mariadb {
    /// `connect` is a URL: `mysql://USER@localhost/?socket=/run/mysqld/mysqld.sock` or
    /// `mysql://USER@127.0.0.1:3306/`.
    pub fn new(
        connect: &str,
        password: Option<&str>,
        veto_if_unreachable: bool,
    ) -> anyhow::Result<Self> {
        let opts = mysql::Opts::from_url(connect)
            .map_err(|e| anyhow::anyhow!("connection URL {connect:?}: {e}"))?;
        let mut builder = mysql::OptsBuilder::from_opts(opts);
        if let Some(password) = password {
            builder = builder.pass(Some(password));
        }
        Ok(Self {
            opts: builder.into(),
            veto_if_unreachable,
            held: None,
        })
    }

    /// Is a read lock held now?
    pub fn holding(&self) -> bool {
        self.held.is_some()
    }

    fn connect(&self, deadline: Instant) -> Result<mysql::Conn, mysql::Error> {
        let left = time_left(deadline).max(Duration::from_millis(1));
        let io = left.max(MIN_IO_TIMEOUT);
        let opts = mysql::OptsBuilder::from_opts(self.opts.clone())
            .tcp_connect_timeout(Some(left))
            .read_timeout(Some(io))
            .write_timeout(Some(io));
        mysql::Conn::new(opts)
    }

    fn unreachable(&self, e: &mysql::Error) -> HandlerResult {
        let what = format!("MariaDB unreachable: {e}");
        if self.veto_if_unreachable {
            return Err(what.into());
        }
        tracing::warn!(error = what, "not vetoing (veto_if_unreachable is off)");
        Ok(())
    }

    /// Takes the global read lock for `txn` within `deadline` and keeps its session.
    pub fn lock(&mut self, txn: u64, deadline: Instant) -> HandlerResult {
        self.unlock("a new freeze arrived");
        let mut conn = match self.connect(deadline) {
            Ok(c) => c,
            Err(e) => return self.unreachable(&e),
        };
        let secs = time_left(deadline).as_secs().max(1);
        let started = Instant::now();
        conn.query_drop(format!("SET SESSION lock_wait_timeout = {secs}"))
            .and_then(|()| conn.query_drop("FLUSH TABLES WITH READ LOCK"))
            .map_err(|e| format!("FLUSH TABLES WITH READ LOCK failed: {e}"))?;
        tracing::info!(
            txn,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "read lock taken"
        );
        self.held = Some((txn, conn));
        Ok(())
    }

    /// Releases the lock if held (`UNLOCK TABLES`, then the session closes).
    pub fn unlock(&mut self, why: &str) {
        if let Some((txn, mut conn)) = self.held.take() {
            match conn.query_drop("UNLOCK TABLES") {
                Ok(()) => tracing::info!(txn, why, "read lock released"),
                Err(e) => tracing::warn!(
                    txn,
                    why,
                    error = %e,
                    "UNLOCK TABLES failed; closing the session releases the lock"
                ),
            }
        }
    }
}

/// Time until `deadline` less the ack margin.
fn time_left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .saturating_sub(ACK_MARGIN)
}

impl Handler for Mariadb {
    fn on_check(&mut self, request: &Request) -> HandlerResult {
        match self.connect(request.deadline) {
            Ok(mut conn) => match conn.query_drop("SELECT 1") {
                Ok(()) => Ok(()),
                Err(e) => self.unreachable(&e),
            },
            Err(e) => self.unreachable(&e),
        }
    }

    fn on_freeze(&mut self, request: &Request) -> HandlerResult {
        self.lock(request.txn, request.deadline)
    }

    fn on_thaw(&mut self, _request: &Request) -> HandlerResult {
        self.unlock("thaw");
        Ok(())
    }

    fn on_abort(&mut self, _txn: u64, reason: &str) -> HandlerResult {
        self.unlock(reason);
        Ok(())
    }
}
