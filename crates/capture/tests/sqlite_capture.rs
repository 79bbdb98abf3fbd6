//! SQLite capture against real databases written concurrently by other connections,
//! threads and processes: every committed transaction is captured, in order, and the
//! database rebuilt at each one holds exactly the rows committed up to it.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use lifeboat_capture::{CaptureError, CaptureEvent, CaptureOptions, SnapshotReason, SqliteCapture};

/// Drives capture like the worker will: poll, make durable, confirm, checkpoint now and
/// then. Stops once `done` is set and a final poll after it found nothing new.
fn capture_until_done(capture: &mut SqliteCapture, done: &AtomicBool, timeline: &mut Timeline) {
    let mut round = 0u64;
    loop {
        let finished = done.load(Ordering::SeqCst);
        let events = capture.poll().unwrap();
        let got_some = !events.is_empty();
        timeline.add(events);
        capture.confirm_durable(timeline.last_seq()).unwrap();
        round += 1;
        if round.is_multiple_of(5) {
            let mut shipped = Vec::new();
            capture
                .checkpoint(|events| {
                    shipped.extend_from_slice(events);
                    Ok(())
                })
                .unwrap();
            timeline.add(shipped);
        }
        if finished && !got_some {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Rebuilds at every captured commit and checks it holds exactly ids 1..=n, where n is the
/// number of commits up to it (ids are allocated in commit order).
fn assert_every_commit_rebuilds_exactly(timeline: &Timeline, work: &Path, ids_in_base: i64) {
    assert_eq!(
        timeline.images.len(),
        1,
        "no base image beyond the first was needed"
    );
    for (n, commit) in timeline.commits.iter().enumerate() {
        let out = work.join(format!("rebuilt-{}.db", commit.seq));
        timeline.rebuild_at(commit.seq, &out);
        let expected: Vec<i64> = (1..=ids_in_base + n as i64 + 1).collect();
        assert_eq!(entry_ids(&out), expected, "rebuild at seq {}", commit.seq);
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn a_database_not_in_wal_mode_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("plain.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let err = SqliteCapture::open(&db, &dir.path().join("state"), CaptureOptions::default())
        .err()
        .expect("a rollback-journal database must be refused");
    assert!(matches!(err, CaptureError::NotWalMode { .. }), "{err}");
    assert!(err.to_string().contains("PRAGMA journal_mode=WAL"), "{err}");
}

#[test]
fn first_capture_starts_with_a_base_image_of_the_current_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = wal_database(dir.path());
    let app = app_connection(&db);
    for _ in 0..20 {
        commit_next_entry(&app);
    }
    let mut capture =
        SqliteCapture::open(&db, &dir.path().join("state"), CaptureOptions::default()).unwrap();
    let mut timeline = Timeline::default();
    timeline.add(capture.poll().unwrap());
    assert_eq!(timeline.images.len(), 1);
    assert_eq!(
        timeline.images[0].record.reason,
        SnapshotReason::FirstCapture
    );
    let out = dir.path().join("rebuilt.db");
    timeline.rebuild_at(timeline.images[0].record.seq, &out);
    assert_eq!(entry_ids(&out), (1..=20).collect::<Vec<_>>());
}

#[test]
fn concurrent_writer_threads_every_commit_rebuilds_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let db = wal_database(dir.path());
    let mut capture =
        SqliteCapture::open(&db, &dir.path().join("state"), CaptureOptions::default()).unwrap();
    let mut timeline = Timeline::default();
    timeline.add(capture.poll().unwrap());

    let done = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let db = db.clone();
            std::thread::spawn(move || {
                let app = app_connection(&db);
                for _ in 0..60 {
                    commit_next_entry(&app);
                }
            })
        })
        .collect();
    let flag = done.clone();
    let joiner = std::thread::spawn(move || {
        for w in writers {
            w.join().unwrap();
        }
        flag.store(true, Ordering::SeqCst);
    });
    capture_until_done(&mut capture, &done, &mut timeline);
    joiner.join().unwrap();

    assert_eq!(
        timeline.commits.len(),
        240,
        "one record per committed transaction"
    );
    assert_every_commit_rebuilds_exactly(&timeline, dir.path(), 0);
}

#[test]
fn writer_processes_running_their_own_truncate_checkpoints_lose_no_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = wal_database(dir.path());
    let mut capture =
        SqliteCapture::open(&db, &dir.path().join("state"), CaptureOptions::default()).unwrap();
    let mut timeline = Timeline::default();
    timeline.add(capture.poll().unwrap());

    let done = Arc::new(AtomicBool::new(false));
    let children: Vec<_> = (0..3)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_capture-test-writer"))
                .args([db.to_str().unwrap(), "70", "7"])
                .spawn()
                .unwrap()
        })
        .collect();
    let flag = done.clone();
    let joiner = std::thread::spawn(move || {
        for mut c in children {
            assert!(c.wait().unwrap().success(), "writer process failed");
        }
        flag.store(true, Ordering::SeqCst);
    });
    capture_until_done(&mut capture, &done, &mut timeline);
    joiner.join().unwrap();

    assert_eq!(
        timeline.commits.len(),
        210,
        "one record per committed transaction"
    );
    assert_every_commit_rebuilds_exactly(&timeline, dir.path(), 0);
}

