//! The standby's own state file, `replica.state` in its meta dir: the highest term seen, how
//! far its copy is applied, and whether a group of several batches is being applied.
//!
//! It is written after every group, before the group is acknowledged, so it is on the path
//! of every write held for `durability = "sync"`: instead of a new file renamed into place
//! (three syncs), it has two fixed slots written alternately in place, each with a
//! generation number and a checksum, made durable with one `fdatasync`. A torn or lost
//! write leaves the other slot, the previous state, which is always safe to restart from:
//! the applied position is written only after everything it covers is durable (the
//! database log fsynced, every file renamed and its directory fsynced), so after a crash the
//! copy holds at least what the file says, possibly the next group too, and applying that
//! group again gives the same copy (see `apply.rs`).
//!
//! Layout of each slot (at offset `slot * 64 KiB`): magic `LBREPLST`, version 1, generation
//! (u64, big-endian), JSON length N (u32, big-endian), N bytes of JSON, blake3 of everything
//! before it. The slot with the highest generation whose checksum verifies is the state.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::super::Position;
use super::super::error::StreamError;
use super::super::wire::SourcePosition;

/// Layout version of `replica.state`.
pub(crate) const STATE_VERSION: u8 = 1;
const STATE_FILE: &str = "replica.state";
const MAGIC: &[u8; 8] = b"LBREPLST";
const SLOT: u64 = 64 << 10;
const HEAD: usize = 8 + 1 + 8 + 4;

/// A group of several batches being applied: until it is, the copy may hold anything up to
/// it, so the first group applied after a crash must reach at least this far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Applying {
    pub through: Position,
    pub sources: BTreeMap<String, SourcePosition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReplicaFile {
    pub site: String,
    /// No batch of a lower term is ever applied; made durable before anything of a new
    /// term is.
    pub highest_term: u64,
    /// False while a restore from the vault is replacing the copy: the copy is then no
    /// consistent state and must be restored again.
    pub ready: bool,
    /// The last batch applied and durable (`{0, 0}` after a restore from the vault).
    pub applied: Position,
    /// Per source: the last record applied.
    pub sources: BTreeMap<String, SourcePosition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applying: Option<Applying>,
    /// The generation of the slot this was read from or last written to.
    #[serde(skip)]
    pub generation: u64,
}

