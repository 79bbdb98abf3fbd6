//! A batch of the change feed: the records capture read in one poll, with the bytes they
//! need (page images are in the commit records; file contents and base images are carried
//! by blake3), encoded as a timeline segment (`docs/timeline-format.md`, version 2 layout)
//! whose seq is the batch's. Reusing that layout means a batch is checked the same way a
//! stored segment is: every source's records are a checksummed capture segment, and every
//! content is checked against its blake3 when decoded.

use std::collections::BTreeMap;

use lifeboat_capture::Record;
use lifeboat_capture::record::Sequenced;
use time::OffsetDateTime;

use super::Position;
use super::error::StreamError;
use crate::segment::{ContentMap, TimelineSegment};

/// Where a batch's records of one source lie in that source's capture sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SourceSpan {
    /// The highest seq of the source in the batch.
    pub last_seq: u64,
    /// The highest capture epoch of the source in the batch.
    pub max_epoch: u64,
    /// The epoch of the record with the highest seq.
    pub last_epoch: u64,
}

/// The spans of every source of a batch.
pub(crate) fn spans(sources: &BTreeMap<String, Vec<Record>>) -> BTreeMap<String, SourceSpan> {
    let mut out = BTreeMap::new();
    for (name, records) in sources {
        let Some(last) = records.iter().max_by_key(|r| (r.seq(), r.epoch())) else {
            continue;
        };
        out.insert(
            name.clone(),
            SourceSpan {
                last_seq: last.seq(),
                max_epoch: records.iter().map(Sequenced::epoch).max().unwrap_or(0),
                last_epoch: last.epoch(),
            },
        );
    }
    out
}

/// Encodes a batch.
pub(crate) fn encode(
    seq: u64,
    after: OffsetDateTime,
    cut_at: OffsetDateTime,
    sources: BTreeMap<String, Vec<Record>>,
    contents: BTreeMap<String, Vec<u8>>,
) -> Vec<u8> {
    TimelineSegment {
        seq,
        after,
        cut_at: cut_at.max(after),
        contents: ContentMap::new(),
        sources,
        inline: contents,
        mariadb: BTreeMap::new(),
        checkpoint: false,
    }
    .encode()
}

/// A batch as a standby applies it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DecodedBatch {
    pub position: Position,
    /// Records by source, in capture order.
    pub sources: BTreeMap<String, Vec<Record>>,
    /// File contents and base images by blake3 (already checked against it).
    pub contents: BTreeMap<String, Vec<u8>>,
    /// Encoded size.
    pub bytes: u64,
}

/// Decodes (and checks) a batch received at `position`.
pub(crate) fn decode(
    position: Position,
    bytes: &[u8],
    peer: &str,
) -> Result<DecodedBatch, StreamError> {
    let seg = TimelineSegment::decode(position.seq, bytes).map_err(|e| StreamError::Protocol {
        peer: peer.to_string(),
        why: format!("batch {position} does not decode: {e}"),
    })?;
    if !seg.contents.is_empty() {
        return Err(StreamError::Protocol {
            peer: peer.to_string(),
            why: format!("batch {position} names vault contents; a batch carries its contents"),
        });
    }
    Ok(DecodedBatch {
        position,
        sources: seg.sources,
        contents: seg.inline,
        bytes: bytes.len() as u64,
    })
}
