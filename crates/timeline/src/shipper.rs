//! The blocking core of the timeline worker: polls every capture, gathers what is new into
//! one segment per interval, stores new contents first, then the segment, and only then
//! confirms to the captures that their records are durable.
//!
//! Order of durability (so a crash at any point loses nothing and invents nothing):
//! contents (a content snapshot, on a quorum; small files travel inline in the segment
//! instead) → the segment naming them (on a quorum) →
//! `confirm_durable` on each capture (their saved positions move) → base image files
//! deleted. A crash before the confirmation makes capture hand the same records out again
//! in a new epoch; readers resolve duplicates with `resolve_history`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lifeboat_capture::files::{FileCapture, FileCaptureOptions};
use lifeboat_capture::{
    BaseImageRecord, CaptureError, CaptureEvent, CaptureOptions, FileChange, FileChangeKind,
    Record, SnapshotReason, SqliteCapture,
};
use lifeboat_vault::Repository;
use time::OffsetDateTime;
use tokio::runtime::Handle;
use tokio::sync::broadcast;

use crate::error::{Result, TimelineError};
use crate::replication::feed::FeedInner;
use crate::replication::stage::{FeedStage, epoch_floor, raise_epochs};
use crate::segment::{ContentMap, STREAM, TimelineSegment};
use crate::store::{CONTENT_TAG, ContentWriter, Stored};
use crate::types::{SiteSources, TimelineEvent, TimelineStatus, WorkerOptions};

pub(crate) struct DbSource {
    pub name: String,
    pub cap: SqliteCapture,
    pub pending: Vec<CaptureEvent>,
    /// The newest base image stored, for checkpoints.
    pub image: Option<BaseImageRecord>,
}

pub(crate) struct DirSource {
    pub name: String,
    pub root: PathBuf,
    pub cap: FileCapture,
    pub pending: Vec<FileChange>,
    /// path -> blake3 of the files as of the last stored segment.
    pub state: BTreeMap<String, String>,
}

/// A MariaDB database: its transactions from the binary log.
pub(crate) struct MariaDbSource {
    pub name: String,
    /// Its server (checkpoints take a base backup of it).
    pub spec: lifeboat_mariadb::ServerSpec,
    /// Where a checkpoint's base backup is made before it is stored (then removed).
    pub base_dir: PathBuf,
    pub cap: lifeboat_mariadb::BinlogCapture,
    pub pending: Vec<lifeboat_mariadb::TransactionRecord>,
    /// When capture last received a transaction (or opened): everything committed up to
    /// then is in the timeline.
    pub last_received: OffsetDateTime,
    /// A problem capture cannot continue past, until a new base is stored.
    pub gap: Option<crate::mariadb_upkeep::CaptureGap>,
    /// The GTID position of the last base stored in a checkpoint.
    pub last_base: Option<lifeboat_mariadb::GtidPos>,
    /// What purging covered binlog files did so far.
    pub purge: crate::mariadb_upkeep::PurgeState,
}

/// A segment that could not be stored yet, with what to confirm once it is.
struct Unsent {
    segment: TimelineSegment,
    db_seqs: Vec<Option<u64>>,
    dir_seqs: Vec<Option<u64>>,
    dir_changes: Vec<Vec<FileChange>>,
    /// The last seq of each MariaDB source's part.
    mariadb_seqs: Vec<Option<u64>>,
    images: Vec<(usize, BaseImageRecord, PathBuf)>,
}

