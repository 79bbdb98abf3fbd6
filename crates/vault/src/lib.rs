//! lifeboat-vault: a deduplicated, encrypted, crash-safe backup repository written to several
//! destinations at once. It keeps a site's timeline: whole-directory snapshots, checkpoints
//! written from files a caller supplies, and small sequence-numbered segments.
//!
//! The format is specified in `docs/vault-format.md`. This crate never prints and never reads
//! the terminal: progress goes through [`Progress`], errors are [`Error`] values that say what
//! to do next.
//!
//! Typical use:
//! ```no_run
//! # async fn demo() -> lifeboat_vault::Result<()> {
//! use std::sync::Arc;
//! use lifeboat_vault::*;
//! let opts = OpenOptions::default();
//! Repository::init(&["/srv/backup/blog"], None, b"secret", &opts).await?;
//! let repo = Arc::new(Repository::open("/srv/backup/blog", b"secret", &opts).await?);
//! let snap = repo.backup(&["data"], &BackupOptions::default(), Arc::new(NoProgress)).await?;
//! repo.restore(snap.snapshot.tree, "/tmp/restored".as_ref(), &RestoreOptions::default(), Arc::new(NoProgress)).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod backend;
mod backup;
mod crypto;
mod destinations;
mod error;
mod forget;
pub mod format;
mod lock;
mod pipeline;
mod prune;
mod repo;
mod restore;
mod verify;
mod writer;

pub use backup::{BackupOptions, NoProgress, Progress};
pub use crypto::{Id, KdfParams, KeyInfo};
pub use destinations::DestinationStatus;
pub use error::{Error, Result};
pub use forget::{Candidate, KeepPolicy, apply_policy};
pub use lock::{LockKind, RepoLock};
pub use prune::{PruneFaultHook, PruneOptions, PruneStep, PruneSummary};
pub use repo::{OpenOptions, Repository, S3Credentials, SnapshotEntry};
pub use restore::{RestoreOptions, RestoreSummary};
pub use verify::{DestinationReport, Problem, VerifyOptions, VerifyReport};
pub use writer::{EntryMeta, SnapshotInfo, SnapshotWriter};
