//! Timeline checkpoints: a full consistent cut of the site (each database's base image,
//! every data-dir file, the manifest) stored as one vault snapshot tagged
//! [`CHECKPOINT_TAG`], consistent with one timeline segment.
//!
//! The snapshot's tree is the site's own layout, so a plain `lifeboat vault restore` of it
//! gives a usable copy; `.lifeboat-timeline/checkpoint.json` inside it says which segment
//! it is consistent with and names every content by blake3.

use std::collections::BTreeMap;

use lifeboat_capture::{BaseImageRecord, FileChange};
use lifeboat_vault::format::NodeKind;
use lifeboat_vault::{Repository, SnapshotEntry};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{Result, TimelineError};
use crate::segment::{Content, ContentMap};
use crate::shipper::Shipper;
use crate::store::{CONTENT_TAG, ContentWriter, Stored};
use crate::types::{CheckpointInfo, TimelineEvent};

/// Tag of checkpoint snapshots.
pub const CHECKPOINT_TAG: &str = "timeline-checkpoint";
/// Tag prefix giving the segment a snapshot is consistent with: `timeline-seq:<seq>`.
pub const SEQ_TAG_PREFIX: &str = "timeline-seq:";
/// Where the checkpoint's description lives inside its snapshot.
pub const META_DIR: &str = ".lifeboat-timeline";
const META_FILE: &str = "checkpoint.json";
const META_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DbCheckpoint {
    pub name: String,
    pub base: BaseImageRecord,
}

/// A MariaDB database's base backup in a checkpoint: its files are in the snapshot under
/// `name` (a prepared data dir plus `lifeboat-base.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MariaDbCheckpoint {
    pub name: String,
    /// The base holds exactly the transactions up to this GTID position.
    pub gtid_pos: String,
    #[serde(with = "time::serde::rfc3339")]
    pub taken_at: OffsetDateTime,
    /// path inside the base -> blake3.
    pub files: BTreeMap<String, String>,
    /// Capture had stopped at a gap before this base: the transactions between the gap and
    /// this base are not in the timeline (none in checkpoints without a gap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<GapRecord>,
    /// Capture's last seq handed out when the base was started, and its session: every
    /// transaction up to it is in the base (0 in checkpoints written before it was recorded).
    #[serde(default)]
    pub last_seq: u64,
    #[serde(default)]
    pub epoch: u64,
}

/// A gap in MariaDB capture, ended by the checkpoint that records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GapRecord {
    /// Capture had received everything up to about then; no restore is possible from
    /// here to the checkpoint's time.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// The last GTID position captured before the gap.
    pub last_captured: String,
    /// What capture found.
    pub why: String,
}

