//! The timeline segment: everything captured from one site during one interval, stored as
//! one vault segment of the stream [`STREAM`] (layout in `docs/timeline-format.md`).
//!
//! A segment is a JSON header (its seq, the time window its records were seen in, the
//! content map naming where new file and base-image contents live in the vault) followed
//! by one capture segment (`lifeboat_capture::encode_segment`) per source that changed.

use std::collections::BTreeMap;

use lifeboat_capture::{Record, decode_segment, encode_segment};
use lifeboat_vault::Id;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Result, TimelineError};

/// The vault segment stream holding a site's timeline.
pub const STREAM: &str = "timeline";
/// Magic bytes opening every timeline segment.
pub const MAGIC: &[u8; 8] = b"LBTIMELN";
/// Layout version written by [`TimelineSegment::encode`] for a segment without inline
/// contents (readable by every lifeboat that knows the timeline).
pub const FORMAT_VERSION: u8 = 1;
/// Layout version of a segment carrying inline contents (small files' bytes in the segment).
pub const FORMAT_VERSION_INLINE: u8 = 2;
/// Version of a segment that carries MariaDB transactions (a part per MariaDB source, after
/// the capture records' parts; `docs/timeline-format.md`).
pub const FORMAT_VERSION_MARIADB: u8 = 3;
/// Magic bytes opening a bundle: several consecutive segments merged by compaction, each
/// kept byte for byte as it was stored.
pub const BUNDLE_MAGIC: &[u8; 8] = b"LBTLBNDL";
/// Layout version of bundles.
pub const BUNDLE_VERSION: u8 = 1;

/// Where one content (a file's or a base image's bytes, named by blake3) is stored: the
/// vault chunks that concatenate to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    /// Size in bytes.
    pub size: u64,
    /// Vault blob ids (hex), in order.
    pub chunks: Vec<String>,
}

impl Content {
    pub(crate) fn from_ids(size: u64, ids: &[Id]) -> Content {
        Content {
            size,
            chunks: ids.iter().map(Id::to_hex).collect(),
        }
    }

    pub(crate) fn ids(&self) -> Result<Vec<Id>> {
        self.chunks
            .iter()
            .map(|h| {
                Id::from_hex(h).map_err(|e| TimelineError::Damaged {
                    what: "content map".into(),
                    why: format!("bad chunk id {h:?}: {e}"),
                })
            })
            .collect()
    }
}

/// Map from blake3 hash (hex) to stored content.
pub type ContentMap = BTreeMap<String, Content>;

#[derive(Serialize, Deserialize)]
struct Header {
    seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    after: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    cut_at: OffsetDateTime,
    contents: ContentMap,
    sources: Vec<(String, u64)>,
    /// Version 2: blake3 and byte length of each inline content, in order, after the
    /// sources' parts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    inline: Vec<(String, u64)>,
    /// Version 3: name and byte length of each MariaDB source's part (an `LBMDBSEG` batch),
    /// after the sources' parts and before the inline contents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    mariadb: Vec<(String, u64)>,
    /// Shipped by a checkpoint (compaction starts a new bundle here).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    checkpoint: bool,
}

/// One decoded timeline segment.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineSegment {
    /// Its sequence number in the stream.
    pub seq: u64,
    /// Every record in it was seen at or after this time (the previous segment's cut).
    pub after: OffsetDateTime,
    /// Every record in it was seen at or before this time.
    pub cut_at: OffsetDateTime,
    /// Contents first referenced here.
    pub contents: ContentMap,
    /// Records by source name (a database's or data dir's path relative to the site dir).
    pub sources: BTreeMap<String, Vec<Record>>,
    /// Small contents first referenced here, carried in the segment itself (blake3 hex ->
    /// bytes) instead of as vault chunks: a quiet site's small upload costs no extra object.
    pub inline: BTreeMap<String, Vec<u8>>,
    /// MariaDB transactions by source name (the data dir relative to the site dir), in
    /// commit order.
    pub mariadb: BTreeMap<String, Vec<lifeboat_mariadb::TransactionRecord>>,
    /// Whether a checkpoint shipped it (the checkpoint snapshot, if it was written, is
    /// consistent with it).
    pub checkpoint: bool,
}

