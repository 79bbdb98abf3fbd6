//! [`Replica`]: the standby's side of the stream. It follows the primary at the address the
//! daemon gives it (from etcd), applies every batch to its own copy of the state in order and
//! durably (`apply.rs`), acknowledges what is applied, answers heartbeats, reconnects with
//! backoff, and restores its copy from the vault when it has nothing or the primary can no
//! longer stream what it lacks (`resync.rs`).
//!
//! Fencing: the replica never applies a batch of a term lower than the highest it has seen
//! (from a primary, or told by [`Replica::note_term`]); a new term is made durable in its
//! state file before anything of it is applied.
//!
//! After [`Replica::stop`] (or a kill -9) the copy opens cleanly in SQLite: every database is
//! in WAL mode and holds whole groups only (`wal_writer.rs`). [`seed_capture_state`] then
//! lets a worker started on the copy (the promoted primary) continue every capture sequence
//! where the copy ends, so the other standbys can follow it without a restore.
//!
//! Nothing else may open the copy's databases while the replica runs. It never prints.

mod apply;
mod connection;
mod files;
mod journal;
mod resync;
mod seed;
mod state;
mod wal_writer;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_core::cluster::FailsafeRequest;
use lifeboat_vault::Repository;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Position;
use super::error::StreamError;
use super::wire::SourcePosition;
use apply::Applier;
#[doc(hidden)]
pub use apply::{ApplyStep, FaultHook};
pub use seed::{apply_mariadb_journal, seed_capture_state};
use state::ReplicaFile;
#[doc(hidden)]
pub use state::inspect as inspect_replica_state;

/// Decides whether this standby confirms a primary's heartbeat in failsafe mode (`Ok`) or
/// not (`Err(why)`); e.g. `lifeboat_core::cluster::confirm_leader` with what the daemon knows
/// of etcd. Without one, every heartbeat of a primary whose term is current is confirmed.
pub type ConfirmPolicy = Arc<dyn Fn(&FailsafeRequest) -> Result<(), String> + Send + Sync>;

/// How the replica behaves.
#[derive(Clone)]
pub struct ReplicaOptions {
    /// The first pause before reconnecting after a failure...
    pub reconnect_min: Duration,
    /// ...doubling up to this.
    pub reconnect_max: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// No frame from the primary for this long (it sends heartbeats): reconnect.
    pub primary_timeout: Duration,
    /// The largest batch accepted (larger ones: resync from the vault).
    pub max_batch_bytes: u64,
    /// Batches received back to back are applied together, up to this many bytes.
    pub max_group_bytes: u64,
    /// A database log longer than this is copied back into its file after a group.
    pub wal_checkpoint_bytes: u64,
    /// The longest pause between two failed restores from the vault.
    pub resync_retry_max: Duration,
    /// After a crash in the middle of a group, how long to wait for the batches that reach
    /// as far again before restoring from the vault instead.
    pub intent_wait: Duration,
    /// Whether to confirm a primary's heartbeats (failsafe mode).
    pub confirm: Option<ConfirmPolicy>,
    /// How many bytes of the batches applied last to keep, so that after a promotion the
    /// new primary can send other standbys what they lack instead of a restore
    /// ([`Replica::stop_keeping_history`]).
    pub history_bytes: u64,
    /// Called at each step of applying a group (tests only).
    #[doc(hidden)]
    pub fault: Option<FaultHook>,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions {
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            primary_timeout: Duration::from_secs(3),
            max_batch_bytes: 256 << 20,
            max_group_bytes: 64 << 20,
            wal_checkpoint_bytes: 32 << 20,
            resync_retry_max: Duration::from_secs(30),
            intent_wait: Duration::from_secs(30),
            confirm: None,
            history_bytes: 64 << 20,
            fault: None,
        }
    }
}

impl std::fmt::Debug for ReplicaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaOptions")
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("primary_timeout", &self.primary_timeout)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .finish_non_exhaustive()
    }
}

/// What the replica follows and where its copy lives.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// The site (`[site] name`).
    pub site: String,
    /// This node's name.
    pub node: String,
    /// This node's zone.
    pub zone: String,
    /// The copy: databases and data dirs at their paths relative to it.
    pub state_dir: PathBuf,
    /// The databases (relative to `state_dir`), in the manifest's order.
    pub databases: Vec<PathBuf>,
    /// The data dirs (relative to `state_dir`), in the manifest's order.
    pub data_dirs: Vec<PathBuf>,
    /// Where the replica keeps its own state (`replica.state`); not inside a data dir.
    pub meta_dir: PathBuf,
    /// The key the primary must prove it holds (derived from the site's vault key).
    pub key: crate::replication::StreamKey,
    /// The site's MariaDB database, when it has one.
    pub mariadb: Option<ReplicaMariaDb>,
    /// Behaviour.
    pub options: ReplicaOptions,
}

