//! Restoring a site as of a moment, and listing the moments that can be restored.
//!
//! One consistent cut: the newest checkpoint at or before T, then the segments after it
//! up to T. Each database is rebuilt with capture's replay as of its last transaction
//! seen at or before T; each data dir holds its files as of T; the manifest is the one of
//! the checkpoint. Everything is built in a staging directory beside the destination,
//! fsynced, checked (`PRAGMA integrity_check`, content hashes), and only then renamed into
//! place, so a crash leaves either nothing or the whole restored site (a failed restore
//! removes its staging directory).
//!
//! What a restore reads from the vault is untrusted (a checkpoint may have been written by
//! whoever held the site's key): nothing is read, written or removed through a link
//! ([`beneath`]), a data dir of the checkpoint that holds a link is refused (capture never
//! records one), and the vault's restore of the checkpoint decides owners and set-id bits
//! (never a set-id file of the restoring user that the snapshot did not record as its).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use lifeboat_capture::record::{Sequenced, resolve_history};
use lifeboat_capture::replay::{RebuildTarget, integrity_check, rebuild};
use lifeboat_capture::{BaseImageRecord, Record};
use lifeboat_vault::{NoProgress, Repository, RestoreOptions, SnapshotEntry};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::checkpoint::{self, CheckpointMeta, apply_file_changes};
use crate::error::{Result, TimelineError, io_err};
use crate::segment::ContentMap;
use crate::store::fetch;
use crate::stream;
use crate::types::CheckpointInfo;

/// Which moment to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreTarget {
    /// As of this time: every transaction and file change seen at or before it.
    Time(OffsetDateTime),
    /// Everything stored.
    Latest,
}

/// One database as restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredDatabase {
    /// Path relative to the site dir.
    pub name: String,
    /// Capture seq of its last transaction included.
    pub capture_seq: u64,
    /// Capture session (epoch) of that record: with `capture_seq`, where a stream to a
    /// standby holding this copy continues.
    #[serde(default)]
    pub capture_epoch: u64,
    /// Transactions replayed on top of its base image.
    pub commits_applied: usize,
}

/// One data dir as restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredDir {
    /// Path relative to the site dir.
    pub name: String,
    /// The file capture's seq of the last change included.
    pub seq: u64,
    /// Its capture session (epoch): the record's own when a change after the checkpoint
    /// was included, else the session that took the checkpoint (0 for a checkpoint written
    /// before this was recorded).
    pub epoch: u64,
}

/// What [`restore_site`] produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReport {
    /// The moment restored (the target time, or the last segment's cut for `Latest`).
    #[serde(with = "time::serde::rfc3339")]
    pub restored_time: OffsetDateTime,
    /// The checkpoint started from.
    pub checkpoint: CheckpointInfo,
    /// The last timeline segment read.
    pub last_segment_seq: u64,
    /// Every database restored (each passed `PRAGMA integrity_check`).
    pub databases: Vec<RestoredDatabase>,
    /// Every data dir restored, with where its capture sequence ends.
    #[serde(default)]
    pub dirs: Vec<RestoredDir>,
    /// Data-dir files restored (each verified against its blake3).
    pub files: u64,
    /// Their bytes.
    pub file_bytes: u64,
    /// Whether the manifest was restored.
    pub manifest: bool,
    /// The MariaDB database, when the site has one.
    #[serde(default)]
    pub mariadb: Option<RestoredMariaDb>,
    /// How long each step took, in order (milliseconds): where a restore's time goes.
    #[serde(default)]
    pub phases_ms: Vec<(String, u64)>,
}

/// The MariaDB database as restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredMariaDb {
    /// Its data dir, relative to the site dir.
    pub name: String,
    /// The GTID position of the checkpoint's base backup.
    pub base_gtid_pos: String,
    /// The GTID position it holds now.
    pub gtid_pos: String,
    /// Transactions replayed on top of the base.
    pub transactions_replayed: usize,
    /// Tables that passed `CHECK TABLE`.
    pub tables_checked: usize,
    /// How long each step of its restore took (milliseconds).
    #[serde(default)]
    pub phases_ms: Vec<(String, u64)>,
    /// The capture seq of the last transaction it holds, and that record's capture session:
    /// where a stream to a standby holding this copy continues.
    #[serde(default)]
    pub capture_seq: u64,
    /// The capture session of that record.
    #[serde(default)]
    pub capture_epoch: u64,
}

