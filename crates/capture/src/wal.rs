//! Reading SQLite's write-ahead log (`<db>-wal`) straight from the file.
//!
//! This module knows the on-disk WAL format (see <https://www.sqlite.org/fileformat2.html#walformat>)
//! and nothing about connections or locks. It promises three things to the capture above it:
//!
//! - only frames whose salts match the header and whose cumulative checksum verifies are ever
//!   returned, in file order;
//! - frames are handed out only as whole transactions: a batch always ends at a commit frame,
//!   so a transaction that is still being written (or was rolled back) is never returned;
//! - a frame that fails its checksum although later frames chained from it are intact and
//!   committed is reported as corruption ([`WalStop::Corrupt`]), never mistaken for the end
//!   of the log.
//!
//! It never writes to the WAL.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Size of the WAL file header in bytes.
pub const WAL_HEADER_SIZE: u64 = 32;
/// Size of each frame header in bytes.
pub const FRAME_HEADER_SIZE: u64 = 24;
/// WAL magic when checksums are computed over little-endian 32-bit words.
pub const MAGIC_LITTLE_ENDIAN: u32 = 0x377f_0682;
/// WAL magic when checksums are computed over big-endian 32-bit words.
pub const MAGIC_BIG_ENDIAN: u32 = 0x377f_0683;
/// The only WAL format version SQLite has ever written.
pub const WAL_FORMAT_VERSION: u32 = 3_007_000;

/// Why a WAL header could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalHeaderError {
    /// The first four bytes are not one of the two WAL magic numbers.
    #[error("not a SQLite WAL header (magic {0:#010x})")]
    BadMagic(u32),
    /// A format version this code does not understand.
    #[error("unsupported WAL format version {0} (expected 3007000)")]
    BadVersion(u32),
    /// The page size is not a power of two between 512 and 65536.
    #[error("invalid WAL page size {0}")]
    BadPageSize(u32),
    /// The header checksum does not match its contents: a torn or corrupted header.
    #[error("WAL header checksum mismatch")]
    BadChecksum,
}

/// The 32-byte header at the start of a WAL file. A new header (new salts) means SQLite
/// restarted the log: every frame before it belongs to an earlier generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    /// Checksums use big-endian words (magic `0x377f0683`) rather than little-endian.
    pub big_endian_checksums: bool,
    /// Database page size in bytes.
    pub page_size: u32,
    /// Checkpoint sequence number, incremented by SQLite on each restart.
    pub checkpoint_seq: u32,
    /// The two salts every valid frame of this generation repeats.
    pub salt: [u32; 2],
    /// Checksum of the first 24 header bytes; the seed of the frame checksum chain.
    pub checksum: [u32; 2],
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// SQLite's WAL checksum: a Fletcher-like sum over pairs of 32-bit words, continued from
/// `seed`. `data.len()` must be a multiple of 8.
pub fn wal_checksum(big_endian: bool, seed: [u32; 2], data: &[u8]) -> [u32; 2] {
    debug_assert!(
        data.len().is_multiple_of(8),
        "WAL checksum input must be a multiple of 8 bytes"
    );
    let [mut s0, mut s1] = seed;
    for pair in data.chunks_exact(8) {
        let (x0, x1) = if big_endian {
            (
                u32::from_be_bytes([pair[0], pair[1], pair[2], pair[3]]),
                u32::from_be_bytes([pair[4], pair[5], pair[6], pair[7]]),
            )
        } else {
            (
                u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]),
                u32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]),
            )
        };
        s0 = s0.wrapping_add(x0).wrapping_add(s1);
        s1 = s1.wrapping_add(x1).wrapping_add(s0);
    }
    [s0, s1]
}