pub(crate) struct Shipper {
    pub repo: Arc<Repository>,
    pub handle: Handle,
    pub options: WorkerOptions,
    pub manifest: PathBuf,
    /// The manifest's path relative to the site dir.
    pub manifest_name: String,
    pub dbs: Vec<DbSource>,
    pub dirs: Vec<DirSource>,
    pub mariadbs: Vec<MariaDbSource>,
    /// Every content stored as vault chunks that segments since the last checkpoint may
    /// name without restating it (the checkpoint's contents and those named since), by
    /// blake3.
    pub contents: ContentMap,
    /// Small contents carried inline in segments since the last checkpoint (blake3 ->
    /// bytes); the next checkpoint stores them as vault chunks.
    pub inline: BTreeMap<String, Vec<u8>>,
    pub next_seq: u64,
    /// Set by [`crate::TimelineWorker::halt`] (a fenced primary): nothing more is written to
    /// the vault, not even a pass already under way.
    pub halted: Arc<std::sync::atomic::AtomicBool>,
    /// Set while a checkpoint ships its segment: the segment built is marked as its.
    pub shipping_checkpoint: bool,
    /// The previous segment's cut: every pending record was seen after it.
    after: OffsetDateTime,
    /// When the last poll ended.
    cut_at: OffsetDateTime,
    /// When the oldest pending record was seen.
    oldest_pending: Option<OffsetDateTime>,
    unsent: Option<Unsent>,
    pub last_ship: Instant,
    pub last_checkpoint: Instant,
    pub last_catch_up: Instant,
    last_wal_checkpoint: Instant,
    /// Set until a checkpoint succeeds (the one at start may fail while destinations
    /// are down; the loop retries it).
    pub checkpoint_needed: bool,
    /// When a checkpoint was last attempted (failures are retried every
    /// `catch_up_interval`, not every poll).
    pub checkpoint_attempt: Option<Instant>,
    pub segments_since_checkpoint: u64,
    pub status: Arc<Mutex<TimelineStatus>>,
    pub events: broadcast::Sender<TimelineEvent>,
    /// The change feed to standbys, when the worker streams: what each poll read is
    /// staged here and published as one batch.
    pub feed: Option<FeedStage>,
    /// Held while this worker runs: one worker per site at a time. Declared last so it is
    /// released only after the captures closed.
    _lock: std::fs::File,
}

/// At most this many files of `inline_max` bytes go inline in one segment...
const INLINE_SEGMENT_FILES: u64 = 16;
/// ...and this many between two checkpoints (they are kept in memory until then).
const INLINE_CHECKPOINT_FILES: u64 = 512;

/// Reads a file of at most `max` bytes for inline storage: `None` when it grew beyond.
fn read_small(path: &std::path::Path, max: u64) -> Result<Option<Stored>> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(Stored::Gone)),
        Err(e) => return Err(crate::error::io_err("open", path)(e)),
    };
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(crate::error::io_err("read", path))?;
    if bytes.len() as u64 > max {
        return Ok(None);
    }
    Ok(Some(Stored::Inline {
        hash: blake3::hash(&bytes).to_hex().to_string(),
        bytes,
    }))
}

pub(crate) fn capture_err(what: &str) -> impl FnOnce(CaptureError) -> TimelineError + '_ {
    move |error| TimelineError::Capture {
        what: what.to_string(),
        error: Box::new(error),
    }
}

/// How long a barrier waits for a MariaDB capture to receive what its server committed.
const BARRIER_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) fn mariadb_err(
    what: &str,
) -> impl FnOnce(lifeboat_mariadb::MariaDbError) -> TimelineError + '_ {
    move |error| TimelineError::MariaDb {
        what: what.to_string(),
        error: Box::new(error),
    }
}

fn rel_name(p: &std::path::Path) -> String {
    p.to_string_lossy().trim_matches('/').to_string()
}

