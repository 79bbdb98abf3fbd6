//! Rebuilding a database file as of a captured moment: a base image plus the commits after
//! it, up to a sequence number or a time.
//!
//! Promises: the result holds exactly the transactions up to the target, in order, with
//! nothing skipped (a gap in the sequence is an error, not a guess); the base image is
//! verified against its recorded hash; the rebuilt file passes `PRAGMA integrity_check`
//! before it appears at the destination; and it appears atomically (temporary file,
//! fsync, rename, fsync of the directory), so a crash leaves either nothing or the whole
//! file. An existing file at the destination is never overwritten.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use time::OffsetDateTime;

use crate::durable::sync_parent;
use crate::error::{CaptureError, Result, io_err, sql_err};
use crate::record::{BaseImageRecord, CommitRecord, Record, Sequenced, SnapshotReason};

/// How far to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildTarget {
    /// Up to and including this sequence number.
    Seq(u64),
    /// Every commit seen at or before this time.
    Time(OffsetDateTime),
}

impl std::fmt::Display for RebuildTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RebuildTarget::Seq(s) => write!(f, "seq {s}"),
            RebuildTarget::Time(t) => write!(f, "time {t}"),
        }
    }
}

/// What a rebuild produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    /// The rebuilt database file.
    pub path: PathBuf,
    /// Seq of the last change included (the base image's when no commit was applied).
    pub seq: u64,
    /// Commits applied on top of the base image.
    pub commits_applied: usize,
    /// Database size in pages.
    pub db_pages: u32,
}

/// Rebuilds the database at `out` from the base image file `image` (described by `base`)
/// and the records after it in `history` (one database's records, ordered by seq, as
/// [`crate::record::resolve_history`] returns them; records up to the base and past the
/// target are ignored).
pub fn rebuild(
    image: &Path,
    base: &BaseImageRecord,
    history: &[Record],
    target: RebuildTarget,
    out: &Path,
) -> Result<RebuildReport> {
    let unreachable = |problem: String| CaptureError::Unreachable {
        target: target.to_string(),
        problem,
    };
    match target {
        RebuildTarget::Seq(s) if s < base.seq => {
            return Err(unreachable(format!(
                "it is before the base image (seq {}); use an earlier base image",
                base.seq
            )));
        }
        RebuildTarget::Time(t) if t < base.taken_at => {
            return Err(unreachable(format!(
                "it is before the base image (taken {}); use an earlier base image",
                base.taken_at
            )));
        }
        _ => {}
    }
    if out.exists() {
        return Err(unreachable(format!(
            "{} already exists and is never overwritten; choose a new path",
            out.display()
        )));
    }
    let selected = select_commits(base, history, target).map_err(unreachable)?;

    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = out.with_file_name(format!(".{name}.rebuild-partial"));
    let result = build(image, base, &selected, &tmp);
    match result {
        Ok((seq, db_pages)) => {
            std::fs::rename(&tmp, out).map_err(io_err(out, "rename the rebuilt database to"))?;
            sync_parent(out)?;
            Ok(RebuildReport {
                path: out.to_path_buf(),
                seq,
                commits_applied: selected.len(),
                db_pages,
            })
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(match e {
                CaptureError::IntegrityCheckFailed { report, .. } => {
                    CaptureError::IntegrityCheckFailed {
                        path: out.to_path_buf(),
                        report,
                    }
                }
                other => other,
            })
        }
    }
}

