//! The one error type of lifeboat-control. Every message says what happened and what to do.

use std::path::PathBuf;

/// Something the daemon or the local API client could not do.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The manifest is missing.
    #[error(
        "no manifest at {path}; create a lifeboat.toml next to the site (see examples/guestbook/lifeboat.toml)"
    )]
    NoManifest { path: PathBuf },

    /// The manifest could not be read.
    #[error("could not read {path}: {cause}; check the file exists and is readable")]
    ReadManifest {
        path: PathBuf,
        cause: std::io::Error,
    },

    /// The manifest (or a check of it against this machine) is wrong; nothing was started.
    /// (Not a `source`: the message already holds every problem, and `{:#}` would repeat it.)
    #[error("{0}\nnothing was started")]
    Manifest(lifeboat_core::ManifestError),

    /// Another `lifeboat up` already runs this site.
    #[error(
        "lifeboat is already running for the site in {dir} (its state store is locked); use `lifeboat status -C {dir}` or stop it with `lifeboat down -C {dir}`"
    )]
    AlreadyRunning { dir: PathBuf },

    /// No daemon answers on the site's control socket.
    #[error(
        "no lifeboat is running for this site (no .lifeboat/control.sock in {dir}); start it with `lifeboat up {dir}`"
    )]
    NotRunning { dir: PathBuf },

    /// The site's Lifeboat files belong to another user.
    #[error(
        "permission denied: the site in {dir} is run by another user (its .lifeboat/ is private to them); run the command as that user, or as root"
    )]
    PermissionDenied { dir: PathBuf },

    /// The site's state store failed.
    #[error(
        "the state store {path} failed: {message}; if the disk is full or read-only, fix that and retry"
    )]
    Store { path: PathBuf, message: String },

    /// A file or directory of the site could not be used. (The cause is in the message, not
    /// a `source`, so printing the error chain does not say it twice.)
    #[error("could not {what} {path}: {cause}{}", io_advice(cause))]
    Io {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },

    /// The front door could not start.
    #[error("the front door could not start: {0}")]
    Proxy(String),

    /// The supervisor could not start or clean up.
    #[error("the supervisor failed: {0}")]
    Supervisor(String),

    /// The daemon refused a command (unknown process, bad argument); nothing changed.
    #[error("{0}")]
    Refused(String),

    /// The local API did not answer as expected.
    #[error(
        "the lifeboat daemon of {dir} did not answer properly ({message}); check it is still running with `lifeboat status`"
    )]
    Api { dir: PathBuf, message: String },

    /// The site's vault (key, repository, destinations) could not be used.
    #[error("{0}")]
    Vault(String),

    /// A rewind (or its undo) stopped before going live; the live site is unchanged.
    #[error("{0}")]
    Rewind(String),

    /// The site's MariaDB server could not be prepared, started or used.
    #[error("the site's MariaDB database: {0}")]
    MariaDb(#[from] lifeboat_mariadb::MariaDbError),

    /// An instance has no log file (yet).
    #[error("no logs for instance {instance} in {dir}; `lifeboat status` lists the instances")]
    NoLogs { instance: String, dir: PathBuf },
}

impl From<lifeboat_core::ManifestError> for ControlError {
    fn from(err: lifeboat_core::ManifestError) -> ControlError {
        ControlError::Manifest(err)
    }
}

impl ControlError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ControlError {
        let path = path.into();
        move |cause| ControlError::Io { what, path, cause }
    }
}

/// What to do about an I/O failure, when the kind says it: permission problems usually mean
/// the site belongs to another user.
fn io_advice(err: &std::io::Error) -> &'static str {
    match err.kind() {
        std::io::ErrorKind::PermissionDenied => {
            " (permission denied: the site's files belong to another user; run the command as that user, or as root)"
        }
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            " (the disk is full: free some space and try again)"
        }
        std::io::ErrorKind::ReadOnlyFilesystem => " (the file system is read-only)",
        _ => "",
    }
}