impl Shipper {
    /// Opens every capture. Blocking.
    pub(crate) fn open(
        sources: &SiteSources,
        options: WorkerOptions,
        repo: Arc<Repository>,
        handle: Handle,
        status: Arc<Mutex<TimelineStatus>>,
        events: broadcast::Sender<TimelineEvent>,
        feed: Option<Arc<FeedInner>>,
    ) -> Result<Shipper> {
        let site = &sources.site_dir;
        let state_dir = site.join(&sources.state_dir);
        let lock = crate::lock::lock_site(&state_dir)?;
        if let Some(feed) = &feed {
            // Before any capture opens: its session numbers must name this primary's
            // sessions uniquely across nodes (`epoch_floor`).
            raise_epochs(
                &state_dir,
                sources.databases.len(),
                sources.data_dirs.len(),
                sources.mariadb.is_some(),
                epoch_floor(feed.term),
            )?;
        }
        let mut dbs = Vec::new();
        for (i, db) in sources.databases.iter().enumerate() {
            let name = rel_name(db);
            let cap = SqliteCapture::open(
                &site.join(db),
                &state_dir.join(format!("db-{i}")),
                CaptureOptions::default(),
            )
            .map_err(capture_err(&name))?;
            dbs.push(DbSource {
                name,
                cap,
                pending: Vec::new(),
                image: None,
            });
        }
        let mut dirs = Vec::new();
        let mut missing = Vec::new();
        for (i, dir) in sources.data_dirs.iter().enumerate() {
            let name = rel_name(dir);
            let root = site.join(dir);
            let cap = FileCapture::start(
                &root,
                &state_dir.join(format!("dir-{i}.json")),
                FileCaptureOptions {
                    rescan_interval: options.rescan_interval,
                    watch: true,
                },
            )
            .map_err(capture_err(&name))?;
            // A declared dir that does not exist does not stop the capture of anything else:
            // it is captured as empty until it is created, and the owner is told.
            if cap.is_missing() {
                missing.push(format!(
                    "data dir {name} ({}) does not exist; it is captured as empty until it is \
                     created (create it, or correct [state] dirs in lifeboat.toml)",
                    root.display()
                ));
            }
            let state = cap
                .manifest()
                .files
                .iter()
                .map(|(p, e)| (p.clone(), e.hash.clone()))
                .collect();
            dirs.push(DirSource {
                name,
                root,
                cap,
                pending: Vec::new(),
                state,
            });
        }
        let mut mariadbs = Vec::new();
        if let Some((dir, spec)) = &sources.mariadb {
            let name = rel_name(dir);
            let source =
                lifeboat_mariadb::CaptureSource::from_spec(spec).map_err(mariadb_err(&name))?;
            // Without a saved position, from the first transaction of the server's binlog
            // (it is on from the server's first start, so that is the whole history; a
            // restored server's binlog starts at the position it was restored to).
            let start = spec.binlog_start_pos().map_err(mariadb_err(&name))?;
            let cap = lifeboat_mariadb::BinlogCapture::open(
                &state_dir.join("mariadb-0"),
                source,
                &start,
                lifeboat_mariadb::CaptureOptions::default(),
            )
            .map_err(mariadb_err(&name))?;
            mariadbs.push(MariaDbSource {
                name,
                spec: spec.clone(),
                base_dir: state_dir.join("mariadb-0-base"),
                cap,
                pending: Vec::new(),
                last_received: OffsetDateTime::now_utc(),
                gap: None,
                last_base: None,
                purge: Default::default(),
            });
        }
        if let Some(feed) = &feed {
            for db in &dbs {
                feed.add_source(&db.name, db.cap.status().durable_seq);
            }
            for dir in &dirs {
                feed.add_source(&dir.name, dir.cap.manifest().last_seq);
            }
            for m in &mariadbs {
                // Nothing is handed out yet: the last seq is the one confirmed durable.
                feed.add_source(&m.name, m.cap.status().last_seq);
            }
            feed.seed_history();
        }
        let handle2 = handle.clone();
        // Compaction may have moved old segments into bundles: continue after the highest
        // seq in either stream.
        let listing = handle2.block_on(crate::stream::listing(&repo))?;
        let last_seq = handle2.block_on(crate::stream::last_seq(&repo, &listing))?;
        let now = OffsetDateTime::now_utc();
        let shipper = Shipper {
            repo,
            handle,
            manifest: site.join(&sources.manifest),
            manifest_name: rel_name(&sources.manifest),
            options,
            dbs,
            dirs,
            mariadbs,
            contents: ContentMap::new(),
            inline: BTreeMap::new(),
            next_seq: last_seq.map_or(1, |s| s + 1),
            halted: Arc::default(),
            shipping_checkpoint: false,
            after: now,
            cut_at: now,
            oldest_pending: None,
            unsent: None,
            last_ship: Instant::now(),
            last_checkpoint: Instant::now(),
            last_catch_up: Instant::now(),
            last_wal_checkpoint: Instant::now(),
            checkpoint_needed: true,
            checkpoint_attempt: None,
            segments_since_checkpoint: 0,
            status,
            events,
            feed: feed.map(FeedStage::new),
            _lock: lock,
        };
        for message in missing {
            shipper.status.lock().unwrap().last_error = Some(message.clone());
            shipper.emit(TimelineEvent::Error { message });
        }
        Ok(shipper)
    }