impl TimelineSegment {
    /// The bytes stored in the vault.
    pub fn encode(&self) -> Vec<u8> {
        let mut bodies = Vec::new();
        let mut sources = Vec::new();
        for (name, records) in &self.sources {
            let body = encode_segment(records);
            sources.push((name.clone(), body.len() as u64));
            bodies.push(body);
        }
        let mut mariadb = Vec::new();
        for (name, records) in &self.mariadb {
            let body = lifeboat_mariadb::encode_batch(records);
            mariadb.push((name.clone(), body.len() as u64));
            bodies.push(body);
        }
        let mut inline = Vec::new();
        for (hash, bytes) in &self.inline {
            inline.push((hash.clone(), bytes.len() as u64));
            bodies.push(bytes.clone());
        }
        let version = if !mariadb.is_empty() {
            FORMAT_VERSION_MARIADB
        } else if inline.is_empty() {
            FORMAT_VERSION
        } else {
            FORMAT_VERSION_INLINE
        };
        let header = Header {
            seq: self.seq,
            after: self.after,
            cut_at: self.cut_at,
            contents: self.contents.clone(),
            sources,
            inline,
            mariadb,
            checkpoint: self.checkpoint,
        };
        let header = serde_json::to_vec(&header).expect("plain data serialises");
        let mut out =
            Vec::with_capacity(13 + header.len() + bodies.iter().map(Vec::len).sum::<usize>());
        out.extend_from_slice(MAGIC);
        out.push(version);
        out.extend_from_slice(&(header.len() as u32).to_be_bytes());
        out.extend_from_slice(&header);
        for b in bodies {
            out.extend_from_slice(&b);
        }
        out
    }