/// The commits to apply: contiguous from `base.seq + 1`, up to the target. Seqs taken by
/// requested base images are skipped (they change nothing); a base image taken because
/// continuity was lost ends what can be replayed from this base.
fn select_commits<'a>(
    base: &BaseImageRecord,
    history: &'a [Record],
    target: RebuildTarget,
) -> std::result::Result<Vec<&'a CommitRecord>, String> {
    let mut selected = Vec::new();
    let mut expected = base.seq + 1;
    for record in history.iter().filter(|r| r.seq() > base.seq) {
        let reached = match target {
            RebuildTarget::Seq(s) => record.seq() > s,
            RebuildTarget::Time(t) => match record {
                Record::Commit(c) => c.commit_time > t,
                Record::BaseImage(b) => b.taken_at > t,
                Record::File(_) => false,
            },
        };
        if reached {
            break;
        }
        if record.seq() != expected {
            return Err(format!(
                "the captured records have a gap: seq {expected} is missing before seq {}",
                record.seq()
            ));
        }
        match record {
            Record::Commit(c) if c.page_size != base.page_size => {
                return Err(format!(
                    "seq {} has page size {} but the base image has {}; use a base image taken after it",
                    c.seq, c.page_size, base.page_size
                ));
            }
            Record::Commit(c) => selected.push(c),
            Record::BaseImage(b) if b.reason == SnapshotReason::Requested => {}
            Record::BaseImage(b) => {
                return Err(format!(
                    "capture took a fresh base image at seq {} ({:?}): transactions before it may be \
                     missing, so replay cannot cross it; rebuild from that base image instead",
                    b.seq, b.reason
                ));
            }
            Record::File(f) => {
                return Err(format!(
                    "seq {} is a file change, not a database record",
                    f.seq
                ));
            }
        }
        expected += 1;
    }
    if let RebuildTarget::Seq(s) = target
        && s >= expected
    {
        return Err(format!("records only reach seq {}", expected - 1));
    }
    Ok(selected)
}

fn build(
    image: &Path,
    base: &BaseImageRecord,
    commits: &[&CommitRecord],
    tmp: &Path,
) -> Result<(u64, u32)> {
    let mut src = File::open(image).map_err(io_err(image, "open the base image"))?;
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(io_err(tmp, "create"))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src
            .read(&mut buf)
            .map_err(io_err(image, "read the base image"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n]).map_err(io_err(tmp, "write"))?;
    }
    if hasher.finalize().to_hex().as_str() != base.image_hash {
        return Err(CaptureError::Unreachable {
            target: format!("base image seq {}", base.seq),
            problem: format!(
                "{} does not match its recorded hash (damaged); fetch it from another destination",
                image.display()
            ),
        });
    }
    let page_size = u64::from(base.page_size);
    let mut seq = base.seq;
    let mut db_pages = base.db_pages;
    for c in commits {
        for (pgno, data) in &c.pages {
            // Pages past the commit's size belong to a shrink; truncation below drops them.
            if *pgno <= c.db_pages {
                dst.write_all_at(data, u64::from(pgno - 1) * page_size)
                    .map_err(io_err(tmp, "write"))?;
            }
        }
        // SQLite reads pages past the end of the file as zeros, so growing with zeros and
        // shrinking by truncation give exactly the database the commit described.
        dst.set_len(u64::from(c.db_pages) * page_size)
            .map_err(io_err(tmp, "resize"))?;
        seq = c.seq;
        db_pages = c.db_pages;
    }
    dst.sync_all().map_err(io_err(tmp, "fsync"))?;
    drop(dst);
    integrity_check(tmp)?;
    Ok((seq, db_pages))
}

/// Runs `PRAGMA integrity_check` on the database file at `path`.
pub fn integrity_check(path: &Path) -> Result<()> {
    let conn = Connection::open(path).map_err(sql_err(path, "open the rebuilt database"))?;
    let mut stmt = conn
        .prepare("PRAGMA integrity_check")
        .map_err(sql_err(path, "run the integrity check"))?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|source| match source {
            // A database too damaged to even run the check is a failed check.
            rusqlite::Error::SqliteFailure(..) => CaptureError::IntegrityCheckFailed {
                path: path.to_path_buf(),
                report: source.to_string(),
            },
            other => sql_err(path, "run the integrity check")(other),
        })?;
    if lines.len() == 1 && lines[0] == "ok" {
        Ok(())
    } else {
        Err(CaptureError::IntegrityCheckFailed {
            path: path.to_path_buf(),
            report: lines.into_iter().take(5).collect::<Vec<_>>().join("; "),
        })
    }
}