    pub(crate) fn emit(&self, event: TimelineEvent) {
        if !matches!(event, TimelineEvent::SegmentShipped { .. }) {
            let mut s = self.status.lock().unwrap();
            if s.recent_events.len() >= crate::types::RECENT_EVENTS {
                s.recent_events.remove(0);
            }
            s.recent_events
                .push((OffsetDateTime::now_utc(), event.clone()));
        }
        let _ = self.events.send(event);
    }

    fn note_pending(&mut self, at: OffsetDateTime) {
        if self.oldest_pending.is_none() {
            self.oldest_pending = Some(at);
            self.status.lock().unwrap().oldest_unshipped = Some(at);
        }
    }

    /// A barrier's poll: like [`Shipper::poll`], but each MariaDB capture first waits until
    /// its stream has delivered everything the server committed by now (the binlog stream
    /// may lag a commit; SQLite's log and the files are read directly).
    pub(crate) fn poll_for_barrier(&mut self) -> Result<()> {
        let started = OffsetDateTime::now_utc();
        let mut gap = None;
        for i in 0..self.mariadbs.len() {
            let m = &mut self.mariadbs[i];
            let records = match m.cap.catch_up(BARRIER_CATCH_UP) {
                Ok(records) => records,
                // The poll below hands out what came before it and takes a new base; the
                // barrier cannot say the server's position was captured.
                Err(e) if e.needs_new_base() => {
                    gap = Some(mariadb_err(&m.name)(e));
                    continue;
                }
                Err(e) => return Err(mariadb_err(&m.name)(e)),
            };
            if let Some(last) = records.last() {
                m.last_received = last.received_at;
                if let Some(feed) = &mut self.feed {
                    feed.stage_mariadb(&m.name, &records);
                }
                m.pending.extend(records);
                self.note_pending(started);
            }
        }
        self.poll()?;
        gap.map_or(Ok(()), Err)
    }

    /// Reads what every capture has seen since the last poll into the pending batch.
    pub(crate) fn poll(&mut self) -> Result<()> {
        let started = OffsetDateTime::now_utc();
        for i in 0..self.dbs.len() {
            let db = &mut self.dbs[i];
            let events = match db.cap.poll() {
                Ok(e) => e,
                Err(CaptureError::CorruptWal { offset, .. }) => {
                    let why = format!("damaged WAL frame at offset {offset}");
                    db.cap.resync(&why).map_err(capture_err(&db.name))?
                }
                Err(e) => return Err(capture_err(&db.name)(e)),
            };
            self.take_db_events(i, events);
        }
        for i in 0..self.dirs.len() {
            let dir = &mut self.dirs[i];
            let changes = dir.cap.poll().map_err(capture_err(&dir.name))?;
            if !changes.is_empty() {
                self.take_dir_changes(i, changes);
                self.note_pending(started);
            }
        }
        for i in 0..self.mariadbs.len() {
            let m = &mut self.mariadbs[i];
            match m.cap.poll() {
                Ok(records) => {
                    if let Some(last) = records.last() {
                        m.last_received = last.received_at;
                        if let Some(feed) = &mut self.feed {
                            feed.stage_mariadb(&m.name, &records);
                        }
                        m.pending.extend(records);
                        self.note_pending(started);
                    }
                }
                // Capture cannot go on from where it is: a new base at once, and on from it.
                Err(e) if e.needs_new_base() => {
                    self.note_mariadb_status();
                    crate::mariadb_upkeep::recover(self, i, e)?;
                }
                Err(e) => return Err(mariadb_err(&m.name)(e)),
            }
        }
        self.note_mariadb_status();
        self.cut_at = OffsetDateTime::now_utc();
        self.publish_feed();
        Ok(())
    }

