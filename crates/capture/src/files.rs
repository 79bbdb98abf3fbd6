//! Recording changes to the files under one data dir (uploads and the like).
//!
//! Change notifications (`notify`, inotify on Linux) say *where* to look soon; a periodic
//! full rescan guarantees nothing is missed when notifications overflow or capture was not
//! running. Either way a file is only recorded after comparing it with the manifest
//! (size, mtime, ctime, inode) and hashing its content, so a record always names real
//! content. Records carry strictly increasing seqs; [`state_at`] folds them back into the
//! set of files as of any seq.
//!
//! It never modifies the data dir. Symlinks and special files are not followed or recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, TryRecvError, channel};
use std::time::{Duration, Instant};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::durable::write_atomically;
use crate::error::{CaptureError, Result, io_err};
use crate::record::{FileChange, FileChangeKind};

/// Version of the manifest file layout.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// What capture last recorded about one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Status-change time, nanoseconds since the epoch (catches rewrites that restore mtime).
    pub ctime_ns: i128,
    /// Inode number (catches replacement by rename).
    pub inode: u64,
    /// blake3 of the content, hex.
    pub hash: String,
}

/// Every file capture knows under the data dir, and the last seq it handed out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileManifest {
    /// Layout version ([`MANIFEST_FORMAT_VERSION`]).
    pub version: u32,
    /// Session number of the capture that wrote it (bumped at each start).
    pub epoch: u64,
    /// Last seq handed out.
    pub last_seq: u64,
    /// Files by path relative to the data dir, `/`-separated.
    pub files: BTreeMap<String, FileEntry>,
}

impl FileManifest {
    /// Loads a manifest saved by [`FileManifest::save`]; `None` if there is none.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path, "read")(e)),
        };
        let m: FileManifest =
            serde_json::from_slice(&bytes).map_err(|e| CaptureError::BadPositionFile {
                path: path.to_path_buf(),
                problem: e.to_string(),
            })?;
        if m.version != MANIFEST_FORMAT_VERSION {
            return Err(CaptureError::BadPositionFile {
                path: path.to_path_buf(),
                problem: format!("unknown manifest version {}", m.version),
            });
        }
        Ok(Some(m))
    }

    /// Saves atomically and durably.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomically(
            path,
            &serde_json::to_vec(self).expect("manifest is plain data"),
        )
    }
}

/// Tuning for [`FileCapture`].
#[derive(Debug, Clone)]
pub struct FileCaptureOptions {
    /// How often [`FileCapture::poll`] walks the whole dir regardless of notifications.
    pub rescan_interval: Duration,
    /// Use change notifications (off: rely on rescans alone).
    pub watch: bool,
}

impl Default for FileCaptureOptions {
    fn default() -> Self {
        FileCaptureOptions {
            rescan_interval: Duration::from_secs(60),
            watch: true,
        }
    }
}

/// Continuous capture of the files under one data dir.
pub struct FileCapture {
    root: PathBuf,
    manifest_path: PathBuf,
    manifest: FileManifest,
    durable_seq: u64,
    options: FileCaptureOptions,
    _watcher: Option<RecommendedWatcher>,
    events: Option<Receiver<notify::Result<notify::Event>>>,
    dirty: BTreeSet<String>,
    rescan_due: Option<Instant>,
    /// The data dir did not exist when last looked for (see [`FileCapture::is_missing`]).
    missing: bool,
}

/// One file as of a seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    /// Size in bytes.
    pub size: u64,
    /// blake3 of the content, hex.
    pub hash: String,
}

/// The files under the data dir as of `seq`: the last change of each path at or before it.
pub fn state_at(changes: &[FileChange], seq: u64) -> BTreeMap<String, FileState> {
    let mut files = BTreeMap::new();
    for c in changes.iter().filter(|c| c.seq <= seq) {
        match &c.change {
            FileChangeKind::Written { size, hash } => {
                files.insert(
                    c.path.clone(),
                    FileState {
                        size: *size,
                        hash: hash.clone(),
                    },
                );
            }
            FileChangeKind::Deleted => {
                files.remove(&c.path);
            }
        }
    }
    files
}

