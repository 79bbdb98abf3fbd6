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

/// A node's state kept aside as a fork (a database with commits only in its WAL, uploads, the
/// manifest) is stored once, listed with the restore points, and restored whole into a new
/// directory as one checked database file; a wrong name or a non-empty target changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_is_stored_listed_and_restored_whole() {
    use lifeboat_timeline::{ForkDescription, restore_fork, store_fork};
    let site = Site::new();
    let repo = site.init_vault(2).await;
    let conn = site.db();
    conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    site.insert(&conn, 0..25);
    site.upload("photos/cat.jpg", b"only the old primary has this");
    // What the node moves aside: the database with its WAL (where the commits still are),
    // the data dir. The app's connection stays open, as it would at a fence.
    let kept = site.tmp.path().join("states/fork-n1-term4-1");
    std::fs::create_dir_all(kept.join("data")).unwrap();
    for side in ["", "-wal", "-shm"] {
        std::fs::copy(
            site.site.join(format!("data/app.db{side}")),
            kept.join(format!("data/app.db{side}")),
        )
        .unwrap();
    }
    assert!(
        std::fs::metadata(kept.join("data/app.db-wal"))
            .unwrap()
            .len()
            > 0
    );
    copy_tree(&site.site.join("uploads"), &kept.join("uploads"));
    let mut description = ForkDescription::new(
        "fork-n1-term4-1",
        "n1",
        4,
        OffsetDateTime::now_utc(),
        "n1 joined n2 as a standby",
    );
    description.databases = vec!["data/app.db".into()];
    description.dirs = vec!["uploads".into()];
    let manifest: &[u8] = b"name = \"guestbook\"\n";
    let stored = store_fork(
        &repo,
        &kept,
        &description,
        Some(("lifeboat.toml", manifest)),
    )
    .await
    .unwrap();
    let again = store_fork(
        &repo,
        &kept,
        &description,
        Some(("lifeboat.toml", manifest)),
    )
    .await
    .unwrap();
    assert_eq!(
        stored.snapshot, again.snapshot,
        "a second store adds nothing"
    );
    assert_eq!(repo.snapshots().await.unwrap().len(), 1);

    let points = list_restore_points(&repo).await.unwrap();
    assert_eq!(points.forks, vec![stored.clone()]);
    assert!(points.checkpoints.is_empty(), "a fork is not a checkpoint");

    let into = site.tmp.path().join("restored");
    let report = restore_fork(&repo, "fork-n1-term4-1", &into).await.unwrap();
    assert_eq!(report.fork, stored);
    assert_eq!(
        ids_in(&into.join("data/app.db")),
        (0..25).collect::<Vec<_>>()
    );
    assert!(
        std::fs::metadata(into.join("data/app.db-wal")).map_or(true, |m| m.len() == 0),
        "the WAL is folded into the database"
    );
    assert_eq!(
        std::fs::read(into.join("uploads/photos/cat.jpg")).unwrap(),
        b"only the old primary has this"
    );
    assert_eq!(std::fs::read(into.join("lifeboat.toml")).unwrap(), manifest);
    assert!(!into.join(".lifeboat-timeline").exists());

    let err = restore_fork(&repo, "fork-n9", &site.tmp.path().join("other"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fork-n9") && err.contains("fork-n1-term4-1"),
        "{err}"
    );
    assert!(!site.tmp.path().join("other").exists());
    let err = restore_fork(&repo, "fork-n1-term4-1", &into)
        .await
        .unwrap_err();
    assert!(matches!(err, TimelineError::NotEmpty(_)), "{err}");
    assert_eq!(ids_in(&into.join("data/app.db")).len(), 25);
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// `first_checkpoint_later` (a promoted standby's worker): `start` returns before the first
/// checkpoint is stored, the loop stores it right after, before any segment of later writes,
/// and a restore from it is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_can_take_its_first_checkpoint_after_it_starts() {
    let site = Site::new();
    let repo = site.init_vault(2).await;
    let conn = site.db();
    site.insert(&conn, 0..10);
    let options = lifeboat_timeline::WorkerOptions {
        first_checkpoint_later: true,
        ..fast_options()
    };
    let worker = TimelineWorker::start(site.sources(), options, repo.clone())
        .await
        .unwrap();
    let returned = OffsetDateTime::now_utc();
    site.insert(&conn, 10..20);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let checkpoint = loop {
        if let Some(c) = list_restore_points(&repo)
            .await
            .unwrap()
            .checkpoints
            .first()
        {
            break c.clone();
        }
        assert!(std::time::Instant::now() < deadline, "no checkpoint");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(
        checkpoint.time > returned,
        "the checkpoint ({}) was taken after start returned ({returned})",
        checkpoint.time
    );
    worker.ship_now().await.unwrap();
    let into = site.tmp.path().join("restored");
    restore_site(&repo, lifeboat_timeline::RestoreTarget::Latest, &into)
        .await
        .unwrap();
    assert_eq!(
        ids_in(&into.join("data/app.db")),
        (0..20).collect::<Vec<_>>()
    );
}