/// A MariaDB database in the copy (`[state] mariadb`). No server runs on it while the
/// replica does: received transactions are journaled durably and applied to the data dir in
/// runs (`journal.rs`), when the journal grows past `fold_bytes` and when the replica stops.
#[derive(Debug, Clone)]
pub struct ReplicaMariaDb {
    /// The source's name: its data dir, relative to the state dir.
    pub name: String,
    /// A server on the copy's data dir, as the replica starts it to apply the journal: its
    /// config dir is where a restore from the vault writes the admin password it sets.
    pub spec: lifeboat_mariadb::ServerSpec,
    /// How a restore from the vault rebuilds the database (its `config_dir` should be
    /// `spec`'s).
    pub restore: crate::restore::MariaDbRestoreOptions,
    /// Journal size past which it is applied at once.
    pub fold_bytes: u64,
}

/// What the replica is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaState {
    /// Opening its copy.
    Starting,
    /// Restoring its copy from the vault.
    Restoring {
        /// Why.
        reason: String,
    },
    /// No primary address is known.
    WaitingForPrimary,
    /// Connecting (or waiting to reconnect) to the primary.
    Connecting {
        /// Where.
        primary: SocketAddr,
    },
    /// Receiving and applying batches.
    Streaming {
        /// From where.
        primary: SocketAddr,
    },
    /// Stopped.
    Stopped,
}

/// Where the replica stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// What it is doing.
    pub state: ReplicaState,
    /// Whether the copy is a whole, consistent state (false while a restore replaces it).
    pub ready: bool,
    /// The highest term seen; batches of lower terms are refused.
    pub highest_term: u64,
    /// The last batch applied and durable (`{0, 0}` since a restore from the vault until
    /// the first batch): what failover compares.
    pub applied: Position,
    /// Per source: the last record applied.
    pub sources: BTreeMap<String, SourcePosition>,
    /// The primary followed (its node name once it said it).
    pub primary: Option<SocketAddr>,
    /// The primary's node name.
    pub primary_node: Option<String>,
    /// Batches applied since start.
    pub batches_applied: u64,
    /// Their bytes.
    pub bytes_applied: u64,
    /// When a group was last applied.
    pub last_applied_at: Option<Instant>,
    /// Restores from the vault since start.
    pub resyncs: u64,
    /// Why the last one was needed.
    pub last_resync_reason: Option<String>,
    /// The last error (connection, apply, restore), cleared by the next applied group.
    pub last_error: Option<String>,
    /// When this standby last confirmed a primary's heartbeat: it must not campaign for a
    /// lease TTL from then (`lifeboat_core::cluster::failsafe_promise_holds`).
    pub last_confirmed_at: Option<Instant>,
    /// The term it confirmed then.
    pub confirmed_term: Option<u64>,
}

struct Shared {
    config: ReplicaConfig,
    status: Mutex<ReplicaStatus>,
    /// A term learned outside the stream (etcd), to persist and enforce.
    known_term: AtomicU64,
    primary: watch::Sender<Option<SocketAddr>>,
    stop: watch::Sender<bool>,
    /// The batches applied last (none since a restore).
    history: Mutex<super::ReplicaHistory>,
}

impl Shared {
    fn set_state(&self, state: ReplicaState) {
        self.status.lock().unwrap().state = state;
    }

    fn error(&self, e: impl std::fmt::Display) {
        self.status.lock().unwrap().last_error = Some(e.to_string());
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }
}

/// The standby's side of the stream. See the module doc.
pub struct Replica {
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

fn rel_name(p: &Path) -> String {
    p.to_string_lossy().trim_matches('/').to_string()
}

type SharedApplier = Arc<Mutex<Applier>>;

async fn blocking<T: Send + 'static>(
    applier: &SharedApplier,
    f: impl FnOnce(&mut Applier) -> Result<T, StreamError> + Send + 'static,
) -> Result<T, StreamError> {
    let applier = applier.clone();
    tokio::task::spawn_blocking(move || f(&mut applier.lock().unwrap()))
        .await
        .map_err(|_| StreamError::Stopped)?
}