impl WalHeader {
    /// Parses and verifies a WAL header.
    pub fn parse(bytes: &[u8; 32]) -> Result<Self, WalHeaderError> {
        let magic = be32(bytes, 0);
        let big_endian_checksums = match magic {
            MAGIC_BIG_ENDIAN => true,
            MAGIC_LITTLE_ENDIAN => false,
            other => return Err(WalHeaderError::BadMagic(other)),
        };
        let version = be32(bytes, 4);
        if version != WAL_FORMAT_VERSION {
            return Err(WalHeaderError::BadVersion(version));
        }
        let raw_page_size = be32(bytes, 8);
        // A stored page size of 1 means 65536, which does not fit the 16-bit DB header field.
        let page_size = if raw_page_size == 1 {
            65536
        } else {
            raw_page_size
        };
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(WalHeaderError::BadPageSize(raw_page_size));
        }
        let checksum = [be32(bytes, 24), be32(bytes, 28)];
        if wal_checksum(big_endian_checksums, [0, 0], &bytes[..24]) != checksum {
            return Err(WalHeaderError::BadChecksum);
        }
        Ok(WalHeader {
            big_endian_checksums,
            page_size,
            checkpoint_seq: be32(bytes, 12),
            salt: [be32(bytes, 16), be32(bytes, 20)],
            checksum,
        })
    }

    /// Bytes occupied by one frame (header + page).
    pub fn frame_size(&self) -> u64 {
        FRAME_HEADER_SIZE + u64::from(self.page_size)
    }

    /// The position just after this header: where the first frame of the generation starts.
    pub fn start(&self) -> WalPosition {
        WalPosition {
            salt: self.salt,
            offset: WAL_HEADER_SIZE,
            checksum: self.checksum,
        }
    }
}

/// A point in one WAL generation just after a commit frame (or just after the header).
/// Reading resumes here; `checksum` is the running checksum the next frame chains from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WalPosition {
    /// Salts of the generation this position belongs to.
    pub salt: [u32; 2],
    /// Byte offset in the WAL file.
    pub offset: u64,
    /// Cumulative checksum of the last frame before `offset` (the header's, at the start).
    pub checksum: [u32; 2],
}

/// One frame of a transaction, as located in the WAL file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef {
    /// Database page number this frame holds (1-based).
    pub pgno: u32,
    /// Byte offset of the frame header in the WAL file.
    pub offset: u64,
    /// Checksum the frame chains from (the previous frame's, or the header's).
    pub seed: [u32; 2],
    /// The frame's own cumulative checksum.
    pub checksum: [u32; 2],
}

/// A committed transaction read from the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalTransaction {
    /// Pages written by the transaction; when a page was written twice, the later frame wins.
    pub pages: BTreeMap<u32, Vec<u8>>,
    /// Every frame of the transaction in file order (for building a page index).
    pub frames: Vec<FrameRef>,
    /// Database size in pages after this commit.
    pub db_pages: u32,
    /// Where the next transaction starts.
    pub end: WalPosition,
}

/// Why reading stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalStop {
    /// Reached the end of the file or a frame that is not (yet) part of the log: normal.
    End,
    /// A frame at `offset` fails its checksum although the frames after it chain correctly
    /// from its stored checksum up to a commit: committed data in the WAL was damaged.
    Corrupt {
        /// Byte offset of the damaged frame.
        offset: u64,
        /// Page number the damaged frame claims to hold.
        pgno: u32,
    },
}

/// The result of [`read_transactions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRead {
    /// Complete transactions in commit order.
    pub transactions: Vec<WalTransaction>,
    /// Why reading stopped after the last transaction.
    pub stop: WalStop,
}

/// Reads the WAL header, or `None` if the file is shorter than a header (empty or just
/// truncated by a checkpoint).
pub fn read_header(wal: &File) -> std::io::Result<Result<Option<WalHeader>, WalHeaderError>> {
    let mut buf = [0u8; 32];
    match read_exact_or_eof(wal, &mut buf, 0)? {
        false => Ok(Ok(None)),
        true => Ok(WalHeader::parse(&buf).map(Some)),
    }
}

