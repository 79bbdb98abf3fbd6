//! Deciding, when capture starts or resyncs, whether it continues exactly where the last
//! session stopped, and positioning it at the end of the log when it cannot.
//!
//! Both run just after a new read transaction began, without any write lock: the app keeps
//! committing meanwhile. Appended transactions are harmless (they are read now or at the
//! next poll). A restart of the log is not when nothing protected the frames it drops: the
//! first pin of a session (or one that replaces a lost pin) protects nothing until capture
//! has read the log. So after reading, capture checks that the log's header is still the
//! one it read. SQLite writes the next generation's header before any of its frames, so an
//! unchanged header means every frame read was the generation's own, up to its end; a
//! changed one means frames may have gone unread: continuity is declared lost, and the log
//! is read again (under a pin on read lock 0 it can restart at most once more with anything
//! in it, and under a pin on a read lock >= 1 not at all: module doc of [`super`]).

use std::fs::File;

use super::SqliteCapture;
use crate::error::{CaptureError, Result, io_err};
use crate::position::SavedPosition;
use crate::wal::{self, WalHeader};

/// How many times capture reads the log before giving up on a log that keeps restarting
/// (two suffice: see the module doc).
const READ_ATTEMPTS: usize = 3;

const RESTARTED_WHILE_STARTING: &str = "the app restarted the write-ahead log while capture \
     was starting, so capture cannot prove it read every transaction committed before that";

impl SqliteCapture {
    /// Under the session's first pin (already begun): decides whether `saved` still
    /// continues in the WAL, and positions capture at the end of the log. Sets
    /// `needs_resync` with the reason when it cannot continue.
    pub(super) fn start_from(&mut self, saved: Option<SavedPosition>) -> Result<()> {
        let mut broken: Option<String> = None;
        for _ in 0..READ_ATTEMPTS {
            let wal = self.open_wal()?;
            let header = self.read_wal_header(wal.as_ref())?;
            let continues = match &broken {
                Some(why) => Err(why.clone()),
                None => self.continues_from(saved, wal.as_ref(), header),
            };
            match (continues, wal.as_ref(), header) {
                (Ok(()), Some(wal), Some(header)) => {
                    let s = saved.expect("continuing implies a saved position");
                    self.page_size = s.page_size;
                    self.db_pages = s.db_pages;
                    // Only this generation: if the log restarted meanwhile, the check
                    // below notices it, and commits of the next one are not read here.
                    self.read_generation(wal, &header)?;
                }
                (Ok(()), _, _) => {
                    let s = saved.expect("continuing implies a saved position");
                    self.page_size = s.page_size;
                    self.db_pages = s.db_pages;
                }
                (Err(why), _, _) => {
                    self.scan_to_end(wal.as_ref(), header, None)?;
                    broken = Some(why);
                }
            }
            if self.log_still(header)? {
                self.needs_resync = broken;
                return Ok(());
            }
            // The commits read so far were the log's own and stay; what followed them
            // may be gone, which the base image taken next covers and says.
            broken.get_or_insert_with(|| RESTARTED_WHILE_STARTING.to_string());
        }
        Err(CaptureError::LogKeptRestarting {
            wal: self.wal_path.clone(),
        })
    }

    /// Positions capture at the end of the log under the pin just begun, without producing
    /// records, reading again if the log restarted meanwhile. `accept_damaged_at` (the
    /// generation's salts and a frame offset) takes that damaged frame as it is.
    pub(super) fn scan_pinned(&mut self, accept_damaged_at: Option<([u32; 2], u64)>) -> Result<()> {
        for _ in 0..READ_ATTEMPTS {
            let wal = self.open_wal()?;
            let header = self.read_wal_header(wal.as_ref())?;
            // The damage belongs to one generation; a restarted log does not have it.
            let accept = accept_damaged_at
                .filter(|(salt, _)| header.is_some_and(|h| h.salt == *salt))
                .map(|(_, offset)| offset);
            self.scan_to_end(wal.as_ref(), header, accept)?;
            if self.log_still(header)? {
                return Ok(());
            }
        }
        Err(CaptureError::LogKeptRestarting {
            wal: self.wal_path.clone(),
        })
    }

