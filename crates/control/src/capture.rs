//! Continuous capture inside the daemon: one [`TimelineWorker`] on the live state, started
//! once the site's databases exist, restarted on another state after a rewind, stopped (after
//! shipping what is pending) when the site goes down. Its facts become site events.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeboat_core::{EventKind, Manifest};
use lifeboat_timeline::{
    SiteSources, TimelineEvent, TimelineStatus, TimelineWorker, WorkerOptions,
};
use lifeboat_vault::Repository;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::task::JoinHandle;

use crate::{ControlError, SitePaths};

/// How long a stopping worker may keep retrying to ship what is pending.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between attempts to start a worker that could not start.
const RETRY: Duration = Duration::from_secs(2);

/// Capture as `lifeboat status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CaptureReport {
    /// The state captured: `site` (the site dir) or the name of a restored copy.
    pub state: String,
    /// Whether the worker runs (false while it waits for the databases or retries).
    pub running: bool,
    /// Why capture is not running yet, when it is not.
    pub waiting: Option<String>,
    pub last_segment_seq: Option<u64>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_shipped_at: Option<OffsetDateTime>,
    /// Age of the oldest captured change not yet durable in the vault.
    pub lag_ms: u64,
    pub segments_shipped: u64,
    pub bytes_shipped: u64,
    pub last_checkpoint: Option<CheckpointReport>,
    pub last_error: Option<String>,
    /// Per destination: reachable, objects waiting in the spool, last success.
    pub destinations: Vec<DestinationReport>,
    /// Capture of the MariaDB database's binary log, when the site has one.
    #[serde(default)]
    pub mariadb: Option<MariaDbCaptureReport>,
}

/// Capture of the MariaDB database in [`CaptureReport`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MariaDbCaptureReport {
    /// Whether capture holds a replication stream from the server now.
    pub connected: bool,
    /// How often it reconnected (the server restarted).
    pub reconnects: u64,
    /// The GTID position durable in the vault, e.g. `0-1-57`.
    pub confirmed: String,
    /// The last problem with the stream.
    pub last_problem: Option<String>,
    /// The oldest binlog file the server keeps (older ones were purged once a durable
    /// checkpoint covered them).
    #[serde(default)]
    pub oldest_binlog: Option<String>,
    /// Binlog files purged since capture started.
    #[serde(default)]
    pub binlog_files_purged: u64,
    /// Why the last purge of covered binlog files failed, if it did.
    #[serde(default)]
    pub binlog_purge_error: Option<String>,
}

/// The last checkpoint in [`CaptureReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointReport {
    pub snapshot: String,
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
}

/// One vault destination in [`CaptureReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestinationReport {
    pub url: String,
    pub reachable: bool,
    pub objects_behind: u64,
    /// Bytes of those objects.
    pub bytes_behind: u64,
    pub last_success: Option<String>,
    pub last_error: Option<String>,
}

/// Where capture's facts go: the site's event log (and the owner's terminal for alerts).
pub(crate) type Recorder = std::sync::Arc<dyn Fn(OffsetDateTime, EventKind) + Send + Sync>;

struct Slot {
    state: String,
    checker: Option<JoinHandle<()>>,
    worker: Option<Arc<TimelineWorker>>,
    waiting: Option<String>,
    starter: Option<JoinHandle<()>>,
    forwarder: Option<JoinHandle<()>>,
}

/// The daemon's capture: the repository and the worker of the live state.
pub(crate) struct Capture {
    pub(crate) repo: Arc<Repository>,
    paths: SitePaths,
    manifest: Manifest,
    options: WorkerOptions,
    integrity_interval: Duration,
    /// Switch a database that is not in WAL mode to it (`lifeboat up --enable-wal`).
    enable_wal: bool,
    record: Recorder,
    slot: Arc<Mutex<Slot>>,
    /// The site's MariaDB servers, whose live one is captured with the rest.
    database: std::sync::OnceLock<Arc<crate::mariadb::SiteDatabase>>,
}

