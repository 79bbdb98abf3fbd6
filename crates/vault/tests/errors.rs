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
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("\"version\": {}", lifeboat_vault::format::FORMAT_VERSION),
        "\"version\": 7",
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_refuses_an_empty_password_and_creates_nothing() {
    let t = tempfile::tempdir().unwrap();
    let dest = t.path().join("repo");
    let err = Repository::init(
        &[&*dest.to_string_lossy()],
        None,
        b"",
        &opts(&t.path().join("spool")),
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(err, Error::EmptyPassword), "{err}");
    assert!(err.to_string().contains("LIFEBOAT_PASSWORD"), "{err}");
    assert!(!dest.exists());
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
            uid: None,
            gid: None,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_finds_no_good_copy_fails_and_leaves_no_partial_file() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("site");
    std::fs::create_dir_all(&src).unwrap();
    // Enough files and bytes for several packs.
    for i in 0..12u64 {
        std::fs::write(src.join(format!("file-{i:02}.bin")), noise(i, 2_500_000)).unwrap();
    }
    let repo = new_repo(t.path()).await;
    let snap = repo
        .backup(
            &[&src],
            &lifeboat_vault::BackupOptions::default(),
            no_progress(),
        )
        .await
        .unwrap();
    let mut packs = Vec::new();
    for dir in std::fs::read_dir(t.path().join("repo/data")).unwrap() {
        for p in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            packs.push(p.unwrap().path());
        }
    }
    assert!(packs.len() >= 3, "{packs:?}");
    // Damage one blob in the middle of the largest pack: the blobs around it are written,
    // then restore finds no good copy of this one.
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let victim = packs.last().unwrap();
    let mut bytes = std::fs::read(victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(victim, &bytes).unwrap();

    let out = t.path().join("restored");
    let err = repo
        .restore(
            snap.snapshot.tree,
            &out,
            &RestoreOptions::default(),
            no_progress(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unreadable { .. }), "{err}");
    assert!(err.to_string().contains("vault verify"), "{err}");
    // Whatever is under a real name is complete; nothing temporary is left behind.
    for entry in std::fs::read_dir(&out).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with('.'), "left behind: {name}");
        let i: u64 = name["file-".len().."file-".len() + 2].parse().unwrap();
        assert!(
            std::fs::read(entry.path()).unwrap() == noise(i, 2_500_000),
            "{name} is partial"
        );
    }
}

/// The one key file of a repository.
fn key_file(repo_dir: &std::path::Path) -> std::path::PathBuf {
    let mut keys: Vec<_> = std::fs::read_dir(repo_dir.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    keys.pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_key_file_is_named_as_damaged_not_as_a_wrong_password() {
    let t = tempfile::tempdir().unwrap();
    new_repo(t.path()).await;
    let key = key_file(&t.path().join("repo"));
    let name = key.file_name().unwrap().to_string_lossy().into_owned();
    let dest = t.path().join("repo").to_string_lossy().into_owned();
    let o = opts(&t.path().join("spool"));
    let bytes = std::fs::read(&key).unwrap();

    // Truncated (a full disk, a copy cut short), then one flipped byte in the sealed key.
    let flipped = {
        let mut b = bytes.clone();
        let at = String::from_utf8_lossy(&b).find("sealed_keys").unwrap() + 20;
        b[at] = if b[at] == b'0' { b'1' } else { b'0' };
        b
    };
    for damaged in [bytes[..bytes.len() / 2].to_vec(), flipped] {
        std::fs::write(&key, &damaged).unwrap();
        let err = Repository::open(&dest, PASSWORD, &o).await.err().unwrap();
        let text = err.to_string();
        assert!(matches!(err, Error::DamagedKey { .. }), "{err}");
        assert!(text.contains("damaged"), "{text}");
        assert!(text.contains(&format!("keys/{name}")), "{text}");
    }
    // The right file again: a wrong password is still a wrong password.
    std::fs::write(&key, &bytes).unwrap();
    let err = Repository::open(&dest, b"not it", &o).await.err().unwrap();
    assert!(matches!(err, Error::WrongPassword { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_key_file_on_one_destination_is_read_from_another() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("repo-a"), t.path().join("repo-b"));
    let o = opts(&t.path().join("spool"));
    Repository::init(
        &[&*a.to_string_lossy(), &*b.to_string_lossy()],
        None,
        PASSWORD,
        &o,
    )
    .await
    .unwrap();
    let key = key_file(&a);
    let bytes = std::fs::read(&key).unwrap();
    std::fs::write(&key, &bytes[..10]).unwrap();
    let repo = Repository::open(&a.to_string_lossy(), PASSWORD, &o)
        .await
        .unwrap();
    assert_eq!(repo.location(), a.to_string_lossy());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_planted_at_a_restore_temporary_name_is_never_followed() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("site");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..8u64 {
        std::fs::write(src.join(format!("f{i}")), noise(i, 10_000)).unwrap();
    }
    let repo = new_repo(t.path()).await;
    let snap = repo
        .backup(
            &[&src],
            &lifeboat_vault::BackupOptions::default(),
            no_progress(),
        )
        .await
        .unwrap();
    // Another local user who can write in the target guesses the temporary names a restore
    // by this process would use and plants links to a file of the restoring user.
    let victim = t.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let out = t.path().join("shared-target");
    std::fs::create_dir_all(&out).unwrap();
    for i in 0..8 {
        let name = format!(".lifeboat-restore-{}-{i}", std::process::id());
        std::os::unix::fs::symlink(&victim, out.join(name)).unwrap();
    }
    let o = RestoreOptions {
        overwrite: true,
        ..Default::default()
    };
    let r = repo
        .restore(snap.snapshot.tree, &out, &o, no_progress())
        .await;
    assert!(
        std::fs::read(&victim).unwrap() == b"precious",
        "the restore wrote through a planted link"
    );
    assert!(r.is_ok(), "{r:?}");
    for i in 0..8u64 {
        assert!(std::fs::read(out.join(format!("f{i}"))).unwrap() == noise(i, 10_000));
    }
}
