//! A declared data dir that does not exist never stops the capture of the databases: the
//! owner is told which path is missing, the databases are captured and restorable, and the
//! dir is captured from the moment it is created.

mod common;

use std::time::Duration;

use common::*;
use lifeboat_timeline::{RestoreTarget, TimelineEvent, TimelineWorker, restore_site};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_data_dir_is_reported_and_the_database_is_still_captured() {
    let site = Site::new();
    std::fs::remove_dir(site.site.join("uploads")).unwrap();
    let repo = site.init_vault(2).await;
    let conn = site.db();
    site.insert(&conn, 0..5);

    let worker = TimelineWorker::start(site.sources(), fast_options(), repo.clone())
        .await
        .expect("a missing data dir must not stop capture");
    let missing = site.site.join("uploads");
    let reported = worker.status().recent_events.iter().any(|(_, e)| {
        matches!(e, TimelineEvent::Error { message }
            if message.contains("uploads") && message.contains(&missing.display().to_string()))
    });
    assert!(reported, "events: {:?}", worker.status().recent_events);

    site.insert(&conn, 5..10);
    worker.ship_now().await.unwrap();
    let before = site.tmp.path().join("before-the-dir");
    restore_site(&repo, RestoreTarget::Latest, &before)
        .await
        .unwrap();
    assert_eq!(
        ids_in(&before.join("data/app.db")),
        (0..10).collect::<Vec<_>>()
    );
    assert!(files_in(&before.join("uploads")).is_empty());

    // Created later: captured from then on (rescans run every poll in these options).
    site.upload("cat.png", b"meow");
    site.insert(&conn, 10..12);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for attempt in 0.. {
        worker.ship_now().await.unwrap();
        let into = site.tmp.path().join(format!("after-{attempt}"));
        restore_site(&repo, RestoreTarget::Latest, &into)
            .await
            .unwrap();
        if files_in(&into.join("uploads")).get("cat.png") == Some(&b"meow".to_vec()) {
            assert_eq!(
                ids_in(&into.join("data/app.db")),
                (0..12).collect::<Vec<_>>()
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the created dir was never captured"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.stop(Duration::from_secs(30)).await.unwrap();
}
