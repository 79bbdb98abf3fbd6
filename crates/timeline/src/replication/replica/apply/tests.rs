use super::*;
use lifeboat_capture::{
    BaseImageRecord, CaptureEvent, CaptureOptions, CommitRecord, FileChange, SqliteCapture,
};
use rusqlite::Connection;
use time::OffsetDateTime;

fn held(epoch: u64, seq: u64) -> SourcePosition {
    SourcePosition {
        epoch,
        seq,
        term: 7,
    }
}

fn commit(epoch: u64, seq: u64) -> Record {
    Record::Commit(CommitRecord {
        epoch,
        seq,
        page_size: 512,
        db_pages: 1,
        pages: BTreeMap::new(),
        commit_time: OffsetDateTime::UNIX_EPOCH,
    })
}

fn image(epoch: u64, seq: u64, reason: SnapshotReason) -> Record {
    Record::BaseImage(BaseImageRecord {
        epoch,
        seq,
        page_size: 512,
        db_pages: 1,
        image_hash: String::new(),
        taken_at: OffsetDateTime::UNIX_EPOCH,
        reason,
    })
}

fn file(epoch: u64, seq: u64) -> Record {
    Record::File(FileChange {
        epoch,
        seq,
        path: "a".into(),
        change: FileChangeKind::Deleted,
        observed_at: OffsetDateTime::UNIX_EPOCH,
    })
}

#[test]
fn the_next_record_applies_a_held_one_is_skipped_and_anything_else_resyncs() {
    let lost = SnapshotReason::ContinuityLost { why: "x".into() };
    // Continuation, in the same session or the next one starting right here.
    assert_eq!(decide(held(5, 10), &commit(5, 11), true), Decision::Apply);
    assert_eq!(decide(held(5, 10), &commit(9, 11), true), Decision::Apply);
    assert_eq!(decide(held(5, 10), &file(5, 11), false), Decision::Apply);
    // Already held (a duplicate, or an older session's copy).
    assert_eq!(decide(held(5, 10), &commit(5, 10), true), Decision::Skip);
    assert_eq!(decide(held(5, 10), &commit(4, 3), true), Decision::Skip);
    // A whole image replaces whatever came before, even over seqs already held.
    assert_eq!(
        decide(held(5, 10), &image(6, 8, lost.clone()), true),
        Decision::Apply
    );
    assert_eq!(
        decide(held(5, 10), &image(5, 20, lost), true),
        Decision::Apply
    );
    // A requested image is an ordinary record (it changes nothing).
    assert_eq!(
        decide(held(5, 10), &image(5, 11, SnapshotReason::Requested), true),
        Decision::Apply
    );
    assert!(matches!(
        decide(held(5, 10), &image(5, 13, SnapshotReason::Requested), true),
        Decision::Resync(_)
    ));
    // A history handed out again differently, a gap, an older session, the wrong kind.
    for (held_at, rec, is_db) in [
        (held(5, 10), commit(6, 9), true),
        (held(5, 10), file(6, 10), false),
        (held(5, 10), commit(5, 12), true),
        (held(5, 10), commit(4, 11), true),
        (held(5, 10), file(5, 11), true),
        (held(5, 10), commit(5, 11), false),
    ] {
        assert!(
            matches!(decide(held_at, &rec, is_db), Decision::Resync(_)),
            "{held_at:?} {rec:?}"
        );
    }
}

/// A primary database and a standby copy of it taken while capture starts, plus the capture.
struct Pair {
    _tmp: tempfile::TempDir,
    primary: PathBuf,
    app: Connection,
    cap: SqliteCapture,
    state: PathBuf,
    meta: PathBuf,
    epoch: u64,
    last_seq: u64,
}

