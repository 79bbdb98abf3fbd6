//! The records MariaDB capture produces (one per committed transaction) and their versioned
//! batch encoding, the object the timeline ships (`docs/mariadb-format.md`).
//!
//! Decoding verifies the batch's checksum and every event's CRC32, so a damaged batch is an
//! error, never a silently different database.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::binlog;
use crate::error::{MariaDbError, Result};
use crate::gtid::Gtid;

/// Magic bytes that open every batch.
pub const BATCH_MAGIC: &[u8; 8] = b"LBMDBSEG";
/// Version of the batch layout written by [`encode_batch`].
pub const BATCH_FORMAT_VERSION: u8 = 1;

/// One committed transaction, as the binary log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionRecord {
    /// Capture session that produced it (see [`resolve_history`]).
    pub epoch: u64,
    /// Position in the capture's sequence: strictly increasing by one, no gaps.
    pub seq: u64,
    /// The transaction's GTID.
    pub gtid: Gtid,
    /// The server's timestamp of its commit event, unix seconds (whole seconds: MariaDB's
    /// binlog has no finer time).
    pub server_time: i64,
    /// When capture received it, on Lifeboat's clock, to the nanosecond. Never earlier than
    /// the commit was written to the binary log (the server sends only what it wrote and
    /// synced), so a restore "as of T" by this time never includes a transaction written
    /// after T.
    pub received_at: OffsetDateTime,
    /// The format description event its events are encoded under (raw bytes; shared).
    pub format: Arc<Vec<u8>>,
    /// Its events, each whole (header, body, CRC32), in log order: the bytes replay feeds
    /// to `mariadb-binlog`.
    pub events: Vec<u8>,
}