/// How a restore rebuilds the site's MariaDB database ([`restore_site_with`]).
#[derive(Debug, Clone)]
pub struct MariaDbRestoreOptions {
    /// Where the restore's own server keeps its socket, pid and error log while it replays
    /// and checks (a short path: a socket's is at most 107 bytes). Made if missing.
    pub run_dir: PathBuf,
    /// Where the restored server's config (with its new admin password, mode 0600) is
    /// written. `None`: `.lifeboat/mariadb/site/` inside the restored copy, where `lifeboat
    /// up` on it looks.
    pub config_dir: Option<PathBuf>,
    /// The restored server's admin password (never taken from the timeline).
    pub admin_password: String,
    /// The app's login to set on the restored server (database, user, password). `None`:
    /// the users as they were at the restore point (`lifeboat up` on the copy gives the
    /// app's user a new password at its first start).
    pub app: Option<(String, String, String)>,
}

impl MariaDbRestoreOptions {
    /// A new random admin password, a run dir in the system's temporary directory, the
    /// config inside the restored copy, the users as they were.
    pub fn fresh() -> MariaDbRestoreOptions {
        let id = hex::encode(rand::random::<[u8; 6]>());
        MariaDbRestoreOptions {
            run_dir: std::env::temp_dir().join(format!("lifeboat-restore-{id}")),
            config_dir: None,
            admin_password: hex::encode(rand::random::<[u8; 18]>()),
            app: None,
        }
    }
}

/// A run of consecutive segments and the time they cover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRange {
    /// First seq.
    pub first_seq: u64,
    /// Last seq.
    pub last_seq: u64,
    /// Start of the time covered.
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    /// End of the time covered.
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
}

/// The moments a site can be restored to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RestorePoints {
    /// Checkpoints, oldest first.
    pub checkpoints: Vec<CheckpointInfo>,
    /// Segments, in runs without gaps, oldest first: any time inside a run after the
    /// first checkpoint is restorable.
    pub segments: Vec<SegmentRange>,
    /// States nodes kept aside because the timeline did not continue them (a former
    /// primary's own writes), oldest first: each restorable with `restore-site --fork`.
    #[serde(default)]
    pub forks: Vec<crate::forks::ForkInfo>,
    /// Spans no restore can reach: MariaDB capture lost transactions there (a GTID gap,
    /// binlogs purged by hand, `RESET MASTER`) until a new base was stored. Oldest first.
    #[serde(default)]
    pub gaps: Vec<CaptureGapSpan>,
}

/// A span of time no restore can reach ([`RestorePoints::gaps`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureGapSpan {
    /// Capture had everything up to about then.
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    /// The checkpoint whose base capture continued from: restorable again from here.
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

/// Lists checkpoints and the time ranges segments cover (for `lifeboat timeline`).
pub async fn list_restore_points(repo: &Repository) -> Result<RestorePoints> {
    let listed = checkpoint::list(repo).await?;
    let gaps = checkpoint::gaps(&listed);
    let checkpoints = listed.into_iter().map(|(_, i)| i).collect();
    let mut segments: Vec<SegmentRange> = Vec::new();
    let listing = stream::listing(repo).await?;
    stream::read_from(repo, &listing, 0, |seg| {
        match segments.last_mut() {
            Some(r) if r.last_seq + 1 == seg.seq => {
                r.last_seq = seg.seq;
                r.to = r.to.max(seg.cut_at);
            }
            _ => segments.push(SegmentRange {
                first_seq: seg.seq,
                last_seq: seg.seq,
                from: seg.after,
                to: seg.cut_at,
            }),
        }
        Ok(true)
    })
    .await?;
    Ok(RestorePoints {
        checkpoints,
        segments,
        gaps,
        forks: crate::forks::list_forks(repo).await?,
    })
}

