//! Test helpers: generated trees with every kind of entry, and a byte-for-byte comparison.
#![allow(dead_code)]
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use lifeboat_vault::{KdfParams, NoProgress, OpenOptions, Progress, Repository};

pub mod s3;
mod trees;
#[allow(unused_imports)] // each test binary uses a different part
pub use trees::{assert_same_tree, noise};

pub const PASSWORD: &[u8] = b"correct horse battery staple";

pub fn opts(spool: &Path) -> OpenOptions {
    OpenOptions {
        spool_dir: Some(spool.to_path_buf()),
        kdf: Some(KdfParams::insecure_fast()),
        s3_credentials: None,
    }
}

pub fn no_progress() -> Arc<dyn Progress> {
    Arc::new(NoProgress)
}

/// A tree with nested dirs, empty files, large files, symlinks, odd and unicode names, and
/// unusual permissions.
pub fn make_tree(root: &Path, big_len: usize) {
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    w("index.html", b"<h1>hello</h1>\n");
    w("empty", b"");
    w("uploads/2026/01/photo.jpg", &noise(1, 300_000));
    w("uploads/2026/02/big.bin", &noise(2, big_len));
    w("uploads/2025/old.txt", &b"old news\n".repeat(1000));
    w("deep/a/b/c/d/e/f/leaf.txt", b"leaf");
    w("odd names/with space & ampersand.txt", b"odd");
    w("odd names/-leading-dash", b"dash");
    w("odd names/ünïcödé ✓ 日本.txt", "ünïcödé".as_bytes());
    w("odd names/.hidden", b"hidden");
    w("dup/one.bin", &noise(3, 200_000));
    w("dup/two.bin", &noise(3, 200_000));
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    std::os::unix::fs::symlink("index.html", root.join("link-to-index")).unwrap();
    std::os::unix::fs::symlink("../../outside/target", root.join("dangling-link")).unwrap();
    std::fs::set_permissions(
        root.join("index.html"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::fs::set_permissions(
        root.join("odd names/-leading-dash"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(root.join("deep/a"), std::fs::Permissions::from_mode(0o750)).unwrap();
}

/// Total bytes of all files under a directory (what a repository occupies).
pub fn dir_bytes(p: &Path) -> u64 {
    let mut t = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        t += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    t
}

pub async fn new_repo(dir: &Path) -> Arc<Repository> {
    let dest = dir.join("repo").to_string_lossy().into_owned();
    let o = opts(&dir.join("spool"));
    Repository::init(&[&dest], None, PASSWORD, &o)
        .await
        .unwrap();
    Arc::new(Repository::open(&dest, PASSWORD, &o).await.unwrap())
}
