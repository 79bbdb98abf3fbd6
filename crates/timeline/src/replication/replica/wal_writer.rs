//! Writing a standby's database changes as SQLite itself would: each applied group becomes
//! one transaction appended to the database's write-ahead log (`<db>-wal`), its frames
//! checksummed and salted as SQLite's `wal.c` writes them, the last one a commit frame.
//!
//! Why the log and not the database file: SQLite counts a transaction in the log only once
//! its commit frame is there and the checksum chain leading to it verifies. So whatever a
//! kill -9 interrupts, SQLite (the app after a promotion, `PRAGMA integrity_check`, this
//! standby restarting) sees either the whole group or none of it: a torn tail is ignored by
//! SQLite's recovery, and cut off here before anything is appended after it. The database
//! file itself is only ever written by SQLite, when [`checkpoint`] copies the log back.
//!
//! Nothing else may have the standby's databases open while it applies: a connection of
//! another process would not see frames appended behind its back, and closing the last one
//! would checkpoint and delete the log.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use lifeboat_capture::wal::{
    self, FRAME_HEADER_SIZE, MAGIC_LITTLE_ENDIAN, WAL_FORMAT_VERSION, WAL_HEADER_SIZE, WalHeader,
    WalPosition, WalStop, wal_checksum,
};
use rusqlite::{Connection, OpenFlags};

use super::super::error::StreamError;

/// The log of one standby database, positioned after its last whole transaction.
pub(crate) struct WalAppender {
    path: PathBuf,
    /// The current generation's header and the position after its last commit, once the
    /// log has one.
    at: Option<(WalHeader, WalPosition)>,
}

fn wal_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

/// The page size in a database file's header (4096 for a file too short to have one).
pub(crate) fn db_page_size(db: &Path) -> Result<u32, StreamError> {
    let f = File::open(db).map_err(StreamError::io("open", db))?;
    let mut header = [0u8; 100];
    match f.read_exact_at(&mut header, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(4096),
        Err(e) => return Err(StreamError::io("read the header of", db)(e)),
    }
    Ok(match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n => u32::from(n),
    })
}

fn sync_dir_of(path: &Path) -> Result<(), StreamError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StreamError::io("fsync", dir))
}

