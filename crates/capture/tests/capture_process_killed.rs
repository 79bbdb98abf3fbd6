//! Capture killed with SIGKILL in the middle of a write load and started again: the stored
//! timeline has no gap, every gap in continuity is an explicit base image, and the database
//! rebuilt at every stored commit holds exactly the rows committed up to it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{ChildGuard, entry_ids, wait_for, wal_database};
use lifeboat_capture::record::resolve_history;
use lifeboat_capture::replay::{RebuildTarget, rebuild};
use lifeboat_capture::{BaseImageRecord, CommitRecord, Record, decode_segment};

fn start_capture(db: &Path, state: &Path, spool: &Path) -> ChildGuard {
    ChildGuard::spawn(
        Command::new(env!("CARGO_BIN_EXE_capture-test-driver")).args([db, state, spool]),
    )
}

fn segments(spool: &Path) -> Vec<std::path::PathBuf> {
    let mut names: Vec<_> = std::fs::read_dir(spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    names.sort();
    names
}

fn stored_records(spool: &Path) -> Vec<Record> {
    segments(spool)
        .iter()
        .flat_map(|p| decode_segment(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

#[test]
fn capture_killed_mid_load_and_restarted_leaves_a_timeline_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let db = wal_database(dir.path());
    let state = dir.path().join("state");
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();

    let mut capture = start_capture(&db, &state, &spool);
    wait_for("the first base image", Duration::from_secs(60), || {
        !segments(&spool).is_empty()
    });
    let stop_writers = dir.path().join("stop-writers");
    let until = format!("until:{}", stop_writers.display());
    let mut writers: Vec<ChildGuard> = (0..3)
        .map(|_| {
            ChildGuard::spawn(
                Command::new(env!("CARGO_BIN_EXE_capture-test-writer")).args([
                    db.to_str().unwrap(),
                    &until,
                    "13",
                ]),
            )
        })
        .collect();
    for _ in 0..3 {
        let seen = segments(&spool).len();
        wait_for("capture to store more", Duration::from_secs(120), || {
            segments(&spool).len() > seen + 3
        });
        capture.kill(); // SIGKILL, mid-load
        capture = start_capture(&db, &state, &spool);
    }
    let seen = segments(&spool).len();
    wait_for("capture to store more", Duration::from_secs(120), || {
        segments(&spool).len() > seen + 3
    });
    std::fs::write(&stop_writers, b"").unwrap();
    for w in &mut writers {
        assert!(w.wait_success(), "writer failed");
    }
    std::fs::write(spool.join("stop"), b"").unwrap();
    assert!(capture.wait_success(), "capture failed");

    let mut images: Vec<BaseImageRecord> = Vec::new();
    let mut commits: Vec<CommitRecord> = Vec::new();
    let history = resolve_history(stored_records(&spool));
    assert!(
        history.windows(2).all(|w| w[1].seq() == w[0].seq() + 1),
        "no gap in the timeline"
    );
    use lifeboat_capture::record::Sequenced;
    for r in &history {
        match r.clone() {
            Record::BaseImage(b) => images.push(b),
            Record::Commit(c) => commits.push(c),
            Record::File(_) => unreachable!(),
        }
    }

    // Rebuild at every base image and every commit: each commit adds exactly the next id.
    let mut expected_rows = 0i64;
    let mut commit_iter = commits.iter().peekable();
    for (i, image) in images.iter().enumerate() {
        let image_path = spool.join(format!("image-{}.db", image.image_hash));
        let out = dir.path().join(format!("image-{}.db", image.seq));
        rebuild(
            &image_path,
            image,
            &history,
            RebuildTarget::Seq(image.seq),
            &out,
        )
        .unwrap();
        let ids = entry_ids(&out);
        assert!(
            ids.len() as i64 >= expected_rows,
            "a base image never goes back in time"
        );
        assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>());
        expected_rows = ids.len() as i64;
        let next_image = images.get(i + 1).map_or(u64::MAX, |b| b.seq);
        while let Some(c) = commit_iter.next_if(|c| c.seq < next_image) {
            let out = dir.path().join(format!("commit-{}.db", c.seq));
            rebuild(
                &image_path,
                image,
                &history,
                RebuildTarget::Seq(c.seq),
                &out,
            )
            .unwrap();
            expected_rows += 1;
            assert_eq!(
                entry_ids(&out),
                (1..=expected_rows).collect::<Vec<_>>(),
                "at seq {}",
                c.seq
            );
            std::fs::remove_file(&out).unwrap();
        }
    }
    let committed = entry_ids(&db).len() as i64;
    assert_eq!(
        expected_rows, committed,
        "the timeline ends with every committed row"
    );
    let lost = images
        .iter()
        .filter(|b| b.reason != lifeboat_capture::SnapshotReason::FirstCapture);
    // Each restart either continued (same log) or said why it could not.
    for image in lost {
        assert!(
            matches!(&image.reason, lifeboat_capture::SnapshotReason::ContinuityLost { why } if !why.is_empty())
        );
    }
}
