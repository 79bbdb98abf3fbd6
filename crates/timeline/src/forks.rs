//! Forks: a node's own copy of the site's state that the current timeline does not continue.
//!
//! When a node that was primary (or ran alone) joins another primary as a standby, what it
//! holds may include commits the new primary never received (in `async` durability, the
//! writes it acknowledged after it was cut off). The node moves that state aside and stores
//! it here: a vault snapshot tagged [`FORK_TAG`] and `fork:NAME`, whose tree is the site's
//! layout (the declared databases with their WAL, the data dirs, the manifest) plus
//! `.lifeboat-timeline/fork.json` describing it. `lifeboat timeline` lists forks from any
//! machine that can read the vault, and `lifeboat restore-site --fork NAME` rebuilds one
//! into a new directory, databases checked, so nobody loses what only that node had.
//!
//! Forks are never forgotten by timeline retention (it forgets checkpoints and what only
//! they need); `lifeboat vault forget` drops one on purpose.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat_vault::{BackupOptions, NoProgress, Repository, RestoreOptions, SnapshotEntry};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::checkpoint::META_DIR;
use crate::error::{Result, TimelineError, io_err};
use crate::restore::{make_staging, sync_dir, sync_tree};

/// Tag of fork snapshots.
pub const FORK_TAG: &str = "timeline-fork";
/// Tag prefix naming the fork: `fork:<name>`.
pub const FORK_NAME_TAG_PREFIX: &str = "fork:";
const FORK_FILE: &str = "fork.json";
const FORK_VERSION: u32 = 1;

/// What a fork is: stored inside it as `.lifeboat-timeline/fork.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkDescription {
    /// Format version of this description.
    pub version: u32,
    /// The fork's name (also the name of the state the node kept aside locally).
    pub name: String,
    /// The node whose state it is.
    pub node: String,
    /// The term in which the node joined another primary and set this state aside.
    pub term: u64,
    /// When it was set aside.
    #[serde(with = "time::serde::rfc3339")]
    pub kept_at: OffsetDateTime,
    /// Why, in words.
    pub why: String,
    /// The SQLite databases in it, relative to the site dir.
    pub databases: Vec<String>,
    /// The data dirs in it, relative to the site dir.
    pub dirs: Vec<String>,
}

impl ForkDescription {
    /// A description of the current version.
    pub fn new(name: &str, node: &str, term: u64, kept_at: OffsetDateTime, why: &str) -> Self {
        ForkDescription {
            version: FORK_VERSION,
            name: name.to_string(),
            node: node.to_string(),
            term,
            kept_at,
            why: why.to_string(),
            databases: Vec::new(),
            dirs: Vec::new(),
        }
    }
}

/// A fork stored in the vault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkInfo {
    /// What it is.
    #[serde(flatten)]
    pub description: ForkDescription,
    /// Its vault snapshot (hex).
    pub snapshot: String,
}

/// What [`restore_fork`] produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkRestoreReport {
    /// The fork restored.
    pub fork: ForkInfo,
    /// Databases restored, each with its WAL folded in and `PRAGMA integrity_check` passed.
    pub databases: Vec<String>,
    /// Files written.
    pub files: u64,
    /// Their bytes.
    pub file_bytes: u64,
}

/// Stores the state kept aside in `dir` (the site's layout) as fork `description.name`,
/// with the manifest (`manifest`: its name in the site dir and its bytes) beside it. Writes
/// `.lifeboat-timeline/fork.json` and the manifest into `dir` first. Idempotent: a fork of
/// that name already in the vault is returned as it is.
pub async fn store_fork(
    repo: &Arc<Repository>,
    dir: &Path,
    description: &ForkDescription,
    manifest: Option<(&str, &[u8])>,
) -> Result<ForkInfo> {
    valid_name(&description.name)?;
    if let Some(existing) = find(repo, &description.name).await? {
        return Ok(existing);
    }
    let meta_dir = dir.join(META_DIR);
    std::fs::create_dir_all(&meta_dir).map_err(io_err("create", &meta_dir))?;
    let meta = meta_dir.join(FORK_FILE);
    let bytes = serde_json::to_vec_pretty(description).expect("plain data serialises");
    std::fs::write(&meta, bytes).map_err(io_err("write", &meta))?;
    if let Some((name, bytes)) = manifest {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(&path, bytes).map_err(io_err("write", &path))?;
        }
    }
    let opts = BackupOptions {
        tags: vec![
            FORK_TAG.to_string(),
            format!("{FORK_NAME_TAG_PREFIX}{}", description.name),
        ],
        host: Some(description.node.clone()),
        ..Default::default()
    };
    let entry = repo.backup(&[dir], &opts, Arc::new(NoProgress)).await?;
    Ok(ForkInfo {
        description: description.clone(),
        snapshot: entry.id.to_hex(),
    })
}

/// Every fork in the vault, oldest first.
pub async fn list_forks(repo: &Repository) -> Result<Vec<ForkInfo>> {
    let entries: Vec<SnapshotEntry> = repo
        .snapshots()
        .await?
        .into_iter()
        .filter(|e| e.snapshot.tags.iter().any(|t| t == FORK_TAG))
        .collect();
    if !entries.is_empty() {
        // Another node stored them: its packs are not in the index this one loaded.
        repo.reload_index().await?;
    }
    let mut out = Vec::new();
    for entry in &entries {
        out.push(read_description(repo, entry).await?);
    }
    out.sort_by(|a, b| {
        (a.description.kept_at, &a.description.name)
            .cmp(&(b.description.kept_at, &b.description.name))
    });
    Ok(out)
}