    /// Whether the log still has the header `read` (the same generation, or still none).
    fn log_still(&self, read: Option<WalHeader>) -> Result<bool> {
        let wal = self.open_wal()?;
        let now = match self.read_wal_header(wal.as_ref()) {
            Ok(h) => h,
            // Caught half-written: it is changing.
            Err(CaptureError::BadWalHeader { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        Ok(now.map(|h| h.salt) == read.map(|h| h.salt))
    }

    /// Whether `saved` continues in the log as it is now (`Err` says why not). Positions
    /// capture at the saved position when it does.
    fn continues_from(
        &mut self,
        saved: Option<SavedPosition>,
        wal: Option<&File>,
        header: Option<WalHeader>,
    ) -> std::result::Result<(), String> {
        match (saved, header) {
            (None, _) => Err("first capture".to_string()),
            // The first base image was never confirmed durable: start as if new.
            (Some(s), _) if s.seq == 0 => Err("first capture".to_string()),
            (Some(s), None) if s.wal.is_none() => {
                self.pos = None;
                self.index.clear();
                Ok(())
            }
            (Some(s), Some(h)) => match s.wal {
                Some(p) if p.salt == h.salt => self.verify_saved(wal, &h, &s),
                _ => Err(format!(
                    "the write-ahead log was checkpointed and restarted while capture was not running \
                     (its salts changed to {:08x}-{:08x}), so the transactions committed meanwhile \
                     cannot be replayed one by one",
                    h.salt[0], h.salt[1]
                )),
            },
            (Some(_), None) => Err(
                "the write-ahead log was removed while capture was not running \
                 (the database was checkpointed and closed)"
                    .to_string(),
            ),
        }
    }

    /// Checks that the saved position is still in the log and rebuilds the page index up
    /// to it.
    fn verify_saved(
        &mut self,
        wal: Option<&File>,
        header: &WalHeader,
        saved: &SavedPosition,
    ) -> std::result::Result<(), String> {
        let target = saved.wal.expect("caller checked");
        let wal = wal.expect("a header implies a file");
        let read = wal::read_transactions(wal, header, header.start(), None)
            .map_err(|e| format!("could not read the write-ahead log: {e}"))?;
        self.pos = Some(header.start());
        self.page_size = header.page_size;
        self.index.clear();
        for txn in &read.transactions {
            if txn.end.offset > target.offset {
                break;
            }
            for f in &txn.frames {
                self.index.insert(f.pgno, *f);
            }
            self.pos = Some(txn.end);
        }
        if self.pos == Some(target) {
            Ok(())
        } else {
            self.index.clear();
            self.pos = None;
            Err(format!(
                "the saved position (byte {} of the write-ahead log) is no longer a commit in it; \
                 the log was rewritten while capture was not running",
                target.offset
            ))
        }
    }

    /// Positions capture at the end of the current log without producing records.
    pub(super) fn scan_to_end(
        &mut self,
        wal: Option<&File>,
        header: Option<WalHeader>,
        accept_damaged_at: Option<u64>,
    ) -> Result<()> {
        self.index.clear();
        self.pos = None;
        self.accepted_damage = None;
        self.page_size = self.db_file_page_size()?;
        self.db_pages = self.db_file_pages(self.page_size)?;
        let (Some(wal), Some(h)) = (wal, header) else {
            return Ok(());
        };
        self.page_size = h.page_size;
        self.pos = Some(h.start());
        let read = wal::read_transactions(wal, &h, h.start(), accept_damaged_at)
            .map_err(io_err(&self.wal_path, "read"))?;
        for txn in read.transactions {
            for f in &txn.frames {
                self.index.insert(f.pgno, *f);
            }
            self.db_pages = txn.db_pages;
            self.pos = Some(txn.end);
        }
        if let Some(offset) = accept_damaged_at {
            self.accepted_damage = self.pos.map(|p| (p, offset));
        }
        Ok(())
    }
}
