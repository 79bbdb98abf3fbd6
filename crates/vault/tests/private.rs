//! A repository on a local directory, and the local spool, are readable by their owner only:
//! the wrapped key in `keys/` must not be copyable by other local users, who could guess the
//! password offline. Existing repositories made before this rule are tightened when opened.
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use lifeboat_vault::{BackupOptions, Repository};

/// Every entry under `root` (and `root` itself) whose mode is not 0700 (dirs) or 0600 (files).
fn not_private(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let mode = m.permissions().mode() & 0o7777;
        let want = if m.is_dir() { 0o700 } else { 0o600 };
        if mode != want {
            out.push(format!("{} is {mode:o}", p.display()));
        }
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_repository_and_its_spool_are_private_to_their_owner() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("site");
    make_tree(&src, 100_000);
    let good = t.path().join("repo").to_string_lossy().into_owned();
    let down = t.path().join("down").to_string_lossy().into_owned();
    let spool = t.path().join("spool");
    let o = opts(&spool);
    Repository::init(&[&good, &down], Some(1), PASSWORD, &o)
        .await
        .unwrap();
    // The second destination goes down (its path is now a file): what it misses waits in
    // the spool.
    std::fs::remove_dir_all(&down).unwrap();
    std::fs::write(&down, b"not a directory").unwrap();
    let repo = std::sync::Arc::new(Repository::open(&good, PASSWORD, &o).await.unwrap());
    repo.backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();

    assert!(Path::new(&good).join("keys").is_dir());
    assert_eq!(not_private(Path::new(&good)), Vec::<String>::new());
    assert!(
        std::fs::read_dir(&spool).unwrap().next().is_some(),
        "the down destination's objects are spooled"
    );
    assert_eq!(not_private(&spool), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_an_existing_world_readable_repository_makes_it_private() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("site");
    make_tree(&src, 100_000);
    let repo = new_repo(t.path()).await;
    repo.backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();
    drop(repo);
    // As an older lifeboat left it: 0755 directories, 0644 files.
    let root = t.path().join("repo");
    let mut todo = vec![root.clone()];
    while let Some(p) = todo.pop() {
        let dir = p.is_dir();
        let mode = if dir { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        if dir {
            todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }

    let o = opts(&t.path().join("spool"));
    let _repo = Repository::open(&root.to_string_lossy(), PASSWORD, &o)
        .await
        .unwrap();
    let mode = |rel: &str| {
        std::fs::metadata(root.join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    // The top directory closes everything below it to other users; the key material and
    // the config are tightened themselves too.
    assert_eq!(mode(""), 0o700);
    assert_eq!(mode("keys"), 0o700);
    assert_eq!(mode("config"), 0o600);
    for key in std::fs::read_dir(root.join("keys")).unwrap() {
        let key = key.unwrap().path();
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            key.display()
        );
    }
}