    pub(crate) fn note_mariadb_status(&self) {
        let Some(m) = self.mariadbs.first() else {
            return;
        };
        let c = m.cap.status();
        self.status.lock().unwrap().mariadb = Some(crate::types::MariaDbCaptureStatus {
            connected: c.connected,
            reconnects: c.reconnects,
            confirmed: c.confirmed.to_string(),
            last_problem: c.last_problem,
            oldest_binlog: m.purge.oldest_kept.clone(),
            binlog_files_purged: m.purge.files_purged,
            binlog_purge_error: m.purge.last_error.clone(),
        });
    }

    /// Takes what a data dir's capture handed out: pending for the vault, staged for the
    /// stream.
    pub(crate) fn take_dir_changes(&mut self, i: usize, changes: Vec<FileChange>) {
        let dir = &mut self.dirs[i];
        if let Some(feed) = &mut self.feed {
            feed.stage_dir(&dir.name, &dir.root, &changes);
        }
        dir.pending.extend(changes);
    }

    /// Publishes what was staged for the stream since the last batch as one batch.
    pub(crate) fn publish_feed(&mut self) {
        if let Some(feed) = &mut self.feed {
            feed.publish();
        }
    }

    pub(crate) fn take_db_events(&mut self, i: usize, events: Vec<CaptureEvent>) {
        if events.is_empty() {
            return;
        }
        for e in &events {
            if let CaptureEvent::BaseImage(b) = e
                && let SnapshotReason::ContinuityLost { why } = &b.record.reason
            {
                self.emit(TimelineEvent::ContinuityLost {
                    database: self.dbs[i].name.clone(),
                    why: why.clone(),
                });
            }
        }
        if let Some(feed) = &mut self.feed {
            feed.stage_db(&self.dbs[i].name, &events);
        }
        self.dbs[i].pending.extend(events);
        self.note_pending(OffsetDateTime::now_utc());
    }

    /// Records that every capture was just read (ends the current cut).
    pub(crate) fn mark_polled(&mut self) {
        self.cut_at = OffsetDateTime::now_utc();
    }

    /// The cut of the last segment built.
    pub(crate) fn last_cut(&self) -> OffsetDateTime {
        self.after
    }

    pub(crate) fn checkpoint_done(&mut self, info: crate::types::CheckpointInfo) {
        self.last_checkpoint = Instant::now();
        self.segments_since_checkpoint = 0;
        self.checkpoint_needed = false;
        self.checkpoint_attempt = None;
        self.status.lock().unwrap().last_checkpoint = Some(info);
    }

    /// Sends what destinations that were down missed, when it is time to try again.
    pub(crate) fn catch_up_if_due(&mut self) {
        if self.last_catch_up.elapsed() >= self.options.catch_up_interval {
            self.last_catch_up = Instant::now();
            let behind = self.handle.block_on(self.repo.catch_up());
            for (url, why) in behind {
                let _ = self.events.send(TimelineEvent::Error {
                    message: format!(
                        "destination {url} is behind ({why}); it catches up when it is reachable again"
                    ),
                });
            }
        }
    }

    /// Whether a checkpoint is due (never on a site where nothing changed since the last).
    pub(crate) fn checkpoint_due(&self) -> bool {
        let retry_wait = self
            .checkpoint_attempt
            .is_some_and(|at| at.elapsed() < self.options.catch_up_interval);
        let periodic = self.segments_since_checkpoint > 0
            && (self.last_checkpoint.elapsed() >= self.options.checkpoint_interval
                || self.segments_since_checkpoint >= self.options.checkpoint_segments);
        !retry_wait && (self.checkpoint_needed || periodic)
    }

    /// Ships whatever is pending, writing a segment even when nothing is (so a checkpoint
    /// always has a segment to be consistent with). Returns the last stored seq.
    pub(crate) fn ship_forced(&mut self) -> Result<u64> {
        if let Some(seq) = self.ship()? {
            return Ok(seq);
        }
        let unsent = self.build()?;
        let seq = unsent.segment.seq;
        self.store_segment(unsent)?;
        Ok(seq)
    }

