//! Writing a snapshot from entries the caller supplies: files (path + reader + metadata),
//! directories and symlinks, in depth-first order. The directory backup is built on it, and
//! so is continuous capture's checkpoint. Blocking API: call it from a blocking thread
//! (`tokio::task::spawn_blocking`), never from async code.
//!
//! Commit order, which makes a crash at any point harmless: packs are uploaded first; the
//! index naming them is written only once every pack is on a quorum; the snapshot that refers
//! to them is written last. A crash before the snapshot leaves only unreferenced packs, which
//! prune removes.
use std::collections::HashSet;
use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::crypto::Id;
use crate::error::{Error, IoContext, Result};
use crate::format::{
    BackupSummary, BlobKind, FORMAT_VERSION, IndexFile, Node, NodeKind, Snapshot, Tree, now_rfc3339,
};
use crate::lock::{LockKind, RepoLock};
use crate::pipeline::Pipeline;
use crate::repo::{Repository, SnapshotEntry};

/// A backup writes an index after this many new packs (and at its end).
const INDEX_EVERY_PACKS: usize = 32;

/// Metadata of an entry, as stored in the snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryMeta {
    /// Unix permission bits.
    pub mode: u32,
    /// Nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
    /// For change detection by later backups; 0 when unknown.
    pub inode: u64,
    pub ctime_ns: i128,
    /// Numeric owner and group; `None` when unknown. A restore gives set-id bits back only
    /// to an entry that gets back the owner recorded here.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl EntryMeta {
    /// Reads the metadata of a file-system entry (without following symlinks).
    pub fn of(meta: &std::fs::Metadata) -> EntryMeta {
        use std::os::unix::fs::MetadataExt;
        EntryMeta {
            mode: meta.mode() & 0o7777,
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            inode: meta.ino(),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            uid: Some(meta.uid()),
            gid: Some(meta.gid()),
        }
    }
}

/// What describes a snapshot besides its content.
#[derive(Clone, Debug, Default)]
pub struct SnapshotInfo {
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    /// Defaults to this machine's name.
    pub host: Option<String>,
    /// Defaults to now.
    pub time: Option<String>,
    pub parent: Option<Id>,
}

struct Frame {
    /// Path components from the snapshot root.
    path: Vec<String>,
    meta: EntryMeta,
    nodes: Vec<Node>,
}

/// Builds one snapshot. Entries must come in depth-first order (a directory's entries right
/// after it, before its next sibling); names within a directory must be unique.
pub struct SnapshotWriter {
    repo: Arc<Repository>,
    handle: tokio::runtime::Handle,
    pipeline: Option<Pipeline>,
    seen: Mutex<HashSet<Id>>,
    stack: Vec<Frame>,
    lock: Option<RepoLock>,
    summary: Mutex<BackupSummary>,
}

fn components(path: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => continue,
            ".." => return Err(Error::InvalidInput(format!("path {path:?} contains '..'"))),
            c => out.push(c.to_string()),
        }
    }
    Ok(out)
}

