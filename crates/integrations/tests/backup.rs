//! A whole backup through the real hv-vssd with a database integration registered: a
//! writer commits numbered rows; the host sends HOT_BACKUP and FREEZE; while frozen the
//! loop image is copied, as a backup reads its snapshot; then THAW. The copy must pass
//! `fsck.ext4 -fn`, the database must start on it, and every row committed before the
//! FREEZE answer must be there.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Db, Integration, Maria, MountedImage, Pg, Vssd, Writer};
use hv_vss_protocol::{HvStatus, VssOperation};
use hv_vss_sim::kernel::HostOutcome;
use mysql::prelude::Queryable;

const TIMEOUT: Duration = Duration::from_secs(300);
const OK: HostOutcome = HostOutcome::Replied(HvStatus::S_OK);

/// Where the snapshot copy goes: a temp dir on the root filesystem (never frozen).
fn copy_path() -> (tempfile::TempDir, PathBuf) {
    let dir = common::run_dir("hv-vss-backup-");
    let copy = dir.path().join("snapshot.img");
    (dir, copy)
}

/// HOT_BACKUP, FREEZE, copy `image` while frozen, THAW. Returns the row count `committed`
/// read right after the FREEZE answer (writes block while frozen, so no later commit can
/// have returned yet).
fn backup(vssd: &Vssd, image: &Path, copy: &Path, committed: impl Fn() -> u64) -> u64 {
    assert_eq!(vssd.request(VssOperation::HOT_BACKUP), OK, "{}", vssd.log());
    assert_eq!(vssd.request(VssOperation::FREEZE), OK, "{}", vssd.log());
    let before_answer = committed();
    common::copy_image(image, copy);
    // Still frozen after the copy: nothing was committed meanwhile.
    assert_eq!(committed(), before_answer, "a commit returned while frozen");
    assert_eq!(vssd.request(VssOperation::THAW), OK, "{}", vssd.log());
    before_answer
}

fn assert_clean_fsck(copy: &Path) {
    let (code, out) = common::fsck(copy);
    assert_eq!(code, 0, "fsck.ext4 -fn on the copy:\n{out}");
}

#[test]
fn a_postgres_backup_through_hv_vssd_has_every_row_committed_before_the_freeze() {
    if common::skip_backup("postgres backup test", Db::Postgres) {
        return;
    }
    hv_vss_testutil::freezing_test(TIMEOUT, || {
        let fs = common::data_fs();
        let mut pg = Pg::init_and_start(fs.mount_point());
        pg.client()
            .batch_execute("CREATE TABLE t (n bigint PRIMARY KEY)")
            .unwrap();
        let mut wc = pg.client();
        let writer = Writer::start(move |n| {
            wc.execute("INSERT INTO t VALUES ($1)", &[&(n as i64)])
                .map(drop)
                .map_err(|e| e.to_string())
        });
        writer.wait_for(100);
        let vssd = Vssd::start(fs.mount_point());
        let app = Integration::start(
            Path::new(env!("CARGO_BIN_EXE_hv-vss-postgres")),
            &vssd.socket(),
            "postgres",
            &pg.connect_string(),
        );
        let (_copy_dir, copy) = copy_path();
        let committed = backup(&vssd, fs.image(), &copy, || writer.committed());
        assert!(committed >= 100);
        assert_eq!(
            vssd.verdicts(2),
            ["check_passed", "app_consistent"],
            "{}",
            vssd.log()
        );
        assert!(app.log().contains("CHECKPOINT done"), "{}", app.log());
        // Writes resume after the thaw.
        writer.wait_for(committed + 10);
        writer.stop();
        app.stop();
        drop(vssd);
        pg.stop();

        assert_clean_fsck(&copy);
        let mounted = MountedImage::mount(&copy);
        let restored = Pg::start(&mounted.mount_point.join("pgdata"));
        let row = restored
            .client()
            .query_one(
                "SELECT count(*), coalesce(max(n), 0) FROM t WHERE n <= $1",
                &[&(committed as i64)],
            )
            .unwrap();
        let (count, max): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(
            (count as u64, max as u64),
            (committed, committed),
            "rows 1..={committed} committed before the FREEZE answer are all on the copy\n{}",
            restored.log()
        );
        drop(restored);
        drop(mounted);
    });
}