impl Capture {
    pub(crate) fn new(
        repo: Arc<Repository>,
        paths: SitePaths,
        manifest: Manifest,
        record: Recorder,
        enable_wal: bool,
    ) -> Capture {
        let spec = manifest.vault.clone().expect("capture needs [vault]");
        let options = WorkerOptions {
            segment_interval: spec.segment_interval,
            checkpoint_interval: spec.checkpoint_interval,
            ..WorkerOptions::default()
        };
        Capture {
            repo,
            paths,
            manifest,
            options,
            integrity_interval: spec.integrity_check_interval,
            enable_wal,
            record,
            database: std::sync::OnceLock::new(),
            slot: Arc::new(Mutex::new(Slot {
                state: String::new(),
                checker: None,
                worker: None,
                waiting: Some("not started".into()),
                starter: None,
                forwarder: None,
            })),
        }
    }

    fn emit(&self, what: EventKind) {
        (self.record)(OffsetDateTime::now_utc(), what);
    }

    /// Starts capturing the state named `state` in the background: waits until its
    /// databases exist, then starts the worker, retrying (with an event) while it fails.
    pub(crate) fn start(&self, state: &str) {
        self.start_in_term(state, None, None);
    }

    /// [`Capture::start`], for the primary of a cluster in `term`: the worker also feeds
    /// the stream of changes to the standbys, every record tagged with the term.
    pub(crate) fn start_in_term(
        &self,
        state: &str,
        term: Option<u64>,
        history: Option<lifeboat_timeline::ReplicaHistory>,
    ) {
        self.start_with(state, term, history, term.is_some());
    }

    /// [`Capture::start_in_term`] on a state the primary rewound to: the stream opens only
    /// once the state's base is stored, as the standbys' copies are of the state before and
    /// take the rewound one from the vault.
    pub(crate) fn start_rewound_in_term(&self, state: &str, term: u64) {
        self.start_with(state, Some(term), None, false);
    }

    fn start_with(
        &self,
        state: &str,
        term: Option<u64>,
        history: Option<lifeboat_timeline::ReplicaHistory>,
        first_checkpoint_later: bool,
    ) {
        let state_dir = self.paths.state_dir(state);
        // The worker names sources relative to the state dir and stores the manifest that is
        // live with every checkpoint: give a restored copy the site's manifest.
        let sources = SiteSources {
            site_dir: state_dir.clone(),
            databases: self.manifest.state.sqlite.clone(),
            data_dirs: self.manifest.state.dirs.clone(),
            manifest: PathBuf::from(lifeboat_core::MANIFEST_FILE),
            state_dir: self.paths.capture(state),
            mariadb: self
                .database
                .get()
                .and_then(|db| Some((db.spec.dir.clone(), db.running(state)?))),
        };
        let mut options = self.options.clone();
        options.feed = term.map(|term| lifeboat_timeline::FeedOptions {
            // What this node applied last as a standby: the other standbys get what they
            // lack of it from here instead of restoring from the vault.
            history: history.map(Arc::new),
            ..lifeboat_timeline::FeedOptions::new(term)
        });
        // A primary of a cluster opens its stream once capture runs: it must not wait for a
        // base image of the whole state to be stored (standbys, and so sync writes, would).
        options.first_checkpoint_later = first_checkpoint_later;
        let (repo, options, record, slot) = (
            self.repo.clone(),
            options,
            self.record.clone(),
            self.slot.clone(),
        );
        let site_manifest = self.paths.manifest();
        let state_name = state.to_string();
        let enable_wal = self.enable_wal;
        {
            let mut s = slot.lock().unwrap();
            s.state = state_name.clone();
            s.waiting = Some("starting".into());
        }
        let starter = tokio::spawn(async move {
            let mut last_error = String::new();
            let mut not_wal_looks = 0u32;
            loop {
                let missing: Vec<String> = sources
                    .databases
                    .iter()
                    .filter(|db| !state_dir.join(db).exists())
                    .map(|db| db.display().to_string())
                    .collect();
                if missing.is_empty() {
                    match wal_mode(&state_dir, &sources.databases, enable_wal).await {
                        Ok(switched) => {
                            for event in switched {
                                record(OffsetDateTime::now_utc(), event);
                            }
                        }
                        Err(not_wal) => {
                            // Said once per distinct problem, as its own event: the owner
                            // must act, and until then nothing of the database is captured.
                            // Not on the first look: many apps switch to WAL as they start.
                            let why = not_wal.describe();
                            not_wal_looks += 1;
                            if why != last_error && not_wal_looks > 1 {
                                record(OffsetDateTime::now_utc(), not_wal);
                                last_error = why.clone();
                            }
                            slot.lock().unwrap().waiting = Some(why);
                            tokio::time::sleep(RETRY).await;
                            continue;
                        }
                    }
                }
                let attempt = if !missing.is_empty() {
                    Err(format!(
                        "waiting for the site to create {} (capture starts once it exists)",
                        missing.join(", ")
                    ))
                } else {
                    if state_name != crate::SITE_STATE
                        && let Err(e) = copy_manifest(&site_manifest, &state_dir)
                    {
                        last_error.clear();
                        Err(e)
                    } else {
                        TimelineWorker::start(sources.clone(), options.clone(), repo.clone())
                            .await
                            .map_err(|e| e.to_string())
                    }
                };
                match attempt {
                    Ok(worker) => {
                        let worker = Arc::new(worker);
                        let forwarder = tokio::spawn(forward_events(
                            worker.subscribe(),
                            worker.status().recent_events,
                            record.clone(),
                        ));
                        record(
                            OffsetDateTime::now_utc(),
                            EventKind::CaptureStarted {
                                state: state_name.clone(),
                            },
                        );
                        let mut s = slot.lock().unwrap();
                        s.worker = Some(worker);
                        s.waiting = None;
                        s.forwarder = Some(forwarder);
                        return;
                    }
                    Err(why) => {
                        let waiting_for_db = why.starts_with("waiting for the site");
                        if !waiting_for_db && why != last_error {
                            record(
                                OffsetDateTime::now_utc(),
                                EventKind::CaptureError {
                                    message: why.clone(),
                                },
                            );
                        }
                        last_error = why.clone();
                        slot.lock().unwrap().waiting = Some(why);
                    }
                }
                let pause = if last_error.starts_with("waiting for the site") {
                    Duration::from_millis(250)
                } else {
                    RETRY
                };
                tokio::time::sleep(pause).await;
            }
        });
        let checker = tokio::spawn(check_integrity(
            self.paths.state_dir(state),
            self.manifest.state.sqlite.clone(),
            self.integrity_interval,
            self.record.clone(),
        ));
        let mut s = self.slot.lock().unwrap();
        s.starter = Some(starter);
        s.checker = Some(checker);
    }

