//! Restoring a snapshot (or part of it) into a directory. Entry names in a snapshot are
//! untrusted input: the whole tree is checked before anything is written, so a crafted
//! snapshot cannot make restore write outside the target.
//!
//! Data flows pack by pack: each pack is fetched once, with one ranged read covering the blobs
//! the restore needs; its blobs are decrypted in place, decompressed into a reused buffer,
//! checked against their ids and written with positional writes straight into their files.
//! Several packs are in flight at once, so fetching, opening blobs (on every core) and writing
//! overlap; memory holds at most those packs. A file is created under a temporary name when
//! its first piece arrives and renamed into place, with its metadata, as soon as its last piece
//! is written. A blob whose copy fails its check is read again from the other destinations.
//! Files already present with identical content are kept.
//!
//! The target may be writable by other local users: temporary names are random and created
//! exclusively, nothing is opened through a link, and ownership and set-id bits follow the
//! rule in [`fs`].
mod fs;

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use rayon::prelude::*;

use crate::backup::Progress;
use crate::crypto::{Id, Unpacker};
use crate::error::{Error, IoContext, Result};
use crate::format::{Node, NodeKind};
use crate::repo::{BlobLocation, Repository, pack_key};
use fs::Owners;

/// Files kept open at once while partly written; past this, a file is closed after each
/// write and reopened for the next, so a snapshot of any size needs few descriptors.
const MAX_OPEN_FILES: usize = 256;

/// Packs fetched and being opened at once (memory holds about this many packs).
fn packs_in_flight() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (2 * cores).clamp(4, 16)
}

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

/// Where one blob's plaintext goes: file `file` (index in the plan) at `offset`.
#[derive(Clone, Copy)]
struct Piece {
    file: usize,
    offset: u64,
}

/// The state of a file being written.
enum Handle {
    /// Not created yet.
    Absent,
    /// Created under its temporary name and open.
    Open(Arc<std::fs::File>),
    /// Created under its temporary name, closed (reopened for the next piece).
    Closed,
    /// Renamed into place.
    Done,
}

struct OutFile {
    tmp: PathBuf,
    dest: PathBuf,
    /// Pieces still to write; whoever writes the last one finishes the file.
    left: AtomicUsize,
    handle: Mutex<Handle>,
}

/// Everything the pack workers share.
struct Job {
    repo: Arc<Repository>,
    files: Vec<PlannedFile>,
    /// Per planned file; `None` for a file kept as it was.
    outs: Vec<Option<OutFile>>,
    pieces: HashMap<Id, Vec<Piece>>,
    open_files: AtomicUsize,
    /// Past this many open files, a partly written file is closed after each write.
    max_open: usize,
    overwrite: bool,
    /// Whose files this restore can make (decides ownership and set-id bits).
    owners: Owners,
    /// Set on the first error: workers stop taking new work.
    stop: AtomicBool,
    written: AtomicU64,
    progress: Arc<dyn Progress>,
}

