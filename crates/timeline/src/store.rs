//! Storing contents (data-dir files, database base images) in the vault's deduplicated
//! chunk store, and reading them back by blake3 hash.
//!
//! Contents are stored through a vault snapshot tagged [`CONTENT_TAG`] holding just the
//! files that changed in one interval, so they are referenced (prune keeps them) and
//! deduplicated against everything already in the vault. Blocking: call from a blocking
//! thread.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lifeboat_vault::{EntryMeta, Repository, SnapshotInfo, SnapshotWriter};
use tokio::runtime::Handle;

use crate::error::{Result, TimelineError, io_err};
use crate::segment::Content;

/// Tag of the snapshots that carry the contents of one interval's changed files.
pub const CONTENT_TAG: &str = "timeline-content";

/// What reading a file for storage found.
pub(crate) enum Stored {
    /// The file's content now, with its blake3 and where it is stored.
    Content { hash: String, content: Content },
    /// The file's content now, small enough to travel inline in the segment.
    Inline { hash: String, bytes: Vec<u8> },
    /// The file is gone.
    Gone,
}

struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A session storing several contents into one content snapshot.
pub(crate) struct ContentWriter {
    writer: SnapshotWriter,
    added: usize,
}

impl ContentWriter {
    pub(crate) fn start(repo: Arc<Repository>, handle: Handle) -> Result<ContentWriter> {
        Ok(ContentWriter {
            writer: SnapshotWriter::start(repo, handle, Duration::from_secs(60))?,
            added: 0,
        })
    }

    /// Stores the file at `path` under `name` in the snapshot, hashing what it reads.
    pub(crate) fn store_file(&mut self, path: &Path, name: &str) -> Result<Stored> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Stored::Gone),
            Err(e) => return Err(io_err("open", path)(e)),
        };
        let meta = file.metadata().map_err(io_err("stat", path))?;
        let mut reader = HashingReader {
            inner: file,
            hasher: blake3::Hasher::new(),
        };
        let (ids, size) = self
            .writer
            .store_content(&mut reader, meta.len(), &|_| {})?;
        let hash = reader.hasher.finalize().to_hex().to_string();
        self.writer
            .add_stored_file(name, EntryMeta::of(&meta), ids.clone(), size, false)?;
        self.added += 1;
        Ok(Stored::Content {
            hash,
            content: Content::from_ids(size, &ids),
        })
    }

    /// Stores `bytes` as content (chunked and deduplicated like a file) without naming it
    /// in the snapshot yet: add it with [`add_stored`](Self::add_stored).
    pub(crate) fn store_only(&mut self, bytes: &[u8]) -> Result<Content> {
        let (ids, size) = self
            .writer
            .store_content(bytes, bytes.len() as u64, &|_| {})?;
        Ok(Content::from_ids(size, &ids))
    }

    /// Adds content already stored (by its chunks) under `name`.
    pub(crate) fn add_stored(&mut self, name: &str, content: &Content) -> Result<()> {
        self.writer.add_stored_file(
            name,
            EntryMeta {
                mode: 0o644,
                ..Default::default()
            },
            content.ids()?,
            content.size,
            true,
        )?;
        self.added += 1;
        Ok(())
    }

    /// Adds small bytes (metadata) under `name`.
    pub(crate) fn add_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.writer.add_file(
            name,
            EntryMeta {
                mode: 0o644,
                ..Default::default()
            },
            bytes,
        )?;
        self.added += 1;
        Ok(())
    }

    /// Finishes the snapshot: when this returns, everything stored is durable on a quorum.
    pub(crate) fn finish(
        self,
        tags: Vec<String>,
        time: Option<String>,
    ) -> Result<lifeboat_vault::SnapshotEntry> {
        Ok(self.writer.finish(SnapshotInfo {
            paths: vec![],
            tags,
            host: None,
            time,
            parent: None,
        })?)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.added == 0
    }
}

/// Reads content back from the vault into `out` (created new, fsynced), verifying its
/// blake3 against `hash`.
pub(crate) async fn fetch(
    repo: &Repository,
    hash: &str,
    content: &Content,
    what: &str,
    out: &Path,
) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(io_err("create", out))?;
    let mut hasher = blake3::Hasher::new();
    for id in content.ids()? {
        let bytes = repo.read_blob(&id).await?;
        hasher.update(&bytes);
        file.write_all(&bytes).map_err(io_err("write", out))?;
    }
    if hasher.finalize().to_hex().as_str() != hash {
        return Err(TimelineError::Damaged {
            what: format!("content of {what}"),
            why: format!("its chunks do not hash to {hash}"),
        });
    }
    file.sync_all().map_err(io_err("fsync", out))?;
    Ok(())
}
