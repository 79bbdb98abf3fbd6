//! The worker's side of the change feed: what capture reads is staged here as it is read
//! (commit pages as they are, file contents and base images read from disk), and published
//! as one batch per poll.
//!
//! A file is read here right after capture recorded it; if it changed again in between,
//! the batch says what was read (its size and blake3), or that it is gone, so every record
//! streamed names the bytes streamed with it. Capture's next poll records the change anyway.
//! The same happens, independently, when the file is shipped to the vault.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use lifeboat_capture::files::FileManifest;
use lifeboat_capture::position::{self, POSITION_FORMAT_VERSION, SavedPosition};
use lifeboat_capture::{CaptureEvent, FileChange, FileChangeKind, Record, SnapshotReason};

use super::feed::FeedInner;
use crate::error::{Result, TimelineError};

/// Records read since the last batch, waiting to be published.
pub(crate) struct FeedStage {
    pub feed: Arc<FeedInner>,
    records: BTreeMap<String, Vec<Record>>,
    mariadb: super::batch::MariaDbRecords,
    contents: BTreeMap<String, Vec<u8>>,
    bytes: u64,
    too_large: Option<String>,
}

enum Read2 {
    Bytes(Vec<u8>),
    Gone,
    TooLarge,
}

/// Reads a file of at most `max` bytes.
fn read_bounded(path: &Path, max: u64) -> std::io::Result<Read2> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Read2::Gone),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Ok(Read2::TooLarge);
    }
    Ok(Read2::Bytes(bytes))
}

impl FeedStage {
    pub(crate) fn new(feed: Arc<FeedInner>) -> FeedStage {
        FeedStage {
            feed,
            records: BTreeMap::new(),
            mariadb: BTreeMap::new(),
            contents: BTreeMap::new(),
            bytes: 0,
            too_large: None,
        }
    }

    fn room(&self) -> u64 {
        self.feed.options.max_batch_bytes.saturating_sub(self.bytes)
    }

    fn mark_too_large(&mut self, why: String) {
        self.too_large.get_or_insert(why);
    }

    /// Stages what a database's capture handed out. A base image taken on request changes
    /// nothing a standby holds, so only its record travels; any other image travels whole.
    pub(crate) fn stage_db(&mut self, name: &str, events: &[CaptureEvent]) {
        for e in events {
            match e {
                CaptureEvent::Commit(c) => {
                    self.bytes += c.pages.len() as u64 * u64::from(c.page_size);
                    self.records
                        .entry(name.to_string())
                        .or_default()
                        .push(Record::Commit(c.clone()));
                }
                CaptureEvent::BaseImage(b) => {
                    if b.record.reason != SnapshotReason::Requested {
                        let size = u64::from(b.record.page_size) * u64::from(b.record.db_pages);
                        if size > self.room() {
                            self.mark_too_large(format!(
                                "a base image of {name} ({size} bytes) is larger than a batch may be"
                            ));
                        } else {
                            match std::fs::read(&b.path) {
                                Ok(bytes)
                                    if blake3::hash(&bytes).to_hex().as_str()
                                        == b.record.image_hash =>
                                {
                                    self.bytes += bytes.len() as u64;
                                    self.contents.insert(b.record.image_hash.clone(), bytes);
                                }
                                Ok(_) => self.mark_too_large(format!(
                                    "the base image of {name} changed before it could be streamed"
                                )),
                                Err(e) => self.mark_too_large(format!(
                                    "the base image of {name} could not be read for the stream: {e}"
                                )),
                            }
                        }
                    }
                    self.records
                        .entry(name.to_string())
                        .or_default()
                        .push(Record::BaseImage(b.record.clone()));
                }
            }
        }
    }

    /// Stages what a data dir's capture handed out, reading each written file.
    pub(crate) fn stage_dir(&mut self, name: &str, root: &Path, changes: &[FileChange]) {
        for c in changes {
            let mut c = c.clone();
            if let FileChangeKind::Written { size, .. } = c.change {
                if size > self.room() {
                    self.mark_too_large(format!(
                        "{name}/{} ({size} bytes) is larger than a batch may be",
                        c.path
                    ));
                } else {
                    match read_bounded(&root.join(&c.path), self.room()) {
                        Ok(Read2::Bytes(bytes)) => {
                            let hash = blake3::hash(&bytes).to_hex().to_string();
                            c.change = FileChangeKind::Written {
                                size: bytes.len() as u64,
                                hash: hash.clone(),
                            };
                            self.bytes += bytes.len() as u64;
                            self.contents.insert(hash, bytes);
                        }
                        Ok(Read2::Gone) => c.change = FileChangeKind::Deleted,
                        Ok(Read2::TooLarge) => self.mark_too_large(format!(
                            "{name}/{} grew larger than a batch may be",
                            c.path
                        )),
                        Err(e) => self.mark_too_large(format!(
                            "{name}/{} could not be read for the stream: {e}",
                            c.path
                        )),
                    }
                }
            }
            self.records
                .entry(name.to_string())
                .or_default()
                .push(Record::File(c));
        }
    }

