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
/// Layout version written by [`TimelineSegment::encode`].
pub const FORMAT_VERSION: u8 = 1;

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
        let header = Header {
            seq: self.seq,
            after: self.after,
            cut_at: self.cut_at,
            contents: self.contents.clone(),
            sources,
        };
        let header = serde_json::to_vec(&header).expect("plain data serialises");
        let mut out =
            Vec::with_capacity(13 + header.len() + bodies.iter().map(Vec::len).sum::<usize>());
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_VERSION);
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
        if bytes[8] != FORMAT_VERSION {
            return Err(damaged(format!(
                "format version {} is not known to this lifeboat (it reads {FORMAT_VERSION}); upgrade lifeboat",
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
        Ok(TimelineSegment {
            seq,
            after: header.after,
            cut_at: header.cut_at,
            contents: header.contents,
            sources,
        })
    }
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
        };
        let bytes = seg.encode();
        assert_eq!(TimelineSegment::decode(7, &bytes).unwrap(), seg);
        assert!(TimelineSegment::decode(8, &bytes).is_err());
        assert!(TimelineSegment::decode(7, &bytes[..bytes.len() - 1]).is_err());
    }
}
