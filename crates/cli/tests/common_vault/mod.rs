//! Helpers for the vault CLI tests: run the real `lifeboat` binary against a scratch
//! repository, generate trees, compare them byte for byte.
#![allow(dead_code)]
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../../../vault/tests/common/trees.rs"]
mod trees;
#[allow(unused_imports)] // each test binary uses a different part
pub use trees::{assert_same_tree, noise};

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
    /// `lifeboat` with the password and this scratch's spool in its environment.
    pub fn lifeboat(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
        c.current_dir(self.dir.path())
            .env("LIFEBOAT_PASSWORD", PASSWORD)
            .env("LIFEBOAT_SPOOL", self.path("spool"))
            .env_remove("LIFEBOAT_REPO");
        c
    }
    /// `lifeboat vault init` on these destinations, with the fast (weak) key wrapping that
    /// only tests ask for, so every later command starts fast.
    pub fn init(&self, dests: &[&str]) -> String {
        let mut args = vec!["vault", "init", "--insecure-fast-kdf"];
        for d in dests {
            args.extend(["--dest", d]);
        }
        self.ok(&args)
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
