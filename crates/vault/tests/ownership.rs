//! Set-user-id and set-group-id bits come back only on files that get back the owner the
//! snapshot recorded: a restore never turns someone's set-id program into one that runs with
//! the restoring user's rights (as root: a root-owned setuid file the snapshot did not have).
mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use lifeboat_vault::format::Node;
use lifeboat_vault::{BackupOptions, RestoreOptions, SnapshotInfo, SnapshotWriter};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn owner_and_mode(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setuid_program_comes_back_with_its_owner_and_its_bits() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("home");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    let prog = src.join("bin/tool");
    std::fs::write(&prog, b"#!/bin/sh\necho hi\n").unwrap();
    // As root: another user's setuid program, as `restic` and `tar` would find it in /home.
    // As anyone else: the user's own (only root can give a file away).
    let (uid, gid) = if is_root() {
        (4321, 4322)
    } else {
        let m = std::fs::metadata(&prog).unwrap();
        (m.uid(), m.gid())
    };
    std::os::unix::fs::chown(&prog, Some(uid), Some(gid)).unwrap();
    std::os::unix::fs::chown(src.join("bin"), Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o6755)).unwrap();
    std::os::unix::fs::symlink("bin/tool", src.join("tool")).unwrap();
    std::os::unix::fs::lchown(src.join("tool"), Some(uid), Some(gid)).unwrap();

    let repo = new_repo(t.path()).await;
    let snap = repo
        .backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();
    let out = t.path().join("restored");
    repo.restore(
        snap.snapshot.tree,
        &out,
        &RestoreOptions::default(),
        no_progress(),
    )
    .await
    .unwrap();

    assert_eq!(owner_and_mode(&out.join("bin/tool")), (uid, gid, 0o6755));
    assert_eq!(owner_and_mode(&out.join("bin")).0, uid);
    assert_eq!(owner_and_mode(&out.join("tool")).0, uid);
    assert_same_tree(&src, &out);
}

/// A tree node as a version-1 writer stored it: no owner.
fn v1_node(name: &str, kind: &str, mode: u32, content: &[lifeboat_vault::Id]) -> Node {
    serde_json::from_value(serde_json::json!({
        "name": name, "kind": kind, "mode": mode, "mtime_ns": 0, "size": 5,
        "content": content,
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_id_file_whose_owner_is_not_recorded_loses_its_set_id_bits() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path()).await;
    let r = repo.clone();
    let handle = tokio::runtime::Handle::current();
    // An old snapshot (format version 1 recorded no owners) holding a setuid+setgid program.
    let snap = tokio::task::spawn_blocking(move || {
        let mut w = SnapshotWriter::start(r, handle, std::time::Duration::from_secs(5)).unwrap();
        let (content, _) = w.store_content(&b"evil!"[..], 5, &|_| {}).unwrap();
        w.add_unchecked_node_for_tests(v1_node("tool", "file", 0o6755, &content));
        w.add_unchecked_node_for_tests(v1_node("sticky-only", "file", 0o1755, &content));
        w.finish(SnapshotInfo::default()).unwrap()
    })
    .await
    .unwrap();
    let out = t.path().join("restored");
    repo.restore(
        snap.snapshot.tree,
        &out,
        &RestoreOptions::default(),
        no_progress(),
    )
    .await
    .unwrap();
    let (uid, _, mode) = owner_and_mode(&out.join("tool"));
    assert_eq!(uid, nix::unistd::geteuid().as_raw());
    assert_eq!(
        mode, 0o755,
        "set-id bits of a file whose owner is unknown are dropped"
    );
    // Other bits are kept as they were.
    assert_eq!(owner_and_mode(&out.join("sticky-only")).2, 0o1755);
    assert_eq!(std::fs::read(out.join("tool")).unwrap(), b"evil!");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_repository_is_still_read_and_written_and_keeps_its_version() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("site");
    make_tree(&src, 200_000);
    let repo = new_repo(t.path()).await;
    let old = repo
        .backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();
    drop(repo);
    // As a version-1 lifeboat made it.
    let config = t.path().join("repo/config");
    let text = std::fs::read_to_string(&config).unwrap();
    let v1 = text.replace(
        &format!("\"version\": {}", lifeboat_vault::format::FORMAT_VERSION),
        "\"version\": 1",
    );
    assert_ne!(text, v1);
    std::fs::write(&config, &v1).unwrap();

    let dest = t.path().join("repo").to_string_lossy().into_owned();
    let repo = std::sync::Arc::new(
        lifeboat_vault::Repository::open(&dest, PASSWORD, &opts(&t.path().join("spool")))
            .await
            .unwrap(),
    );
    assert_eq!(repo.config().version, 1);
    let new = repo
        .backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();
    for (i, snap) in [old, new].iter().enumerate() {
        let out = t.path().join(format!("restored-{i}"));
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
    assert_eq!(std::fs::read_to_string(&config).unwrap(), v1);
}
