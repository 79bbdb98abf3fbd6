//! Bad input gets a clear error that names the problem and the fix, and changes nothing.
mod common;

use std::sync::Arc;

use common::*;
use lifeboat_vault::format::{Node, NodeKind};
use lifeboat_vault::{Error, Repository, RestoreOptions, SnapshotInfo, SnapshotWriter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_clearly() {
    let t = tempfile::tempdir().unwrap();
    new_repo(t.path()).await;
    let dest = t.path().join("repo").to_string_lossy().into_owned();
    let err = Repository::open(&dest, b"not it", &opts(&t.path().join("spool")))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::WrongPassword { .. }), "{err}");
    assert!(err.to_string().contains("LIFEBOAT_PASSWORD"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_repository_is_named_and_nothing_is_created() {
    let t = tempfile::tempdir().unwrap();
    let dest = t.path().join("nothing-here");
    let err = Repository::open(
        &dest.to_string_lossy(),
        PASSWORD,
        &opts(&t.path().join("spool")),
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(err, Error::MissingRepository { .. }), "{err}");
    assert!(err.to_string().contains("lifeboat vault init"), "{err}");
    assert!(!dest.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_of_a_newer_format_is_refused() {
    let t = tempfile::tempdir().unwrap();
    new_repo(t.path()).await;
    let config = t.path().join("repo/config");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"version\": 1", "\"version\": 7");
    std::fs::write(&config, text).unwrap();
    let before = dir_bytes(&t.path().join("repo"));
    let dest = t.path().join("repo").to_string_lossy().into_owned();
    let err = Repository::open(&dest, PASSWORD, &opts(&t.path().join("spool")))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::NewerFormat { found: 7, .. }), "{err}");
    assert!(err.to_string().contains("upgrade lifeboat"), "{err}");
    assert_eq!(dir_bytes(&t.path().join("repo")), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_refuses_a_destination_that_already_holds_a_repository() {
    let t = tempfile::tempdir().unwrap();
    new_repo(t.path()).await;
    let dest = t.path().join("repo").to_string_lossy().into_owned();
    let err = Repository::init(&[&dest], None, PASSWORD, &opts(&t.path().join("spool")))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
}

async fn crafted_snapshot(repo: &Arc<Repository>, name: &str) -> lifeboat_vault::SnapshotEntry {
    let r = repo.clone();
    let name = name.to_string();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut w = SnapshotWriter::start(r, handle, std::time::Duration::from_secs(5)).unwrap();
        w.add_file("innocent.txt", Default::default(), &b"fine"[..])
            .unwrap();
        let (content, size) = w.store_content(&b"owned"[..], 5, &|_| {}).unwrap();
        w.add_unchecked_node_for_tests(Node {
            name,
            kind: NodeKind::File,
            mode: 0o644,
            mtime_ns: 0,
            size,
            inode: 0,
            ctime_ns: 0,
            content,
            subtree: None,
            target: None,
        });
        w.finish(SnapshotInfo::default()).unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_traversal_entry_is_refused_before_anything_is_written() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path()).await;
    for evil in ["..", "../../escaped.txt", "/etc/passwd", "a/../../b", ""] {
        let snap = crafted_snapshot(&repo, evil).await;
        let out = t.path().join("restore-here");
        let err = repo
            .restore(
                snap.snapshot.tree,
                &out,
                &RestoreOptions::default(),
                no_progress(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::UnsafeEntry { .. }), "{evil:?}: {err}");
        assert!(
            !out.exists(),
            "{evil:?}: the target must not even be created"
        );
        assert!(!t.path().join("escaped.txt").exists());
    }
}
