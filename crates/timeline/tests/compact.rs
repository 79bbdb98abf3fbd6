//! Compaction and retention: restoring any moment gives the same site before and after
//! compaction, also when compaction was killed between writing bundles and deleting the
//! originals; retention keeps what the keep rules say (always the newest checkpoint), and
//! what it keeps still restores exactly after the vault is pruned.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use lifeboat_timeline::{
    BUNDLE_STREAM, CompactOptions, KeepPolicy, RestoreTarget, STREAM, TimelineError,
    TimelineWorker, WorkerOptions, apply_retention, compact, list_restore_points, restore_site,
};
use lifeboat_vault::{PruneOptions, Repository};
use time::OffsetDateTime;

type Restored = (Vec<i64>, BTreeMap<String, Vec<u8>>);

fn options() -> WorkerOptions {
    WorkerOptions {
        compact_interval: Duration::ZERO,
        ..fast_options()
    }
}

fn compact_all() -> CompactOptions {
    CompactOptions {
        older_than: Duration::ZERO,
        ..CompactOptions::default()
    }
}

async fn restore_at(repo: &Arc<Repository>, t: OffsetDateTime, into: &Path) -> Restored {
    restore_site(repo, RestoreTarget::Time(t), into)
        .await
        .unwrap();
    (
        ids_in(&into.join("data/app.db")),
        files_in(&into.join("uploads")),
    )
}

