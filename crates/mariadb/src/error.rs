//! The one error type of the crate. Every variant says what happened, where, and what to do;
//! none carries a password (invariant 6: secrets never appear in error messages).

use std::path::{Path, PathBuf};

use crate::gtid::Gtid;

/// Result of this crate's fallible functions.
pub type Result<T, E = MariaDbError> = std::result::Result<T, E>;

/// What went wrong with a MariaDB server, its capture, a backup or a restore.
#[derive(Debug, thiserror::Error)]
pub enum MariaDbError {
    /// A MariaDB program Lifeboat runs is not installed.
    #[error(
        "the MariaDB program `{program}` was not found (looked in {looked_in}); install the Debian 12 packages mariadb-server, mariadb-client and mariadb-backup (`scripts/install-test-deps` does), or set {env_var} to the directory holding it"
    )]
    MissingBinary {
        /// Program name, e.g. `mariadbd`.
        program: &'static str,
        /// Where it was looked for.
        looked_in: String,
        /// Environment variable that overrides the search.
        env_var: &'static str,
    },
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("create", "read", ...).
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A MariaDB program ran and failed.
    #[error("`{program}` failed ({status}) while {doing}: {stderr_tail}")]
    ProgramFailed {
        /// Program name.
        program: String,
        /// What it was asked to do, in words.
        doing: String,
        /// Exit status as text.
        status: String,
        /// The last lines it wrote to stderr (never holds a password: none is passed on a
        /// command line).
        stderr_tail: String,
    },
    /// A directory given as a MariaDB data directory is not one.
    #[error(
        "{path} is not a MariaDB data directory ({why}); point Lifeboat at the directory holding `mysql/` and `ibdata1`, or initialise a new one with Server::initialize"
    )]
    NotADataDir {
        /// The directory.
        path: PathBuf,
        /// What is missing.
        why: String,
    },
    /// A data directory to initialise already holds something.
    #[error(
        "{path} is not empty; Lifeboat initialises MariaDB only into an empty directory (move its content away, or use it as an existing data directory)"
    )]
    DataDirNotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// A path is too long for a unix socket.
    #[error(
        "the socket path {path} is {len} bytes, longer than the {max} a unix socket allows; put the site (or its run dir) at a shorter path"
    )]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A name (database, user) that Lifeboat would put into SQL is not a plain identifier.
    #[error(
        "`{name}` is not accepted as a MariaDB {what} name; use letters, digits and `_` only (at most 64 characters)"
    )]
    BadName {
        /// The name.
        name: String,
        /// "database" or "user".
        what: &'static str,
    },
    /// The server did not become ready in time.
    #[error(
        "MariaDB on {socket} was not ready after {waited_s} s ({last_error}); look at its error log {error_log}"
    )]
    NotReady {
        /// Its socket.
        socket: PathBuf,
        /// How long we waited.
        waited_s: u64,
        /// The last connection error.
        last_error: String,
        /// Where the server writes its errors.
        error_log: PathBuf,
    },
    /// The server did not stop after SIGTERM in time and was killed.
    #[error(
        "mariadbd on {socket} did not stop within {waited_s} s of SIGTERM and was killed; InnoDB recovers at the next start; look at its error log {error_log} for why the shutdown was slow"
    )]
    DidNotStop {
        /// Its socket.
        socket: PathBuf,
        /// How long we waited.
        waited_s: u64,
        /// The error log.
        error_log: PathBuf,
    },
    /// The generated config is missing or lacks what Lifeboat put there.
    #[error("the MariaDB config {path} {problem}; write it again with ServerSpec::write_config")]
    BadConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The server process exited while it was expected to run.
    #[error(
        "mariadbd exited ({status}) before it was ready; its error log {error_log} says: {log_tail}"
    )]
    ServerExited {
        /// Exit status as text.
        status: String,
        /// The error log.
        error_log: PathBuf,
        /// Its last lines.
        log_tail: String,
    },
    /// A query failed.
    #[error("MariaDB at {socket} refused `{doing}`: {source}")]
    Query {
        /// The server's socket.
        socket: PathBuf,
        /// What was being done, in words (never the SQL with a password in it).
        doing: String,
        /// The driver's error.
        #[source]
        source: mysql::Error,
    },
    /// A connection to a server failed.
    #[error(
        "cannot connect to MariaDB at {target}: {source}; check that it runs and that the credentials are right"
    )]
    Connect {
        /// Socket path or host:port.
        target: String,
        /// The driver's error.
        #[source]
        source: mysql::Error,
    },
    /// The binary log stream was interrupted (the server stopped, the connection broke).
    /// Capture reconnects by itself; this is reported for the status.
    #[error(
        "the binlog stream from {socket} broke ({why}); capture resumes from GTID position {resume_from} when the server is back"
    )]
    StreamBroken {
        /// The server's socket.
        socket: PathBuf,
        /// What happened.
        why: String,
        /// The GTID position capture resumes from.
        resume_from: String,
    },
    /// The server no longer has the binary logs capture needs to continue.
    #[error(
        "MariaDB no longer holds the binary logs after GTID position {position} (they were purged or the server was replaced): {server_says}; take a new base backup and continue capture from it (BinlogCapture::restart_from_base)"
    )]
    BinlogPurged {
        /// The position capture asked for.
        position: String,
        /// The server's message.
        server_says: String,
    },
    /// A transaction's GTID does not follow the previous one of its domain: something is missing.
    #[error(
        "GTID gap in domain {domain}: after {after} came {got}; the transactions in between are not in the capture. Take a new base backup (restores before it stop at {after})"
    )]
    GtidGap {
        /// The replication domain.
        domain: u32,
        /// The last GTID seen in that domain (`None` at the very start of a domain).
        after: String,
        /// The GTID that came instead of the next one.
        got: Gtid,
    },
    /// The server's GTID sequence went back behind what capture has: its binlog was reset
    /// (e.g. `RESET MASTER`) or the server was replaced.
    #[error(
        "the GTID sequence of domain {domain} went back: capture has {after}, and the server now {now} (its binary log was reset, e.g. by RESET MASTER, or the server was replaced); the transactions since the reset are not in the capture. Take a new base backup and continue capture from it"
    )]
    GtidWentBack {
        /// The replication domain.
        domain: u32,
        /// The last GTID capture has in that domain.
        after: String,
        /// What the server does now (`sends 0-1-1`, `is at binlog position 0-1-3`).
        now: String,
    },
    /// The binary log (a stream, a file or a stored record) is damaged.
    #[error("the binary log {what} is damaged ({why}); {advice}")]
    CorruptBinlog {
        /// Which log or record.
        what: String,
        /// What is wrong.
        why: String,
        /// What to do.
        advice: &'static str,
    },
    /// A stored batch could not be decoded.
    #[error("MariaDB capture batch is unreadable ({0}); read it from another destination")]
    BadBatch(String),
    /// A batch of a newer format.
    #[error(
        "MariaDB capture batch format version {0} is not supported; upgrade lifeboat to read it"
    )]
    UnsupportedBatchVersion(u8),
    /// The capture's position file is unreadable.
    #[error(
        "the MariaDB capture position file {path} is unreadable ({problem}); move it away to capture again from a new base backup"
    )]
    BadPositionFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A base backup directory lacks what a restore needs.
    #[error("{path} is not a usable Lifeboat MariaDB base backup ({why}); take a new base backup")]
    BadBaseBackup {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A restore cannot reach the asked-for point.
    #[error("cannot restore to {target}: {why}")]
    CannotRestore {
        /// The target, in words.
        target: String,
        /// Why, with what to do.
        why: String,
    },
    /// The restored database did not pass its check.
    #[error(
        "the restored database failed its check: table {table}: {message}; the restore is kept aside at {path} for inspection"
    )]
    CheckFailed {
        /// `db.table`.
        table: String,
        /// What CHECK TABLE said.
        message: String,
        /// Where the restored data dir is.
        path: PathBuf,
    },
    /// Capture's background reader stopped unexpectedly.
    #[error(
        "the MariaDB capture reader stopped unexpectedly ({0}); this is a bug in lifeboat, please report it; reopen the capture to continue"
    )]
    ReaderGone(String),
    /// The binlog stream did not deliver what the server had committed in time.
    #[error(
        "the binlog stream did not deliver the server's position {target} within {waited_ms} ms (capture has {have}); the server or this machine is overloaded, or the stream reconnects: it is retried on the next write"
    )]
    CaptureBehind {
        /// The server's position.
        target: String,
        /// Capture's.
        have: String,
        /// How long capture waited.
        waited_ms: u128,
    },
}