/// blake3 of a file's content, hex.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize().to_hex().to_string());
        }
        hasher.update(&buf[..n]);
    }
}

fn nanos(secs: i64, nsec: i64) -> i128 {
    i128::from(secs) * 1_000_000_000 + i128::from(nsec)
}

impl FileCapture {
    /// Starts watching `root`, resuming from the manifest at `manifest_path` (the state
    /// as of the last confirmed record; none the first time). The first
    /// [`poll`](Self::poll) rescans and records every difference from it. A `root` that
    /// does not exist yet is captured as empty until it does ([`is_missing`](Self::is_missing)
    /// says so, for the caller to report).
    pub fn start(root: &Path, manifest_path: &Path, options: FileCaptureOptions) -> Result<Self> {
        let mut manifest = FileManifest::load(manifest_path)?.unwrap_or(FileManifest {
            version: MANIFEST_FORMAT_VERSION,
            ..Default::default()
        });
        // A new session number, durable before anything is handed out, so records this
        // session repeats after a crash of the last one replace the last one's.
        manifest.epoch += 1;
        manifest.save(manifest_path)?;
        let mut capture = FileCapture {
            root: root.to_path_buf(),
            manifest_path: manifest_path.to_path_buf(),
            durable_seq: manifest.last_seq,
            manifest,
            options,
            _watcher: None,
            events: None,
            dirty: BTreeSet::new(),
            rescan_due: None,
            missing: true,
        };
        capture.look_for_root()?;
        Ok(capture)
    }

    /// Whether the data dir did not exist when capture last looked. A missing dir is
    /// captured as an empty one (its known files are recorded deleted) until it is
    /// created; the first poll after that records everything in it.
    pub fn is_missing(&self) -> bool {
        self.missing
    }