/// Splits content into chunks exactly as a backup does and calls `each` with every chunk.
pub(crate) fn for_each_chunk(
    p: crate::format::ChunkerParams,
    mut reader: impl Read,
    size_hint: u64,
    mut each: impl FnMut(Vec<u8>) -> Result<()>,
) -> Result<u64> {
    let mut total = 0u64;
    if size_hint <= u64::from(p.max) {
        let mut buf = Vec::with_capacity(size_hint as usize);
        reader
            .read_to_end(&mut buf)
            .ctx("reading", "file content")?;
        total = buf.len() as u64;
        if buf.len() <= p.min as usize {
            if !buf.is_empty() {
                each(buf)?;
            }
        } else {
            for c in fastcdc::v2020::FastCDC::new(&buf, p.min, p.avg, p.max) {
                each(buf[c.offset..c.offset + c.length].to_vec())?;
            }
        }
    } else {
        for c in fastcdc::v2020::StreamCDC::new(reader, p.min, p.avg, p.max) {
            let c = c.map_err(|e| Error::Io {
                action: "reading",
                path: "file content".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
            total += c.length as u64;
            each(c.data)?;
        }
    }
    Ok(total)
}

/// The chunk ids a backup would record for this content.
pub(crate) fn chunk_ids(
    keys: &crate::crypto::Keys,
    p: crate::format::ChunkerParams,
    reader: impl Read,
    size_hint: u64,
) -> Result<Vec<Id>> {
    let mut ids = Vec::new();
    for_each_chunk(p, reader, size_hint, |c| {
        ids.push(keys.blob_id(&c));
        Ok(())
    })?;
    Ok(ids)
}

impl SnapshotWriter {
    /// Starts a snapshot: takes a shared lock (waiting up to `lock_wait`) and starts the
    /// pipeline. `handle` is the runtime that runs uploads.
    pub fn start(
        repo: Arc<Repository>,
        handle: tokio::runtime::Handle,
        lock_wait: Duration,
    ) -> Result<SnapshotWriter> {
        let lock = handle.block_on(repo.lock(LockKind::Shared, lock_wait))?;
        // A prune may have finished between opening the repository and taking the lock: only
        // the index read under the lock says which blobs really exist (and may be reused).
        if let Err(e) = handle.block_on(repo.reload_index()) {
            handle.block_on(lock.release());
            return Err(e);
        }
        let pipeline = Pipeline::start(repo.keys.clone(), repo.dests.clone(), handle.clone());
        Ok(SnapshotWriter {
            repo,
            handle,
            pipeline: Some(pipeline),
            seen: Mutex::new(HashSet::new()),
            stack: vec![Frame {
                path: Vec::new(),
                meta: EntryMeta {
                    mode: 0o755,
                    ..Default::default()
                },
                nodes: Vec::new(),
            }],
            lock: Some(lock),
            summary: Mutex::new(BackupSummary::default()),
        })
    }

    /// The repository written to.
    pub fn repository(&self) -> &Arc<Repository> {
        &self.repo
    }

    /// Whether a blob is new to the repository and this session (and marks it seen).
    fn is_new(&self, id: &Id) -> bool {
        if self.repo.index.read().unwrap().blobs.contains_key(id) {
            return false;
        }
        self.seen.lock().unwrap().insert(*id)
    }

    /// Whether every blob is already stored (for reusing a parent's file content).
    pub fn has_blobs(&self, ids: &[Id]) -> bool {
        let index = self.repo.index.read().unwrap();
        ids.iter().all(|id| index.blobs.contains_key(id))
    }

    fn store_blob(&self, kind: BlobKind, data: Vec<u8>) -> Result<Id> {
        let id = self.repo.keys.blob_id(&data);
        if self.is_new(&id) {
            let pipeline = self.pipeline.as_ref().expect("running");
            pipeline.store(id, kind, data)?;
            // Index stored packs as the backup goes, so an interrupted backup's work is
            // reused by the next one instead of uploaded again.
            if let Some(packs) = pipeline.take_stored(INDEX_EVERY_PACKS) {
                self.write_index(packs)?;
            }
        }
        Ok(id)
    }

    fn write_index(&self, packs: Vec<crate::format::IndexedPack>) -> Result<()> {
        if packs.is_empty() {
            return Ok(());
        }
        let index = IndexFile {
            version: FORMAT_VERSION,
            packs,
        };
        // Only packs already durable on a quorum are ever named in an index.
        self.handle
            .block_on(self.repo.write_object("index", &index, b"index"))?;
        self.repo.index.write().unwrap().add(&index);
        Ok(())
    }

    /// Chunks, deduplicates and stores a file's content; returns its chunk ids and size.
    /// Thread-safe: call it for several files in parallel.
    pub fn store_content(
        &self,
        reader: impl Read,
        size_hint: u64,
        on_bytes: &dyn Fn(u64),
    ) -> Result<(Vec<Id>, u64)> {
        let mut ids = Vec::new();
        let total = for_each_chunk(self.repo.config.chunker, reader, size_hint, |c| {
            on_bytes(c.len() as u64);
            ids.push(self.store_blob(BlobKind::Data, c)?);
            Ok(())
        })?;
        Ok((ids, total))
    }

    fn close_top(&mut self) -> Result<()> {
        let frame = self.stack.pop().expect("non-root frame");
        let id = self.store_tree(frame.nodes)?;
        let name = frame.path.last().expect("non-root").clone();
        self.summary.lock().unwrap().dirs += 1;
        self.stack.last_mut().expect("root stays").nodes.push(Node {
            name,
            kind: NodeKind::Dir,
            mode: frame.meta.mode,
            mtime_ns: frame.meta.mtime_ns,
            size: 0,
            inode: frame.meta.inode,
            ctime_ns: frame.meta.ctime_ns,
            content: Vec::new(),
            subtree: Some(id),
            target: None,
            uid: frame.meta.uid,
            gid: frame.meta.gid,
        });
        Ok(())
    }

    fn store_tree(&self, mut nodes: Vec<Node>) -> Result<Id> {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = nodes.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(Error::InvalidInput(format!(
                "{:?} was added twice; add entries in depth-first order with unique names",
                w[0].name
            )));
        }
        let bytes = serde_json::to_vec(&Tree { nodes }).expect("serializes");
        self.store_blob(BlobKind::Tree, bytes)
    }

    /// Makes the directory holding `comps` the top of the stack.
    fn enter_parent(&mut self, comps: &[String]) -> Result<()> {
        let parent = &comps[..comps.len() - 1];
        while !parent.starts_with(&self.stack.last().unwrap().path) {
            self.close_top()?;
        }
        while self.stack.last().unwrap().path.len() < parent.len() {
            let depth = self.stack.last().unwrap().path.len();
            self.stack.push(Frame {
                path: parent[..depth + 1].to_vec(),
                meta: EntryMeta {
                    mode: 0o755,
                    ..Default::default()
                },
                nodes: Vec::new(),
            });
        }
        Ok(())
    }

    /// Adds a directory (its entries follow).
    pub fn add_dir(&mut self, path: &str, meta: EntryMeta) -> Result<()> {
        let comps = components(path)?;
        if comps.is_empty() {
            self.stack[0].meta = meta;
            return Ok(());
        }
        self.enter_parent(&comps)?;
        self.stack.push(Frame {
            path: comps,
            meta,
            nodes: Vec::new(),
        });
        Ok(())
    }

    /// Adds a file whose content was stored with [`SnapshotWriter::store_content`].
    pub fn add_stored_file(
        &mut self,
        path: &str,
        meta: EntryMeta,
        content: Vec<Id>,
        size: u64,
        unchanged: bool,
    ) -> Result<()> {
        let comps = components(path)?;
        let name = comps
            .last()
            .ok_or_else(|| Error::InvalidInput("a file needs a name".into()))?
            .clone();
        self.enter_parent(&comps)?;
        {
            let mut s = self.summary.lock().unwrap();
            s.files += 1;
            s.bytes += size;
            if unchanged {
                s.files_unchanged += 1;
            }
        }
        self.stack.last_mut().unwrap().nodes.push(Node {
            name,
            kind: NodeKind::File,
            mode: meta.mode,
            mtime_ns: meta.mtime_ns,
            size,
            inode: meta.inode,
            ctime_ns: meta.ctime_ns,
            content,
            subtree: None,
            target: None,
            uid: meta.uid,
            gid: meta.gid,
        });
        Ok(())
    }

    /// Adds a file, reading its content from `reader`.
    pub fn add_file(&mut self, path: &str, meta: EntryMeta, reader: impl Read) -> Result<()> {
        // Unknown size: stream it, so memory stays bounded however large it is.
        let (content, size) = self.store_content(reader, u64::MAX, &|_| {})?;
        self.add_stored_file(path, meta, content, size, false)
    }

    /// Adds a symbolic link.
    pub fn add_symlink(&mut self, path: &str, meta: EntryMeta, target: &str) -> Result<()> {
        let comps = components(path)?;
        let name = comps
            .last()
            .ok_or_else(|| Error::InvalidInput("a symlink needs a name".into()))?
            .clone();
        self.enter_parent(&comps)?;
        self.stack.last_mut().unwrap().nodes.push(Node {
            name,
            kind: NodeKind::Symlink,
            mode: meta.mode,
            mtime_ns: meta.mtime_ns,
            size: 0,
            inode: meta.inode,
            ctime_ns: meta.ctime_ns,
            content: Vec::new(),
            subtree: None,
            target: Some(target.to_string()),
            uid: meta.uid,
            gid: meta.gid,
        });
        Ok(())
    }

    /// Adds a node exactly as given to the current directory, without any check. Exists only
    /// so tests can craft hostile snapshots (e.g. a `..` name) to prove restore refuses them.
    #[doc(hidden)]
    pub fn add_unchecked_node_for_tests(&mut self, node: crate::format::Node) {
        self.stack.last_mut().expect("root").nodes.push(node);
    }

    /// Stores the remaining trees, waits until every pack is on a quorum, writes the index,
    /// then the snapshot. When this returns Ok, the snapshot is done.
    pub fn finish(mut self, info: SnapshotInfo) -> Result<SnapshotEntry> {
        while self.stack.len() > 1 {
            self.close_top()?;
        }
        let root = self.stack.pop().unwrap();
        let tree = self.store_tree(root.nodes)?;
        let pipeline = self.pipeline.take().expect("running");
        let stats = pipeline.stats.clone();
        let handle = self.handle.clone();
        let packs = pipeline.finish(&handle)?;
        let repo = self.repo.clone();
        // The index only after every pack it names is durably stored.
        self.write_index(packs)?;
        let mut summary = self.summary.lock().unwrap().clone();
        summary.new_blobs = stats.new_blobs.load(Ordering::Relaxed);
        summary.new_bytes_stored = stats.stored_bytes.load(Ordering::Relaxed);
        summary.packs = stats.packs.load(Ordering::Relaxed);
        let snapshot = Snapshot {
            version: FORMAT_VERSION,
            time: info.time.unwrap_or_else(now_rfc3339),
            host: info.host.unwrap_or_else(crate::lock::hostname),
            paths: info.paths,
            tags: info.tags,
            tree,
            parent: info.parent,
            summary,
        };
        // The snapshot last: it becomes visible only when everything it needs is stored.
        let id = handle.block_on(repo.write_object("snapshots", &snapshot, b"snapshot"))?;
        if let Some(lock) = self.lock.take() {
            handle.block_on(lock.release());
        }
        repo.close();
        Ok(SnapshotEntry { id, snapshot })
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if let Some(lock) = self.lock.take() {
            self.handle.block_on(lock.release());
        }
    }
}
