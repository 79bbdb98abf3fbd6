//! lifeboat-capture: turns a live site's state into timeline records.
//!
//! - [`wal`] reads SQLite's write-ahead log format;
//! - [`sqlite`] captures every committed transaction of a database in WAL mode, with
//!   base images when needed, and checkpoints the log itself, without ever taking the
//!   database's write lock (so no transaction of the app fails because of it);
//! - [`journal_mode`] reads a database's journal mode and switches it to WAL mode;
//! - [`replay`] rebuilds a database file as of any captured seq or time;
//! - [`files`] records changes to files under data dirs;
//! - [`record`] defines the records and their versioned segment encoding
//!   (`docs/capture-format.md`).
//!
//! The crate never prints and never reads the terminal: the worker that drives it reports
//! status and events.
//!
//! # Driving SQLite capture (the capture worker's loop)
//!
//! 1. [`SqliteCapture::open`] once per database (it refuses a database not in WAL mode).
//! 2. Every few milliseconds, [`SqliteCapture::poll`]: commits (and, when needed, a base
//!    image whose reason says why) in seq order. `commit_time` is when capture saw the
//!    commit, so poll often: restore-by-time resolution is the poll interval.
//! 3. Make the records durable in the vault (segments: [`encode_segment`]; base image
//!    files by hash), then [`SqliteCapture::confirm_durable`] with the last seq.
//! 4. Every so often (say every few seconds), [`SqliteCapture::checkpoint`] with a callback
//!    that makes the last few records durable the same way: the WAL is copied back and
//!    starts over at the app's next write once the app pauses.
//! 5. Periodically, [`SqliteCapture::take_base_image`] so restores do not replay too much.
//! 6. On [`CaptureError::CorruptWal`], record the event and call [`SqliteCapture::resync`].
//!
//! Readers of the vault resolve what a crash left behind with
//! [`record::resolve_history`], then rebuild with [`replay::rebuild`].
//!
//! The process running capture must not open and close the live database file outside
//! SQLite: closing any descriptor of it drops SQLite's POSIX locks for the whole process
//! (see `docs/capture-format.md`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod base_image;
mod durable;
pub mod error;
pub mod files;
pub mod journal_mode;
pub mod position;
pub mod record;
pub mod replay;
pub mod sqlite;
pub mod wal;

pub use error::CaptureError;
pub use journal_mode::{enable_wal, journal_mode};
pub use record::{
    BaseImageRecord, CommitRecord, FileChange, FileChangeKind, Record, SnapshotReason,
    decode_segment, encode_segment,
};
pub use sqlite::{
    BaseImage, CaptureEvent, CaptureOptions, CaptureStatus, CheckpointReport, SqliteCapture,
};

// Both captures run on a worker thread of their own (e.g. `spawn_blocking`).
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<SqliteCapture>();
    assert_send::<files::FileCapture>();
};
