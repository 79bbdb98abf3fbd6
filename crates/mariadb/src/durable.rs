//! Crash-safe small-file writes shared by the capture modules.
//!
//! The order is what makes it safe: write a temporary file, fsync it, rename it over the
//! target, then fsync the directory so the rename itself survives a power cut. A crash at
//! any step leaves either the old file or the new one, never a mix.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::{Result, io_err};

/// Replaces `path` with `bytes` atomically and durably.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    {
        let mut f = File::create(&tmp).map_err(io_err(&tmp, "create"))?;
        f.write_all(bytes).map_err(io_err(&tmp, "write"))?;
        f.sync_all().map_err(io_err(&tmp, "fsync"))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path, "rename into place"))?;
    sync_parent(path)
}

/// Fsyncs the directory holding `path`, making a rename or create in it durable.
pub fn sync_parent(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync directory"))
}
