//! Helpers for the vault CLI tests: run the real `lifeboat` binary against a scratch
//! repository, generate trees, compare them byte for byte.
#![allow(dead_code)]
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const PASSWORD: &str = "correct horse battery staple";

/// A scratch area: `repo-a`, `repo-b` destinations, a spool, a source tree.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    /// `lifeboat` with the password, a fast KDF and this scratch's spool in its environment.
    pub fn lifeboat(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
        c.current_dir(self.dir.path())
            .env("LIFEBOAT_PASSWORD", PASSWORD)
            .env("LIFEBOAT_KDF", "fast")
            .env("LIFEBOAT_SPOOL", self.path("spool"))
            .env_remove("LIFEBOAT_REPO");
        c
    }
    /// Runs `lifeboat ARGS` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.lifeboat()
            .args(args)
            .output()
            .expect("running lifeboat")
    }
    /// Runs `lifeboat ARGS`, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "lifeboat {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }
    /// Snapshots as `snapshots --json` prints them.
    pub fn snapshots(&self, repo: &str) -> Vec<serde_json::Value> {
        let out = self.ok(&["--json", "snapshots", "--repo", repo]);
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

/// Deterministic pseudo-random bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// A small site: pages, uploads, an empty file, a symlink, odd names.
pub fn make_site(root: &Path) {
    write(root, "index.html", b"<h1>guestbook</h1>\n");
    write(root, "empty", b"");
    write(root, "db/site.sqlite", &noise(1, 1_500_000));
    for i in 0..20 {
        write(
            root,
            &format!("uploads/2026/{i:02}/photo-{i}.jpg"),
            &noise(100 + i, 20_000 + i as usize * 1000),
        );
    }
    write(root, "uploads/2025/old.txt", &b"old\n".repeat(5000));
    write(root, "odd/ünï cødé ✓.txt", b"odd");
    std::os::unix::fs::symlink("index.html", root.join("home")).unwrap();
    std::fs::set_permissions(
        root.join("index.html"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
}

/// Asserts two trees are identical: kinds, bytes, permissions, mtimes, link targets.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let mut names_a: Vec<_> = std::fs::read_dir(a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut names_b: Vec<_> = std::fs::read_dir(b)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names_a.sort();
    names_b.sort();
    assert_eq!(
        names_a,
        names_b,
        "entries of {} vs {}",
        a.display(),
        b.display()
    );
    for n in names_a {
        let (pa, pb) = (a.join(&n), b.join(&n));
        let (ma, mb) = (
            std::fs::symlink_metadata(&pa).unwrap(),
            std::fs::symlink_metadata(&pb).unwrap(),
        );
        assert_eq!(ma.file_type(), mb.file_type(), "kind of {}", pb.display());
        if ma.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(&pa).unwrap(),
                std::fs::read_link(&pb).unwrap()
            );
            continue;
        }
        assert_eq!(
            ma.mode() & 0o7777,
            mb.mode() & 0o7777,
            "mode of {}",
            pb.display()
        );
        assert_eq!(
            (ma.mtime(), ma.mtime_nsec()),
            (mb.mtime(), mb.mtime_nsec()),
            "mtime of {}",
            pb.display()
        );
        if ma.is_dir() {
            assert_same_tree(&pa, &pb);
        } else {
            assert!(
                std::fs::read(&pa).unwrap() == std::fs::read(&pb).unwrap(),
                "content of {}",
                pb.display()
            );
        }
    }
}

/// Copies a tree preserving modes, mtimes and symlinks (`cp -a`).
pub fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}
