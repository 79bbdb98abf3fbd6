//! Damage in the write-ahead log is reported (never skipped silently), and restores by
//! time include exactly the commits seen by then.

mod common;

use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::*;
use lifeboat_capture::replay::{RebuildTarget, rebuild};
use lifeboat_capture::{CaptureError, CaptureEvent, CaptureOptions, SnapshotReason, SqliteCapture};
use time::OffsetDateTime;

#[test]
fn a_corrupted_committed_frame_is_reported_and_earlier_moments_stay_restorable() {
    let dir = tempfile::tempdir().unwrap();
    let db = wal_database(dir.path());
    let app = app_connection(&db);
    app.execute_batch("PRAGMA wal_autocheckpoint=0;").unwrap();
    let mut capture =
        SqliteCapture::open(&db, &dir.path().join("state"), CaptureOptions::default()).unwrap();
    let mut timeline = Timeline::default();
    timeline.add(capture.poll().unwrap());
    for _ in 0..3 {
        commit_next_entry(&app);
    }
    timeline.add(capture.poll().unwrap());
    let clean_seq = timeline.last_seq();
    let damaged_frame = capture.status().wal_offset;

    for _ in 0..3 {
        commit_next_entry(&app);
    }
    // Flip a byte in the page of the first uncaptured frame (its last byte: row content).
    let wal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("{}-wal", db.display()))
        .unwrap();
    let at = damaged_frame + 24 + 4095;
    let mut byte = [0u8];
    wal.read_exact_at(&mut byte, at).unwrap();
    wal.write_all_at(&[byte[0] ^ 0x5a], at).unwrap();

    let err = capture.poll().unwrap_err();
    let CaptureError::CorruptWal { offset, .. } = err else {
        panic!("expected CorruptWal, got {err}")
    };
    assert_eq!(offset, damaged_frame, "the damaged frame is named");
    assert!(err.to_string().contains("integrity_check"), "{err}");

    let events = capture.resync("write-ahead log damaged").unwrap();
    let Some(CaptureEvent::BaseImage(image)) = events.last() else {
        panic!("resync ends with a base image")
    };
    assert!(
        matches!(&image.record.reason, SnapshotReason::ContinuityLost { why } if why.contains("damaged"))
    );
    timeline.add(events);

    // Capture goes on after the damage.
    commit_next_entry(&app);
    let after = capture.poll().unwrap();
    assert_eq!(after.len(), 1, "the next commit is captured");
    timeline.add(after);

    let out = dir.path().join("before-damage.db");
    timeline.rebuild_at(clean_seq, &out);
    assert_eq!(entry_ids(&out), vec![1, 2, 3]);
}

#[test]
fn a_restore_as_of_a_time_holds_exactly_the_commits_seen_by_then() {
    let dir = tempfile::tempdir().unwrap();
    let db = wal_database(dir.path());
    let app = app_connection(&db);
    let mut capture =
        SqliteCapture::open(&db, &dir.path().join("state"), CaptureOptions::default()).unwrap();
    let mut timeline = Timeline::default();
    timeline.add(capture.poll().unwrap());
    for _ in 0..5 {
        commit_next_entry(&app);
        timeline.add(capture.poll().unwrap());
    }
    let last_before = timeline.commits.last().unwrap().commit_time;
    wait_for(
        "the clock to move past the last commit",
        Duration::from_secs(5),
        || OffsetDateTime::now_utc() > last_before,
    );
    let t = OffsetDateTime::now_utc();
    wait_for("the clock to move past T", Duration::from_secs(5), || {
        OffsetDateTime::now_utc() > t
    });
    for _ in 0..5 {
        commit_next_entry(&app);
        timeline.add(capture.poll().unwrap());
    }
    let base = &timeline.images[0];
    let out = dir.path().join("as-of-t.db");
    rebuild(
        &base.path,
        &base.record,
        &timeline.records,
        RebuildTarget::Time(t),
        &out,
    )
    .unwrap();
    assert_eq!(entry_ids(&out), vec![1, 2, 3, 4, 5]);
}

