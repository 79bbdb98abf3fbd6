//! lifeboat-mariadb: MariaDB as part of a site's state.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod base;
pub mod binlog;
pub mod capture;
mod durable;
pub mod error;
pub mod gtid;
pub mod import;
pub mod record;
pub mod restore;
pub mod server;
pub mod tools;

pub use base::{BaseBackup, BaseInfo, open_base_backup, take_base_backup};
pub use capture::{BinlogCapture, CaptureOptions, CaptureSource, CaptureStatus, SavedPosition};
pub use error::{MariaDbError, Result};
pub use gtid::{Gtid, GtidPos};
pub use import::{ImportReport, RemoteSource, import_dump, import_from_server};
pub use record::{TransactionRecord, decode_batch, encode_batch, resolve_history};
pub use restore::{RestoreReport, RestoreTarget, check_all_tables, restore, select_transactions};
pub use server::{Server, ServerCommand, ServerSpec};
pub use tools::Binaries;
