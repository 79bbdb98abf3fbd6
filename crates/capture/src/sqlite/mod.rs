//! Capturing every committed transaction of one live SQLite database, from outside the
//! processes that write it.
//!
//! How no transaction is missed (the argument the code relies on):
//!
//! - SQLite only overwrites WAL frames when it *restarts* the log, and it restarts only when
//!   every frame has been copied back into the database file and no reader holds a snapshot
//!   that still needs the log. Capture keeps its own read transaction open at all times
//!   (`reader`), so the frames it has not read yet can neither be copied back past its
//!   snapshot nor overwritten.
//! - That read transaction is only ever (re)started while capture also holds the database's
//!   write lock (`locker`, `BEGIN IMMEDIATE`) and has read the log to its end. So the only
//!   restart that can ever happen under it destroys frames capture already has.
//! - Hence, while capture runs, a new WAL header simply means "the next generation began":
//!   capture continues at its first frame. An app's own `PRAGMA wal_checkpoint(TRUNCATE)`
//!   either waits for capture's reader (and gives up busy) or truncates an already
//!   captured log.
//! - Across a capture restart the reader was not held, so continuity is proven only by
//!   finding the saved position (salts, offset, running checksum) intact in the log. If it
//!   is not, capture takes a fresh base image and records why: never silently.
//! - Capture checkpoints the log itself ([`SqliteCapture::checkpoint`]), under the write
//!   lock, after the caller made every record durable.
//!
//! This module never writes to the user's database and never prints.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};
use time::OffsetDateTime;

use crate::error::{CaptureError, Result, io_err, sql_err};
use crate::position::{self, POSITION_FORMAT_VERSION, SavedPosition};
use crate::record::{CommitRecord, SnapshotReason};
use crate::wal::{self, FrameRef, WalHeader, WalPosition, WalStop};

mod continuity;
mod types;
pub use types::{BaseImage, CaptureEvent, CaptureOptions, CaptureStatus, CheckpointReport};

/// Continuous capture of one SQLite database in WAL mode.
pub struct SqliteCapture {
    db_path: PathBuf,
    wal_path: PathBuf,
    state_dir: PathBuf,
    /// Holds the long-lived read transaction that pins the WAL.
    reader: Connection,
    /// Takes the write lock during checkpoints and resyncs; never writes.
    locker: Connection,
    /// The database file, for reading pages of base images. Opened once and kept open
    /// (declared after the connections so it closes after them): closing any descriptor
    /// of the file would drop the POSIX locks SQLite holds on it in this process, and
    /// another process closing its last connection would then checkpoint past capture's
    /// read transaction and delete the WAL.
    db_file: File,
    /// Position after the last record read; `None` while the WAL has no generation yet.
    pos: Option<WalPosition>,
    page_size: u32,
    db_pages: u32,
    /// Latest frame per page in the current generation, up to `pos`.
    index: HashMap<u32, FrameRef>,
    /// A damaged frame the caller chose to accept via [`SqliteCapture::resync`].
    accepted_damage: Option<(WalPosition, u64)>,
    /// This session's number: one more than the last session's, persisted before any
    /// record is handed out.
    epoch: u64,
    last_seq: u64,
    durable_seq: u64,
    last_commit_time: OffsetDateTime,
    /// Handed-out records not yet confirmed durable, with the position after each.
    unconfirmed: VecDeque<(SavedPosition, OffsetDateTime)>,
    /// Records read but not yet handed out.
    pending: Vec<CaptureEvent>,
    /// How long to keep trying for the write lock.
    busy_timeout: Duration,
    /// Set when the read transaction could not be kept; the next poll resyncs.
    needs_resync: Option<String>,
}

fn open_connection(db: &Path, timeout: Duration) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(db, flags).map_err(sql_err(
        db,
        "open the database (check that the path names an existing SQLite file)",
    ))?;
    conn.busy_timeout(timeout)
        .map_err(sql_err(db, "set the busy timeout"))?;
    // When capture's connection is the last one to close, SQLite would checkpoint and delete
    // the WAL, taking frames not yet confirmed durable with it. Keep the log instead.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(sql_err(db, "disable checkpoint-on-close"))?;
    Ok(conn)
}