/// Writes batches (rows, small and large uploads, a deletion, checkpoints between) and
/// returns the moment after each batch was shipped.
async fn write_history(site: &Site, worker: &TimelineWorker, batches: i64) -> Vec<OffsetDateTime> {
    let conn = site.db();
    let mut moments = Vec::new();
    for k in 0..batches {
        site.insert(&conn, k * 10..k * 10 + 10);
        site.upload(&format!("small/{k}.txt"), format!("small {k}").as_bytes());
        if k % 2 == 0 {
            // Above the inline limit: stored as vault chunks through a content snapshot.
            site.upload(&format!("large/{k}.bin"), &vec![k as u8; 40_000]);
        }
        if k == 1 {
            site.upload("gone.bin", &vec![7u8; 40_000]);
        }
        if k == 3 {
            site.delete_upload("small/1.txt");
            site.delete_upload("gone.bin");
        }
        if k == 6 {
            // Content absent from the checkpoint before: the segment must name it again.
            site.upload("back.bin", &vec![7u8; 40_000]);
        }
        worker.ship_now().await.unwrap();
        if k % 3 == 2 {
            worker.checkpoint_now().await.unwrap();
        }
        moments.push(OffsetDateTime::now_utc());
    }
    moments
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_changes_no_restore_even_when_killed_before_deleting() {
    let site = Site::new();
    let repo = site.init_vault(2).await;
    let worker = TimelineWorker::start(site.sources(), options(), repo.clone())
        .await
        .unwrap();
    let moments = write_history(&site, &worker, 8).await;
    let mut expected = Vec::new();
    for (i, t) in moments.iter().enumerate() {
        let into = site.tmp.path().join(format!("before-{i}"));
        expected.push(restore_at(&repo, *t, &into).await);
    }
    assert_eq!(expected[7].0, (0..80).collect::<Vec<_>>());
    assert!(!expected[7].1.contains_key("small/1.txt"));
    let originals: Vec<(u64, Vec<u8>)> = {
        let mut v = Vec::new();
        for seq in repo.list_segments(STREAM).await.unwrap() {
            v.push((seq, repo.get_segment(STREAM, seq).await.unwrap()));
        }
        v
    };
    let points_before = list_restore_points(&repo).await.unwrap();

    // Compaction while the worker runs: everything but the newest segment goes into
    // bundles, one per checkpoint at least.
    let report = compact(&repo, &compact_all()).await.unwrap();
    let newest = originals.last().unwrap().0;
    assert_eq!(report.compacted_through, Some(newest - 1));
    assert_eq!(report.segments_merged, originals.len() as u64 - 1);
    assert_eq!(repo.list_segments(STREAM).await.unwrap(), vec![newest]);
    let bundles = repo.list_segments(BUNDLE_STREAM).await.unwrap();
    assert_eq!(bundles.len() as u64, report.bundles_written);
    assert!(bundles.len() >= 3 && bundles.len() < originals.len() / 2);
    assert_eq!(list_restore_points(&repo).await.unwrap(), points_before);
    for (i, t) in moments.iter().enumerate() {
        let into = site.tmp.path().join(format!("compacted-{i}"));
        assert_eq!(
            restore_at(&repo, *t, &into).await,
            expected[i],
            "moment {i}"
        );
    }

    // Killed after writing the bundles, before deleting: the originals are back beside
    // them. Nothing is applied twice.
    for (seq, bytes) in &originals {
        repo.put_segment(STREAM, *seq, bytes).await.unwrap();
    }
    assert_eq!(list_restore_points(&repo).await.unwrap(), points_before);
    for (i, t) in moments.iter().enumerate() {
        let into = site.tmp.path().join(format!("half-{i}"));
        assert_eq!(
            restore_at(&repo, *t, &into).await,
            expected[i],
            "moment {i}"
        );
    }
    // The next run removes the leftovers.
    let report = compact(&repo, &compact_all()).await.unwrap();
    assert_eq!(report.originals_deleted, originals.len() as u64 - 1);

    // The worker goes on after the bundles, also after a restart; later writes restore.
    let conn = site.db();
    site.insert(&conn, 1000..1005);
    worker.ship_now().await.unwrap();
    worker.stop(Duration::from_secs(30)).await.unwrap();
    let worker = TimelineWorker::start(site.sources(), options(), repo.clone())
        .await
        .unwrap();
    site.insert(&conn, 1005..1010);
    worker.ship_now().await.unwrap();
    compact(&repo, &compact_all()).await.unwrap();
    let points = list_restore_points(&repo).await.unwrap();
    assert_eq!(points.segments.len(), 1, "no gap: {:?}", points.segments);
    let into = site.tmp.path().join("latest");
    restore_site(&repo, RestoreTarget::Latest, &into)
        .await
        .unwrap();
    let ids = ids_in(&into.join("data/app.db"));
    assert_eq!(ids.len(), 90);
    assert!(ids.contains(&1009));
    for (i, t) in moments.iter().enumerate() {
        let into = site.tmp.path().join(format!("after-restart-{i}"));
        assert_eq!(
            restore_at(&repo, *t, &into).await,
            expected[i],
            "moment {i}"
        );
    }
    worker.stop(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_what_the_rules_say_and_that_still_restores_after_prune() {
    let site = Site::new();
    let repo = site.init_vault(2).await;
    let worker = TimelineWorker::start(site.sources(), options(), repo.clone())
        .await
        .unwrap();
    let moments = write_history(&site, &worker, 9).await;
    // Part of the history in bundles, part as originals.
    let mid = list_restore_points(&repo).await.unwrap().checkpoints[2].seq;
    let report = compact(&repo, &compact_all()).await.unwrap();
    assert!(report.compacted_through.unwrap() > mid);
    site.insert(&site.db(), 500..505);
    worker.ship_now().await.unwrap();
    let mut expected = Vec::new();
    for (i, t) in moments.iter().enumerate() {
        let into = site.tmp.path().join(format!("before-{i}"));
        expected.push(restore_at(&repo, *t, &into).await);
    }

    let checkpoints = list_restore_points(&repo).await.unwrap().checkpoints;
    assert_eq!(checkpoints.len(), 4, "{checkpoints:?}");
    let err = apply_retention(&repo, &KeepPolicy::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no keep rule"), "{err}");

    let report = apply_retention(
        &repo,
        &KeepPolicy {
            last: 2,
            ..KeepPolicy::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(report.kept, checkpoints[2..].to_vec());
    assert_eq!(report.forgotten, checkpoints[..2].to_vec());
    let kept_from = checkpoints[2].seq;
    assert_eq!(report.kept_from_seq, Some(kept_from));
    assert!(report.segment_objects_deleted > 0);
    assert!(report.content_snapshots_forgotten > 0);
    assert!(
        repo.list_segments(STREAM)
            .await
            .unwrap()
            .iter()
            .all(|&s| s >= kept_from)
    );
    let points = list_restore_points(&repo).await.unwrap();
    assert_eq!(points.checkpoints, checkpoints[2..].to_vec());
    assert_eq!(points.segments.len(), 1);
    assert!(points.segments[0].first_seq <= kept_from);

    // The data only forgotten things needed goes; what is kept restores exactly.
    repo.prune(&PruneOptions::default()).await.unwrap();
    for (i, t) in moments.iter().enumerate() {
        let into = site.tmp.path().join(format!("kept-{i}"));
        if *t < checkpoints[2].time {
            let err = restore_site(&repo, RestoreTarget::Time(*t), &into)
                .await
                .unwrap_err();
            assert!(
                matches!(err, TimelineError::BeforeFirstCapture { .. }),
                "{err}"
            );
        } else {
            assert_eq!(
                restore_at(&repo, *t, &into).await,
                expected[i],
                "moment {i}"
            );
        }
    }
    let into = site.tmp.path().join("latest");
    restore_site(&repo, RestoreTarget::Latest, &into)
        .await
        .unwrap();
    assert_eq!(ids_in(&into.join("data/app.db")).len(), 95);

    // Rules that select nothing still keep the newest checkpoint and all after it.
    let report = apply_retention(
        &repo,
        &KeepPolicy {
            tags: vec!["no-such-tag".into()],
            ..KeepPolicy::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(report.kept, checkpoints[3..].to_vec());
    repo.prune(&PruneOptions::default()).await.unwrap();
    let into = site.tmp.path().join("latest-2");
    restore_site(&repo, RestoreTarget::Latest, &into)
        .await
        .unwrap();
    assert_eq!(ids_in(&into.join("data/app.db")).len(), 95);
    let last = moments.len() - 1;
    let into = site.tmp.path().join("last-moment");
    assert_eq!(
        restore_at(&repo, moments[last], &into).await,
        expected[last]
    );
    worker.stop(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_compacts_on_its_own_and_keeps_shipping() {
    let site = Site::new();
    let repo = site.init_vault(2).await;
    let options = WorkerOptions {
        compact_interval: Duration::from_millis(100),
        compact_older_than: Duration::ZERO,
        ..fast_options()
    };
    let worker = TimelineWorker::start(site.sources(), options, repo.clone())
        .await
        .unwrap();
    let conn = site.db();
    for k in 0..6 {
        site.insert(&conn, k * 5..k * 5 + 5);
        worker.ship_now().await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while worker
        .status()
        .last_compaction
        .and_then(|r| r.compacted_through)
        .is_none_or(|s| s < 6)
    {
        assert!(
            Instant::now() < deadline,
            "no compaction: {:?}",
            worker.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    site.insert(&conn, 30..35);
    worker.ship_now().await.unwrap();
    assert_eq!(worker.status().last_error, None);
    worker.stop(Duration::from_secs(30)).await.unwrap();
    assert!(!repo.list_segments(BUNDLE_STREAM).await.unwrap().is_empty());
    let into = site.tmp.path().join("latest");
    restore_site(&repo, RestoreTarget::Latest, &into)
        .await
        .unwrap();
    assert_eq!(
        ids_in(&into.join("data/app.db")),
        (0..35).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_compaction_is_reported_and_the_worker_keeps_shipping() {
    let site = Site::new();
    let repo = site.init_vault(1).await;
    let options = WorkerOptions {
        compact_interval: Duration::from_millis(50),
        compact_older_than: Duration::ZERO,
        ..fast_options()
    };
    let worker = TimelineWorker::start(site.sources(), options, repo.clone())
        .await
        .unwrap();
    let mut events = worker.subscribe();
    // The second destination becomes a plain file: compaction needs every destination.
    let aside = std::path::PathBuf::from(format!("{}.aside", site.dest_b));
    std::fs::rename(&site.dest_b, &aside).unwrap();
    std::fs::write(&site.dest_b, b"not a directory").unwrap();
    let conn = site.db();
    for k in 0..4 {
        site.insert(&conn, k * 5..k * 5 + 5);
        worker.ship_now().await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Ok(lifeboat_timeline::TimelineEvent::Error { message }))
                if message.contains("compacting") =>
            {
                assert!(message.contains("needs every destination"), "{message}");
                break;
            }
            Ok(_) => {}
            Err(_) => panic!("no compaction error reported: {:?}", worker.status()),
        }
    }
    // Still shipping; nothing was compacted.
    site.insert(&conn, 20..25);
    worker.ship_now().await.unwrap();
    assert!(repo.list_segments(BUNDLE_STREAM).await.unwrap().is_empty());
    worker.stop(Duration::from_secs(30)).await.unwrap();
    let into = site.tmp.path().join("latest");
    restore_site(&repo, RestoreTarget::Latest, &into)
        .await
        .unwrap();
    assert_eq!(
        ids_in(&into.join("data/app.db")),
        (0..25).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacting_under_continuous_writes_loses_and_repeats_nothing() {
    let site = Site::new();
    let repo = site.init_vault(2).await;
    let worker = TimelineWorker::start(site.sources(), options(), repo.clone())
        .await
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let written = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let writer = {
        let (stop, written) = (stop.clone(), written.clone());
        let db = site.site.join("data/app.db");
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(db).unwrap();
            conn.busy_timeout(Duration::from_secs(30)).unwrap();
            let mut id = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                conn.execute(
                    "INSERT INTO entries (id, body) VALUES (?1, 'x')",
                    rusqlite::params![id],
                )
                .unwrap();
                id += 1;
                written.store(id, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
            id
        })
    };
    // Moments noted while the writer runs, with compactions in between (segments keep
    // arriving while each one runs); a checkpoint in the middle.
    let mut moments = Vec::new();
    for round in 0..5 {
        let seen = written.load(std::sync::atomic::Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(60);
        while written.load(std::sync::atomic::Ordering::Relaxed) < seen + 30 {
            assert!(Instant::now() < deadline, "writer stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        moments.push((
            OffsetDateTime::now_utc(),
            written.load(std::sync::atomic::Ordering::Relaxed),
        ));
        if round == 2 {
            worker.checkpoint_now().await.unwrap();
        }
        compact(&repo, &compact_all()).await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let total = writer.join().unwrap();
    worker.ship_now().await.unwrap();
    compact(&repo, &compact_all()).await.unwrap();
    assert_eq!(worker.status().last_error, None);
    assert!(repo.list_segments(BUNDLE_STREAM).await.unwrap().len() >= 2);
    let points = list_restore_points(&repo).await.unwrap();
    assert_eq!(points.segments.len(), 1, "no gap: {:?}", points.segments);

    let mut previous = 0;
    // Rows committed by each moment's end: a restore never holds more (a commit counts from
    // when capture saw it, so the last few before the moment may be missing).
    for (i, (t, at_most)) in moments.iter().enumerate() {
        let into = site.tmp.path().join(format!("at-{i}"));
        let (ids, _) = restore_at(&repo, *t, &into).await;
        let n = ids.len() as i64;
        assert_eq!(ids, (0..n).collect::<Vec<_>>(), "a prefix, no holes");
        assert!(n <= *at_most && n >= previous, "moment {i}: {n} rows");
        previous = n;
    }
    assert!(
        previous >= moments[3].1,
        "the last moment holds what was seen before"
    );
    let into = site.tmp.path().join("latest");
    restore_site(&repo, RestoreTarget::Latest, &into)
        .await
        .unwrap();
    assert_eq!(
        ids_in(&into.join("data/app.db")),
        (0..total).collect::<Vec<_>>()
    );
    worker.stop(Duration::from_secs(30)).await.unwrap();
}
