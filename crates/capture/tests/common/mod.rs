//! Shared helpers for the capture tests: real SQLite files written by real connections.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lifeboat_capture::replay::{RebuildTarget, rebuild};
use lifeboat_capture::{BaseImage, CaptureEvent, CommitRecord, Record};
use rusqlite::Connection;

/// Creates `dir/site.db` in WAL mode with the `entries` table the writers fill.
pub fn wal_database(dir: &Path) -> PathBuf {
    let db = dir.join("site.db");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE entries (id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
    )
    .unwrap();
    db
}

/// An app connection: patient with locks, checkpointing often (small autocheckpoint).
pub fn app_connection(db: &Path) -> Connection {
    let conn = Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(60)).unwrap();
    conn.execute_batch("PRAGMA wal_autocheckpoint=50;").unwrap();
    conn
}

/// Commits one transaction inserting the next id (allocated under the write lock, so ids
/// follow commit order). Returns the id.
pub fn commit_next_entry(conn: &Connection) -> i64 {
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    let id: i64 = conn
        .query_row("SELECT coalesce(max(id), 0) + 1 FROM entries", [], |r| {
            r.get(0)
        })
        .unwrap();
    let body = "b".repeat((id as usize * 37) % 3000);
    conn.execute(
        "INSERT INTO entries (id, body) VALUES (?1, ?2)",
        rusqlite::params![id, body],
    )
    .unwrap();
    conn.execute_batch("COMMIT").unwrap();
    id
}

/// Everything a capture produced, as the vault would keep it.
#[derive(Default)]
pub struct Timeline {
    pub images: Vec<BaseImage>,
    pub commits: Vec<CommitRecord>,
    /// Everything, in seq order, as replay takes it.
    pub records: Vec<Record>,
}

impl Timeline {
    pub fn add(&mut self, events: Vec<CaptureEvent>) {
        for e in events {
            let expected = self.last_seq() + 1;
            assert!(
                self.images.is_empty() && self.commits.is_empty() || e.seq() == expected,
                "seq gap: expected {expected}, got {}",
                e.seq()
            );
            match e {
                CaptureEvent::Commit(c) => {
                    self.records.push(Record::Commit(c.clone()));
                    self.commits.push(c);
                }
                CaptureEvent::BaseImage(b) => {
                    self.records.push(Record::BaseImage(b.record.clone()));
                    self.images.push(b);
                }
            }
        }
    }

    pub fn last_seq(&self) -> u64 {
        let c = self.commits.last().map_or(0, |c| c.seq);
        let i = self.images.last().map_or(0, |b| b.record.seq);
        c.max(i)
    }

    /// Rebuilds the database as of `seq` into `out`.
    pub fn rebuild_at(&self, seq: u64, out: &Path) {
        let base = self
            .images
            .iter()
            .rev()
            .find(|b| b.record.seq <= seq)
            .expect("a base image at or before the seq");
        rebuild(
            &base.path,
            &base.record,
            &self.records,
            RebuildTarget::Seq(seq),
            out,
        )
        .unwrap();
    }
}

/// The ids in the `entries` table of the database at `db`, in order.
pub fn entry_ids(db: &Path) -> Vec<i64> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn.prepare("SELECT id FROM entries ORDER BY id").unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Every row of the `entries` table of the database at `db`, in id order.
pub fn rows(db: &Path) -> Vec<(i64, String)> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT id, body FROM entries ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The salts of the WAL generation in `db`'s log now (`None` while it has no header).
pub fn wal_salts(db: &Path) -> Option<[u32; 2]> {
    let file = std::fs::File::open(format!("{}-wal", db.display())).ok()?;
    lifeboat_capture::wal::read_header(&file)
        .unwrap()
        .ok()
        .flatten()
        .map(|h| h.salt)
}

/// Watches a database's log from outside: how big the file gets and how often SQLite
/// restarts it (a new header, seen as new salts).
pub struct WalWatch {
    db: PathBuf,
    salts: Option<[u32; 2]>,
    /// Generations seen to begin since the watch started.
    pub restarts: u64,
    /// The largest size of the `-wal` file seen, in bytes.
    pub largest: u64,
}

impl WalWatch {
    pub fn new(db: &Path) -> WalWatch {
        WalWatch {
            db: db.to_path_buf(),
            salts: wal_salts(db),
            restarts: 0,
            largest: 0,
        }
    }

    /// Looks at the log now.
    pub fn sample(&mut self) {
        let len = std::fs::metadata(format!("{}-wal", self.db.display())).map_or(0, |m| m.len());
        self.largest = self.largest.max(len);
        let now = wal_salts(&self.db);
        if now.is_some() && now != self.salts {
            if self.salts.is_some() {
                self.restarts += 1;
            }
            self.salts = now;
        }
    }
}

/// Polls `condition` until it holds or `within` passes.
pub fn wait_for(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process that is killed (SIGKILL) and reaped if the test ends before it does,
/// so a failing test never leaves processes behind.
pub struct ChildGuard(pub Option<std::process::Child>);

impl ChildGuard {
    pub fn spawn(command: &mut std::process::Command) -> Self {
        ChildGuard(Some(command.spawn().unwrap()))
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process has exited (and then whether it succeeded), without waiting.
    pub fn exited(&mut self) -> Option<bool> {
        let child = self.0.as_mut()?;
        let status = child.try_wait().unwrap()?;
        self.0 = None;
        Some(status.success())
    }

    /// Waits for the process to exit and reports whether it succeeded.
    pub fn wait_success(&mut self) -> bool {
        self.0
            .take()
            .is_some_and(|mut c| c.wait().unwrap().success())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}