    /// Whether anything waits to be shipped.
    pub(crate) fn has_pending(&self) -> bool {
        self.unsent.is_some()
            || self.dbs.iter().any(|d| !d.pending.is_empty())
            || self.dirs.iter().any(|d| !d.pending.is_empty())
            || self.mariadbs.iter().any(|m| !m.pending.is_empty())
    }

    /// Stores everything pending as one segment. Returns its seq, or `None` when there was
    /// nothing to store (a quiet interval writes nothing).
    pub(crate) fn ship(&mut self) -> Result<Option<u64>> {
        self.last_ship = Instant::now();
        if let Some(unsent) = self.unsent.take() {
            self.store_segment(unsent)?;
        }
        if !self.has_pending() {
            return Ok(None);
        }
        let unsent = self.build()?;
        let seq = unsent.segment.seq;
        self.store_segment(unsent)?;
        Ok(Some(seq))
    }

    /// Takes the pending records, stores the contents they name, and builds the segment.
    fn build(&mut self) -> Result<Unsent> {
        let mut db_seqs = Vec::new();
        let mut images = Vec::new();
        let mut sources = BTreeMap::new();
        // Work list: snapshot name -> file on disk, sorted so the snapshot is depth-first.
        let mut work: BTreeMap<Vec<String>, PathBuf> = BTreeMap::new();
        let key = |s: &str| s.split('/').map(str::to_string).collect::<Vec<_>>();
        for (i, db) in self.dbs.iter_mut().enumerate() {
            // Cloned, not taken: if storing fails, the records stay pending for the retry.
            let events = db.pending.clone();
            db_seqs.push(events.last().map(CaptureEvent::seq));
            let mut records = Vec::new();
            for e in events {
                match e {
                    CaptureEvent::Commit(c) => records.push(Record::Commit(c)),
                    CaptureEvent::BaseImage(b) => {
                        work.insert(
                            key(&format!("images/{}/{}", db.name, b.record.image_hash)),
                            b.path.clone(),
                        );
                        images.push((i, b.record.clone(), b.path));
                        records.push(Record::BaseImage(b.record));
                    }
                }
            }
            if !records.is_empty() {
                sources.insert(db.name.clone(), records);
            }
        }
        let mut dir_changes = Vec::new();
        // Small files go inline in the segment (no content snapshot, so no extra objects),
        // within a budget per segment and since the last checkpoint (which stores them).
        let mut stored: BTreeMap<String, Stored> = BTreeMap::new();
        let mut new_inline: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let inline_max = self.options.inline_max;
        let mut inline_room = (inline_max * INLINE_SEGMENT_FILES).min(
            (inline_max * INLINE_CHECKPOINT_FILES)
                .saturating_sub(self.inline.values().map(|b| b.len() as u64).sum()),
        );
        for dir in &mut self.dirs {
            let changes = dir.pending.clone();
            for c in &changes {
                if let FileChangeKind::Written { hash, size } = &c.change
                    && !self.contents.contains_key(hash)
                    && !self.inline.contains_key(hash)
                {
                    let name = format!("files/{}/{}", dir.name, c.path);
                    if stored.contains_key(&name) {
                        continue;
                    }
                    let path = dir.root.join(&c.path);
                    if *size <= inline_max
                        && *size <= inline_room
                        && let Some(got) = read_small(&path, inline_max)?
                    {
                        if let Stored::Inline { hash, bytes } = &got {
                            inline_room = inline_room.saturating_sub(bytes.len() as u64);
                            new_inline.insert(hash.clone(), bytes.clone());
                        }
                        work.remove(&key(&name));
                        stored.insert(name, got);
                        continue;
                    }
                    work.insert(key(&name), path);
                }
            }
            dir_changes.push(changes);
        }
        // Contents first: durable on a quorum before any segment names them.
        let mut new_contents = ContentMap::new();
        if !work.is_empty() {
            let mut writer = ContentWriter::start(self.repo.clone(), self.handle.clone())?;
            for (name, path) in &work {
                let name = name.join("/");
                let got = writer.store_file(path, &name)?;
                if let Stored::Content { hash, content } = &got {
                    new_contents.insert(hash.clone(), content.clone());
                }
                stored.insert(name, got);
            }
            if !writer.is_empty() {
                writer.finish(
                    vec![
                        CONTENT_TAG.into(),
                        format!("timeline-seq:{}", self.next_seq),
                    ],
                    None,
                )?;
            }
        }
        for (_, rec, _) in &images {
            if !new_contents.contains_key(&rec.image_hash) {
                return Err(TimelineError::Damaged {
                    what: format!("base image {}", rec.image_hash),
                    why: "the image file changed or vanished before it was stored; capture takes a new one".into(),
                });
            }
        }
        // A file that changed again (or vanished) between capture hashing it and the
        // worker reading it is recorded as what was read: the content the record names
        // must exist in the vault.
        let mut dir_seqs = Vec::new();
        for (dir, changes) in self.dirs.iter().zip(dir_changes.iter_mut()) {
            dir_seqs.push(changes.last().map(|c| c.seq));
            for c in changes.iter_mut() {
                let name = format!("files/{}/{}", dir.name, c.path);
                if let FileChangeKind::Written { .. } = c.change {
                    match stored.get(&name) {
                        Some(Stored::Content { hash, content }) => {
                            c.change = FileChangeKind::Written {
                                size: content.size,
                                hash: hash.clone(),
                            };
                        }
                        Some(Stored::Inline { hash, bytes }) => {
                            c.change = FileChangeKind::Written {
                                size: bytes.len() as u64,
                                hash: hash.clone(),
                            };
                        }
                        Some(Stored::Gone) => c.change = FileChangeKind::Deleted,
                        None => {}
                    }
                }
            }
            if !changes.is_empty() {
                sources.insert(
                    dir.name.clone(),
                    changes.iter().cloned().map(Record::File).collect(),
                );
            }
        }
        self.contents.extend(new_contents.clone());
        self.inline.extend(new_inline.clone());
        let mut mariadb = BTreeMap::new();
        let mut mariadb_seqs = Vec::new();
        for m in &mut self.mariadbs {
            mariadb_seqs.push(m.pending.last().map(|r| r.seq));
            if !m.pending.is_empty() {
                mariadb.insert(m.name.clone(), std::mem::take(&mut m.pending));
            }
        }
        for db in &mut self.dbs {
            db.pending.clear();
        }
        for dir in &mut self.dirs {
            dir.pending.clear();
        }
        let segment = TimelineSegment {
            seq: self.next_seq,
            after: self.after,
            cut_at: self.cut_at.max(self.after),
            contents: new_contents,
            sources,
            inline: new_inline,
            mariadb,
            checkpoint: self.shipping_checkpoint,
        };
        self.next_seq += 1;
        self.after = self.cut_at.max(self.after);
        Ok(Unsent {
            segment,
            db_seqs,
            dir_seqs,
            dir_changes,
            mariadb_seqs,
            images,
        })
    }

