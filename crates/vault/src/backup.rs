//! Whole-directory backups: walks the given paths depth-first, reuses the content of files
//! unchanged since the parent snapshot (same size, mtime, inode, ctime) without reading them,
//! chunks the others in parallel, and writes a snapshot through [`SnapshotWriter`].
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rayon::prelude::*;

use crate::error::{Error, IoContext, Result};
use crate::format::{Node, NodeKind, Tree};
use crate::repo::{Repository, SnapshotEntry};
use crate::writer::{EntryMeta, SnapshotInfo, SnapshotWriter};

/// Receives progress from long operations. The library never prints; the CLI draws bars.
pub trait Progress: Send + Sync {
    /// A new phase starts; `total_bytes` if known.
    fn phase(&self, _name: &str, _total_bytes: Option<u64>) {}
    /// Bytes processed since the last call.
    fn advance(&self, _bytes: u64) {}
}

/// Progress that goes nowhere.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Options of a directory backup.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    pub tags: Vec<String>,
    /// Read every file even if unchanged since the parent snapshot.
    pub force_read: bool,
    /// How long to wait for an exclusive lock (prune) to go away.
    pub lock_wait: Duration,
    pub host: Option<String>,
}

fn name_of(path: &Path) -> Result<String> {
    let n = path
        .file_name()
        .ok_or_else(|| Error::InvalidInput(format!("{} has no file name", path.display())))?;
    n.to_str().map(str::to_string).ok_or_else(|| {
        Error::InvalidInput(format!(
            "{} is not valid UTF-8; lifeboat stores UTF-8 names",
            path.display()
        ))
    })
}

impl Repository {
    /// Backs up `paths`. With a single directory, its contents become the snapshot root;
    /// with several paths, each appears under its own name. Returns the new snapshot.
    pub async fn backup<P: AsRef<Path>>(
        self: &Arc<Self>,
        paths: &[P],
        opts: &BackupOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<SnapshotEntry> {
        if paths.is_empty() {
            return Err(Error::InvalidInput(
                "give at least one path to back up".into(),
            ));
        }
        let mut abs = Vec::new();
        for p in paths {
            let p = p.as_ref();
            let a = std::fs::canonicalize(p).ctx("finding the backup path", p)?;
            abs.push(a);
        }
        let paths_str: Vec<String> = abs
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let host = opts.host.clone().unwrap_or_else(crate::lock::hostname);
        let parent = self
            .snapshots()
            .await?
            .into_iter()
            .rev()
            .find(|s| s.snapshot.paths == paths_str && s.snapshot.host == host);
        let repo = self.clone();
        let opts = opts.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let total: u64 = abs.iter().map(|p| tree_size(p)).sum();
            progress.phase("backup", Some(total));
            let mut w = SnapshotWriter::start(repo.clone(), handle.clone(), opts.lock_wait)?;
            let parent_root = match &parent {
                // The parent may have been forgotten and pruned meanwhile: then read everything.
                Some(p) if !opts.force_read => {
                    handle.block_on(repo.read_tree(&p.snapshot.tree)).ok()
                }
                _ => None,
            };
            let walker = Walker {
                handle: handle.clone(),
                progress: &*progress,
            };
            if abs.len() == 1 && abs[0].is_dir() {
                let meta = std::fs::symlink_metadata(&abs[0]).ctx("reading", &abs[0])?;
                w.add_dir("", EntryMeta::of(&meta))?;
                walker.walk_dir(&mut w, &abs[0], "", parent_root)?;
            } else {
                let parent_nodes: HashMap<String, Node> = parent_root
                    .map(|t| t.nodes.into_iter().map(|n| (n.name.clone(), n)).collect())
                    .unwrap_or_default();
                let mut named: Vec<(String, PathBuf)> = abs
                    .iter()
                    .map(|p| Ok((name_of(p)?, p.clone())))
                    .collect::<Result<_>>()?;
                named.sort();
                walker.add_entries(&mut w, "", named, &parent_nodes)?;
            }
            w.finish(SnapshotInfo {
                paths: paths_str,
                tags: opts.tags.clone(),
                host: Some(host),
                time: None,
                parent: parent.map(|p| p.id),
            })
        })
        .await
        .map_err(|e| Error::Corrupt(format!("backup worker failed: {e}")))?
    }
}

