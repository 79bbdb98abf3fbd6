//! Deciding, when capture starts or resyncs, whether it continues exactly where the last
//! session stopped, and positioning it at the end of the log when it cannot.
//!
//! Runs under the write lock, so the log cannot change while it is examined.

use std::fs::File;

use super::SqliteCapture;
use crate::error::{Result, io_err};
use crate::position::SavedPosition;
use crate::wal::{self, WalHeader};

impl SqliteCapture {
    /// Under the write lock: decide whether `saved` still continues in the WAL, position
    /// capture at the end of the log, and pin it with the read transaction.
    pub(super) fn start_from(&mut self, saved: Option<SavedPosition>) -> Result<()> {
        let wal = self.open_wal()?;
        let header = self.read_wal_header(wal.as_ref())?;
        let continues = match (saved, header) {
            (None, _) => Err("first capture".to_string()),
            // The first base image was never confirmed durable: start as if new.
            (Some(s), _) if s.seq == 0 => Err("first capture".to_string()),
            (Some(s), None) if s.wal.is_none() => Ok(()),
            (Some(s), Some(h)) => match s.wal {
                Some(p) if p.salt == h.salt => self.verify_saved(wal.as_ref(), &h, &s),
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
        };
        match continues {
            Ok(()) => {
                let s = saved.expect("continuing implies a saved position");
                self.page_size = s.page_size;
                self.db_pages = s.db_pages;
                self.read_new()?;
            }
            Err(why) => {
                self.scan_to_end(wal.as_ref(), header, None)?;
                self.needs_resync = Some(why);
            }
        }
        self.end_read()?;
        self.begin_read()
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