fn safe_rel(name: &str) -> Result<PathBuf> {
    let p = Path::new(name);
    if name.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(TimelineError::Damaged {
            what: "timeline".into(),
            why: format!("path {name:?} is not a plain relative path"),
        });
    }
    Ok(p.to_path_buf())
}

/// Whether [`beneath`] makes the directories missing on the way.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parents {
    Create,
    MustExist,
}

/// `root/rel`, for the restore to read, write or remove, with no link on the way: every
/// component of `rel` is a plain name, and nothing under `root` that the path goes through
/// (or ends at) is a link. A checkpoint is read from the vault, and one crafted by whoever
/// held the site's key could restore `uploads/a -> /etc` and then name `uploads/a/passwd`;
/// this is what keeps every write inside the restored copy. `root` itself is a directory
/// this restore made.
fn beneath(root: &Path, rel: &str, parents: Parents) -> Result<PathBuf> {
    let rel_path = safe_rel(rel)?;
    let mut path = root.to_path_buf();
    let mut components = rel_path.components().peekable();
    while let Some(c) = components.next() {
        path.push(c);
        let last = components.peek().is_none();
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(link_refused(rel, &path, root));
            }
            Ok(m) if !last && !m.is_dir() => {
                return Err(TimelineError::Damaged {
                    what: "timeline".into(),
                    why: format!("{rel}: {} is not a directory", path.display()),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !last && parents == Parents::Create {
                    std::fs::create_dir(&path).map_err(io_err("create", &path))?;
                }
            }
            Err(e) => return Err(io_err("inspect", &path)(e)),
        }
    }
    Ok(path)
}

fn link_refused(what: &str, link: &Path, root: &Path) -> TimelineError {
    let shown = link.strip_prefix(root).unwrap_or(link);
    TimelineError::Damaged {
        what: what.to_string(),
        why: format!(
            "{} in the restored copy is a symbolic link; a site's timeline never holds links \
             (capture records regular files only) and a restore never writes through one",
            shown.display()
        ),
    }
}

/// Refuses a directory from the checkpoint that holds a link anywhere: capture never records
/// one, so it was crafted, and the app would follow it once the copy is served.
fn refuse_links(dir: &Path, checkpoint: &str, checkpoint_dir: &Path) -> Result<()> {
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).map_err(io_err("list", &d))? {
            let entry = entry.map_err(io_err("list", &d))?;
            let kind = entry.file_type().map_err(io_err("stat", entry.path()))?;
            if kind.is_symlink() {
                return Err(link_refused(
                    &format!("checkpoint {checkpoint}"),
                    &entry.path(),
                    checkpoint_dir,
                ));
            }
            if kind.is_dir() {
                todo.push(entry.path());
            }
        }
    }
    Ok(())
}

pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", path))
}

/// What a restore to one moment reads: a checkpoint and the segments after it, merged.
struct Cut {
    entry: SnapshotEntry,
    info: CheckpointInfo,
    meta: CheckpointMeta,
    /// Nothing seen after this is restored.
    t: OffsetDateTime,
    restored_time: OffsetDateTime,
    last_segment_seq: u64,
    /// Contents named by the checkpoint and the segments.
    contents: ContentMap,
    /// Small contents carried in the segments (checked against their blake3 when decoded).
    inline: BTreeMap<String, Vec<u8>>,
    /// The segments' records by source (database or data dir).
    by_source: BTreeMap<String, Vec<Record>>,
    /// The segments' MariaDB transactions by source.
    mariadb: BTreeMap<String, Vec<lifeboat_mariadb::TransactionRecord>>,
}

