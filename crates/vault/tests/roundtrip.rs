//! A backup restores byte-for-byte, and a second backup stores almost nothing new.
mod common;

use std::sync::Arc;

use common::*;
use lifeboat_vault::{
    BackupOptions, EntryMeta, Error, RestoreOptions, SnapshotInfo, SnapshotWriter,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_tree_is_identical_to_the_backed_up_one() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("site");
    make_tree(&src, 5_000_000);
    let repo = new_repo(t.path()).await;
    let snap = repo
        .backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();
    let out = t.path().join("restored");
    let summary = repo
        .restore(
            snap.snapshot.tree,
            &out,
            &RestoreOptions::default(),
            no_progress(),
        )
        .await
        .unwrap();
    assert_same_tree(&src, &out);
    assert!(summary.files_written >= 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_backup_of_the_same_tree_adds_almost_nothing() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("site");
    make_tree(&src, 20_000_000);
    let repo = new_repo(t.path()).await;
    repo.backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();
    let before = dir_bytes(&t.path().join("repo"));
    let second = repo
        .backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();
    let added = dir_bytes(&t.path().join("repo")) - before;
    assert!(added < 20_000, "second backup added {added} bytes");
    assert_eq!(
        second.snapshot.summary.files_unchanged,
        second.snapshot.summary.files
    );
    // Reading every file again (no parent shortcut) still stores nothing new.
    let forced = BackupOptions {
        force_read: true,
        ..Default::default()
    };
    let third = repo.backup(&[&src], &forced, no_progress()).await.unwrap();
    assert_eq!(third.snapshot.summary.new_blobs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_byte_change_in_a_large_file_adds_about_one_chunk() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("site");
    make_tree(&src, 40_000_000);
    let repo = new_repo(t.path()).await;
    repo.backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();
    let before = dir_bytes(&t.path().join("repo"));
    let big = src.join("uploads/2026/02/big.bin");
    let mut data = std::fs::read(&big).unwrap();
    data[20_000_000] ^= 0xff;
    std::fs::write(&big, &data).unwrap();
    let snap = repo
        .backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();
    let added = dir_bytes(&t.path().join("repo")) - before;
    // A chunk averages 1 MiB and is at most 8 MiB; one changed byte touches one or two chunks.
    assert!(
        added < 9_000_000,
        "added {added} bytes for a one-byte change"
    );
    // One or two changed chunks, plus the listings of the four directories on its path.
    assert!(
        snap.snapshot.summary.new_blobs <= 6,
        "{:?}",
        snap.snapshot.summary
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_non_empty_target_unless_told_and_then_reuses_identical_files() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("site");
    make_tree(&src, 3_000_000);
    let repo = new_repo(t.path()).await;
    let snap = repo
        .backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();
    let out = t.path().join("restored");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("precious"), b"do not touch").unwrap();
    let err = repo
        .restore(
            snap.snapshot.tree,
            &out,
            &RestoreOptions::default(),
            no_progress(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TargetNotEmpty(_)), "{err}");
    assert_eq!(
        std::fs::read(out.join("precious")).unwrap(),
        b"do not touch"
    );
    std::fs::remove_file(out.join("precious")).unwrap();

    repo.restore(
        snap.snapshot.tree,
        &out,
        &RestoreOptions::default(),
        no_progress(),
    )
    .await
    .unwrap();
    std::fs::write(out.join("index.html"), b"defaced").unwrap();
    let again = RestoreOptions {
        overwrite: true,
        ..Default::default()
    };
    let s = repo
        .restore(snap.snapshot.tree, &out, &again, no_progress())
        .await
        .unwrap();
    assert_eq!(s.files_written, 1, "{s:?}");
    assert!(s.files_reused >= 11, "{s:?}");
    assert_same_tree(&src, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_restores_only_the_named_subtree() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("site");
    make_tree(&src, 1_000_000);
    let repo = new_repo(t.path()).await;
    let snap = repo
        .backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();
    let out = t.path().join("restored");
    let o = RestoreOptions {
        include: vec!["uploads/2026/".into()],
        overwrite: false,
    };
    repo.restore(snap.snapshot.tree, &out, &o, no_progress())
        .await
        .unwrap();
    assert_same_tree(&src.join("uploads/2026"), &out.join("uploads/2026"));
    assert!(!out.join("index.html").exists());
    assert!(!out.join("uploads/2025").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_can_be_written_from_supplied_files_with_tags() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path()).await;
    let r2 = repo.clone();
    let handle = tokio::runtime::Handle::current();
    let entry = tokio::task::spawn_blocking(move || {
        let mut w = SnapshotWriter::start(r2, handle, std::time::Duration::from_secs(5)).unwrap();
        let meta = EntryMeta {
            mode: 0o644,
            mtime_ns: 1_700_000_000_000_000_000,
            ..Default::default()
        };
        w.add_file("db/site.sqlite", meta, &noise(9, 3_000_000)[..])
            .unwrap();
        w.add_dir(
            "uploads",
            EntryMeta {
                mode: 0o755,
                ..meta
            },
        )
        .unwrap();
        w.add_file("uploads/a.txt", meta, &b"a"[..]).unwrap();
        w.finish(SnapshotInfo {
            paths: vec!["checkpoint".into()],
            tags: vec!["checkpoint".into()],
            ..Default::default()
        })
        .unwrap()
    })
    .await
    .unwrap();
    let listed = repo.snapshots().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].snapshot.tags, vec!["checkpoint".to_string()]);
    let out = t.path().join("out");
    repo.restore(
        entry.snapshot.tree,
        &out,
        &RestoreOptions::default(),
        no_progress(),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(out.join("db/site.sqlite")).unwrap(),
        noise(9, 3_000_000)
    );
    assert_eq!(std::fs::read(out.join("uploads/a.txt")).unwrap(), b"a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_are_stored_listed_and_read_back_in_order() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path()).await;
    for seq in [3u64, 1, 2] {
        repo.put_segment("wal", seq, format!("frame {seq}").as_bytes())
            .await
            .unwrap();
    }
    assert_eq!(repo.list_segments("wal").await.unwrap(), vec![1, 2, 3]);
    assert_eq!(repo.get_segment("wal", 2).await.unwrap(), b"frame 2");
    repo.delete_segments_before("wal", 3).await.unwrap();
    assert_eq!(repo.list_segments("wal").await.unwrap(), vec![3]);
    assert!(repo.put_segment("../escape", 1, b"x").await.is_err());
    let _ = Arc::strong_count(&repo);
}
