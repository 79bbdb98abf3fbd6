//! Purging binlog files a position covers, and capture facing a binlog that was reset under
//! it: against a real server.

use std::time::Duration;

use lifeboat_mariadb::{BinlogCapture, CaptureOptions, CaptureSource, GtidPos};
use mysql::prelude::Queryable;

use crate::common::*;

fn binlog_names(conn: &mut mysql::Conn) -> Vec<String> {
    let logs: Vec<(String, u64)> = conn.query("SHOW BINARY LOGS").unwrap();
    logs.into_iter().map(|(name, _)| name).collect()
}

#[test]
fn only_binlog_files_entirely_before_the_position_are_purged_and_never_the_current_one() {
    let t = tmpdir();
    let s = TestServer::new(t.path());
    let mut conn = s.conn();
    conn.query_drop("CREATE DATABASE app; CREATE TABLE app.t (id BIGINT PRIMARY KEY)")
        .unwrap();
    // Three files of two rows each, then the current one.
    let mut ends = Vec::new();
    for f in 0..3 {
        for r in 0..2 {
            conn.query_drop(format!("INSERT INTO app.t VALUES ({})", f * 10 + r))
                .unwrap();
        }
        ends.push(s.spec.gtid_binlog_pos().unwrap());
        conn.query_drop("FLUSH BINARY LOGS").unwrap();
    }
    let all = binlog_names(&mut conn);
    assert_eq!(all.len(), 4, "{all:?}");
    // A position inside the second file: only the first goes.
    let mut inside: GtidPos = ends[0].clone();
    let mut g = inside.get(0).unwrap();
    g.seq += 1;
    inside.advance(g);
    let report = lifeboat_mariadb::purge_binlogs_before(&s.spec, &inside)
        .unwrap()
        .unwrap();
    assert_eq!(report.purged, vec![all[0].clone()]);
    assert_eq!(report.oldest_kept, all[1]);
    assert_eq!(report.kept_from, ends[0]);
    assert_eq!(binlog_names(&mut conn), all[1..]);
    assert!(!s.spec.data_dir.join(&all[0]).exists());
    // Nothing new covered: nothing more goes.
    let again = lifeboat_mariadb::purge_binlogs_before(&s.spec, &inside)
        .unwrap()
        .unwrap();
    assert!(again.purged.is_empty());
    // Everything covered: every file but the one the server writes to. (The server keeps a
    // file its crash recovery may still need until its binlog checkpoint moves past it, so
    // this may take more than one purge, as it takes more than one checkpoint in a site.)
    let mut purged = Vec::new();
    let mut report = None;
    wait_for("the covered files to go", Duration::from_secs(30), || {
        let r = lifeboat_mariadb::purge_binlogs_before(&s.spec, &ends[2])
            .unwrap()
            .unwrap();
        purged.extend(r.purged.clone());
        report = Some(r);
        binlog_names(&mut conn).len() == 1
    });
    let report = report.unwrap();
    assert_eq!(purged, all[1..3]);
    assert_eq!(binlog_names(&mut conn), vec![all[3].clone()]);
    // The server goes on writing and a capture from the kept position reads it all.
    conn.query_drop("INSERT INTO app.t VALUES (99)").unwrap();
    let mut cap = BinlogCapture::open(
        &t.path().join("state"),
        CaptureSource::from_spec(&s.spec).unwrap(),
        &report.kept_from,
        CaptureOptions::default(),
    )
    .unwrap();
    let recs = cap.poll_wait(Duration::from_secs(30)).unwrap();
    assert_eq!(recs.len(), 1);
}

#[test]
fn a_binlog_reset_while_capture_reads_the_first_file_is_found_by_its_look_at_the_server() {
    binlog_reset_under_capture(true, false);
}

#[test]
fn a_binlog_reset_while_capture_reads_a_later_file_ends_its_stream() {
    binlog_reset_under_capture(false, false);
}

#[test]
fn a_binlog_reset_followed_by_more_writes_than_capture_had_ends_its_stream() {
    binlog_reset_under_capture(false, true);
}

/// `RESET MASTER` under a capture reading the first binlog file or a later one, then fewer
/// new transactions than capture had or, with `outrun`, more (the GTIDs capture expects
/// next, of another history). It is an error that needs a new base, and nothing of the new
/// history is handed out under the old one's numbers.
fn binlog_reset_under_capture(first_file: bool, outrun: bool) {
    let t = tmpdir();
    let s = TestServer::new(t.path());
    let mut conn = s.conn();
    conn.query_drop("CREATE DATABASE app; CREATE TABLE app.t (id BIGINT PRIMARY KEY)")
        .unwrap();
    if !first_file {
        // As in a site, where the binlog is rotated at every checkpoint.
        conn.query_drop("FLUSH BINARY LOGS").unwrap();
    }
    let start = s.spec.gtid_binlog_pos().unwrap();
    let mut cap = BinlogCapture::open(
        &t.path().join("state"),
        CaptureSource::from_spec(&s.spec).unwrap(),
        &start,
        CaptureOptions::default(),
    )
    .unwrap();
    for id in 1..=3 {
        conn.query_drop(format!("INSERT INTO app.t VALUES ({id})"))
            .unwrap();
    }
    let mut seen = Vec::new();
    wait_for("the rows before the reset", Duration::from_secs(30), || {
        seen.extend(cap.poll_wait(Duration::from_millis(100)).unwrap());
        seen.len() == 3
    });
    // Someone resets the binlog by hand: the server numbers transactions from 1 again.
    let had = seen.last().unwrap().gtid.seq;
    let writes = if outrun { had + 5 } else { 1 };
    conn.query_drop("RESET MASTER").unwrap();
    for id in 100..100 + writes {
        conn.query_drop(format!("INSERT INTO app.t VALUES ({id})"))
            .unwrap();
    }
    let mut err = None;
    let mut after = Vec::new();
    wait_for(
        "capture to report the reset",
        Duration::from_secs(30),
        || {
            match cap.poll_wait(Duration::from_millis(100)) {
                Ok(r) => after.extend(r),
                Err(e) => err = Some(e),
            }
            err.is_some()
        },
    );
    let e = err.unwrap();
    assert!(e.needs_new_base(), "{e}");
    if first_file {
        // The stream waits on the removed file without a word: capture's look tells.
        assert!(
            matches!(e, lifeboat_mariadb::MariaDbError::GtidWentBack { .. }),
            "{e}"
        );
    }
    assert!(
        after.is_empty(),
        "transactions after the reset were handed out under old numbers: {:?}",
        after.iter().map(|r| r.gtid.to_string()).collect::<Vec<_>>()
    );
    // Reported again, never skipped; a new base gets capture going again.
    assert!(cap.poll_wait(Duration::from_millis(300)).is_err());
    let base = lifeboat_mariadb::take_base_backup(&s.spec, &t.path().join("base")).unwrap();
    cap.restart_from_base(&base.info.gtid_pos).unwrap();
    conn.query_drop("INSERT INTO app.t VALUES (7)").unwrap();
    let recs = cap.poll_wait(Duration::from_secs(30)).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].gtid.seq, base.info.gtid_pos.get(0).unwrap().seq + 1);
}
