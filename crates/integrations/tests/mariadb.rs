//! hv-vss-mariadb against a real MariaDB server the test starts on a loop-mounted ext4,
//! driven by the in-test protocol v1 server: the read lock blocks other sessions' writes
//! from the freeze ack until thaw, abort, or the integration's death.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{AppServer, Db, Maria, Proc, WAIT};
use hv_vss_app_protocol::DaemonMessage;
use hv_vss_testutil::LoopFs;
use mysql::prelude::Queryable;

const TIMEOUT: Duration = Duration::from_secs(240);
const BINARY: &str = env!("CARGO_BIN_EXE_hv-vss-mariadb");
/// How long a write must stay blocked to count as blocked by the lock.
const BLOCKED_FOR: Duration = Duration::from_millis(700);

/// A server with `db.t` and `db.other` (InnoDB), and the app socket server.
struct Fixture {
    app: AppServer,
    maria: Maria,
    _fs: LoopFs,
}

impl Fixture {
    fn new() -> Self {
        let fs = common::data_fs();
        let maria = Maria::init_and_start(fs.mount_point());
        maria
            .conn()
            .query_drop(
                "CREATE DATABASE db; CREATE TABLE db.t (n BIGINT PRIMARY KEY) ENGINE=InnoDB; \
                 CREATE TABLE db.other (n INT) ENGINE=InnoDB",
            )
            .unwrap();
        Self {
            app: AppServer::start(),
            maria,
            _fs: fs,
        }
    }

    fn integration(&self, extra: &[&str]) -> Proc {
        self.app
            .integration(BINARY, "maria", &self.maria.url(), extra)
    }

    /// An insert of `n` into `db.t` on a new session, on a thread; the receiver gets its
    /// result when it returns.
    fn insert_async(&self, n: u64) -> mpsc::Receiver<Result<(), String>> {
        let mut conn = self.maria.conn();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let r = conn
                .exec_drop("INSERT INTO db.t VALUES (?)", (n,))
                .map_err(|e| e.to_string());
            let _ = tx.send(r);
        });
        rx
    }

    fn freeze(&self, txn: u64, deadline_ms: u64) -> hv_vss_app_protocol::Ack {
        self.app
            .ask("maria", &DaemonMessage::Freeze { txn, deadline_ms })
    }

    /// The pending write stays blocked while the lock is held and completes after
    /// `release`.
    fn assert_blocked_then_done(&self, txn: u64, release: impl FnOnce()) {
        let ack = self.freeze(txn, 20_000);
        assert!(ack.ok, "{ack:?}");
        let pending = self.insert_async(txn);
        assert!(
            pending.recv_timeout(BLOCKED_FOR).is_err(),
            "a write from another session returned while the read lock is held"
        );
        release();
        let result = pending
            .recv_timeout(WAIT)
            .expect("the write finished after release");
        assert_eq!(result, Ok(()));
    }
}

fn mariadb_test(what: &str, body: impl FnOnce() + Send + 'static) {
    if common::skip(what, Db::Mariadb) {
        return;
    }
    hv_vss_testutil::run_with_timeout(TIMEOUT, body);
}

#[test]
fn the_read_lock_is_held_from_freeze_until_thaw() {
    mariadb_test("mariadb thaw test", || {
        let f = Fixture::new();
        let _app = f.integration(&[]);
        let check = DaemonMessage::Check {
            txn: 1,
            deadline_ms: 5000,
        };
        assert!(f.app.ask("maria", &check).ok);
        // Before the freeze, writes go through.
        assert_eq!(f.insert_async(1).recv_timeout(WAIT).unwrap(), Ok(()));
        f.assert_blocked_then_done(2, || {
            let thaw = DaemonMessage::Thaw {
                txn: 2,
                deadline_ms: 5000,
            };
            f.app.server.send("maria", &thaw).unwrap();
        });
        f.app.wait_acks("maria", 2, 2);
    });
}

#[test]
fn the_read_lock_is_released_on_abort() {
    mariadb_test("mariadb abort test", || {
        let f = Fixture::new();
        let _app = f.integration(&[]);
        f.assert_blocked_then_done(5, || {
            let abort = DaemonMessage::Abort {
                txn: 5,
                reason: "host timed out".into(),
            };
            f.app.server.send("maria", &abort).unwrap();
        });
    });
}

#[test]
fn the_server_releases_the_lock_when_the_integration_is_killed() {
    mariadb_test("mariadb kill -9 test", || {
        let f = Fixture::new();
        let mut app = f.integration(&[]);
        f.assert_blocked_then_done(7, || app.kill9());
    });
}

#[test]
fn an_unreachable_server_vetoes_only_when_configured() {
    mariadb_test("mariadb unreachable test", || {
        let mut f = Fixture::new();
        f.maria.stop();
        f.app
            .assert_vetoes_unreachable_only_when_configured("maria", |extra| f.integration(extra));
    });
}

#[test]
fn a_lock_that_cannot_be_taken_before_the_deadline_acks_not_ok_and_holds_nothing() {
    mariadb_test("mariadb lock deadline test", || {
        let f = Fixture::new();
        f.maria
            .conn()
            .query_drop("INSERT INTO db.t VALUES (0)")
            .unwrap();
        // A long write statement in progress: FLUSH TABLES WITH READ LOCK waits for it.
        let mut busy = f.maria.conn();
        let busy_thread = std::thread::spawn(move || {
            let _ = busy.query_drop("UPDATE db.t SET n = n WHERE SLEEP(20) = 0");
        });
        std::thread::sleep(Duration::from_millis(300));
        let _app = f.integration(&[]);
        let sent = Instant::now();
        let ack = f.freeze(3, 2500);
        let took = sent.elapsed();
        assert!(!ack.ok, "{ack:?}");
        let message = ack.message.unwrap();
        assert!(message.contains("FLUSH TABLES WITH READ LOCK"), "{message}");
        assert!(took < Duration::from_millis(2500), "acked after {took:?}");
        // Nothing is held: another session writes at once (another table: db.t is busy).
        let mut other = f.maria.conn();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(other.query_drop("INSERT INTO db.other VALUES (1)").is_ok());
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(1)), Ok(true));
        drop(busy_thread);
    });
}
