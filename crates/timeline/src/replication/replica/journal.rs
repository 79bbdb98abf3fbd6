//! A standby's MariaDB transactions received but not yet applied to its copy's data dir.
//!
//! A standby does not keep a MariaDB server running: applying each group through a server
//! would put a server round trip on the path of every write held for `durability = "sync"`.
//! Instead each group's transactions are appended to this journal, one file per group
//! (`FIRST-LAST.lbmdb`, capture seqs, the `LBMDBSEG` batch layout of
//! `docs/mariadb-format.md`, written to a temporary name, fsynced, renamed, the directory
//! fsynced) before `replica.state` says the group is applied. They are *folded* into the
//! data dir ([`fold`]: a server started on it replays them and stops) when the journal grows
//! past a size and when the standby is promoted.
//!
//! What a kill -9 leaves: a journal file whose records are beyond what `replica.state`
//! says is applied was written for a group that was never acknowledged; [`drop_beyond`]
//! removes it when the applier opens (the group arrives again). A fold interrupted half way
//! is done again: the server skips what its binlog position already holds
//! (`lifeboat_mariadb::apply_transactions`), and the journal files are removed only after
//! the server stopped cleanly holding all of them.

use std::path::{Path, PathBuf};

use lifeboat_mariadb::{GtidPos, ServerSpec, TransactionRecord};

use super::super::error::StreamError;

/// The journal's directory, in the replica's meta dir.
pub(crate) fn dir(meta_dir: &Path) -> PathBuf {
    meta_dir.join("mariadb-journal")
}

/// (first seq, last seq, path) of every journal file, by first seq.
fn files(dir: &Path) -> Result<Vec<(u64, u64, PathBuf)>, StreamError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StreamError::io("list", dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(StreamError::io("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".lbmdb") else {
            // A temporary file of an interrupted append.
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
            continue;
        };
        let parsed = stem
            .split_once('-')
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
        if let Some((first, last)) = parsed {
            out.push((first, last, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), StreamError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StreamError::io("fsync", dir))
}

/// Appends one group's transactions durably.
pub(crate) fn append(dir: &Path, records: &[TransactionRecord]) -> Result<(), StreamError> {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Ok(());
    };
    std::fs::create_dir_all(dir).map_err(StreamError::io("create", dir))?;
    let path = dir.join(format!("{:020}-{:020}.lbmdb", first.seq, last.seq));
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(StreamError::io("create", &tmp))?;
        f.write_all(&lifeboat_mariadb::encode_batch(records))
            .and_then(|()| f.sync_all())
            .map_err(StreamError::io("write", &tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(StreamError::io("rename", &tmp))?;
    sync_dir(dir)
}

/// Removes journal files of groups never acknowledged (records beyond `held_seq`).
pub(crate) fn drop_beyond(dir: &Path, held_seq: u64) -> Result<(), StreamError> {
    for (_, last, path) in files(dir)? {
        if last > held_seq {
            std::fs::remove_file(&path).map_err(StreamError::io("remove", &path))?;
        }
    }
    Ok(())
}

/// Removes the whole journal (the copy was replaced by a restore).
pub(crate) fn clear(dir: &Path) -> Result<(), StreamError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StreamError::io("remove", dir)(e)),
    }
}

