//! hv-vss-postgres against a real PostgreSQL server the test starts on a loop-mounted ext4,
//! driven by the in-test protocol v1 server.

mod common;

use std::time::Duration;

use common::{AppServer, Db, Pg, Proc};
use hv_vss_app_protocol::DaemonMessage;

const TIMEOUT: Duration = Duration::from_secs(180);
const BINARY: &str = env!("CARGO_BIN_EXE_hv-vss-postgres");

fn checkpoint_state(pg: &Pg) -> (String, i64) {
    let row = pg
        .client()
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
        let writer = pg.start_writer();
        writer.wait_for(50);
        let app = AppServer::start();
        let _pg_app = app.integration(BINARY, "pg", &pg.connect_string(), &[]);
        let check = DaemonMessage::Check {
            txn: 1,
            deadline_ms: 10_000,
        };
        assert!(app.ask("pg", &check).ok);

        let (lsn_before, req_before) = checkpoint_state(&pg);
        let freeze = DaemonMessage::Freeze {
            txn: 2,
            deadline_ms: 30_000,
        };
        let ack = app.ask("pg", &freeze);
        assert!(ack.ok, "{ack:?}");
        let (lsn_after, req_after) = checkpoint_state(&pg);
        assert_eq!(req_after, req_before + 1, "one requested checkpoint");
        assert!(
            lsn(&lsn_after) > lsn(&lsn_before),
            "checkpoint location advanced: {lsn_before} -> {lsn_after}"
        );
        app.server
            .send(
                "pg",
                &DaemonMessage::Thaw {
                    txn: 2,
                    deadline_ms: 10_000,
                },
            )
            .unwrap();
        app.wait_acks("pg", 2, 2);
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
        let app = AppServer::start();
        app.assert_vetoes_unreachable_only_when_configured("pg", |extra| -> Proc {
            app.integration(BINARY, "pg", &pg.connect_string(), extra)
        });
    });
}

#[test]
fn a_checkpoint_is_cut_off_at_the_deadline_and_acks_not_ok() {
    if common::skip("postgres checkpoint deadline test", Db::Postgres) {
        return;
    }
    hv_vss_testutil::run_with_timeout(TIMEOUT, || {
        let fs = common::data_fs();
        let pg = Pg::init_and_start(fs.mount_point());
        // About 50 MB of dirty buffers: no disk writes and fsyncs them in 10 ms.
        pg.client()
            .batch_execute(
                "CREATE TABLE big (n int, pad text); \
                 INSERT INTO big SELECT g, repeat('x', 500) FROM generate_series(1, 100000) g",
            )
            .unwrap();
        let app = AppServer::start();
        let _pg_app = app.integration(BINARY, "pg", &pg.connect_string(), &[]);
        // 210 ms to ack, 200 of them kept for the ack itself: the CHECKPOINT gets at most
        // 10 ms (statement_timeout), then is cancelled.
        let freeze = DaemonMessage::Freeze {
            txn: 1,
            deadline_ms: 210,
        };
        let ack = app.ask("pg", &freeze);
        assert!(!ack.ok, "{ack:?}");
        let message = ack.message.unwrap();
        assert!(
            message.contains("CHECKPOINT failed") && message.contains("statement timeout"),
            "{message}"
        );
    });
}
