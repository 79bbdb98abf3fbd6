//! Opening and creating a repository, and reading what it holds: the key, the index of blobs,
//! trees, snapshots and segments. Writing data goes through `backup::SnapshotWriter`.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures::StreamExt;

use crate::backend::{Backend, BackendError};
use crate::crypto::{Id, KdfParams, KeyFile, KeyInfo, Keys};
use crate::destinations::{DestinationStatus, Destinations};
use crate::error::{Error, Result};
use crate::format::{
    BlobKind, ChunkerParams, Config, FORMAT_VERSION, IndexFile, MAX_BLOB_LEN, Snapshot, Tree,
    now_rfc3339, open_json, seal_json,
};

/// How to open or create a repository.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Where objects for unreachable destinations wait. Default: `$LIFEBOAT_SPOOL`, else
    /// `$XDG_CACHE_HOME/lifeboat/spool`, else `~/.cache/lifeboat/spool`.
    pub spool_dir: Option<PathBuf>,
    /// Password stretching for `init` (default: [`KdfParams::strong`]).
    pub kdf: Option<KdfParams>,
    /// S3 credentials; default: the `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` environment.
    pub s3_credentials: Option<S3Credentials>,
}

/// An access key for S3-compatible destinations. Never stored in the repository.
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Credentials({}, <secret>)", self.access_key_id)
    }
}

impl OpenOptions {
    pub(crate) fn spool(&self) -> PathBuf {
        if let Some(p) = &self.spool_dir {
            return p.clone();
        }
        if let Some(p) = std::env::var_os("LIFEBOAT_SPOOL") {
            return PathBuf::from(p);
        }
        if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
            return PathBuf::from(p).join("lifeboat/spool");
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        home.join(".cache/lifeboat/spool")
    }
}

/// Where a blob is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: Id,
    pub kind: BlobKind,
    pub offset: u64,
    pub length: u32,
    pub raw_length: u32,
}

/// The in-memory index: every blob the repository holds, by id.
#[derive(Default)]
pub struct Index {
    pub blobs: HashMap<Id, BlobLocation>,
    /// Pack id -> size, for every indexed pack.
    pub packs: HashMap<Id, u64>,
    /// Index objects loaded.
    pub files: Vec<Id>,
}

impl Index {
    pub(crate) fn add(&mut self, file: &IndexFile) {
        for p in &file.packs {
            self.packs.insert(p.id, p.size);
            for b in &p.blobs {
                self.blobs.insert(
                    b.id,
                    BlobLocation {
                        pack: p.id,
                        kind: b.kind,
                        offset: b.offset,
                        length: b.length,
                        raw_length: b.raw_length,
                    },
                );
            }
        }
    }
}

/// A snapshot with its id.
#[derive(Clone, Debug)]
pub struct SnapshotEntry {
    pub id: Id,
    pub snapshot: Snapshot,
}

