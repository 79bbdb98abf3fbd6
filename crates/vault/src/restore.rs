//! Restoring a snapshot (or part of it) into a directory. Entry names in a snapshot are
//! untrusted input: the whole tree is checked before anything is written, so a crafted
//! snapshot cannot make restore write outside the target. Files are written to temporary
//! names, fsynced and renamed into place; files already present with identical content are
//! kept; each pack is read once.
use std::collections::HashMap;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use futures::StreamExt;

use crate::backup::Progress;
use crate::crypto::Id;
use crate::error::{Error, IoContext, Result};
use crate::format::{MAX_BLOB_LEN, Node, NodeKind};
use crate::repo::{Repository, pack_key};

/// Options of a restore.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Restore only entries under these paths (relative to the snapshot root).
    pub include: Vec<String>,
    /// Allow a non-empty target; entries of the snapshot replace what is there.
    pub overwrite: bool,
}

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RestoreSummary {
    pub files_written: u64,
    pub files_reused: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes_written: u64,
    pub packs_read: u64,
}

struct PlannedFile {
    rel: PathBuf,
    node: Node,
}

struct Plan {
    dirs: Vec<(PathBuf, Node)>,
    files: Vec<PlannedFile>,
    symlinks: Vec<(PathBuf, Node)>,
}

