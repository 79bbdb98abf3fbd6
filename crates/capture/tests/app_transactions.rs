//! Capture never makes an app transaction fail. SQLite cannot make a transaction that
//! began by reading (Django's `BEGIN; SELECT ...; INSERT ...; COMMIT`) wait for a write lock
//! held by someone else: it answers `database is locked` at once. Capture never takes that
//! lock, so such transactions run under capture exactly as without it, every committed row
//! is in the captured records, and the log still restarts.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use lifeboat_capture::{CaptureEvent, CaptureOptions, SqliteCapture};
use rusqlite::Connection;

const APPS: usize = 4;
const TRANSACTIONS_EACH: u64 = 800;

/// What one app process reported: committed, failed, the first errors.
fn read_report(path: &PathBuf) -> (u64, u64, String) {
    let text = std::fs::read_to_string(path).expect("the app wrote its report");
    let mut lines = text.lines();
    let mut number = |key: &str| -> u64 {
        let line = lines.next().unwrap();
        line.strip_prefix(key).unwrap().trim().parse().unwrap()
    };
    let committed = number("committed");
    let failed = number("failed");
    (committed, failed, lines.collect::<Vec<_>>().join("; "))
}

#[test]
fn django_style_transactions_never_fail_under_capture_and_every_row_is_captured() {
    let dir = tempfile::tempdir().unwrap();
    let db = wal_database(dir.path());
    let mut capture =
        SqliteCapture::open(&db, &dir.path().join("state"), CaptureOptions::default()).unwrap();
    let mut timeline = Timeline::default();
    timeline.add(capture.poll().unwrap());
    capture.confirm_durable(timeline.last_seq()).unwrap();

    let lock = dir.path().join("app.lock");
    let reports: Vec<PathBuf> = (0..APPS)
        .map(|i| dir.path().join(format!("app-{i}.report")))
        .collect();
    let mut apps: Vec<ChildGuard> = reports
        .iter()
        .map(|report| {
            ChildGuard::spawn(Command::new(env!("CARGO_BIN_EXE_capture-test-app")).args([
                db.to_str().unwrap(),
                &TRANSACTIONS_EACH.to_string(),
                lock.to_str().unwrap(),
                report.to_str().unwrap(),
                // Every 100th transaction of each app, the whole app pauses for 100 ms.
                "100",
                "100",
            ]))
        })
        .collect();

    // Drive capture like the worker, checkpointing far more often than production does.
    let mut watch = WalWatch::new(&db);
    let mut largest_log_frames = 0;
    let mut checkpoints = 0;
    let mut last_checkpoint = Instant::now();
    let started = Instant::now();
    let mut running = APPS;
    loop {
        for app in &mut apps {
            if let Some(ok) = app.exited() {
                assert!(ok, "an app process failed");
                running -= 1;
            }
        }
        let events = capture.poll().unwrap();
        let quiet = events.is_empty();
        timeline.add(events);
        capture.confirm_durable(timeline.last_seq()).unwrap();
        watch.sample();
        if last_checkpoint.elapsed() >= Duration::from_millis(150) {
            let mut shipped = Vec::new();
            let report = capture
                .checkpoint(|events: &[CaptureEvent]| {
                    shipped.extend_from_slice(events);
                    Ok(())
                })
                .unwrap();
            timeline.add(shipped);
            largest_log_frames = largest_log_frames.max(report.wal_frames);
            checkpoints += 1;
            last_checkpoint = Instant::now();
            watch.sample();
        }
        if running == 0 && quiet {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the apps did not finish"
        );
        std::thread::sleep(Duration::from_millis(50)); // the poll interval
    }
    let restarts_while_writing = watch.restarts;
    timeline.add(capture.poll().unwrap());

    let (mut committed, mut failed, mut errors) = (0, 0, Vec::new());
    for report in &reports {
        let (c, f, e) = read_report(report);
        committed += c;
        failed += f;
        if !e.is_empty() {
            errors.push(e);
        }
    }
    eprintln!(
        "{committed} app transactions committed, {failed} failed in {:?}; {checkpoints} capture \
         checkpoints; log restarted {restarts_while_writing} times; largest log {} bytes \
         ({largest_log_frames} frames)",
        started.elapsed(),
        watch.largest
    );
    assert_eq!(failed, 0, "app transactions failed: {errors:?}");
    assert_eq!(committed, APPS as u64 * TRANSACTIONS_EACH);
    assert_eq!(
        timeline.commits.len() as u64,
        committed,
        "one record per committed transaction"
    );
    let out = dir.path().join("replayed.db");
    timeline.rebuild_at(timeline.last_seq(), &out);
    let live = rows(&db);
    assert_eq!(live.len() as u64, committed);
    assert!(
        rows(&out) == live,
        "the replayed copy differs from the live database"
    );
    assert!(
        restarts_while_writing >= 1,
        "the log never restarted while the apps wrote (largest {} bytes)",
        watch.largest
    );
}

