//! lifeboat-capture: turns a live site's state into timeline records.
//!
//! - [`wal`] reads SQLite's write-ahead log format;
//! - [`sqlite`] captures every committed transaction of a database in WAL mode, with
//!   base images when needed, and checkpoints the log itself;
//! - [`replay`] rebuilds a database file as of any captured seq or time;
//! - [`files`] records changes to files under data dirs;
//! - [`record`] defines the records and their versioned segment encoding
//!   (`docs/capture-format.md`).
//!
//! The crate never prints and never reads the terminal: the worker that drives it reports
//! status and events.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod base_image;
mod durable;
pub mod error;
pub mod files;
pub mod position;
pub mod record;
pub mod replay;
pub mod sqlite;
pub mod wal;

pub use error::CaptureError;
pub use record::{
    BaseImageRecord, CommitRecord, FileChange, FileChangeKind, Record, SnapshotReason,
    decode_segment, encode_segment,
};
pub use sqlite::{
    BaseImage, CaptureEvent, CaptureOptions, CaptureStatus, CheckpointReport, SqliteCapture,
};