fn check_name(name: &str, at: &Path) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty name")
    } else if name == "." || name == ".." {
        Some("a '.' or '..' name would escape the target")
    } else if name.contains('/') || name.contains('\\') {
        Some("a name containing a path separator would escape its directory")
    } else if name.contains('\0') {
        Some("a name containing NUL")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::UnsafeEntry {
            entry: at.join(name).to_string_lossy().into_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn included(rel: &Path, include: &[Vec<String>], is_dir: bool) -> bool {
    if include.is_empty() {
        return true;
    }
    let comps: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    include
        .iter()
        .any(|inc| comps.starts_with(inc) || (is_dir && inc.starts_with(&comps)))
}

impl Repository {
    async fn plan(&self, root: Id, include: &[Vec<String>]) -> Result<Plan> {
        let mut plan = Plan {
            dirs: Vec::new(),
            files: Vec::new(),
            symlinks: Vec::new(),
        };
        let mut todo = vec![(PathBuf::new(), root)];
        while let Some((rel, id)) = todo.pop() {
            let tree = self.read_tree(&id).await?;
            let mut names = std::collections::HashSet::new();
            for node in tree.nodes {
                check_name(&node.name, &rel)?;
                if !names.insert(node.name.clone()) {
                    return Err(Error::UnsafeEntry {
                        entry: rel.join(&node.name).to_string_lossy().into_owned(),
                        reason: "the name appears twice in one directory",
                    });
                }
                let here = rel.join(&node.name);
                if !included(&here, include, node.kind == NodeKind::Dir) {
                    continue;
                }
                match node.kind {
                    NodeKind::Dir => {
                        let sub = node.subtree.ok_or_else(|| {
                            Error::Corrupt(format!("directory {} has no tree", here.display()))
                        })?;
                        todo.push((here.clone(), sub));
                        plan.dirs.push((here, node));
                    }
                    NodeKind::File => plan.files.push(PlannedFile { rel: here, node }),
                    NodeKind::Symlink => plan.symlinks.push((here, node)),
                }
            }
        }
        plan.dirs.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(plan)
    }

    /// Restores snapshot `id` (its tree `root`) into `target`.
    pub async fn restore(
        self: &Arc<Self>,
        root: Id,
        target: &Path,
        opts: &RestoreOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<RestoreSummary> {
        let include: Vec<Vec<String>> = opts
            .include
            .iter()
            .map(|i| {
                i.split('/')
                    .filter(|c| !c.is_empty() && *c != ".")
                    .map(str::to_string)
                    .collect()
            })
            .collect();
        // Everything is read and checked before the first write.
        let plan = self.plan(root, &include).await?;
        if target.exists() {
            let meta =
                std::fs::symlink_metadata(target).ctx("reading the restore target", target)?;
            if !meta.is_dir() {
                return Err(Error::InvalidInput(format!(
                    "restore target {} is not a directory",
                    target.display()
                )));
            }
            let non_empty = std::fs::read_dir(target)
                .ctx("listing the restore target", target)?
                .next()
                .is_some();
            if non_empty && !opts.overwrite {
                return Err(Error::TargetNotEmpty(target.to_path_buf()));
            }
        }
        std::fs::create_dir_all(target).ctx("creating the restore target", target)?;
        let mut summary = RestoreSummary::default();
        for (rel, _) in &plan.dirs {
            make_dir(&target.join(rel))?;
            summary.dirs += 1;
        }
        let total: u64 = plan.files.iter().map(|f| f.node.size).sum();
        progress.phase("restore", Some(total));

        // Decide per file: reuse what is there, or write a temporary file to fill.
        let repo = self.clone();
        let chunker = self.config.chunker;
        let mut temps: Vec<Option<(PathBuf, std::fs::File)>> = Vec::new();
        let mut wanted: HashMap<Id, Vec<(usize, u64)>> = HashMap::new();
        for (i, f) in plan.files.iter().enumerate() {
            let dest = target.join(&f.rel);
            if opts.overwrite && same_content(&repo, &dest, &f.node, chunker) {
                summary.files_reused += 1;
                progress.advance(f.node.size);
                temps.push(None);
                continue;
            }
            let tmp = dest.with_file_name(format!(
                ".{}.lifeboat-restore-{}",
                f.rel.file_name().unwrap().to_string_lossy(),
                std::process::id()
            ));
            let file = std::fs::File::create(&tmp).ctx("creating", &tmp)?;
            file.set_len(f.node.size).ctx("sizing", &tmp)?;
            let mut off = 0u64;
            for id in &f.node.content {
                let loc = self.index.read().unwrap().blobs.get(id).copied();
                let loc = loc.ok_or_else(|| {
                    Error::Corrupt(format!(
                        "{} needs blob {id:?}, which no index names",
                        f.rel.display()
                    ))
                })?;
                wanted.entry(*id).or_default().push((i, off));
                off += u64::from(loc.raw_length);
            }
            if off != f.node.size {
                return Err(Error::Corrupt(format!(
                    "{}: its chunks add up to {off} bytes, not {}",
                    f.rel.display(),
                    f.node.size
                )));
            }
            temps.push(Some((tmp, file)));
            summary.files_written += 1;
        }
        // Blobs are grouped by pack so each pack is fetched once.
        let mut by_pack: HashMap<Id, Vec<Id>> = HashMap::new();
        {
            let index = self.index.read().unwrap();
            for id in wanted.keys() {
                by_pack.entry(index.blobs[id].pack).or_default().push(*id);
            }
        }
        summary.packs_read = by_pack.len() as u64;
        let exact = wanted;
        let temps = Arc::new(temps);
        let exact = Arc::new(exact);
        let results: Vec<Result<u64>> = futures::stream::iter(by_pack)
            .map(|(pack, ids)| {
                let repo = repo.clone();
                let temps = temps.clone();
                let exact = exact.clone();
                let progress = progress.clone();
                async move {
                    let bytes = repo
                        .dests
                        .get(&pack_key(&pack), |b| Id::of_object(b) == pack)
                        .await?;
                    tokio::task::spawn_blocking(move || {
                        let mut written = 0;
                        for id in ids {
                            let loc = repo.index.read().unwrap().blobs[&id];
                            let s = loc.offset as usize;
                            let e = s + loc.length as usize;
                            let data = bytes
                                .get(s..e)
                                .and_then(|b| repo.keys.unpack_payload(b, b"", MAX_BLOB_LEN))
                                .filter(|d| repo.keys.blob_id(d) == id)
                                .ok_or_else(|| {
                                    Error::Corrupt(format!(
                                        "blob {id:?} in pack {pack:?} does not match its id"
                                    ))
                                })?;
                            for (fi, off) in &exact[&id] {
                                let (path, file) = temps[*fi].as_ref().expect("planned");
                                file.write_all_at(&data, *off).ctx("writing", path)?;
                                written += data.len() as u64;
                                progress.advance(data.len() as u64);
                            }
                        }
                        Ok(written)
                    })
                    .await
                    .map_err(|e| Error::Corrupt(format!("restore worker failed: {e}")))?
                }
            })
            .buffer_unordered(4)
            .collect()
            .await;
        for r in results {
            summary.bytes_written += r?;
        }
        // Each file gets its real name only once fully written (rename of a temp file). One
        // syncfs at the end, instead of an fsync per file (slow for many small files), makes
        // the whole restore durable before it is reported done. A power loss before that may
        // leave files to restore again; file systems that order data before renames (ext4
        // with auto_da_alloc, xfs, btrfs) never show a partial file under a real name.
        let temps = Arc::try_unwrap(temps)
            .map_err(|_| Error::Corrupt("restore workers still running".into()))?;
        for (f, t) in plan.files.iter().zip(temps) {
            let dest = target.join(&f.rel);
            if let Some((tmp, file)) = t {
                set_file_meta(&file, &f.node).ctx("setting metadata of", &tmp)?;
                drop(file);
                remove_if_not_file(&dest)?;
                std::fs::rename(&tmp, &dest).ctx("renaming into place", &dest)?;
            } else {
                let file = std::fs::File::options()
                    .write(true)
                    .open(&dest)
                    .ctx("opening", &dest)?;
                set_file_meta(&file, &f.node).ctx("setting metadata of", &dest)?;
            }
        }
        for (rel, node) in &plan.symlinks {
            let dest = target.join(rel);
            if std::fs::symlink_metadata(&dest).is_ok() {
                remove_entry(&dest)?;
            }
            std::os::unix::fs::symlink(node.target.as_deref().unwrap_or(""), &dest)
                .ctx("creating the symlink", &dest)?;
            summary.symlinks += 1;
        }
        // Directory metadata last, deepest first, so writing inside does not change it.
        for (rel, node) in plan.dirs.iter().rev() {
            let dest = target.join(rel);
            let f = std::fs::File::open(&dest).ctx("opening", &dest)?;
            f.set_modified(to_time(node.mtime_ns))
                .ctx("setting the mtime of", &dest)?;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(node.mode))
                .ctx("setting permissions of", &dest)?;
        }
        let root = std::fs::File::open(target).ctx("opening", target)?;
        nix::unistd::syncfs(&root).map_err(|e| Error::Io {
            action: "flushing the restored files to disk under",
            path: target.to_path_buf(),
            source: e.into(),
        })?;
        Ok(summary)
    }
}

fn to_time(ns: i128) -> std::time::SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos((-ns) as u64)
    }
}

