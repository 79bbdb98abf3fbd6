//! The one error type of SQLite capture and replay. Every message says what happened, to
//! which file, and what the user (or the worker driving capture) should do next.

use std::path::PathBuf;

use crate::wal::WalHeaderError;

/// Errors from [`crate::sqlite::SqliteCapture`] and [`crate::replay`].
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The database is not in WAL mode, so its commits cannot be captured.
    #[error(
        "database {db} uses journal mode \"{mode}\" but capture needs WAL mode; switch it once with \
         `sqlite3 {db} 'PRAGMA journal_mode=WAL;'` (the setting is stored in the file) and start capture again"
    )]
    NotWalMode {
        /// The database file.
        db: PathBuf,
        /// The journal mode it reported.
        mode: String,
    },
    /// The database could not be switched to WAL mode because something holds it open in
    /// a transaction.
    #[error(
        "could not switch {db} to WAL mode: another connection keeps it busy ({source}); stop \
         the app (or whatever has the database open), then switch again (`lifeboat up --enable-wal`, \
         or `sqlite3 {db} 'PRAGMA journal_mode=WAL;'`)"
    )]
    WalSwitchBusy {
        /// The database file.
        db: PathBuf,
        /// SQLite's last answer.
        #[source]
        source: rusqlite::Error,
    },
    /// SQLite kept the database in another journal mode when asked for WAL mode.
    #[error(
        "SQLite kept {db} in journal mode \"{mode}\" when asked for WAL mode (an in-memory or \
         read-only database, or a file system without shared memory); move the database to a \
         local disk where the site can write, then switch again"
    )]
    WalRefused {
        /// The database file.
        db: PathBuf,
        /// The journal mode it stayed in.
        mode: String,
    },
    /// The write-ahead log restarted again and again while capture read it.
    #[error(
        "the write-ahead log {wal} restarted repeatedly while capture read it; capture retries \
         (if this persists, report it: SQLite should not allow it while capture reads)"
    )]
    LogKeptRestarting {
        /// The `-wal` file.
        wal: PathBuf,
    },
    /// A SQLite call failed.
    #[error("{action} for {db}: {source}")]
    Sqlite {
        /// The database file.
        db: PathBuf,
        /// What capture was doing, with the advice that applies.
        action: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A file operation failed.
    #[error("could not {action} {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What capture was doing.
        action: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The WAL header cannot be trusted.
    #[error(
        "the write-ahead log {wal} has an unusable header ({problem}); run `PRAGMA integrity_check` \
         on the database, then resync capture to take a fresh base image"
    )]
    BadWalHeader {
        /// The `-wal` file.
        wal: PathBuf,
        /// What is wrong with it.
        problem: WalHeaderError,
    },
    /// Committed data in the WAL is damaged.
    #[error(
        "committed data in the write-ahead log {wal} is damaged at byte {offset} (page {pgno}); \
         run `PRAGMA integrity_check` on the database, then resync capture: the damage is recorded \
         and every moment before it stays restorable"
    )]
    CorruptWal {
        /// The `-wal` file.
        wal: PathBuf,
        /// Byte offset of the damaged frame.
        offset: u64,
        /// Page number the frame claims.
        pgno: u32,
    },
    /// The persisted capture position cannot be read.
    #[error(
        "capture position file {path} is unreadable ({problem}); move it aside to restart capture \
         with a fresh base image"
    )]
    BadPositionFile {
        /// The position file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// `confirm_durable` named a sequence number capture never handed out.
    #[error("cannot confirm seq {seq} durable: capture has only produced up to seq {last}")]
    UnknownSeq {
        /// The seq asked for.
        seq: u64,
        /// The last seq produced.
        last: u64,
    },
    /// The caller's shipping callback failed during a checkpoint; nothing was checkpointed.
    #[error(
        "shipping captured records before the checkpoint failed ({0}); the checkpoint was skipped and will be retried"
    )]
    ShipFailed(String),
    /// A rebuild was asked for a point the records cannot reach.
    #[error("cannot rebuild {target}: {problem}")]
    Unreachable {
        /// The target asked for.
        target: String,
        /// Why it cannot be reached and what to pick instead.
        problem: String,
    },
    /// A rebuilt database failed `PRAGMA integrity_check`; it was not put in place.
    #[error(
        "the rebuilt database failed its integrity check ({report}); it was not put in place at {path}: \
         pick an earlier restore point"
    )]
    IntegrityCheckFailed {
        /// Where it would have gone.
        path: PathBuf,
        /// The first lines SQLite reported.
        report: String,
    },
}

/// Shorthand used across the crate.
pub type Result<T, E = CaptureError> = std::result::Result<T, E>;

pub(crate) fn io_err(
    path: impl Into<PathBuf>,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> CaptureError {
    let path = path.into();
    move |source| CaptureError::Io {
        path,
        action,
        source,
    }
}

pub(crate) fn sql_err(
    db: impl Into<PathBuf>,
    action: &'static str,
) -> impl FnOnce(rusqlite::Error) -> CaptureError {
    let db = db.into();
    move |source| CaptureError::Sqlite { db, action, source }
}
