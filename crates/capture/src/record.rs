//! The timeline records capture produces, and their versioned segment encoding.
//!
//! A *segment* is an ordered batch of records the vault stores as one object. The byte
//! layout is specified in `docs/capture-format.md`; [`SEGMENT_FORMAT_VERSION`] changes
//! whenever it does, and [`decode_segment`] refuses versions it does not know instead of
//! guessing. Decoding verifies the segment's checksum, so a damaged segment is an error,
//! never a silently different database.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Magic bytes that open every segment.
pub const SEGMENT_MAGIC: &[u8; 8] = b"LBCAPSEG";
/// Version of the segment layout written by [`encode_segment`].
pub const SEGMENT_FORMAT_VERSION: u8 = 1;

/// One committed SQLite transaction: the pages it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitRecord {
    /// Capture session that produced it (see [`resolve_history`]).
    pub epoch: u64,
    /// Position in the capture's sequence; strictly increasing, no gaps within a capture.
    pub seq: u64,
    /// Database page size in bytes; every page in `pages` has this length.
    pub page_size: u32,
    /// Database size in pages after the commit (pages past it are dropped on replay).
    pub db_pages: u32,
    /// Changed pages by page number (1-based); the transaction's last version of each.
    pub pages: BTreeMap<u32, Vec<u8>>,
    /// When capture saw the commit: never earlier than the commit itself, so a restore
    /// "as of T" never includes a commit made after T. It is later than the commit by at
    /// most the poll interval while capture runs (by the downtime after a restart).
    pub commit_time: OffsetDateTime,
}

/// Why a full base image of the database was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SnapshotReason {
    /// Capture started with no earlier position for this database.
    FirstCapture,
    /// The caller asked for one (a periodic checkpoint of the timeline).
    Requested,
    /// Capture could not prove that no transaction was missed; `why` says what happened.
    ContinuityLost {
        /// What broke continuity, in words for the timeline.
        why: String,
    },
}

/// A full, consistent image of the database as of `seq`: replay starts from the newest
/// image at or before the target and applies the commits after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseImageRecord {
    /// Capture session that produced it (see [`resolve_history`]).
    pub epoch: u64,
    /// Sequence number of the image; it holds every commit with a smaller seq.
    pub seq: u64,
    /// Database page size in bytes.
    pub page_size: u32,
    /// Database size in pages; the image is `page_size * db_pages` bytes.
    pub db_pages: u32,
    /// blake3 of the image bytes, hex.
    pub image_hash: String,
    /// When the image was taken.
    #[serde(with = "time::serde::rfc3339")]
    pub taken_at: OffsetDateTime,
    /// Why it was taken.
    pub reason: SnapshotReason,
}

/// What happened to one file under a data dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FileChangeKind {
    /// The file now has this content (created or changed).
    Written {
        /// Size in bytes.
        size: u64,
        /// blake3 of the content, hex.
        hash: String,
    },
    /// The file is gone.
    Deleted,
}

/// One change to a file under a data dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    /// Capture session that produced it (see [`resolve_history`]).
    pub epoch: u64,
    /// Position in the file capture's sequence; strictly increasing.
    pub seq: u64,
    /// Path relative to the data dir, `/`-separated.
    pub path: String,
    /// What happened.
    pub change: FileChangeKind,
    /// When capture saw it.
    #[serde(with = "time::serde::rfc3339")]
    pub observed_at: OffsetDateTime,
}

/// Anything a segment can carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A committed database transaction.
    Commit(CommitRecord),
    /// A full database image was taken (its bytes travel separately, by hash).
    BaseImage(BaseImageRecord),
    /// A file changed.
    File(FileChange),
}

