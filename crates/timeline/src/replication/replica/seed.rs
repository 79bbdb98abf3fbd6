//! After a promotion: the capture state a timeline worker started on the standby's copy
//! needs to continue every capture sequence exactly where the copy ends, instead of taking a
//! first capture (which would make every other standby restore from the vault).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use lifeboat_capture::files::{FileEntry, FileManifest, MANIFEST_FORMAT_VERSION, hash_file};
use lifeboat_capture::position::{self, POSITION_FORMAT_VERSION, SavedPosition};

use super::super::error::StreamError;
use super::state::ReplicaFile;
use super::wal_writer::db_page_size;
use super::{ReplicaConfig, rel_name};

fn nanos(secs: i64, nsec: i64) -> i128 {
    i128::from(secs) * 1_000_000_000 + i128::from(nsec)
}

/// After [`super::Replica::stop`], on a promoted standby of a MariaDB site: applies the
/// transactions still in the journal through the node's server, just started on the copy
/// (`spec`), so that its capture can be seeded ([`seed_capture_state`]) and the site served.
/// Returns how many were applied.
pub fn apply_mariadb_journal(
    config: &ReplicaConfig,
    spec: &lifeboat_mariadb::ServerSpec,
) -> Result<usize, StreamError> {
    let Some(m) = &config.mariadb else {
        return Ok(0);
    };
    let file = ReplicaFile::load(&config.meta_dir)?.ok_or_else(|| {
        StreamError::Invalid(format!(
            "{} has no replica state; nothing to apply",
            config.meta_dir.display()
        ))
    })?;
    let held = file.sources.get(&m.name).map_or(0, |p| p.seq);
    super::journal::apply_running(spec, &config.meta_dir, held)
}

/// Writes the capture state (`db-<i>/position.json`, `dir-<i>.json`, in the order of
/// `config.databases` and `config.data_dirs`, which must be the worker's) into
/// `capture_state_dir`, replacing what is there, so that a worker started on the copy
/// continues each source after the last record the copy applied. Call it after
/// [`super::Replica::stop`] (every database is then a plain file with no log) and before
/// the app writes to the copy. Hashes every file of the data dirs once.
pub fn seed_capture_state(
    config: &ReplicaConfig,
    capture_state_dir: &Path,
) -> Result<(), StreamError> {
    let file = ReplicaFile::load(&config.meta_dir)?.ok_or_else(|| {
        StreamError::Invalid(format!(
            "{} has no replica state; nothing to continue from",
            config.meta_dir.display()
        ))
    })?;
    if !file.ready || file.applying.is_some() {
        return Err(StreamError::Invalid(
            "the copy is not a whole state (a restore or a group was interrupted); start the replica again until it is, or restore the site from the vault"
                .into(),
        ));
    }
    let capture_err = |what: String| {
        move |e: lifeboat_capture::CaptureError| StreamError::Io {
            action: "write the capture state of",
            path: what.into(),
            source: std::io::Error::other(e.to_string()),
        }
    };
    for (i, db) in config.databases.iter().enumerate() {
        let name = rel_name(db);
        let src = file.sources.get(&name).copied().unwrap_or_default();
        let path = config.state_dir.join(&name);
        let page_size = db_page_size(&path)?;
        let len = std::fs::metadata(&path)
            .map_err(StreamError::io("stat", &path))?
            .len();
        let dir = capture_state_dir.join(format!("db-{i}"));
        std::fs::create_dir_all(&dir).map_err(StreamError::io("create", &dir))?;
        let saved = SavedPosition {
            version: POSITION_FORMAT_VERSION,
            epoch: src.epoch,
            seq: src.seq,
            // No log: capture continues from the database file as it is.
            wal: None,
            page_size,
            db_pages: (len / u64::from(page_size)) as u32,
        };
        position::save(&dir.join("position.json"), &saved).map_err(capture_err(name))?;
    }
    if let Some(m) = &config.mariadb {
        // The journal was applied when the replica stopped: the data dir holds exactly the
        // transactions up to the source's seq, at this position.
        let src = file.sources.get(&m.name).copied().unwrap_or_default();
        let pending = super::journal::read(&super::journal::dir(&config.meta_dir), src.seq)?;
        if !pending.is_empty() {
            return Err(StreamError::Invalid(format!(
                "{} received MariaDB transactions are not applied to the copy yet; apply them (apply_mariadb_journal) before seeding capture",
                pending.len()
            )));
        }
        let gtid_pos = super::journal::copy_position(&config.meta_dir)?;
        let saved = lifeboat_mariadb::SavedPosition {
            version: lifeboat_mariadb::POSITION_FORMAT_VERSION,
            epoch: src.epoch,
            seq: src.seq,
            gtid_pos,
        };
        lifeboat_mariadb::save_position(&capture_state_dir.join("mariadb-0"), &saved).map_err(
            |e| StreamError::Io {
                action: "write the capture state of",
                path: m.name.clone().into(),
                source: std::io::Error::other(e.to_string()),
            },
        )?;
    }
    for (i, d) in config.data_dirs.iter().enumerate() {
        let name = rel_name(d);
        let src = file.sources.get(&name).copied().unwrap_or_default();
        let root = config.state_dir.join(&name);
        let mut files = BTreeMap::new();
        walk(&root, "", &mut files)?;
        let manifest = FileManifest {
            version: MANIFEST_FORMAT_VERSION,
            epoch: src.epoch,
            last_seq: src.seq,
            files,
        };
        std::fs::create_dir_all(capture_state_dir)
            .map_err(StreamError::io("create", capture_state_dir))?;
        manifest
            .save(&capture_state_dir.join(format!("dir-{i}.json")))
            .map_err(capture_err(name))?;
    }
    Ok(())
}

/// Every regular file under `dir` with what capture's manifest records of it.
fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, FileEntry>) -> Result<(), StreamError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StreamError::io("list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(StreamError::io("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let child = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let meta = std::fs::symlink_metadata(entry.path())
            .map_err(StreamError::io("stat", entry.path()))?;
        if meta.is_dir() {
            walk(&entry.path(), &child, out)?;
        } else if meta.is_file() {
            let hash = hash_file(&entry.path()).map_err(StreamError::io("hash", entry.path()))?;
            out.insert(
                child,
                FileEntry {
                    size: meta.size(),
                    mtime_ns: nanos(meta.mtime(), meta.mtime_nsec()),
                    ctime_ns: nanos(meta.ctime(), meta.ctime_nsec()),
                    inode: meta.ino(),
                    hash,
                },
            );
        }
    }
    Ok(())
}
