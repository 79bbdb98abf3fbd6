//! What the timeline worker takes (sources, options) and reports (status, events).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The parts of a site the timeline captures. Paths in `databases`, `data_dirs` and
/// `manifest` are relative to `site_dir`; they name the sources in the timeline.
#[derive(Debug, Clone)]
pub struct SiteSources {
    /// The site directory.
    pub site_dir: PathBuf,
    /// SQLite databases (in WAL mode).
    pub databases: Vec<PathBuf>,
    /// Directories of files (uploads and the like).
    pub data_dirs: Vec<PathBuf>,
    /// The manifest (`lifeboat.toml`), stored with every checkpoint.
    pub manifest: PathBuf,
    /// A MariaDB database Lifeboat runs for the site: its data dir relative to `site_dir`
    /// (the source's name) and how to reach its server.
    pub mariadb: Option<(PathBuf, lifeboat_mariadb::ServerSpec)>,
    /// Where capture keeps its positions and manifests (e.g. `.lifeboat/timeline`);
    /// absolute, or relative to `site_dir`. Must not be inside a data dir.
    pub state_dir: PathBuf,
}

/// How often the worker does what.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// How often captured changes are shipped as one segment (`segment_interval`).
    pub segment_interval: Duration,
    /// How often capture looks for new commits and file changes: a commit's recorded time
    /// is at most this much after it was made.
    pub poll_interval: Duration,
    /// A checkpoint is taken at start and after this long...
    pub checkpoint_interval: Duration,
    /// ...or after this many segments, whichever comes first.
    pub checkpoint_segments: u64,
    /// How often data dirs are walked in full, whatever change notifications said.
    pub rescan_interval: Duration,
    /// How often capture checkpoints each database's WAL: a PASSIVE copy back into the
    /// database file, never taking the write lock, after which the app's next write starts
    /// the log over if the app paused meanwhile. The commits made since the last shipment
    /// cost an extra segment or two each time.
    pub wal_checkpoint_interval: Duration,
    /// How often objects spooled for a destination that was down are sent to it again.
    pub catch_up_interval: Duration,
    /// Changed files up to this size travel inline in the segment instead of in a content
    /// snapshot of their own (which costs several vault objects); 0 keeps only empty files inline.
    pub inline_max: u64,
    /// How often the worker compacts old segments into bundles ([`crate::compact`]);
    /// `Duration::ZERO` turns it off.
    pub compact_interval: Duration,
    /// Segments whose window ended longer ago than this are compacted.
    pub compact_older_than: Duration,
    /// Stream every batch capture reads to standbys ([`crate::ChangeFeed`]), with this
    /// primary's term; `None` (the default) on a site of one node.
    pub feed: Option<crate::replication::FeedOptions>,
    /// Take the first checkpoint in the background loop instead of before
    /// [`crate::TimelineWorker::start`] returns: a promoted standby opens its stream (and
    /// answers barriers) at once instead of after storing a base image of the whole state.
    pub first_checkpoint_later: bool,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            segment_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(50),
            checkpoint_interval: Duration::from_secs(10 * 60),
            checkpoint_segments: 600,
            rescan_interval: Duration::from_secs(60),
            catch_up_interval: Duration::from_secs(10),
            wal_checkpoint_interval: Duration::from_secs(5),
            inline_max: 16 * 1024,
            compact_interval: Duration::from_secs(10 * 60),
            compact_older_than: Duration::from_secs(60 * 60),
            feed: None,
            first_checkpoint_later: false,
        }
    }
}

/// A checkpoint: a full consistent cut of the site stored as one vault snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// The vault snapshot id (hex).
    pub snapshot: String,
    /// The timeline segment it is consistent with (it holds everything up to it).
    pub seq: u64,
    /// The moment it shows.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
}