#[test]
fn capture_restarted_from_its_position_continues_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let db = wal_database(dir.path());
    let state = dir.path().join("state");
    let app = app_connection(&db);
    app.execute_batch("PRAGMA wal_autocheckpoint=0;").unwrap();
    let mut timeline = Timeline::default();
    {
        let mut capture = SqliteCapture::open(&db, &state, CaptureOptions::default()).unwrap();
        timeline.add(capture.poll().unwrap());
        for _ in 0..10 {
            commit_next_entry(&app);
        }
        timeline.add(capture.poll().unwrap());
        capture.confirm_durable(timeline.last_seq()).unwrap();
        // Read but never confirmed: must come again after the restart.
        commit_next_entry(&app);
        let unconfirmed = capture.poll().unwrap();
        assert_eq!(unconfirmed.len(), 1);
    }
    for _ in 0..10 {
        commit_next_entry(&app);
    }
    let mut capture = SqliteCapture::open(&db, &state, CaptureOptions::default()).unwrap();
    let resumed = capture.poll().unwrap();
    assert!(
        resumed.iter().all(|e| matches!(e, CaptureEvent::Commit(_))),
        "resuming needs no new base image"
    );
    timeline.add(resumed);
    assert_eq!(timeline.commits.len(), 21);
    assert_every_commit_rebuilds_exactly(&timeline, dir.path(), 0);
}

#[test]
fn a_wal_restarted_while_capture_was_down_is_reported_and_a_base_image_taken() {
    let dir = tempfile::tempdir().unwrap();
    let db = wal_database(dir.path());
    let state = dir.path().join("state");
    let app = app_connection(&db);
    let mut timeline = Timeline::default();
    {
        let mut capture = SqliteCapture::open(&db, &state, CaptureOptions::default()).unwrap();
        timeline.add(capture.poll().unwrap());
        commit_next_entry(&app);
        timeline.add(capture.poll().unwrap());
        capture.confirm_durable(timeline.last_seq()).unwrap();
    }
    for _ in 0..5 {
        commit_next_entry(&app);
    }
    app.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    for _ in 0..5 {
        commit_next_entry(&app);
    }
    let mut capture = SqliteCapture::open(&db, &state, CaptureOptions::default()).unwrap();
    let events = capture.poll().unwrap();
    let [CaptureEvent::BaseImage(image)] = events.as_slice() else {
        panic!("expected exactly one base image, got {events:?}");
    };
    let SnapshotReason::ContinuityLost { why } = &image.record.reason else {
        panic!(
            "reason must say continuity was lost, got {:?}",
            image.record.reason
        );
    };
    assert!(why.contains("restarted"), "{why}");
    assert_eq!(
        image.record.seq,
        timeline.last_seq() + 1,
        "seqs continue after the loss"
    );
    timeline.add(events);
    let out = dir.path().join("after-loss.db");
    timeline.rebuild_at(timeline.last_seq(), &out);
    assert_eq!(entry_ids(&out), (1..=11).collect::<Vec<_>>());

    // Replaying the older image across the break would silently miss transactions.
    let first = &timeline.images[0];
    let across = dir.path().join("across-the-break.db");
    let err = lifeboat_capture::replay::rebuild(
        &first.path,
        &first.record,
        &timeline.records,
        lifeboat_capture::replay::RebuildTarget::Seq(timeline.last_seq()),
        &across,
    )
    .unwrap_err();
    assert!(err.to_string().contains("cannot cross"), "{err}");
    assert!(!across.exists());
}