/// Tag of a checkpoint that ends a gap in capture: `timeline-gap-since:<RFC 3339>`, the
/// moment from which until the checkpoint no restore is possible.
pub const GAP_TAG_PREFIX: &str = "timeline-gap-since:";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DirCheckpoint {
    pub name: String,
    /// The file capture's last seq included.
    pub last_seq: u64,
    /// The file capture's session (epoch) when the checkpoint was taken (0 in checkpoints
    /// written before it was recorded).
    #[serde(default)]
    pub epoch: u64,
    /// path -> blake3.
    pub files: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CheckpointMeta {
    pub version: u32,
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub databases: Vec<DbCheckpoint>,
    pub dirs: Vec<DirCheckpoint>,
    /// MariaDB base backups (none in checkpoints of sites without one, or written before
    /// they were taken).
    #[serde(default)]
    pub mariadb: Vec<MariaDbCheckpoint>,
    /// The manifest's name (relative to the site dir) and blake3.
    pub manifest: Option<(String, String)>,
    pub contents: ContentMap,
}

fn comps(s: &str) -> Vec<String> {
    s.split('/').map(str::to_string).collect()
}

/// Takes a checkpoint: fresh base images and a full rescan shipped as segment S, then the
/// snapshot of the state as of S. Blocking.
pub(crate) fn take(shipper: &mut Shipper) -> Result<CheckpointInfo> {
    shipper.checkpoint_attempt = Some(std::time::Instant::now());
    // Before the segment S is cut: every transaction after a base's position is received
    // after the base was taken, so it is in S or later, which a restore from this
    // checkpoint replays.
    let bases = store_mariadb_bases(shipper)?;
    for _attempt in 0..5 {
        for i in 0..shipper.dbs.len() {
            let db = &mut shipper.dbs[i];
            // An image still waiting to be stored (destinations were down) serves: do not
            // pile up full copies of the database while they stay down.
            if db
                .pending
                .iter()
                .any(|e| matches!(e, lifeboat_capture::CaptureEvent::BaseImage(_)))
            {
                continue;
            }
            let events = db
                .cap
                .take_base_image()
                .map_err(crate::shipper::capture_err(&db.name))?;
            shipper.take_db_events(i, events);
        }
        for i in 0..shipper.dirs.len() {
            let dir = &mut shipper.dirs[i];
            let changes = dir
                .cap
                .rescan()
                .map_err(crate::shipper::capture_err(&dir.name))?;
            shipper.take_dir_changes(i, changes);
        }
        shipper.publish_feed();
        shipper.mark_polled();
        shipper.shipping_checkpoint = true;
        let shipped = shipper.ship_forced();
        shipper.shipping_checkpoint = false;
        let seq = shipped?;
        if fill_missing_contents(shipper, seq)? {
            let info = write_snapshot(shipper, seq, &bases)?;
            crate::mariadb_upkeep::after_checkpoint(shipper, &info)?;
            return Ok(info);
        }
        // A file changed while it was being read: the next rescan records it.
    }
    Err(TimelineError::Invalid(
        "files kept changing while a checkpoint read them; it is retried at the next interval"
            .into(),
    ))
}

/// Stores the content of files whose chunks this worker does not know yet (after a
/// restart). Returns false when a file no longer has the content the timeline records.
fn fill_missing_contents(shipper: &mut Shipper, seq: u64) -> Result<bool> {
    let mut work = BTreeMap::new();
    for dir in &shipper.dirs {
        for (path, hash) in &dir.state {
            // Inline contents are stored by the checkpoint snapshot itself, from memory.
            if !shipper.contents.contains_key(hash) && !shipper.inline.contains_key(hash) {
                work.insert(
                    comps(&format!("files/{}/{}", dir.name, path)),
                    (dir.root.join(path), hash.clone()),
                );
            }
        }
    }
    if work.is_empty() {
        return Ok(true);
    }
    let mut writer = ContentWriter::start(shipper.repo.clone(), shipper.handle.clone())?;
    let mut all_match = true;
    for (name, (path, want)) in &work {
        match writer.store_file(path, &name.join("/"))? {
            Stored::Content { hash, content } if &hash == want => {
                shipper.contents.insert(hash, content);
            }
            _ => all_match = false,
        }
    }
    writer.finish(
        vec![CONTENT_TAG.into(), format!("{SEQ_TAG_PREFIX}{seq}")],
        None,
    )?;
    Ok(all_match)
}

/// A base backup of each MariaDB database, its files stored (deduplicated: an unchanged
/// page costs nothing) in a content snapshot; the local copy is removed.
fn store_mariadb_bases(
    shipper: &mut Shipper,
) -> Result<Vec<(MariaDbCheckpoint, BTreeMap<String, Content>)>> {
    let mut out = Vec::new();
    for m in &mut shipper.mariadbs {
        if m.base_dir.exists() {
            std::fs::remove_dir_all(&m.base_dir)
                .map_err(crate::error::io_err("remove the leftover", &m.base_dir))?;
        }
        let handed_out = m.cap.status();
        let base = lifeboat_mariadb::take_base_backup(&m.spec, &m.base_dir)
            .map_err(crate::shipper::mariadb_err(&m.name))?;
        m.last_base = Some(base.info.gtid_pos.clone());
        let mut files = BTreeMap::new();
        for entry in walkdir::WalkDir::new(&base.dir).follow_links(false) {
            let entry = entry.map_err(|e| {
                TimelineError::Invalid(format!(
                    "could not read the base backup in {}: {e}",
                    base.dir.display()
                ))
            })?;
            if entry.file_type().is_file() {
                let rel = entry
                    .path()
                    .strip_prefix(&base.dir)
                    .expect("walked under it")
                    .to_string_lossy()
                    .into_owned();
                files.insert(comps(&rel), entry.path().to_path_buf());
            }
        }
        let mut writer = ContentWriter::start(shipper.repo.clone(), shipper.handle.clone())?;
        let mut hashes = BTreeMap::new();
        let mut contents = BTreeMap::new();
        for (rel, path) in &files {
            let rel = rel.join("/");
            match writer.store_file(path, &format!("{}/{rel}", m.name))? {
                Stored::Content { hash, content } => {
                    hashes.insert(rel.clone(), hash);
                    contents.insert(rel, content);
                }
                _ => {
                    return Err(TimelineError::Invalid(format!(
                        "{rel} of the base backup of {} vanished while it was stored",
                        m.name
                    )));
                }
            }
        }
        writer.finish(vec![CONTENT_TAG.into()], None)?;
        std::fs::remove_dir_all(&base.dir).map_err(crate::error::io_err("remove", &base.dir))?;
        out.push((
            MariaDbCheckpoint {
                name: m.name.clone(),
                gtid_pos: base.info.gtid_pos.to_string(),
                taken_at: base.info.taken_at,
                files: hashes,
                gap: m.gap.as_ref().map(|g| GapRecord {
                    since: g.since,
                    last_captured: g.last_captured.clone(),
                    why: g.why.clone(),
                }),
                last_seq: handed_out.last_seq,
                epoch: handed_out.epoch,
            },
            contents,
        ));
    }
    Ok(out)
}

fn write_snapshot(
    shipper: &mut Shipper,
    seq: u64,
    bases: &[(MariaDbCheckpoint, BTreeMap<String, Content>)],
) -> Result<CheckpointInfo> {
    shipper.check_not_halted()?;
    let time = shipper.last_cut();
    let mut writer = ContentWriter::start(shipper.repo.clone(), shipper.handle.clone())?;
    let mut contents = ContentMap::new();
    let mut entries: BTreeMap<Vec<String>, Content> = BTreeMap::new();
    let mut databases = Vec::new();
    for db in &shipper.dbs {
        let base = db.image.clone().ok_or_else(|| {
            TimelineError::Invalid(format!("no base image of {} was stored", db.name))
        })?;
        let content = shipper.contents[&base.image_hash].clone();
        entries.insert(comps(&db.name), content.clone());
        contents.insert(base.image_hash.clone(), content);
        databases.push(DbCheckpoint {
            name: db.name.clone(),
            base,
        });
    }
    for (base, files) in bases {
        for (rel, content) in files {
            entries.insert(comps(&format!("{}/{rel}", base.name)), content.clone());
        }
    }
    let mut dirs = Vec::new();
    for dir in &shipper.dirs {
        for (path, hash) in &dir.state {
            let content = match shipper.contents.get(hash) {
                Some(c) => c.clone(),
                // Carried inline in segments so far: its chunks go into this snapshot (and
                // count as stored only once it is, when the contents are reset below).
                None => {
                    let bytes = shipper.inline.get(hash).ok_or_else(|| {
                        TimelineError::Invalid(format!(
                            "the content of {}/{path} is not stored; the next checkpoint stores it",
                            dir.name
                        ))
                    })?;
                    writer.store_only(bytes)?
                }
            };
            entries.insert(comps(&format!("{}/{}", dir.name, path)), content.clone());
            contents.insert(hash.clone(), content);
        }
        dirs.push(DirCheckpoint {
            name: dir.name.clone(),
            last_seq: dir.cap.manifest().last_seq,
            epoch: dir.cap.manifest().epoch,
            files: dir.state.clone(),
        });
    }
    let manifest_bytes = std::fs::read(&shipper.manifest).ok();
    let manifest = manifest_bytes.as_ref().map(|b| {
        (
            shipper.manifest_name.clone(),
            blake3::hash(b).to_hex().to_string(),
        )
    });
    let meta = CheckpointMeta {
        version: META_VERSION,
        seq,
        time,
        databases,
        dirs,
        mariadb: bases.iter().map(|(b, _)| b.clone()).collect(),
        manifest,
        contents,
    };
    let meta_bytes = serde_json::to_vec_pretty(&meta).expect("plain data serialises");
    // Everything in depth-first order: stored contents, the manifest, the description.
    let mut all: BTreeMap<Vec<String>, Option<&[u8]>> =
        entries.keys().map(|k| (k.clone(), None)).collect();
    if let Some(b) = &manifest_bytes {
        all.insert(comps(&shipper.manifest_name), Some(b));
    }
    all.insert(vec![META_DIR.into(), META_FILE.into()], Some(&meta_bytes));
    for (name, bytes) in &all {
        let joined = name.join("/");
        match bytes {
            Some(b) => writer.add_bytes(&joined, b)?,
            None => writer.add_stored(&joined, &entries[name])?,
        }
    }
    let mut tags = vec![CHECKPOINT_TAG.into(), format!("{SEQ_TAG_PREFIX}{seq}")];
    if let Some(since) = bases
        .iter()
        .filter_map(|(b, _)| b.gap.as_ref())
        .map(|g| g.since)
        .min()
    {
        tags.push(format!(
            "{GAP_TAG_PREFIX}{}",
            since.format(&Rfc3339).expect("formats")
        ));
    }
    let entry = writer.finish(tags, Some(time.format(&Rfc3339).expect("formats")))?;
    let info = CheckpointInfo {
        snapshot: entry.id.to_hex(),
        seq,
        time,
    };
    // Segments after this checkpoint name their contents relative to it alone: whatever
    // they reuse is in its tree, so older content snapshots may be forgotten.
    shipper.contents = meta.contents;
    shipper.inline.clear();
    shipper.checkpoint_done(info.clone());
    shipper.emit(TimelineEvent::CheckpointTaken(info.clone()));
    Ok(info)
}

/// Checkpoints in the vault, oldest first, with the seq and time each is consistent with.
pub(crate) async fn list(repo: &Repository) -> Result<Vec<(SnapshotEntry, CheckpointInfo)>> {
    let mut out = Vec::new();
    for entry in repo.snapshots().await? {
        let s = &entry.snapshot;
        if !s.tags.iter().any(|t| t == CHECKPOINT_TAG) {
            continue;
        }
        let seq = s
            .tags
            .iter()
            .find_map(|t| t.strip_prefix(SEQ_TAG_PREFIX)?.parse().ok());
        let time = OffsetDateTime::parse(&s.time, &Rfc3339).ok();
        let (Some(seq), Some(time)) = (seq, time) else {
            return Err(TimelineError::Damaged {
                what: format!("checkpoint snapshot {}", entry.id.to_hex()),
                why: "it has no timeline-seq tag or time".into(),
            });
        };
        let info = CheckpointInfo {
            snapshot: entry.id.to_hex(),
            seq,
            time,
        };
        out.push((entry, info));
    }
    out.sort_by_key(|(_, i)| (i.time, i.seq));
    Ok(out)
}

/// The spans no restore can reach, from the tags of the checkpoints that end them (`list`'s
/// order: oldest first).
pub(crate) fn gaps(checkpoints: &[(SnapshotEntry, CheckpointInfo)]) -> Vec<crate::CaptureGapSpan> {
    checkpoints
        .iter()
        .filter_map(|(entry, info)| {
            let since = entry.snapshot.tags.iter().find_map(|t| {
                OffsetDateTime::parse(t.strip_prefix(GAP_TAG_PREFIX)?, &Rfc3339).ok()
            })?;
            Some(crate::CaptureGapSpan {
                from: since.min(info.time),
                until: info.time,
            })
        })
        .collect()
}

/// The bytes of `.lifeboat-timeline/<file>` in a snapshot's tree (checkpoints, forks);
/// `what` names the snapshot in errors.
pub(crate) async fn read_meta_file(
    repo: &Repository,
    entry: &SnapshotEntry,
    file: &str,
    what: &str,
) -> Result<Vec<u8>> {
    let damaged = |why: String| TimelineError::Damaged {
        what: format!("{what} {}", entry.id.to_hex()),
        why,
    };
    let root = repo.read_tree(&entry.snapshot.tree).await?;
    let dir = root
        .nodes
        .iter()
        .find(|n| n.name == META_DIR && n.kind == NodeKind::Dir)
        .and_then(|n| n.subtree)
        .ok_or_else(|| damaged("it has no .lifeboat-timeline directory".into()))?;
    let tree = repo.read_tree(&dir).await?;
    let node = tree
        .nodes
        .iter()
        .find(|n| n.name == file)
        .ok_or_else(|| damaged(format!("it has no {file}")))?;
    let mut bytes = Vec::new();
    for id in &node.content {
        bytes.extend(repo.read_blob(id).await?);
    }
    Ok(bytes)
}

/// Reads a checkpoint's description from its snapshot.
pub(crate) async fn read_meta(repo: &Repository, entry: &SnapshotEntry) -> Result<CheckpointMeta> {
    let damaged = |why: &str| TimelineError::Damaged {
        what: format!("checkpoint {}", entry.id.to_hex()),
        why: why.to_string(),
    };
    let bytes = read_meta_file(repo, entry, META_FILE, "checkpoint").await?;
    let meta: CheckpointMeta = serde_json::from_slice(&bytes)
        .map_err(|e| damaged(&format!("bad checkpoint.json: {e}")))?;
    if meta.version != META_VERSION {
        return Err(damaged(&format!(
            "checkpoint.json version {} is unknown; upgrade lifeboat",
            meta.version
        )));
    }
    Ok(meta)
}

/// File changes of one dir, in seq order, applied to a starting state.
pub(crate) fn apply_file_changes(files: &mut BTreeMap<String, String>, changes: &[FileChange]) {
    for c in changes {
        match &c.change {
            lifeboat_capture::FileChangeKind::Written { hash, .. } => {
                files.insert(c.path.clone(), hash.clone());
            }
            lifeboat_capture::FileChangeKind::Deleted => {
                files.remove(&c.path);
            }
        }
    }
}