#[test]
fn capture_runs_its_whole_cycle_while_the_app_holds_the_write_lock() {
    let dir = tempfile::tempdir().unwrap();
    let db = wal_database(dir.path());
    let app = app_connection(&db);
    for _ in 0..5 {
        commit_next_entry(&app);
    }
    // An app transaction in the middle of writing: it holds the write lock until COMMIT.
    let writer = app_connection(&db);
    writer.execute_batch("BEGIN IMMEDIATE").unwrap();
    writer
        .execute("INSERT INTO entries (id, body) VALUES (6, 'held')", [])
        .unwrap();

    // Each step would wait for the write lock and give up after a second if it needed it.
    let options = CaptureOptions {
        busy_timeout: Duration::from_secs(1),
    };
    let started = Instant::now();
    let mut capture = SqliteCapture::open(&db, &dir.path().join("state"), options).unwrap();
    let mut timeline = Timeline::default();
    timeline.add(capture.poll().unwrap());
    capture.confirm_durable(timeline.last_seq()).unwrap();
    timeline.add(capture.take_base_image().unwrap());
    capture.confirm_durable(timeline.last_seq()).unwrap();
    let report = capture.checkpoint(|_| Ok(())).unwrap();
    assert_eq!(report.deferred, None, "{report:?}");
    timeline.add(
        capture
            .resync("a resync under the app's write lock")
            .unwrap(),
    );
    capture.confirm_durable(timeline.last_seq()).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "capture waited for the app's write lock ({:?})",
        started.elapsed()
    );

    writer.execute_batch("COMMIT").unwrap();
    timeline.add(capture.poll().unwrap());
    assert_eq!(
        timeline.commits.len(),
        1,
        "the held transaction is captured"
    );
    let out = dir.path().join("end.db");
    timeline.rebuild_at(timeline.last_seq(), &out);
    assert_eq!(entry_ids(&out), (1..=6).collect::<Vec<_>>());
}

#[test]
fn a_transaction_that_read_first_can_write_while_capture_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let db = wal_database(dir.path());
    let app = app_connection(&db);
    let mut capture =
        SqliteCapture::open(&db, &dir.path().join("state"), CaptureOptions::default()).unwrap();
    let mut timeline = Timeline::default();
    timeline.add(capture.poll().unwrap());
    capture.confirm_durable(timeline.last_seq()).unwrap();
    for _ in 0..3 {
        commit_next_entry(&app);
    }

    // In the middle of capture's checkpoint (while it ships what it read), the app reads,
    // then writes in the same deferred transaction: SQLite would refuse the write at once
    // if capture held the write lock.
    let django = Connection::open(&db).unwrap();
    django.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut shipped = Vec::new();
    let mut app_results = Vec::new();
    capture
        .checkpoint(|events| {
            shipped.extend_from_slice(events);
            if app_results.is_empty() {
                app_results.push(django.execute_batch(
                    "BEGIN; SELECT count(*) FROM entries; \
                     INSERT INTO entries (id, body) VALUES (4, 'during the checkpoint'); COMMIT;",
                ));
            }
            Ok(())
        })
        .unwrap();
    timeline.add(shipped);
    assert_eq!(
        app_results.len(),
        1,
        "capture shipped during its checkpoint"
    );
    assert!(
        app_results[0].is_ok(),
        "the app's transaction failed: {:?}",
        app_results[0]
    );
    timeline.add(capture.poll().unwrap());
    assert_eq!(timeline.commits.len(), 4);
    let out = dir.path().join("end.db");
    timeline.rebuild_at(timeline.last_seq(), &out);
    assert_eq!(entry_ids(&out), (1..=4).collect::<Vec<_>>());
}

#[test]
fn capture_retries_a_database_that_answers_busy_until_its_deadline_then_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let db = wal_database(dir.path());
    // An app connection in exclusive locking mode keeps every other connection from even
    // beginning to read: SQLite answers busy, as it does during a recovery.
    let app = app_connection(&db);
    app.execute_batch("PRAGMA locking_mode=EXCLUSIVE;").unwrap();
    commit_next_entry(&app);
    let patience = Duration::from_millis(300);
    let started = Instant::now();
    let err = SqliteCapture::open(
        &db,
        &dir.path().join("state"),
        CaptureOptions {
            busy_timeout: patience,
        },
    )
    .err()
    .expect("the database stays busy");
    assert!(
        started.elapsed() >= patience,
        "it retried until its deadline"
    );
    assert!(err.to_string().contains("busy"), "{err}");

    // Let go while capture keeps trying: it gets its read transaction then.
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300)); // the app's lock, held a while
        drop(app);
    });
    let started = Instant::now();
    let mut capture = SqliteCapture::open(
        &db,
        &dir.path().join("state"),
        CaptureOptions {
            busy_timeout: Duration::from_secs(30),
        },
    )
    .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200), "it waited");
    release.join().unwrap();
    let app = app_connection(&db);
    let mut timeline = Timeline::default();
    timeline.add(capture.poll().unwrap());
    commit_next_entry(&app);
    timeline.add(capture.poll().unwrap());
    let out = dir.path().join("end.db");
    timeline.rebuild_at(timeline.last_seq(), &out);
    assert_eq!(entry_ids(&out), vec![1, 2]);
}
