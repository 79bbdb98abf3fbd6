//! Restoring a live site to several moments gives exactly the rows committed and the files
//! present at each of them; impossible targets fail clearly and change nothing.

mod common;

use std::collections::BTreeMap;

use common::*;
use lifeboat_timeline::{
    RestoreTarget, TimelineError, TimelineWorker, list_restore_points, restore_site,
};
use time::OffsetDateTime;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_to_each_moment_gives_exactly_the_rows_and_files_of_that_moment() {
    let site = Site::new();
    let repo = site.init_vault(2).await;
    let started = OffsetDateTime::now_utc();
    site.upload("before.txt", b"present before capture started");
    let worker = TimelineWorker::start(site.sources(), fast_options(), repo.clone())
        .await
        .unwrap();
    let conn = site.db();

    // Batches of writes; after each, everything so far is shipped, then the moment is noted.
    let mut moments = Vec::new();
    let mut expected_files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    expected_files.insert(
        "before.txt".into(),
        b"present before capture started".to_vec(),
    );
    for k in 0..4i64 {
        site.insert(&conn, k * 10..k * 10 + 10);
        let name = format!("photos/p{k}.jpg");
        let content = format!("photo {k}").repeat(1000 + k as usize).into_bytes();
        site.upload(&name, &content);
        expected_files.insert(name, content);
        if k == 2 {
            site.delete_upload("photos/p0.jpg");
            expected_files.remove("photos/p0.jpg");
            site.upload("photos/p1.jpg", b"altered");
            expected_files.insert("photos/p1.jpg".into(), b"altered".to_vec());
        }
        if k == 1 {
            worker.checkpoint_now().await.unwrap();
        }
        worker.ship_now().await.unwrap();
        moments.push((
            OffsetDateTime::now_utc(),
            (0..k * 10 + 10).collect::<Vec<i64>>(),
            expected_files.clone(),
        ));
    }
    // Writes after the last moment must not appear in any restore to it.
    site.insert(&conn, 1000..1005);
    site.upload("photos/late.jpg", b"late");
    worker.ship_now().await.unwrap();

    for (i, (t, ids, files)) in moments.iter().enumerate() {
        let into = site.tmp.path().join(format!("restored-{i}"));
        let report = restore_site(&repo, RestoreTarget::Time(*t), &into)
            .await
            .unwrap();
        assert_eq!(report.restored_time, *t);
        assert_eq!(
            &ids_in(&into.join("data/app.db")),
            ids,
            "rows as of moment {i}"
        );
        assert_eq!(
            &files_in(&into.join("uploads")),
            files,
            "files as of moment {i}"
        );
        assert_eq!(
            std::fs::read(into.join("lifeboat.toml")).unwrap(),
            b"name = \"guestbook\"\n"
        );
        assert_eq!(report.files, files.len() as u64);
        assert!(report.manifest);
    }

    // Latest: everything, including the late writes.
    let into = site.tmp.path().join("restored-latest");
    restore_site(&repo, RestoreTarget::Latest, &into)
        .await
        .unwrap();
    let ids = ids_in(&into.join("data/app.db"));
    assert!(ids.contains(&1004) && ids.contains(&39));
    assert!(into.join("uploads/photos/late.jpg").exists());

    // Restore points list the checkpoints (start + the one taken) and one gapless run.
    let points = list_restore_points(&repo).await.unwrap();
    assert!(points.checkpoints.len() >= 2);
    assert_eq!(points.segments.len(), 1, "no gap: {:?}", points.segments);
    assert_eq!(points.segments[0].first_seq, 1);

    worker
        .stop(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let _ = started;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_targets_fail_clearly_and_create_nothing() {
    let site = Site::new();
    let repo = site.init_vault(2).await;

    // Nothing captured yet.
    let into = site.tmp.path().join("nothing");
    let err = restore_site(&repo, RestoreTarget::Latest, &into)
        .await
        .unwrap_err();
    assert!(matches!(err, TimelineError::NothingCaptured), "{err}");
    assert!(!into.exists());

    let worker = TimelineWorker::start(site.sources(), fast_options(), repo.clone())
        .await
        .unwrap();
    site.insert(&site.db(), 1..3);
    worker.ship_now().await.unwrap();

    let before = OffsetDateTime::now_utc() - time::Duration::hours(1);
    let err = restore_site(&repo, RestoreTarget::Time(before), &into)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TimelineError::BeforeFirstCapture { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("choose a time at or after"));
    assert!(!into.exists());

    let future = OffsetDateTime::now_utc() + time::Duration::hours(1);
    let err = restore_site(&repo, RestoreTarget::Time(future), &into)
        .await
        .unwrap_err();
    assert!(matches!(err, TimelineError::InFuture { .. }), "{err}");
    assert!(!into.exists());

    std::fs::create_dir_all(&into).unwrap();
    std::fs::write(into.join("keep.txt"), b"mine").unwrap();
    let err = restore_site(&repo, RestoreTarget::Latest, &into)
        .await
        .unwrap_err();
    assert!(matches!(err, TimelineError::NotEmpty(_)), "{err}");
    assert_eq!(std::fs::read(into.join("keep.txt")).unwrap(), b"mine");

    // An empty existing directory is fine.
    let empty = site.tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    restore_site(&repo, RestoreTarget::Latest, &empty)
        .await
        .unwrap();
    assert_eq!(ids_in(&empty.join("data/app.db")), vec![1, 2]);
    worker
        .stop(std::time::Duration::from_secs(30))
        .await
        .unwrap();
}
