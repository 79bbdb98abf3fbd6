//! The few parts of MariaDB's binary log format that capture and replay need: event headers,
//! checksums, GTID events, how events group into transactions, and writing a binlog file
//! that `mariadb-binlog` reads back for replay.
//!
//! Layout (MariaDB 10.x, binlog version 4): every event starts with a 19-byte header,
//! little-endian: `timestamp u32, type u8, server_id u32, event_size u32, log_pos u32,
//! flags u16`; with `binlog_checksum=CRC32` its last 4 bytes are the CRC32 of everything
//! before them. A format description event (FDE) ends with the checksum algorithm byte and
//! then (always) its checksum. A transaction is a GTID event and the events after it up to
//! the one that ends it (below). Every length read here is checked before it is used.

use crate::error::{MariaDbError, Result};
use crate::gtid::Gtid;

/// Length of an event header.
pub const HEADER_LEN: usize = 19;
/// The four bytes that open a binlog file.
pub const BINLOG_MAGIC: [u8; 4] = [0xfe, b'b', b'i', b'n'];

/// Event types this module looks at.
pub mod event_type {
    /// A statement (DDL, `BEGIN`, `COMMIT`, statement-format DML).
    pub const QUERY: u8 = 2;
    /// The log continues in another file.
    pub const ROTATE: u8 = 4;
    /// Format description: the layout of the events that follow.
    pub const FORMAT_DESCRIPTION: u8 = 15;
    /// InnoDB commit of a transaction.
    pub const XID: u8 = 16;
    /// Replication heartbeat (never in a file).
    pub const HEARTBEAT: u8 = 27;
    /// XA PREPARE of an XA transaction.
    pub const XA_PREPARE: u8 = 38;
    /// MariaDB: the GTID that opens a transaction.
    pub const GTID: u8 = 162;
    /// MariaDB: the encryption header of an encrypted binlog.
    pub const START_ENCRYPTION: u8 = 164;
}

/// `flags2` of a GTID event: a transaction of one statement with no terminating event.
const FL_STANDALONE: u8 = 1;
/// `LOG_EVENT_BINLOG_IN_USE_F` of an FDE: the file was not closed.
const BINLOG_IN_USE: u16 = 1;

/// The header of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventHeader {
    /// When the statement that wrote it began, unix seconds (server clock).
    pub timestamp: u32,
    /// Event type.
    pub event_type: u8,
    /// Server that wrote it.
    pub server_id: u32,
    /// Length of the whole event (header, body, checksum).
    pub event_size: u32,
    /// Offset just after it in its original file.
    pub log_pos: u32,
    /// Flags.
    pub flags: u16,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn damaged(what: &str, why: impl Into<String>) -> MariaDbError {
    MariaDbError::CorruptBinlog {
        what: what.to_string(),
        why: why.into(),
        advice: "capture cannot use it; take a new base backup (restores from before it are unaffected)",
    }
}

/// Parses the header of `event` and checks that its size matches the bytes given.
pub fn header(event: &[u8]) -> Result<EventHeader> {
    if event.len() < HEADER_LEN {
        return Err(damaged(
            "event",
            format!("{} bytes, shorter than a header", event.len()),
        ));
    }
    let h = EventHeader {
        timestamp: u32_at(event, 0),
        event_type: event[4],
        server_id: u32_at(event, 5),
        event_size: u32_at(event, 9),
        log_pos: u32_at(event, 13),
        flags: u16_at(event, 17),
    };
    if h.event_size as usize != event.len() {
        return Err(damaged(
            "event",
            format!(
                "its header says {} bytes, {} were received",
                h.event_size,
                event.len()
            ),
        ));
    }
    Ok(h)
}

/// Whether the events described by `fde` carry a CRC32 checksum. An FDE always ends with
/// the algorithm byte and its own checksum.
pub fn fde_has_checksum(fde: &[u8]) -> Result<bool> {
    let h = header(fde)?;
    if h.event_type != event_type::FORMAT_DESCRIPTION || fde.len() < HEADER_LEN + 57 + 5 {
        return Err(damaged(
            "format description",
            "not a format description event",
        ));
    }
    match fde[fde.len() - 5] {
        0 => Ok(false),
        1 => Ok(true),
        alg => Err(damaged(
            "format description",
            format!("unknown checksum algorithm {alg}"),
        )),
    }
}

/// Verifies the CRC32 at the end of `event` (an FDE is always checksummed when it carries
/// an algorithm byte other than "off"; other events when `checksummed`).
pub fn verify_checksum(event: &[u8], checksummed: bool) -> Result<()> {
    if !checksummed {
        return Ok(());
    }
    if event.len() < HEADER_LEN + 4 {
        return Err(damaged("event", "too short for its checksum"));
    }
    let (body, sum) = event.split_at(event.len() - 4);
    let want = u32_at(sum, 0);
    let got = crc32fast::hash(body);
    if want != got {
        return Err(damaged(
            "event",
            format!("checksum mismatch (stored {want:08x}, computed {got:08x})"),
        ));
    }
    Ok(())
}

