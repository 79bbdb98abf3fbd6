//! Applying batches to a standby's copy, durably and in order.
//!
//! A *group* is one or more batches received back to back. Applying it:
//!
//! 1. decide, record by record, what the copy needs ([`decide`]): the next record of a
//!    source is applied, one it already holds is skipped, anything else (a gap, a history
//!    handed out again differently) makes the standby resync from the vault;
//! 2. if the group has several batches, save an intent in `replica.state` (see below);
//! 3. each database: the group's pages merged (the last version of each page, pages a
//!    shrink cut off and a growth did not rewrite as zeros) are appended to its log as **one**
//!    SQLite transaction and the log fsynced (`wal_writer.rs`): SQLite sees all of the group
//!    or none of it;
//! 4. each file change: written to a temporary file, fsynced, renamed over the file (or the
//!    file unlinked); then every directory touched is fsynced;
//! 5. only then `replica.state` says the group is applied (one slot written in place and fdatasynced), and the standby
//!    acknowledges it.
//!
//! What a kill -9 leaves: before 3 completes, nothing SQLite sees changed; between 3 and 5,
//! some databases and files hold the group and `replica.state` still says the previous one.
//! The standby then receives the group again and applies it again: a database transaction
//! that sets every page to its final value (and the size) gives the same database whether
//! or not the first one was there, and file changes say what a file *is*, not how it
//! changed. What must never happen is applying only the first batches of such a group on top
//! of the whole group: SQLite would then commit pages of an older moment over newer ones.
//! Hence the intent of step 2: while it is present, the first group applied must reach at
//! least as far in every source (or carry a whole image of the database).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat_capture::record::Sequenced;
use lifeboat_capture::{FileChangeKind, Record, SnapshotReason};

use super::super::Position;
use super::super::batch::DecodedBatch;
use super::super::error::StreamError;
use super::super::wire::SourcePosition;
use super::files::{self, FileError};
use super::state::{Applying, ReplicaFile};
use super::wal_writer::{self, WalAppender, db_page_size};

/// A step of applying a group, for tests that crash the standby exactly there.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyStep {
    /// The intent of a group of several batches is saved.
    IntentSaved,
    /// Every database's transaction is in its log, fsynced.
    DatabasesWritten,
    /// Every file change is in place and its directory fsynced.
    FilesWritten,
    /// `replica.state` says the group is applied.
    PositionSaved,
}

/// Called at each [`ApplyStep`] (tests only).
#[doc(hidden)]
pub type FaultHook = Arc<dyn Fn(ApplyStep) + Send + Sync>;

/// What to do with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    Apply,
    Skip,
    Resync(String),
}

/// Whether a copy holding `held` of a source applies, skips or cannot take `rec`.
///
/// Records are named by (capture epoch, seq), unique to one capture session of one primary
/// (`stage::epoch_floor`). The next seq is applied; what the copy holds already is skipped; a
/// whole base image replaces the database whatever came before; a seq the copy holds handed
/// out again by a later session means the history was rewritten after a crash of the
/// primary's capture, which the copy cannot undo; a gap means something is missing.
pub(crate) fn decide(held: SourcePosition, rec: &Record, is_db: bool) -> Decision {
    let (e, s) = (rec.epoch(), rec.seq());
    if matches!(rec, Record::File(_)) == is_db {
        return Decision::Resync(format!(
            "seq {s} is a {} record of a {}",
            if is_db { "file" } else { "database" },
            if is_db { "database" } else { "data dir" }
        ));
    }
    if s <= held.seq && e <= held.epoch {
        return Decision::Skip;
    }
    let whole_image = matches!(rec, Record::BaseImage(b) if b.reason != SnapshotReason::Requested);
    if whole_image && e >= held.epoch {
        return Decision::Apply;
    }
    if s == held.seq + 1 && e >= held.epoch {
        return Decision::Apply;
    }
    Decision::Resync(if s <= held.seq {
        format!(
            "capture session {e} hands out seq {s} again, which this copy applied from session {}: \
             the primary's capture restarted and its history after seq {} may differ",
            held.epoch,
            s.saturating_sub(1)
        )
    } else if s == held.seq + 1 {
        format!(
            "seq {s} comes from capture session {e}, older than session {} this copy follows",
            held.epoch
        )
    } else {
        format!(
            "seq {} to {} are missing before seq {s}",
            held.seq + 1,
            s - 1
        )
    })
}