impl SqliteCapture {
    /// Starts capturing `db`, keeping its position file and base images in `state_dir`.
    ///
    /// Resumes from the saved position when the WAL still holds it; otherwise the first
    /// [`poll`](Self::poll) returns a base image whose reason says why (first capture,
    /// or what broke continuity). Refuses a database that is not in WAL mode.
    pub fn open(db: &Path, state_dir: &Path, options: CaptureOptions) -> Result<Self> {
        std::fs::create_dir_all(state_dir)
            .map_err(io_err(state_dir, "create the capture state dir"))?;
        remove_partial_files(state_dir)?;
        let reader = open_connection(db, options.busy_timeout)?;
        let mode: String = reader
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(sql_err(db, "read the journal mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(CaptureError::NotWalMode {
                db: db.to_path_buf(),
                mode,
            });
        }
        // The locker does its own retrying (see `with_write_lock`), so no busy handler.
        let locker = open_connection(db, Duration::ZERO)?;
        let db_file = File::open(db).map_err(io_err(db, "open"))?;
        let mut wal_path = db.as_os_str().to_owned();
        wal_path.push("-wal");
        let position_path = state_dir.join("position.json");
        let saved = position::load(&position_path)?;
        // A new session number, durable before anything is handed out, so records this
        // session repeats after a crash of the last one replace the last one's.
        let epoch = saved.map_or(0, |s| s.epoch) + 1;
        let session = match saved {
            Some(s) => SavedPosition { epoch, ..s },
            None => SavedPosition {
                version: POSITION_FORMAT_VERSION,
                epoch,
                seq: 0,
                wal: None,
                page_size: 0,
                db_pages: 0,
            },
        };
        position::save(&position_path, &session)?;
        let mut capture = SqliteCapture {
            db_path: db.to_path_buf(),
            wal_path: PathBuf::from(wal_path),
            state_dir: state_dir.to_path_buf(),
            reader,
            locker,
            db_file,
            pos: None,
            page_size: 0,
            db_pages: 0,
            index: HashMap::new(),
            accepted_damage: None,
            epoch,
            last_seq: saved.map_or(0, |s| s.seq),
            durable_seq: saved.map_or(0, |s| s.seq),
            last_commit_time: OffsetDateTime::UNIX_EPOCH,
            unconfirmed: VecDeque::new(),
            pending: Vec::new(),
            needs_resync: None,
            busy_timeout: options.busy_timeout,
        };
        capture.with_write_lock(|c| c.start_from(saved))?;
        if let Some(why) = capture.needs_resync.take() {
            let reason = if saved.is_none_or(|s| s.seq == 0) {
                SnapshotReason::FirstCapture
            } else {
                SnapshotReason::ContinuityLost { why }
            };
            let image = capture.write_base_image(reason)?;
            capture.pending.push(CaptureEvent::BaseImage(image));
        }
        Ok(capture)
    }

    /// Reads every transaction committed since the last call (and any base image capture
    /// had to take), in sequence order. Call it often: each record's `commit_time` is when
    /// it was first seen.
    pub fn poll(&mut self) -> Result<Vec<CaptureEvent>> {
        if self.needs_resync.is_none() && self.reader.is_autocommit() {
            self.needs_resync = Some("capture's read transaction was lost".into());
        }
        if let Some(why) = self.needs_resync.take() {
            return self.resync_inner(SnapshotReason::ContinuityLost { why }, None);
        }
        self.read_new()?;
        Ok(std::mem::take(&mut self.pending))
    }

    /// Takes a fresh base image now (a periodic checkpoint of the timeline). Returns any
    /// commits read first, then the image.
    pub fn take_base_image(&mut self) -> Result<Vec<CaptureEvent>> {
        self.read_new()?;
        let image = self.write_base_image(SnapshotReason::Requested)?;
        self.pending.push(CaptureEvent::BaseImage(image));
        Ok(std::mem::take(&mut self.pending))
    }

    /// Starts over from the WAL as it is now and takes a base image recording `why`.
    /// Use it after [`CaptureError::CorruptWal`]: the damaged frame is taken as SQLite's
    /// readers see it, the damage is on record, and every earlier seq stays restorable.
    pub fn resync(&mut self, why: &str) -> Result<Vec<CaptureEvent>> {
        let reason = SnapshotReason::ContinuityLost {
            why: why.to_string(),
        };
        let damaged = match self.read_new() {
            Err(CaptureError::CorruptWal { offset, .. }) => Some(offset),
            Err(e) => return Err(e),
            Ok(()) => None,
        };
        self.resync_inner(reason, damaged)
    }

    /// Records that every event up to `seq` is durable in the vault: persists the position
    /// so a restart resumes after it.
    pub fn confirm_durable(&mut self, seq: u64) -> Result<()> {
        if seq > self.last_seq - self.pending_count() {
            return Err(CaptureError::UnknownSeq {
                seq,
                last: self.last_seq,
            });
        }
        let mut newest = None;
        while self.unconfirmed.front().is_some_and(|(p, _)| p.seq <= seq) {
            newest = self.unconfirmed.pop_front();
        }
        if let Some((saved, _)) = newest {
            position::save(&self.state_dir.join("position.json"), &saved)?;
            self.durable_seq = saved.seq;
        }
        Ok(())
    }

    /// Checkpoints the WAL once everything handed out is durable, so the app's next write
    /// starts the log over. Transactions committed since the last poll are passed to `ship`
    /// while the app is held off; when `ship` returns `Ok` they count as durable.
    ///
    /// Two phases keep the app's writes waiting only briefly: first capture moves its
    /// pinned snapshot to the end of the log and copies everything up to it into the
    /// database file without holding the app off; then, holding the write lock, it ships
    /// the few transactions committed meanwhile, copies those, and re-pins the log.
    ///
    /// TRUNCATE is not offered: it needs the write lock for itself, so it cannot run while
    /// capture holds it, and without it frames written in between could be lost. The log
    /// is instead restarted from its beginning by the app's next write.
    pub fn checkpoint<F>(&mut self, mut ship: F) -> Result<CheckpointReport>
    where
        F: FnMut(&[CaptureEvent]) -> std::result::Result<(), String>,
    {
        let waiting = self.last_seq - self.pending_count() - self.durable_seq;
        if waiting > 0 {
            return Ok(CheckpointReport {
                shipped: 0,
                wal_frames: 0,
                checkpointed_frames: 0,
                complete: false,
                deferred: Some(format!("{waiting} records are not confirmed durable yet")),
            });
        }
        // Phase 1: the bulk of the copying (and its fsync) while the app keeps writing.
        let mut shipped = self.with_write_lock(|c| {
            let n = c.ship_tail(&mut ship)?;
            c.end_read()?;
            c.begin_read()?;
            Ok(n)
        })?;
        // Only an optimisation: whatever it could not copy, phase 2 copies.
        let _ = self.passive_checkpoint(false);
        // Phase 2: the tail, under the write lock, so the re-pinned snapshot is the end.
        self.with_write_lock(|c| {
            shipped += c.ship_tail(&mut ship)?;
            c.end_read()?;
            let result = c.passive_checkpoint(true);
            // Re-pin the log before the app may write again, whatever the checkpoint did.
            c.begin_read()?;
            let (log, done) = result?;
            Ok(CheckpointReport {
                shipped,
                wal_frames: log,
                checkpointed_frames: done,
                complete: log == done,
                deferred: None,
            })
        })
    }

    /// Under the write lock: reads what was committed since the last poll and ships it.
    fn ship_tail<F>(&mut self, ship: &mut F) -> Result<usize>
    where
        F: FnMut(&[CaptureEvent]) -> std::result::Result<(), String>,
    {
        self.read_new()?;
        let events = std::mem::take(&mut self.pending);
        if events.is_empty() {
            return Ok(0);
        }
        if let Err(e) = ship(&events) {
            self.pending = events;
            return Err(CaptureError::ShipFailed(e));
        }
        self.confirm_durable(events.last().map_or(0, CaptureEvent::seq))?;
        Ok(events.len())
    }

    /// Runs a PASSIVE checkpoint: from the reader (outside its read transaction) or from
    /// the locker (outside its write lock). Returns frames in the log and frames copied.
    fn passive_checkpoint(&self, from_reader: bool) -> Result<(i64, i64)> {
        let conn = if from_reader {
            &self.reader
        } else {
            &self.locker
        };
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        })
        .map_err(sql_err(&self.db_path, "checkpoint the WAL"))
    }

    /// Where capture stands.
    pub fn status(&self) -> CaptureStatus {
        CaptureStatus {
            last_seq: self.last_seq - self.pending_count(),
            durable_seq: self.durable_seq,
            wal_offset: self.pos.map_or(0, |p| p.offset),
            unconfirmed: self.unconfirmed.len() as u64 - self.pending_count(),
            oldest_unconfirmed_at: self.unconfirmed.front().map(|(_, at)| *at),
        }
    }

    /// The database being captured.
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    fn pending_count(&self) -> u64 {
        self.pending.len() as u64
    }

    /// Runs `work` holding the database write lock, so no app transaction can commit.
    fn with_write_lock<T>(&mut self, work: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        // SQLite's busy handler backs off up to 100 ms between tries, so under a steady
        // write load (a commit every few ms) it would starve for seconds. Retry at a
        // fixed short interval instead: the lock is free between the app's commits.
        let deadline = std::time::Instant::now() + self.busy_timeout;
        loop {
            match self.locker.execute_batch("BEGIN IMMEDIATE") {
                Ok(()) => break,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(e) => {
                    return Err(sql_err(
                        &self.db_path,
                        "take the write lock (the app holds it too long; capture retries)",
                    )(e));
                }
            }
        }
        let result = work(self);
        let released = self.locker.execute_batch("ROLLBACK");
        if self.needs_resync.is_none() && self.reader.is_autocommit() {
            self.needs_resync = Some("capture could not re-open its read transaction".into());
        }
        let value = result?;
        released.map_err(sql_err(&self.db_path, "release the write lock"))?;
        Ok(value)
    }

    fn begin_read(&mut self) -> Result<()> {
        self.reader
            .execute_batch("BEGIN; SELECT count(*) FROM sqlite_schema;")
            .map_err(sql_err(&self.db_path, "open capture's read transaction"))
    }

    fn end_read(&mut self) -> Result<()> {
        if self.reader.is_autocommit() {
            return Ok(());
        }
        self.reader
            .execute_batch("COMMIT")
            .map_err(sql_err(&self.db_path, "end capture's read transaction"))
    }

    fn open_wal(&self) -> Result<Option<File>> {
        match File::open(&self.wal_path) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&self.wal_path, "open")(e)),
        }
    }

    fn read_wal_header(&self, wal: Option<&File>) -> Result<Option<WalHeader>> {
        let Some(wal) = wal else { return Ok(None) };
        wal::read_header(wal)
            .map_err(io_err(&self.wal_path, "read the header of"))?
            .map_err(|problem| CaptureError::BadWalHeader {
                wal: self.wal_path.clone(),
                problem,
            })
    }

    /// Reads new committed transactions into `pending`.
    fn read_new(&mut self) -> Result<()> {
        let wal = self.open_wal()?;
        let Some(header) = self.read_wal_header(wal.as_ref())? else {
            // Empty or just truncated: with the reader pinned, only captured frames went.
            self.pos = None;
            self.index.clear();
            return Ok(());
        };
        let wal = wal.expect("a header implies a file");
        let from = match self.pos {
            Some(p) if p.salt == header.salt => p,
            _ => {
                // A new generation. Safe: the reader pinned every frame not yet read.
                self.index.clear();
                self.page_size = header.page_size;
                header.start()
            }
        };
        let accept = self
            .accepted_damage
            .filter(|(at, _)| *at == from)
            .map(|(_, off)| off);
        let read = wal::read_transactions(&wal, &header, from, accept)
            .map_err(io_err(&self.wal_path, "read"))?;
        self.pos = Some(from);
        let seen = if read.transactions.is_empty() {
            self.last_commit_time
        } else {
            self.observed_time()
        };
        for txn in read.transactions {
            for f in &txn.frames {
                self.index.insert(f.pgno, *f);
            }
            self.pos = Some(txn.end);
            self.page_size = header.page_size;
            self.db_pages = txn.db_pages;
            self.last_seq += 1;
            self.pending.push(CaptureEvent::Commit(CommitRecord {
                epoch: self.epoch,
                seq: self.last_seq,
                page_size: header.page_size,
                db_pages: txn.db_pages,
                pages: txn.pages,
                commit_time: seen,
            }));
            self.remember_unconfirmed();
        }
        match read.stop {
            WalStop::End => Ok(()),
            WalStop::Corrupt { offset, pgno } => Err(CaptureError::CorruptWal {
                wal: self.wal_path.clone(),
                offset,
                pgno,
            }),
        }
    }

    /// A time no earlier than the commit of every frame just read: now, after reading
    /// them (never before the previous record's time). Its precision is the poll interval.
    fn observed_time(&mut self) -> OffsetDateTime {
        let seen = OffsetDateTime::now_utc().max(self.last_commit_time);
        self.last_commit_time = seen;
        seen
    }

    fn remember_unconfirmed(&mut self) {
        let saved = SavedPosition {
            version: POSITION_FORMAT_VERSION,
            epoch: self.epoch,
            seq: self.last_seq,
            wal: self.pos,
            page_size: self.page_size,
            db_pages: self.db_pages,
        };
        self.unconfirmed
            .push_back((saved, OffsetDateTime::now_utc()));
    }

    fn resync_inner(
        &mut self,
        reason: SnapshotReason,
        accept_damaged_at: Option<u64>,
    ) -> Result<Vec<CaptureEvent>> {
        self.with_write_lock(|c| {
            let wal = c.open_wal()?;
            let header = c.read_wal_header(wal.as_ref())?;
            c.scan_to_end(wal.as_ref(), header, accept_damaged_at)?;
            c.end_read()?;
            c.begin_read()
        })?;
        let image = self.write_base_image(reason)?;
        self.pending.push(CaptureEvent::BaseImage(image));
        Ok(std::mem::take(&mut self.pending))
    }

    /// Accessors the base-image writer needs.
    pub(crate) fn image_inputs(&self) -> ImageInputs<'_> {
        ImageInputs {
            db_path: &self.db_path,
            db_file: &self.db_file,
            wal_path: &self.wal_path,
            state_dir: &self.state_dir,
            pos: self.pos,
            page_size: self.page_size,
            db_pages: self.db_pages,
            index: &self.index,
        }
    }

    fn write_base_image(&mut self, reason: SnapshotReason) -> Result<BaseImage> {
        let seq = self.last_seq + 1;
        let image = crate::base_image::write(&self.image_inputs(), self.epoch, seq, reason)?;
        self.last_seq = seq;
        self.remember_unconfirmed();
        Ok(image)
    }

    fn db_file_page_size(&self) -> Result<u32> {
        crate::base_image::db_file_page_size(&self.db_file, &self.db_path)
    }

    fn db_file_pages(&self, page_size: u32) -> Result<u32> {
        crate::base_image::db_file_pages(&self.db_file, &self.db_path, page_size)
    }
}

/// Removes what a crash left half-written in the state dir (never renamed into place, so
/// never handed out).
fn remove_partial_files(state_dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(state_dir).map_err(io_err(state_dir, "list"))?;
    for entry in entries {
        let path = entry.map_err(io_err(state_dir, "list"))?.path();
        if path.extension().is_some_and(|e| e == "partial") {
            std::fs::remove_file(&path).map_err(io_err(&path, "remove"))?;
        }
    }
    Ok(())
}

/// What [`crate::base_image::write`] reads from the capture.
pub(crate) struct ImageInputs<'a> {
    pub db_path: &'a Path,
    pub db_file: &'a File,
    pub wal_path: &'a Path,
    pub state_dir: &'a Path,
    pub pos: Option<WalPosition>,
    pub page_size: u32,
    pub db_pages: u32,
    pub index: &'a HashMap<u32, FrameRef>,
}
