//! hv-vss-mariadb against a real MariaDB server the test starts on a loop-mounted ext4,
//! driven by the in-test protocol v1 server: the read lock blocks other sessions' writes
//! from the freeze ack until thaw, abort, or the integration's death.

mod common;

use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Db, Maria, Proc, WAIT};
use hv_vss_app_protocol::DaemonMessage;
use hv_vss_testutil::app_server::TestAppServer;
use mysql::prelude::Queryable;

const TIMEOUT: Duration = Duration::from_secs(240);
/// How long a write must stay blocked to count as blocked by the lock.
const BLOCKED_FOR: Duration = Duration::from_millis(700);

fn integration(server: &TestAppServer, maria: &Maria, extra: &[&str]) -> Proc {
    Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_hv-vss-mariadb"))
            .args(["--config", "/dev/null", "--name", "maria", "--socket"])
            .arg(server.path())
            .arg("--connect")
            .arg(maria.url())
            .args(extra),
    )
}

/// An insert of `n` into `db.t` on a new session, on a thread; the receiver gets its
/// result when it returns.
fn insert_async(maria: &Maria, n: u64) -> mpsc::Receiver<Result<(), String>> {
    let mut conn = maria.conn();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = conn
            .exec_drop("INSERT INTO db.t VALUES (?)", (n,))
            .map_err(|e| e.to_string());
        let _ = tx.send(r);
    });
    rx
}

fn setup(maria: &Maria) {
    maria
        .conn()
        .query_drop("CREATE DATABASE db; CREATE TABLE db.t (n BIGINT PRIMARY KEY) ENGINE=InnoDB")
        .unwrap();
}

fn freeze(server: &TestAppServer, txn: u64) {
    server
        .send(
            "maria",
            &DaemonMessage::Freeze {
                txn,
                deadline_ms: 20_000,
            },
        )
        .unwrap();
    let ack = server.wait_ack("maria", txn, WAIT).unwrap();
    assert!(ack.ok, "{ack:?}");
}

fn assert_blocked_then_done(pending: &mpsc::Receiver<Result<(), String>>, release: impl FnOnce()) {
    assert!(
        pending.recv_timeout(BLOCKED_FOR).is_err(),
        "a write from another session returned while the read lock is held"
    );
    let released = Instant::now();
    release();
    let result = pending
        .recv_timeout(WAIT)
        .expect("the write finished after release");
    assert_eq!(result, Ok(()));
    eprintln!("write finished {:?} after release", released.elapsed());
}

#[test]
fn the_read_lock_is_held_from_freeze_until_thaw() {
    if common::skip("mariadb thaw test", Db::Mariadb) {
        return;
    }
    hv_vss_testutil::run_with_timeout(TIMEOUT, || {
        let fs = common::data_fs();
        let maria = Maria::init_and_start(fs.mount_point());
        setup(&maria);
        let run = common::run_dir("hv-vss-maria-app-");
        let server = TestAppServer::start(&run.path().join("app.sock")).unwrap();
        let _app = integration(&server, &maria, &[]);
        assert!(server.wait_registered("maria", WAIT));
        server
            .send(
                "maria",
                &DaemonMessage::Check {
                    txn: 1,
                    deadline_ms: 5000,
                },
            )
            .unwrap();
        assert!(server.wait_ack("maria", 1, WAIT).unwrap().ok);
        // Before the freeze, writes go through.
        assert_eq!(insert_async(&maria, 1).recv_timeout(WAIT).unwrap(), Ok(()));
        freeze(&server, 2);
        let pending = insert_async(&maria, 2);
        assert_blocked_then_done(&pending, || {
            server
                .send(
                    "maria",
                    &DaemonMessage::Thaw {
                        txn: 2,
                        deadline_ms: 5000,
                    },
                )
                .unwrap();
        });
        assert_eq!(server.acks().iter().filter(|(_, a)| a.txn == 2).count(), 2);
    });
}

#[test]
fn the_read_lock_is_released_on_abort() {
    if common::skip("mariadb abort test", Db::Mariadb) {
        return;
    }
    hv_vss_testutil::run_with_timeout(TIMEOUT, || {
        let fs = common::data_fs();
        let maria = Maria::init_and_start(fs.mount_point());
        setup(&maria);
        let run = common::run_dir("hv-vss-maria-app-");
        let server = TestAppServer::start(&run.path().join("app.sock")).unwrap();
        let _app = integration(&server, &maria, &[]);
        assert!(server.wait_registered("maria", WAIT));
        freeze(&server, 5);
        let pending = insert_async(&maria, 5);
        assert_blocked_then_done(&pending, || {
            server
                .send(
                    "maria",
                    &DaemonMessage::Abort {
                        txn: 5,
                        reason: "host timed out".into(),
                    },
                )
                .unwrap();
        });
    });
}

