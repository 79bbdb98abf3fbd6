//! Under a writer that never pauses (and that runs its own WAL checkpoints), every restore is
//! a consistent prefix of what was committed and never holds a transaction begun after its
//! moment; continuity lost while the worker was down is reported, never silent.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use lifeboat_timeline::{RestoreTarget, TimelineEvent, TimelineWorker, restore_site};
use time::OffsetDateTime;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_under_continuous_writes_are_exact_prefixes() {
    let site = Site::new();
    let repo = site.init_vault(2).await;
    let worker = TimelineWorker::start(site.sources(), fast_options(), repo.clone())
        .await
        .unwrap();
    // id -> when its transaction began.
    let began: Arc<Mutex<Vec<OffsetDateTime>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (began, stop) = (began.clone(), stop.clone());
        let db = site.site.join("data/app.db");
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(db).unwrap();
            conn.busy_timeout(Duration::from_secs(30)).unwrap();
            let mut id = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                began.lock().unwrap().push(OffsetDateTime::now_utc());
                conn.execute(
                    "INSERT INTO entries (id, body) VALUES (?1, 'x')",
                    rusqlite::params![id],
                )
                .unwrap();
                id += 1;
                if id % 50 == 0 {
                    // The app's own checkpoint, racing capture's (it gives up quickly when
                    // capture's reader pins the log).
                    conn.busy_timeout(Duration::from_millis(20)).unwrap();
                    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                    conn.busy_timeout(Duration::from_secs(30)).unwrap();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            id
        })
    };
    // Note moments while the writer runs, each after some writes happened.
    let mut moments = Vec::new();
    for _ in 0..4 {
        let seen = began.lock().unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(60);
        while began.lock().unwrap().len() < seen + 40 {
            assert!(Instant::now() < deadline, "writer stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        moments.push(OffsetDateTime::now_utc());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let total = writer.join().unwrap();
    worker.ship_now().await.unwrap();
    assert_eq!(worker.status().last_error, None);

    let began = began.lock().unwrap().clone();
    let mut previous = 0;
    for (i, t) in moments.iter().enumerate() {
        let into = site.tmp.path().join(format!("at-{i}"));
        restore_site(&repo, RestoreTarget::Time(*t), &into)
            .await
            .unwrap();
        let ids = ids_in(&into.join("data/app.db"));
        let n = ids.len() as i64;
        assert_eq!(
            ids,
            (0..n).collect::<Vec<_>>(),
            "a restore is a prefix, no holes"
        );
        assert!(n >= previous, "later moments hold at least as much");
        // Nothing begun after the moment.
        for id in &ids {
            assert!(began[*id as usize] <= *t, "row {id} began after moment {i}");
        }
        previous = n;
    }
    let into = site.tmp.path().join("latest");
    restore_site(&repo, RestoreTarget::Latest, &into)
        .await
        .unwrap();
    assert_eq!(ids_in(&into.join("data/app.db")).len() as i64, total);
    worker.stop(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_reset_while_the_worker_was_down_is_reported_and_nothing_is_lost() {
    let site = Site::new();
    let repo = site.init_vault(2).await;
    let conn = site.db();
    let worker = TimelineWorker::start(site.sources(), fast_options(), repo.clone())
        .await
        .unwrap();
    site.insert(&conn, 0..10);
    worker.stop(Duration::from_secs(30)).await.unwrap();

    // While nobody captures, the app checkpoints and restarts its WAL.
    site.insert(&conn, 10..20);
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    site.insert(&conn, 20..30);

    let worker = TimelineWorker::start(site.sources(), fast_options(), repo.clone())
        .await
        .unwrap();
    let lost = worker
        .status()
        .recent_events
        .iter()
        .any(|(_, e)| matches!(e, TimelineEvent::ContinuityLost { database, .. } if database == "data/app.db"));
    assert!(lost, "events: {:?}", worker.status().recent_events);
    site.insert(&conn, 30..35);
    worker.ship_now().await.unwrap();
    let into = site.tmp.path().join("latest");
    restore_site(&repo, RestoreTarget::Latest, &into)
        .await
        .unwrap();
    assert_eq!(
        ids_in(&into.join("data/app.db")),
        (0..35).collect::<Vec<_>>()
    );
    worker.stop(Duration::from_secs(30)).await.unwrap();
}