/// Why a segment could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// Wrong magic: not a capture segment at all.
    #[error("not a capture segment (bad magic); check that the object holds capture data")]
    BadMagic,
    /// A newer (or unknown) format.
    #[error(
        "capture segment format version {0} is not supported (this build reads version {SEGMENT_FORMAT_VERSION}); upgrade lifeboat to read it"
    )]
    UnsupportedVersion(u8),
    /// Shorter than its own header says, or checksum mismatch.
    #[error("capture segment is damaged ({0}); restore from another destination")]
    Damaged(&'static str),
    /// The metadata is not valid JSON of the expected shape.
    #[error("capture segment metadata is unreadable: {0}; restore from another destination")]
    Metadata(#[from] serde_json::Error),
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum RecordMeta {
    Commit {
        epoch: u64,
        seq: u64,
        page_size: u32,
        db_pages: u32,
        #[serde(with = "time::serde::rfc3339")]
        commit_time: OffsetDateTime,
        /// Page numbers whose bytes follow in the body, in this order.
        pages: Vec<u32>,
    },
    BaseImage(BaseImageRecord),
    File(FileChange),
}

#[derive(Serialize, Deserialize)]
struct SegmentMeta {
    records: Vec<RecordMeta>,
}

/// Encodes records into one segment (layout in `docs/capture-format.md`).
pub fn encode_segment(records: &[Record]) -> Vec<u8> {
    let mut body = Vec::new();
    let metas: Vec<RecordMeta> = records
        .iter()
        .map(|record| match record {
            Record::Commit(c) => {
                for page in c.pages.values() {
                    body.extend_from_slice(page);
                }
                RecordMeta::Commit {
                    epoch: c.epoch,
                    seq: c.seq,
                    page_size: c.page_size,
                    db_pages: c.db_pages,
                    commit_time: c.commit_time,
                    pages: c.pages.keys().copied().collect(),
                }
            }
            Record::BaseImage(b) => RecordMeta::BaseImage(b.clone()),
            Record::File(f) => RecordMeta::File(f.clone()),
        })
        .collect();
    let meta = serde_json::to_vec(&SegmentMeta { records: metas })
        .expect("segment metadata is plain data and always serialises");
    let mut out = Vec::with_capacity(8 + 1 + 4 + meta.len() + body.len() + 32);
    out.extend_from_slice(SEGMENT_MAGIC);
    out.push(SEGMENT_FORMAT_VERSION);
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(&body);
    let hash = blake3::hash(&out);
    out.extend_from_slice(hash.as_bytes());
    out
}

/// Decodes a segment written by [`encode_segment`], verifying its checksum.
pub fn decode_segment(bytes: &[u8]) -> Result<Vec<Record>, SegmentError> {
    if bytes.len() < 8 || &bytes[..8] != SEGMENT_MAGIC {
        return Err(SegmentError::BadMagic);
    }
    if bytes.len() < 9 {
        return Err(SegmentError::Damaged("truncated before the version byte"));
    }
    if bytes[8] != SEGMENT_FORMAT_VERSION {
        return Err(SegmentError::UnsupportedVersion(bytes[8]));
    }
    if bytes.len() < 8 + 1 + 4 + 32 {
        return Err(SegmentError::Damaged("truncated header"));
    }
    let (content, trailer) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(content).as_bytes() != trailer {
        return Err(SegmentError::Damaged("checksum mismatch"));
    }
    let meta_len = u32::from_be_bytes([content[9], content[10], content[11], content[12]]) as usize;
    let meta_end = 13usize
        .checked_add(meta_len)
        .filter(|end| *end <= content.len())
        .ok_or(SegmentError::Damaged("metadata length past the end"))?;
    let meta: SegmentMeta = serde_json::from_slice(&content[13..meta_end])?;
    let mut body = &content[meta_end..];
    let mut records = Vec::with_capacity(meta.records.len());
    for m in meta.records {
        records.push(match m {
            RecordMeta::Commit {
                epoch,
                seq,
                page_size,
                db_pages,
                commit_time,
                pages: pgnos,
            } => {
                let mut pages = BTreeMap::new();
                for pgno in pgnos {
                    let size = page_size as usize;
                    if body.len() < size {
                        return Err(SegmentError::Damaged("page data shorter than listed"));
                    }
                    let (page, rest) = body.split_at(size);
                    pages.insert(pgno, page.to_vec());
                    body = rest;
                }
                Record::Commit(CommitRecord {
                    epoch,
                    seq,
                    page_size,
                    db_pages,
                    pages,
                    commit_time,
                })
            }
            RecordMeta::BaseImage(b) => Record::BaseImage(b),
            RecordMeta::File(f) => Record::File(f),
        });
    }
    if !body.is_empty() {
        return Err(SegmentError::Damaged("unlisted bytes after the last page"));
    }
    Ok(records)
}

/// Something with a place in one capture sequence.
pub trait Sequenced {
    /// The capture session that produced it.
    fn epoch(&self) -> u64;
    /// Its seq.
    fn seq(&self) -> u64;
}

impl Sequenced for CommitRecord {
    fn epoch(&self) -> u64 {
        self.epoch
    }
    fn seq(&self) -> u64 {
        self.seq
    }
}

impl Sequenced for BaseImageRecord {
    fn epoch(&self) -> u64 {
        self.epoch
    }
    fn seq(&self) -> u64 {
        self.seq
    }
}

impl Sequenced for FileChange {
    fn epoch(&self) -> u64 {
        self.epoch
    }
    fn seq(&self) -> u64 {
        self.seq
    }
}

impl Sequenced for Record {
    fn epoch(&self) -> u64 {
        match self {
            Record::Commit(r) => r.epoch,
            Record::BaseImage(r) => r.epoch,
            Record::File(r) => r.epoch,
        }
    }
    fn seq(&self) -> u64 {
        match self {
            Record::Commit(r) => r.seq,
            Record::BaseImage(r) => r.seq,
            Record::File(r) => r.seq,
        }
    }
}

/// The history of one capture sequence (one database, or one data dir) as stored, with
/// what a crash left behind removed, ordered by seq.
///
/// A capture that stops before its records were confirmed durable hands the same seqs out
/// again in its next session (a higher epoch), possibly with different content (a base
/// image instead of the commits, when continuity was lost). So a record of epoch `e` at
/// seq `s` is current only if no later epoch started at or before `s`; among copies of
/// the same seq and epoch, the first is kept.
pub fn resolve_history<T: Sequenced>(records: impl IntoIterator<Item = T>) -> Vec<T> {
    let records: Vec<T> = records.into_iter().collect();
    let mut first_seq: BTreeMap<u64, u64> = BTreeMap::new();
    for r in &records {
        let e = first_seq.entry(r.epoch()).or_insert(r.seq());
        *e = (*e).min(r.seq());
    }
    // For each epoch, the smallest first seq of any later epoch.
    let mut cutoff: BTreeMap<u64, u64> = BTreeMap::new();
    let mut min_later = u64::MAX;
    for (epoch, first) in first_seq.iter().rev() {
        cutoff.insert(*epoch, min_later);
        min_later = min_later.min(*first);
    }
    let mut kept: BTreeMap<u64, T> = BTreeMap::new();
    for r in records {
        if r.seq() < cutoff[&r.epoch()] {
            kept.entry(r.seq()).or_insert(r);
        }
    }
    kept.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record> {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        vec![
            Record::BaseImage(BaseImageRecord {
                epoch: 1,
                seq: 1,
                page_size: 512,
                db_pages: 2,
                image_hash: "ab".into(),
                taken_at: now,
                reason: SnapshotReason::ContinuityLost {
                    why: "WAL restarted".into(),
                },
            }),
            Record::Commit(CommitRecord {
                epoch: 1,
                seq: 2,
                page_size: 512,
                db_pages: 3,
                pages: BTreeMap::from([(1, vec![1; 512]), (3, vec![3; 512])]),
                commit_time: now,
            }),
            Record::File(FileChange {
                epoch: 1,
                seq: 1,
                path: "uploads/a.png".into(),
                change: FileChangeKind::Written {
                    size: 5,
                    hash: "cd".into(),
                },
                observed_at: now,
            }),
        ]
    }

    fn commit(epoch: u64, seq: u64, marker: u8) -> CommitRecord {
        CommitRecord {
            epoch,
            seq,
            page_size: 512,
            db_pages: 1,
            pages: BTreeMap::from([(1, vec![marker; 512])]),
            commit_time: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_later_session_replaces_what_a_crash_left_unconfirmed() {
        // Session 1 stored 1..=5 but only 3 was confirmed; session 2 restarted at 4.
        let stored = vec![
            commit(1, 1, 1),
            commit(1, 2, 1),
            commit(1, 3, 1),
            commit(1, 4, 1),
            commit(1, 5, 1),
            commit(2, 4, 2),
            commit(2, 4, 9),
            commit(2, 5, 2),
            commit(2, 6, 2),
        ];
        let history = resolve_history(stored);
        let got: Vec<(u64, u64, u8)> = history
            .iter()
            .map(|c| (c.epoch, c.seq, c.pages[&1][0]))
            .collect();
        assert_eq!(
            got,
            [
                (1, 1, 1),
                (1, 2, 1),
                (1, 3, 1),
                (2, 4, 2),
                (2, 5, 2),
                (2, 6, 2)
            ]
        );
    }

    #[test]
    fn segments_round_trip() {
        let records = sample();
        assert_eq!(decode_segment(&encode_segment(&records)).unwrap(), records);
    }

    #[test]
    fn a_flipped_bit_anywhere_is_detected() {
        let bytes = encode_segment(&sample());
        for at in [9, 20, bytes.len() / 2, bytes.len() - 40, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert!(decode_segment(&bad).is_err(), "flip at {at} went unnoticed");
        }
    }

    #[test]
    fn unknown_version_is_refused_with_guidance() {
        let mut bytes = encode_segment(&sample());
        bytes[8] = 9;
        let err = decode_segment(&bytes).unwrap_err().to_string();
        assert!(
            err.contains("version 9") && err.contains("upgrade"),
            "{err}"
        );
    }
}
