//! A destination that disappears does not lose data when the quorum allows it, restore works
//! from the destination that is left, and a destination that comes back catches up.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lifeboat_timeline::{RestoreTarget, TimelineWorker, WorkerOptions, restore_site};

/// Replaces a local destination with a plain file: every write to it fails.
fn break_destination(url: &str) -> std::path::PathBuf {
    let aside = std::path::PathBuf::from(format!("{url}.aside"));
    std::fs::rename(url, &aside).unwrap();
    std::fs::write(url, b"not a directory").unwrap();
    aside
}

fn repair_destination(url: &str, aside: &std::path::Path) {
    std::fs::remove_file(url).unwrap();
    std::fs::rename(aside, url).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_destination_gone_nothing_is_lost_and_the_other_restores_it() {
    let site = Site::new();
    let repo = site.init_vault(1).await;
    let worker = TimelineWorker::start(site.sources(), fast_options(), repo.clone())
        .await
        .unwrap();
    let conn = site.db();
    site.insert(&conn, 0..10);
    worker.ship_now().await.unwrap();

    // The first destination (the one the repository was opened from) disappears.
    break_destination(&site.dest_a);
    site.insert(&conn, 10..20);
    site.upload("after.txt", b"written while a destination was gone");
    worker.ship_now().await.unwrap();
    worker.checkpoint_now().await.unwrap();
    site.insert(&conn, 20..25);
    worker.ship_now().await.unwrap();
    assert_eq!(worker.status().last_error, None);
    worker.stop(Duration::from_secs(30)).await.unwrap();

    // A fresh session on the surviving destination, with no spool to fall back on.
    let other = site.open_vault(&site.dest_b, "fresh-spool").await;
    let into = site.tmp.path().join("from-b");
    restore_site(&other, RestoreTarget::Latest, &into)
        .await
        .unwrap();
    assert_eq!(
        ids_in(&into.join("data/app.db")),
        (0..25).collect::<Vec<_>>()
    );
    assert_eq!(
        std::fs::read(into.join("uploads/after.txt")).unwrap(),
        b"written while a destination was gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_comes_back_catches_up_and_restores_on_its_own() {
    let site = Site::new();
    let repo = site.init_vault(1).await;
    let options = WorkerOptions {
        catch_up_interval: Duration::from_millis(100),
        ..fast_options()
    };
    let worker = TimelineWorker::start(site.sources(), options, repo.clone())
        .await
        .unwrap();
    let conn = site.db();
    let aside = break_destination(&site.dest_b);
    site.insert(&conn, 0..10);
    site.upload("x.txt", b"while b was down");
    worker.ship_now().await.unwrap();
    let behind: u64 = repo.status().await.iter().map(|d| d.objects_behind).sum();
    assert!(behind > 0, "b should have missed objects while it was gone");
    repair_destination(&site.dest_b, &aside);

    // The background loop sends what b missed.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let behind: u64 = repo.status().await.iter().map(|d| d.objects_behind).sum();
        if behind == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "b never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.stop(Duration::from_secs(30)).await.unwrap();

    // b alone now restores everything, including what it missed.
    break_destination(&site.dest_a);
    let other = site.open_vault(&site.dest_b, "fresh-spool").await;
    let into = site.tmp.path().join("from-b");
    restore_site(&other, RestoreTarget::Latest, &into)
        .await
        .unwrap();
    assert_eq!(
        ids_in(&into.join("data/app.db")),
        (0..10).collect::<Vec<_>>()
    );
    assert_eq!(
        std::fs::read(into.join("uploads/x.txt")).unwrap(),
        b"while b was down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_while_the_quorum_is_unreachable_catches_up_once_it_is_back() {
    let site = Site::new();
    let repo = site.init_vault(2).await;
    let aside = break_destination(&site.dest_b);
    let options = WorkerOptions {
        catch_up_interval: Duration::from_millis(100),
        ..fast_options()
    };
    let worker = TimelineWorker::start(site.sources(), options, repo.clone())
        .await
        .unwrap();
    let status = worker.status();
    assert!(status.last_checkpoint.is_none());
    assert!(
        status.last_error.is_some(),
        "the failed first checkpoint is reported"
    );
    site.insert(&site.db(), 0..10);
    repair_destination(&site.dest_b, &aside);

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = worker.status();
        if s.last_checkpoint.is_some() && s.last_error.is_none() && s.lag.is_zero() {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.stop(Duration::from_secs(30)).await.unwrap();
    let into = site.tmp.path().join("restored");
    restore_site(&repo, RestoreTarget::Latest, &into)
        .await
        .unwrap();
    assert_eq!(
        ids_in(&into.join("data/app.db")),
        (0..10).collect::<Vec<_>>()
    );
}
