//! Restoring a site as of a moment, and listing the moments that can be restored.
//!
//! One consistent cut: the newest checkpoint at or before T, then the segments after it
//! up to T. Each database is rebuilt with capture's replay as of its last transaction
//! seen at or before T; each data dir holds its files as of T; the manifest is the one of
//! the checkpoint. Everything is built in a staging directory beside the destination,
//! fsynced, checked (`PRAGMA integrity_check`, content hashes), and only then renamed into
//! place, so a crash leaves either nothing or the whole restored site.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use lifeboat_capture::record::resolve_history;
use lifeboat_capture::replay::{RebuildTarget, integrity_check, rebuild};
use lifeboat_capture::{BaseImageRecord, Record};
use lifeboat_vault::{NoProgress, Repository, RestoreOptions};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::checkpoint::{self, apply_file_changes};
use crate::error::{Result, TimelineError, io_err};
use crate::store::fetch;
use crate::stream;
use crate::types::CheckpointInfo;

/// Which moment to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreTarget {
    /// As of this time: every transaction and file change seen at or before it.
    Time(OffsetDateTime),
    /// Everything stored.
    Latest,
}

/// One database as restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredDatabase {
    /// Path relative to the site dir.
    pub name: String,
    /// Capture seq of its last transaction included.
    pub capture_seq: u64,
    /// Transactions replayed on top of its base image.
    pub commits_applied: usize,
}

/// What [`restore_site`] produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReport {
    /// The moment restored (the target time, or the last segment's cut for `Latest`).
    #[serde(with = "time::serde::rfc3339")]
    pub restored_time: OffsetDateTime,
    /// The checkpoint started from.
    pub checkpoint: CheckpointInfo,
    /// The last timeline segment read.
    pub last_segment_seq: u64,
    /// Every database restored (each passed `PRAGMA integrity_check`).
    pub databases: Vec<RestoredDatabase>,
    /// Data-dir files restored (each verified against its blake3).
    pub files: u64,
    /// Their bytes.
    pub file_bytes: u64,
    /// Whether the manifest was restored.
    pub manifest: bool,
}

/// A run of consecutive segments and the time they cover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRange {
    /// First seq.
    pub first_seq: u64,
    /// Last seq.
    pub last_seq: u64,
    /// Start of the time covered.
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    /// End of the time covered.
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
}

/// The moments a site can be restored to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RestorePoints {
    /// Checkpoints, oldest first.
    pub checkpoints: Vec<CheckpointInfo>,
    /// Segments, in runs without gaps, oldest first: any time inside a run after the
    /// first checkpoint is restorable.
    pub segments: Vec<SegmentRange>,
}

/// Lists checkpoints and the time ranges segments cover (for `lifeboat timeline`).
pub async fn list_restore_points(repo: &Repository) -> Result<RestorePoints> {
    let checkpoints = checkpoint::list(repo)
        .await?
        .into_iter()
        .map(|(_, i)| i)
        .collect();
    let mut segments: Vec<SegmentRange> = Vec::new();
    let listing = stream::listing(repo).await?;
    stream::read_from(repo, &listing, 0, |seg| {
        match segments.last_mut() {
            Some(r) if r.last_seq + 1 == seg.seq => {
                r.last_seq = seg.seq;
                r.to = r.to.max(seg.cut_at);
            }
            _ => segments.push(SegmentRange {
                first_seq: seg.seq,
                last_seq: seg.seq,
                from: seg.after,
                to: seg.cut_at,
            }),
        }
        Ok(true)
    })
    .await?;
    Ok(RestorePoints {
        checkpoints,
        segments,
    })
}

fn safe_rel(name: &str) -> Result<PathBuf> {
    let p = Path::new(name);
    if name.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(TimelineError::Damaged {
            what: "timeline".into(),
            why: format!("path {name:?} is not a plain relative path"),
        });
    }
    Ok(p.to_path_buf())
}

fn sync_dir(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", path))
}