    /// The running worker, if any.
    /// Captures the site's MariaDB database too (call before [`Capture::start`]).
    pub(crate) fn set_database(&self, db: Arc<crate::mariadb::SiteDatabase>) {
        let _ = self.database.set(db);
    }

    pub(crate) fn worker(&self) -> Option<Arc<TimelineWorker>> {
        self.slot.lock().unwrap().worker.clone()
    }

    /// The running worker, once it runs (it starts in the background), for at most `wait`.
    pub(crate) async fn running_worker(&self, wait: Duration) -> Option<Arc<TimelineWorker>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(worker) = self.worker() {
                return Some(worker);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The repository capture writes to (a standby restores from it).
    pub(crate) fn repository(&self) -> Arc<Repository> {
        self.repo.clone()
    }

    /// Ships what is captured so far, so the vault holds the site up to now. A no-op while
    /// no worker runs.
    pub(crate) async fn ship_now(&self) -> Result<(), ControlError> {
        if let Some(worker) = self.worker() {
            worker.ship_now().await.map_err(|e| {
                ControlError::Vault(format!("shipping captured changes failed: {e}"))
            })?;
        }
        Ok(())
    }

    /// Stops capture at once without shipping anything more: for a primary that was fenced.
    /// Another node writes the timeline in a newer term now; what this node captured and had
    /// not shipped stays in its state, which it keeps aside.
    pub(crate) async fn abandon(&self) {
        let (starter, worker, forwarder) = {
            let mut s = self.slot.lock().unwrap();
            s.waiting = Some("stopped: this node is not the primary".into());
            if let Some(checker) = s.checker.take() {
                checker.abort();
            }
            (s.starter.take(), s.worker.take(), s.forwarder.take())
        };
        if let Some(starter) = starter {
            starter.abort();
            let _ = starter.await;
        }
        // Halted, not stopped: nothing more is shipped (a status call may still hold it).
        if let Some(worker) = worker {
            worker.halt();
        }
        if let Some(forwarder) = forwarder {
            forwarder.abort();
        }
    }

    /// Stops capture (shipping what is pending, retrying up to a deadline).
    pub(crate) async fn stop(&self) {
        let (starter, worker, forwarder) = {
            let mut s = self.slot.lock().unwrap();
            s.waiting = Some("stopped".into());
            if let Some(checker) = s.checker.take() {
                checker.abort();
            }
            (s.starter.take(), s.worker.take(), s.forwarder.take())
        };
        if let Some(starter) = starter {
            starter.abort();
            let _ = starter.await;
        }
        if let Some(worker) = worker {
            let worker = match Arc::try_unwrap(worker) {
                Ok(w) => w,
                Err(shared) => {
                    // A request still holds it (a status call): wait for it to let go.
                    let mut shared = shared;
                    loop {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        match Arc::try_unwrap(shared) {
                            Ok(w) => break w,
                            Err(s) => shared = s,
                        }
                    }
                }
            };
            if let Err(e) = worker.stop(STOP_DEADLINE).await {
                self.emit(EventKind::CaptureError {
                    message: format!(
                        "changes captured just before capture stopped could not be shipped: {e}"
                    ),
                });
            }
        }
        if let Some(forwarder) = forwarder {
            forwarder.abort();
        }
    }

    /// Where capture stands, with each destination's lag.
    pub(crate) async fn report(&self) -> CaptureReport {
        let (state, worker, waiting) = {
            let s = self.slot.lock().unwrap();
            (s.state.clone(), s.worker.clone(), s.waiting.clone())
        };
        let status = worker
            .as_ref()
            .map(|w| w.status())
            .unwrap_or_else(TimelineStatus::default);
        // What is known, never a probe: a destination that is down must not slow `status`.
        let destinations = self
            .repo
            .status_known()
            .into_iter()
            .map(|d| DestinationReport {
                url: d.url,
                reachable: d.reachable,
                objects_behind: d.objects_behind,
                bytes_behind: d.bytes_behind,
                last_success: d.last_success,
                last_error: d.last_error,
            })
            .collect();
        CaptureReport {
            state,
            running: worker.is_some(),
            waiting,
            last_segment_seq: status.last_segment_seq,
            last_shipped_at: status.last_shipped_at,
            lag_ms: status.lag.as_millis() as u64,
            segments_shipped: status.segments_shipped,
            bytes_shipped: status.bytes_shipped,
            last_checkpoint: status.last_checkpoint.map(|c| CheckpointReport {
                snapshot: c.snapshot,
                seq: c.seq,
                time: c.time,
            }),
            last_error: status.last_error,
            destinations,
            mariadb: status.mariadb.map(|m| MariaDbCaptureReport {
                connected: m.connected,
                reconnects: m.reconnects,
                confirmed: m.confirmed,
                last_problem: m.last_problem,
                oldest_binlog: m.oldest_binlog,
                binlog_files_purged: m.binlog_files_purged,
                binlog_purge_error: m.binlog_purge_error,
            }),
        }
    }
}

/// Makes sure every database of the state is in WAL mode, which capture needs: switches the
/// ones that are not when `enable` (returning the events that say so), else returns the
/// event that says what to do.
async fn wal_mode(
    state_dir: &std::path::Path,
    databases: &[PathBuf],
    enable: bool,
) -> Result<Vec<EventKind>, EventKind> {
    let (state_dir, databases) = (state_dir.to_path_buf(), databases.to_vec());
    let check = tokio::task::spawn_blocking(move || {
        let mut switched = Vec::new();
        for db in &databases {
            let path = state_dir.join(db);
            let database = db.display().to_string();
            let mode =
                lifeboat_capture::journal_mode(&path).map_err(|e| EventKind::CaptureError {
                    message: format!("could not read the journal mode of {database}: {e}"),
                })?;
            if mode.eq_ignore_ascii_case("wal") {
                continue;
            }
            if !enable {
                return Err(EventKind::NotWalMode { database, mode });
            }
            let previous =
                lifeboat_capture::enable_wal(&path).map_err(|e| EventKind::CaptureError {
                    message: format!("could not switch {database} to WAL mode: {e}"),
                })?;
            switched.push(EventKind::WalEnabled { database, previous });
        }
        Ok(switched)
    });
    check.await.unwrap_or_else(|e| {
        Err(EventKind::CaptureError {
            message: format!("checking the journal mode stopped: {e}"),
        })
    })
}

/// Runs `PRAGMA quick_check` on every live database each `interval`; a failure is an event
/// (once per distinct verdict), so the owner learns when the damage appeared.
async fn check_integrity(
    state_dir: PathBuf,
    databases: Vec<PathBuf>,
    interval: Duration,
    record: Recorder,
) {
    let mut reported: Vec<Option<String>> = vec![None; databases.len()];
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (i, db) in databases.iter().enumerate() {
            let path = state_dir.join(db);
            if !path.exists() {
                continue;
            }
            let verdict = tokio::task::spawn_blocking(move || quick_check(&path))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            match verdict {
                Ok(()) => reported[i] = None,
                Err(detail) if reported[i].as_ref() != Some(&detail) => {
                    reported[i] = Some(detail.clone());
                    record(
                        OffsetDateTime::now_utc(),
                        EventKind::IntegrityFailed {
                            database: db.display().to_string(),
                            detail,
                        },
                    );
                }
                Err(_) => {}
            }
        }
    }
}

