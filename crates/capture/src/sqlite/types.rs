//! The values SQLite capture hands out and takes: options, events, reports, status.

use std::path::PathBuf;
use std::time::Duration;

use crate::record::{BaseImageRecord, CommitRecord};

/// Tuning for [`SqliteCapture`](super::SqliteCapture).
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// How long to keep trying to begin a read transaction that SQLite answers busy (while
    /// another connection recovers the WAL index after a crash) before reporting the
    /// database busy. Capture never waits for the write lock: it never takes it.
    pub busy_timeout: Duration,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            busy_timeout: Duration::from_secs(30),
        }
    }
}

/// A full database image written by capture, waiting to be shipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImage {
    /// What goes into the timeline.
    pub record: BaseImageRecord,
    /// The image file (a valid SQLite database file), fsynced. The caller owns it: ship
    /// it, then delete it.
    pub path: PathBuf,
}

/// What [`SqliteCapture::poll`](super::SqliteCapture::poll) hands out, in sequence order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureEvent {
    /// A committed transaction.
    Commit(CommitRecord),
    /// A fresh base image (first capture, requested, or continuity lost: see its reason).
    BaseImage(BaseImage),
}

impl CaptureEvent {
    /// The event's sequence number.
    pub fn seq(&self) -> u64 {
        match self {
            CaptureEvent::Commit(c) => c.seq,
            CaptureEvent::BaseImage(b) => b.record.seq,
        }
    }
}

/// What a checkpoint did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointReport {
    /// Events handed to the shipping callback (and then confirmed durable).
    pub shipped: usize,
    /// Frames in the WAL when the checkpoint ran.
    pub wal_frames: i64,
    /// Frames copied back into the database file; equal to `wal_frames` when complete.
    pub checkpointed_frames: i64,
    /// `false` when some frames stayed in the log: committed after capture's pin began
    /// (the app kept writing) or still read by the app's own readers; the next checkpoint
    /// retries.
    pub complete: bool,
    /// Set when the checkpoint did not run, with the reason.
    pub deferred: Option<String>,
}

/// Where capture stands, for `lifeboat status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureStatus {
    /// Last sequence number handed out.
    pub last_seq: u64,
    /// Last sequence number confirmed durable.
    pub durable_seq: u64,
    /// Byte offset captured up to in the current WAL generation (0 while it is empty).
    pub wal_offset: u64,
    /// Records handed out but not yet confirmed durable.
    pub unconfirmed: u64,
    /// When the oldest of those was seen: the durability lag is now minus this.
    pub oldest_unconfirmed_at: Option<time::OffsetDateTime>,
}
