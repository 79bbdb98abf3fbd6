//! Replacing a standby's copy with the latest state in the vault (`restore_site`, latest),
//! when it has nothing yet or the primary can no longer stream what it lacks.
//!
//! Order, so that a crash at any point is recovered by simply resyncing again:
//!
//! 1. `replica.state` says the copy is not ready (durable first: from here on the copy may be
//!    a mix of old and new, and must never be streamed to or promoted);
//! 2. the site is restored into a scratch directory inside the state dir (same file system,
//!    so the moves below are renames); the restore checks every database and file itself;
//! 3. each database's log and shared-memory files are removed (an old log must never be
//!    replayed onto the new file), then the restored database is renamed over the old one;
//!    each data dir is moved aside and the restored one renamed into place; the directories
//!    are fsynced;
//! 4. `replica.state` says the copy is ready, with the capture epoch and seq each source of
//!    the restored copy ends at: exactly where the stream continues for that source, so
//!    nothing is applied twice or skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat_vault::Repository;

use super::super::Position;
use super::super::error::StreamError;
use super::super::wire::SourcePosition;
use super::state::ReplicaFile;
use crate::restore::{RestoreTarget, restore_site, restore_site_with};

/// The scratch directory a restore builds in, inside the state dir.
pub(crate) const RESTORE_DIR: &str = ".lifeboat-replica-restore";

fn sync_dir(dir: &Path) -> Result<(), StreamError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StreamError::io("fsync", dir))
}

fn remove_if_present(path: &Path) -> Result<(), StreamError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            std::fs::remove_dir_all(path).map_err(StreamError::io("remove", path))
        }
        Ok(_) => std::fs::remove_file(path).map_err(StreamError::io("remove", path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StreamError::io("inspect", path)(e)),
    }
}

/// Restores the copy from the vault (module doc). `file` is updated and saved.
pub(crate) async fn resync(
    repo: &Arc<Repository>,
    state_dir: &Path,
    meta_dir: &Path,
    file: &mut ReplicaFile,
    databases: &[String],
    dirs: &[String],
    mariadb: Option<&super::ReplicaMariaDb>,
) -> Result<(), StreamError> {
    file.ready = false;
    file.applying = None;
    file.save(meta_dir)?;
    // What was received for the old copy means nothing for the restored one.
    super::journal::clear(&super::journal::dir(meta_dir))?;
    std::fs::create_dir_all(state_dir).map_err(StreamError::io("create", state_dir))?;
    let scratch = state_dir.join(RESTORE_DIR);
    remove_if_present(&scratch)?;
    std::fs::create_dir(&scratch).map_err(StreamError::io("create", &scratch))?;
    let into = scratch.join("site");
    let mut sources_mariadb = None;
    let report = match mariadb {
        Some(m) => restore_site_with(repo, RestoreTarget::Latest, &into, m.restore.clone()).await?,
        None => restore_site(repo, RestoreTarget::Latest, &into).await?,
    };
    let mut moved_dirs = dirs.to_vec();
    if let Some(m) = mariadb {
        let restored = report
            .mariadb
            .as_ref()
            .filter(|r| r.name == m.name)
            .ok_or_else(|| StreamError::ResyncNeeded {
                reason: format!(
                    "the vault's latest checkpoint has no MariaDB database {}; wait for the primary's next checkpoint",
                    m.name
                ),
            })?;
        let pos = restored.gtid_pos.parse().map_err(|e| {
            StreamError::Invalid(format!(
                "the restore reported the GTID position {:?}: {e}",
                restored.gtid_pos
            ))
        })?;
        super::journal::save_copy_position(meta_dir, &pos)?;
        sources_mariadb = Some((
            m.name.clone(),
            SourcePosition {
                epoch: restored.capture_epoch,
                seq: restored.capture_seq,
                term: 0,
            },
        ));
        moved_dirs.push(m.name.clone());
    }
    let mut sources = BTreeMap::new();
    for name in databases {
        let db = report
            .databases
            .iter()
            .find(|d| &d.name == name)
            .ok_or_else(|| StreamError::ResyncNeeded {
                reason: format!(
                    "the vault's latest checkpoint has no database {name}; wait for the primary's next checkpoint"
                ),
            })?;
        sources.insert(
            name.clone(),
            SourcePosition {
                epoch: db.capture_epoch,
                seq: db.capture_seq,
                term: 0,
            },
        );
    }
    for name in dirs {
        let dir = report
            .dirs
            .iter()
            .find(|d| &d.name == name)
            .ok_or_else(|| StreamError::ResyncNeeded {
                reason: format!(
                    "the vault's latest checkpoint has no data dir {name}; wait for the primary's next checkpoint"
                ),
            })?;
        sources.insert(
            name.clone(),
            SourcePosition {
                epoch: dir.epoch,
                seq: dir.seq,
                term: 0,
            },
        );
    }
    sources.extend(sources_mariadb);
    let (state, into2, databases2, dirs2) = (
        state_dir.to_path_buf(),
        into.clone(),
        databases.to_vec(),
        moved_dirs,
    );
    tokio::task::spawn_blocking(move || swap_in(&state, &into2, &databases2, &dirs2))
        .await
        .map_err(|_| StreamError::Stopped)??;
    remove_if_present(&scratch)?;
    sync_dir(state_dir)?;
    file.ready = true;
    file.applied = Position::default();
    file.sources = sources;
    file.save(meta_dir)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Step 3 of the module doc.
fn swap_in(
    state_dir: &Path,
    restored: &Path,
    databases: &[String],
    dirs: &[String],
) -> Result<(), StreamError> {
    let mut parents = std::collections::BTreeSet::new();
    for name in databases {
        let target = state_dir.join(name);
        let parent = target.parent().expect("below the state dir").to_path_buf();
        std::fs::create_dir_all(&parent).map_err(StreamError::io("create", &parent))?;
        // The old log first: replayed onto the new file it would corrupt it.
        remove_if_present(&with_suffix(&target, "-wal"))?;
        remove_if_present(&with_suffix(&target, "-shm"))?;
        sync_dir(&parent)?;
        let from = restored.join(name);
        std::fs::rename(&from, &target)
            .map_err(StreamError::io("move the restored database to", &target))?;
        parents.insert(parent);
    }
    for name in dirs {
        let target = state_dir.join(name);
        let parent = target.parent().expect("below the state dir").to_path_buf();
        std::fs::create_dir_all(&parent).map_err(StreamError::io("create", &parent))?;
        let aside = restored.join(".old");
        remove_if_present(&aside)?;
        if std::fs::symlink_metadata(&target).is_ok() {
            std::fs::rename(&target, &aside).map_err(StreamError::io("move aside", &target))?;
        }
        let from = restored.join(name);
        if from.is_dir() {
            std::fs::rename(&from, &target)
                .map_err(StreamError::io("move the restored data dir to", &target))?;
        } else {
            std::fs::create_dir_all(&target).map_err(StreamError::io("create", &target))?;
        }
        remove_if_present(&aside)?;
        parents.insert(parent);
    }
    for p in parents.iter().rev() {
        sync_dir(p)?;
    }
    Ok(())
}