/// The checkpoint and segments that make the moment `target`. Reads only.
async fn find_cut(repo: &Repository, target: RestoreTarget) -> Result<Cut> {
    let checkpoints = checkpoint::list(repo).await?;
    if checkpoints.is_empty() {
        return Err(TimelineError::NothingCaptured);
    }
    let now = OffsetDateTime::now_utc();
    let t = match target {
        RestoreTarget::Time(t) if t > now => {
            return Err(TimelineError::InFuture { target: t, now });
        }
        RestoreTarget::Time(t) => t,
        RestoreTarget::Latest => now,
    };
    let Some((entry, info)) = checkpoints.iter().rev().find(|(_, i)| i.time <= t) else {
        return Err(TimelineError::BeforeFirstCapture {
            target: t,
            first: checkpoints[0].1.time,
        });
    };
    // A later checkpoint that ends a gap in capture which began at or before t: the segments
    // up to t lack transactions, so the state at t cannot be rebuilt.
    if let Some(gap) = checkpoint::gaps(&checkpoints)
        .into_iter()
        .find(|g| g.from <= t && t < g.until)
    {
        return Err(TimelineError::InCaptureGap {
            target: t,
            from: gap.from,
            until: gap.until,
        });
    }
    let meta = checkpoint::read_meta(repo, entry).await?;
    // The segments from the checkpoint's on that hold anything seen at or before t.
    let mut segments = Vec::new();
    // From segment S itself: it may hold commits after the checkpoint's base image (when
    // the image was taken earlier and stored late); replay skips what the image holds.
    let mut expected = meta.seq;
    let mut last_time = meta.time;
    let listing = stream::listing(repo).await?;
    let mut gap = None;
    stream::read_from(repo, &listing, meta.seq, |seg| {
        if seg.seq != expected {
            gap = Some(expected);
            return Ok(false);
        }
        if seg.after > t {
            return Ok(false);
        }
        last_time = seg.cut_at;
        expected = seg.seq + 1;
        segments.push(seg);
        Ok(true)
    })
    .await?;
    if let Some(seq) = gap {
        return Err(TimelineError::MissingSegment {
            seq,
            after: last_time,
        });
    }
    let mut cut = Cut {
        entry: entry.clone(),
        info: info.clone(),
        contents: meta.contents.clone(),
        meta,
        t,
        restored_time: match target {
            RestoreTarget::Latest => last_time,
            RestoreTarget::Time(_) => t,
        },
        last_segment_seq: expected - 1,
        inline: BTreeMap::new(),
        by_source: BTreeMap::new(),
        mariadb: BTreeMap::new(),
    };
    for seg in segments {
        cut.contents.extend(seg.contents);
        cut.inline.extend(seg.inline);
        for (name, records) in seg.sources {
            cut.by_source.entry(name).or_default().extend(records);
        }
        for (name, records) in seg.mariadb {
            cut.mariadb.entry(name).or_default().extend(records);
        }
    }
    Ok(cut)
}

/// Restores the site as of `target` into `into`, which must not exist or be empty. A MariaDB
/// database is restored with [`MariaDbRestoreOptions::fresh`].
pub async fn restore_site(
    repo: &Arc<Repository>,
    target: RestoreTarget,
    into: &Path,
) -> Result<RestoreReport> {
    restore_site_with(repo, target, into, MariaDbRestoreOptions::fresh()).await
}

