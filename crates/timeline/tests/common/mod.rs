//! Test helpers: a site with a real SQLite database in WAL mode, a data dir, a manifest, and
//! a real vault repository on two local-directory destinations.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lifeboat_timeline::{SiteSources, WorkerOptions};
use lifeboat_vault::{KdfParams, OpenOptions, Repository};
use rusqlite::Connection;

pub mod stream;

pub const PASSWORD: &[u8] = b"timeline test password";

pub struct Site {
    pub tmp: tempfile::TempDir,
    pub site: PathBuf,
    pub dest_a: String,
    pub dest_b: String,
}

impl Site {
    pub fn new() -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let site = tmp.path().join("site");
        std::fs::create_dir_all(site.join("data")).unwrap();
        std::fs::create_dir_all(site.join("uploads")).unwrap();
        std::fs::write(site.join("lifeboat.toml"), "name = \"guestbook\"\n").unwrap();
        let conn = Connection::open(site.join("data/app.db")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE entries (id INTEGER PRIMARY KEY, body TEXT NOT NULL);")
            .unwrap();
        let dest_a = tmp.path().join("dest-a").to_string_lossy().into_owned();
        let dest_b = tmp.path().join("dest-b").to_string_lossy().into_owned();
        Site {
            tmp,
            site,
            dest_a,
            dest_b,
        }
    }

    pub fn opts(&self, spool: &str) -> OpenOptions {
        OpenOptions {
            spool_dir: Some(self.tmp.path().join(spool)),
            kdf: Some(KdfParams::insecure_fast()),
            s3_credentials: None,
        }
    }

    /// Creates the repository on both destinations; a write needs `quorum` of them.
    pub async fn init_vault(&self, quorum: usize) -> Arc<Repository> {
        Repository::init(
            &[&self.dest_a, &self.dest_b],
            Some(quorum),
            PASSWORD,
            &self.opts("spool"),
        )
        .await
        .unwrap();
        self.open_vault(&self.dest_a, "spool").await
    }

    pub async fn open_vault(&self, url: &str, spool: &str) -> Arc<Repository> {
        Arc::new(
            Repository::open(url, PASSWORD, &self.opts(spool))
                .await
                .unwrap(),
        )
    }

    pub fn sources(&self) -> SiteSources {
        SiteSources {
            site_dir: self.site.clone(),
            databases: vec!["data/app.db".into()],
            data_dirs: vec!["uploads".into()],
            manifest: "lifeboat.toml".into(),
            mariadb: None,
            state_dir: ".lifeboat/timeline".into(),
        }
    }

    pub fn db(&self) -> Connection {
        let conn = Connection::open(self.site.join("data/app.db")).unwrap();
        conn.busy_timeout(Duration::from_secs(30)).unwrap();
        conn
    }

    /// Inserts rows with these ids, one transaction each (as a web app would).
    pub fn insert(&self, conn: &Connection, ids: std::ops::Range<i64>) {
        for id in ids {
            conn.execute(
                "INSERT INTO entries (id, body) VALUES (?1, ?2)",
                rusqlite::params![id, format!("entry {id}")],
            )
            .unwrap();
        }
    }

    pub fn upload(&self, rel: &str, content: &[u8]) {
        let p = self.site.join("uploads").join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    pub fn delete_upload(&self, rel: &str) {
        std::fs::remove_file(self.site.join("uploads").join(rel)).unwrap();
    }
}

/// Options that make a test's timing deterministic: every poll rescans the data dir.
pub fn fast_options() -> WorkerOptions {
    WorkerOptions {
        segment_interval: Duration::from_millis(200),
        poll_interval: Duration::from_millis(20),
        rescan_interval: Duration::ZERO,
        ..WorkerOptions::default()
    }
}

/// Ids of the rows in a restored database (also checks it opens).
pub fn ids_in(db: &Path) -> Vec<i64> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn.prepare("SELECT id FROM entries ORDER BY id").unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Every file under `root`, relative path -> content.
pub fn files_in(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    walk(root, root, &mut out);
    out
}
