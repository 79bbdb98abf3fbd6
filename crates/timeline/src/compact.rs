//! Compaction and retention of the timeline.
//!
//! [`compact`] merges runs of old consecutive segments into bundles (stream
//! [`BUNDLE_STREAM`](crate::BUNDLE_STREAM), keyed by first seq; each part kept byte for byte), so
//! restoring an old moment reads a few objects instead of thousands. Order: every bundle is
//! written (on every destination) before any original is deleted; originals are deleted
//! oldest first, and only those below the last bundled seq, so a crash at any point leaves
//! each seq readable, possibly twice (readers take it once).
//!
//! [`apply_retention`] keeps the checkpoints the vault's keep rules select (always the
//! newest) and removes what only older checkpoints needed: their snapshots, the content
//! snapshots of segments before the oldest kept checkpoint, and those segments.
//!
//! Both take the vault's exclusive lock (one compaction or retention at a time; content
//! snapshots of a running worker wait for it) and need every destination reachable and
//! caught up. A worker may ship new segments meanwhile: they are never touched (the newest
//! stored segment is never compacted).

use std::sync::Arc;
use std::time::Duration;

use lifeboat_vault::{Candidate, KeepPolicy, LockKind, Repository, apply_policy};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::checkpoint::{self, SEQ_TAG_PREFIX};
use crate::error::{Result, TimelineError};
use crate::segment::{STREAM, TimelineSegment, encode_bundle};
use crate::store::CONTENT_TAG;
use crate::stream::{self, BUNDLE_STREAM};
use crate::types::CheckpointInfo;

/// What [`compact`] merges.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Segments whose window ended longer ago than this are merged (default 1 h).
    pub older_than: Duration,
    /// A bundle grows up to about this many bytes (default 64 MiB); a checkpoint's segment
    /// always starts a new one, so retention can drop whole bundles.
    pub max_bundle_bytes: u64,
    /// How long to wait for the vault's exclusive lock (default 60 s).
    pub lock_wait: Duration,
}

impl Default for CompactOptions {
    fn default() -> Self {
        CompactOptions {
            older_than: Duration::from_secs(3600),
            max_bundle_bytes: 64 << 20,
            lock_wait: Duration::from_secs(60),
        }
    }
}

/// What [`compact`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactReport {
    /// Bundles written.
    pub bundles_written: u64,
    /// Segments merged into them.
    pub segments_merged: u64,
    /// Original segment objects deleted (including leftovers of an interrupted run).
    pub originals_deleted: u64,
    /// Every segment up to this seq is now in a bundle.
    pub compacted_through: Option<u64>,
}

/// Merges runs of consecutive segments older than `opts.older_than` into bundles, then
/// deletes the originals. Safe to run while a worker ships, and to interrupt at any point.
pub async fn compact(repo: &Arc<Repository>, opts: &CompactOptions) -> Result<CompactReport> {
    stream::require_all(repo, "timeline compaction").await?;
    let lock = repo.lock(LockKind::Exclusive, opts.lock_wait).await?;
    let result = compact_locked(repo, opts).await;
    lock.release().await;
    repo.close();
    result
}

async fn compact_locked(repo: &Repository, opts: &CompactOptions) -> Result<CompactReport> {
    let mut report = CompactReport::default();
    let listing = stream::listing(repo).await?;
    // Everything up to `covered` is already in bundles.
    let covered = match listing.bundles.last() {
        Some(&key) => stream::read_bundle(repo, key).await?.last().map(|p| p.0),
        None => None,
    };
    let Some(&newest) = listing.originals.last() else {
        return Ok(report);
    };
    if let Some(c) = covered {
        // Leftovers of an interrupted run: their bundle was fully written before it
        // deleted anything (and this process has nothing spooled).
        let leftovers = listing.originals.iter().filter(|&&k| k <= c).count() as u64;
        if leftovers > 0 {
            repo.delete_segments_before(STREAM, c + 1).await?;
            report.originals_deleted += leftovers;
        }
        report.compacted_through = Some(c);
    }
    let cutoff = OffsetDateTime::now_utc() - opts.older_than;
    // Groups of (seq, bytes as stored): consecutive, split at checkpoints and by size; each
    // written as soon as it is complete, so memory stays within about one bundle.
    let mut group: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut group_bytes = 0u64;
    let mut last = None;
    for &seq in &listing.originals {
        if covered.is_some_and(|c| seq <= c) {
            continue;
        }
        // The newest segment stays: the worker continues after it.
        if seq >= newest {
            break;
        }
        let bytes = repo.get_segment(STREAM, seq).await?;
        let seg = TimelineSegment::decode(seq, &bytes)?;
        if seg.cut_at > cutoff {
            break;
        }
        let len = bytes.len() as u64;
        let split = group.last().is_some_and(|(prev, _)| {
            seq != prev + 1 || seg.checkpoint || group_bytes + len > opts.max_bundle_bytes
        });
        if split {
            last = Some(write_bundle(repo, &mut group, &mut report).await?);
            group_bytes = 0;
        }
        group_bytes += len;
        group.push((seq, bytes));
    }
    if !group.is_empty() {
        last = Some(write_bundle(repo, &mut group, &mut report).await?);
    }
    let Some(last) = last else {
        return Ok(report);
    };
    // Originals go only once every bundle is on every destination (a reader of any one
    // of them finds each seq in a bundle or as an original).
    stream::require_all(repo, "timeline compaction").await?;
    let deleted = listing
        .originals
        .iter()
        .filter(|&&k| k <= last && covered.is_none_or(|c| k > c))
        .count() as u64;
    repo.delete_segments_before(STREAM, last + 1).await?;
    report.originals_deleted += deleted;
    report.compacted_through = Some(last);
    Ok(report)
}