/// Where the worker stands, for `lifeboat status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimelineStatus {
    /// Last segment durably stored.
    pub last_segment_seq: Option<u64>,
    /// When it was stored.
    pub last_shipped_at: Option<OffsetDateTime>,
    /// Age of the oldest captured change not yet durable (zero when none waits).
    pub lag: Duration,
    /// When the oldest captured change not yet durable was seen.
    pub oldest_unshipped: Option<OffsetDateTime>,
    /// Segment bytes stored since start (contents not counted).
    pub bytes_shipped: u64,
    /// Segments stored since start.
    pub segments_shipped: u64,
    /// The last checkpoint taken by this worker.
    pub last_checkpoint: Option<CheckpointInfo>,
    /// What the worker's last compaction did (failures are [`TimelineEvent::Error`]s).
    pub last_compaction: Option<crate::compact::CompactReport>,
    /// The last error, cleared by the next successful shipment.
    pub last_error: Option<String>,
    /// Capture of the site's MariaDB database, when it has one.
    pub mariadb: Option<MariaDbCaptureStatus>,
    /// The most recent events other than shipped segments (at most
    /// [`RECENT_EVENTS`]), oldest first, including those from before anyone subscribed.
    pub recent_events: Vec<(OffsetDateTime, TimelineEvent)>,
}

/// Where capture of a MariaDB database stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MariaDbCaptureStatus {
    /// Whether capture holds a replication stream from the server now.
    pub connected: bool,
    /// How often it had to reconnect (the server restarted or was killed).
    pub reconnects: u64,
    /// The GTID position durable in the vault.
    pub confirmed: String,
    /// The last problem with the stream, if any.
    pub last_problem: Option<String>,
    /// The oldest binlog file the server keeps, once a checkpoint purged the older ones.
    pub oldest_binlog: Option<String>,
    /// Binlog files purged since the worker started (covered by a durable base).
    pub binlog_files_purged: u64,
    /// Why the last purge of covered binlog files failed, if it did (the server keeps
    /// them; the next checkpoint tries again).
    pub binlog_purge_error: Option<String>,
}

/// How many events [`TimelineStatus::recent_events`] keeps.
pub const RECENT_EVENTS: usize = 64;

/// Something the owner should know happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimelineEvent {
    /// Capture of a database could not prove it missed nothing, and took a fresh image.
    ContinuityLost {
        /// The database (relative to the site dir).
        database: String,
        /// Why.
        why: String,
    },
    /// A checkpoint was taken.
    CheckpointTaken(CheckpointInfo),
    /// A segment was stored.
    SegmentShipped {
        /// Its seq.
        seq: u64,
    },
    /// MariaDB capture cannot continue from where it was (a GTID gap, binlogs purged by
    /// hand, `RESET MASTER`, a damaged binlog): transactions after `last_captured` are not
    /// in the timeline. The worker takes a new base at once and continues from it
    /// ([`TimelineEvent::MariaDbCaptureResumed`]).
    MariaDbCaptureGap {
        /// The database (its data dir, relative to the site dir).
        database: String,
        /// The last GTID position captured before the problem.
        last_captured: String,
        /// What capture found.
        why: String,
    },
    /// MariaDB capture continues from a new base after a [`TimelineEvent::MariaDbCaptureGap`]:
    /// no rewind to a moment from `unrestorable_from` to `unrestorable_until` is possible
    /// (the transactions of that span are not in the timeline).
    MariaDbCaptureResumed {
        /// The database.
        database: String,
        /// The last GTID position captured before the gap: the transactions after it up to
        /// `base_gtid` are in the new base but were not captured one by one.
        last_captured: String,
        /// The GTID position of the new base, where capture continues.
        base_gtid: String,
        /// The last moment capture had received everything up to.
        unrestorable_from: OffsetDateTime,
        /// The new base's checkpoint: rewinds from here on are exact again.
        unrestorable_until: OffsetDateTime,
    },
    /// Something failed; the worker retries.
    Error {
        /// What, and what to do.
        message: String,
    },
}