fn bad(path: &Path, why: impl Into<String>) -> StreamError {
    StreamError::BadState {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// Decodes one slot: `Ok(None)` when it holds nothing valid (never written, or torn).
fn read_slot(bytes: &[u8], path: &Path) -> Result<Option<ReplicaFile>, StreamError> {
    if bytes.len() < HEAD || &bytes[..8] != MAGIC {
        return Ok(None);
    }
    if bytes[8] != STATE_VERSION {
        return Err(bad(
            path,
            format!(
                "version {} is unknown to this lifeboat (it reads {STATE_VERSION})",
                bytes[8]
            ),
        ));
    }
    let generation = u64::from_be_bytes(bytes[9..17].try_into().expect("8 bytes"));
    let len = u32::from_be_bytes(bytes[17..21].try_into().expect("4 bytes")) as usize;
    let Some(end) = HEAD.checked_add(len).filter(|&e| e + 32 <= bytes.len()) else {
        return Ok(None);
    };
    if blake3::hash(&bytes[..end]).as_bytes() != &bytes[end..end + 32] {
        return Ok(None);
    }
    let mut file: ReplicaFile =
        serde_json::from_slice(&bytes[HEAD..end]).map_err(|e| bad(path, e.to_string()))?;
    file.generation = generation;
    Ok(Some(file))
}

impl ReplicaFile {
    pub(crate) fn empty(site: &str) -> ReplicaFile {
        ReplicaFile {
            site: site.to_string(),
            highest_term: 0,
            ready: false,
            applied: Position::default(),
            sources: BTreeMap::new(),
            applying: None,
            generation: 0,
        }
    }

    pub(crate) fn path(meta_dir: &Path) -> PathBuf {
        meta_dir.join(STATE_FILE)
    }

    /// Loads the newest valid slot; `None` when there is no state yet.
    pub(crate) fn load(meta_dir: &Path) -> Result<Option<ReplicaFile>, StreamError> {
        let path = Self::path(meta_dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StreamError::io("read", &path)(e)),
        };
        let mut best: Option<ReplicaFile> = None;
        for slot in bytes.chunks(SLOT as usize).take(2) {
            if let Some(f) = read_slot(slot, &path)?
                && best.as_ref().is_none_or(|b| f.generation > b.generation)
            {
                best = Some(f);
            }
        }
        Ok(best)
    }

    /// Writes the next generation into the slot not holding the current one and makes it
    /// durable. When this returns, a crash leaves this state; before, the previous one.
    pub(crate) fn save(&mut self, meta_dir: &Path) -> Result<(), StreamError> {
        let path = Self::path(meta_dir);
        let json = serde_json::to_vec(self).expect("plain data serialises");
        if (HEAD + json.len() + 32) as u64 > SLOT {
            return Err(bad(&path, "the state grew larger than a slot (64 KiB)"));
        }
        let generation = self.generation + 1;
        let mut bytes = Vec::with_capacity(HEAD + json.len() + 32);
        bytes.extend_from_slice(MAGIC);
        bytes.push(STATE_VERSION);
        bytes.extend_from_slice(&generation.to_be_bytes());
        bytes.extend_from_slice(&(json.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&json);
        let hash = blake3::hash(&bytes);
        bytes.extend_from_slice(hash.as_bytes());
        let created = !path.exists();
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(StreamError::io("open", &path))?;
        if created {
            // Both slots exist from the start, so later writes never change the file's size
            // and `fdatasync` suffices.
            file.set_len(2 * SLOT)
                .map_err(StreamError::io("size", &path))?;
        }
        file.write_all_at(&bytes, (generation % 2) * SLOT)
            .map_err(StreamError::io("write", &path))?;
        file.sync_data().map_err(StreamError::io("fsync", &path))?;
        if created {
            File::open(meta_dir)
                .and_then(|d| d.sync_all())
                .map_err(StreamError::io("fsync", meta_dir))?;
        }
        self.generation = generation;
        Ok(())
    }
}

/// The state in `meta_dir` as JSON, for tests and diagnostics.
#[doc(hidden)]
pub fn inspect(meta_dir: &Path) -> Result<Option<String>, StreamError> {
    Ok(ReplicaFile::load(meta_dir)?
        .map(|f| serde_json::to_string_pretty(&f).expect("plain data serialises")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_whole_slot_wins_and_a_torn_one_leaves_the_previous_state() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ReplicaFile::load(dir.path()).unwrap(), None);
        let mut f = ReplicaFile::empty("site");
        f.highest_term = 3;
        f.save(dir.path()).unwrap();
        f.highest_term = 4;
        f.save(dir.path()).unwrap();
        assert_eq!(
            ReplicaFile::load(dir.path()).unwrap().unwrap().highest_term,
            4
        );
        // The next write torn: its slot's checksum fails, the previous state stands.
        f.highest_term = 5;
        f.save(dir.path()).unwrap();
        let path = ReplicaFile::path(dir.path());
        let file = File::options().write(true).open(&path).unwrap();
        file.write_all_at(b"torn", (f.generation % 2) * SLOT + 30)
            .unwrap();
        let back = ReplicaFile::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.highest_term, 4);
        // Writing again after the tear goes to the other slot, past the surviving one.
        let mut back = back;
        back.highest_term = 6;
        back.save(dir.path()).unwrap();
        assert_eq!(
            ReplicaFile::load(dir.path()).unwrap().unwrap().highest_term,
            6
        );
    }
}