/// [`decide`] for a MariaDB transaction, named like a record by (capture epoch, seq).
pub(crate) fn decide_transaction(held: SourcePosition, e: u64, s: u64) -> Decision {
    if s <= held.seq && e <= held.epoch {
        return Decision::Skip;
    }
    if s == held.seq + 1 && e >= held.epoch {
        return Decision::Apply;
    }
    Decision::Resync(if s <= held.seq {
        format!(
            "capture session {e} hands out transaction {s} again, which this copy holds from session {}: the primary's capture restarted and its history may differ",
            held.epoch
        )
    } else if s == held.seq + 1 {
        format!(
            "transaction {s} comes from capture session {e}, older than session {} this copy follows",
            held.epoch
        )
    } else {
        format!(
            "transactions {} to {} are missing before {s}",
            held.seq + 1,
            s - 1
        )
    })
}

/// The copy's MariaDB database: its data dir is changed only by folding the journal.
pub(crate) struct MariaDbCopy {
    pub name: String,
    pub spec: lifeboat_mariadb::ServerSpec,
    pub journal: PathBuf,
    /// Fold when the journal grows past this.
    pub fold_bytes: u64,
}

/// Pages to write, ascending: (page number, bytes).
type Pages<'a> = Vec<(u32, Cow<'a, [u8]>)>;

/// One database's part of a group: the pages to write and its size after.
struct DbTxn<'a> {
    pages: BTreeMap<u32, Cow<'a, [u8]>>,
    db_pages: u32,
    /// The smallest size the database had within the group: pages above it that the group
    /// does not rewrite were cut off and read as zeros since.
    min_pages: Option<u32>,
    whole_image: bool,
}

impl<'a> DbTxn<'a> {
    fn new() -> Self {
        DbTxn {
            pages: BTreeMap::new(),
            db_pages: 0,
            min_pages: None,
            whole_image: false,
        }
    }

    fn add_commit(&mut self, c: &'a lifeboat_capture::CommitRecord) {
        for (pgno, data) in &c.pages {
            if *pgno <= c.db_pages {
                self.pages.insert(*pgno, Cow::Borrowed(data.as_slice()));
            }
        }
        self.pages.retain(|p, _| *p <= c.db_pages);
        self.db_pages = c.db_pages;
        self.min_pages = Some(self.min_pages.map_or(c.db_pages, |m| m.min(c.db_pages)));
    }

    fn set_image(&mut self, bytes: &'a [u8], page_size: u32, db_pages: u32) {
        self.pages = bytes
            .chunks(page_size as usize)
            .enumerate()
            .map(|(i, p)| (i as u32 + 1, Cow::Borrowed(p)))
            .collect();
        self.db_pages = db_pages;
        self.min_pages = None;
        self.whole_image = true;
    }

    /// The pages of the transaction, ascending, with zeros for pages cut off and not
    /// rewritten.
    fn finish(mut self, page_size: u32) -> (Pages<'a>, u32) {
        if let Some(min) = self.min_pages {
            for p in (min + 1)..=self.db_pages {
                self.pages
                    .entry(p)
                    .or_insert_with(|| Cow::Owned(vec![0u8; page_size as usize]));
            }
        }
        (self.pages.into_iter().collect(), self.db_pages)
    }
}

enum FileOp<'a> {
    Write(&'a [u8]),
    Delete,
}

struct Plan<'a> {
    sources: BTreeMap<String, SourcePosition>,
    dbs: BTreeMap<String, DbTxn<'a>>,
    files: Vec<(&'a str, &'a str, FileOp<'a>)>,
    /// MariaDB transactions to journal.
    journal: Vec<lifeboat_mariadb::TransactionRecord>,
    last: Position,
}

/// A standby database: where it is and its log.
struct DbCopy {
    path: PathBuf,
    page_size: u32,
    wal: WalAppender,
}

/// What applying a group did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Applied and durable up to this position.
    Applied(Position),
    /// The group does not reach the intent a crash left: wait for more batches.
    Wait,
    /// The copy cannot take the group: restore it from the vault.
    Resync(String),
}