fn rewrite_checksum(event: &mut [u8]) {
    let n = event.len() - 4;
    let sum = crc32fast::hash(&event[..n]);
    event[n..].copy_from_slice(&sum.to_le_bytes());
}

/// The GTID and `flags2` of a GTID event.
pub fn parse_gtid_event(event: &[u8]) -> Result<(Gtid, u8)> {
    let h = header(event)?;
    if h.event_type != event_type::GTID || event.len() < HEADER_LEN + 13 {
        return Err(damaged("GTID event", "too short or not a GTID event"));
    }
    let b = &event[HEADER_LEN..];
    Ok((
        Gtid {
            domain: u32_at(b, 8),
            server_id: h.server_id,
            seq: u64_at(b, 0),
        },
        b[12],
    ))
}

/// The statement text of a query event (`checksum_len` bytes at its end are not text).
fn query_text(event: &[u8], checksum_len: usize) -> Option<&[u8]> {
    let b = event.get(HEADER_LEN..event.len().checked_sub(checksum_len)?)?;
    if b.len() < 13 {
        return None;
    }
    let db_len = b[8] as usize;
    let status_len = u16_at(b, 11) as usize;
    let start = 13usize
        .checked_add(status_len)?
        .checked_add(db_len)?
        .checked_add(1)?;
    b.get(start..)
}

fn ends_transaction(event: &[u8], h: &EventHeader, standalone: bool, checksum_len: usize) -> bool {
    match h.event_type {
        event_type::XID | event_type::XA_PREPARE => true,
        event_type::QUERY => {
            if standalone {
                return true;
            }
            let text = query_text(event, checksum_len).unwrap_or_default();
            let text = String::from_utf8_lossy(text);
            let t = text.trim().to_ascii_uppercase();
            t == "COMMIT"
                || t == "ROLLBACK"
                || t.starts_with("XA COMMIT")
                || t.starts_with("XA ROLLBACK")
        }
        _ => false,
    }
}

/// One whole transaction read from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Its GTID.
    pub gtid: Gtid,
    /// Timestamp of its last event (the commit), unix seconds, server clock.
    pub server_time: u32,
    /// Its events, each whole (header, body, checksum), in log order.
    pub events: Vec<u8>,
}

/// Groups a stream of events into transactions.
#[derive(Debug, Default)]
pub struct Assembler {
    fde: Option<Vec<u8>>,
    checksummed: bool,
    open: Option<(Gtid, bool, Vec<u8>)>,
}

impl Assembler {
    /// A new assembler that has not seen a format description yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The format description in force (its raw bytes).
    pub fn format_description(&self) -> Option<&[u8]> {
        self.fde.as_deref()
    }

    /// Forgets a transaction that was not complete (the stream broke in its middle).
    pub fn drop_partial(&mut self) {
        self.open = None;
    }

    /// Feeds one whole event; returns a transaction when this event completed one.
    pub fn push(&mut self, event: &[u8]) -> Result<Option<Transaction>> {
        let h = header(event)?;
        if h.event_type == event_type::FORMAT_DESCRIPTION {
            self.checksummed = fde_has_checksum(event)?;
            verify_checksum(event, self.checksummed)?;
            self.fde = Some(event.to_vec());
            return Ok(None);
        }
        if h.event_type == event_type::START_ENCRYPTION {
            return Err(MariaDbError::CorruptBinlog {
                what: "stream".into(),
                why: "the binary log is encrypted".into(),
                advice: "Lifeboat captures unencrypted binary logs only (the vault encrypts them); turn encrypt_binlog off",
            });
        }
        if h.event_type == event_type::HEARTBEAT {
            return Ok(None);
        }
        if self.fde.is_none() && h.event_type == event_type::ROTATE {
            // The stream opens with a rotate event naming the file, before its format
            // description; it belongs to no transaction.
            return Ok(None);
        }
        if self.fde.is_none() {
            return Err(damaged(
                "stream",
                "an event came before any format description",
            ));
        }
        verify_checksum(event, self.checksummed)?;
        let checksum_len = if self.checksummed { 4 } else { 0 };
        if h.event_type == event_type::GTID {
            if let Some((open, _, _)) = &self.open {
                return Err(damaged(
                    "stream",
                    format!("transaction {open} has no end before the next GTID event"),
                ));
            }
            let (gtid, flags) = parse_gtid_event(event)?;
            self.open = Some((gtid, flags & FL_STANDALONE != 0, event.to_vec()));
            return Ok(None);
        }
        let Some((gtid, standalone, events)) = self.open.as_mut() else {
            // Rotate, GTID list, binlog checkpoint: between transactions, not part of any.
            return Ok(None);
        };
        events.extend_from_slice(event);
        if ends_transaction(event, &h, *standalone, checksum_len) {
            let gtid = *gtid;
            let (_, _, events) = self.open.take().expect("open");
            return Ok(Some(Transaction {
                gtid,
                server_time: h.timestamp,
                events,
            }));
        }
        Ok(None)
    }
}