/// Fresh salts for a new log generation: SQLite only needs them to differ from the last
/// generation's, so that no stale frame verifies.
fn fresh_salts(previous: Option<[u32; 2]>) -> [u32; 2] {
    let mut h = blake3::Hasher::new();
    h.update(&std::process::id().to_be_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(&now.as_nanos().to_be_bytes());
    let b = h.finalize();
    let b = b.as_bytes();
    let mut salts = [
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
    ];
    if let Some(p) = previous {
        salts[0] = p[0].wrapping_add(1);
    }
    salts
}

impl WalAppender {
    /// Finds the end of the last whole transaction in `db`'s log and cuts off anything after
    /// it (a transaction a crash interrupted, which SQLite ignores too). A log whose
    /// committed frames are damaged is an error: what SQLite would see is no longer what
    /// this standby applied.
    pub(crate) fn open(db: &Path) -> Result<WalAppender, StreamError> {
        let path = wal_path(db);
        let file = match File::options().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(WalAppender { path, at: None });
            }
            Err(e) => return Err(StreamError::io("open", &path)(e)),
        };
        let header = match wal::read_header(&file).map_err(StreamError::io("read", &path))? {
            Ok(Some(h)) => Some(h),
            // No whole header: no transaction in it either (a header is written, with the
            // first transaction, only into an empty log).
            Ok(None) | Err(_) => None,
        };
        let Some(header) = header else {
            file.set_len(0)
                .map_err(StreamError::io("truncate", &path))?;
            file.sync_all().map_err(StreamError::io("fsync", &path))?;
            return Ok(WalAppender { path, at: None });
        };
        let read = wal::read_transactions(&file, &header, header.start(), None)
            .map_err(StreamError::io("read", &path))?;
        if let WalStop::Corrupt { offset, .. } = read.stop {
            return Err(StreamError::Io {
                action: "read",
                path: path.clone(),
                source: std::io::Error::other(format!(
                    "committed frames at byte {offset} are damaged"
                )),
            });
        }
        let end = read.transactions.last().map_or(header.start(), |t| t.end);
        let len = file
            .metadata()
            .map_err(StreamError::io("stat", &path))?
            .len();
        if len > end.offset {
            file.set_len(end.offset)
                .map_err(StreamError::io("cut the torn tail of", &path))?;
            file.sync_all().map_err(StreamError::io("fsync", &path))?;
        }
        Ok(WalAppender {
            path,
            at: Some((header, end)),
        })
    }

    /// Bytes in the log.
    pub(crate) fn len(&self) -> u64 {
        self.at.map_or(0, |(_, end)| end.offset)
    }

    /// Appends one transaction: `pages` (page number, bytes of `page_size`), ascending, and
    /// the database size in pages after it; fsyncs the log. When this returns, SQLite sees
    /// the transaction; if it fails or the process dies first, SQLite sees none of it.
    pub(crate) fn append(
        &mut self,
        page_size: u32,
        pages: &[(u32, &[u8])],
        db_pages: u32,
    ) -> Result<(), StreamError> {
        if pages.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(StreamError::io("open", &path))?;
        // The log must still be the one this appender left. A SQLite connection of someone
        // else, on closing, copies it back and removes it: then the database file holds
        // everything and a new generation starts. Anything else changed it behind our back.
        let len = file
            .metadata()
            .map_err(StreamError::io("stat", &path))?
            .len();
        match self.at {
            Some(_) if len == 0 => self.at = None,
            Some((_, end)) if len != end.offset => {
                return Err(StreamError::Io {
                    action: "append to",
                    path,
                    source: std::io::Error::other(format!(
                        "the log is {len} bytes where this standby left {}: something else wrote to the standby's database",
                        end.offset
                    )),
                });
            }
            _ => {}
        }
        let created = self.at.is_none();
        let (header, mut pos) = match self.at {
            Some((h, end)) if h.page_size == page_size => (h, end),
            Some(_) => {
                return Err(StreamError::Io {
                    action: "append to",
                    path,
                    source: std::io::Error::other(
                        "the log's page size differs from the transaction's",
                    ),
                });
            }
            None => {
                // A new generation: empty the file first so no frame of an earlier one can
                // follow the new header, then write the header with the first transaction.
                file.set_len(0)
                    .map_err(StreamError::io("truncate", &path))?;
                let header = new_header(page_size, None);
                let bytes = encode_header(&header);
                file.write_all_at(&bytes, 0)
                    .map_err(StreamError::io("write", &path))?;
                (header, header.start())
            }
        };
        let frame_size = FRAME_HEADER_SIZE as usize + page_size as usize;
        // Written in chunks of about 1 MiB so a large transaction (a whole base image) does
        // not need a second copy of itself in memory.
        let per_chunk = ((1 << 20) / frame_size).max(1);
        let mut checksum = pos.checksum;
        let mut offset = pos.offset;
        for (i, chunk) in pages.chunks(per_chunk).enumerate() {
            let mut buf = Vec::with_capacity(chunk.len() * frame_size);
            for (j, (pgno, data)) in chunk.iter().enumerate() {
                if data.len() != page_size as usize {
                    return Err(StreamError::Io {
                        action: "append to",
                        path,
                        source: std::io::Error::other(format!(
                            "page {pgno} has {} bytes, not {page_size}",
                            data.len()
                        )),
                    });
                }
                let last = i * per_chunk + j + 1 == pages.len();
                let mut fh = [0u8; FRAME_HEADER_SIZE as usize];
                fh[0..4].copy_from_slice(&pgno.to_be_bytes());
                fh[4..8].copy_from_slice(&(if last { db_pages } else { 0 }).to_be_bytes());
                fh[8..12].copy_from_slice(&header.salt[0].to_be_bytes());
                fh[12..16].copy_from_slice(&header.salt[1].to_be_bytes());
                checksum = wal_checksum(header.big_endian_checksums, checksum, &fh[..8]);
                checksum = wal_checksum(header.big_endian_checksums, checksum, data);
                fh[16..20].copy_from_slice(&checksum[0].to_be_bytes());
                fh[20..24].copy_from_slice(&checksum[1].to_be_bytes());
                buf.extend_from_slice(&fh);
                buf.extend_from_slice(data);
            }
            file.write_all_at(&buf, offset)
                .map_err(StreamError::io("write", &path))?;
            offset += buf.len() as u64;
        }
        // The transaction counts (for SQLite, and so for this standby) once this returns.
        file.sync_data().map_err(StreamError::io("fsync", &path))?;
        if created {
            sync_dir_of(&path)?;
        }
        pos = WalPosition {
            salt: header.salt,
            offset,
            checksum,
        };
        self.at = Some((header, pos));
        let _ = &mut file;
        Ok(())
    }
}

fn new_header(page_size: u32, previous: Option<[u32; 2]>) -> WalHeader {
    let salt = fresh_salts(previous);
    let mut h = WalHeader {
        big_endian_checksums: false,
        page_size,
        checkpoint_seq: 0,
        salt,
        checksum: [0, 0],
    };
    let bytes = encode_header(&h);
    h.checksum = wal_checksum(false, [0, 0], &bytes[..24]);
    h
}

