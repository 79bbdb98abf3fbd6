//! Base backups and point-in-time restore: exactly the transactions received by T, exactly
//! those up to a GTID; and what a second base of an unchanged database costs in the vault.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeboat_mariadb::{
    BinlogCapture, CaptureOptions, CaptureSource, Gtid, GtidPos, MariaDbError, RestoreTarget,
    TransactionRecord, restore, take_base_backup,
};
use mysql::prelude::Queryable;
use time::OffsetDateTime;

use crate::common::*;

/// One acknowledged insert: its id, its GTID (`@@last_gtid`), and the client's clock.
#[derive(Debug, Clone)]
struct Write {
    id: u64,
    gtid: Gtid,
    sent_at: OffsetDateTime,
}

fn write_rows(spec: &lifeboat_mariadb::ServerSpec, first: u64, n: u64, log: &Mutex<Vec<Write>>) {
    write_rows_until(
        spec,
        first,
        n,
        log,
        &std::sync::atomic::AtomicBool::new(false),
    )
}

fn write_rows_until(
    spec: &lifeboat_mariadb::ServerSpec,
    first: u64,
    n: u64,
    log: &Mutex<Vec<Write>>,
    stop: &std::sync::atomic::AtomicBool,
) {
    let mut conn = spec.connect_admin().unwrap();
    for id in first..first + n {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        let sent_at = OffsetDateTime::now_utc();
        conn.exec_drop("INSERT INTO app.t (id, v) VALUES (?, 'row')", (id,))
            .unwrap();
        let gtid: String = conn.query_first("SELECT @@last_gtid").unwrap().unwrap();
        log.lock().unwrap().push(Write {
            id,
            gtid: gtid.parse().unwrap(),
            sent_at,
        });
    }
}

/// Polls capture until it has handed out `end` (the server's last GTID).
fn capture_until(cap: &mut BinlogCapture, end: Gtid) -> Vec<TransactionRecord> {
    let mut all = Vec::new();
    wait_for(
        "capture to receive every transaction",
        Duration::from_secs(60),
        || {
            let recs = cap.poll_wait(Duration::from_millis(100)).unwrap();
            all.extend(recs);
            all.last()
                .is_some_and(|r: &TransactionRecord| r.gtid == end)
        },
    );
    all
}

fn setup(root: &std::path::Path) -> (TestServer, BinlogCapture) {
    let s = TestServer::new(root);
    s.conn()
        .query_drop(
            "CREATE DATABASE app; CREATE TABLE app.t (id BIGINT PRIMARY KEY, v VARCHAR(20))",
        )
        .unwrap();
    let cap = BinlogCapture::open(
        &root.join("capture"),
        CaptureSource::from_spec(&s.spec).unwrap(),
        &GtidPos::new(),
        CaptureOptions::default(),
    )
    .unwrap();
    (s, cap)
}

fn restored_ids(root: &std::path::Path) -> (lifeboat_mariadb::ServerSpec, BTreeSet<u64>) {
    let mut spec = TestServer::spec_in(root);
    spec.port = None;
    let ids = {
        let server = spec.start(START).unwrap();
        let ids: Vec<u64> = spec
            .connect_admin()
            .unwrap()
            .query("SELECT id FROM app.t")
            .unwrap();
        server.stop(Duration::from_secs(60)).unwrap();
        ids
    };
    (spec, ids.into_iter().collect())
}