/// The standby's copy and its state file, applied to on a blocking thread.
pub(crate) struct Applier {
    pub state_dir: PathBuf,
    pub meta_dir: PathBuf,
    pub file: ReplicaFile,
    database_names: Vec<String>,
    dbs: BTreeMap<String, DbCopy>,
    dirs: BTreeSet<String>,
    pub mariadb: Option<MariaDbCopy>,
    /// A fold of the MariaDB journal running in the background (started when the journal
    /// passed its size), so acknowledgements do not wait for it.
    folding: Option<std::thread::JoinHandle<Result<usize, StreamError>>>,
    pub wal_checkpoint_bytes: u64,
    pub fault: Option<FaultHook>,
}

impl Applier {
    /// Opens the copy: cuts what a crash left half-written (the torn tail of a log,
    /// temporary files) and positions every log after its last whole transaction.
    pub(crate) fn open(
        state_dir: &Path,
        meta_dir: &Path,
        file: ReplicaFile,
        databases: &[String],
        dirs: &[String],
        mariadb: Option<MariaDbCopy>,
    ) -> Result<Applier, StreamError> {
        let mut a = Applier {
            state_dir: state_dir.to_path_buf(),
            meta_dir: meta_dir.to_path_buf(),
            file,
            database_names: databases.to_vec(),
            dbs: BTreeMap::new(),
            dirs: dirs.iter().cloned().collect(),
            mariadb,
            folding: None,
            wal_checkpoint_bytes: 32 << 20,
            fault: None,
        };
        // A copy whose database is gone (a state dir wiped by hand) is no copy: restore it.
        if a.file.ready
            && (a
                .database_names
                .iter()
                .any(|n| !a.state_dir.join(n).is_file())
                || a.mariadb
                    .as_ref()
                    .is_some_and(|m| !a.state_dir.join(&m.name).is_dir()))
        {
            a.file.ready = false;
        }
        if a.file.ready {
            a.open_copy()?;
        }
        Ok(a)
    }

    /// (Re)opens the databases and cleans the data dirs, once the copy is a whole state.
    pub(crate) fn open_copy(&mut self) -> Result<(), StreamError> {
        self.dbs.clear();
        // What a restore interrupted after it completed may have left.
        let scratch = self.state_dir.join(super::resync::RESTORE_DIR);
        if scratch.exists() {
            std::fs::remove_dir_all(&scratch).map_err(StreamError::io("remove", &scratch))?;
        }
        for name in &self.database_names {
            let path = self.state_dir.join(name);
            let wal = WalAppender::open(&path)?;
            self.dbs.insert(
                name.clone(),
                DbCopy {
                    page_size: db_page_size(&path)?,
                    path,
                    wal,
                },
            );
        }
        for dir in &self.dirs {
            files::remove_partials(&self.state_dir.join(dir))?;
        }
        if let Some(m) = &self.mariadb {
            let held = self.file.sources.get(&m.name).map_or(0, |p| p.seq);
            super::journal::drop_beyond(&m.journal, held)?;
        }
        Ok(())
    }

    fn fault(&self, step: ApplyStep) {
        if let Some(f) = &self.fault {
            f(step);
        }
    }

    /// Makes `term` the highest seen, durably, before anything of it is applied.
    pub(crate) fn note_term(&mut self, term: u64) -> Result<(), StreamError> {
        if term > self.file.highest_term {
            self.file.highest_term = term;
            self.file.save(&self.meta_dir)?;
        }
        Ok(())
    }