/// `Ok` when the database passes `PRAGMA quick_check`; else the first problems it names.
fn quick_check(path: &std::path::Path) -> Result<(), String> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("cannot open it: {e}"))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let mut stmt = conn
        .prepare("PRAGMA quick_check(5)")
        .map_err(|e| format!("cannot check it: {e}"))?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| format!("reading it failed: {e}"))?;
    if rows.len() == 1 && rows[0] == "ok" {
        return Ok(());
    }
    Err(rows.join("; "))
}

/// Puts the site's manifest into a restored state dir (atomically), so checkpoints of that
/// state carry the configuration that is live.
fn copy_manifest(manifest: &std::path::Path, state_dir: &std::path::Path) -> Result<(), String> {
    let target = state_dir.join(lifeboat_core::MANIFEST_FILE);
    let tmp = state_dir.join(".lifeboat.toml.tmp");
    let copy = || -> std::io::Result<()> {
        std::fs::copy(manifest, &tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &target)
    };
    copy().map_err(|e| {
        format!(
            "could not copy the manifest into {}: {e}; check the disk",
            state_dir.display()
        )
    })
}

fn kind_of(event: TimelineEvent) -> Option<EventKind> {
    match event {
        TimelineEvent::ContinuityLost { database, why } => {
            Some(EventKind::ContinuityLost { database, why })
        }
        TimelineEvent::CheckpointTaken(info) => Some(EventKind::CheckpointTaken {
            snapshot: info.snapshot,
            segment: info.seq,
        }),
        TimelineEvent::MariaDbCaptureGap {
            database,
            last_captured,
            why,
        } => Some(EventKind::MariaDbCaptureGap {
            database,
            last_captured,
            why,
        }),
        TimelineEvent::MariaDbCaptureResumed {
            database,
            last_captured,
            base_gtid,
            unrestorable_from,
            unrestorable_until,
        } => Some(EventKind::MariaDbCaptureResumed {
            database,
            last_captured,
            base_gtid,
            unrestorable_from: rfc3339(unrestorable_from),
            unrestorable_until: rfc3339(unrestorable_until),
        }),
        TimelineEvent::Error { message } => Some(EventKind::CaptureError { message }),
        TimelineEvent::SegmentShipped { .. } => None,
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// Turns the worker's events into site events: first those it had before anyone listened
/// (the first checkpoint), then the live ones. A failure that repeats is one event.
async fn forward_events(
    mut rx: tokio::sync::broadcast::Receiver<TimelineEvent>,
    earlier: Vec<(OffsetDateTime, TimelineEvent)>,
    record: Recorder,
) {
    let mut last_error = None;
    let mut send = |at: OffsetDateTime, event: TimelineEvent| {
        if let TimelineEvent::Error { message } = &event {
            if last_error.as_ref() == Some(message) {
                return;
            }
            last_error = Some(message.clone());
        } else if matches!(event, TimelineEvent::CheckpointTaken(_)) {
            last_error = None;
        }
        if let Some(kind) = kind_of(event) {
            record(at, kind);
        }
    };
    for (at, event) in earlier {
        send(at, event);
    }
    loop {
        match rx.recv().await {
            Ok(TimelineEvent::SegmentShipped { .. }) => {}
            Ok(event) => send(OffsetDateTime::now_utc(), event),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