/// Splits concatenated whole events into single events (checking every length).
pub fn split_events(mut bytes: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < HEADER_LEN {
            return Err(damaged(
                "record",
                "trailing bytes shorter than an event header",
            ));
        }
        let size = u32_at(bytes, 9) as usize;
        if size < HEADER_LEN || size > bytes.len() {
            return Err(damaged("record", format!("an event claims {size} bytes")));
        }
        let (ev, rest) = bytes.split_at(size);
        out.push(ev);
        bytes = rest;
    }
    Ok(out)
}

/// Writes a binlog file `mariadb-binlog` can read: the magic, `fde` (marked as closed), then
/// the events of `transactions` in order, each event's `log_pos` set to its end in this file
/// and its checksum recomputed (after the stored one was verified).
pub fn write_binlog_file<'a>(
    out: &mut impl std::io::Write,
    fde: &[u8],
    transactions: impl IntoIterator<Item = &'a [u8]>,
) -> Result<u64> {
    let checksummed = fde_has_checksum(fde)?;
    verify_checksum(fde, true)?;
    let io = |e: std::io::Error| MariaDbError::Io {
        action: "write",
        path: "replay binlog".into(),
        source: e,
    };
    let mut offset = BINLOG_MAGIC.len() as u64;
    out.write_all(&BINLOG_MAGIC).map_err(io)?;
    let mut put = |ev: &[u8], is_fde: bool, offset: &mut u64| -> Result<()> {
        let mut ev = ev.to_vec();
        *offset += ev.len() as u64;
        let pos = u32::try_from(*offset).map_err(|_| damaged("replay", "binlog over 4 GiB"))?;
        ev[13..17].copy_from_slice(&pos.to_le_bytes());
        if is_fde {
            let flags = u16_at(&ev, 17) & !BINLOG_IN_USE;
            ev[17..19].copy_from_slice(&flags.to_le_bytes());
        }
        if checksummed || is_fde {
            rewrite_checksum(&mut ev);
        }
        out.write_all(&ev).map_err(io)
    };
    put(fde, true, &mut offset)?;
    for tx in transactions {
        for ev in split_events(tx)? {
            verify_checksum(ev, checksummed)?;
            put(ev, false, &mut offset)?;
        }
    }
    Ok(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ty: u8, ts: u32, body: &[u8]) -> Vec<u8> {
        let size = (HEADER_LEN + body.len() + 4) as u32;
        let mut e = Vec::new();
        e.extend_from_slice(&ts.to_le_bytes());
        e.push(ty);
        e.extend_from_slice(&1u32.to_le_bytes());
        e.extend_from_slice(&size.to_le_bytes());
        e.extend_from_slice(&0u32.to_le_bytes());
        e.extend_from_slice(&0u16.to_le_bytes());
        e.extend_from_slice(body);
        e.extend_from_slice(&[0; 4]);
        rewrite_checksum(&mut e);
        e
    }

    fn fde() -> Vec<u8> {
        let mut body = vec![4, 0];
        body.extend_from_slice(&[b'x'; 50]);
        body.extend_from_slice(&[0; 4]);
        body.push(19);
        body.extend_from_slice(&[0; 10]);
        body.push(1); // CRC32
        event(event_type::FORMAT_DESCRIPTION, 0, &body)
    }

    fn gtid(seq: u64, flags: u8) -> Vec<u8> {
        let mut b = seq.to_le_bytes().to_vec();
        b.extend_from_slice(&0u32.to_le_bytes());
        b.push(flags);
        b.extend_from_slice(&[0; 6]);
        event(event_type::GTID, 100, &b)
    }

    #[test]
    fn events_group_into_transactions_and_damage_is_refused() {
        let mut a = Assembler::new();
        assert!(a.push(&gtid(1, 0)).is_err(), "no FDE yet");
        a.push(&fde()).unwrap();
        assert!(a.push(&gtid(1, 0)).unwrap().is_none());
        assert!(a.push(&event(19, 100, &[0; 8])).unwrap().is_none());
        let tx = a
            .push(&event(event_type::XID, 101, &[0; 8]))
            .unwrap()
            .unwrap();
        assert_eq!(tx.gtid.seq, 1);
        assert_eq!(tx.server_time, 101);
        assert_eq!(split_events(&tx.events).unwrap().len(), 3);
        // A standalone transaction ends at its statement.
        a.push(&gtid(2, FL_STANDALONE)).unwrap();
        let mut q = vec![0u8; 13];
        q.extend_from_slice(b"\0CREATE TABLE t (a int)");
        assert!(
            a.push(&event(event_type::QUERY, 102, &q))
                .unwrap()
                .is_some()
        );
        // A flipped bit fails the checksum.
        let mut bad = gtid(3, 0);
        bad[HEADER_LEN] ^= 1;
        assert!(matches!(
            a.push(&bad),
            Err(MariaDbError::CorruptBinlog { .. })
        ));
        let mut file = Vec::new();
        write_binlog_file(&mut file, &fde(), [tx.events.as_slice()]).unwrap();
        assert_eq!(&file[..4], &BINLOG_MAGIC);
    }
}
