//! The log still restarts under capture (it does not grow forever), and a restart never
//! costs a transaction: capture sees the last transactions of the old generation and every
//! one of the new.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::*;
use lifeboat_capture::{CaptureOptions, CheckpointReport, SqliteCapture};

/// Checkpoints, adding what the checkpoint shipped to the timeline.
fn checkpoint(capture: &mut SqliteCapture, timeline: &mut Timeline) -> CheckpointReport {
    let mut shipped = Vec::new();
    let report = capture
        .checkpoint(|events| {
            shipped.extend_from_slice(events);
            Ok(())
        })
        .unwrap();
    timeline.add(shipped);
    report
}

#[test]
fn a_log_restarted_by_the_app_between_polls_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = wal_database(dir.path());
    let app = app_connection(&db);
    // Only capture's checkpoints copy the log back.
    app.execute_batch("PRAGMA wal_autocheckpoint=0;").unwrap();
    let mut capture =
        SqliteCapture::open(&db, &dir.path().join("state"), CaptureOptions::default()).unwrap();
    let mut timeline = Timeline::default();
    timeline.add(capture.poll().unwrap());
    capture.confirm_durable(timeline.last_seq()).unwrap();

    let mut committed = 0;
    for round in 0..5 {
        // The last transactions of this generation: not polled, only the checkpoint's
        // handoff reads them.
        for _ in 0..4 {
            commit_next_entry(&app);
            committed += 1;
        }
        let old = wal_salts(&db).expect("the log has a generation");
        // The app idles: the checkpoint copies everything back and re-pins on read lock 0.
        let report = checkpoint(&mut capture, &mut timeline);
        assert!(report.complete, "round {round}: {report:?}");
        // The app's next write starts the log over, between two polls of capture.
        for _ in 0..3 {
            commit_next_entry(&app);
            committed += 1;
        }
        let new = wal_salts(&db).unwrap();
        assert_ne!(old, new, "round {round}: the app's write restarted the log");
        timeline.add(capture.poll().unwrap());
        capture.confirm_durable(timeline.last_seq()).unwrap();
        assert_eq!(timeline.commits.len(), committed, "round {round}");
    }
    assert_eq!(timeline.images.len(), 1, "no continuity was lost");
    for commit in &timeline.commits {
        let out = dir.path().join(format!("at-{}.db", commit.seq));
        timeline.rebuild_at(commit.seq, &out);
        let n = entry_ids(&out).len() as i64;
        assert_eq!(entry_ids(&out), (1..=n).collect::<Vec<_>>());
        std::fs::remove_file(&out).unwrap();
    }
    let out = dir.path().join("end.db");
    timeline.rebuild_at(timeline.last_seq(), &out);
    assert_eq!(rows(&out), rows(&db));
}

#[test]
fn a_log_grown_under_writes_without_a_pause_restarts_once_the_app_pauses() {
    let dir = tempfile::tempdir().unwrap();
    let db = wal_database(dir.path());
    let mut capture =
        SqliteCapture::open(&db, &dir.path().join("state"), CaptureOptions::default()).unwrap();
    let mut timeline = Timeline::default();
    timeline.add(capture.poll().unwrap());
    capture.confirm_durable(timeline.last_seq()).unwrap();

    // Two writers that never pause, while capture checkpoints as often as it can.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let (db, stop, written) = (db.clone(), stop.clone(), written.clone());
            std::thread::spawn(move || {
                let app = app_connection(&db);
                while !stop.load(Ordering::SeqCst) {
                    commit_next_entry(&app);
                    written.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let mut watch = WalWatch::new(&db);
    while written.load(Ordering::SeqCst) < 600 {
        timeline.add(capture.poll().unwrap());
        capture.confirm_durable(timeline.last_seq()).unwrap();
        checkpoint(&mut capture, &mut timeline);
        watch.sample();
        timeline.add(capture.poll().unwrap());
        capture.confirm_durable(timeline.last_seq()).unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    eprintln!(
        "under writes without a pause: log restarted {} times, largest {} bytes",
        watch.restarts, watch.largest
    );

    // The app pauses: one checkpoint, and its next write starts the log over.
    timeline.add(capture.poll().unwrap());
    capture.confirm_durable(timeline.last_seq()).unwrap();
    let report = checkpoint(&mut capture, &mut timeline);
    assert!(report.complete, "{report:?}");
    let before = wal_salts(&db);
    let app = app_connection(&db);
    commit_next_entry(&app);
    assert_ne!(wal_salts(&db), before, "the log restarted");
    timeline.add(capture.poll().unwrap());
    let status = capture.status();
    assert!(
        status.wal_offset <= 32 + 4 * (24 + 4096),
        "the new generation holds only the last transaction (offset {})",
        status.wal_offset
    );
    let out = dir.path().join("end.db");
    timeline.rebuild_at(timeline.last_seq(), &out);
    assert_eq!(rows(&out), rows(&db));
    assert_eq!(timeline.commits.len(), rows(&db).len());
}
