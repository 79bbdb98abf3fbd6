//! Forget (drop snapshots by policy) and prune (delete data no snapshot needs).
//!
//! Prune's order makes a crash at any point harmless: (1) repack still-needed blobs of
//! partly-used packs into new packs, (2) write one new index naming every pack kept or made,
//! (3) delete the old indexes, (4) delete packs no index names. Until (2) completes the old
//! indexes are intact; after it both describe valid packs; packs are deleted only when no
//! remaining index names them. It holds the exclusive lock, so no backup runs meanwhile;
//! packs no index names yet are deleted only when older than a grace period, in case they
//! belong to a backup whose lock was wrongly judged stale. Prune never deletes a pack its own
//! new index names, however old that pack looks: the packs it repacked into are named by no
//! index it read at its start.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use crate::crypto::Id;
use crate::error::{Error, Result};
use crate::forget::{Candidate, KeepPolicy, apply_policy};
use crate::format::{
    BlobKind, FORMAT_VERSION, IndexFile, IndexedPack, NodeKind, PackedBlob, encode_pack_trailer,
};
use crate::lock::LockKind;
use crate::pipeline::PACK_TARGET;
use crate::repo::{Repository, SnapshotEntry, pack_key};

/// Options of prune.
#[derive(Clone)]
pub struct PruneOptions {
    /// Packs that no index names are deleted only when they were older than this when prune
    /// read the index.
    pub unindexed_grace: Duration,
    pub lock_wait: Duration,
    /// Called at each step of prune (tests only: to crash or stall it exactly there).
    #[doc(hidden)]
    pub fault: Option<PruneFaultHook>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            unindexed_grace: Duration::from_secs(3600),
            lock_wait: Duration::from_secs(0),
            fault: None,
        }
    }
}

impl std::fmt::Debug for PruneOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PruneOptions")
            .field("unindexed_grace", &self.unindexed_grace)
            .field("lock_wait", &self.lock_wait)
            .field("fault", &self.fault.as_ref().map(|_| "<hook>"))
            .finish()
    }
}

/// A step of prune, for tests that crash or stall it exactly there.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PruneStep {
    /// (1) Every pack written by repacking is stored.
    Repacked,
    /// (2) The new index, naming every pack kept or written, is stored.
    IndexWritten,
    /// (3) The indexes it replaces are deleted.
    OldIndexesDeleted,
    /// (4) The packs no index names any more are deleted; unindexed leftovers come next.
    PacksDeleted,
}

/// Called at each [`PruneStep`] (tests only).
#[doc(hidden)]
pub type PruneFaultHook = Arc<dyn Fn(PruneStep) + Send + Sync>;

/// What prune did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct PruneSummary {
    pub packs_deleted: u64,
    pub packs_repacked: u64,
    pub packs_written: u64,
    pub bytes_freed: u64,
    pub indexes_replaced: u64,
}

