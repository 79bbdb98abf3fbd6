//! lifeboat-mariadb: a MariaDB database as part of a site's state.
//!
//! - [`server`]: a server Lifeboat manages — data dir initialised without system-wide side
//!   effects, generated config (own socket and port, binlog in row format with GTIDs, every
//!   commit synced), the command line for the supervisor, readiness, the app's database and
//!   user, password rotation;
//! - [`capture`]: every committed transaction from the binary log, through the replication
//!   protocol by GTID, resumable after any disconnect or kill -9, gaps reported;
//! - [`record`]: the records and their versioned batch encoding (`docs/mariadb-format.md`);
//! - [`base`]: physical base backups (`mariadb-backup`, prepared at once) that the vault
//!   stores deduplicated;
//! - [`restore`](mod@restore): a base plus captured transactions up to a time or a GTID, into a new data
//!   dir that is started and checked;
//! - [`import`]: a dump file or a running server into a managed server;
//! - [`purge`]: removing the binlog files a durable base and capture no longer need;
//! - [`binlog`], [`gtid`]: the parts of the binlog format and of GTIDs the rest needs.
//!
//! The crate never prints and never reads the terminal; it never ships anything itself.
//! Errors are [`MariaDbError`] values that say what to do and never hold a password.
//!
//! # How the timeline is expected to drive it
//!
//! Like `SqliteCapture` (`lifeboat-capture`): a `TimelineWorker` keeps one [`BinlogCapture`]
//! per MariaDB source, on a worker thread of its own (its calls block).
//!
//! 1. No checkpoint yet: [`take_base_backup`] first, store its directory as this source's
//!    part of the checkpoint snapshot, then [`BinlogCapture::open`] with the base's
//!    `gtid_pos` (with a saved position, `open` continues from it in a new epoch).
//! 2. Every interval: [`BinlogCapture::poll`]; put [`encode_batch`] of the records into the
//!    segment as this source's part; once the segment is on a quorum,
//!    [`BinlogCapture::confirm_durable`] with the last seq.
//! 3. Every checkpoint: a new base ([`take_base_backup`]); the vault deduplicates it against
//!    the previous one (an unchanged 100 MiB database adds ~20 KiB).
//! 4. An error from `poll` for which [`MariaDbError::needs_new_base`] holds (a GTID gap or
//!    step back, binlogs purged or reset, a damaged binlog): a site event, a base at once,
//!    then [`BinlogCapture::restart_from_base`] with its position.
//! 5. After each checkpoint is durable: [`rotate_binlog`], then [`purge_binlogs_before`] the
//!    position both its base and capture's confirmed position cover ([`GtidPos::common`]).
//! 6. Rewind: [`resolve_history`] of the records read from the segments, the newest base at or
//!    before the target, [`restore()`] into the new state's data dir, then the supervisor runs
//!    [`ServerSpec::command`] on it; [`ServerSpec::rotate_app_password`] for
//!    `--rotate-credentials`.
//!
//! The supervisor runs [`ServerSpec::command`] like any process and can use
//! [`ServerSpec::wait_ready`] as its readiness check; capture reconnects by itself whenever
//! the server restarts.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod base;
pub mod binlog;
pub mod capture;
mod durable;
pub mod error;
pub mod gtid;
pub mod import;
pub mod purge;
pub mod record;
pub mod restore;
pub mod server;
pub mod tools;

pub use base::{BaseBackup, BaseInfo, open_base_backup, take_base_backup};
pub use capture::{
    BinlogCapture, CaptureOptions, CaptureSource, CaptureStatus, POSITION_FORMAT_VERSION,
    SavedPosition, load_position, save_position,
};
pub use error::{MariaDbError, Result};
pub use gtid::{Gtid, GtidPos};
pub use import::{ImportReport, RemoteSource, import_dump, import_from_server};
pub use purge::{BinlogFile, PurgeReport, binlog_files, purge_binlogs_before, rotate_binlog};
pub use record::{TransactionRecord, decode_batch, encode_batch, resolve_history};
pub use restore::{
    AppLogin, RestoreReport, RestoreTarget, apply_on_running, apply_transactions, check_all_tables,
    restore, restore_with_app, restore_with_app_moving_base, select_transactions,
};
pub use server::{Server, ServerCommand, ServerSpec};
pub use tools::Binaries;

// Capture runs on a worker thread of its own (e.g. `spawn_blocking`).
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<BinlogCapture>();
    assert_send::<Server>();
};