#[test]
fn rebuild_refuses_a_gap_in_the_records_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = wal_database(dir.path());
    let app = app_connection(&db);
    let mut capture =
        SqliteCapture::open(&db, &dir.path().join("state"), CaptureOptions::default()).unwrap();
    let mut timeline = Timeline::default();
    timeline.add(capture.poll().unwrap());
    for _ in 0..4 {
        commit_next_entry(&app);
    }
    timeline.add(capture.poll().unwrap());
    let mut with_gap = timeline.records.clone();
    with_gap.remove(2); // [base image, commit, commit, ...]: drop the second commit
    let base = &timeline.images[0];
    let out = dir.path().join("never.db");
    let err = rebuild(
        &base.path,
        &base.record,
        &with_gap,
        RebuildTarget::Seq(timeline.last_seq()),
        &out,
    )
    .unwrap_err();
    assert!(err.to_string().contains("gap"), "{err}");
    assert!(
        !out.exists(),
        "nothing is written when the rebuild is refused"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_damaged_base_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = wal_database(dir.path());
    let mut capture =
        SqliteCapture::open(&db, &dir.path().join("state"), CaptureOptions::default()).unwrap();
    let mut timeline = Timeline::default();
    timeline.add(capture.poll().unwrap());
    let base = &timeline.images[0];
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&base.path)
        .unwrap();
    f.write_all_at(b"X", 200).unwrap();
    let out = dir.path().join("never.db");
    let err = rebuild(
        &base.path,
        &base.record,
        &[],
        RebuildTarget::Seq(base.record.seq),
        &out,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("does not match its recorded hash"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn checkpoints_keep_the_log_from_growing_without_bound() {
    let dir = tempfile::tempdir().unwrap();
    let db = wal_database(dir.path());
    let app = app_connection(&db);
    let mut capture =
        SqliteCapture::open(&db, &dir.path().join("state"), CaptureOptions::default()).unwrap();
    let mut timeline = Timeline::default();
    timeline.add(capture.poll().unwrap());
    let wal_len = || {
        std::fs::metadata(format!("{}-wal", db.display()))
            .unwrap()
            .len()
    };
    let mut largest = 0;
    for round in 0..40 {
        for _ in 0..10 {
            commit_next_entry(&app);
        }
        timeline.add(capture.poll().unwrap());
        capture.confirm_durable(timeline.last_seq()).unwrap();
        let mut shipped = Vec::new();
        let report = capture
            .checkpoint(|e| {
                shipped.extend_from_slice(e);
                Ok(())
            })
            .unwrap();
        timeline.add(shipped);
        assert!(report.complete, "round {round}: {report:?}");
        largest = largest.max(wal_len());
    }
    // 400 transactions of up to one overflow page each would need far more than this
    // without checkpoints; with them the log is reused from its start.
    assert!(largest < 400 * 4096, "the log reached {largest} bytes");
    assert_eq!(timeline.commits.len(), 400);
    let out = dir.path().join("end.db");
    timeline.rebuild_at(timeline.last_seq(), &out);
    assert_eq!(entry_ids(&out), (1..=400).collect::<Vec<_>>());
}

#[test]
fn a_failed_shipment_skips_the_checkpoint_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = wal_database(dir.path());
    let app = app_connection(&db);
    let mut capture =
        SqliteCapture::open(&db, &dir.path().join("state"), CaptureOptions::default()).unwrap();
    let mut timeline = Timeline::default();
    let first = capture.poll().unwrap();
    timeline.add(first);
    capture.confirm_durable(timeline.last_seq()).unwrap();
    for _ in 0..3 {
        commit_next_entry(&app);
    }
    let err = capture
        .checkpoint(|_| Err("destination unreachable".into()))
        .unwrap_err();
    assert!(err.to_string().contains("destination unreachable"), "{err}");
    let events = capture.poll().unwrap();
    assert_eq!(
        events.len(),
        3,
        "the unshipped commits are handed out again"
    );
    timeline.add(events);
}

#[test]
fn a_rebuild_that_fails_the_integrity_check_is_never_put_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let db = wal_database(dir.path());
    let app = app_connection(&db);
    for _ in 0..30 {
        commit_next_entry(&app);
    }
    let mut capture =
        SqliteCapture::open(&db, &dir.path().join("state"), CaptureOptions::default()).unwrap();
    let mut timeline = Timeline::default();
    timeline.add(capture.poll().unwrap());
    let base = &timeline.images[0];
    // Damage the table's b-tree (page 2) and re-record the hash, as if the page had been
    // corrupt in the live database when the image was taken.
    let mut bytes = std::fs::read(&base.path).unwrap();
    let page = base.record.page_size as usize;
    bytes[page] = 0x42; // not a valid b-tree page type
    let damaged = dir.path().join("damaged-image.db");
    std::fs::write(&damaged, &bytes).unwrap();
    let mut record = base.record.clone();
    record.image_hash = blake3::hash(&bytes).to_hex().to_string();

    let out = dir.path().join("never.db");
    let err = rebuild(
        &damaged,
        &record,
        &timeline.records,
        RebuildTarget::Seq(record.seq),
        &out,
    )
    .unwrap_err();
    assert!(
        matches!(err, CaptureError::IntegrityCheckFailed { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("pick an earlier restore point"),
        "{err}"
    );
    assert!(!out.exists(), "a damaged rebuild is never put in place");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("never"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