/// [`restore_site`], with how the MariaDB database (if the site has one) is restored.
pub async fn restore_site_with(
    repo: &Arc<Repository>,
    target: RestoreTarget,
    into: &Path,
    mariadb: MariaDbRestoreOptions,
) -> Result<RestoreReport> {
    if let Ok(mut entries) = std::fs::read_dir(into)
        && entries.next().is_some()
    {
        return Err(TimelineError::NotEmpty(into.to_path_buf()));
    }
    let started = std::time::Instant::now();
    repo.reload_index().await?;
    let mut cut = find_cut(repo, target).await?;
    let (parent, staging) = make_staging(into)?;
    let mut phases = vec![("find".to_string(), started.elapsed().as_millis() as u64)];
    let built = build(repo, &mut cut, &staging, &mariadb, &mut phases).await;
    let (databases, dirs, files, file_bytes, manifest, restored_mariadb) = match built {
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
    std::fs::rename(&staging, into).map_err(io_err("move the restored site to", into))?;
    sync_dir(&parent)?;
    Ok(RestoreReport {
        restored_time: cut.restored_time,
        checkpoint: cut.info,
        last_segment_seq: cut.last_segment_seq,
        databases,
        dirs,
        files,
        file_bytes,
        manifest,
        mariadb: restored_mariadb,
        phases_ms: phases,
    })
}

/// A new, empty staging directory beside `into`, and their parent.
pub(crate) fn make_staging(into: &Path) -> Result<(PathBuf, PathBuf)> {
    let name = into
        .file_name()
        .ok_or_else(|| TimelineError::Invalid(format!("{} has no file name", into.display())))?
        .to_string_lossy()
        .into_owned();
    let parent = match into.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    let staging = parent.join(format!(".{name}.restore-partial"));
    match std::fs::symlink_metadata(&staging) {
        Ok(m) if m.is_dir() => {
            std::fs::remove_dir_all(&staging).map_err(io_err("remove the leftover", &staging))?
        }
        Ok(_) => std::fs::remove_file(&staging).map_err(io_err("remove the leftover", &staging))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect", &staging)(e)),
    }
    // Not `create_dir_all`: if anything appeared at this name meanwhile (a link to elsewhere),
    // this fails instead of writing the site into it.
    std::fs::create_dir(&staging).map_err(io_err("create", &staging))?;
    Ok((parent.to_path_buf(), staging))
}

/// Databases, data dirs, data-dir files (with their bytes) and whether the manifest was
/// restored.
type Built = (
    Vec<RestoredDatabase>,
    Vec<RestoredDir>,
    u64,
    u64,
    bool,
    Option<RestoredMariaDb>,
);

/// Builds the whole site in `staging`, fsynced: the checkpoint, each database replayed to t,
/// each data dir as of t, the manifest.
async fn build(
    repo: &Arc<Repository>,
    cut: &mut Cut,
    staging: &Path,
    mariadb: &MariaDbRestoreOptions,
    phases: &mut Vec<(String, u64)>,
) -> Result<Built> {
    let mut clock = std::time::Instant::now();
    let mut lap = |name: &str, phases: &mut Vec<(String, u64)>, reset_only: bool| {
        if !reset_only {
            phases.push((name.to_string(), clock.elapsed().as_millis() as u64));
        }
        clock = std::time::Instant::now();
    };
    let scratch = staging.join(".lifeboat-restore-scratch");
    std::fs::create_dir(&scratch).map_err(io_err("create", &scratch))?;
    // The checkpoint in one go (the vault reads whole packs and verifies every chunk).
    let checkpoint_dir = scratch.join("checkpoint");
    repo.restore(
        cut.entry.snapshot.tree,
        &checkpoint_dir,
        &RestoreOptions::default(),
        Arc::new(NoProgress),
    )
    .await?;
    lap("vault", phases, false);
    let databases = restore_databases(repo, cut, &checkpoint_dir, &scratch, staging).await?;
    lap("databases", phases, false);
    let (dirs, files, file_bytes) = restore_data_dirs(repo, cut, &checkpoint_dir, staging).await?;
    let manifest = restore_manifest(cut, &checkpoint_dir, staging)?;
    lap("data dirs", phases, false);
    let restored_mariadb = match cut.meta.mariadb.first().cloned() {
        Some(base) => {
            let (cut_t, history) = (cut.t, cut.mariadb.remove(&base.name).unwrap_or_default());
            let (checkpoint_dir, staging, options) = (
                checkpoint_dir.clone(),
                staging.to_path_buf(),
                mariadb.clone(),
            );
            let latest = cut.restored_time != cut.t;
            Some(
                tokio::task::spawn_blocking(move || {
                    restore_mariadb(
                        &base,
                        history,
                        if latest { None } else { Some(cut_t) },
                        &checkpoint_dir,
                        &staging,
                        &options,
                    )
                })
                .await
                .map_err(|e| {
                    TimelineError::Invalid(format!("the MariaDB restore failed: {e}"))
                })??,
            )
        }
        None => None,
    };
    if let Some(m) = &restored_mariadb {
        phases.extend(
            m.phases_ms
                .iter()
                .map(|(name, ms)| (format!("mariadb {name}"), *ms)),
        );
        lap("", phases, true);
    }
    std::fs::remove_dir_all(&scratch).map_err(io_err("remove", &scratch))?;
    sync_tree(staging)?;
    lap("sync", phases, false);
    Ok((
        databases,
        dirs,
        files,
        file_bytes,
        manifest,
        restored_mariadb,
    ))
}

/// The MariaDB database: the checkpoint's base, then every transaction received at or
/// before `t` (all of them for `None`), replayed by a server of the restore's own, checked
/// (`CHECK TABLE`), stopped.
fn restore_mariadb(
    base: &checkpoint::MariaDbCheckpoint,
    history: Vec<lifeboat_mariadb::TransactionRecord>,
    t: Option<OffsetDateTime>,
    checkpoint_dir: &Path,
    staging: &Path,
    options: &MariaDbRestoreOptions,
) -> Result<RestoredMariaDb> {
    let err = |error| TimelineError::MariaDb {
        what: base.name.clone(),
        error: Box::new(error),
    };
    let base_dir = beneath(checkpoint_dir, &base.name, Parents::MustExist)?;
    refuse_links(&base_dir, &base.name, checkpoint_dir)?;
    let backup = lifeboat_mariadb::open_base_backup(&base_dir).map_err(err)?;
    let history = lifeboat_mariadb::resolve_history(history).map_err(err)?;
    // Where capture's sequence stands once the copy holds what it holds (computed after the
    // restore, from its position): the last record it holds, else the base's.
    let position_after = |pos: &lifeboat_mariadb::GtidPos| {
        history
            .iter()
            .rev()
            .find(|r| pos.contains(r.gtid))
            .map_or((base.epoch, base.last_seq), |r| (r.epoch, r.seq))
    };
    let data_dir = beneath(staging, &base.name, Parents::Create)?;
    let mut spec =
        lifeboat_mariadb::ServerSpec::new(&data_dir, &options.run_dir, None).map_err(err)?;
    spec.config_dir = match &options.config_dir {
        Some(dir) => dir.clone(),
        None => staging.join(".lifeboat").join("mariadb").join("site"),
    };
    for dir in [&spec.config_dir, &options.run_dir] {
        // Only the dir itself is private: a parent made here keeps the usual mode (the run
        // dirs' parent, e.g. /run/lifeboat, must stay traversable for the site's user).
        use std::os::unix::fs::DirBuilderExt;
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(io_err("create", dir)(e)),
        }
    }
    let target = match t {
        Some(t) => lifeboat_mariadb::RestoreTarget::Time(t),
        None => lifeboat_mariadb::RestoreTarget::Latest,
    };
    let app = options
        .app
        .as_ref()
        .map(|(database, user, password)| lifeboat_mariadb::AppLogin {
            database,
            user,
            password,
        });
    // The base was restored into the scratch dir, which is deleted afterwards: its files are
    // moved into the data dir, not written a second time.
    let report = lifeboat_mariadb::restore_with_app_moving_base(
        &spec,
        &options.admin_password,
        &backup,
        &history,
        &target,
        app,
    );
    let _ = std::fs::remove_dir_all(&options.run_dir);
    let report = report.map_err(err)?;
    let (capture_epoch, capture_seq) = position_after(&report.gtid_pos);
    Ok(RestoredMariaDb {
        name: base.name.clone(),
        base_gtid_pos: base.gtid_pos.clone(),
        gtid_pos: report.gtid_pos.to_string(),
        transactions_replayed: report.transactions_replayed,
        tables_checked: report.tables_checked.len(),
        phases_ms: report
            .phases_ms
            .iter()
            .map(|(n, ms)| (n.to_string(), *ms))
            .collect(),
        capture_seq,
        capture_epoch,
    })
}