/// Reads `buf.len()` bytes at `offset`; `false` when the file ends first.
fn read_exact_or_eof(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<bool> {
    match file.read_exact_at(buf, offset) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// A frame read and checked against the running checksum.
enum FrameCheck {
    /// Salts match and the checksum chains: a valid frame.
    Valid {
        pgno: u32,
        commit: u32,
        checksum: [u32; 2],
        data: Vec<u8>,
    },
    /// Salts match but the checksum does not chain; carries what the frame claims.
    BadChecksum {
        pgno: u32,
        commit: u32,
        stored: [u32; 2],
        data: Vec<u8>,
    },
    /// End of file, wrong salts (an older generation) or a page number of zero.
    NotInLog,
}

fn check_frame(
    wal: &File,
    header: &WalHeader,
    offset: u64,
    seed: [u32; 2],
) -> std::io::Result<FrameCheck> {
    let mut buf = vec![0u8; header.frame_size() as usize];
    if !read_exact_or_eof(wal, &mut buf, offset)? {
        return Ok(FrameCheck::NotInLog);
    }
    let pgno = be32(&buf, 0);
    let commit = be32(&buf, 4);
    if pgno == 0 || [be32(&buf, 8), be32(&buf, 12)] != header.salt {
        return Ok(FrameCheck::NotInLog);
    }
    let stored = [be32(&buf, 16), be32(&buf, 20)];
    let after_header = wal_checksum(header.big_endian_checksums, seed, &buf[..8]);
    let checksum = wal_checksum(header.big_endian_checksums, after_header, &buf[24..]);
    buf.drain(..FRAME_HEADER_SIZE as usize);
    if checksum != stored {
        return Ok(FrameCheck::BadChecksum {
            pgno,
            commit,
            stored,
            data: buf,
        });
    }
    Ok(FrameCheck::Valid {
        pgno,
        commit,
        checksum,
        data: buf,
    })
}

/// Reads every complete, valid transaction after `from`. `from` must belong to the
/// generation `header` describes (same salts); the caller checks that first.
///
/// `accept_damaged_at` names the offset of a frame already reported as
/// [`WalStop::Corrupt`] that the caller has decided to take as it is (SQLite's own readers
/// see it that way); reading then continues past it using its stored checksum.
pub fn read_transactions(
    wal: &File,
    header: &WalHeader,
    from: WalPosition,
    accept_damaged_at: Option<u64>,
) -> std::io::Result<WalRead> {
    debug_assert_eq!(
        from.salt, header.salt,
        "position from another WAL generation"
    );
    let mut transactions = Vec::new();
    let mut offset = from.offset;
    let mut seed = from.checksum;
    let mut pending = WalTransaction {
        pages: BTreeMap::new(),
        frames: Vec::new(),
        db_pages: 0,
        end: from,
    };
    loop {
        let frame = match check_frame(wal, header, offset, seed)? {
            FrameCheck::BadChecksum {
                pgno,
                commit,
                stored,
                data,
            } if accept_damaged_at == Some(offset) => FrameCheck::Valid {
                pgno,
                commit,
                checksum: stored,
                data,
            },
            other => other,
        };
        match frame {
            FrameCheck::Valid {
                pgno,
                commit,
                checksum,
                data,
            } => {
                pending.frames.push(FrameRef {
                    pgno,
                    offset,
                    seed,
                    checksum,
                });
                pending.pages.insert(pgno, data);
                offset += header.frame_size();
                seed = checksum;
                if commit != 0 {
                    pending.db_pages = commit;
                    pending.end = WalPosition {
                        salt: header.salt,
                        offset,
                        checksum,
                    };
                    let next_end = pending.end;
                    transactions.push(std::mem::replace(
                        &mut pending,
                        WalTransaction {
                            pages: BTreeMap::new(),
                            frames: Vec::new(),
                            db_pages: 0,
                            end: next_end,
                        },
                    ));
                }
            }
            FrameCheck::NotInLog => {
                return Ok(WalRead {
                    transactions,
                    stop: WalStop::End,
                });
            }
            FrameCheck::BadChecksum { pgno, stored, .. } => {
                let damaged = committed_chain_follows(wal, header, offset, stored)?
                    // The first read may have caught the frame half-written, and the writer
                    // finished it and committed while the chain was checked: read it again.
                    // A frame whose successors are complete was itself complete before them.
                    && !matches!(check_frame(wal, header, offset, seed)?, FrameCheck::Valid { .. });
                let stop = if damaged {
                    WalStop::Corrupt { offset, pgno }
                } else {
                    // A frame being written right now, or the torn tail of a crashed
                    // writer: SQLite itself treats this as the end of the log.
                    WalStop::End
                };
                return Ok(WalRead { transactions, stop });
            }
        }
    }
}

/// True when the frames after the bad frame at `offset` chain from its stored checksum up
/// to a valid commit frame. A frame still being written cannot have valid successors, and
/// stale frames of a rolled-back transaction chain from a different checksum, so this only
/// holds when a frame that was written whole was damaged afterwards.
fn committed_chain_follows(
    wal: &File,
    header: &WalHeader,
    offset: u64,
    stored: [u32; 2],
) -> std::io::Result<bool> {
    let mut offset = offset + header.frame_size();
    let mut seed = stored;
    loop {
        match check_frame(wal, header, offset, seed)? {
            FrameCheck::Valid {
                commit, checksum, ..
            } => {
                if commit != 0 {
                    return Ok(true);
                }
                offset += header.frame_size();
                seed = checksum;
            }
            FrameCheck::NotInLog | FrameCheck::BadChecksum { .. } => return Ok(false),
        }
    }
}

/// Reads the page held by `frame` and verifies it still is the frame that was indexed
/// (salts and checksum chain). `None` when the frame was overwritten since.
pub fn read_indexed_page(
    wal: &File,
    header: &WalHeader,
    frame: &FrameRef,
) -> std::io::Result<Option<Vec<u8>>> {
    match check_frame(wal, header, frame.offset, frame.seed)? {
        FrameCheck::Valid {
            pgno,
            checksum,
            data,
            ..
        } if pgno == frame.pgno && checksum == frame.checksum => Ok(Some(data)),
        // A damaged frame the caller chose to accept was indexed with its stored checksum.
        FrameCheck::BadChecksum {
            pgno, stored, data, ..
        } if pgno == frame.pgno && stored == frame.checksum => Ok(Some(data)),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_bytes(magic: u32, page_size: u32, salt: [u32; 2]) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0..4].copy_from_slice(&magic.to_be_bytes());
        b[4..8].copy_from_slice(&WAL_FORMAT_VERSION.to_be_bytes());
        b[8..12].copy_from_slice(&page_size.to_be_bytes());
        b[12..16].copy_from_slice(&7u32.to_be_bytes());
        b[16..20].copy_from_slice(&salt[0].to_be_bytes());
        b[20..24].copy_from_slice(&salt[1].to_be_bytes());
        let ck = wal_checksum(magic == MAGIC_BIG_ENDIAN, [0, 0], &b[..24]);
        b[24..28].copy_from_slice(&ck[0].to_be_bytes());
        b[28..32].copy_from_slice(&ck[1].to_be_bytes());
        b
    }

    #[test]
    fn header_round_trips_with_either_endianness() {
        for magic in [MAGIC_BIG_ENDIAN, MAGIC_LITTLE_ENDIAN] {
            let h = WalHeader::parse(&header_bytes(magic, 4096, [1, 2])).unwrap();
            assert_eq!(h.big_endian_checksums, magic == MAGIC_BIG_ENDIAN);
            assert_eq!((h.page_size, h.checkpoint_seq, h.salt), (4096, 7, [1, 2]));
        }
    }

    #[test]
    fn page_size_one_means_65536() {
        let h = WalHeader::parse(&header_bytes(MAGIC_BIG_ENDIAN, 1, [1, 2])).unwrap();
        assert_eq!(h.page_size, 65536);
    }

    #[test]
    fn damaged_header_is_rejected() {
        let mut b = header_bytes(MAGIC_LITTLE_ENDIAN, 4096, [1, 2]);
        b[17] ^= 1;
        assert_eq!(WalHeader::parse(&b), Err(WalHeaderError::BadChecksum));
        b[0] = 0;
        assert!(matches!(
            WalHeader::parse(&b),
            Err(WalHeaderError::BadMagic(_))
        ));
    }

    #[test]
    fn checksum_endianness_differs() {
        let data = [1u8, 0, 0, 0, 2, 0, 0, 0];
        assert_eq!(wal_checksum(false, [0, 0], &data), [1, 3]);
        assert_eq!(
            wal_checksum(true, [0, 0], &data),
            [1 << 24, (2 << 24) + (1 << 24)]
        );
    }
}