impl Replica {
    /// Opens the copy (cutting what a crash left half-written) and starts following
    /// `primary` (or waits for [`set_primary`](Self::set_primary)). A copy that is empty or
    /// was being restored is restored from `repo` first.
    pub async fn start(
        config: ReplicaConfig,
        repo: Arc<Repository>,
        primary: Option<SocketAddr>,
    ) -> Result<Replica, StreamError> {
        if config.databases.is_empty() && config.data_dirs.is_empty() && config.mariadb.is_none() {
            return Err(StreamError::Invalid(
                "a replica needs at least one database or data dir".into(),
            ));
        }
        let databases: Vec<String> = config.databases.iter().map(|p| rel_name(p)).collect();
        let dirs: Vec<String> = config.data_dirs.iter().map(|p| rel_name(p)).collect();
        let (meta, state_dir, site) = (
            config.meta_dir.clone(),
            config.state_dir.clone(),
            config.site.clone(),
        );
        let (dbs2, dirs2) = (databases.clone(), dirs.clone());
        let mariadb_copy = config.mariadb.as_ref().map(|m| apply::MariaDbCopy {
            name: m.name.clone(),
            spec: m.spec.clone(),
            journal: journal::dir(&config.meta_dir),
            fold_bytes: m.fold_bytes,
        });
        let applier = tokio::task::spawn_blocking(move || -> Result<Applier, StreamError> {
            std::fs::create_dir_all(&meta).map_err(StreamError::io("create", &meta))?;
            let file = ReplicaFile::load(&meta)?.unwrap_or_else(|| ReplicaFile::empty(&site));
            if file.site != site {
                return Err(StreamError::Invalid(format!(
                    "{} belongs to a replica of site {:?}, not {site:?}; give this site its own meta dir",
                    ReplicaFile::path(&meta).display(),
                    file.site
                )));
            }
            Applier::open(&state_dir, &meta, file, &dbs2, &dirs2, mariadb_copy)
        })
        .await
        .map_err(|_| StreamError::Stopped)??;
        let mut applier = applier;
        applier.wal_checkpoint_bytes = config.options.wal_checkpoint_bytes;
        applier.fault = config.options.fault.clone();
        let status = ReplicaStatus {
            state: ReplicaState::Starting,
            ready: applier.file.ready,
            highest_term: applier.file.highest_term,
            applied: applier.file.applied,
            sources: applier.file.sources.clone(),
            primary,
            primary_node: None,
            batches_applied: 0,
            bytes_applied: 0,
            last_applied_at: None,
            resyncs: 0,
            last_resync_reason: None,
            last_error: None,
            last_confirmed_at: None,
            confirmed_term: None,
        };
        let shared = Arc::new(Shared {
            config,
            status: Mutex::new(status),
            known_term: AtomicU64::new(0),
            primary: watch::channel(primary).0,
            stop: watch::channel(false).0,
            history: Mutex::new(super::ReplicaHistory::default()),
        });
        let task = tokio::spawn(drive(shared.clone(), Arc::new(Mutex::new(applier)), repo));
        Ok(Replica {
            shared,
            task: Some(task),
        })
    }

    /// Follows the primary at `addr` from now on (`None`: none is known). A connection to
    /// another address is closed.
    pub fn set_primary(&self, addr: Option<SocketAddr>) {
        self.shared.primary.send_replace(addr);
    }

    /// A term learned outside the stream (from etcd): from now on batches of lower terms are
    /// refused, and a connection to a primary of a lower term is closed. Persisted before the
    /// next batch is applied.
    pub fn note_term(&self, term: u64) {
        self.shared.known_term.fetch_max(term, Ordering::SeqCst);
        let mut s = self.shared.status.lock().unwrap();
        s.highest_term = s.highest_term.max(term);
    }

    /// Where the replica stands.
    pub fn status(&self) -> ReplicaStatus {
        self.shared.status.lock().unwrap().clone()
    }

    /// Stops following: the group being applied is finished (never cut), the connection
    /// closed, and every database log copied back into its file, so the copy is plain
    /// database files and data dirs the app can run on. Returns the final status.
    pub async fn stop(self) -> Result<ReplicaStatus, StreamError> {
        self.stop_keeping_history().await.map(|(status, _)| status)
    }

    /// [`stop`](Self::stop), and the batches applied last, ending exactly where the copy
    /// ends (empty when they do not): a promoted standby's feed starts with them
    /// ([`crate::replication::FeedOptions::history`]).
    pub async fn stop_keeping_history(
        mut self,
    ) -> Result<(ReplicaStatus, super::ReplicaHistory), StreamError> {
        self.shared.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let status = self.status();
        let history = std::mem::take(&mut *self.shared.history.lock().unwrap());
        match status.last_error.clone() {
            Some(e) if status.state != ReplicaState::Stopped => Err(StreamError::Invalid(e)),
            _ => {
                let history = history.ending_at(&status.sources);
                Ok((status, history))
            }
        }
    }
}