    /// Puts the segment on a quorum, then confirms to the captures.
    fn store_segment(&mut self, unsent: Unsent) -> Result<()> {
        let bytes = unsent.segment.encode();
        let seq = unsent.segment.seq;
        if let Err(e) = self.check_not_halted() {
            self.unsent = Some(unsent);
            return Err(e);
        }
        if let Err(e) = self
            .handle
            .block_on(self.repo.put_segment(STREAM, seq, &bytes))
        {
            self.unsent = Some(unsent);
            return Err(e.into());
        }
        for (db, seq) in self.dbs.iter_mut().zip(&unsent.db_seqs) {
            if let Some(seq) = seq {
                db.cap
                    .confirm_durable(*seq)
                    .map_err(capture_err(&db.name))?;
            }
        }
        // Only now, with the segment on a quorum: capture's saved position moves.
        for (m, seq) in self.mariadbs.iter_mut().zip(&unsent.mariadb_seqs) {
            if let Some(seq) = seq {
                m.cap.confirm_durable(*seq).map_err(mariadb_err(&m.name))?;
            }
        }
        self.note_mariadb_status();
        for ((dir, seq), changes) in self
            .dirs
            .iter_mut()
            .zip(&unsent.dir_seqs)
            .zip(&unsent.dir_changes)
        {
            if let Some(seq) = seq {
                dir.cap
                    .confirm_durable(*seq)
                    .map_err(capture_err(&dir.name))?;
            }
            for c in changes {
                match &c.change {
                    FileChangeKind::Written { hash, .. } => {
                        dir.state.insert(c.path.clone(), hash.clone());
                    }
                    FileChangeKind::Deleted => {
                        dir.state.remove(&c.path);
                    }
                }
            }
        }
        for (i, rec, path) in unsent.images {
            self.dbs[i].image = Some(rec);
            let _ = std::fs::remove_file(path);
        }
        self.segments_since_checkpoint += 1;
        if !self.has_pending() {
            self.oldest_pending = None;
        }
        {
            let mut s = self.status.lock().unwrap();
            s.last_segment_seq = Some(seq);
            s.last_shipped_at = Some(OffsetDateTime::now_utc());
            s.bytes_shipped += bytes.len() as u64;
            s.segments_shipped += 1;
            s.last_error = None;
            s.oldest_unshipped = self.oldest_pending;
        }
        self.emit(TimelineEvent::SegmentShipped { seq });
        Ok(())
    }

