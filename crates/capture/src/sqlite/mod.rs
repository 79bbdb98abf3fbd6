//! Capturing every committed transaction of one live SQLite database, from outside the
//! processes that write it, without ever making one of their transactions fail.
//!
//! Capture never takes SQLite's write lock and never writes to the user's database. An app
//! transaction that began by reading (Django's `BEGIN; SELECT ...; INSERT ...; COMMIT`)
//! cannot wait for a write lock someone else holds: SQLite answers `database is locked` at
//! once (its busy handler only runs for a connection with no read transaction). So capture
//! only ever holds read transactions and runs PASSIVE checkpoints, which take neither the
//! write lock nor wait; it never runs RESTART or TRUNCATE checkpoints (they hold it).
//!
//! # How no transaction is missed
//!
//! Facts from SQLite's `wal.c` the argument rests on:
//!
//! 1. SQLite overwrites frames only when it *restarts* the log (starts the next generation,
//!    with new salts, from frame 1). A writer does it (`walRestartLog`) only if its own read
//!    transaction sits on read lock 0, which a reader gets only while every frame is copied
//!    back into the database file (`nBackfill == mxFrame`); a RESTART or TRUNCATE checkpoint
//!    does it only once every frame is copied back. Both need exclusive use of read locks
//!    1..N-1: while any reader holds a read lock >= 1, the log is never restarted.
//! 2. A reader on read lock 0 stops all copying into the database file (the checkpointer
//!    needs read lock 0 exclusively), so `nBackfill` stays at the `mxFrame` = M the log had
//!    when that reader began. While it holds, a restart can happen only if nothing was
//!    appended since, abandons exactly frames 1..M of that generation, and happens at most
//!    once (afterwards nothing is copied back, so `nBackfill == mxFrame` needs an empty log).
//! 3. Capture always holds a pinned read transaction ([`pin`]) and moves it forward only by
//!    a *handoff*: begin a read transaction on the spare connection, read the log to its
//!    end, and only then end the old one.
//!
//! Claim: a restart never abandons a frame capture has not read. Take a restart at time t
//! abandoning frames 1..M of generation G, M > 0. By 1, every pin capture holds at t is on
//! read lock 0; by 2, each began while G had exactly M frames, all copied back, and G was
//! unchanged from then until t. Let P be the oldest. If a pin preceded P, it was released
//! after P began and after capture then read the log to its end, all before t, so while the
//! log was G with its M frames: capture had read them. If P is the session's first pin,
//! capture read the log after beginning P and found its header unchanged afterwards
//! (`continuity`), so the read saw G's own frames up to M (a restart rewrites the header
//! before any frame); had the header changed, capture declares continuity lost instead.
//!
//! Hence, while capture runs, a new WAL header means "the next generation began": capture
//! continues at its first frame. An app's own RESTART or TRUNCATE checkpoint waits (up to its
//! busy timeout) while capture's pin sits on a read lock >= 1, and when it runs it drops only
//! frames capture has read.
//!
//! Base images need no lock either: the database file holds the generation's starting state
//! (the previous generation was copied back in full before it restarted) plus copies of
//! frames no newer than capture's pin, which capture's position has passed (a pin on read
//! lock i >= 1 bounds copying to its mark; one on read lock 0 stops it). So the file
//! overlaid with capture's newest frame of each page is exactly the database at capture's
//! position ([`crate::base_image`]).
//!
//! Across a capture restart no pin was held, so continuity is proven only by finding the
//! saved position (salts, offset, running checksum) intact in the log. If it is not,
//! capture takes a fresh base image and records why: never silently.
//!
//! A handoff that may land on read lock 0 is made only once everything read before it is
//! durable (a restart may then overwrite all of it): [`SqliteCapture::checkpoint`] ships
//! first, and [`SqliteCapture::poll`] hands off only when nothing read is unconfirmed.
//! What a handoff itself reads is safe either way, until the next handoff: if the new pin
//! is on read lock 0, it began when everything was copied back, which the old pin allowed
//! only up to what capture had read already; so the handoff reads only frames past the
//! new pin's start (or of the next generation), which no restart can drop (fact 2).
//!
//! The log still restarts: [`SqliteCapture::checkpoint`] copies the log back (PASSIVE) and
//! hands the pin off again; when no commit came in between, the new pin lands on read lock
//! 0 and the app's next write starts the log over (a poll's handoff does the same when the
//! app's own checkpoints copied everything back). Under a write load with no such pause the
//! log grows (SQLite's documented checkpoint starvation) until the app pauses.
//!
//! This module never writes to the user's database, never takes its write lock, and never
//! prints.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;

