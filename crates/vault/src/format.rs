//! The stored structures of a repository (see docs/vault-format.md): config, pack layout,
//! index, trees and snapshots. Pure encoding and decoding; no I/O.
use serde::{Deserialize, Serialize};

use crate::crypto::{Id, Keys};
use crate::error::{Error, Result};

/// The repository format version this code writes and the newest it reads. Version 2 added
/// owners (`uid`, `gid`) to tree nodes; version-1 repositories are read and written as they
/// are (see docs/vault-format.md, "Versions").
pub const FORMAT_VERSION: u32 = 2;

/// Largest blob (chunk or tree) we accept when decompressing; guards against zip bombs.
pub const MAX_BLOB_LEN: usize = 64 << 20;

/// `config`: plain JSON, identical on every destination.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    pub version: u32,
    /// Random repository id (hex).
    pub id: String,
    /// Every destination of the repository, in preference order.
    pub destinations: Vec<String>,
    /// How many destinations must hold an object before a write counts as done.
    pub quorum: usize,
    pub chunker: ChunkerParams,
    pub created: String,
    /// Which keys this repository's data is sealed with ([`crate::crypto::Keys::fingerprint`]):
    /// `open` uses only a key file holding them. Two `init`s racing for one destination each
    /// write a key file before one of them wins the config; without this, a third process
    /// opening in between could take the loser's key and seal what it writes with keys
    /// nobody else has. Absent in repositories made before it was added (then the first key
    /// file the password opens is used, as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
}

/// FastCDC (2020) sizes in bytes.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkerParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams {
            min: 512 * 1024,
            avg: 1024 * 1024,
            max: 8 * 1024 * 1024,
        }
    }
}

/// What a blob holds.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    Data,
    Tree,
}

impl BlobKind {
    fn code(self) -> u8 {
        match self {
            BlobKind::Data => 0,
            BlobKind::Tree => 1,
        }
    }
    fn from_code(c: u8) -> Option<BlobKind> {
        match c {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Tree),
            _ => None,
        }
    }
}

/// One blob inside a pack.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackedBlob {
    pub id: Id,
    pub kind: BlobKind,
    pub offset: u64,
    /// Sealed length in the pack.
    pub length: u32,
    /// Plaintext length (before compression and sealing).
    pub raw_length: u32,
}

const HEADER_ENTRY_LEN: usize = 1 + 4 + 4 + 32;

/// Encodes the pack trailer: sealed header followed by its length (u32 LE).
/// Header plaintext: for each blob, kind (u8), sealed length (u32 LE), plaintext length
/// (u32 LE), id (32 bytes).
pub fn encode_pack_trailer(keys: &Keys, blobs: &[PackedBlob]) -> Vec<u8> {
    let mut plain = Vec::with_capacity(blobs.len() * HEADER_ENTRY_LEN);
    for b in blobs {
        plain.push(b.kind.code());
        plain.extend_from_slice(&b.length.to_le_bytes());
        plain.extend_from_slice(&b.raw_length.to_le_bytes());
        plain.extend_from_slice(&b.id.0);
    }
    let mut sealed = keys.seal(&plain, b"pack-header");
    let len = sealed.len() as u32;
    sealed.extend_from_slice(&len.to_le_bytes());
    sealed
}

/// Reads the blob list back from a whole pack (used by verify and index rebuilds).
pub fn decode_pack_trailer(keys: &Keys, pack: &[u8]) -> Result<Vec<PackedBlob>> {
    let bad = |why: &str| Error::Corrupt(format!("pack trailer {why}"));
    if pack.len() < 4 {
        return Err(bad("missing"));
    }
    let len = u32::from_le_bytes(pack[pack.len() - 4..].try_into().unwrap()) as usize;
    if len + 4 > pack.len() {
        return Err(bad("length out of range"));
    }
    let sealed = &pack[pack.len() - 4 - len..pack.len() - 4];
    let plain = keys
        .open(sealed, b"pack-header")
        .ok_or_else(|| bad("fails authentication"))?;
    if plain.len() % HEADER_ENTRY_LEN != 0 {
        return Err(bad("has a partial entry"));
    }
    let mut offset = 0u64;
    let mut out = Vec::new();
    for e in plain.chunks(HEADER_ENTRY_LEN) {
        let kind = BlobKind::from_code(e[0]).ok_or_else(|| bad("has an unknown blob kind"))?;
        let length = u32::from_le_bytes(e[1..5].try_into().unwrap());
        let raw_length = u32::from_le_bytes(e[5..9].try_into().unwrap());
        let id = Id(e[9..41].try_into().unwrap());
        out.push(PackedBlob {
            id,
            kind,
            offset,
            length,
            raw_length,
        });
        offset += u64::from(length);
    }
    if offset as usize + len + 4 != pack.len() {
        return Err(bad("does not match the pack size"));
    }
    Ok(out)
}

/// `index/<id>`: which blobs live in which packs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IndexFile {
    pub version: u32,
    pub packs: Vec<IndexedPack>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IndexedPack {
    pub id: Id,
    pub size: u64,
    pub blobs: Vec<PackedBlob>,
}

/// File, directory or symbolic link.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
}

/// One entry of a directory in a snapshot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Node {
    /// One path component. Untrusted on read: restore validates it.
    pub name: String,
    pub kind: NodeKind,
    /// Unix permission bits (lower 12 bits of st_mode).
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
    #[serde(default)]
    pub size: u64,
    /// Change detection only (never restored).
    #[serde(default)]
    pub inode: u64,
    #[serde(default)]
    pub ctime_ns: i128,
    /// Data blob ids in order (files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Id>,
    /// Tree blob id (directories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
    /// Link target (symlinks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Numeric owner (format version 2); `None` when not recorded (version 1, or a writer
    /// that supplied none). Set-id bits are restored only along with the recorded owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Numeric group (format version 2), like `uid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// A directory listing, stored as a tree blob. Nodes are sorted by name.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

/// `snapshots/<id>`: one restore point.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    /// RFC 3339, UTC.
    pub time: String,
    pub host: String,
    pub paths: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub tree: Id,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    #[serde(default)]
    pub summary: BackupSummary,
}

/// Counters of one backup.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupSummary {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    pub files_unchanged: u64,
    pub new_blobs: u64,
    pub new_bytes_stored: u64,
    pub packs: u64,
}

/// Serializes a structure as sealed, compressed JSON bound to `aad`.
pub fn seal_json<T: Serialize>(keys: &Keys, value: &T, aad: &[u8]) -> Vec<u8> {
    keys.pack_payload(&serde_json::to_vec(value).expect("serializable"), aad)
}

/// Opens what [`seal_json`] produced.
pub fn open_json<T: for<'de> Deserialize<'de>>(
    keys: &Keys,
    sealed: &[u8],
    aad: &[u8],
    what: &str,
) -> Result<T> {
    let plain = keys
        .unpack_payload(sealed, aad, 1 << 30)
        .ok_or_else(|| Error::Corrupt(format!("{what} fails authentication")))?;
    serde_json::from_slice(&plain).map_err(|e| Error::Corrupt(format!("{what} is malformed: {e}")))
}

/// The current time as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}