    fn plan<'a>(&self, batches: &'a [DecodedBatch]) -> Result<Plan<'a>, String> {
        let mut plan = Plan {
            sources: self.file.sources.clone(),
            dbs: BTreeMap::new(),
            files: Vec::new(),
            journal: Vec::new(),
            last: batches.last().map_or(self.file.applied, |b| b.position),
        };
        for b in batches {
            for (name, records) in &b.mariadb {
                if self.mariadb.as_ref().is_none_or(|m| &m.name != name) {
                    return Err(format!(
                        "batch {} names the MariaDB database {name}, which this standby does not hold",
                        b.position
                    ));
                }
                for r in records {
                    let held = plan.sources.get(name).copied().unwrap_or_default();
                    match decide_transaction(held, r.epoch, r.seq) {
                        Decision::Skip => continue,
                        Decision::Resync(why) => return Err(format!("{name}: {why}")),
                        Decision::Apply => {}
                    }
                    plan.sources.insert(
                        name.clone(),
                        SourcePosition {
                            epoch: r.epoch,
                            seq: r.seq,
                            term: b.position.term,
                        },
                    );
                    plan.journal.push(r.clone());
                }
            }
            for (name, records) in &b.sources {
                let db = self.dbs.get(name);
                if db.is_none() && !self.dirs.contains(name) {
                    return Err(format!(
                        "batch {} names {name}, which this standby does not hold",
                        b.position
                    ));
                }
                for r in records {
                    let held = plan.sources.get(name).copied().unwrap_or_default();
                    match decide(held, r, db.is_some()) {
                        Decision::Skip => continue,
                        Decision::Resync(why) => return Err(format!("{name}: {why}")),
                        Decision::Apply => {}
                    }
                    plan.sources.insert(
                        name.clone(),
                        SourcePosition {
                            epoch: r.epoch(),
                            seq: r.seq(),
                            term: b.position.term,
                        },
                    );
                    match r {
                        Record::Commit(c) => {
                            let page_size = db.expect("checked").page_size;
                            if c.page_size != page_size {
                                return Err(format!(
                                    "{name}: seq {} has page size {}, the copy {page_size}",
                                    c.seq, c.page_size
                                ));
                            }
                            plan.dbs
                                .entry(name.clone())
                                .or_insert_with(DbTxn::new)
                                .add_commit(c);
                        }
                        Record::BaseImage(i) if i.reason == SnapshotReason::Requested => {}
                        Record::BaseImage(i) => {
                            let page_size = db.expect("checked").page_size;
                            let bytes = b.contents.get(&i.image_hash).ok_or_else(|| {
                                format!(
                                    "{name}: the base image at seq {} did not come with the batch",
                                    i.seq
                                )
                            })?;
                            if i.page_size != page_size
                                || bytes.len() as u64
                                    != u64::from(i.page_size) * u64::from(i.db_pages)
                            {
                                return Err(format!(
                                    "{name}: the base image at seq {} has page size {} ({} bytes), the copy page size {page_size}",
                                    i.seq,
                                    i.page_size,
                                    bytes.len()
                                ));
                            }
                            plan.dbs
                                .entry(name.clone())
                                .or_insert_with(DbTxn::new)
                                .set_image(bytes, page_size, i.db_pages);
                        }
                        Record::File(f) => {
                            let op = match &f.change {
                                FileChangeKind::Written { hash, .. } => {
                                    FileOp::Write(b.contents.get(hash).ok_or_else(|| {
                                        format!(
                                            "{name}/{}: its content did not come with the batch",
                                            f.path
                                        )
                                    })?)
                                }
                                FileChangeKind::Deleted => FileOp::Delete,
                            };
                            plan.files.push((name.as_str(), f.path.as_str(), op));
                        }
                    }
                }
            }
        }
        Ok(plan)
    }

    /// Applies a group (module doc for the order and what a crash leaves).
    pub(crate) fn apply(&mut self, batches: &[DecodedBatch]) -> Result<Outcome, StreamError> {
        let plan = match self.plan(batches) {
            Ok(p) => p,
            Err(why) => return Ok(Outcome::Resync(why)),
        };
        // An intent a crash left: the copy may hold anything up to it, so nothing short of
        // it may be committed on top (module doc).
        if let Some(intent) = &self.file.applying {
            let covered = intent.sources.iter().all(|(name, target)| {
                plan.sources.get(name).is_some_and(|p| p.seq >= target.seq)
                    || plan.dbs.get(name).is_some_and(|t| t.whole_image)
            });
            if !covered {
                return Ok(Outcome::Wait);
            }
        }
        let last = plan.last;
        if batches.len() > 1 {
            // Replaces a crash's intent, which this group covers.
            self.file.applying = Some(Applying {
                through: last,
                sources: plan.sources.clone(),
            });
            self.file.save(&self.meta_dir)?;
            self.fault(ApplyStep::IntentSaved);
        }
        let mut whole_images = Vec::new();
        for (name, txn) in plan.dbs {
            let db = self
                .dbs
                .get_mut(&name)
                .expect("planned for a known database");
            if txn.whole_image {
                whole_images.push(name.clone());
            }
            let (pages, db_pages) = txn.finish(db.page_size);
            let refs: Vec<(u32, &[u8])> = pages.iter().map(|(p, d)| (*p, d.as_ref())).collect();
            db.wal.append(db.page_size, &refs, db_pages)?;
        }
        self.fault(ApplyStep::DatabasesWritten);
        let mut touched = BTreeSet::new();
        for (dir, path, op) in &plan.files {
            let root = self.state_dir.join(dir);
            let done = match op {
                FileOp::Write(bytes) => files::write(&root, path, bytes, &mut touched),
                FileOp::Delete => files::delete(&root, path, &mut touched),
            };
            match done {
                Ok(()) => {}
                Err(FileError::Mismatch(why)) => {
                    return Ok(Outcome::Resync(format!("{dir}/{path}: {why}")));
                }
                Err(FileError::Io(e)) => return Err(e),
            }
        }
        files::sync_dirs(&touched)?;
        if let Some(m) = &self.mariadb {
            super::journal::append(&m.journal, &plan.journal)?;
        }
        self.fault(ApplyStep::FilesWritten);
        // Everything the group changed is durable: now it counts as applied.
        self.file.applied = last;
        self.file.sources = plan.sources;
        self.file.applying = None;
        self.file.save(&self.meta_dir)?;
        self.fault(ApplyStep::PositionSaved);
        // Keep the logs short (a whole image is copied back at once).
        for name in self.database_names.clone() {
            let big = self
                .dbs
                .get(&name)
                .is_some_and(|d| d.wal.len() > self.wal_checkpoint_bytes);
            if big || whole_images.contains(&name) {
                self.checkpoint_db(&name)?;
            }
        }
        self.fold_in_background_if_large()?;
        Ok(Outcome::Applied(last))
    }

    /// Starts folding the MariaDB journal in the background once it passed its size (one
    /// fold at a time); reports the error of one that finished.
    fn fold_in_background_if_large(&mut self) -> Result<(), StreamError> {
        if self.folding.as_ref().is_some_and(|f| f.is_finished()) {
            self.wait_for_fold()?;
        }
        let Some(m) = &self.mariadb else {
            return Ok(());
        };
        if self.folding.is_some() || super::journal::bytes(&m.journal) <= m.fold_bytes {
            return Ok(());
        }
        let held = self.file.sources.get(&m.name).map_or(0, |p| p.seq);
        let (spec, meta) = (m.spec.clone(), self.meta_dir.clone());
        self.folding = Some(
            std::thread::Builder::new()
                .name("mariadb-fold".into())
                .spawn(move || super::journal::fold(&spec, &meta, held))
                .map_err(|e| StreamError::Invalid(format!("could not start a fold: {e}")))?,
        );
        Ok(())
    }

    /// Waits for a background fold to end; its error, if it failed (the journal is kept).
    pub(crate) fn wait_for_fold(&mut self) -> Result<(), StreamError> {
        match self.folding.take() {
            Some(f) => f
                .join()
                .unwrap_or_else(|_| Err(StreamError::Invalid("the fold thread panicked".into())))
                .map(|_| ()),
            None => Ok(()),
        }
    }

    fn checkpoint_db(&mut self, name: &str) -> Result<(), StreamError> {
        let Some(db) = self.dbs.get_mut(name) else {
            return Ok(());
        };
        wal_writer::checkpoint(&db.path)?;
        db.wal = WalAppender::open(&db.path)?;
        Ok(())
    }

    /// Copies every log back into its database file (the copy is then plain database files)
    /// and lets a fold of the MariaDB journal in the background finish (what remains in the
    /// journal is applied by the next fold, or by the server of a promotion:
    /// [`super::apply_mariadb_journal`]).
    pub(crate) fn checkpoint_all(&mut self) -> Result<(), StreamError> {
        self.wait_for_fold()?;
        if !self.file.ready {
            return Ok(());
        }
        for name in self.database_names.clone() {
            self.checkpoint_db(&name)?;
        }
        Ok(())
    }

    /// Forgets the databases (before a restore replaces them); a fold in the background
    /// ends first (its server holds the data dir).
    pub(crate) fn close_copy(&mut self) {
        let _ = self.wait_for_fold();
        self.dbs.clear();
    }

    pub(crate) fn database_names(&self) -> &[String] {
        &self.database_names
    }

    pub(crate) fn dir_names(&self) -> Vec<String> {
        self.dirs.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests;