/// Each database replayed from its base image to its last transaction seen at or before t,
/// then checked with `PRAGMA integrity_check`.
async fn restore_databases(
    repo: &Repository,
    cut: &mut Cut,
    checkpoint_dir: &Path,
    scratch: &Path,
    staging: &Path,
) -> Result<Vec<RestoredDatabase>> {
    let t = cut.t;
    let mut databases = Vec::new();
    for (i, db) in cut.meta.databases.iter().enumerate() {
        let mut records = vec![Record::BaseImage(db.base.clone())];
        records.extend(cut.by_source.remove(db.name.as_str()).unwrap_or_default());
        let history = resolve_history(records);
        let base: BaseImageRecord = history
            .iter()
            .filter_map(|r| match r {
                Record::BaseImage(b) if b.taken_at <= t => Some(b.clone()),
                _ => None,
            })
            .next_back()
            .unwrap_or_else(|| db.base.clone());
        let content =
            cut.contents
                .get(&base.image_hash)
                .ok_or_else(|| TimelineError::MissingContent {
                    hash: base.image_hash.clone(),
                    what: format!("base image of {}", db.name),
                })?;
        let image = if base == db.base {
            beneath(checkpoint_dir, &db.name, Parents::MustExist)?
        } else {
            let image = scratch.join(format!("db-{i}.image"));
            fetch(repo, &base.image_hash, content, &db.name, &image).await?;
            image
        };
        let out = beneath(staging, &db.name, Parents::Create)?;
        let report =
            rebuild(&image, &base, &history, RebuildTarget::Time(t), &out).map_err(|error| {
                TimelineError::Capture {
                    what: db.name.clone(),
                    error: Box::new(error),
                }
            })?;
        integrity_check(&out).map_err(|e| TimelineError::IntegrityCheckFailed {
            path: out.clone(),
            report: e.to_string(),
        })?;
        std::fs::remove_file(&image).map_err(io_err("remove", &image))?;
        let capture_epoch = history
            .iter()
            .find(|r| r.seq() == report.seq)
            .map_or(base.epoch, |r| r.epoch());
        databases.push(RestoredDatabase {
            name: db.name.clone(),
            capture_seq: report.seq,
            capture_epoch,
            commits_applied: report.commits_applied,
        });
    }
    Ok(databases)
}