    /// While the data dir is missing: checks whether it exists now and, if it does,
    /// starts watching it and asks for a full rescan.
    fn look_for_root(&mut self) -> Result<()> {
        let root = match fs::canonicalize(&self.root) {
            Ok(root) => root,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&self.root, "open the data dir")(e)),
        };
        if self.options.watch {
            let (tx, rx) = channel();
            let mut w = notify::recommended_watcher(move |e| {
                let _ = tx.send(e);
            })
            .map_err(|e| io_err(&root, "watch")(std::io::Error::other(e)))?;
            w.watch(&root, RecursiveMode::Recursive)
                .map_err(|e| io_err(&root, "watch")(std::io::Error::other(e)))?;
            self._watcher = Some(w);
            self.events = Some(rx);
        }
        self.root = root;
        self.missing = false;
        self.rescan_due = None;
        Ok(())
    }

    /// The manifest as of the last record handed out.
    pub fn manifest(&self) -> &FileManifest {
        &self.manifest
    }

    /// Records that every change up to `seq` is durable in the vault. The manifest is
    /// saved when that covers every change handed out (it describes only that state), so
    /// a restart resumes from there and never skips a change.
    pub fn confirm_durable(&mut self, seq: u64) -> Result<()> {
        if seq > self.manifest.last_seq {
            return Err(CaptureError::UnknownSeq {
                seq,
                last: self.manifest.last_seq,
            });
        }
        if seq == self.manifest.last_seq && seq > self.durable_seq {
            self.manifest.save(&self.manifest_path)?;
            self.durable_seq = seq;
        }
        Ok(())
    }

    /// Records what changed since the last call: the paths notifications pointed at, or
    /// the whole dir when a rescan is due (first call, interval elapsed, or notifications
    /// overflowed).
    pub fn poll(&mut self) -> Result<Vec<FileChange>> {
        if self.missing {
            self.look_for_root()?;
        }
        let mut overflow = false;
        if let Some(rx) = &self.events {
            loop {
                match rx.try_recv() {
                    Ok(Ok(event)) => {
                        overflow |= event.need_rescan();
                        for p in event.paths {
                            if let Ok(rel) = p.strip_prefix(&self.root) {
                                self.dirty.insert(rel_string(rel));
                            }
                        }
                    }
                    Ok(Err(_)) | Err(TryRecvError::Disconnected) => {
                        overflow = true;
                        break;
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
        }
        if overflow || self.rescan_due.is_none_or(|due| Instant::now() >= due) {
            return self.rescan();
        }
        let dirty = std::mem::take(&mut self.dirty);
        let mut out = Vec::new();
        for rel in collapse(dirty) {
            self.check_subtree(&rel, &mut out)?;
        }
        Ok(out)
    }

    /// Walks the whole dir now and records every difference from the manifest.
    pub fn rescan(&mut self) -> Result<Vec<FileChange>> {
        self.dirty.clear();
        let mut out = Vec::new();
        self.check_subtree("", &mut out)?;
        self.rescan_due = Some(Instant::now() + self.options.rescan_interval);
        Ok(out)
    }

    /// Compares everything at or under `rel` ("" = the root) with the manifest.
    fn check_subtree(&mut self, rel: &str, out: &mut Vec<FileChange>) -> Result<()> {
        let mut seen = BTreeMap::new();
        let start = if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        };
        walk(&start, rel, &mut seen)?;
        let prefix = format!("{rel}/");
        let known: Vec<String> = self
            .manifest
            .files
            .keys()
            .filter(|k| rel.is_empty() || *k == rel || k.starts_with(&prefix))
            .cloned()
            .collect();
        for path in known {
            if !seen.contains_key(&path) {
                self.manifest.files.remove(&path);
                self.push(out, path, FileChangeKind::Deleted);
            }
        }
        for (path, meta) in seen {
            let unchanged = self.manifest.files.get(&path).is_some_and(|e| {
                e.size == meta.size()
                    && e.inode == meta.ino()
                    && e.mtime_ns == nanos(meta.mtime(), meta.mtime_nsec())
                    && e.ctime_ns == nanos(meta.ctime(), meta.ctime_nsec())
            });
            if unchanged {
                continue;
            }
            let full = self.root.join(&path);
            let hash = match hash_file(&full) {
                Ok(h) => h,
                // Gone or replaced while hashing: its notification brings us back.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(full, "hash")(e)),
            };
            let same_content = self
                .manifest
                .files
                .get(&path)
                .is_some_and(|e| e.hash == hash);
            let entry = FileEntry {
                size: meta.size(),
                mtime_ns: nanos(meta.mtime(), meta.mtime_nsec()),
                ctime_ns: nanos(meta.ctime(), meta.ctime_nsec()),
                inode: meta.ino(),
                hash: hash.clone(),
            };
            self.manifest.files.insert(path.clone(), entry);
            if !same_content {
                self.push(
                    out,
                    path,
                    FileChangeKind::Written {
                        size: meta.size(),
                        hash,
                    },
                );
            }
        }
        Ok(())
    }

    fn push(&mut self, out: &mut Vec<FileChange>, path: String, change: FileChangeKind) {
        self.manifest.last_seq += 1;
        out.push(FileChange {
            epoch: self.manifest.epoch,
            seq: self.manifest.last_seq,
            path,
            change,
            observed_at: OffsetDateTime::now_utc(),
        });
    }
}

fn rel_string(rel: &Path) -> String {
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Drops paths already covered by a dirty ancestor.
fn collapse(dirty: BTreeSet<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in dirty {
        if !out
            .iter()
            .any(|a| a.is_empty() || p == *a || p.starts_with(&format!("{a}/")))
        {
            out.push(p);
        }
    }
    out
}

/// Collects regular files at or under `dir` (relative names prefixed with `rel`).
fn walk(path: &Path, rel: &str, seen: &mut BTreeMap<String, fs::Metadata>) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path, "inspect")(e)),
    };
    if meta.is_file() {
        seen.insert(rel.to_string(), meta);
    } else if meta.is_dir() {
        let entries = match fs::read_dir(path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(path, "list")(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(path, "list"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            walk(&entry.path(), &child, seen)?;
        }
    }
    Ok(())
}
