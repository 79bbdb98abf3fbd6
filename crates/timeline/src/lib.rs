//! lifeboat-timeline: the timeline of a live site. [`TimelineWorker`] captures every
//! committed SQLite transaction and every data-dir file change continuously and ships them
//! into the vault as sequence-numbered segments, with periodic checkpoints (full cuts);
//! [`restore_site`] rebuilds the site as of any moment; [`list_restore_points`] says which
//! moments exist; [`store_fork`] keeps a node's diverged state in the vault and
//! [`restore_fork`] brings it back; [`compact`] merges old segments into bundles and [`apply_retention`]
//! drops what the vault's keep rules no longer keep. Layout: `docs/timeline-format.md`.
//!
//! Capture never takes a database's write lock (`lifeboat-capture` holds only read
//! transactions and runs PASSIVE checkpoints), so the worker never makes one of the app's
//! transactions fail. A declared data dir that does not exist is reported as an error event
//! naming its path and captured as empty until it is created; it never stops the capture of
//! the databases.
//!
//! On a site of several nodes, [`TimelineWorker::feed`] streams every batch capture reads
//! to warm standbys through a [`StreamServer`], and each standby's [`Replica`] applies it to
//! its own copy (module [`replication`], format `docs/stream-format.md`).
//!
//! The crate never prints: the worker reports through [`TimelineStatus`] and
//! [`TimelineEvent`]s, and every error says what to do next.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod checkpoint;
mod compact;
mod error;
mod forks;
mod lock;
mod mariadb_upkeep;
pub mod replication;
mod restore;
mod segment;
mod shipper;
mod store;
mod stream;
mod types;
mod worker;

pub use checkpoint::{CHECKPOINT_TAG, GAP_TAG_PREFIX, SEQ_TAG_PREFIX};
pub use compact::{CompactOptions, CompactReport, RetentionReport, apply_retention, compact};
pub use error::{Result, TimelineError};
pub use forks::{
    FORK_NAME_TAG_PREFIX, FORK_TAG, ForkDescription, ForkInfo, ForkRestoreReport, list_forks,
    restore_fork, store_fork,
};
pub use lifeboat_vault::KeepPolicy;
pub use replication::{
    AckedBy, ChangeFeed, ConfirmPolicy, FailsafeRequest, FeedOptions, FeedStatus, Position,
    Replica, ReplicaConfig, ReplicaHistory, ReplicaMariaDb, ReplicaOptions, ReplicaState,
    ReplicaStatus, ServerOptions, SourcePosition, StandbyInfo, StandbyStatus, StreamError,
    StreamKey, StreamServer, StreamServerConfig, StreamServerStatus, apply_mariadb_journal,
    seed_capture_state,
};
pub use restore::{
    CaptureGapSpan, MariaDbRestoreOptions, RestorePoints, RestoreReport, RestoreTarget,
    RestoredDatabase, RestoredDir, RestoredMariaDb, SegmentRange, list_restore_points,
    restore_site, restore_site_with,
};
pub use segment::{Content, ContentMap, STREAM, TimelineSegment};
pub use store::CONTENT_TAG;
pub use stream::BUNDLE_STREAM;
pub use types::{
    CheckpointInfo, MariaDbCaptureStatus, RECENT_EVENTS, SiteSources, TimelineEvent,
    TimelineStatus, WorkerOptions,
};
pub use worker::TimelineWorker;