/// Each data dir as of t: the checkpoint's files, moved into place, then the changes seen
/// after it up to t. Returns the dirs, the files and their bytes.
async fn restore_data_dirs(
    repo: &Repository,
    cut: &mut Cut,
    checkpoint_dir: &Path,
    staging: &Path,
) -> Result<(Vec<RestoredDir>, u64, u64)> {
    let (mut files, mut file_bytes) = (0u64, 0u64);
    let mut restored = Vec::new();
    for dir in &cut.meta.dirs {
        let records = cut.by_source.remove(dir.name.as_str()).unwrap_or_default();
        let changes: Vec<_> = resolve_history(records)
            .into_iter()
            .filter_map(|r| match r {
                Record::File(c) if c.seq > dir.last_seq && c.observed_at <= cut.t => Some(c),
                _ => None,
            })
            .collect();
        let mut state = dir.files.clone();
        apply_file_changes(&mut state, &changes);
        restored.push(match changes.last() {
            Some(c) => RestoredDir {
                name: dir.name.clone(),
                seq: c.seq,
                epoch: c.epoch,
            },
            None => RestoredDir {
                name: dir.name.clone(),
                seq: dir.last_seq,
                epoch: dir.epoch,
            },
        });
        move_data_dir(cut, &dir.name, checkpoint_dir, staging)?;
        let in_dir = |path: &str| format!("{}/{}", dir.name, path);
        // Files the checkpoint had that are gone or different at t.
        for (path, hash) in &dir.files {
            if state.get(path) != Some(hash) {
                let p = beneath(staging, &in_dir(path), Parents::MustExist)?;
                std::fs::remove_file(&p).map_err(io_err("remove the outdated", &p))?;
            }
        }
        for (path, hash) in &state {
            files += 1;
            if dir.files.get(path) == Some(hash) {
                file_bytes += cut.contents.get(hash).map_or(0, |c| c.size);
                continue;
            }
            let out = beneath(staging, &in_dir(path), Parents::Create)?;
            if let Some(bytes) = cut.inline.get(hash.as_str()) {
                // Checked against its blake3 when the segment was decoded.
                write_new_file(&out, bytes)?;
                file_bytes += bytes.len() as u64;
                continue;
            }
            let content = cut
                .contents
                .get(hash)
                .ok_or_else(|| TimelineError::MissingContent {
                    hash: hash.clone(),
                    what: in_dir(path),
                })?;
            fetch(repo, hash, content, path, &out).await?;
            file_bytes += content.size;
        }
    }
    Ok((restored, files, file_bytes))
}