impl Job {
    /// Fetches the needed part of one pack and writes every blob of it where it belongs.
    async fn restore_pack(self: Arc<Self>, pack: Id, blobs: Vec<(Id, BlobLocation)>) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let base = blobs[0].1.offset;
        let end = blobs
            .iter()
            .map(|(_, l)| l.offset + u64::from(l.length))
            .max()
            .expect("a pack is fetched for at least one blob");
        let mut buf = self
            .repo
            .dests
            .get_range_first(&pack_key(&pack), base, end - base)
            .await?;
        let job = self.clone();
        let failed = tokio::task::spawn_blocking(move || job.open_pack(&mut buf, base, &blobs))
            .await
            .map_err(worker_failed)??;
        // Copies that failed their check: read each blob again, from the other destinations.
        for id in failed {
            let plain = self.repo.read_blob(&id).await?;
            let job = self.clone();
            tokio::task::spawn_blocking(move || job.place(&id, &plain))
                .await
                .map_err(worker_failed)??;
        }
        Ok(())
    }

    /// Opens the blobs of a fetched pack range (`buf` starts at pack offset `base`) in place
    /// and writes them. Returns the blobs whose copy failed its check.
    fn open_pack(
        &self,
        buf: &mut [u8],
        base: u64,
        blobs: &[(Id, BlobLocation)],
    ) -> Result<Vec<Id>> {
        let keys = &self.repo.keys;
        let mut unpacker = Unpacker::default();
        let mut failed = Vec::new();
        for (id, loc) in blobs {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let s = (loc.offset - base) as usize;
            let sealed = &mut buf[s..s + loc.length as usize];
            match keys.unpack_in_place(sealed, b"", loc.raw_length as usize, &mut unpacker) {
                Some(plain) if keys.blob_id(plain) == *id => self.place(id, plain)?,
                _ => failed.push(*id),
            }
        }
        Ok(failed)
    }

    /// Writes a checked blob to every place that needs it.
    fn place(&self, id: &Id, data: &[u8]) -> Result<()> {
        for p in &self.pieces[id] {
            self.write(p.file, p.offset, data)?;
        }
        Ok(())
    }

    fn write(&self, fi: usize, offset: u64, data: &[u8]) -> Result<()> {
        let out = self.outs[fi]
            .as_ref()
            .expect("pieces name only written files");
        let file = self.open(out)?;
        file.write_all_at(data, offset).ctx("writing", &out.tmp)?;
        self.written.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.progress.advance(data.len() as u64);
        if out.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            return self.finish(fi, out, &file);
        }
        if self.open_files.load(Ordering::Relaxed) > self.max_open {
            let mut h = out.handle.lock().unwrap();
            if matches!(*h, Handle::Open(_)) {
                *h = Handle::Closed;
                self.open_files.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// The open temporary file of `out`, created on first use.
    fn open(&self, out: &OutFile) -> Result<Arc<std::fs::File>> {
        let mut h = out.handle.lock().unwrap();
        let file = match &*h {
            Handle::Open(f) => return Ok(f.clone()),
            // Created exclusively under a random name: a link or file planted in the target
            // by someone else makes this fail instead of being written through.
            Handle::Absent => fs::create_private(&out.tmp).ctx("creating", &out.tmp)?,
            Handle::Closed => fs::open_existing(&out.tmp).ctx("reopening", &out.tmp)?,
            Handle::Done => {
                return Err(Error::Corrupt(format!(
                    "{} was written past its last piece",
                    out.dest.display()
                )));
            }
        };
        let file = Arc::new(file);
        *h = Handle::Open(file.clone());
        self.open_files.fetch_add(1, Ordering::Relaxed);
        Ok(file)
    }

    /// Gives a fully written file its metadata and its real name.
    fn finish(&self, fi: usize, out: &OutFile, file: &std::fs::File) -> Result<()> {
        {
            let mut h = out.handle.lock().unwrap();
            if matches!(*h, Handle::Open(_)) {
                self.open_files.fetch_sub(1, Ordering::Relaxed);
            }
            *h = Handle::Closed;
        }
        let node = &self.files[fi].node;
        fs::set_meta(file, node, self.owners, &out.dest)?;
        // Start writing the file back now (fadvise DONTNEED writes dirty pages out and drops
        // only clean ones), so the disk works while later files are opened and the final
        // syncfs has little left to wait for. Only a hint: failure changes nothing.
        if node.size > 0 {
            let _ = nix::fcntl::posix_fadvise(
                file,
                0,
                0,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
        }
        if self.overwrite {
            fs::remove_if_not_file(&out.dest)?;
        }
        std::fs::rename(&out.tmp, &out.dest).ctx("renaming into place", &out.dest)?;
        *out.handle.lock().unwrap() = Handle::Done;
        Ok(())
    }

    /// Writes the files that have no content at all.
    fn write_empty_files(&self) -> Result<()> {
        // Chosen by content, not by `left`: a file whose pieces are all written reaches 0 too.
        for (fi, out) in self.outs.iter().enumerate() {
            if let Some(out) = out
                && self.files[fi].node.content.is_empty()
            {
                if self.stop.load(Ordering::Relaxed) {
                    break;
                }
                let file = self.open(out)?;
                self.finish(fi, out, &file)?;
            }
        }
        Ok(())
    }

    /// Removes the temporary files of a restore that failed.
    fn remove_temporaries(&self) {
        for out in self.outs.iter().flatten() {
            if matches!(
                *out.handle.lock().unwrap(),
                Handle::Open(_) | Handle::Closed
            ) {
                let _ = std::fs::remove_file(&out.tmp);
            }
        }
    }
}

fn worker_failed(e: tokio::task::JoinError) -> Error {
    Error::Corrupt(format!("restore worker failed: {e}"))
}

impl Repository {
    async fn plan(&self, root: Id, include: &[Vec<String>]) -> Result<Plan> {
        let mut plan = Plan {
            dirs: Vec::new(),
            files: Vec::new(),
            symlinks: Vec::new(),
        };
        // Breadth first, a level's trees fetched concurrently.
        let mut level = vec![(PathBuf::new(), root)];
        while !level.is_empty() {
            let trees: Vec<Result<_>> = futures::stream::iter(std::mem::take(&mut level))
                .map(|(rel, id)| async move { Ok((rel, self.read_tree(&id).await?)) })
                .buffered(16)
                .collect()
                .await;
            for t in trees {
                let (rel, tree) = t?;
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
                            level.push((here.clone(), sub));
                            plan.dirs.push((here, node));
                        }
                        NodeKind::File => plan.files.push(PlannedFile { rel: here, node }),
                        NodeKind::Symlink => plan.symlinks.push((here, node)),
                    }
                }
            }
        }
        plan.dirs.sort_by(|a, b| a.0.cmp(&b.0));
        // Backups store files in path order, so packs are read in about the order they were
        // written and files complete early.
        plan.files.sort_by(|a, b| a.rel.cmp(&b.rel));
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
        self.restore_with(root, target, opts, progress, MAX_OPEN_FILES)
            .await
    }

    async fn restore_with(
        self: &Arc<Self>,
        root: Id,
        target: &Path,
        opts: &RestoreOptions,
        progress: Arc<dyn Progress>,
        max_open: usize,
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
        let owners = Owners::of_this_process();
        let mut summary = RestoreSummary::default();
        for (rel, _) in &plan.dirs {
            fs::make_dir(&target.join(rel))?;
            summary.dirs += 1;
        }
        let total: u64 = plan.files.iter().map(|f| f.node.size).sum();
        progress.phase("restore", Some(total));

        // Files already in the target with the same content are kept (checked on all cores).
        let files = plan.files;
        let (files, reuse) = if opts.overwrite {
            let repo = self.clone();
            let target = target.to_path_buf();
            tokio::task::spawn_blocking(move || {
                let chunker = repo.config.chunker;
                let reuse: Vec<bool> = files
                    .par_iter()
                    .map(|f| same_content(&repo, &target.join(&f.rel), &f.node, chunker))
                    .collect();
                (files, reuse)
            })
            .await
            .map_err(worker_failed)?
        } else {
            let n = files.len();
            (files, vec![false; n])
        };

        // Where each blob goes, and which packs hold them (each pack is read once).
        // Temporary names carry a random tag no other user can guess in advance.
        let tmp_tag = hex::encode(crate::crypto::random_bytes::<8>());
        let mut outs = Vec::with_capacity(files.len());
        let mut pieces: HashMap<Id, Vec<Piece>> = HashMap::new();
        let mut packs: HashMap<Id, Vec<(Id, BlobLocation)>> = HashMap::new();
        let mut pack_order = Vec::new();
        {
            let index = self.index.read().unwrap();
            for (i, (f, reused)) in files.iter().zip(&reuse).enumerate() {
                if *reused {
                    summary.files_reused += 1;
                    progress.advance(f.node.size);
                    outs.push(None);
                    continue;
                }
                let mut off = 0u64;
                for id in &f.node.content {
                    let loc = *index.blobs.get(id).ok_or_else(|| {
                        Error::Corrupt(format!(
                            "{} needs blob {id:?}, which no index names",
                            f.rel.display()
                        ))
                    })?;
                    let places = pieces.entry(*id).or_default();
                    if places.is_empty() {
                        let in_pack = packs.entry(loc.pack).or_default();
                        if in_pack.is_empty() {
                            pack_order.push(loc.pack);
                        }
                        in_pack.push((*id, loc));
                    }
                    places.push(Piece {
                        file: i,
                        offset: off,
                    });
                    off += u64::from(loc.raw_length);
                }
                if off != f.node.size {
                    return Err(Error::Corrupt(format!(
                        "{}: its chunks add up to {off} bytes, not {}",
                        f.rel.display(),
                        f.node.size
                    )));
                }
                let dest = target.join(&f.rel);
                outs.push(Some(OutFile {
                    tmp: dest.with_file_name(format!(".lifeboat-restore-{tmp_tag}-{i}")),
                    dest,
                    left: AtomicUsize::new(f.node.content.len()),
                    handle: Mutex::new(Handle::Absent),
                }));
                summary.files_written += 1;
            }
        }
        summary.packs_read = pack_order.len() as u64;
        let job = Arc::new(Job {
            repo: self.clone(),
            files,
            outs,
            pieces,
            open_files: AtomicUsize::new(0),
            max_open,
            overwrite: opts.overwrite,
            owners,
            stop: AtomicBool::new(false),
            written: AtomicU64::new(0),
            progress,
        });
        let empty = {
            let job = job.clone();
            tokio::task::spawn_blocking(move || job.write_empty_files())
        };
        let mut runs = futures::stream::iter(pack_order)
            .map(|pack| {
                let mut blobs = packs.remove(&pack).expect("listed");
                blobs.sort_by_key(|(_, l)| l.offset);
                job.clone().restore_pack(pack, blobs)
            })
            .buffer_unordered(packs_in_flight());
        let mut failure = None;
        // Every run is awaited, even after a failure, so no worker still writes when this
        // returns; after a failure they stop early.
        while let Some(r) = runs.next().await {
            if let Err(e) = r {
                job.stop.store(true, Ordering::Relaxed);
                failure.get_or_insert(e);
            }
        }
        drop(runs);
        match empty.await.map_err(worker_failed) {
            Ok(Ok(())) => {}
            Ok(Err(e)) | Err(e) => {
                failure.get_or_insert(e);
            }
        }
        if let Some(e) = failure {
            job.remove_temporaries();
            return Err(e);
        }
        summary.bytes_written = job.written.load(Ordering::Relaxed);

        // Each file got its real name only once fully written (rename of a temporary file).
        // One syncfs at the end, instead of an fsync per file (slow for many small files),
        // makes the whole restore durable before it is reported done. A power loss before
        // that may leave files to restore again; file systems that order data before
        // renames (ext4 with auto_da_alloc, xfs, btrfs) never show a partial file under a
        // real name.
        for (f, out) in job.files.iter().zip(&job.outs) {
            if out.is_none() {
                let dest = target.join(&f.rel);
                let file = fs::open_existing(&dest).ctx("opening", &dest)?;
                fs::set_meta(&file, &f.node, owners, &dest)?;
            }
        }
        // Links last: nothing this restore writes afterwards goes through a path that has a
        // link in it (the directories' metadata is set through descriptors opened without
        // following links).
        for (rel, node) in &plan.symlinks {
            let dest = target.join(rel);
            if std::fs::symlink_metadata(&dest).is_ok() {
                fs::remove_entry(&dest)?;
            }
            fs::make_symlink(&dest, node, owners)?;
            summary.symlinks += 1;
        }
        // Directory metadata last, deepest first, so writing inside does not change it.
        for (rel, node) in plan.dirs.iter().rev() {
            fs::set_dir_meta(&target.join(rel), node, owners)?;
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
    let Ok(file) = fs::open_for_reading(path) else {
        return false;
    };
    match crate::writer::chunk_ids(&repo.keys, p, file, m.len()) {
        Ok(ids) => ids == node.content,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackupOptions, KdfParams, NoProgress, OpenOptions};
    use rand::RngCore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_closed_and_reopened_between_pieces_restore_byte_for_byte() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let mut rng = rand::rng();
        let mut files = Vec::new();
        for i in 0..4 {
            let mut data = vec![0u8; 3_000_000 + i * 100_000];
            rng.fill_bytes(&mut data);
            files.push((format!("big-{i}.bin"), data));
        }
        // The same chunks several times in one file, and the same file twice.
        let mut block = vec![0u8; 1_500_000];
        rng.fill_bytes(&mut block);
        files.push(("repeated.bin".into(), block.repeat(4)));
        files.push(("copy-of-big-0.bin".into(), files[0].1.clone()));
        for (name, data) in &files {
            std::fs::write(src.join(name), data).unwrap();
        }
        std::fs::set_permissions(
            src.join("big-1.bin"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();

        let opts = OpenOptions {
            spool_dir: Some(t.path().join("spool")),
            kdf: Some(KdfParams::insecure_fast()),
            s3_credentials: None,
        };
        let dest = t.path().join("repo").to_string_lossy().into_owned();
        Repository::init(&[&dest], None, b"pw", &opts)
            .await
            .unwrap();
        let repo = Arc::new(Repository::open(&dest, b"pw", &opts).await.unwrap());
        let snap = repo
            .backup(&[&src], &BackupOptions::default(), Arc::new(NoProgress))
            .await
            .unwrap();
        let out = t.path().join("out");
        // A limit of 0 closes every partly written file after each piece.
        let summary = repo
            .restore_with(
                snap.snapshot.tree,
                &out,
                &RestoreOptions::default(),
                Arc::new(NoProgress),
                0,
            )
            .await
            .unwrap();
        assert_eq!(summary.files_written, files.len() as u64);
        for (name, data) in &files {
            assert!(
                std::fs::read(out.join(name)).unwrap() == *data,
                "{name} differs"
            );
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(out.join("big-1.bin"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), files.len(), "{names:?}");
    }
}