impl Pair {
    fn new() -> Pair {
        let tmp = tempfile::tempdir().unwrap();
        let primary = tmp.path().join("primary.db");
        let app = Connection::open(&primary).unwrap();
        app.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT);",
        )
        .unwrap();
        app.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        let state = tmp.path().join("copy");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::copy(&primary, state.join("app.db")).unwrap();
        let mut cap =
            SqliteCapture::open(&primary, &tmp.path().join("cap"), CaptureOptions::default())
                .unwrap();
        let first = cap.poll().unwrap();
        let (epoch, last_seq) = match first.last() {
            Some(CaptureEvent::BaseImage(b)) => (b.record.epoch, b.record.seq),
            other => panic!("expected the first image, got {other:?}"),
        };
        let meta = tmp.path().join("meta");
        std::fs::create_dir_all(&meta).unwrap();
        Pair {
            _tmp: tmp,
            primary,
            app,
            cap,
            state,
            meta,
            epoch,
            last_seq,
        }
    }

    fn applier(&self) -> Applier {
        let mut file = ReplicaFile::empty("site");
        file.ready = true;
        file.sources
            .insert("app.db".into(), held(self.epoch, self.last_seq));
        Applier::open(&self.state, &self.meta, file, &["app.db".into()], &[], None).unwrap()
    }

    /// Commits `n` transactions (one grows the table a lot, one deletes most of it) and
    /// returns them as one batch.
    fn batch(&mut self, seq: u64, n: i64, shrink: bool) -> DecodedBatch {
        for i in 0..n {
            self.app
                .execute(
                    "INSERT INTO t (body) VALUES (?1)",
                    [format!("{i}-{}", "x".repeat((i as usize * 97) % 3000))],
                )
                .unwrap();
        }
        if shrink {
            self.app
                .execute_batch("DELETE FROM t WHERE id % 3 != 0; VACUUM;")
                .unwrap();
        }
        let events = self.cap.poll().unwrap();
        let records: Vec<Record> = events
            .into_iter()
            .map(|e| match e {
                CaptureEvent::Commit(c) => Record::Commit(c),
                CaptureEvent::BaseImage(b) => Record::BaseImage(b.record),
            })
            .collect();
        self.cap
            .confirm_durable(records.last().unwrap().seq())
            .unwrap();
        DecodedBatch {
            mariadb: BTreeMap::new(),
            position: Position { term: 7, seq },
            sources: BTreeMap::from([("app.db".to_string(), records)]),
            contents: BTreeMap::new(),
            bytes: 0,
        }
    }

    fn rows(db: &Path) -> Vec<(i64, String)> {
        let c = Connection::open(db).unwrap();
        let mut s = c.prepare("SELECT id, body FROM t ORDER BY id").unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }
}

#[test]
fn a_group_applied_twice_or_after_a_crash_gives_the_primarys_database() {
    let mut pair = Pair::new();
    let mut a = pair.applier();
    let b1 = pair.batch(1, 30, false);
    let b2 = pair.batch(2, 5, true);
    let b3 = pair.batch(3, 40, false);
    assert_eq!(
        a.apply(&[b1.clone(), b2.clone()]).unwrap(),
        Outcome::Applied(Position { term: 7, seq: 2 })
    );
    // As after a crash between the log and the state file: the state file says nothing was
    // applied, with the intent of the group. A first batch alone must not be committed on
    // top of the whole group; the group again (and more) gives the same database.
    let mut crashed = a.file.clone();
    crashed.applied = Position::default();
    crashed
        .sources
        .insert("app.db".into(), held(pair.epoch, pair.last_seq));
    crashed.applying = Some(Applying {
        through: Position { term: 7, seq: 2 },
        sources: a.file.sources.clone(),
    });
    drop(a);
    let mut a = Applier::open(
        &pair.state,
        &pair.meta,
        crashed,
        &["app.db".into()],
        &[],
        None,
    )
    .unwrap();
    assert_eq!(a.apply(std::slice::from_ref(&b1)).unwrap(), Outcome::Wait);
    assert_eq!(
        a.apply(&[b1, b2, b3]).unwrap(),
        Outcome::Applied(Position { term: 7, seq: 3 })
    );
    assert!(a.file.applying.is_none());
    drop(a);
    let copy = pair.state.join("app.db");
    assert_eq!(Pair::rows(&copy), Pair::rows(&pair.primary));
    lifeboat_capture::replay::integrity_check(&copy).unwrap();
}

#[test]
fn the_copy_stays_a_wal_database_sqlite_opens_after_checkpoints() {
    let mut pair = Pair::new();
    let mut a = pair.applier();
    a.wal_checkpoint_bytes = 0;
    for seq in 1..=4 {
        let b = pair.batch(seq, 20, seq == 3);
        assert!(matches!(a.apply(&[b]).unwrap(), Outcome::Applied(_)));
    }
    a.checkpoint_all().unwrap();
    drop(a);
    let copy = pair.state.join("app.db");
    let mode: String = Connection::open(&copy)
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(Pair::rows(&copy), Pair::rows(&pair.primary));
}
