//! Stopping the worker abruptly and starting it again leaves no gap in the timeline and loses
//! nothing written meanwhile; the background loop ships on its own; a quiet site writes no
//! segments.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lifeboat_timeline::{RestoreTarget, STREAM, TimelineWorker, restore_site};
use time::OffsetDateTime;

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_and_restarted_worker_leaves_no_gap_and_loses_nothing() {
    let site = Site::new();
    let repo = site.init_vault(2).await;
    let conn = site.db();

    let first = TimelineWorker::start(site.sources(), fast_options(), repo.clone())
        .await
        .unwrap();
    site.insert(&conn, 0..10);
    site.upload("a.txt", b"first");
    first.ship_now().await.unwrap();
    let t1 = OffsetDateTime::now_utc();
    site.insert(&conn, 10..15);
    // Dropped without stopping (as when the process dies): these five may or may not have
    // been shipped; either way they must not be lost.
    drop(first);

    // Written while no worker runs.
    site.insert(&conn, 15..20);
    site.upload("b.txt", b"while down");
    site.delete_upload("a.txt");

    let second = TimelineWorker::start(site.sources(), fast_options(), repo.clone())
        .await
        .unwrap();
    site.insert(&conn, 20..30);
    second.ship_now().await.unwrap();

    let seqs = repo.list_segments(STREAM).await.unwrap();
    let expected: Vec<u64> = (1..=*seqs.last().unwrap()).collect();
    assert_eq!(seqs, expected, "segment seqs have a gap");

    let latest = site.tmp.path().join("latest");
    restore_site(&repo, RestoreTarget::Latest, &latest)
        .await
        .unwrap();
    assert_eq!(
        ids_in(&latest.join("data/app.db")),
        (0..30).collect::<Vec<_>>()
    );
    let files = files_in(&latest.join("uploads"));
    assert_eq!(files.keys().collect::<Vec<_>>(), vec!["b.txt"]);

    let early = site.tmp.path().join("early");
    restore_site(&repo, RestoreTarget::Time(t1), &early)
        .await
        .unwrap();
    assert_eq!(
        ids_in(&early.join("data/app.db")),
        (0..10).collect::<Vec<_>>()
    );
    assert_eq!(files_in(&early.join("uploads"))["a.txt"], b"first");
    second.stop(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_loop_ships_within_the_interval_and_a_quiet_site_writes_nothing() {
    let site = Site::new();
    let repo = site.init_vault(2).await;
    let worker = TimelineWorker::start(site.sources(), fast_options(), repo.clone())
        .await
        .unwrap();
    let mut events = worker.subscribe();
    let before = worker.status().segments_shipped;
    site.insert(&site.db(), 0..3);
    wait_for("the background loop to ship", || {
        let s = worker.status();
        s.segments_shipped > before && s.lag.is_zero() && s.last_error.is_none()
    })
    .await;
    let status = worker.status();
    assert!(status.bytes_shipped > 0);
    assert!(
        status.last_checkpoint.is_some(),
        "a checkpoint is taken at start"
    );
    assert!(status.last_shipped_at.is_some());
    // The shipment was announced.
    let mut announced = false;
    while let Ok(e) = events.try_recv() {
        announced |= matches!(e, lifeboat_timeline::TimelineEvent::SegmentShipped { .. });
    }
    assert!(announced);

    // Quiet: several segment intervals pass without a single new segment.
    let segments = repo.list_segments(STREAM).await.unwrap().len();
    tokio::time::sleep(fast_options().segment_interval * 5).await;
    assert_eq!(repo.list_segments(STREAM).await.unwrap().len(), segments);
    assert_eq!(worker.ship_now().await.unwrap(), None);
    worker.stop(Duration::from_secs(30)).await.unwrap();
}