/// Restores the site as of `target` into `into`, which must not exist or be empty.
pub async fn restore_site(
    repo: &Arc<Repository>,
    target: RestoreTarget,
    into: &Path,
) -> Result<RestoreReport> {
    if let Ok(mut entries) = std::fs::read_dir(into)
        && entries.next().is_some()
    {
        return Err(TimelineError::NotEmpty(into.to_path_buf()));
    }
    repo.reload_index().await?;
    let checkpoints = checkpoint::list(repo).await?;
    if checkpoints.is_empty() {
        return Err(TimelineError::NothingCaptured);
    }
    let now = OffsetDateTime::now_utc();
    let t = match target {
        RestoreTarget::Time(t) if t > now => {
            return Err(TimelineError::InFuture { target: t, now });
        }
        RestoreTarget::Time(t) => t,
        RestoreTarget::Latest => now,
    };
    let Some((entry, info)) = checkpoints.iter().rev().find(|(_, i)| i.time <= t) else {
        return Err(TimelineError::BeforeFirstCapture {
            target: t,
            first: checkpoints[0].1.time,
        });
    };
    let meta = checkpoint::read_meta(repo, entry).await?;
    // The segments from the checkpoint's on that hold anything seen at or before t.
    let mut segments = Vec::new();
    // From segment S itself: it may hold commits after the checkpoint's base image (when
    // the image was taken earlier and stored late); replay skips what the image holds.
    let mut expected = meta.seq;
    let mut last_time = meta.time;
    let listing = stream::listing(repo).await?;
    let mut gap = None;
    stream::read_from(repo, &listing, meta.seq, |seg| {
        if seg.seq != expected {
            gap = Some(expected);
            return Ok(false);
        }
        if seg.after > t {
            return Ok(false);
        }
        last_time = seg.cut_at;
        expected = seg.seq + 1;
        segments.push(seg);
        Ok(true)
    })
    .await?;
    if let Some(seq) = gap {
        return Err(TimelineError::MissingSegment {
            seq,
            after: last_time,
        });
    }
    let restored_time = match target {
        RestoreTarget::Latest => last_time,
        RestoreTarget::Time(_) => t,
    };
    let mut contents = meta.contents.clone();
    let mut inline: BTreeMap<&str, &[u8]> = BTreeMap::new();
    let mut by_source: BTreeMap<&str, Vec<Record>> = BTreeMap::new();
    for seg in &segments {
        contents.extend(seg.contents.clone());
        for (hash, bytes) in &seg.inline {
            inline.insert(hash.as_str(), bytes.as_slice());
        }
        for (name, records) in &seg.sources {
            by_source
                .entry(name.as_str())
                .or_default()
                .extend(records.iter().cloned());
        }
    }

    let name = into
        .file_name()
        .ok_or_else(|| TimelineError::Invalid(format!("{} has no file name", into.display())))?
        .to_string_lossy()
        .into_owned();
    let parent = match into.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    let staging = parent.join(format!(".{name}.restore-partial"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io_err("remove the leftover", &staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io_err("create", &staging))?;
    let scratch = staging.join(".lifeboat-restore-scratch");
    std::fs::create_dir_all(&scratch).map_err(io_err("create", &scratch))?;
    // The checkpoint in one go (the vault reads whole packs and verifies every chunk).
    let cut = scratch.join("checkpoint");
    repo.restore(
        entry.snapshot.tree,
        &cut,
        &RestoreOptions::default(),
        Arc::new(NoProgress),
    )
    .await?;

    let mut databases = Vec::new();
    for (i, db) in meta.databases.iter().enumerate() {
        let mut records = vec![Record::BaseImage(db.base.clone())];
        records.extend(by_source.remove(db.name.as_str()).unwrap_or_default());
        let history = resolve_history(records);
        let base: BaseImageRecord = history
            .iter()
            .filter_map(|r| match r {
                Record::BaseImage(b) if b.taken_at <= t => Some(b.clone()),
                _ => None,
            })
            .next_back()
            .unwrap_or_else(|| db.base.clone());
        let content =
            contents
                .get(&base.image_hash)
                .ok_or_else(|| TimelineError::MissingContent {
                    hash: base.image_hash.clone(),
                    what: format!("base image of {}", db.name),
                })?;
        let image = if base == db.base {
            cut.join(safe_rel(&db.name)?)
        } else {
            let image = scratch.join(format!("db-{i}.image"));
            fetch(repo, &base.image_hash, content, &db.name, &image).await?;
            image
        };
        let out = staging.join(safe_rel(&db.name)?);
        if let Some(p) = out.parent() {
            std::fs::create_dir_all(p).map_err(io_err("create", p))?;
        }
        let report =
            rebuild(&image, &base, &history, RebuildTarget::Time(t), &out).map_err(|error| {
                TimelineError::Capture {
                    what: db.name.clone(),
                    error: Box::new(error),
                }
            })?;
        integrity_check(&out).map_err(|e| TimelineError::IntegrityCheckFailed {
            path: out.clone(),
            report: e.to_string(),
        })?;
        std::fs::remove_file(&image).map_err(io_err("remove", &image))?;
        databases.push(RestoredDatabase {
            name: db.name.clone(),
            capture_seq: report.seq,
            commits_applied: report.commits_applied,
        });
    }

    let (mut files, mut file_bytes) = (0u64, 0u64);
    for dir in &meta.dirs {
        let records = by_source.remove(dir.name.as_str()).unwrap_or_default();
        let changes: Vec<_> = resolve_history(records)
            .into_iter()
            .filter_map(|r| match r {
                Record::File(c) if c.seq > dir.last_seq && c.observed_at <= t => Some(c),
                _ => None,
            })
            .collect();
        let mut state = dir.files.clone();
        apply_file_changes(&mut state, &changes);
        let root = staging.join(safe_rel(&dir.name)?);
        let from = cut.join(safe_rel(&dir.name)?);
        if from.is_dir() {
            if let Some(p) = root.parent() {
                std::fs::create_dir_all(p).map_err(io_err("create", p))?;
            }
            std::fs::rename(&from, &root).map_err(io_err("move into place", &root))?;
        } else {
            std::fs::create_dir_all(&root).map_err(io_err("create", &root))?;
        }
        // Files the checkpoint had that are gone or different at t.
        for (path, hash) in &dir.files {
            if state.get(path) != Some(hash) {
                let p = root.join(safe_rel(path)?);
                std::fs::remove_file(&p).map_err(io_err("remove the outdated", &p))?;
            }
        }
        for (path, hash) in &state {
            if dir.files.get(path) == Some(hash) {
                files += 1;
                file_bytes += contents.get(hash).map_or(0, |c| c.size);
                continue;
            }
            let out = root.join(safe_rel(path)?);
            if let Some(p) = out.parent() {
                std::fs::create_dir_all(p).map_err(io_err("create", p))?;
            }
            files += 1;
            if let Some(bytes) = inline.get(hash.as_str()) {
                // Checked against its blake3 when the segment was decoded.
                write_new_file(&out, bytes)?;
                file_bytes += bytes.len() as u64;
                continue;
            }
            let content = contents
                .get(hash)
                .ok_or_else(|| TimelineError::MissingContent {
                    hash: hash.clone(),
                    what: format!("{}/{}", dir.name, path),
                })?;
            fetch(repo, hash, content, path, &out).await?;
            file_bytes += content.size;
        }
    }

    let mut manifest = false;
    if let Some((name, hash)) = &meta.manifest {
        let from = cut.join(safe_rel(name)?);
        let bytes = std::fs::read(&from).map_err(|_| TimelineError::MissingContent {
            hash: hash.clone(),
            what: name.clone(),
        })?;
        if blake3::hash(&bytes).to_hex().as_str() != hash {
            return Err(TimelineError::Damaged {
                what: name.clone(),
                why: "its content does not match its recorded hash".into(),
            });
        }
        let out = staging.join(safe_rel(name)?);
        write_new_file(&out, &bytes)?;
        manifest = true;
    }

    std::fs::remove_dir_all(&scratch).map_err(io_err("remove", &scratch))?;
    sync_tree(&staging)?;
    if into.exists() {
        std::fs::remove_dir(into).map_err(io_err("replace the empty directory", into))?;
    }
    std::fs::rename(&staging, into).map_err(io_err("move the restored site to", into))?;
    sync_dir(parent)?;
    Ok(RestoreReport {
        restored_time,
        checkpoint: info.clone(),
        last_segment_seq: expected - 1,
        databases,
        files,
        file_bytes,
        manifest,
    })
}

fn write_new_file(out: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    if let Some(p) = out.parent() {
        std::fs::create_dir_all(p).map_err(io_err("create", p))?;
    }
    let mut f = std::fs::File::create(out).map_err(io_err("create", out))?;
    f.write_all(bytes).map_err(io_err("write", out))?;
    f.sync_all().map_err(io_err("fsync", out))
}

/// Fsyncs every directory under `root` (files were fsynced as they were written).
fn sync_tree(root: &Path) -> Result<()> {
    for entry in std::fs::read_dir(root).map_err(io_err("list", root))? {
        let entry = entry.map_err(io_err("list", root))?;
        if entry
            .file_type()
            .map_err(io_err("stat", entry.path()))?
            .is_dir()
        {
            sync_tree(&entry.path())?;
        }
    }
    sync_dir(root)
}
