//! Binlog capture: every committed transaction once, across kill -9 of the server and of the
//! process running capture; how soon a commit is received.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lifeboat_mariadb::{
    BinlogCapture, CaptureOptions, CaptureSource, TransactionRecord, decode_batch, resolve_history,
};
use mysql::prelude::Queryable;
use time::OffsetDateTime;

use crate::common::*;

/// The capture process `every_transaction_is_captured_once_across_kill_9` starts and kills
/// (`src/bin/mariadb-capture-test-child.rs`).
fn spawn_capture(socket: &Path, state: &Path, out: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_mariadb-capture-test-child"))
        .arg(socket)
        .args(["root", ADMIN_PASSWORD])
        .arg(state)
        .arg(out)
        .spawn()
        .unwrap()
}

fn shipped(out: &Path) -> Vec<TransactionRecord> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "batch"))
        .collect();
    names.sort();
    names
        .iter()
        .flat_map(|p| decode_batch(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

fn assert_running(child: &mut Child) {
    if let Some(status) = child.try_wait().unwrap() {
        panic!("the capture process exited by itself ({status}); see its output above");
    }
}

/// Inserts rows 1..=n, each in its own transaction, riding out server restarts: after an
/// error it reconnects and checks whether the row made it before going on.
fn writer(spec: lifeboat_mariadb::ServerSpec, n: u64, done: Arc<AtomicU64>) {
    let connect = || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut c) = spec.connect_admin()
                && c.query_drop("USE app").is_ok()
            {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "the writer could not reconnect for 60 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut conn = connect();
    let mut id = 1;
    while id <= n {
        match conn.exec_drop("INSERT INTO t (id, v) VALUES (?, 'x')", (id,)) {
            Ok(()) => {
                done.store(id, Ordering::SeqCst);
                id += 1;
            }
            Err(_) => {
                conn = connect();
                let there: Option<u64> = conn
                    .exec_first("SELECT id FROM t WHERE id = ?", (id,))
                    .unwrap();
                if there.is_some() {
                    done.store(id, Ordering::SeqCst);
                    id += 1;
                }
            }
        }
    }
}

#[test]
fn every_transaction_is_captured_once_across_kill_9_of_the_server_and_of_capture() {
    const ROWS: u64 = 3000;
    let t = tmpdir();
    let mut s = TestServer::new(t.path());
    s.conn()
        .query_drop(
            "CREATE DATABASE app; CREATE TABLE app.t (id BIGINT PRIMARY KEY, v VARCHAR(20))",
        )
        .unwrap();
    let state = t.path().join("capture-state");
    let out = t.path().join("shipped");
    std::fs::create_dir_all(&out).unwrap();
    let socket = s.spec.socket();
    let mut child = spawn_capture(&socket, &state, &out);

    let done = Arc::new(AtomicU64::new(0));
    let w = {
        let (spec, done) = (s.spec.clone(), done.clone());
        std::thread::spawn(move || writer(spec, ROWS, done))
    };
    let progress = |at: u64| {
        let done = done.clone();
        wait_for(
            &format!("the writer to pass row {at}"),
            Duration::from_secs(120),
            move || done.load(Ordering::SeqCst) >= at,
        )
    };

    progress(600);
    assert_running(&mut child);
    child.kill().unwrap(); // SIGKILL: the capture process dies between any two instructions
    child.wait().unwrap();
    child = spawn_capture(&socket, &state, &out);

    progress(1400);
    s.kill(); // SIGKILL of mariadbd under the writer
    s.restart();

    progress(2200);
    assert_running(&mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    child = spawn_capture(&socket, &state, &out);

    w.join().unwrap();
    let end = s.spec.gtid_binlog_pos().unwrap().get(0).unwrap();
    wait_for(
        "capture to ship the last transaction",
        Duration::from_secs(60),
        || {
            assert_running(&mut child);
            shipped(&out).iter().any(|r| r.gtid == end)
        },
    );
    child.kill().unwrap();
    child.wait().unwrap();

    let all = shipped(&out);
    let distinct: BTreeSet<u64> = all.iter().map(|r| r.gtid.seq).collect();
    let expected: BTreeSet<u64> = (1..=end.seq).collect();
    assert_eq!(
        distinct, expected,
        "a GTID is missing from what capture shipped"
    );
    let epochs: BTreeSet<u64> = all.iter().map(|r| r.epoch).collect();
    assert_eq!(epochs.len(), 3, "three capture sessions");

    let history = resolve_history(all).unwrap();
    let seqs: Vec<u64> = history.iter().map(|r| r.gtid.seq).collect();
    assert_eq!(
        seqs,
        (1..=end.seq).collect::<Vec<_>>(),
        "resolved history is every GTID once, in order"
    );
    let our_seqs: Vec<u64> = history.iter().map(|r| r.seq).collect();
    assert_eq!(our_seqs, (1..=end.seq).collect::<Vec<_>>());
    let n: Option<u64> = s.conn().query_first("SELECT COUNT(*) FROM app.t").unwrap();
    assert_eq!(n, Some(ROWS));
}

#[test]
fn capture_receives_a_commit_within_milliseconds_and_waits_for_a_restarted_server() {
    let t = tmpdir();
    let mut s = TestServer::new(t.path());
    let mut conn = s.conn();
    conn.query_drop("CREATE DATABASE app; CREATE TABLE app.t (id BIGINT PRIMARY KEY)")
        .unwrap();
    let start = s.spec.gtid_binlog_pos().unwrap();
    let mut cap = BinlogCapture::open(
        &t.path().join("state"),
        CaptureSource::from_spec(&s.spec).unwrap(),
        &start,
        CaptureOptions::default(),
    )
    .unwrap();
    let mut after_ack = Vec::new();
    let mut after_start = Vec::new();
    for id in 1..=300u64 {
        let t0 = OffsetDateTime::now_utc();
        conn.exec_drop("INSERT INTO app.t VALUES (?)", (id,))
            .unwrap();
        let t1 = OffsetDateTime::now_utc();
        let recs = cap.poll_wait(Duration::from_secs(10)).unwrap();
        assert_eq!(recs.len(), 1, "one transaction per insert");
        after_start.push((recs[0].received_at - t0).as_seconds_f64() * 1000.0);
        after_ack.push((recs[0].received_at - t1).as_seconds_f64() * 1000.0);
        cap.confirm_durable(recs[0].seq).unwrap();
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[((v.len() as f64 - 1.0) * p) as usize]
    };
    let (p50, p99) = (pct(&mut after_start, 0.5), pct(&mut after_start, 0.99));
    eprintln!(
        "capture latency, commit call -> received: p50 {p50:.2} ms, p99 {p99:.2} ms; \
         received - client ack: p50 {:.2} ms, p99 {:.2} ms",
        pct(&mut after_ack, 0.5),
        pct(&mut after_ack, 0.99)
    );
    assert!(p99 < 1000.0, "p99 {p99} ms");
    assert!(
        after_start.iter().all(|&ms| ms >= 0.0),
        "received before the commit was asked for"
    );

    // The server goes away and comes back: capture reconnects by itself.
    s.kill();
    wait_for("capture to notice", Duration::from_secs(30), || {
        !cap.status().connected
    });
    s.restart();
    s.conn()
        .query_drop("INSERT INTO app.t VALUES (1000)")
        .unwrap();
    let recs = cap.poll_wait(Duration::from_secs(30)).unwrap();
    assert_eq!(recs.len(), 1);
    assert!(cap.status().reconnects >= 1);
}

#[test]
fn a_gap_in_gtids_stops_capture_until_it_restarts_from_a_new_base() {
    let t = tmpdir();
    let s = TestServer::new(t.path());
    let mut conn = s.conn();
    conn.query_drop("CREATE DATABASE app; CREATE TABLE app.t (id BIGINT PRIMARY KEY)")
        .unwrap();
    let start = s.spec.gtid_binlog_pos().unwrap();
    let mut cap = BinlogCapture::open(
        &t.path().join("state"),
        CaptureSource::from_spec(&s.spec).unwrap(),
        &start,
        CaptureOptions::default(),
    )
    .unwrap();
    conn.query_drop("INSERT INTO app.t VALUES (1)").unwrap();
    let before = start.get(0).unwrap().seq;
    // The server itself writes a GTID ten past the next one (strict mode allows a jump).
    conn.query_drop(format!(
        "SET SESSION gtid_seq_no = {}; INSERT INTO app.t VALUES (2)",
        before + 12
    ))
    .unwrap();
    let mut seen = Vec::new();
    let mut err = None;
    wait_for("capture to report the gap", Duration::from_secs(30), || {
        match cap.poll_wait(Duration::from_millis(100)) {
            Ok(r) => seen.extend(r),
            Err(e) => err = Some(e),
        }
        err.is_some()
    });
    assert_eq!(
        seen.len(),
        1,
        "the transaction before the gap is handed out"
    );
    let e = err.unwrap();
    assert!(
        matches!(e, lifeboat_mariadb::MariaDbError::GtidGap { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("Take a new base backup"), "{e}");
    // Reported again, never skipped.
    assert!(cap.poll_wait(Duration::from_millis(300)).is_err());
    cap.confirm_durable(seen[0].seq).unwrap();

    let base = lifeboat_mariadb::take_base_backup(&s.spec, &t.path().join("base")).unwrap();
    cap.restart_from_base(&base.info.gtid_pos).unwrap();
    conn.query_drop("INSERT INTO app.t VALUES (3)").unwrap();
    let recs = cap.poll_wait(Duration::from_secs(30)).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].gtid.seq, before + 13);
    assert_eq!(recs[0].seq, seen[0].seq + 1, "capture's own seqs continue");
    drop(cap);

    // Binlogs purged past the saved position: the server says so, capture names the fix.
    conn.query_drop("FLUSH BINARY LOGS").unwrap();
    let (current, _, _, _): (String, u64, String, String) =
        conn.query_first("SHOW MASTER STATUS").unwrap().unwrap();
    // The server keeps a file a stream still reads (the dropped capture's, until its next
    // heartbeat): purge until the old files are gone.
    wait_for(
        "the old binlogs to be purged",
        Duration::from_secs(30),
        || {
            conn.query_drop(format!("PURGE BINARY LOGS TO '{current}'"))
                .unwrap();
            let logs: Vec<(String, u64)> = conn.query("SHOW BINARY LOGS").unwrap();
            logs.len() == 1
        },
    );
    let mut cap = BinlogCapture::open(
        &t.path().join("state-old"),
        CaptureSource::from_spec(&s.spec).unwrap(),
        &start,
        CaptureOptions::default(),
    )
    .unwrap();
    let mut err = None;
    wait_for(
        "capture to report purged logs",
        Duration::from_secs(30),
        || {
            if let Err(e) = cap.poll_wait(Duration::from_millis(100)) {
                err = Some(e);
            }
            err.is_some()
        },
    );
    let e = err.unwrap();
    assert!(
        matches!(e, lifeboat_mariadb::MariaDbError::BinlogPurged { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("take a new base backup"), "{e}");
}