#[test]
fn a_restore_to_t_holds_exactly_the_transactions_received_at_or_before_t() {
    let t = tmpdir();
    let (s, mut cap) = setup(t.path());
    let log = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Two writers under load; the base is taken while they write.
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let (spec, log, stop) = (s.spec.clone(), log.clone(), stop.clone());
            std::thread::spawn(move || {
                write_rows_until(&spec, 1 + w * 1_000_000, 100_000, &log, &stop)
            })
        })
        .collect();
    wait_for(
        "the writers to pass 300 rows",
        Duration::from_secs(60),
        || log.lock().unwrap().len() >= 300,
    );
    let base = take_base_backup(&s.spec, &t.path().join("base")).unwrap();
    assert!(!base.info.gtid_pos.is_empty());
    let at_base = log.lock().unwrap().len();
    wait_for(
        "1500 more rows after the base",
        Duration::from_secs(120),
        || log.lock().unwrap().len() >= at_base + 1500,
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let end = s.spec.gtid_binlog_pos().unwrap().get(0).unwrap();
    let history = capture_until(&mut cap, end);

    // T: between two transactions received after the base, two thirds of the way in.
    let after_base: Vec<&TransactionRecord> = history
        .iter()
        .filter(|r| !base.info.gtid_pos.contains(r.gtid))
        .collect();
    assert!(
        after_base.len() > 1000,
        "{} transactions after the base",
        after_base.len()
    );
    let mut i = after_base.len() * 2 / 3;
    while after_base[i + 1].received_at == after_base[i].received_at {
        i += 1;
    }
    let cut =
        after_base[i].received_at + (after_base[i + 1].received_at - after_base[i].received_at) / 2;

    let started = std::time::Instant::now();
    let report = restore(
        &TestServer::spec_in(&t.path().join("r")),
        ADMIN_PASSWORD,
        &base,
        &history,
        &RestoreTarget::Time(cut),
    )
    .unwrap();
    eprintln!(
        "restore to T: {} transactions replayed on the base, started, checked and stopped in {:.1} s",
        report.transactions_replayed,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(report.last, Some(after_base[i].gtid));
    assert!(
        report.tables_checked.contains(&"app.t".to_string()),
        "{:?}",
        report.tables_checked
    );

    let received_by_t: BTreeSet<Gtid> = history
        .iter()
        .filter(|r| r.received_at <= cut)
        .map(|r| r.gtid)
        .collect();
    let log = log.lock().unwrap();
    let expected: BTreeSet<u64> = log
        .iter()
        .filter(|w| received_by_t.contains(&w.gtid))
        .map(|w| w.id)
        .collect();
    let (_, got) = restored_ids(&t.path().join("r"));
    assert_eq!(
        got, expected,
        "the restore holds exactly the rows received by T"
    );
    // None after: every restored row was sent to the server at or before T.
    for w in log.iter().filter(|w| got.contains(&w.id)) {
        assert!(w.sent_at <= cut, "row {} was sent after T", w.id);
    }
    assert!(
        got.len() > at_base && got.len() < log.len(),
        "{} rows",
        got.len()
    );
}

#[test]
fn a_restore_to_a_gtid_holds_exactly_the_transactions_up_to_it() {
    let t = tmpdir();
    let (s, mut cap) = setup(t.path());
    let log = Mutex::new(Vec::new());
    write_rows(&s.spec, 1, 100, &log);
    let base = take_base_backup(&s.spec, &t.path().join("base")).unwrap();
    write_rows(&s.spec, 101, 400, &log);
    let end = s.spec.gtid_binlog_pos().unwrap().get(0).unwrap();
    let history = capture_until(&mut cap, end);
    let log = log.into_inner().unwrap();
    let target = log.iter().find(|w| w.id == 321).unwrap().gtid;

    let spec = TestServer::spec_in(&t.path().join("r"));
    let report = restore(
        &spec,
        ADMIN_PASSWORD,
        &base,
        &history,
        &RestoreTarget::Gtid(target),
    )
    .unwrap();
    assert_eq!(report.last, Some(target));
    assert_eq!(report.gtid_pos.get(0), Some(target));
    let (spec, got) = restored_ids(&t.path().join("r"));
    assert_eq!(got, (1..=321).collect::<BTreeSet<u64>>());
    // The restored server continues the GTID sequence where the restore point left it.
    let server = spec.start(START).unwrap();
    assert_eq!(spec.gtid_binlog_pos().unwrap().get(0), Some(target));
    server.stop(Duration::from_secs(60)).unwrap();

    // Before the base, or past what was captured: refused, saying what to do.
    let early = log.iter().find(|w| w.id == 50).unwrap().gtid;
    let e = restore(
        &TestServer::spec_in(&t.path().join("r2")),
        ADMIN_PASSWORD,
        &base,
        &history,
        &RestoreTarget::Gtid(early),
    )
    .unwrap_err();
    assert!(matches!(e, MariaDbError::CannotRestore { .. }), "{e}");
    assert!(e.to_string().contains("older base"), "{e}");
    let beyond = Gtid {
        seq: end.seq + 10,
        ..end
    };
    let e = restore(
        &TestServer::spec_in(&t.path().join("r3")),
        ADMIN_PASSWORD,
        &base,
        &history,
        &RestoreTarget::Gtid(beyond),
    )
    .unwrap_err();
    assert!(e.to_string().contains("captured history ends at"), "{e}");
    // A hole in the history is never crossed.
    let mut holed = history.clone();
    holed.retain(|r| r.gtid.seq != end.seq - 5);
    let e = restore(
        &TestServer::spec_in(&t.path().join("r4")),
        ADMIN_PASSWORD,
        &base,
        &holed,
        &RestoreTarget::Latest,
    )
    .unwrap_err();
    assert!(e.to_string().contains("transactions are missing"), "{e}");
}

fn table_checksums(spec: &lifeboat_mariadb::ServerSpec) -> Vec<(String, Option<u64>)> {
    let mut c = spec.connect_admin().unwrap();
    let tables: Vec<String> = c
        .query("SELECT CONCAT(TABLE_SCHEMA, '.', TABLE_NAME) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'app' ORDER BY 1")
        .unwrap();
    tables
        .into_iter()
        .map(|t| {
            let row: Option<(String, Option<u64>)> =
                c.query_first(format!("CHECKSUM TABLE {t}")).unwrap();
            row.unwrap()
        })
        .collect()
}

#[test]
fn a_restore_of_everything_captured_is_identical_to_the_source() {
    let t = tmpdir();
    let (s, mut cap) = setup(t.path());
    let base = take_base_backup(&s.spec, &t.path().join("base")).unwrap();
    let mut c = s.conn();
    // DDL, updates, deletes, a multi-statement transaction, a rolled-back one, a user, and
    // one transaction of 24 MiB (its events span several 16 MiB protocol packets).
    c.query_drop(
        "USE app; \
         INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c'); \
         ALTER TABLE t ADD COLUMN n INT NOT NULL DEFAULT 7; \
         UPDATE t SET v = 'B', n = 8 WHERE id = 2; \
         DELETE FROM t WHERE id = 3; \
         START TRANSACTION; INSERT INTO t VALUES (4, 'd', 1); UPDATE t SET n = n + 1; COMMIT; \
         START TRANSACTION; INSERT INTO t VALUES (5, 'never', 0); ROLLBACK; \
         CREATE TABLE blobs (id INT PRIMARY KEY, b LONGBLOB); \
         CREATE USER 'reader'@'localhost' IDENTIFIED BY 'pw'; \
         GRANT SELECT ON app.* TO 'reader'@'localhost'",
    )
    .unwrap();
    c.query_drop(
        "START TRANSACTION; \
         INSERT INTO app.blobs SELECT seq, RANDOM_BYTES(1024) FROM app.seq_1_to_4; \
         UPDATE app.blobs SET b = REPEAT(RANDOM_BYTES(1024), 6 * 1024); \
         COMMIT",
    )
    .unwrap();
    let end = s.spec.gtid_binlog_pos().unwrap().get(0).unwrap();
    let history = capture_until(&mut cap, end);
    let biggest = history.iter().map(|r| r.events.len()).max().unwrap();
    assert!(biggest > 24 << 20, "the big transaction is {biggest} bytes");

    let spec = TestServer::spec_in(&t.path().join("r"));
    let report = restore(
        &spec,
        ADMIN_PASSWORD,
        &base,
        &history,
        &RestoreTarget::Latest,
    )
    .unwrap();
    assert_eq!(report.gtid_pos, s.spec.gtid_binlog_pos().unwrap());
    let source = table_checksums(&s.spec);
    let mut spec = spec;
    spec.port = None;
    let server = spec.start(START).unwrap();
    assert_eq!(table_checksums(&spec), source);
    // The user created after the base came back through the replay.
    let users: Vec<String> = spec
        .connect_admin()
        .unwrap()
        .query("SELECT User FROM mysql.user WHERE User = 'reader'")
        .unwrap();
    assert_eq!(users, vec!["reader".to_string()]);
    // Its binlog starts at the restore point: capturing the restored server begins after the
    // replayed transactions, not with a second copy of them.
    assert_eq!(spec.binlog_start_pos().unwrap(), report.gtid_pos);
    server.stop(Duration::from_secs(60)).unwrap();
}