/// Moves the checkpoint's copy of data dir `name` into `staging` (or makes it empty when the
/// checkpoint had no file in it), refusing one that is, or holds, a link.
fn move_data_dir(cut: &Cut, name: &str, checkpoint_dir: &Path, staging: &Path) -> Result<()> {
    let root = beneath(staging, name, Parents::Create)?;
    let from = beneath(checkpoint_dir, name, Parents::MustExist)?;
    let checkpoint = &cut.info.snapshot;
    match std::fs::symlink_metadata(&from) {
        Ok(m) if m.is_dir() => {
            refuse_links(&from, checkpoint, checkpoint_dir)?;
            std::fs::rename(&from, &root).map_err(io_err("move into place", &root))
        }
        _ => std::fs::create_dir_all(&root).map_err(io_err("create", &root)),
    }
}

/// The manifest of the checkpoint, checked against its recorded hash.
fn restore_manifest(cut: &Cut, checkpoint_dir: &Path, staging: &Path) -> Result<bool> {
    let Some((name, hash)) = &cut.meta.manifest else {
        return Ok(false);
    };
    let from = beneath(checkpoint_dir, name, Parents::MustExist)?;
    let bytes = std::fs::read(&from).map_err(|_| TimelineError::MissingContent {
        hash: hash.clone(),
        what: name.clone(),
    })?;
    if blake3::hash(&bytes).to_hex().as_str() != hash {
        return Err(TimelineError::Damaged {
            what: name.clone(),
            why: "its content does not match its recorded hash".into(),
        });
    }
    write_new_file(&beneath(staging, name, Parents::Create)?, &bytes)?;
    Ok(true)
}

/// Writes a file that must not exist yet (never through a link: `create_new` does not follow
/// one), fsynced.
fn write_new_file(out: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(io_err("create", out))?;
    f.write_all(bytes).map_err(io_err("write", out))?;
    f.sync_all().map_err(io_err("fsync", out))
}

/// Fsyncs every directory under `root` (files were fsynced as they were written).
pub(crate) fn sync_tree(root: &Path) -> Result<()> {
    for entry in std::fs::read_dir(root).map_err(io_err("list", root))? {
        let entry = entry.map_err(io_err("list", root))?;
        if entry
            .file_type()
            .map_err(io_err("stat", entry.path()))?
            .is_dir()
        {
            sync_tree(&entry.path())?;
        }
    }
    sync_dir(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_through_a_link_is_refused_and_missing_directories_are_made() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("copy");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a")).unwrap();

        for rel in ["a/passwd", "a", "a/b/c"] {
            let err = beneath(&root, rel, Parents::Create).unwrap_err();
            assert!(err.to_string().contains("symbolic link"), "{rel}: {err}");
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        for rel in ["../escape", "/etc/passwd", "x/../../y", ""] {
            assert!(beneath(&root, rel, Parents::Create).is_err(), "{rel}");
        }

        let p = beneath(&root, "new/dir/file", Parents::Create).unwrap();
        assert_eq!(p, root.join("new/dir/file"));
        assert!(root.join("new/dir").is_dir());
        assert!(!p.exists());
        assert_eq!(
            beneath(&root, "gone/file", Parents::MustExist).unwrap(),
            root.join("gone/file")
        );
        assert!(!root.join("gone").exists());
    }
}