use crate::error::{CaptureError, Result, io_err, sql_err};
use crate::position::{self, POSITION_FORMAT_VERSION, SavedPosition};
use crate::record::{CommitRecord, SnapshotReason};
use crate::wal::{self, FrameRef, WalHeader, WalPosition, WalStop};

mod checkpoint;
mod continuity;
mod pin;
mod types;
use pin::Pins;
pub use types::{BaseImage, CaptureEvent, CaptureOptions, CaptureStatus, CheckpointReport};

/// Continuous capture of one SQLite database in WAL mode.
pub struct SqliteCapture {
    db_path: PathBuf,
    wal_path: PathBuf,
    state_dir: PathBuf,
    /// The pinned read transaction and the spare connection it is handed to.
    pins: Pins,
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
    /// A damaged frame the caller chose to accept via [`SqliteCapture::resync`]: the
    /// position it follows and its offset.
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
    /// Set when capture cannot prove it missed nothing; the next poll resyncs.
    needs_resync: Option<String>,
}

impl SqliteCapture {
    /// Starts capturing `db`, keeping its position file and base images in `state_dir`.
    ///
    /// Resumes from the saved position when the WAL still holds it; otherwise the first
    /// [`poll`](Self::poll) returns a base image whose reason says why (first capture,
    /// or what broke continuity). Refuses a database that is not in WAL mode. Never takes
    /// the database's write lock: it only begins a read transaction.
    pub fn open(db: &Path, state_dir: &Path, options: CaptureOptions) -> Result<Self> {
        std::fs::create_dir_all(state_dir)
            .map_err(io_err(state_dir, "create the capture state dir"))?;
        remove_partial_files(state_dir)?;
        let mut pins = Pins::open(db, options.busy_timeout)?;
        // The session's first pin, before anything is read (`continuity` says why that
        // order matters). No earlier pin: the spare's read transaction becomes the first.
        pins.begin_spare()?;
        pins.finish_handoff()?;
        let mode: String = pins
            .active()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(sql_err(db, "read the journal mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(CaptureError::NotWalMode {
                db: db.to_path_buf(),
                mode,
            });
        }
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
            pins,
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
        };
        capture.start_from(saved)?;
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
    ///
    /// When everything read so far is confirmed durable, it also moves the pin forward (a
    /// handoff), so the app's own checkpoints can copy the log back up to it, and the log
    /// can start over as soon as the app pauses, not only at [`checkpoint`](Self::checkpoint).
    pub fn poll(&mut self) -> Result<Vec<CaptureEvent>> {
        self.notice_lost_pin();
        if let Some(why) = self.needs_resync.take() {
            return self.resync_inner(SnapshotReason::ContinuityLost { why }, None);
        }
        if self.unconfirmed.is_empty() {
            // Safe only now: the new pin may sit on read lock 0, and then the app's next
            // write may overwrite every frame read before it; they are all durable. What
            // this handoff reads is safe in any case (module doc). One quick try:
            // if SQLite is busy, keep the pin and just read.
            if self.pins.begin_spare_within(Duration::ZERO).is_ok() {
                if let Err(e) = self.read_new() {
                    self.pins.abandon_spare();
                    return Err(e);
                }
                self.pins.finish_handoff()?;
                return Ok(std::mem::take(&mut self.pending));
            }
        }
        self.read_new()?;
        Ok(std::mem::take(&mut self.pending))
    }

    /// Takes a fresh base image now (a periodic checkpoint of the timeline). Returns any
    /// commits read first, then the image (whose reason says continuity was lost instead of
    /// "requested" if capture had to resync first).
    pub fn take_base_image(&mut self) -> Result<Vec<CaptureEvent>> {
        // An image is consistent only under the pin: without it, resync (which re-pins).
        self.notice_lost_pin();
        if let Some(why) = self.needs_resync.take() {
            return self.resync_inner(SnapshotReason::ContinuityLost { why }, None);
        }
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
            Err(CaptureError::CorruptWal { offset, .. }) => self.pos.map(|p| (p.salt, offset)),
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

    /// Notices when the pinned read transaction was lost (nothing should end it): capture
    /// can then no longer prove it missed nothing, and the next poll resyncs.
    fn notice_lost_pin(&mut self) {
        if self.needs_resync.is_none() && !self.pins.held() {
            self.needs_resync = Some("capture's read transaction was lost".into());
        }
    }

    /// Moves the pin to the end of the log: begins a read transaction on the spare
    /// connection, reads every transaction committed since the last read into `pending`,
    /// and only then ends the old read transaction. If reading fails, the old pin stays.
    fn handoff(&mut self) -> Result<()> {
        self.pins.begin_spare()?;
        // Both pins are held here: a restart now can only drop frames read already.
        if let Err(e) = self.read_new() {
            self.pins.abandon_spare();
            return Err(e);
        }
        self.pins.finish_handoff()
    }

    fn open_wal(&self) -> Result<Option<File>> {
        match File::open(&self.wal_path) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&self.wal_path, "open")(e)),
        }
    }

    /// Reads the log's header. One that does not verify is read again a few times first:
    /// the app may be writing a new one (restarting the log) at this very moment.
    fn read_wal_header(&self, wal: Option<&File>) -> Result<Option<WalHeader>> {
        let Some(wal) = wal else { return Ok(None) };
        let mut tries = 0;
        loop {
            match wal::read_header(wal).map_err(io_err(&self.wal_path, "read the header of"))? {
                Ok(header) => return Ok(header),
                Err(_) if tries < 3 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(problem) => {
                    return Err(CaptureError::BadWalHeader {
                        wal: self.wal_path.clone(),
                        problem,
                    });
                }
            }
        }
    }

    /// Reads new committed transactions into `pending`.
    fn read_new(&mut self) -> Result<()> {
        let wal = self.open_wal()?;
        let Some(header) = self.read_wal_header(wal.as_ref())? else {
            // Empty or just truncated (an app's TRUNCATE checkpoint): by the argument in the
            // module doc, only frames capture had read went.
            self.pos = None;
            self.index.clear();
            return Ok(());
        };
        let wal = wal.expect("a header implies a file");
        if self.pos.is_none_or(|p| p.salt != header.salt) {
            // A new generation. Safe: the log restarted under capture's pin, so it
            // abandoned only frames capture had read (module doc).
            self.index.clear();
            self.page_size = header.page_size;
            self.pos = Some(header.start());
        }
        self.read_generation(&wal, &header)
    }

    /// Reads the committed transactions of `header`'s generation after `pos` (which must
    /// be a position in it) into `pending`. Frames of any other generation end the read.
    fn read_generation(&mut self, wal: &File, header: &WalHeader) -> Result<()> {
        let from = self
            .pos
            .expect("the caller positioned capture in this generation");
        let accept = self
            .accepted_damage
            .filter(|(at, _)| *at == from)
            .map(|(_, off)| off);
        let read = wal::read_transactions(wal, header, from, accept)
            .map_err(io_err(&self.wal_path, "read"))?;
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

    /// Hands the pin off while reading the log from the start of its generation to its
    /// end without producing records, then takes a base image recording `reason`.
    fn resync_inner(
        &mut self,
        reason: SnapshotReason,
        accept_damaged_at: Option<([u32; 2], u64)>,
    ) -> Result<Vec<CaptureEvent>> {
        self.pins.begin_spare()?;
        // Without a held pin (it was lost) nothing protected the log, but the base image
        // below does not need it: it is taken under the new pin.
        if let Err(e) = self.scan_pinned(accept_damaged_at) {
            self.pins.abandon_spare();
            return Err(e);
        }
        self.pins.finish_handoff()?;
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