#[test]
fn a_mariadb_backup_through_hv_vssd_has_every_row_and_consistent_myisam_and_aria_tables() {
    if common::skip_backup("mariadb backup test", Db::Mariadb) {
        return;
    }
    hv_vss_testutil::freezing_test(TIMEOUT, || {
        let fs = common::data_fs();
        let mut maria = Maria::init_and_start(fs.mount_point());
        maria
            .conn()
            .query_drop(
                "CREATE DATABASE db; \
                 CREATE TABLE db.t (n BIGINT PRIMARY KEY) ENGINE=InnoDB; \
                 CREATE TABLE db.m (n BIGINT PRIMARY KEY, pad VARCHAR(200)) ENGINE=MyISAM; \
                 CREATE TABLE db.a (n BIGINT PRIMARY KEY, pad VARCHAR(200)) ENGINE=Aria",
            )
            .unwrap();
        // One writer per engine: InnoDB commits, MyISAM and Aria writes keep the
        // non-transactional tables open and changing during the backup.
        let writers: Vec<Writer> = ["t", "m", "a"]
            .iter()
            .map(|table| {
                let mut conn = maria.conn();
                let sql = if *table == "t" {
                    "INSERT INTO db.t VALUES (?)".to_owned()
                } else {
                    format!("INSERT INTO db.{table} VALUES (?, REPEAT('x', 150))")
                };
                Writer::start(move |n| conn.exec_drop(&sql, (n,)).map_err(|e| e.to_string()))
            })
            .collect();
        for w in &writers {
            w.wait_for(100);
        }
        let vssd = Vssd::start(fs.mount_point());
        let app = Integration::start(
            Path::new(env!("CARGO_BIN_EXE_hv-vss-mariadb")),
            &vssd.socket(),
            "mariadb",
            &maria.url(),
        );
        let (_copy_dir, copy) = copy_path();
        let committed_per_table = std::cell::RefCell::new(Vec::new());
        backup(&vssd, fs.image(), &copy, || {
            let c: Vec<u64> = writers.iter().map(Writer::committed).collect();
            *committed_per_table.borrow_mut() = c.clone();
            c[0]
        });
        let committed = committed_per_table.into_inner();
        assert_eq!(
            vssd.verdicts(2),
            ["check_passed", "app_consistent"],
            "{}",
            vssd.log()
        );
        assert!(app.log().contains("read lock taken"), "{}", app.log());
        assert!(app.log().contains("read lock released"), "{}", app.log());
        for w in &writers {
            w.wait_for(committed[0] + 10);
        }
        for w in writers {
            w.stop();
        }
        app.stop();
        drop(vssd);
        maria.stop();

        assert_clean_fsck(&copy);
        let mounted = MountedImage::mount(&copy);
        let restored = Maria::start(&mounted.mount_point.join("mysql"));
        let mut conn = restored.conn();
        for (table, want) in ["t", "m", "a"].iter().zip(&committed) {
            let (count, max): (u64, u64) = conn
                .exec_first(
                    format!("SELECT count(*), coalesce(max(n), 0) FROM db.{table} WHERE n <= ?"),
                    (want,),
                )
                .unwrap()
                .unwrap();
            assert_eq!(
                (count, max),
                (*want, *want),
                "db.{table}: rows 1..={want} written before the FREEZE answer are on the copy\n{}",
                restored.log()
            );
        }
        for table in ["m", "a"] {
            let rows: Vec<(String, String, String, String)> =
                conn.query(format!("CHECK TABLE db.{table}")).unwrap();
            let last = rows.last().unwrap();
            assert_eq!(
                (last.2.as_str(), last.3.as_str()),
                ("status", "OK"),
                "{rows:?}"
            );
            assert!(
                rows.iter().all(|r| r.2 != "error" && r.2 != "warning"),
                "CHECK TABLE db.{table} on the copy: {rows:?}"
            );
        }
        drop(conn);
        drop(restored);
        drop(mounted);
    });
}