impl TransactionRecord {
    /// Checks every event of the transaction against its CRC32 (when its format has
    /// checksums) and that the events fill the record exactly.
    pub fn verify(&self) -> Result<()> {
        let checksummed = binlog::fde_has_checksum(&self.format)?;
        binlog::verify_checksum(&self.format, checksummed)?;
        let events = binlog::split_events(&self.events)?;
        if events.is_empty() {
            return Err(MariaDbError::CorruptBinlog {
                what: format!("record of transaction {}", self.gtid),
                why: "it holds no event".into(),
                advice: "read the batch from another destination",
            });
        }
        for ev in events {
            binlog::verify_checksum(ev, checksummed).map_err(|e| match e {
                MariaDbError::CorruptBinlog { why, .. } => MariaDbError::CorruptBinlog {
                    what: format!("record of transaction {}", self.gtid),
                    why,
                    advice: "read the batch from another destination; restores before it are unaffected",
                },
                other => other,
            })?;
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct RecordMeta {
    epoch: u64,
    seq: u64,
    gtid: String,
    server_time: i64,
    #[serde(with = "time::serde::rfc3339")]
    received_at: OffsetDateTime,
    /// Index into `formats`.
    format: usize,
    /// Length of its events in the body.
    len: u64,
}

#[derive(Serialize, Deserialize)]
struct BatchMeta {
    /// Length of each format description in the body (they come first).
    formats: Vec<u64>,
    records: Vec<RecordMeta>,
}

/// Encodes records into one batch (layout in `docs/mariadb-format.md`).
pub fn encode_batch(records: &[TransactionRecord]) -> Vec<u8> {
    let mut formats: Vec<Arc<Vec<u8>>> = Vec::new();
    let mut metas = Vec::with_capacity(records.len());
    for r in records {
        let idx = match formats
            .iter()
            .position(|f| Arc::ptr_eq(f, &r.format) || **f == *r.format)
        {
            Some(i) => i,
            None => {
                formats.push(r.format.clone());
                formats.len() - 1
            }
        };
        metas.push(RecordMeta {
            epoch: r.epoch,
            seq: r.seq,
            gtid: r.gtid.to_string(),
            server_time: r.server_time,
            received_at: r.received_at,
            format: idx,
            len: r.events.len() as u64,
        });
    }
    let meta = serde_json::to_vec(&BatchMeta {
        formats: formats.iter().map(|f| f.len() as u64).collect(),
        records: metas,
    })
    .expect("batch metadata is plain data");
    let mut out = Vec::new();
    out.extend_from_slice(BATCH_MAGIC);
    out.push(BATCH_FORMAT_VERSION);
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(&meta);
    for f in &formats {
        out.extend_from_slice(f);
    }
    for r in records {
        out.extend_from_slice(&r.events);
    }
    let hash = blake3::hash(&out);
    out.extend_from_slice(hash.as_bytes());
    out
}

/// Decodes a batch written by [`encode_batch`], verifying its checksum and every event's.
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<TransactionRecord>> {
    let bad = |why: &str| MariaDbError::BadBatch(why.to_string());
    if bytes.len() < 8 || &bytes[..8] != BATCH_MAGIC {
        return Err(bad("not a MariaDB capture batch (bad magic)"));
    }
    if bytes.len() < 13 + 32 {
        return Err(bad("truncated"));
    }
    if bytes[8] != BATCH_FORMAT_VERSION {
        return Err(MariaDbError::UnsupportedBatchVersion(bytes[8]));
    }
    let (content, hash) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(content).as_bytes() != hash {
        return Err(bad("checksum mismatch"));
    }
    let meta_len = u32::from_be_bytes(content[9..13].try_into().expect("4 bytes")) as usize;
    let meta_end = 13usize
        .checked_add(meta_len)
        .filter(|&e| e <= content.len())
        .ok_or_else(|| bad("metadata length past the end"))?;
    let meta: BatchMeta =
        serde_json::from_slice(&content[13..meta_end]).map_err(|e| bad(&e.to_string()))?;
    let mut at = meta_end;
    let mut take = |len: u64| -> Result<&[u8]> {
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| at.checked_add(l))
            .filter(|&e| e <= content.len())
            .ok_or_else(|| bad("a length runs past the end"))?;
        let s = &content[at..end];
        at = end;
        Ok(s)
    };
    let mut formats = Vec::new();
    for &len in &meta.formats {
        let f = take(len)?.to_vec();
        binlog::verify_checksum(&f, binlog::fde_has_checksum(&f)?)?;
        formats.push(Arc::new(f));
    }
    let mut records = Vec::with_capacity(meta.records.len());
    for m in meta.records {
        let format = formats
            .get(m.format)
            .cloned()
            .ok_or_else(|| bad("a record names a missing format"))?;
        let events = take(m.len)?.to_vec();
        let checksummed = binlog::fde_has_checksum(&format)?;
        for ev in binlog::split_events(&events)? {
            binlog::verify_checksum(ev, checksummed)?;
        }
        records.push(TransactionRecord {
            epoch: m.epoch,
            seq: m.seq,
            gtid: m
                .gtid
                .parse()
                .map_err(|e: crate::gtid::BadGtid| bad(&e.to_string()))?,
            server_time: m.server_time,
            received_at: m.received_at,
            format,
            events,
        });
    }
    if at != content.len() {
        return Err(bad("bytes left after the last record"));
    }
    Ok(records)
}

/// Resolves what crashes left behind: a seq handed out but not confirmed before capture
/// stopped is handed out again by the next session (a later epoch). A record of epoch *e* at
/// seq *s* is current only if no later epoch's first record has a seq `<= s`; among copies of
/// the same (epoch, seq) the first is kept. The result is in seq order. The same transaction
/// (GTID) appearing twice among current records means two sessions disagree: refused.
pub fn resolve_history(records: Vec<TransactionRecord>) -> Result<Vec<TransactionRecord>> {
    let mut first_seq_of_epoch: BTreeMap<u64, u64> = BTreeMap::new();
    for r in &records {
        let e = first_seq_of_epoch.entry(r.epoch).or_insert(r.seq);
        *e = (*e).min(r.seq);
    }
    let mut current: BTreeMap<u64, TransactionRecord> = BTreeMap::new();
    for r in records {
        let superseded = first_seq_of_epoch
            .range(r.epoch + 1..)
            .any(|(_, &first)| first <= r.seq);
        if superseded {
            continue;
        }
        match current.get(&r.seq) {
            Some(have) if have.epoch >= r.epoch => {}
            _ => {
                current.insert(r.seq, r);
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for r in current.values() {
        if !seen.insert(r.gtid) {
            return Err(MariaDbError::BadBatch(format!(
                "transaction {} is stored twice at different positions; the capture history is inconsistent",
                r.gtid
            )));
        }
    }
    Ok(current.into_values().collect())
}
