//! hv-vss-postgres against a real PostgreSQL server the test starts on a loop-mounted ext4,
//! driven by the in-test protocol v1 server.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Db, Pg, Proc, WAIT, Writer};
use hv_vss_app_protocol::DaemonMessage;
use hv_vss_testutil::app_server::TestAppServer;

const TIMEOUT: Duration = Duration::from_secs(180);

fn integration(server: &TestAppServer, pg: &Pg, extra: &[&str]) -> Proc {
    Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_hv-vss-postgres"))
            .args(["--config", "/dev/null", "--name", "pg", "--socket"])
            .arg(server.path())
            .arg("--connect")
            .arg(pg.connect_string())
            .args(extra),
    )
}

fn checkpoint_state(pg: &Pg) -> (String, i64) {
    let mut c = pg.client();
    let row = c
        .query_one(
            "SELECT checkpoint_lsn::text, (SELECT checkpoints_req FROM pg_stat_bgwriter) \
             FROM pg_control_checkpoint()",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

#[test]
fn freeze_runs_a_checkpoint_and_acks_ok() {
    if common::skip("postgres freeze test", Db::Postgres) {
        return;
    }
    hv_vss_testutil::run_with_timeout(TIMEOUT, || {
        let fs = common::data_fs();
        let pg = Pg::init_and_start(fs.mount_point());
        pg.client()
            .batch_execute("CREATE TABLE t (n bigint PRIMARY KEY)")
            .unwrap();
        let mut wc = pg.client();
        let writer = Writer::start(move |n| {
            wc.execute("INSERT INTO t VALUES ($1)", &[&(n as i64)])
                .map(drop)
                .map_err(|e| e.to_string())
        });
        writer.wait_for(50);
        let run = common::run_dir("hv-vss-pg-app-");
        let server = TestAppServer::start(&run.path().join("app.sock")).unwrap();
        let _app = integration(&server, &pg, &[]);
        assert!(server.wait_registered("pg", WAIT));

        server
            .send(
                "pg",
                &DaemonMessage::Check {
                    txn: 1,
                    deadline_ms: 10_000,
                },
            )
            .unwrap();
        assert!(server.wait_ack("pg", 1, WAIT).unwrap().ok);

        let (lsn_before, req_before) = checkpoint_state(&pg);
        server
            .send(
                "pg",
                &DaemonMessage::Freeze {
                    txn: 2,
                    deadline_ms: 30_000,
                },
            )
            .unwrap();
        let ack = server.wait_ack("pg", 2, Duration::from_secs(40)).unwrap();
        assert!(ack.ok, "{ack:?}");
        let (lsn_after, req_after) = checkpoint_state(&pg);
        assert_eq!(req_after, req_before + 1, "one requested checkpoint");
        assert!(
            lsn(&lsn_after) > lsn(&lsn_before),
            "checkpoint location advanced: {lsn_before} -> {lsn_after}"
        );
        server
            .send(
                "pg",
                &DaemonMessage::Thaw {
                    txn: 2,
                    deadline_ms: 10_000,
                },
            )
            .unwrap();
        let end = std::time::Instant::now() + WAIT;
        while server.acks().iter().filter(|(_, a)| a.txn == 2).count() < 2 {
            assert!(std::time::Instant::now() < end, "thaw acked");
            std::thread::sleep(Duration::from_millis(20));
        }
        writer.stop();
    });
}

#[test]
fn an_unreachable_server_vetoes_only_when_configured() {
    if common::skip("postgres unreachable test", Db::Postgres) {
        return;
    }
    hv_vss_testutil::run_with_timeout(TIMEOUT, || {
        let fs = common::data_fs();
        let mut pg = Pg::init_and_start(fs.mount_point());
        pg.stop();
        let run = common::run_dir("hv-vss-pg-app-");
        let server = TestAppServer::start(&run.path().join("app.sock")).unwrap();
        let mut lenient = integration(&server, &pg, &[]);
        assert!(server.wait_registered("pg", WAIT));
        for (txn, msg) in [
            (
                1,
                DaemonMessage::Check {
                    txn: 1,
                    deadline_ms: 5000,
                },
            ),
            (
                2,
                DaemonMessage::Freeze {
                    txn: 2,
                    deadline_ms: 5000,
                },
            ),
        ] {
            server.send("pg", &msg).unwrap();
            assert!(
                server.wait_ack("pg", txn, WAIT).unwrap().ok,
                "lenient txn {txn}"
            );
        }
        lenient.kill9();
        assert!(server.wait_gone("pg", WAIT));
        let _strict = integration(&server, &pg, &["--veto-if-unreachable"]);
        assert!(server.wait_registered("pg", WAIT));
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
            server.send("pg", &msg).unwrap();
            let ack = server.wait_ack("pg", txn, WAIT).unwrap();
            assert!(!ack.ok, "strict txn {txn}");
            assert!(ack.message.unwrap().contains("unreachable"));
        }
    });
}