    /// Checkpoints every database's WAL (so it can start over and does not grow without
    /// bound), shipping the few commits made meanwhile as segments of their own. Never
    /// takes a database's write lock, so it never makes an app transaction fail. Run right
    /// after a shipment, at most every `wal_checkpoint_interval`.
    /// Refuses once the worker was halted: another node writes the timeline now, and a
    /// segment or checkpoint of this node's from then on could take a seq the other uses.
    pub(crate) fn check_not_halted(&self) -> Result<()> {
        if self.halted.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(TimelineError::Halted);
        }
        Ok(())
    }

    pub(crate) fn checkpoint_wals(&mut self) -> Result<()> {
        if self.has_pending()
            || self.last_wal_checkpoint.elapsed() < self.options.wal_checkpoint_interval
        {
            return Ok(());
        }
        self.last_wal_checkpoint = Instant::now();
        let Shipper {
            dbs,
            repo,
            handle,
            next_seq,
            after,
            status,
            events: announce,
            feed,
            halted,
            ..
        } = self;
        for db in dbs.iter_mut() {
            let name = db.name.clone();
            db.cap
                .checkpoint(|events| {
                    // Read by capture's own handoffs: streamed as they are read, like a poll's.
                    if let Some(feed) = feed.as_mut() {
                        feed.stage_db(&name, events);
                        feed.publish();
                    }
                    let mut records = Vec::new();
                    for e in events {
                        match e {
                            CaptureEvent::Commit(c) => records.push(Record::Commit(c.clone())),
                            CaptureEvent::BaseImage(_) => {
                                return Err(
                                    "a base image cannot be shipped during a WAL checkpoint".into(),
                                );
                            }
                        }
                    }
                    let now = OffsetDateTime::now_utc();
                    let segment = TimelineSegment {
                        seq: *next_seq,
                        after: *after,
                        cut_at: now,
                        contents: ContentMap::new(),
                        sources: BTreeMap::from([(name.clone(), records)]),
                        inline: BTreeMap::new(),
                        mariadb: BTreeMap::new(),
                        checkpoint: false,
                    };
                    let bytes = segment.encode();
                    if halted.load(std::sync::atomic::Ordering::SeqCst) {
                        return Err(TimelineError::Halted.to_string());
                    }
                    handle
                        .block_on(repo.put_segment(STREAM, *next_seq, &bytes))
                        .map_err(|e| e.to_string())?;
                    {
                        let mut s = status.lock().unwrap();
                        s.last_segment_seq = Some(*next_seq);
                        s.last_shipped_at = Some(OffsetDateTime::now_utc());
                        s.bytes_shipped += bytes.len() as u64;
                        s.segments_shipped += 1;
                    }
                    let _ = announce.send(TimelineEvent::SegmentShipped { seq: *next_seq });
                    *next_seq += 1;
                    *after = now;
                    Ok(())
                })
                .map_err(capture_err(&db.name))?;
        }
        Ok(())
    }
}