#[test]
fn a_base_image_taken_under_write_load_is_exactly_the_database_at_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let db = wal_database(dir.path());
    let mut capture =
        SqliteCapture::open(&db, &dir.path().join("state"), CaptureOptions::default()).unwrap();
    let mut timeline = Timeline::default();
    timeline.add(capture.poll().unwrap());

    let done = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let (db, done) = (db.clone(), done.clone());
            std::thread::spawn(move || {
                let app = app_connection(&db);
                while !done.load(Ordering::SeqCst) {
                    commit_next_entry(&app);
                }
            })
        })
        .collect();
    let mut later_images = Vec::new();
    while later_images.len() < 3 {
        timeline.add(capture.poll().unwrap());
        capture.confirm_durable(timeline.last_seq()).unwrap();
        if timeline.commits.len() > 40 * (later_images.len() + 1) {
            let events = capture.take_base_image().unwrap();
            if let Some(CaptureEvent::BaseImage(image)) = events.last() {
                later_images.push(image.clone());
            }
            timeline.add(events);
            capture.confirm_durable(timeline.last_seq()).unwrap();
        }
    }
    done.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }

    let first = &timeline.images[0];
    for image in later_images {
        let out = dir.path().join(format!("replayed-{}.db", image.record.seq));
        let target = lifeboat_capture::replay::RebuildTarget::Seq(image.record.seq - 1);
        lifeboat_capture::replay::rebuild(
            &first.path,
            &first.record,
            &timeline.records,
            target,
            &out,
        )
        .unwrap();
        let replayed = std::fs::read(&out).unwrap();
        let taken = std::fs::read(&image.path).unwrap();
        assert!(
            replayed == taken,
            "image at seq {} differs from the replayed database",
            image.record.seq
        );
    }
}

#[test]
fn an_app_truncate_checkpoint_cannot_drop_frames_capture_has_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let db = wal_database(dir.path());
    let app = app_connection(&db);
    let impatient = rusqlite::Connection::open(&db).unwrap();
    impatient.busy_timeout(Duration::from_millis(50)).unwrap();
    let truncate = || -> (i64, i64, i64) {
        impatient
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap()
    };
    let mut capture =
        SqliteCapture::open(&db, &dir.path().join("state"), CaptureOptions::default()).unwrap();
    let mut timeline = Timeline::default();
    timeline.add(capture.poll().unwrap());

    // Frames capture has not read: the app's TRUNCATE has to give up (busy).
    for _ in 0..5 {
        commit_next_entry(&app);
    }
    let (busy, _, _) = truncate();
    assert_eq!(busy, 1, "the pinned read transaction holds the log");
    timeline.add(capture.poll().unwrap());
    assert_eq!(timeline.commits.len(), 5);

    // Right after capture's own checkpoint the log holds only captured frames: the app's
    // TRUNCATE may empty it, and capture carries on with the next generation.
    capture.confirm_durable(timeline.last_seq()).unwrap();
    let mut shipped = Vec::new();
    capture
        .checkpoint(|e| {
            shipped.extend_from_slice(e);
            Ok(())
        })
        .unwrap();
    timeline.add(shipped);
    assert_eq!(
        truncate(),
        (0, 0, 0),
        "nothing uncaptured is left to protect"
    );
    for _ in 0..3 {
        commit_next_entry(&app);
    }
    timeline.add(capture.poll().unwrap());
    assert_eq!(timeline.commits.len(), 8);
    assert_eq!(timeline.images.len(), 1, "no continuity was lost");
    let out = dir.path().join("end.db");
    timeline.rebuild_at(timeline.last_seq(), &out);
    assert_eq!(entry_ids(&out), (1..=8).collect::<Vec<_>>());
}

#[test]
fn an_app_process_exiting_after_a_base_image_cannot_checkpoint_past_capture() {
    // Reading the database file for an image must not drop SQLite's locks in this process;
    // otherwise the exiting app believes it is alone, checkpoints and deletes the WAL.
    let dir = tempfile::tempdir().unwrap();
    let db = wal_database(dir.path());
    let mut capture =
        SqliteCapture::open(&db, &dir.path().join("state"), CaptureOptions::default()).unwrap();
    let mut timeline = Timeline::default();
    timeline.add(capture.poll().unwrap());
    timeline.add(capture.take_base_image().unwrap());
    let status = Command::new(env!("CARGO_BIN_EXE_capture-test-writer"))
        .args([db.to_str().unwrap(), "10"])
        .status()
        .unwrap();
    assert!(status.success());
    timeline.add(capture.poll().unwrap());
    assert_eq!(
        timeline.commits.len(),
        10,
        "every commit of the exited app was captured"
    );
    let out = dir.path().join("end.db");
    timeline.rebuild_at(timeline.last_seq(), &out);
    assert_eq!(entry_ids(&out), (1..=10).collect::<Vec<_>>());
}