    /// Stages what a MariaDB capture handed out (each transaction's events travel whole).
    pub(crate) fn stage_mariadb(
        &mut self,
        name: &str,
        records: &[lifeboat_mariadb::TransactionRecord],
    ) {
        for r in records {
            self.bytes += r.events.len() as u64;
        }
        self.mariadb
            .entry(name.to_string())
            .or_default()
            .extend(records.iter().cloned());
    }

    /// Publishes what is staged as one batch.
    pub(crate) fn publish(&mut self) {
        if self.records.is_empty() && self.mariadb.is_empty() {
            return;
        }
        let records = std::mem::take(&mut self.records);
        let mariadb = std::mem::take(&mut self.mariadb);
        let contents = std::mem::take(&mut self.contents);
        let too_large = self.too_large.take();
        self.bytes = 0;
        self.feed.publish(records, mariadb, contents, too_large);
    }
}

/// The smallest capture epoch a primary of `term` uses: its term in the high 32 bits and the
/// wall-clock second in the low ones. Capture numbers its sessions per state dir; with this
/// floor a record's (epoch, seq) also names one primary's session across every node and
/// state dir (terms only grow, and sessions of one term start at distinct seconds), which
/// is what lets a standby tell a continuation from another history.
pub(crate) fn epoch_floor(term: u64) -> u64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    term.saturating_mul(1 << 32)
        .saturating_add(secs & 0xffff_ffff)
}

/// Raises the session numbers saved in the capture state dir to at least `floor - 1`
/// before the captures open (each opens its session as the saved number plus one). Only
/// the number changes: positions and manifests stay, so capture continues as it would.
pub(crate) fn raise_epochs(
    state_dir: &Path,
    dbs: usize,
    dirs: usize,
    mariadb: bool,
    floor: u64,
) -> Result<()> {
    let at_least = floor.saturating_sub(1);
    let capture_err = |what: String| {
        move |error| TimelineError::Capture {
            what,
            error: Box::new(error),
        }
    };
    for i in 0..dbs {
        let dir = state_dir.join(format!("db-{i}"));
        std::fs::create_dir_all(&dir).map_err(crate::error::io_err("create", &dir))?;
        let path = dir.join("position.json");
        let saved = position::load(&path).map_err(capture_err(format!("database {i}")))?;
        let raised = match saved {
            Some(s) if s.epoch >= at_least => continue,
            Some(s) => SavedPosition {
                epoch: at_least,
                ..s
            },
            None => SavedPosition {
                version: POSITION_FORMAT_VERSION,
                epoch: at_least,
                seq: 0,
                wal: None,
                page_size: 0,
                db_pages: 0,
            },
        };
        position::save(&path, &raised).map_err(capture_err(format!("database {i}")))?;
    }
    for i in 0..dirs {
        let path = state_dir.join(format!("dir-{i}.json"));
        let mut manifest = FileManifest::load(&path)
            .map_err(capture_err(format!("data dir {i}")))?
            .unwrap_or(FileManifest {
                version: lifeboat_capture::files::MANIFEST_FORMAT_VERSION,
                ..Default::default()
            });
        if manifest.epoch >= at_least {
            continue;
        }
        manifest.epoch = at_least;
        manifest
            .save(&path)
            .map_err(capture_err(format!("data dir {i}")))?;
    }
    if mariadb {
        // Without a saved position capture starts at the server's first binlog position,
        // which only the server knows; that first session keeps its small number.
        let dir = state_dir.join("mariadb-0");
        let err = |error| TimelineError::MariaDb {
            what: "the MariaDB capture state".into(),
            error: Box::new(error),
        };
        if let Some(saved) = lifeboat_mariadb::load_position(&dir).map_err(err)?
            && saved.epoch < at_least
        {
            let raised = lifeboat_mariadb::SavedPosition {
                epoch: at_least,
                ..saved
            };
            lifeboat_mariadb::save_position(&dir, &raised).map_err(err)?;
        }
    }
    Ok(())
}