fn encode_header(h: &WalHeader) -> [u8; WAL_HEADER_SIZE as usize] {
    let mut b = [0u8; WAL_HEADER_SIZE as usize];
    b[0..4].copy_from_slice(&MAGIC_LITTLE_ENDIAN.to_be_bytes());
    b[4..8].copy_from_slice(&WAL_FORMAT_VERSION.to_be_bytes());
    b[8..12].copy_from_slice(&h.page_size.to_be_bytes());
    b[12..16].copy_from_slice(&h.checkpoint_seq.to_be_bytes());
    b[16..20].copy_from_slice(&h.salt[0].to_be_bytes());
    b[20..24].copy_from_slice(&h.salt[1].to_be_bytes());
    let c = wal_checksum(false, [0, 0], &b[..24]);
    b[24..28].copy_from_slice(&c[0].to_be_bytes());
    b[28..32].copy_from_slice(&c[1].to_be_bytes());
    b
}

/// Has SQLite copy `db`'s log back into the database file (fsynced) and empty it, then
/// closes its connection (SQLite then deletes the log). Afterwards the database file alone
/// holds everything applied. Needs that nobody else has the database open.
pub(crate) fn checkpoint(db: &Path) -> Result<(), StreamError> {
    let sql = |action| {
        move |source| StreamError::Sqlite {
            action,
            path: db.to_path_buf(),
            source,
        }
    };
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql("open"))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql("set synchronous=FULL on"))?;
    let (busy, log, copied): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .map_err(sql("checkpoint"))?;
    if busy != 0 || log != copied {
        return Err(StreamError::Io {
            action: "checkpoint",
            path: db.to_path_buf(),
            source: std::io::Error::other(
                "another connection holds the standby's database open; nothing else may open it while the standby applies",
            ),
        });
    }
    conn.close().map_err(|(_, e)| sql("close")(e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make_db(dir: &Path) -> PathBuf {
        let db = dir.join("a.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);",
        )
        .unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        drop(conn);
        db
    }

    /// Pages of a second database where rows were inserted: what a primary would stream.
    fn pages_after_insert(dir: &Path, db: &Path, rows: i64) -> (Vec<(u32, Vec<u8>)>, u32) {
        let other = dir.join("b.db");
        std::fs::copy(db, &other).unwrap();
        let conn = Connection::open(&other).unwrap();
        for i in 0..rows {
            conn.execute("INSERT INTO t (id, v) VALUES (?1, 'x')", [i])
                .unwrap();
        }
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        drop(conn);
        let bytes = std::fs::read(&other).unwrap();
        std::fs::remove_file(&other).unwrap();
        let pages: Vec<(u32, Vec<u8>)> = bytes
            .chunks(4096)
            .enumerate()
            .map(|(i, p)| (i as u32 + 1, p.to_vec()))
            .collect();
        let n = pages.len() as u32;
        (pages, n)
    }

    fn count(db: &Path) -> i64 {
        let conn = Connection::open(db).unwrap();
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn sqlite_sees_an_appended_transaction_and_ignores_a_torn_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = make_db(dir.path());
        let (pages, n) = pages_after_insert(dir.path(), &db, 50);
        let refs: Vec<(u32, &[u8])> = pages.iter().map(|(p, d)| (*p, d.as_slice())).collect();
        let mut w = WalAppender::open(&db).unwrap();
        w.append(4096, &refs, n).unwrap();
        // A second, torn transaction: frames without their commit.
        let len = w.len();
        let wal = wal_path(&db);
        assert!(len > 0);
        let f = OpenOptions::new().write(true).open(&wal).unwrap();
        f.write_all_at(&vec![7u8; 5000], len).unwrap();
        drop(f);
        // Reopened: the torn tail is cut and the next transaction continues the chain.
        let (pages, n) = pages_after_insert(dir.path(), &db, 80);
        let refs: Vec<(u32, &[u8])> = pages.iter().map(|(p, d)| (*p, d.as_slice())).collect();
        let mut w = WalAppender::open(&db).unwrap();
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), len);
        w.append(4096, &refs, n).unwrap();
        assert_eq!(count(&db), 80, "SQLite reads both transactions");
        // (Closing that connection copied the log back and removed it, as SQLite does.)
        checkpoint(&db).unwrap();
        assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0);
        assert_eq!(count(&db), 80);
        lifeboat_capture::replay::integrity_check(&db).unwrap();
    }
}