#[test]
fn the_server_releases_the_lock_when_the_integration_is_killed() {
    if common::skip("mariadb kill -9 test", Db::Mariadb) {
        return;
    }
    hv_vss_testutil::run_with_timeout(TIMEOUT, || {
        let fs = common::data_fs();
        let maria = Maria::init_and_start(fs.mount_point());
        setup(&maria);
        let run = common::run_dir("hv-vss-maria-app-");
        let server = TestAppServer::start(&run.path().join("app.sock")).unwrap();
        let mut app = integration(&server, &maria, &[]);
        assert!(server.wait_registered("maria", WAIT));
        freeze(&server, 7);
        let pending = insert_async(&maria, 7);
        assert_blocked_then_done(&pending, || app.kill9());
    });
}

#[test]
fn an_unreachable_server_vetoes_only_when_configured() {
    if common::skip("mariadb unreachable test", Db::Mariadb) {
        return;
    }
    hv_vss_testutil::run_with_timeout(TIMEOUT, || {
        let fs = common::data_fs();
        let mut maria = Maria::init_and_start(fs.mount_point());
        maria.stop();
        let run = common::run_dir("hv-vss-maria-app-");
        let server = TestAppServer::start(&run.path().join("app.sock")).unwrap();
        let mut lenient = integration(&server, &maria, &[]);
        assert!(server.wait_registered("maria", WAIT));
        server
            .send(
                "maria",
                &DaemonMessage::Check {
                    txn: 1,
                    deadline_ms: 5000,
                },
            )
            .unwrap();
        assert!(server.wait_ack("maria", 1, WAIT).unwrap().ok);
        server
            .send(
                "maria",
                &DaemonMessage::Freeze {
                    txn: 2,
                    deadline_ms: 5000,
                },
            )
            .unwrap();
        assert!(server.wait_ack("maria", 2, WAIT).unwrap().ok);
        lenient.kill9();
        assert!(server.wait_gone("maria", WAIT));
        let _strict = integration(&server, &maria, &["--veto-if-unreachable"]);
        assert!(server.wait_registered("maria", WAIT));
        for (txn, msg) in [
            (
                3,
                DaemonMessage::Check {
                    txn: 3,
                    deadline_ms: 5000,
                },
            ),
            (
                4,
                DaemonMessage::Freeze {
                    txn: 4,
                    deadline_ms: 5000,
                },
            ),
        ] {
            server.send("maria", &msg).unwrap();
            let ack = server.wait_ack("maria", txn, WAIT).unwrap();
            assert!(!ack.ok, "strict txn {txn}");
            assert!(ack.message.unwrap().contains("unreachable"));
        }
    });
}

#[test]
fn a_lock_that_cannot_be_taken_before_the_deadline_acks_not_ok_and_holds_nothing() {
    if common::skip("mariadb lock deadline test", Db::Mariadb) {
        return;
    }
    hv_vss_testutil::run_with_timeout(TIMEOUT, || {
        let fs = common::data_fs();
        let maria = Maria::init_and_start(fs.mount_point());
        setup(&maria);
        maria
            .conn()
            .query_drop("INSERT INTO db.t VALUES (0); CREATE TABLE db.other (n INT) ENGINE=InnoDB")
            .unwrap();
        // A long write statement in progress: FLUSH TABLES WITH READ LOCK waits for it.
        let mut busy = maria.conn();
        let busy_thread = std::thread::spawn(move || {
            let _ = busy.query_drop("UPDATE db.t SET n = n WHERE SLEEP(20) = 0");
        });
        std::thread::sleep(Duration::from_millis(300));
        let run = common::run_dir("hv-vss-maria-app-");
        let server = TestAppServer::start(&run.path().join("app.sock")).unwrap();
        let _app = integration(&server, &maria, &[]);
        assert!(server.wait_registered("maria", WAIT));
        let sent = Instant::now();
        server
            .send(
                "maria",
                &DaemonMessage::Freeze {
                    txn: 3,
                    deadline_ms: 2500,
                },
            )
            .unwrap();
        let ack = server.wait_ack("maria", 3, WAIT).unwrap();
        let took = sent.elapsed();
        assert!(!ack.ok, "{ack:?}");
        assert!(
            ack.message
                .as_deref()
                .unwrap()
                .contains("FLUSH TABLES WITH READ LOCK"),
            "{ack:?}"
        );
        assert!(took < Duration::from_millis(2500), "acked after {took:?}");
        // Nothing is held: another session writes at once (another table: db.t is busy).
        let mut other = maria.conn();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(other.query_drop("INSERT INTO db.other VALUES (1)").is_ok());
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(1)), Ok(true));
        drop(busy_thread);
    });
}