/// Restores fork `name` into `into` (which must not exist or be empty): the site's layout as
/// the node held it, each database with its WAL folded in and checked. Built in a staging
/// directory beside `into` and renamed into place once whole and fsynced.
pub async fn restore_fork(
    repo: &Arc<Repository>,
    name: &str,
    into: &Path,
) -> Result<ForkRestoreReport> {
    if let Ok(mut entries) = std::fs::read_dir(into)
        && entries.next().is_some()
    {
        return Err(TimelineError::NotEmpty(into.to_path_buf()));
    }
    repo.reload_index().await?;
    let Some(fork) = find(repo, name).await? else {
        let known: Vec<String> = list_forks(repo)
            .await?
            .into_iter()
            .map(|f| f.description.name)
            .collect();
        return Err(TimelineError::Invalid(if known.is_empty() {
            format!("the vault holds no fork named {name:?} (it holds none at all)")
        } else {
            format!(
                "the vault holds no fork named {name:?}; `lifeboat timeline` lists them: {}",
                known.join(", ")
            )
        }));
    };
    let id = lifeboat_vault::Id::from_hex(&fork.snapshot).map_err(|_| TimelineError::Damaged {
        what: format!("fork {name}"),
        why: "its snapshot id is not hex".into(),
    })?;
    let entry = repo
        .snapshots()
        .await?
        .into_iter()
        .find(|e| e.id == id)
        .ok_or_else(|| TimelineError::Damaged {
            what: format!("fork {name}"),
            why: "its snapshot disappeared while it was read".into(),
        })?;
    let (parent, staging) = make_staging(into)?;
    let built = build(repo, &entry, &fork.description, &staging).await;
    let (files, file_bytes) = match built {
        Ok(b) => b,
        Err(e) => {
            // Only this restore ever wrote under the staging directory (it made it).
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if into.exists() {
        std::fs::remove_dir(into).map_err(io_err("replace the empty directory", into))?;
    }
    std::fs::rename(&staging, into).map_err(io_err("move the restored fork to", into))?;
    sync_dir(&parent)?;
    Ok(ForkRestoreReport {
        databases: fork.description.databases.clone(),
        fork,
        files,
        file_bytes,
    })
}

async fn build(
    repo: &Arc<Repository>,
    entry: &SnapshotEntry,
    description: &ForkDescription,
    staging: &Path,
) -> Result<(u64, u64)> {
    let summary = repo
        .restore(
            entry.snapshot.tree,
            staging,
            &RestoreOptions::default(),
            Arc::new(NoProgress),
        )
        .await?;
    let meta = staging.join(META_DIR);
    std::fs::remove_dir_all(&meta).map_err(io_err("remove", &meta))?;
    for db in &description.databases {
        let path = inside(staging, db)?;
        if !path.exists() {
            continue;
        }
        fold_wal(&path)?;
    }
    sync_tree(staging)?;
    Ok((
        summary.files_written + summary.files_reused,
        summary.bytes_written,
    ))
}

/// Applies the database's WAL to it (SQLite recovers it on open) and checks it, so the copy
/// is one self-contained file.
fn fold_wal(path: &Path) -> Result<()> {
    let fail = |report: String| TimelineError::IntegrityCheckFailed {
        path: path.to_path_buf(),
        report,
    };
    {
        let conn = rusqlite::Connection::open(path).map_err(|e| fail(e.to_string()))?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| fail(e.to_string()))?;
    }
    lifeboat_capture::replay::integrity_check(path).map_err(|e| fail(e.to_string()))
}

/// `root/rel` for a relative path recorded in a fork (untrusted: plain names only).
fn inside(root: &Path, rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    if rel.is_empty()
        || !p
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        return Err(TimelineError::Damaged {
            what: "fork".into(),
            why: format!("database path {rel:?} is not a plain relative path"),
        });
    }
    let path = root.join(p);
    // The vault's restore never writes through a link, but the check reads: refuse links.
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(TimelineError::Damaged {
            what: "fork".into(),
            why: format!("database {rel} is a link"),
        });
    }
    Ok(path)
}

async fn find(repo: &Repository, name: &str) -> Result<Option<ForkInfo>> {
    let tag = format!("{FORK_NAME_TAG_PREFIX}{name}");
    for entry in repo.snapshots().await? {
        let tags = &entry.snapshot.tags;
        if tags.iter().any(|t| t == FORK_TAG) && tags.contains(&tag) {
            repo.reload_index().await?;
            return Ok(Some(read_description(repo, &entry).await?));
        }
    }
    Ok(None)
}

async fn read_description(repo: &Repository, entry: &SnapshotEntry) -> Result<ForkInfo> {
    let damaged = |why: &str| TimelineError::Damaged {
        what: format!("fork snapshot {}", entry.id.to_hex()),
        why: why.to_string(),
    };
    let bytes = crate::checkpoint::read_meta_file(repo, entry, FORK_FILE, "fork snapshot").await?;
    let description: ForkDescription =
        serde_json::from_slice(&bytes).map_err(|e| damaged(&format!("bad fork.json: {e}")))?;
    if description.version != FORK_VERSION {
        return Err(damaged(&format!(
            "fork.json version {} is unknown; upgrade lifeboat",
            description.version
        )));
    }
    Ok(ForkInfo {
        description,
        snapshot: entry.id.to_hex(),
    })
}

fn valid_name(name: &str) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with('.')
    {
        return Err(TimelineError::Invalid(format!(
            "{name:?} is not a usable fork name (letters, digits, '-', '_', '.')"
        )));
    }
    Ok(())
}