    /// Decodes what [`encode`](Self::encode) wrote (each source's part is checksummed).
    pub fn decode(seq: u64, bytes: &[u8]) -> Result<TimelineSegment> {
        let damaged = |why: String| TimelineError::Damaged {
            what: format!("segment {seq}"),
            why,
        };
        if bytes.len() < 13 || &bytes[..8] != MAGIC {
            return Err(damaged("not a timeline segment (bad magic)".into()));
        }
        if ![
            FORMAT_VERSION,
            FORMAT_VERSION_INLINE,
            FORMAT_VERSION_MARIADB,
        ]
        .contains(&bytes[8])
        {
            return Err(damaged(format!(
                "format version {} is not known to this lifeboat (it reads {FORMAT_VERSION} to {FORMAT_VERSION_MARIADB}); upgrade lifeboat",
                bytes[8]
            )));
        }
        let len = u32::from_be_bytes(bytes[9..13].try_into().expect("4 bytes")) as usize;
        let header_end = 13usize
            .checked_add(len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| damaged("truncated header".into()))?;
        let header: Header = serde_json::from_slice(&bytes[13..header_end])
            .map_err(|e| damaged(format!("bad header: {e}")))?;
        if header.seq != seq {
            return Err(damaged(format!("it says it is segment {}", header.seq)));
        }
        let mut at = header_end;
        let mut sources = BTreeMap::new();
        for (name, len) in header.sources {
            let end = at
                .checked_add(len as usize)
                .filter(|&e| e <= bytes.len())
                .ok_or_else(|| damaged(format!("truncated records of {name}")))?;
            let records = decode_segment(&bytes[at..end])
                .map_err(|e| damaged(format!("records of {name}: {e}")))?;
            sources.insert(name, records);
            at = end;
        }
        let mut mariadb = BTreeMap::new();
        for (name, len) in header.mariadb {
            let end = at
                .checked_add(len as usize)
                .filter(|&e| e <= bytes.len())
                .ok_or_else(|| damaged(format!("truncated transactions of {name}")))?;
            let records = lifeboat_mariadb::decode_batch(&bytes[at..end])
                .map_err(|e| damaged(format!("transactions of {name}: {e}")))?;
            mariadb.insert(name, records);
            at = end;
        }
        let mut inline = BTreeMap::new();
        for (hash, len) in header.inline {
            let end = at
                .checked_add(len as usize)
                .filter(|&e| e <= bytes.len())
                .ok_or_else(|| damaged(format!("truncated inline content {hash}")))?;
            let body = &bytes[at..end];
            if blake3::hash(body).to_hex().as_str() != hash {
                return Err(damaged(format!(
                    "inline content {hash} does not match its hash"
                )));
            }
            inline.insert(hash, body.to_vec());
            at = end;
        }
        Ok(TimelineSegment {
            seq,
            after: header.after,
            cut_at: header.cut_at,
            contents: header.contents,
            sources,
            inline,
            mariadb,
            checkpoint: header.checkpoint,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct BundleHeader {
    first_seq: u64,
    last_seq: u64,
    /// Each part's seq and byte length, in order.
    parts: Vec<(u64, u64)>,
}

/// Encodes a bundle of stored segments `(seq, bytes as stored)`, ascending by seq; the
/// parts are kept byte for byte, so reading a bundle gives exactly the segments merged.
pub(crate) fn encode_bundle(parts: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let header = BundleHeader {
        first_seq: parts.first().map_or(0, |p| p.0),
        last_seq: parts.last().map_or(0, |p| p.0),
        parts: parts.iter().map(|(s, b)| (*s, b.len() as u64)).collect(),
    };
    let header = serde_json::to_vec(&header).expect("plain data serialises");
    let mut out =
        Vec::with_capacity(13 + header.len() + parts.iter().map(|p| p.1.len()).sum::<usize>());
    out.extend_from_slice(BUNDLE_MAGIC);
    out.push(BUNDLE_VERSION);
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    for (_, b) in parts {
        out.extend_from_slice(b);
    }
    out
}

/// Splits a bundle stored under `key` into its parts `(seq, bytes as stored)`.
pub(crate) fn split_bundle(key: u64, bytes: &[u8]) -> Result<Vec<(u64, Vec<u8>)>> {
    let damaged = |why: String| TimelineError::Damaged {
        what: format!("segment bundle {key}"),
        why,
    };
    if bytes.len() < 13 || &bytes[..8] != BUNDLE_MAGIC {
        return Err(damaged("not a timeline segment bundle (bad magic)".into()));
    }
    if bytes[8] != BUNDLE_VERSION {
        return Err(damaged(format!(
            "bundle version {} is not known to this lifeboat (it reads {BUNDLE_VERSION}); upgrade lifeboat",
            bytes[8]
        )));
    }
    let len = u32::from_be_bytes(bytes[9..13].try_into().expect("4 bytes")) as usize;
    let header_end = 13usize
        .checked_add(len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| damaged("truncated header".into()))?;
    let header: BundleHeader = serde_json::from_slice(&bytes[13..header_end])
        .map_err(|e| damaged(format!("bad header: {e}")))?;
    if header.first_seq != key || header.parts.first().map(|p| p.0) != Some(key) {
        return Err(damaged(format!(
            "it says it starts at segment {}",
            header.first_seq
        )));
    }
    let mut out = Vec::with_capacity(header.parts.len());
    let mut at = header_end;
    let mut previous = None;
    for (seq, len) in header.parts {
        if previous.is_some_and(|p| seq <= p) || seq > header.last_seq {
            return Err(damaged(format!("part {seq} is out of order")));
        }
        previous = Some(seq);
        let end = at
            .checked_add(len as usize)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| damaged(format!("truncated part {seq}")))?;
        out.push((seq, bytes[at..end].to_vec()));
        at = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_capture::{FileChange, FileChangeKind};

    #[test]
    fn a_segment_reads_back_exactly_and_refuses_a_swapped_seq() {
        let t = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let mut sources = BTreeMap::new();
        sources.insert(
            "uploads".to_string(),
            vec![Record::File(FileChange {
                epoch: 1,
                seq: 3,
                path: "a.txt".into(),
                change: FileChangeKind::Deleted,
                observed_at: t,
            })],
        );
        let seg = TimelineSegment {
            seq: 7,
            after: t,
            cut_at: t,
            contents: ContentMap::new(),
            sources,
            inline: BTreeMap::new(),
            mariadb: BTreeMap::new(),
            checkpoint: true,
        };
        let bytes = seg.encode();
        assert_eq!(TimelineSegment::decode(7, &bytes).unwrap(), seg);
        assert!(TimelineSegment::decode(8, &bytes).is_err());
        assert!(TimelineSegment::decode(7, &bytes[..bytes.len() - 1]).is_err());
        assert_eq!(bytes[8], FORMAT_VERSION);

        // With inline contents (version 2), and inside a bundle.
        let mut seg2 = seg.clone();
        seg2.seq = 8;
        seg2.inline.insert(
            blake3::hash(b"hello").to_hex().to_string(),
            b"hello".to_vec(),
        );
        let bytes2 = seg2.encode();
        assert_eq!(bytes2[8], FORMAT_VERSION_INLINE);
        assert_eq!(TimelineSegment::decode(8, &bytes2).unwrap(), seg2);
        let bundle = encode_bundle(&[(7, bytes.clone()), (8, bytes2.clone())]);
        assert_eq!(
            split_bundle(7, &bundle).unwrap(),
            vec![(7, bytes), (8, bytes2)]
        );
        assert!(split_bundle(8, &bundle).is_err());
        assert!(split_bundle(7, &bundle[..bundle.len() - 1]).is_err());
    }
}