fn tree_size(p: &Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if m.is_file() {
        return m.len();
    }
    if !m.is_dir() {
        return 0;
    }
    std::fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| tree_size(&e.path())).sum())
        .unwrap_or(0)
}

/// Chunk ids, size, and whether the content was reused from the parent snapshot.
type StoredFile = (Vec<crate::crypto::Id>, u64, bool);

struct Walker<'a> {
    handle: tokio::runtime::Handle,
    progress: &'a dyn Progress,
}

fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

fn unchanged(old: &Node, meta: &EntryMeta, size: u64) -> bool {
    old.kind == NodeKind::File
        && old.size == size
        && old.mtime_ns == meta.mtime_ns
        && old.inode == meta.inode
        && old.ctime_ns == meta.ctime_ns
}

impl Walker<'_> {
    fn walk_dir(
        &self,
        w: &mut SnapshotWriter,
        dir: &Path,
        rel: &str,
        parent: Option<Tree>,
    ) -> Result<()> {
        let mut named = Vec::new();
        for e in std::fs::read_dir(dir).ctx("listing", dir)? {
            let e = e.ctx("listing", dir)?;
            named.push((name_of(&e.path())?, e.path()));
        }
        named.sort();
        let parent_nodes: HashMap<String, Node> = parent
            .map(|t| t.nodes.into_iter().map(|n| (n.name.clone(), n)).collect())
            .unwrap_or_default();
        self.add_entries(w, rel, named, &parent_nodes)
    }

    /// Adds named entries of one directory: files are read in parallel, then everything is
    /// added in name order, recursing into subdirectories.
    fn add_entries(
        &self,
        w: &mut SnapshotWriter,
        rel: &str,
        named: Vec<(String, PathBuf)>,
        parent: &HashMap<String, Node>,
    ) -> Result<()> {
        let metas: Vec<(String, PathBuf, std::fs::Metadata)> = named
            .into_iter()
            .map(|(n, p)| {
                let m = std::fs::symlink_metadata(&p).ctx("reading", &p)?;
                Ok((n, p, m))
            })
            .collect::<Result<_>>()?;
        let progress = self.progress;
        let writer: &SnapshotWriter = w;
        let files: Vec<Option<Result<StoredFile>>> = metas
            .par_iter()
            .map(|(name, path, m)| {
                if !m.is_file() {
                    return None;
                }
                let meta = EntryMeta::of(m);
                if let Some(old) = parent.get(name)
                    && unchanged(old, &meta, m.len())
                    && writer.has_blobs(&old.content)
                {
                    progress.advance(m.len());
                    return Some(Ok((old.content.clone(), old.size, true)));
                }
                Some((|| {
                    let f = std::fs::File::open(path).ctx("opening", path)?;
                    let (ids, size) = writer
                        .store_content(f, m.len(), &|n| progress.advance(n))
                        .map_err(|e| match e {
                            Error::Io { action, source, .. } => Error::Io {
                                action,
                                path: path.clone(),
                                source,
                            },
                            other => other,
                        })?;
                    Ok((ids, size, false))
                })())
            })
            .collect();
        for ((name, path, m), file) in metas.into_iter().zip(files) {
            let here = join(rel, &name);
            let meta = EntryMeta::of(&m);
            if let Some(r) = file {
                let (ids, size, same) = r?;
                w.add_stored_file(&here, meta, ids, size, same)?;
            } else if m.is_dir() {
                w.add_dir(&here, meta)?;
                let sub = match parent.get(&name) {
                    Some(Node {
                        kind: NodeKind::Dir,
                        subtree: Some(id),
                        ..
                    }) if w.has_blobs(&[*id]) => {
                        self.handle.block_on(w.repository().read_tree(id)).ok()
                    }
                    _ => None,
                };
                self.walk_dir(w, &path, &here, sub)?;
            } else if m.file_type().is_symlink() {
                let target = std::fs::read_link(&path).ctx("reading the link", &path)?;
                let target = target.to_str().ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "link target of {} is not valid UTF-8",
                        path.display()
                    ))
                })?;
                w.add_symlink(&here, meta, target)?;
            }
            // Sockets, FIFOs and devices are not site state; they are skipped.
        }
        Ok(())
    }
}
