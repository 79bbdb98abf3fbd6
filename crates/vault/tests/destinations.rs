//! Several destinations: S3 against a real s3s-fs process, quorum, spool and catch-up,
//! and reads that survive a damaged destination.
mod common;

use std::sync::Arc;

use common::s3::{S3Server, credentials};
use common::*;
use lifeboat_vault::{BackupOptions, OpenOptions, Repository, RestoreOptions, VerifyOptions};

fn s3_opts(dir: &std::path::Path) -> OpenOptions {
    OpenOptions {
        s3_credentials: Some(credentials()),
        ..opts(&dir.join("spool"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_to_local_and_s3_restores_from_s3_alone() {
    let t = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&t.path().join("s3"), "backups");
    let local = t.path().join("local").to_string_lossy().into_owned();
    let remote = s3.url("backups", "blog");
    let o = s3_opts(t.path());
    Repository::init(&[&local, &remote], None, PASSWORD, &o)
        .await
        .unwrap();
    let src = t.path().join("site");
    make_tree(&src, 2_000_000);
    let repo = Arc::new(Repository::open(&local, PASSWORD, &o).await.unwrap());
    repo.backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();

    // The local copy is gone; the repository opened through S3 knows everything.
    std::fs::remove_dir_all(&local).unwrap();
    let from_s3 = Arc::new(Repository::open(&remote, PASSWORD, &o).await.unwrap());
    let snaps = from_s3.snapshots().await.unwrap();
    assert_eq!(snaps.len(), 1);
    let out = t.path().join("restored");
    from_s3
        .restore(
            snaps[0].snapshot.tree,
            &out,
            &RestoreOptions::default(),
            no_progress(),
        )
        .await
        .unwrap();
    assert_same_tree(&src, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_down_during_backup_is_caught_up_when_it_returns() {
    let t = tempfile::tempdir().unwrap();
    let mut s3 = S3Server::start(&t.path().join("s3"), "backups");
    let local = t.path().join("local").to_string_lossy().into_owned();
    let remote = s3.url("backups", "blog");
    let o = s3_opts(t.path());
    Repository::init(&[&local, &remote], Some(1), PASSWORD, &o)
        .await
        .unwrap();
    let src = t.path().join("site");
    make_tree(&src, 2_000_000);

    s3.stop();
    let repo = Arc::new(Repository::open(&local, PASSWORD, &o).await.unwrap());
    let snap = repo
        .backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();
    let status = repo.status().await;
    let down = status.iter().find(|d| d.url == remote).unwrap();
    assert!(!down.reachable);
    assert!(down.objects_behind >= 3, "{down:?}");
    drop(repo);

    s3.restart();
    let repo = Arc::new(Repository::open(&local, PASSWORD, &o).await.unwrap());
    let status = repo.status().await;
    assert!(
        status.iter().all(|d| d.reachable && d.objects_behind == 0),
        "{status:?}"
    );
    let report = repo
        .verify(&VerifyOptions {
            read_data: true,
            destination: Some(remote.clone()),
        })
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    std::fs::remove_dir_all(&local).unwrap();
    let from_s3 = Arc::new(Repository::open(&remote, PASSWORD, &o).await.unwrap());
    let out = t.path().join("restored");
    from_s3
        .restore(
            snap.snapshot.tree,
            &out,
            &RestoreOptions::default(),
            no_progress(),
        )
        .await
        .unwrap();
    assert_same_tree(&src, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_default_quorum_a_backup_fails_while_a_destination_is_down() {
    let t = tempfile::tempdir().unwrap();
    let mut s3 = S3Server::start(&t.path().join("s3"), "backups");
    let local = t.path().join("local").to_string_lossy().into_owned();
    let remote = s3.url("backups", "blog");
    let o = s3_opts(t.path());
    Repository::init(&[&local, &remote], None, PASSWORD, &o)
        .await
        .unwrap();
    let src = t.path().join("site");
    make_tree(&src, 100_000);
    s3.stop();
    let repo = Arc::new(Repository::open(&local, PASSWORD, &o).await.unwrap());
    let err = repo
        .backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spool"), "{err}");
    assert!(
        repo.snapshots().await.unwrap().is_empty(),
        "no snapshot may count as done"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_named_by_verify_and_restore_uses_the_healthy_copy() {
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a").to_string_lossy().into_owned();
    let b = t.path().join("b").to_string_lossy().into_owned();
    let o = opts(&t.path().join("spool"));
    Repository::init(&[&a, &b], None, PASSWORD, &o)
        .await
        .unwrap();
    let src = t.path().join("site");
    make_tree(&src, 3_000_000);
    let repo = Arc::new(Repository::open(&a, PASSWORD, &o).await.unwrap());
    let snap = repo
        .backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();

    // Damage the largest pack on destination a.
    let mut packs: Vec<_> = walk(&t.path().join("a/data"));
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let victim = packs.last().unwrap().clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&victim, &bytes).unwrap();
    let pack_name = victim.file_name().unwrap().to_string_lossy().into_owned();

    let report = repo
        .verify(&VerifyOptions {
            read_data: true,
            destination: None,
        })
        .await
        .unwrap();
    assert!(!report.is_ok());
    let da = report.destinations.iter().find(|d| d.url == a).unwrap();
    assert_eq!(da.problems.len(), 1, "{da:?}");
    assert!(da.problems[0].object.ends_with(&pack_name));
    assert_eq!(
        da.problems[0].snapshots,
        vec![snap.id.to_hex()[..8].to_string()]
    );
    let db = report.destinations.iter().find(|d| d.url == b).unwrap();
    assert!(db.problems.is_empty(), "{db:?}");

    let out = t.path().join("restored");
    repo.restore(
        snap.snapshot.tree,
        &out,
        &RestoreOptions::default(),
        no_progress(),
    )
    .await
    .unwrap();
    assert_same_tree(&src, &out);
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