/// The journal's size in bytes.
pub(crate) fn bytes(dir: &Path) -> u64 {
    files(dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|(_, _, p)| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Every journaled transaction up to `held_seq`, in seq order, each once.
pub(crate) fn read(dir: &Path, held_seq: u64) -> Result<Vec<TransactionRecord>, StreamError> {
    let mut out: Vec<TransactionRecord> = Vec::new();
    for (_, _, path) in files(dir)? {
        let bytes = std::fs::read(&path).map_err(StreamError::io("read", &path))?;
        let records = lifeboat_mariadb::decode_batch(&bytes).map_err(|e| StreamError::BadState {
            path: path.clone(),
            why: format!("a journaled group does not decode ({e}); the standby restores its copy from the vault"),
        })?;
        for r in records {
            if r.seq <= held_seq && out.last().is_none_or(|l| r.seq > l.seq) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

fn position_path(meta_dir: &Path) -> PathBuf {
    meta_dir.join("mariadb-position")
}

/// Records the GTID position the copy's data dir holds (after a restore and after each
/// fold), so that a promotion knows where capture continues without starting a server.
pub(crate) fn save_copy_position(meta_dir: &Path, pos: &GtidPos) -> Result<(), StreamError> {
    use std::io::Write;
    let path = position_path(meta_dir);
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(StreamError::io("create", &tmp))?;
        f.write_all(pos.to_string().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(StreamError::io("write", &tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(StreamError::io("rename", &tmp))?;
    sync_dir(meta_dir)
}

/// The position [`save_copy_position`] recorded.
pub(crate) fn copy_position(meta_dir: &Path) -> Result<GtidPos, StreamError> {
    let path = position_path(meta_dir);
    let text = std::fs::read_to_string(&path).map_err(StreamError::io("read", &path))?;
    text.trim().parse().map_err(|e| StreamError::BadState {
        path: path.clone(),
        why: format!("not a GTID position: {e}"),
    })
}

/// Applies the journal up to `held_seq` through the running server of `spec` (a promoted
/// standby's, just started on the copy), records the position and removes the journal.
pub(crate) fn apply_running(
    spec: &ServerSpec,
    meta_dir: &Path,
    held_seq: u64,
) -> Result<usize, StreamError> {
    fold_with(spec, meta_dir, held_seq, lifeboat_mariadb::apply_on_running)
}

/// Applies the journal up to `held_seq` to the data dir of `spec` (its server must not be
/// running), records the position reached in `meta_dir` and removes the files it applied.
/// Returns how many transactions they held. Only files wholly at or before `held_seq` are
/// read and removed, so groups appended meanwhile (a fold in the background) stay.
pub(crate) fn fold(
    spec: &ServerSpec,
    meta_dir: &Path,
    held_seq: u64,
) -> Result<usize, StreamError> {
    fold_with(
        spec,
        meta_dir,
        held_seq,
        lifeboat_mariadb::apply_transactions,
    )
}

fn fold_with(
    spec: &ServerSpec,
    meta_dir: &Path,
    held_seq: u64,
    apply: fn(&ServerSpec, &[TransactionRecord]) -> lifeboat_mariadb::Result<GtidPos>,
) -> Result<usize, StreamError> {
    let dir = &self::dir(meta_dir);
    let mut records: Vec<TransactionRecord> = Vec::new();
    let taken: Vec<(u64, u64, PathBuf)> = files(dir)?
        .into_iter()
        .filter(|(_, last, _)| *last <= held_seq)
        .collect();
    for (_, _, path) in &taken {
        let bytes = std::fs::read(path).map_err(StreamError::io("read", path))?;
        let decoded = lifeboat_mariadb::decode_batch(&bytes).map_err(|e| StreamError::BadState {
            path: path.clone(),
            why: format!("a journaled group does not decode ({e}); the standby restores its copy from the vault"),
        })?;
        for r in decoded {
            if records.last().is_none_or(|l| r.seq > l.seq) {
                records.push(r);
            }
        }
    }
    if records.is_empty() {
        return Ok(0);
    }
    let pos = apply(spec, &records).map_err(|e| {
        StreamError::Invalid(format!(
            "applying {} received MariaDB transactions to the copy in {} failed: {e}",
            records.len(),
            spec.data_dir.display()
        ))
    })?;
    save_copy_position(meta_dir, &pos)?;
    for (_, _, path) in &taken {
        std::fs::remove_file(path).map_err(StreamError::io("remove", path))?;
    }
    sync_dir(dir)?;
    Ok(records.len())
}