/// Writes `group` as one bundle and empties it; returns its last seq.
async fn write_bundle(
    repo: &Repository,
    group: &mut Vec<(u64, Vec<u8>)>,
    report: &mut CompactReport,
) -> Result<u64> {
    let (first, last) = (group[0].0, group[group.len() - 1].0);
    repo.put_segment(BUNDLE_STREAM, first, &encode_bundle(group))
        .await?;
    report.bundles_written += 1;
    report.segments_merged += group.len() as u64;
    group.clear();
    Ok(last)
}

/// What [`apply_retention`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionReport {
    /// Checkpoints kept, oldest first.
    pub kept: Vec<CheckpointInfo>,
    /// Checkpoints forgotten.
    pub forgotten: Vec<CheckpointInfo>,
    /// Content snapshots forgotten (those of segments before the oldest kept checkpoint).
    pub content_snapshots_forgotten: u64,
    /// Segment objects (originals and bundles) deleted.
    pub segment_objects_deleted: u64,
    /// The timeline now starts at this seq (the oldest kept checkpoint's).
    pub kept_from_seq: Option<u64>,
}

/// Keeps the checkpoints `keep` selects (the vault's keep rules; the newest checkpoint is
/// always kept) and deletes what only the others needed: their snapshots, content
/// snapshots and segments before the oldest kept checkpoint. Nothing from the newest
/// checkpoint on is touched. The vault's data is freed by `lifeboat vault prune` afterwards.
pub async fn apply_retention(repo: &Arc<Repository>, keep: &KeepPolicy) -> Result<RetentionReport> {
    if keep.is_empty() {
        return Err(TimelineError::Invalid(
            "no keep rule given; refusing to forget every checkpoint (set e.g. keep-daily)".into(),
        ));
    }
    stream::require_all(repo, "timeline retention").await?;
    let lock = repo
        .lock(LockKind::Exclusive, Duration::from_secs(60))
        .await?;
    let result = retention_locked(repo, keep).await;
    lock.release().await;
    repo.close();
    result
}

async fn retention_locked(repo: &Repository, keep: &KeepPolicy) -> Result<RetentionReport> {
    let mut report = RetentionReport::default();
    let checkpoints = checkpoint::list(repo).await?;
    let Some((newest, _)) = checkpoints.last() else {
        return Ok(report);
    };
    let candidates: Vec<Candidate> = checkpoints
        .iter()
        .map(|(e, i)| Candidate {
            id: e.id,
            time: i.time,
            tags: e.snapshot.tags.clone(),
        })
        .collect();
    let mut kept = apply_policy(&candidates, keep);
    kept.insert(newest.id);
    let oldest_kept = checkpoints
        .iter()
        .filter(|(e, _)| kept.contains(&e.id))
        .map(|(_, i)| i.seq)
        .min()
        .expect("the newest is kept");
    report.kept_from_seq = Some(oldest_kept);
    // Checkpoints first: a crash later leaves only unneeded segments, never a checkpoint
    // without its segments.
    for (entry, info) in &checkpoints {
        if kept.contains(&entry.id) {
            report.kept.push(info.clone());
        } else {
            repo.forget_snapshot(&entry.id).await?;
            report.forgotten.push(info.clone());
        }
    }
    // Content snapshots of segments before the oldest kept checkpoint: later segments name
    // only contents of their checkpoint's tree or stored after it.
    for entry in repo.snapshots().await? {
        let tags = &entry.snapshot.tags;
        if !tags.iter().any(|t| t == CONTENT_TAG) {
            continue;
        }
        let seq: Option<u64> = tags
            .iter()
            .find_map(|t| t.strip_prefix(SEQ_TAG_PREFIX)?.parse().ok());
        if seq.is_some_and(|s| s < oldest_kept) {
            repo.forget_snapshot(&entry.id).await?;
            report.content_snapshots_forgotten += 1;
        }
    }
    // Segments: originals below the kept checkpoint, and bundles that end before it (the
    // bundle that may hold it, the last starting at or before it, stays).
    let listing = stream::listing(repo).await?;
    let originals = listing
        .originals
        .iter()
        .filter(|&&k| k < oldest_kept)
        .count() as u64;
    repo.delete_segments_before(STREAM, oldest_kept).await?;
    report.segment_objects_deleted += originals;
    let holding = listing
        .bundles
        .iter()
        .copied()
        .filter(|&k| k <= oldest_kept)
        .max();
    if let Some(h) = holding {
        let bundles = listing.bundles.iter().filter(|&&k| k < h).count() as u64;
        repo.delete_segments_before(BUNDLE_STREAM, h).await?;
        report.segment_objects_deleted += bundles;
    }
    Ok(report)
}
