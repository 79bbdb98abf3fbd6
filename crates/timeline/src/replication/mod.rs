//! The stream of changes from a primary to its warm standbys (issue 12), as a library.
//!
//! - [`ChangeFeed`] (from [`crate::TimelineWorker::feed`]): every batch capture reads on the
//!   primary, as soon as it reads it, numbered by a [`Position`] `(term, seq)`, in a bounded
//!   in-memory window; [`ChangeFeed::barrier`] makes capture read everything committed so far
//!   and returns the position covering it.
//! - [`StreamServer`]: the primary's side. Accepts standbys on a listener, sends each what
//!   it lacks from the window (or tells it to resync from the vault), tracks what each
//!   acknowledged, and answers [`StreamServer::wait_acked`] for `durability = "sync"`.
//! - [`Replica`]: the standby's side. Follows the primary, applies every batch to its own copy
//!   of the state durably and in order, acknowledges it, and restores from the vault when it
//!   has nothing or fell out of the window.
//! - [`wire`]: the frames they exchange (`docs/stream-format.md`).
//!
//! Terms fence: a standby never applies a batch of a term lower than the highest it has
//! seen (and persists that term before applying anything of it); a primary that learns of a
//! higher term stops streaming and says so ([`StreamServer::superseded`]).
//!
//! Nothing here prints; every component reports through a status struct.

mod batch;
pub mod error;
pub(crate) mod feed;
mod history;
mod replica;
#[doc(hidden)]
pub mod sealed;
mod server;
pub(crate) mod stage;
pub mod wire;

pub use error::StreamError;
pub use feed::{ChangeFeed, FeedOptions, FeedStatus};
pub use history::ReplicaHistory;
pub use lifeboat_core::cluster::{FailsafeRequest, Position, Term};
#[doc(hidden)]
pub use replica::{ApplyStep, FaultHook, inspect_replica_state};
pub use replica::{
    ConfirmPolicy, Replica, ReplicaConfig, ReplicaMariaDb, ReplicaOptions, ReplicaState,
    ReplicaStatus, apply_mariadb_journal, seed_capture_state,
};
pub use sealed::{HandshakeError, StreamKey};
pub use server::{
    AckedBy, ServerOptions, StandbyInfo, StandbyStatus, StreamServer, StreamServerConfig,
    StreamServerStatus,
};
pub use wire::SourcePosition;

/// Resolves once the flag is set. (A helper rather than `wait_for` in `select!`: the guard
/// `wait_for` returns must not live across an await of a task that moves between threads.)
pub(crate) async fn until_true(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
