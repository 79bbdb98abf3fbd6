//! Helpers for the stream tests: a primary (a real worker with its change feed and a stream
//! server on loopback), standbys in this process or in processes of their own, writer
//! processes, and comparisons of copies.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_timeline::{
    FeedOptions, Position, Replica, ReplicaConfig, ReplicaOptions, ServerOptions, StreamKey,
    StreamServer, StreamServerConfig, TimelineWorker, WorkerOptions,
};
use lifeboat_vault::Repository;

use super::{PASSWORD, Site, fast_options};

/// A primary: the site, its vault, its worker streaming with `term`, and the stream server.
pub struct Primary {
    pub site: Site,
    pub repo: Arc<Repository>,
    pub worker: TimelineWorker,
    pub server: StreamServer,
}

pub fn feed_options(term: u64) -> WorkerOptions {
    WorkerOptions {
        feed: Some(FeedOptions::new(term)),
        ..fast_options()
    }
}

/// The stream key every node of the test site derives from its vault key.
pub fn stream_key(repo: &Repository) -> StreamKey {
    StreamKey::new(repo.derive_key(StreamKey::CONTEXT))
}

pub fn server_config(repo: &Repository) -> StreamServerConfig {
    StreamServerConfig {
        site: "guestbook".into(),
        node: "primary".into(),
        zone: "zone-a".into(),
        key: stream_key(repo),
        options: ServerOptions {
            heartbeat_interval: Duration::from_millis(200),
            standby_timeout: Duration::from_secs(3),
            ..ServerOptions::default()
        },
    }
}

impl Primary {
    pub async fn start(options: WorkerOptions) -> Primary {
        let site = Site::new();
        let repo = site.init_vault(1).await;
        let worker = TimelineWorker::start(site.sources(), options, repo.clone())
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server =
            StreamServer::start(listener, worker.feed().unwrap(), server_config(&repo)).unwrap();
        Primary {
            site,
            repo,
            worker,
            server,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// A barrier, then waits until some standby acknowledged it.
    pub async fn sync(&self, within: Duration) -> Position {
        let p = self.worker.barrier().await.unwrap();
        self.server
            .wait_acked(p, |_| true, within)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        p
    }

    pub fn db(&self) -> PathBuf {
        self.site.site.join("data/app.db")
    }

    pub fn uploads(&self) -> PathBuf {
        self.site.site.join("uploads")
    }
}

/// Where one standby keeps its copy.
pub struct StandbyDirs {
    pub state: PathBuf,
    pub meta: PathBuf,
    pub spool: PathBuf,
    pub stop_file: PathBuf,
}

impl StandbyDirs {
    pub fn new(root: &Path, name: &str) -> StandbyDirs {
        let base = root.join(name);
        std::fs::create_dir_all(&base).unwrap();
        StandbyDirs {
            state: base.join("state"),
            meta: base.join("meta"),
            spool: base.join("spool"),
            stop_file: base.join("stop"),
        }
    }

    /// A replica's config; `repo` is the site's vault (the stream key comes from its key).
    pub fn config(&self, options: ReplicaOptions, repo: &Repository) -> ReplicaConfig {
        ReplicaConfig {
            key: stream_key(repo),
            mariadb: None,
            site: "guestbook".into(),
            node: "standby".into(),
            zone: "zone-b".into(),
            state_dir: self.state.clone(),
            databases: vec!["data/app.db".into()],
            data_dirs: vec!["uploads".into()],
            meta_dir: self.meta.clone(),
            options,
        }
    }

    pub fn db(&self) -> PathBuf {
        self.state.join("data/app.db")
    }

    pub fn uploads(&self) -> PathBuf {
        self.state.join("uploads")
    }
}

pub fn quick_replica_options() -> ReplicaOptions {
    ReplicaOptions {
        reconnect_max: Duration::from_millis(500),
        resync_retry_max: Duration::from_secs(2),
        ..ReplicaOptions::default()
    }
}

/// A standby in this process, opening the vault on its own.
pub async fn start_replica(p: &Primary, dirs: &StandbyDirs, options: ReplicaOptions) -> Replica {
    let repo = p.site.open_vault(&p.site.dest_a, "standby-spool").await;
    Replica::start(dirs.config(options, &repo), repo, Some(p.addr()))
        .await
        .unwrap()
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct ChildGuard(pub Option<std::process::Child>);

impl ChildGuard {
    pub fn spawn(command: &mut Command) -> ChildGuard {
        ChildGuard(Some(command.spawn().unwrap()))
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits (up to `within`) for the process to exit; whether it exited and succeeded.
    pub fn wait_success(&mut self, within: Duration) -> bool {
        let Some(child) = self.0.as_mut() else {
            return false;
        };
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.0 = None;
                return status.success();
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it has exited (without waiting).
    pub fn exited(&mut self) -> bool {
        match self.0.as_mut() {
            None => true,
            Some(c) => c.try_wait().unwrap().is_some(),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A standby in a process of its own (`timeline-test-standby`).
pub fn spawn_standby(p: &Primary, dirs: &StandbyDirs, crash_at: Option<&str>) -> ChildGuard {
    let _ = std::fs::remove_file(&dirs.stop_file);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_timeline-test-standby"));
    cmd.env(
        "LIFEBOAT_TEST_PASSWORD",
        std::str::from_utf8(PASSWORD).unwrap(),
    )
    .arg("--state")
    .arg(&dirs.state)
    .arg("--meta")
    .arg(&dirs.meta)
    .arg("--vault")
    .arg(&p.site.dest_a)
    .arg("--spool")
    .arg(&dirs.spool)
    .arg("--primary")
    .arg(p.addr().to_string())
    .arg("--stop-file")
    .arg(&dirs.stop_file)
    .args(["--db", "data/app.db", "--dir", "uploads"]);
    if let Some(c) = crash_at {
        cmd.args(["--crash-at", c]);
    }
    ChildGuard::spawn(&mut cmd)
}

/// Asks a standby process to stop cleanly and waits for it.
pub fn stop_standby(child: &mut ChildGuard, dirs: &StandbyDirs) {
    std::fs::write(&dirs.stop_file, b"").unwrap();
    assert!(
        child.wait_success(Duration::from_secs(60)),
        "the standby did not stop cleanly"
    );
}

/// A writer process committing `count` rows (or until `until` exists).
pub fn spawn_writer(db: &Path, count: &str, pause_ms: u64) -> ChildGuard {
    ChildGuard::spawn(
        Command::new(env!("CARGO_BIN_EXE_timeline-test-writer"))
            .arg(db)
            .arg(count)
            .arg(pause_ms.to_string()),
    )
}

pub async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every row of `entries`, in id order (opens the database read-only, so it never
/// checkpoints or removes its log).
pub fn rows(db: &Path) -> Vec<(i64, String)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT id, body FROM entries ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// `PRAGMA integrity_check` answers "ok".
pub fn assert_intact(db: &Path) {
    lifeboat_capture::replay::integrity_check(db).unwrap_or_else(|e| panic!("{e}"));
}