impl Repository {
    /// Removes the snapshots `policy` does not keep; returns them. Data stays until prune.
    pub async fn forget(
        &self,
        policy: &KeepPolicy,
        dry_run: bool,
        lock_wait: Duration,
    ) -> Result<Vec<SnapshotEntry>> {
        if policy.is_empty() {
            return Err(Error::InvalidInput(
                "no --keep-* rule given; refusing to forget every snapshot".into(),
            ));
        }
        let lock = self.lock(LockKind::Exclusive, lock_wait).await?;
        let result = async {
            let snaps = self.snapshots().await?;
            let cands: Vec<Candidate> = snaps
                .iter()
                .map(|s| {
                    let time = time::OffsetDateTime::parse(
                        &s.snapshot.time,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .map_err(|e| {
                        Error::Corrupt(format!("snapshot {:?} has a bad time: {e}", s.id))
                    })?;
                    Ok(Candidate {
                        id: s.id,
                        time,
                        tags: s.snapshot.tags.clone(),
                    })
                })
                .collect::<Result<_>>()?;
            let keep = apply_policy(&cands, policy);
            let mut removed = Vec::new();
            for s in snaps {
                if !keep.contains(&s.id) {
                    if !dry_run {
                        self.forget_snapshot(&s.id).await?;
                    }
                    removed.push(s);
                }
            }
            Ok(removed)
        }
        .await;
        lock.release().await;
        result
    }

    /// Every blob a snapshot still needs.
    async fn used_blobs(&self) -> Result<HashSet<Id>> {
        let mut used = HashSet::new();
        for s in self.snapshots().await? {
            let mut todo = vec![s.snapshot.tree];
            while let Some(t) = todo.pop() {
                if !used.insert(t) {
                    continue;
                }
                for n in self.read_tree(&t).await?.nodes {
                    used.extend(n.content.iter().copied());
                    if let (NodeKind::Dir, Some(sub)) = (n.kind, n.subtree) {
                        todo.push(sub);
                    }
                }
            }
        }
        Ok(used)
    }

    /// Deletes data no snapshot needs. Needs every destination reachable.
    pub async fn prune(&self, opts: &PruneOptions) -> Result<PruneSummary> {
        self.dests.require_all("prune").await?;
        let lock = self.lock(LockKind::Exclusive, opts.lock_wait).await?;
        let result = self.prune_locked(opts).await;
        lock.release().await;
        self.close();
        result
    }

    async fn prune_locked(&self, opts: &PruneOptions) -> Result<PruneSummary> {
        let fault = |step| {
            if let Some(f) = &opts.fault {
                f(step);
            }
        };
        self.reload_index().await?;
        // What this prune knows of the repository is the index as read now: a pack no index
        // names counts as a leftover only if it was older than the grace period already then.
        let index_read_at = time::OffsetDateTime::now_utc().unix_timestamp();
        let used = self.used_blobs().await?;
        let (old_indexes, blobs, packs) = {
            let i = self.index.read().unwrap();
            (i.files.clone(), i.blobs.clone(), i.packs.clone())
        };
        // Per pack: the blobs it holds that are both needed and canonical (the index points here).
        let mut by_pack: HashMap<Id, Vec<(Id, crate::repo::BlobLocation)>> = HashMap::new();
        for (id, loc) in &blobs {
            by_pack.entry(loc.pack).or_default().push((*id, *loc));
        }
        let mut summary = PruneSummary::default();
        let mut kept: Vec<IndexedPack> = Vec::new();
        let mut to_repack = Vec::new();
        let mut to_delete: HashSet<Id> = HashSet::new();
        for (pack, size) in &packs {
            let entries = by_pack.remove(pack).unwrap_or_default();
            let live: Vec<_> = entries
                .iter()
                .filter(|(id, _)| used.contains(id))
                .cloned()
                .collect();
            let total_blobs = entries.len();
            if live.is_empty() {
                to_delete.insert(*pack);
                summary.bytes_freed += size;
            } else if live.len() == total_blobs {
                kept.push(IndexedPack {
                    id: *pack,
                    size: *size,
                    blobs: live.iter().map(|(id, l)| packed(*id, l)).collect(),
                });
            } else {
                to_repack.push((*pack, *size, live));
            }
        }
        // (1) Repack.
        let mut builders: HashMap<BlobKind, (Vec<u8>, Vec<PackedBlob>)> = HashMap::new();
        for (pack, size, live) in to_repack {
            let bytes = self
                .dests
                .get(&pack_key(&pack), |b| Id::of_object(b) == pack)
                .await?;
            for (id, loc) in live {
                let (buf, list) = builders.entry(loc.kind).or_default();
                let s = loc.offset as usize;
                list.push(PackedBlob {
                    id,
                    kind: loc.kind,
                    offset: buf.len() as u64,
                    length: loc.length,
                    raw_length: loc.raw_length,
                });
                buf.extend_from_slice(&bytes[s..s + loc.length as usize]);
                if buf.len() >= PACK_TARGET {
                    let (buf, list) = builders.remove(&loc.kind).unwrap();
                    kept.push(self.write_pack(buf, list).await?);
                    summary.packs_written += 1;
                }
            }
            to_delete.insert(pack);
            summary.packs_repacked += 1;
            summary.bytes_freed += size;
        }
        for (_, (buf, list)) in builders {
            if !list.is_empty() {
                kept.push(self.write_pack(buf, list).await?);
                summary.packs_written += 1;
            }
        }
        fault(PruneStep::Repacked);
        // Every pack the new index names, including those just written by repacking, which no
        // index read at the start names: the sweep of unindexed leftovers below must spare
        // them whatever their age (with a grace of 0 s, a pack written a second before the
        // sweep already looked old enough, and the snapshots whose blobs it held lost them).
        let named: HashSet<Id> = kept.iter().map(|p| p.id).collect();
        // (2) The new index, (3) then the old ones go.
        if !to_delete.is_empty() || old_indexes.len() > 1 {
            let index = IndexFile {
                version: FORMAT_VERSION,
                packs: kept,
            };
            let new_id = self.write_object("index", &index, b"index").await?;
            fault(PruneStep::IndexWritten);
            for old in &old_indexes {
                if *old != new_id {
                    self.dests.delete(&format!("index/{old}")).await?;
                    summary.indexes_replaced += 1;
                }
            }
            fault(PruneStep::OldIndexesDeleted);
        }
        // (4) Packs no index names any more, and old unindexed leftovers of crashed backups.
        for pack in &to_delete {
            self.dests.delete(&pack_key(pack)).await?;
            summary.packs_deleted += 1;
        }
        fault(PruneStep::PacksDeleted);
        for o in self.dests.list("data").await? {
            let Ok(id) = Id::from_hex(o.key.rsplit('/').next().unwrap_or("")) else {
                continue;
            };
            if !packs.contains_key(&id)
                && !named.contains(&id)
                && !to_delete.contains(&id)
                && index_read_at - o.modified > opts.unindexed_grace.as_secs() as i64
            {
                self.dests.delete(&o.key).await?;
                summary.packs_deleted += 1;
                summary.bytes_freed += o.size;
            }
        }
        self.reload_index().await?;
        Ok(summary)
    }

    async fn write_pack(&self, mut buf: Vec<u8>, list: Vec<PackedBlob>) -> Result<IndexedPack> {
        buf.extend_from_slice(&encode_pack_trailer(&self.keys, &list));
        let id = Id::of_object(&buf);
        let size = buf.len() as u64;
        self.dests.put(&pack_key(&id), Bytes::from(buf)).await?;
        Ok(IndexedPack {
            id,
            size,
            blobs: list,
        })
    }
}

fn packed(id: Id, l: &crate::repo::BlobLocation) -> PackedBlob {
    PackedBlob {
        id,
        kind: l.kind,
        offset: l.offset,
        length: l.length,
        raw_length: l.raw_length,
    }
}
