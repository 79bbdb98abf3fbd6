use super::*;
use lifeboat_capture::{CommitRecord, FileChange, FileChangeKind};

fn commit(epoch: u64, seq: u64) -> Record {
    Record::Commit(CommitRecord {
        epoch,
        seq,
        page_size: 512,
        db_pages: 1,
        pages: BTreeMap::from([(1, vec![seq as u8; 512])]),
        commit_time: OffsetDateTime::UNIX_EPOCH,
    })
}

fn deleted(epoch: u64, seq: u64) -> Record {
    Record::File(FileChange {
        epoch,
        seq,
        path: format!("f{seq}"),
        change: FileChangeKind::Deleted,
        observed_at: OffsetDateTime::UNIX_EPOCH,
    })
}

fn feed(window_batches: usize) -> Arc<FeedInner> {
    let f = FeedInner::new(FeedOptions {
        window_batches,
        ..FeedOptions::new(7)
    })
    .unwrap();
    f.add_source("app.db", 10);
    f.add_source("uploads", 3);
    f
}

fn publish(f: &FeedInner, db: &[(u64, u64)], dir: &[(u64, u64)]) {
    let mut sources = BTreeMap::new();
    if !db.is_empty() {
        sources.insert(
            "app.db".to_string(),
            db.iter().map(|&(e, s)| commit(e, s)).collect(),
        );
    }
    if !dir.is_empty() {
        sources.insert(
            "uploads".to_string(),
            dir.iter().map(|&(e, s)| deleted(e, s)).collect(),
        );
    }
    f.publish(sources, BTreeMap::new(), BTreeMap::new(), None);
}

fn held(db: (u64, u64), dir: (u64, u64)) -> BTreeMap<String, SourcePosition> {
    BTreeMap::from([
        (
            "app.db".to_string(),
            SourcePosition {
                epoch: db.0,
                seq: db.1,
                term: 7,
            },
        ),
        (
            "uploads".to_string(),
            SourcePosition {
                epoch: dir.0,
                seq: dir.1,
                term: 7,
            },
        ),
    ])
}

#[test]
fn a_standby_starts_at_the_first_batch_it_lacks_and_is_credited_the_rest() {
    let f = feed(100);
    let first = f.first_seq;
    publish(&f, &[(5, 11), (5, 12)], &[]);
    publish(&f, &[], &[(5, 4)]);
    publish(&f, &[(5, 13)], &[(5, 5)]);
    assert_eq!(
        f.last_position(),
        Position {
            term: 7,
            seq: first + 2
        }
    );

    // Holds up to db 12 and dir 4: the third batch is the first it lacks.
    assert_eq!(
        f.plan_start(&held((5, 12), (5, 4))),
        StartPlan::Serve {
            next_seq: first + 2,
            credited: Position {
                term: 7,
                seq: first + 1
            }
        }
    );
    // Holds only what was confirmed before the feed began: everything is sent.
    assert_eq!(
        f.plan_start(&held((4, 10), (4, 3))),
        StartPlan::Serve {
            next_seq: first,
            credited: Position {
                term: 7,
                seq: first - 1
            }
        }
    );
    // Holds everything: nothing to send, everything credited.
    assert_eq!(
        f.plan_start(&held((5, 13), (5, 5))),
        StartPlan::Serve {
            next_seq: first + 3,
            credited: Position {
                term: 7,
                seq: first + 2
            }
        }
    );
}

#[test]
fn a_standby_behind_the_window_resyncs_and_one_of_another_site_layout_is_refused() {
    let f = feed(2);
    let first = f.first_seq;
    publish(&f, &[(5, 11)], &[]);
    publish(&f, &[(5, 12)], &[]);
    publish(&f, &[(5, 13)], &[(5, 4)]);
    // The first batch left the window: db records up to 11 are no longer streamable.
    assert_eq!(
        f.status().oldest_in_window,
        Some(Position {
            term: 7,
            seq: first + 1
        })
    );
    assert!(matches!(
        f.plan_start(&held((5, 10), (5, 3))),
        StartPlan::Resync(_)
    ));
    assert!(matches!(
        f.plan_start(&held((5, 11), (5, 3))),
        StartPlan::Serve { next_seq, .. } if next_seq == first + 1
    ));
    let mut other = held((5, 11), (5, 3));
    other.remove("uploads");
    assert!(matches!(
        f.plan_start(&other),
        StartPlan::Refuse(RefusalCode::SourcesDiffer, _)
    ));
}

#[test]
fn records_handed_out_again_by_a_later_session_are_sent_to_a_standby_that_holds_the_seqs() {
    let f = feed(100);
    let first = f.first_seq;
    // The capture restarted (session 6) and handed seqs 11..12 out again.
    publish(&f, &[(6, 11), (6, 12)], &[]);
    // The standby got 11..12 from session 5 before the crash: it must see session 6's.
    assert_eq!(
        f.plan_start(&held((5, 12), (5, 3))),
        StartPlan::Serve {
            next_seq: first,
            credited: Position {
                term: 7,
                seq: first - 1
            }
        }
    );
}

#[test]
fn a_batch_too_large_to_stream_starts_the_window_over_after_it() {
    let f = FeedInner::new(FeedOptions {
        max_batch_bytes: 2000,
        ..FeedOptions::new(7)
    })
    .unwrap();
    f.add_source("app.db", 10);
    let first = f.first_seq;
    publish(&f, &[(5, 11)], &[]);
    let many: Vec<(u64, u64)> = (12..20).map(|s| (5, s)).collect();
    publish(&f, &many, &[]);
    let s = f.status();
    assert_eq!(s.resets, 1);
    assert_eq!(s.window_batches, 0);
    assert_eq!(
        s.last_position,
        Position {
            term: 7,
            seq: first + 1
        }
    );
    assert!(matches!(f.next_after(first, 10), Next::Gone));
    let only_db = |seq| {
        BTreeMap::from([(
            "app.db".to_string(),
            SourcePosition {
                epoch: 5,
                seq,
                term: 7,
            },
        )])
    };
    assert!(matches!(f.plan_start(&only_db(11)), StartPlan::Resync(_)));
    assert!(matches!(
        f.plan_start(&only_db(19)),
        StartPlan::Serve { .. }
    ));
}

#[test]
fn a_feed_needs_a_term() {
    assert!(FeedInner::new(FeedOptions::new(0)).is_err());
}
