//! What a standby applied last, kept so that it can take over without sending the other
//! standbys back to the vault.
//!
//! When a standby is promoted, the other standbys may be a batch or two behind it (they
//! acknowledge on their own schedule). The new primary's change feed starts empty, so a
//! standby that lacks anything the new primary holds could only restore from the vault. The
//! replica therefore keeps the last batches it applied (bounded in bytes), and the new
//! primary's feed starts with them ([`crate::replication::FeedOptions::history`]): a standby
//! that lacks some of them is sent what it lacks, re-published under the new term.

use std::collections::{BTreeMap, VecDeque};

use lifeboat_capture::Record;
use lifeboat_capture::record::Sequenced;

use super::batch::DecodedBatch;
use super::wire::SourcePosition;

/// Batches a replica applied last, oldest first, contiguous up to its copy's position.
#[derive(Clone, Default)]
pub struct ReplicaHistory {
    pub(crate) batches: VecDeque<HistoryBatch>,
    bytes: u64,
}

#[derive(Clone)]
pub(crate) struct HistoryBatch {
    pub sources: BTreeMap<String, Vec<Record>>,
    pub mariadb: super::batch::MariaDbRecords,
    pub contents: BTreeMap<String, Vec<u8>>,
    pub bytes: u64,
}

impl std::fmt::Debug for ReplicaHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaHistory")
            .field("batches", &self.batches.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl ReplicaHistory {
    /// Batches kept.
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Keeps `batches` (just applied), dropping the oldest past `limit` bytes. A batch larger
    /// than `limit` empties the history: what follows it is not contiguous with anything kept.
    pub(crate) fn push(&mut self, batches: &[DecodedBatch], limit: u64) {
        for b in batches {
            if b.bytes > limit {
                self.clear();
                continue;
            }
            self.bytes += b.bytes;
            self.batches.push_back(HistoryBatch {
                sources: b.sources.clone(),
                mariadb: b.mariadb.clone(),
                contents: b.contents.clone(),
                bytes: b.bytes,
            });
        }
        while self.bytes > limit {
            let Some(old) = self.batches.pop_front() else {
                break;
            };
            self.bytes -= old.bytes;
        }
    }

    pub(crate) fn clear(&mut self) {
        self.batches.clear();
        self.bytes = 0;
    }

    /// Per source, the last record kept.
    pub(crate) fn last_seqs(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for b in &self.batches {
            for (name, records) in &b.sources {
                if let Some(last) = records.iter().map(Sequenced::seq).max() {
                    let e = out.entry(name.clone()).or_insert(0);
                    *e = (*e).max(last);
                }
            }
            for (name, records) in &b.mariadb {
                if let Some(last) = records.iter().map(|r| r.seq).max() {
                    let e = out.entry(name.clone()).or_insert(0);
                    *e = (*e).max(last);
                }
            }
        }
        out
    }

    /// Per source, the first record kept.
    pub(crate) fn first_seqs(&self) -> BTreeMap<String, u64> {
        let mut out: BTreeMap<String, u64> = BTreeMap::new();
        for b in &self.batches {
            for (name, records) in &b.sources {
                if let Some(first) = records.iter().map(Sequenced::seq).min() {
                    let e = out.entry(name.clone()).or_insert(u64::MAX);
                    *e = (*e).min(first);
                }
            }
            for (name, records) in &b.mariadb {
                if let Some(first) = records.iter().map(|r| r.seq).min() {
                    let e = out.entry(name.clone()).or_insert(u64::MAX);
                    *e = (*e).min(first);
                }
            }
        }
        out
    }

    /// The history if it ends exactly where the copy does (`sources`: the copy's positions),
    /// else an empty one.
    pub(crate) fn ending_at(mut self, sources: &BTreeMap<String, SourcePosition>) -> Self {
        let contiguous = self
            .last_seqs()
            .iter()
            .all(|(name, last)| sources.get(name).is_some_and(|p| p.seq == *last));
        if !contiguous {
            self.clear();
        }
        self
    }
}
