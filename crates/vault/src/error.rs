//! The one error type of the vault. Every variant says what happened, where, and what to do
//! next; none ever contains the password or key material.
use std::path::PathBuf;

/// Everything that can go wrong in the vault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no repository at {location}: {detail}; create one with `lifeboat vault init --dest {location}` or check the --repo value"
    )]
    MissingRepository { location: String, detail: String },

    #[error(
        "the repository at {location} has format version {found}, this lifeboat reads up to version {supported}; upgrade lifeboat to use it"
    )]
    NewerFormat {
        location: String,
        found: u32,
        supported: u32,
    },

    #[error(
        "wrong password for the repository at {location}: no key opens it; check LIFEBOAT_PASSWORD or --password-file"
    )]
    WrongPassword { location: String },

    #[error(
        "the key file {key} of the repository at {location} is damaged ({detail}), so the password could not be checked against it; copy {key} from another destination of the repository (they all hold the same keys) or from a copy of it"
    )]
    DamagedKey {
        location: String,
        key: String,
        detail: String,
    },

    #[error(
        "an empty password is refused: anyone who can read the repository could open it; give a password (LIFEBOAT_PASSWORD, --password-file, or type one at the prompt)"
    )]
    EmptyPassword,

    #[error(
        "a repository already exists at {location}; use a fresh destination or `lifeboat backup --repo {location}`"
    )]
    AlreadyExists { location: String },

    #[error("destination {location} failed while {action} {key}: {detail}")]
    Destination {
        location: String,
        action: &'static str,
        key: String,
        detail: String,
    },

    #[error(
        "only {succeeded} of {needed} required destinations accepted {key} (failed: {failed}); the object is kept in the local spool and will be sent when the destination is back"
    )]
    QuorumNotReached {
        key: String,
        succeeded: usize,
        needed: usize,
        failed: String,
    },

    #[error(
        "object {key} is damaged or missing on every destination ({detail}); run `lifeboat vault verify --read-data` to see what is affected"
    )]
    Unreadable { key: String, detail: String },

    #[error(
        "the repository data is inconsistent: {0}; run `lifeboat vault verify` to see what is affected"
    )]
    Corrupt(String),

    #[error("no snapshot matches {0:?}; list them with `lifeboat snapshots`")]
    NoSuchSnapshot(String),

    #[error("snapshot id prefix {0:?} matches several snapshots; give more characters")]
    AmbiguousSnapshot(String),

    #[error(
        "the snapshot contains an unsafe entry {entry:?} ({reason}); it was refused and nothing was written"
    )]
    UnsafeEntry { entry: String, reason: &'static str },

    #[error(
        "could not give {path} its recorded owner {uid}:{gid} ({source}); restore as root onto a file system that keeps owners (not FAT, not an NFS mount that squashes root), or as a normal user to own every restored file yourself"
    )]
    OwnerNotRestored {
        path: PathBuf,
        /// The recorded ids; `-` when not recorded.
        uid: String,
        gid: String,
        #[source]
        source: std::io::Error,
    },

    #[error("the restore target {0} is not empty; choose an empty directory or pass --overwrite")]
    TargetNotEmpty(PathBuf),

    #[error(
        "the repository is locked by {holder}; wait for it to finish (locks of dead processes expire after {stale_after_secs}s)"
    )]
    Locked {
        holder: String,
        stale_after_secs: u64,
    },

    #[error("invalid destination {url:?}: {reason}")]
    InvalidDestination { url: String, reason: String },

    #[error(
        "{operation} needs every destination reachable and caught up, but {location} is not ({detail}); bring it back and run `lifeboat vault status`"
    )]
    DestinationNeeded {
        operation: &'static str,
        location: String,
        detail: String,
    },

    #[error("invalid input: {0}")]
    InvalidInput(String),

    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds file-system context to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn ctx(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            action,
            path: path.into(),
            source,
        })
    }
}