fn set_file_meta(file: &std::fs::File, node: &Node) -> std::io::Result<()> {
    file.set_permissions(std::fs::Permissions::from_mode(node.mode))?;
    file.set_modified(to_time(node.mtime_ns))
}

fn make_dir(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            // Make sure we can write inside even if a previous restore made it read-only.
            let mode = m.permissions().mode() | 0o700;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .ctx("making writable", path)
        }
        Ok(_) => {
            remove_entry(path)?;
            std::fs::create_dir(path).ctx("creating", path)
        }
        Err(_) => std::fs::create_dir(path).ctx("creating", path),
    }
}

fn remove_entry(path: &Path) -> Result<()> {
    let m = std::fs::symlink_metadata(path).ctx("reading", path)?;
    if m.is_dir() {
        std::fs::remove_dir_all(path).ctx("removing", path)
    } else {
        std::fs::remove_file(path).ctx("removing", path)
    }
}

fn remove_if_not_file(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.is_file() => remove_entry(path),
        _ => Ok(()),
    }
}

/// Whether `path` is a regular file whose content has exactly the chunk ids of `node`.
fn same_content(
    repo: &Repository,
    path: &Path,
    node: &Node,
    p: crate::format::ChunkerParams,
) -> bool {
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !m.is_file() || m.len() != node.size {
        return false;
    }
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    match crate::writer::chunk_ids(&repo.keys, p, file, m.len()) {
        Ok(ids) => ids == node.content,
        Err(_) => false,
    }
}