/// Maps an I/O error with what was done and where.
pub(crate) fn io_err(
    path: &Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> MariaDbError {
    let path = path.to_path_buf();
    move |source| MariaDbError::Io {
        action,
        path,
        source,
    }
}

impl MariaDbError {
    /// Whether capture cannot continue from where it is and must start again from a new
    /// base backup ([`crate::BinlogCapture::restart_from_base`]): a GTID gap, binlogs the
    /// server no longer has, or a damaged binlog.
    pub fn needs_new_base(&self) -> bool {
        matches!(
            self,
            MariaDbError::GtidGap { .. }
                | MariaDbError::GtidWentBack { .. }
                | MariaDbError::BinlogPurged { .. }
                | MariaDbError::CorruptBinlog { .. }
        )
    }

    /// The same error again, for a problem reported on every call until it is dealt with
    /// (variants holding an OS or driver error are repeated by their text).
    pub(crate) fn repeat(&self) -> MariaDbError {
        match self {
            MariaDbError::GtidGap { domain, after, got } => MariaDbError::GtidGap {
                domain: *domain,
                after: after.clone(),
                got: *got,
            },
            MariaDbError::GtidWentBack { domain, after, now } => MariaDbError::GtidWentBack {
                domain: *domain,
                after: after.clone(),
                now: now.clone(),
            },
            MariaDbError::BinlogPurged {
                position,
                server_says,
            } => MariaDbError::BinlogPurged {
                position: position.clone(),
                server_says: server_says.clone(),
            },
            MariaDbError::CorruptBinlog { what, why, advice } => MariaDbError::CorruptBinlog {
                what: what.clone(),
                why: why.clone(),
                advice,
            },
            MariaDbError::ReaderGone(why) => MariaDbError::ReaderGone(why.clone()),
            other => MariaDbError::ReaderGone(other.to_string()),
        }
    }
}
