//! Writing a full, page-exact image of the database as of capture's current position.
//!
//! The image is assembled from the database file overlaid with the newest captured WAL
//! frame of each page, without any write lock. It is consistent because capture's pinned
//! read transaction keeps SQLite from copying any frame newer than capture's position into
//! the database file (a pin on read lock i >= 1 bounds copying to its mark, which capture's
//! position has passed; a pin on read lock 0 stops copying). The log can restart while the
//! image is read only when the pin sits on read lock 0 and capture is at the end of a
//! generation that was copied back in full: the image is then re-read from the database
//! file alone. The file is written next to the position file, fsynced, then renamed into
//! place.
//!
//! The database file is read through the one handle [`crate::sqlite::SqliteCapture`] keeps
//! open for its whole life: closing *any* descriptor of a file drops every POSIX lock this
//! process holds on it, including SQLite's own, which would let another process believe
//! it is alone, checkpoint the log past capture, and delete it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use time::OffsetDateTime;

use crate::durable::sync_parent;
use crate::error::{CaptureError, Result, io_err};
use crate::record::{BaseImageRecord, SnapshotReason};
use crate::sqlite::{BaseImage, ImageInputs};
use crate::wal;

/// Page size from the database file header (4096 for a file too short to have one).
pub(crate) fn db_file_page_size(f: &File, db: &Path) -> Result<u32> {
    let mut header = [0u8; 100];
    match f.read_exact_at(&mut header, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(4096),
        Err(e) => return Err(io_err(db, "read the header of")(e)),
    }
    Ok(match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n => u32::from(n),
    })
}

/// Database size in pages per the file header (trusted only when its validity counter
/// matches, as SQLite does), else from the file length.
pub(crate) fn db_file_pages(f: &File, db: &Path, page_size: u32) -> Result<u32> {
    let len = f.metadata().map_err(io_err(db, "stat"))?.len();
    let mut header = [0u8; 100];
    if f.read_exact_at(&mut header, 0).is_ok() && header[24..28] == header[92..96] {
        let pages = u32::from_be_bytes([header[28], header[29], header[30], header[31]]);
        if pages > 0 {
            return Ok(pages);
        }
    }
    Ok((len / u64::from(page_size.max(1))) as u32)
}

enum Attempt {
    Done(String),
    /// The log restarted under us: read from the database file alone.
    LogRestarted,
}

/// Writes the image for `seq` and returns it with its timeline record.
pub(crate) fn write(
    inputs: &ImageInputs<'_>,
    epoch: u64,
    seq: u64,
    reason: SnapshotReason,
) -> Result<BaseImage> {
    let path = inputs.state_dir.join(format!("base-{seq:020}.db"));
    let tmp = inputs.state_dir.join(format!("base-{seq:020}.db.partial"));
    let mut use_wal = inputs.pos.is_some();
    let hash = loop {
        match write_pages(inputs, use_wal, &tmp)? {
            Attempt::Done(hash) => break hash,
            Attempt::LogRestarted => use_wal = false,
        }
    };
    std::fs::rename(&tmp, &path).map_err(io_err(&path, "rename into place"))?;
    sync_parent(&path)?;
    Ok(BaseImage {
        record: BaseImageRecord {
            epoch,
            seq,
            page_size: inputs.page_size,
            db_pages: inputs.db_pages,
            image_hash: hash,
            taken_at: OffsetDateTime::now_utc(),
            reason,
        },
        path,
    })
}

fn header_matches(inputs: &ImageInputs<'_>, wal: &File) -> Result<Option<wal::WalHeader>> {
    let header = wal::read_header(wal).map_err(io_err(inputs.wal_path, "read the header of"))?;
    Ok(match (header, inputs.pos) {
        (Ok(Some(h)), Some(p)) if h.salt == p.salt => Some(h),
        _ => None,
    })
}

fn write_pages(inputs: &ImageInputs<'_>, use_wal: bool, tmp: &Path) -> Result<Attempt> {
    let db = inputs.db_file;
    let wal_file = if use_wal {
        let f = File::open(inputs.wal_path).map_err(io_err(inputs.wal_path, "open"))?;
        match header_matches(inputs, &f)? {
            Some(h) => Some((f, h)),
            None => return Ok(Attempt::LogRestarted),
        }
    } else {
        None
    };
    let out = File::create(tmp).map_err(io_err(tmp, "create"))?;
    let mut writer = BufWriter::with_capacity(1 << 20, out);
    let mut hasher = blake3::Hasher::new();
    let page_size = inputs.page_size as usize;
    let mut page = vec![0u8; page_size];
    for pgno in 1..=inputs.db_pages {
        let from_wal = match (&wal_file, inputs.index.get(&pgno)) {
            (Some((f, h)), Some(frame)) => {
                match wal::read_indexed_page(f, h, frame)
                    .map_err(io_err(inputs.wal_path, "read"))?
                {
                    Some(data) => Some(data),
                    None if header_matches(inputs, f)?.is_none() => {
                        return Ok(Attempt::LogRestarted);
                    }
                    None => {
                        return Err(CaptureError::CorruptWal {
                            wal: inputs.wal_path.to_path_buf(),
                            offset: frame.offset,
                            pgno,
                        });
                    }
                }
            }
            _ => None,
        };
        let bytes: &[u8] = match &from_wal {
            Some(data) => data,
            None => {
                let at = u64::from(pgno - 1) * page_size as u64;
                db.read_exact_at(&mut page, at).map_err(io_err(
                    inputs.db_path,
                    "read a page (the database file is shorter than its own header says) from",
                ))?;
                &page
            }
        };
        hasher.update(bytes);
        writer.write_all(bytes).map_err(io_err(tmp, "write"))?;
    }
    let out = writer
        .into_inner()
        .map_err(|e| io_err(tmp, "write")(e.into_error()))?;
    if let Some((f, _)) = &wal_file
        && header_matches(inputs, f)?.is_none()
    {
        return Ok(Attempt::LogRestarted);
    }
    out.sync_all().map_err(io_err(tmp, "fsync"))?;
    Ok(Attempt::Done(hasher.finalize().to_hex().to_string()))
}
