//! The errors of the stream to standbys: every message says what failed and what happens
//! or what to do next.

use std::path::PathBuf;
use std::time::Duration;

use super::Position;
use super::wire::{FrameError, RefusalCode};
use crate::error::TimelineError;

/// Errors of [`super::StreamServer`], [`super::Replica`] and the change feed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A network operation failed.
    #[error("could not {action} {peer}: {source}")]
    Network {
        /// What was being done.
        action: &'static str,
        /// The other node's address.
        peer: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The peer sent bytes that are not a valid frame; the connection is closed.
    #[error("{peer} sent an invalid frame: {source}")]
    Frame {
        /// The other node's address.
        peer: String,
        /// What was wrong.
        #[source]
        source: FrameError,
    },
    /// The peer broke the protocol (a frame out of place); the connection is closed.
    #[error("{peer} broke the stream protocol: {why}")]
    Protocol {
        /// The other node's address.
        peer: String,
        /// What it did.
        why: String,
    },
    /// A frame carried a term older than one this node has seen: it is refused, never applied.
    #[error(
        "{peer} sent term {term}, older than term {highest} this node has seen; it is refused (a primary of an older term must not write)"
    )]
    StaleTerm {
        /// The other node's address.
        peer: String,
        /// The term it sent.
        term: u64,
        /// The highest this node has seen.
        highest: u64,
    },
    /// The peer refused the connection.
    #[error("{peer} refused the stream ({code:?}): {reason}")]
    Refused {
        /// The other node's address.
        peer: String,
        /// Why, as a code.
        code: RefusalCode,
        /// Why, in words.
        reason: String,
    },
    /// The primary cannot stream what this standby needs: it restores from the vault.
    #[error("the standby must resync from the vault: {reason}")]
    ResyncNeeded {
        /// Why.
        reason: String,
    },
    /// No standby matching the rule acknowledged the position in time.
    #[error(
        "no standby acknowledged {position} within {waited:?} ({standbys}); the write is not confirmed durable elsewhere"
    )]
    NotAcknowledged {
        /// The position waited for.
        position: Position,
        /// How long it waited.
        waited: Duration,
        /// The standbys matching the rule and where they stood, in words.
        standbys: String,
    },
    /// This primary learned of a newer term: it stopped streaming and must stop writing.
    #[error(
        "a newer term {newer} exists (this primary has term {term}); this node is no longer primary and stopped streaming"
    )]
    Superseded {
        /// This primary's term.
        term: u64,
        /// The newer term seen.
        newer: u64,
    },
    /// A file of the standby's copy could not be read or written.
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
    /// The standby's own state file is unreadable.
    #[error(
        "the standby's state file {path} is unreadable ({why}); remove it to resync from the vault"
    )]
    BadState {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A batch could not be applied as it is; the standby resyncs from the vault.
    #[error("batch {position} cannot be applied: {why}; the standby resyncs from the vault")]
    Inapplicable {
        /// The batch.
        position: Position,
        /// Why.
        why: String,
    },
    /// SQLite refused an operation on the standby's copy of a database.
    #[error("{action} {path}: {source}")]
    Sqlite {
        /// What was being done.
        action: &'static str,
        /// The database.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The timeline (vault restore, capture) failed.
    #[error(transparent)]
    Timeline(#[from] TimelineError),
    /// The configuration cannot work.
    #[error("invalid stream configuration: {0}")]
    Invalid(String),
    /// The component has stopped.
    #[error("the stream has stopped")]
    Stopped,
}

impl StreamError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> StreamError {
        let path = path.into();
        move |source| StreamError::Io {
            action,
            path,
            source,
        }
    }
}