/// An open repository.
pub struct Repository {
    pub(crate) config: Config,
    pub(crate) keys: Keys,
    /// The key file that opened it.
    pub(crate) key: KeyInfo,
    pub(crate) dests: Arc<Destinations>,
    pub(crate) index: RwLock<Index>,
    pub(crate) location: String,
    /// When `catch_up` last compared the destinations' listings.
    pub(crate) last_comparison: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How often `catch_up` compares listings at most.
const COMPARE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

pub(crate) fn pack_key(id: &Id) -> String {
    let h = id.to_hex();
    format!("data/{}/{}", &h[..2], h)
}

fn key_id(key: &str) -> Option<Id> {
    Id::from_hex(key.rsplit('/').next()?).ok()
}

impl Repository {
    /// Creates a repository on every destination in `urls` (the first is where it is opened
    /// from afterwards). Fails if any destination already holds one.
    pub async fn init<S: AsRef<str>>(
        urls: &[S],
        quorum: Option<usize>,
        password: &[u8],
        opts: &OpenOptions,
    ) -> Result<Repository> {
        if urls.is_empty() {
            return Err(Error::InvalidInput("give at least one --dest".into()));
        }
        // The password is all that protects the keys in `keys/`: restic refuses an empty one
        // too.
        if password.is_empty() {
            return Err(Error::EmptyPassword);
        }
        let urls = urls
            .iter()
            .map(|u| crate::backend::normalize_url(u.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        for url in &urls {
            match Backend::open(url, opts.s3_credentials.as_ref())?
                .get("config")
                .await
            {
                Ok(_) => {
                    return Err(Error::AlreadyExists {
                        location: url.clone(),
                    });
                }
                Err(BackendError::NotFound) => {}
                Err(e) => {
                    return Err(Error::Destination {
                        location: url.clone(),
                        action: "checking for an existing repository at",
                        key: "config".into(),
                        detail: e.to_string(),
                    });
                }
            }
        }
        let config = Config {
            version: FORMAT_VERSION,
            id: hex::encode(crate::crypto::random_bytes::<16>()),
            destinations: urls.clone(),
            quorum: quorum.unwrap_or(urls.len()).clamp(1, urls.len()),
            chunker: ChunkerParams::default(),
            created: now_rfc3339(),
            key_fingerprint: None,
        };
        let keys = Keys::generate();
        let config = Config {
            key_fingerprint: Some(keys.fingerprint()),
            ..config
        };
        let kdf = opts.kdf.unwrap_or_else(KdfParams::strong);
        let keyfile = keys.wrap(password, kdf, now_rfc3339())?;
        let keybytes = serde_json::to_vec_pretty(&keyfile).expect("serializes");
        let key = KeyInfo::new(format!("keys/{}", Id::of_object(&keybytes)), kdf);
        let dests = Destinations::open(&urls, &urls[0], config.quorum, opts, &config.id)?;
        // The key first, the config last: a crash in between leaves no config, so the
        // destination still counts as empty and init can simply be run again.
        dests.put(&key.key, Bytes::from(keybytes)).await?;
        // Two `init`s racing for the same destinations (two nodes of a site started at once)
        // must not both win: the config is created only if it is not there yet, on the first
        // destination, and the loser takes its key away again (it would open nothing).
        let config_bytes = Bytes::from(serde_json::to_vec_pretty(&config).expect("serializes"));
        if !dests
            .put_new_on_first("config", config_bytes.clone())
            .await?
        {
            let _ = dests.delete(&key.key).await;
            return Err(Error::AlreadyExists {
                location: urls[0].clone(),
            });
        }
        dests.put("config", config_bytes).await?;
        dests.record_session_end();
        Ok(Repository {
            location: urls[0].clone(),
            config,
            keys,
            key,
            dests: Arc::new(dests),
            index: RwLock::new(Index::default()),
            last_comparison: Default::default(),
        })
    }

    /// Opens the repository one of whose destinations is `url`, with `password`, sends what
    /// the spool holds for destinations that are back, and loads the index.
    pub async fn open(url: &str, password: &[u8], opts: &OpenOptions) -> Result<Repository> {
        let url = crate::backend::normalize_url(url)?;
        let backend = Backend::open(&url, opts.s3_credentials.as_ref())?;
        let raw = match backend.get("config").await {
            Ok(b) => b,
            Err(BackendError::NotFound) => {
                return Err(Error::MissingRepository {
                    location: url,
                    detail: "it has no config object".into(),
                });
            }
            Err(e) => {
                return Err(Error::MissingRepository {
                    location: url,
                    detail: format!("cannot read it: {e}"),
                });
            }
        };
        #[derive(serde::Deserialize)]
        struct VersionOnly {
            version: u32,
        }
        let v: VersionOnly =
            serde_json::from_slice(&raw).map_err(|e| Error::MissingRepository {
                location: url.clone(),
                detail: format!("its config is not a lifeboat repository config ({e})"),
            })?;
        if v.version > FORMAT_VERSION {
            return Err(Error::NewerFormat {
                location: url,
                found: v.version,
                supported: FORMAT_VERSION,
            });
        }
        let config: Config = serde_json::from_slice(&raw)
            .map_err(|e| Error::Corrupt(format!("config at {url} is malformed: {e}")))?;
        let mut urls = config.destinations.clone();
        if !urls.contains(&url) {
            urls.insert(0, url.clone());
        }
        let dests = Destinations::open(&urls, &url, config.quorum, opts, &config.id)?;
        let (keys, key) = unlock(
            &backend,
            &dests,
            &url,
            password,
            config.key_fingerprint.as_deref(),
        )
        .await?;
        let repo = Repository {
            location: url,
            config,
            keys,
            key,
            dests: Arc::new(dests),
            index: RwLock::new(Index::default()),
            last_comparison: Default::default(),
        };
        repo.dests.catch_up().await;
        repo.reload_index().await?;
        Ok(repo)
    }

    /// The repository's config (destinations, quorum, chunker).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A key for another purpose derived from this repository's key (see
    /// [`crate::crypto::Keys::derive`]): every holder of the vault key derives the same one.
    pub fn derive_key(&self, context: &str) -> [u8; 32] {
        self.keys.derive(context)
    }

    /// The key file that opened this repository, and whether it is weakly wrapped.
    pub fn key(&self) -> &KeyInfo {
        &self.key
    }

    /// The destination this repository was opened from.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Reads every index object (from any destination) into memory.
    pub async fn reload_index(&self) -> Result<()> {
        let listed = self.dests.list("index").await?;
        let files: Vec<Result<(Id, IndexFile)>> = futures::stream::iter(listed)
            .map(|o| async move {
                let id = key_id(&o.key)
                    .ok_or_else(|| Error::Corrupt(format!("odd index name {}", o.key)))?;
                let f: IndexFile = self.read_object(&o.key, id, b"index", "index").await?;
                Ok((id, f))
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let mut index = Index::default();
        for f in files {
            let (id, file) = f?;
            index.add(&file);
            index.files.push(id);
        }
        *self.index.write().unwrap() = index;
        Ok(())
    }

    /// Reads a sealed JSON object named by the hash of its bytes.
    pub(crate) async fn read_object<T: for<'de> serde::Deserialize<'de>>(
        &self,
        key: &str,
        id: Id,
        aad: &[u8],
        what: &str,
    ) -> Result<T> {
        let bytes = self.dests.get(key, |b| Id::of_object(b) == id).await?;
        open_json(&self.keys, &bytes, aad, &format!("{what} {key}"))
    }

    /// Writes a sealed JSON object under `dir/<hash>`; returns its id.
    pub(crate) async fn write_object<T: serde::Serialize>(
        &self,
        dir: &str,
        value: &T,
        aad: &[u8],
    ) -> Result<Id> {
        let sealed = seal_json(&self.keys, value, aad);
        let id = Id::of_object(&sealed);
        self.dests
            .put(&format!("{dir}/{id}"), Bytes::from(sealed))
            .await?;
        Ok(id)
    }

    /// Reads one blob and checks that its content has the id it is stored under.
    pub async fn read_blob(&self, id: &Id) -> Result<Vec<u8>> {
        let loc = self
            .index
            .read()
            .unwrap()
            .blobs
            .get(id)
            .copied()
            .ok_or_else(|| {
                Error::Corrupt(format!("blob {id:?} is referenced but not in any index"))
            })?;
        let keys = &self.keys;
        // The check keeps what it opened, so the blob is decrypted once.
        let plain = std::sync::Mutex::new(None);
        self.dests
            .get_range(
                &pack_key(&loc.pack),
                loc.offset,
                u64::from(loc.length),
                |b| match keys.unpack_payload(b, b"", MAX_BLOB_LEN) {
                    Some(p) if keys.blob_id(&p) == *id => {
                        *plain.lock().unwrap() = Some(p);
                        true
                    }
                    _ => false,
                },
            )
            .await?;
        Ok(plain
            .into_inner()
            .unwrap()
            .expect("get_range returns only checked bytes"))
    }

    /// Reads a directory listing.
    pub async fn read_tree(&self, id: &Id) -> Result<Tree> {
        let bytes = self.read_blob(id).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Corrupt(format!("tree {id:?} is malformed: {e}")))
    }

    /// Every snapshot, oldest first.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotEntry>> {
        let listed = self.dests.list("snapshots").await?;
        let mut out = Vec::new();
        for o in listed {
            let Some(id) = key_id(&o.key) else { continue };
            let snapshot: Snapshot = self
                .read_object(&o.key, id, b"snapshot", "snapshot")
                .await?;
            out.push(SnapshotEntry { id, snapshot });
        }
        out.sort_by(|a, b| a.snapshot.time.cmp(&b.snapshot.time).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Finds a snapshot by id prefix, or `latest`.
    pub async fn find_snapshot(&self, spec: &str) -> Result<SnapshotEntry> {
        let all = self.snapshots().await?;
        if spec == "latest" {
            return all
                .into_iter()
                .next_back()
                .ok_or_else(|| Error::NoSuchSnapshot(spec.into()));
        }
        let mut matches: Vec<_> = all
            .into_iter()
            .filter(|s| s.id.to_hex().starts_with(spec))
            .collect();
        match matches.len() {
            0 => Err(Error::NoSuchSnapshot(spec.into())),
            1 => Ok(matches.pop().unwrap()),
            _ => Err(Error::AmbiguousSnapshot(spec.into())),
        }
    }

    /// Removes a snapshot (its data stays until `prune`).
    pub async fn forget_snapshot(&self, id: &Id) -> Result<()> {
        self.dests.delete(&format!("snapshots/{id}")).await
    }

    /// Stores a small named blob: segment `seq` of `stream` (e.g. a log segment of a live
    /// site between checkpoints). Sealed, bound to its name, written with the same quorum
    /// and spool rules as everything else.
    pub async fn put_segment(&self, stream: &str, seq: u64, data: &[u8]) -> Result<()> {
        let key = segment_key(stream, seq)?;
        let sealed = self.keys.pack_payload(data, key.as_bytes());
        self.dests.put(&key, Bytes::from(sealed)).await
    }

    /// Reads segment `seq` of `stream`, checked against tampering and swapping.
    pub async fn get_segment(&self, stream: &str, seq: u64) -> Result<Vec<u8>> {
        let key = segment_key(stream, seq)?;
        let keys = &self.keys;
        let aad = key.as_bytes();
        let bytes = self
            .dests
            .get(&key, |b| keys.unpack_payload(b, aad, 1 << 30).is_some())
            .await?;
        Ok(keys
            .unpack_payload(&bytes, aad, 1 << 30)
            .expect("checked above"))
    }

    /// Sequence numbers of the segments of `stream`, ascending.
    pub async fn list_segments(&self, stream: &str) -> Result<Vec<u64>> {
        segment_key(stream, 0)?;
        let mut seqs: Vec<u64> = self
            .dests
            .list(&format!("segments/{stream}"))
            .await?
            .into_iter()
            .filter_map(|o| o.key.rsplit('/').next()?.parse().ok())
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        Ok(seqs)
    }

    /// Deletes segments of `stream` below `seq` (after a checkpoint made them redundant).
    pub async fn delete_segments_before(&self, stream: &str, seq: u64) -> Result<()> {
        for s in self.list_segments(stream).await? {
            if s < seq {
                self.dests.delete(&segment_key(stream, s)?).await?;
            }
        }
        Ok(())
    }

    /// Reachability and lag of every destination.
    pub async fn status(&self) -> Vec<DestinationStatus> {
        self.dests.status().await
    }

    /// Per destination what this process knows without asking it (reachable unless the
    /// last write failed; what waits in the spool). Never blocks on a destination.
    pub fn status_known(&self) -> Vec<DestinationStatus> {
        self.dests.status_known()
    }

    /// Sends spooled objects to destinations that are back, then compares the listings of
    /// the destinations and copies to each what it lacks (what a lost spool or a destination
    /// restored from an old copy left missing; damaged copies are never spread). The
    /// comparison lists every object, so it runs at most every ten minutes per open
    /// repository, and under a shared lock so that no prune deletes meanwhile (while one
    /// runs, it waits for a later call). Returns the destinations still behind, with why.
    pub async fn catch_up(&self) -> Vec<(String, String)> {
        let mut behind = self.dests.catch_up().await;
        let due = self.dests.urls().len() > 1
            && self
                .last_comparison
                .lock()
                .unwrap()
                .is_none_or(|at| at.elapsed() >= COMPARE_EVERY);
        if due
            && let Ok(lock) = self
                .lock(crate::lock::LockKind::Shared, std::time::Duration::ZERO)
                .await
        {
            for (url, why) in self.dests.copy_missing().await {
                if !behind.iter().any(|(u, _)| *u == url) {
                    behind.push((url, why));
                }
            }
            lock.release().await;
            *self.last_comparison.lock().unwrap() = Some(std::time::Instant::now());
        }
        self.dests.record_session_end();
        behind
    }

    /// Marks the end of a session (updates each destination's last success).
    pub fn close(&self) {
        self.dests.record_session_end();
    }
}

/// Opens the repository's keys with `password`. Key files are named by the hash of their
/// bytes, so a damaged copy is recognised as such and read from another destination; only when
/// every key file is intact and none opens is the password wrong.
async fn unlock(
    backend: &Backend,
    dests: &Destinations,
    url: &str,
    password: &[u8],
    fingerprint: Option<&str>,
) -> Result<(Keys, KeyInfo)> {
    let mut keyfiles = backend.list("keys").await.map_err(|e| Error::Destination {
        location: url.to_string(),
        action: "listing",
        key: "keys/".into(),
        detail: e.to_string(),
    })?;
    if keyfiles.is_empty() {
        // This destination lost its keys (an incomplete copy, a deletion by hand): the
        // others hold the same ones.
        keyfiles = dests.list("keys").await.unwrap_or_default();
    }
    if keyfiles.is_empty() {
        return Err(Error::DamagedKey {
            location: url.to_string(),
            key: "keys/".into(),
            detail: "it holds no key file".into(),
        });
    }
    let mut damaged = None;
    let mut foreign = None;
    for kf in keyfiles {
        match open_key_file(dests, &kf.key, password).await {
            // A key file of an init that lost the race for the config (it is being taken
            // away): its keys are not this repository's.
            Ok(Some((keys, _))) if fingerprint.is_some_and(|f| f != keys.fingerprint()) => {
                foreign.get_or_insert(kf.key);
            }
            Ok(Some(found)) => return Ok(found),
            Ok(None) => {}
            Err(detail) => {
                damaged.get_or_insert((kf.key, detail));
            }
        }
    }
    if let (None, Some(key)) = (&damaged, foreign) {
        return Err(Error::DamagedKey {
            location: url.to_string(),
            key,
            detail: "the password opens only a key that is not the one this repository's config names (left by an init that lost a race to create the repository); the repository's own key file is missing: restore keys/ from another destination or a copy".into(),
        });
    }
    match damaged {
        // The damaged file may be the one this password opens.
        Some((key, detail)) => Err(Error::DamagedKey {
            location: url.to_string(),
            key,
            detail,
        }),
        None => Err(Error::WrongPassword {
            location: url.to_string(),
        }),
    }
}

/// One key file, read from the first destination holding an intact copy: `Ok(None)` when the
/// password does not open it, `Err` saying how it is damaged.
async fn open_key_file(
    dests: &Destinations,
    key: &str,
    password: &[u8],
) -> std::result::Result<Option<(Keys, KeyInfo)>, String> {
    let id = key_id(key).ok_or("its name is not a key id")?;
    let bytes = dests
        .get(key, |b| Id::of_object(b) == id)
        .await
        .map_err(|e| match e {
            Error::Unreadable { detail, .. } => {
                format!("its content does not match its name: {detail}")
            }
            other => other.to_string(),
        })?;
    let file: KeyFile =
        serde_json::from_slice(&bytes).map_err(|e| format!("it is not a key file: {e}"))?;
    Ok(Keys::unwrap(&file, password)?.map(|keys| (keys, KeyInfo::new(key.into(), file.params))))
}

fn segment_key(stream: &str, seq: u64) -> Result<String> {
    if stream.is_empty()
        || !stream
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        || stream.starts_with('.')
    {
        return Err(Error::InvalidInput(format!(
            "segment stream name {stream:?} must be letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(format!("segments/{stream}/{seq:020}"))
}
