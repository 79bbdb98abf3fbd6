//! The tiny file that lets SQLite capture resume where it stopped.
//!
//! It records the last sequence number the caller confirmed durable and the WAL position
//! just after it (salts, offset, running checksum). On restart, capture continues from it
//! only if the WAL still holds that exact position; otherwise it takes a fresh base image
//! and says why. It is written atomically: temporary file, fsync, rename, fsync of the directory.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::durable::write_atomically;
use crate::error::{CaptureError, Result, io_err};
use crate::wal::WalPosition;

/// Version of the position file layout.
pub const POSITION_FORMAT_VERSION: u32 = 1;

/// What is persisted after each confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPosition {
    /// Layout version ([`POSITION_FORMAT_VERSION`]).
    pub version: u32,
    /// Session number of the capture that wrote it (bumped at each start).
    pub epoch: u64,
    /// Last sequence number confirmed durable.
    pub seq: u64,
    /// WAL position just after that record; `None` while the WAL was empty.
    pub wal: Option<WalPosition>,
    /// Page size at that point.
    pub page_size: u32,
    /// Database size in pages at that point.
    pub db_pages: u32,
}

/// Loads the position file, `None` if there is none yet.
pub fn load(path: &Path) -> Result<Option<SavedPosition>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, "read")(e)),
    };
    let pos: SavedPosition =
        serde_json::from_slice(&bytes).map_err(|e| CaptureError::BadPositionFile {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })?;
    if pos.version != POSITION_FORMAT_VERSION {
        return Err(CaptureError::BadPositionFile {
            path: path.to_path_buf(),
            problem: format!("unknown version {}", pos.version),
        });
    }
    Ok(Some(pos))
}

/// Persists `pos` atomically and durably.
pub fn save(path: &Path, pos: &SavedPosition) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(pos).expect("position is plain data");
    write_atomically(path, &bytes)
}
