//! A batch of the change feed: the records capture read in one poll, with the bytes they
//! need (page images are in the commit records; file contents and base images are carried
//! by blake3), encoded as a timeline segment (`docs/timeline-format.md`, version 2 layout)
//! whose seq is the batch's. Reusing that layout means a batch is checked the same way a
//! stored segment is: every source's records are a checksummed capture segment, and every
//! content is checked against its blake3 when decoded.

use std::collections::BTreeMap;

use lifeboat_capture::Record;
use lifeboat_capture::record::Sequenced;
use lifeboat_mariadb::TransactionRecord;
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

/// MariaDB transactions by source (the server's data dir name).
pub(crate) type MariaDbRecords = BTreeMap<String, Vec<TransactionRecord>>;

/// The span of one source's records, given as (seq, epoch) pairs.
fn span(records: impl Iterator<Item = (u64, u64)> + Clone) -> Option<SourceSpan> {
    let (last_seq, last_epoch) = records.clone().max()?;
    Some(SourceSpan {
        last_seq,
        max_epoch: records.map(|(_, e)| e).max().unwrap_or(0),
        last_epoch,
    })
}

/// The spans of every source of a batch (capture's and MariaDB's).
pub(crate) fn spans(
    sources: &BTreeMap<String, Vec<Record>>,
    mariadb: &MariaDbRecords,
) -> BTreeMap<String, SourceSpan> {
    let mut out = BTreeMap::new();
    for (name, records) in sources {
        if let Some(s) = span(records.iter().map(|r| (r.seq(), r.epoch()))) {
            out.insert(name.clone(), s);
        }
    }
    for (name, records) in mariadb {
        if let Some(s) = span(records.iter().map(|r| (r.seq, r.epoch))) {
            out.insert(name.clone(), s);
        }
    }
    out
}

/// Encodes a batch.
pub(crate) fn encode(
    seq: u64,
    after: OffsetDateTime,
    cut_at: OffsetDateTime,
    sources: BTreeMap<String, Vec<Record>>,
    mariadb: MariaDbRecords,
    contents: BTreeMap<String, Vec<u8>>,
) -> Vec<u8> {
    TimelineSegment {
        seq,
        after,
        cut_at: cut_at.max(after),
        contents: ContentMap::new(),
        sources,
        inline: contents,
        mariadb,
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
    /// MariaDB transactions by source, in capture order.
    pub mariadb: MariaDbRecords,
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
        mariadb: seg.mariadb,
        contents: seg.inline,
        bytes: bytes.len() as u64,
    })
}