impl Drop for Replica {
    /// Stops at once; a group being applied completes on its blocking thread.
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Why a connection ended.
enum Ended {
    Stop,
    Resync(String),
    /// Retry after a pause; `streamed` says whether it got as far as streaming.
    Retry {
        why: String,
        streamed: bool,
    },
    /// The primary changed: connect to the new one at once.
    PrimaryChanged,
}

/// The replica's life: restore when needed, follow the primary, reconnect with backoff.
async fn drive(shared: Arc<Shared>, applier: SharedApplier, repo: Arc<Repository>) {
    let opts = shared.config.options.clone();
    let mut primary_rx = shared.primary.subscribe();
    let mut stop_rx = shared.stop.subscribe();
    let mut backoff = opts.reconnect_min;
    let mut resync_backoff = Duration::from_millis(500);
    let mut resync_reason: Option<String> = None;
    loop {
        if shared.stopping() {
            break;
        }
        let ready = applier.lock().unwrap().file.ready;
        if !ready || resync_reason.is_some() {
            let reason = resync_reason.clone().unwrap_or_else(|| {
                "the copy is empty or its last restore was interrupted".to_string()
            });
            shared.set_state(ReplicaState::Restoring {
                reason: reason.clone(),
            });
            match restore(&shared, &applier, &repo, &reason).await {
                Ok(()) => {
                    resync_reason = None;
                    resync_backoff = Duration::from_millis(500);
                }
                Err(e) => {
                    shared.error(format!("restoring from the vault failed (retried): {e}"));
                    resync_reason = Some(reason);
                    if pause(&mut stop_rx, resync_backoff).await {
                        break;
                    }
                    resync_backoff = (resync_backoff * 2).min(opts.resync_retry_max);
                }
            }
            continue;
        }
        let Some(addr) = *primary_rx.borrow_and_update() else {
            shared.set_state(ReplicaState::WaitingForPrimary);
            tokio::select! {
                _ = primary_rx.changed() => {}
                _ = super::until_true(&mut stop_rx) => break,
            }
            continue;
        };
        shared.set_state(ReplicaState::Connecting { primary: addr });
        shared.status.lock().unwrap().primary = Some(addr);
        match connection::follow(&shared, &applier, addr).await {
            Ended::Stop => break,
            Ended::PrimaryChanged => backoff = opts.reconnect_min,
            Ended::Resync(reason) => resync_reason = Some(reason),
            Ended::Retry { why, streamed } => {
                shared.error(&why);
                if streamed {
                    backoff = opts.reconnect_min;
                }
                let primary_changed = tokio::select! {
                    _ = tokio::time::sleep(backoff) => false,
                    _ = primary_rx.changed() => true,
                    _ = super::until_true(&mut stop_rx) => break,
                };
                // A new primary (a failover) starts the backoff over: the pause grown while
                // the old one was dead must not delay the first attempts at the new one,
                // which opens its stream a moment after it is elected.
                backoff = if primary_changed {
                    opts.reconnect_min
                } else {
                    (backoff * 2).min(opts.reconnect_max)
                };
            }
        }
    }
    // Stopping: the copy becomes plain database files the app can open.
    if let Err(e) = blocking(&applier, |a| a.checkpoint_all()).await {
        shared.error(format!("copying the logs back at stop failed: {e}"));
        return;
    }
    shared.set_state(ReplicaState::Stopped);
}

/// Sleeps, unless the replica stops first (then true).
async fn pause(stop_rx: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = super::until_true(stop_rx) => true,
    }
}

async fn restore(
    shared: &Shared,
    applier: &SharedApplier,
    repo: &Arc<Repository>,
    reason: &str,
) -> Result<(), StreamError> {
    let cfg = &shared.config;
    // What was applied before is no longer what the copy continues from.
    shared.history.lock().unwrap().clear();
    {
        let mut s = shared.status.lock().unwrap();
        s.resyncs += 1;
        s.last_resync_reason = Some(reason.to_string());
        s.ready = false;
    }
    // The copy's files are replaced: nothing of it may stay open here.
    // (On a blocking thread: a fold running in the background is waited for.)
    let (mut file, databases, dirs) = blocking(applier, |a| {
        a.close_copy();
        Ok((a.file.clone(), a.database_names().to_vec(), a.dir_names()))
    })
    .await?;
    let result = resync::resync(
        repo,
        &cfg.state_dir,
        &cfg.meta_dir,
        &mut file,
        &databases,
        &dirs,
        cfg.mariadb.as_ref(),
    )
    .await;
    let ready = file.ready;
    {
        let mut a = applier.lock().unwrap();
        a.file = file;
    }
    result?;
    if ready {
        blocking(applier, |a| a.open_copy()).await?;
    }
    let a = applier.lock().unwrap();
    let mut s = shared.status.lock().unwrap();
    s.ready = a.file.ready;
    s.applied = a.file.applied;
    s.sources = a.file.sources.clone();
    s.last_error = None;
    Ok(())
}
