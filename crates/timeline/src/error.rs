//! The one error type of the timeline: every message says what failed and what to do next.

use std::path::PathBuf;

use time::OffsetDateTime;

/// Errors from the timeline worker, restores and listings.
#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    /// The vault refused or failed an operation.
    #[error("vault: {0}")]
    Vault(#[from] lifeboat_vault::Error),
    /// Capturing a database or a data dir failed.
    #[error("capturing {what}: {error}")]
    Capture {
        /// The database or data dir, relative to the site dir.
        what: String,
        /// Capture's error.
        #[source]
        error: Box<lifeboat_capture::CaptureError>,
    },
    /// Capturing the MariaDB database failed.
    #[error("capturing the MariaDB database {what}: {error}")]
    MariaDb {
        /// Its data dir, relative to the site dir.
        what: String,
        /// What failed.
        #[source]
        error: Box<lifeboat_mariadb::MariaDbError>,
    },
    /// A file-system operation failed.
    #[error("could not {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A stored timeline segment or checkpoint could not be read.
    #[error(
        "timeline data {what} is damaged or of an unknown version: {why}; run `lifeboat vault verify` and restore to an earlier time"
    )]
    Damaged {
        /// Which object.
        what: String,
        /// What is wrong with it.
        why: String,
    },
    /// A segment between the checkpoint and the target is missing.
    #[error(
        "timeline segment {seq} is missing from the vault, so nothing after {after} can be restored exactly; restore to a time before it"
    )]
    MissingSegment {
        /// The missing sequence number.
        seq: u64,
        /// The last moment restorable before it.
        after: OffsetDateTime,
    },
    /// Content named by the timeline is not in the vault.
    #[error("content {hash} ({what}) is not in the vault; run `lifeboat vault verify`")]
    MissingContent {
        /// blake3 of the content.
        hash: String,
        /// What it is the content of.
        what: String,
    },
    /// The target lies in a span whose MariaDB transactions capture could not get (a gap, or
    /// binlogs the server no longer had).
    #[error(
        "{target} lies in a span the timeline does not hold: MariaDB capture lost transactions from {from} until a new base was stored at {until}; choose a time before {from} or at or after {until} (see `lifeboat timeline`)"
    )]
    InCaptureGap {
        /// The requested time.
        target: OffsetDateTime,
        /// Start of the span.
        from: OffsetDateTime,
        /// The checkpoint that ends it.
        until: OffsetDateTime,
    },
    /// The vault holds no checkpoint of this site yet.
    #[error(
        "the vault holds no timeline checkpoint yet; start the site with capture (`lifeboat up`) and try again once it has run"
    )]
    NothingCaptured,
    /// The target is before the first capture.
    #[error(
        "{target} is before the first capture of this site ({first}); choose a time at or after it (see `lifeboat timeline`)"
    )]
    BeforeFirstCapture {
        /// The requested time.
        target: OffsetDateTime,
        /// The earliest restorable moment.
        first: OffsetDateTime,
    },
    /// The target is in the future.
    #[error("{target} is in the future (it is now {now}); choose a past time or `latest`")]
    InFuture {
        /// The requested time.
        target: OffsetDateTime,
        /// Now.
        now: OffsetDateTime,
    },
    /// The restore destination already holds something.
    #[error("{0} is not empty; restore into a new or empty directory so nothing is overwritten")]
    NotEmpty(PathBuf),
    /// The restored database failed its check.
    #[error("the restored database {path} failed its integrity check: {report}")]
    IntegrityCheckFailed {
        /// The restored file.
        path: PathBuf,
        /// What SQLite reported.
        report: String,
    },
    /// The configuration cannot work.
    #[error("invalid timeline configuration: {0}")]
    Invalid(String),
    /// The worker was halted (this node was fenced): it writes nothing more to the vault.
    #[error(
        "capture was halted because this node is no longer the primary; nothing more is written to the vault from here"
    )]
    Halted,
    /// The worker has stopped.
    #[error("the timeline worker has stopped; start it again")]
    Stopped,
    /// A barrier could not make capture read the latest commits.
    #[error(
        "capture could not read the latest changes ({message}); what was committed is not confirmed streamed, so hold or fail the response"
    )]
    Barrier {
        /// What failed.
        message: String,
    },
}

/// Result with [`TimelineError`].
pub type Result<T, E = TimelineError> = std::result::Result<T, E>;

pub(crate) fn io_err(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> TimelineError {
    let path = path.into();
    move |source| TimelineError::Io {
        action,
        path,
        source,
    }
}
