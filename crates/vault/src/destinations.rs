//! The set of destinations of one repository, written to as one: every object goes to every
//! destination; a write counts as done when `quorum` of them have it. A destination that fails
//! is marked down for the rest of the session and everything it misses goes to the local spool
//! (`<spool>/<destination>/<key>`), which `catch_up` sends later, data before indexes before
//! snapshots, so a destination never holds a snapshot whose data it lacks. Reads try the
//! destinations in preference order and check each object before trusting it.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendError, ObjectInfo, write_durably};
use crate::error::{Error, Result};
use crate::format::now_rfc3339;

/// One destination and what this session knows about it.
pub struct Destination {
    pub url: String,
    backend: Backend,
    down: Mutex<Option<String>>,
    spool: PathBuf,
}

/// What `status` reports per destination.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DestinationStatus {
    pub url: String,
    pub reachable: bool,
    /// Objects waiting in the local spool for this destination.
    pub objects_behind: u64,
    /// Their bytes.
    #[serde(default)]
    pub bytes_behind: u64,
    pub last_success: Option<String>,
    pub last_error: Option<String>,
}

#[derive(Default, Serialize, Deserialize)]
struct SpoolState {
    last_success: Option<String>,
    last_error: Option<String>,
}

/// All destinations of a repository.
pub struct Destinations {
    list: Vec<Destination>,
    quorum: usize,
}

fn slug(url: &str) -> String {
    let clean: String = url
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let tail = &clean[clean.len().saturating_sub(40)..];
    format!("{}-{}", &blake3::hash(url.as_bytes()).to_hex()[..12], tail)
}

/// Order in which spooled objects are sent: data, then indexes, then everything that refers
/// to them.
fn send_order(key: &str) -> u8 {
    if key.starts_with("data/") {
        0
    } else if key.starts_with("index/") {
        1
    } else if key.starts_with("keys/") || key == "config" {
        2
    } else {
        3
    }
}

impl Destinations {
    /// Opens every destination. `preferred` (the one the user named) is read first.
    pub fn open(
        urls: &[String],
        preferred: &str,
        quorum: usize,
        opts: &crate::repo::OpenOptions,
        repo_id: &str,
    ) -> Result<Destinations> {
        let spool_root = opts.spool();
        // Repositories made before files were private get closed to other users on their
        // next use (never refused for it); so does this repository's part of the spool.
        tighten_dir(&spool_root.join(repo_id));
        let mut list = Vec::new();
        for url in urls {
            let backend = Backend::open(url, opts.s3_credentials.as_ref())?;
            backend.make_private();
            list.push(Destination {
                url: url.clone(),
                backend,
                down: Mutex::new(None),
                spool: spool_root.join(repo_id).join(slug(url)),
            });
        }
        list.sort_by_key(|d| d.url != preferred);
        let quorum = quorum.clamp(1, list.len().max(1));
        Ok(Destinations { list, quorum })
    }

    pub fn urls(&self) -> Vec<String> {
        self.list.iter().map(|d| d.url.clone()).collect()
    }

    fn mark_down(&self, d: &Destination, why: &str) {
        *d.down.lock().unwrap() = Some(why.to_string());
        let _ = d.save_state(|s| s.last_error = Some(format!("{}: {why}", now_rfc3339())));
    }

    /// Writes `bytes` under `key` to every destination (spooling for those that are down).
    /// Ok means at least `quorum` destinations have it durably.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        let futs = self.list.iter().map(|d| {
            let bytes = bytes.clone();
            async move {
                if let Some(why) = d.down.lock().unwrap().clone() {
                    return Err(why);
                }
                d.backend.put(key, bytes).await.map_err(|e| e.to_string())
            }
        });
        let results = futures::future::join_all(futs).await;
        let mut ok = 0;
        let mut failed = Vec::new();
        for (d, r) in self.list.iter().zip(results) {
            match r {
                Ok(()) => ok += 1,
                Err(why) => {
                    if d.down.lock().unwrap().is_none() {
                        self.mark_down(d, &why);
                    }
                    write_durably(&d.spool.join(key), &bytes).map_err(|e| Error::Io {
                        action: "spooling an object for a destination that is down, at",
                        path: d.spool.join(key),
                        source: e,
                    })?;
                    failed.push(format!("{} ({why})", d.url));
                }
            }
        }
        if ok < self.quorum {
            return Err(Error::QuorumNotReached {
                key: key.into(),
                succeeded: ok,
                needed: self.quorum,
                failed: failed.join(", "),
            });
        }
        Ok(())
    }

    /// Writes `key` to the first destination only if nothing is there yet: `Ok(false)` when
    /// something was (another writer got there first). The first destination decides a race
    /// between two writers; [`Destinations::put`] then copies it to the others.
    pub async fn put_new_on_first(&self, key: &str, bytes: Bytes) -> Result<bool> {
        let first = &self.list[0];
        match first.backend.put_new(key, bytes).await {
            Ok(()) => Ok(true),
            Err(BackendError::Exists) => Ok(false),
            Err(e) => Err(Error::Destination {
                location: first.url.clone(),
                action: "writing",
                key: key.into(),
                detail: e.to_string(),
            }),
        }
    }

    /// Reads `key`, trying each destination until one returns bytes that `check` accepts.
    /// Falls back to spooled copies. Damaged copies are reported in the error if none is good.
    pub async fn get(&self, key: &str, check: impl Fn(&[u8]) -> bool) -> Result<Bytes> {
        let mut problems = Vec::new();
        for d in &self.list {
            if d.down.lock().unwrap().is_some() {
                continue;
            }
            match d.backend.get(key).await {
                Ok(b) if check(&b) => return Ok(b),
                Ok(_) => problems.push(format!("damaged on {}", d.url)),
                Err(BackendError::NotFound) => problems.push(format!("missing on {}", d.url)),
                Err(e) => problems.push(format!("{}: {e}", d.url)),
            }
        }
        for d in &self.list {
            if let Ok(b) = std::fs::read(d.spool.join(key))
                && check(&b)
            {
                return Ok(Bytes::from(b));
            }
        }
        Err(Error::Unreadable {
            key: key.into(),
            detail: problems.join("; "),
        })
    }

    /// Reads a byte range of `key`, trying each destination until `check` accepts the bytes.
    pub async fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        check: impl Fn(&[u8]) -> bool,
    ) -> Result<Bytes> {
        let mut problems = Vec::new();
        for d in &self.list {
            if d.down.lock().unwrap().is_some() {
                continue;
            }
            match d.backend.get_range(key, offset, len).await {
                Ok(b) if check(&b) => return Ok(b),
                Ok(_) => problems.push(format!("damaged on {}", d.url)),
                Err(e) => problems.push(format!("{}: {e}", d.url)),
            }
        }
        for d in &self.list {
            if let Ok(b) = std::fs::read(d.spool.join(key)) {
                let (s, e) = (offset as usize, (offset + len) as usize);
                if e <= b.len() && check(&b[s..e]) {
                    return Ok(Bytes::copy_from_slice(&b[s..e]));
                }
            }
        }
        Err(Error::Unreadable {
            key: key.into(),
            detail: problems.join("; "),
        })
    }

    /// Reads a byte range of `key` from the first destination (then spooled copy) that can
    /// serve it, unchecked and owned: the caller checks every part it uses and reads parts
    /// that fail again with [`Destinations::get_range`], which tries the other copies.
    pub async fn get_range_first(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let mut problems = Vec::new();
        for d in &self.list {
            if d.down.lock().unwrap().is_some() {
                continue;
            }
            match d.backend.get_range(key, offset, len).await {
                Ok(b) if b.len() as u64 == len => return Ok(Vec::from(b)),
                Ok(b) => problems.push(format!("{} bytes instead of {len} on {}", b.len(), d.url)),
                Err(e) => problems.push(format!("{}: {e}", d.url)),
            }
        }
        for d in &self.list {
            if let Ok(b) = std::fs::read(d.spool.join(key)) {
                let (s, e) = (offset as usize, (offset + len) as usize);
                if e <= b.len() {
                    return Ok(b[s..e].to_vec());
                }
            }
        }
        Err(Error::Unreadable {
            key: key.into(),
            detail: problems.join("; "),
        })
    }

    /// Writes `key` to every reachable destination, best effort, without spooling (locks).
    pub async fn put_reachable(&self, key: &str, bytes: Bytes) -> Result<()> {
        let mut ok = 0;
        let mut errors = Vec::new();
        for d in &self.list {
            if d.down.lock().unwrap().is_some() {
                continue;
            }
            match d.backend.put(key, bytes.clone()).await {
                Ok(()) => ok += 1,
                Err(e) => {
                    errors.push(format!("{}: {e}", d.url));
                    self.mark_down(d, &e.to_string());
                }
            }
        }
        if ok == 0 {
            return Err(Error::Destination {
                location: self.urls().join(", "),
                action: "writing",
                key: key.into(),
                detail: errors.join("; "),
            });
        }
        Ok(())
    }

    /// Deletes `key` from every reachable destination, best effort (locks).
    pub async fn delete_reachable(&self, key: &str) {
        for d in &self.list {
            if d.down.lock().unwrap().is_none() {
                let _ = d.backend.delete(key).await;
            }
        }
    }

    /// Reads `key` from one destination only (verify per destination).
    pub async fn get_from(&self, url: &str, key: &str) -> std::result::Result<Bytes, BackendError> {
        let d = self
            .list
            .iter()
            .find(|d| d.url == url)
            .expect("known destination");
        d.backend.get(key).await
    }

    /// Keys under `dir` on one destination.
    pub async fn list_on(
        &self,
        url: &str,
        dir: &str,
    ) -> std::result::Result<Vec<ObjectInfo>, BackendError> {
        let d = self
            .list
            .iter()
            .find(|d| d.url == url)
            .expect("known destination");
        d.backend.list(dir).await
    }

    /// The union of keys under `dir` over every reachable destination.
    pub async fn list(&self, dir: &str) -> Result<Vec<ObjectInfo>> {
        let mut out = std::collections::BTreeMap::new();
        let mut reached = 0;
        let mut errors = Vec::new();
        for d in &self.list {
            if d.down.lock().unwrap().is_some() {
                continue;
            }
            match d.backend.list(dir).await {
                Ok(keys) => {
                    reached += 1;
                    for o in keys {
                        out.entry(o.key.clone()).or_insert(o);
                    }
                }
                Err(e) => {
                    errors.push(format!("{}: {e}", d.url));
                    self.mark_down(d, &e.to_string());
                }
            }
        }
        if reached == 0 {
            return Err(Error::Destination {
                location: self.urls().join(", "),
                action: "listing",
                key: dir.into(),
                detail: errors.join("; "),
            });
        }
        Ok(out.into_values().collect())
    }

    /// Deletes `key` everywhere. Prune calls this only when every destination is reachable.
    pub async fn delete(&self, key: &str) -> Result<()> {
        for d in &self.list {
            d.backend
                .delete(key)
                .await
                .map_err(|e| Error::Destination {
                    location: d.url.clone(),
                    action: "deleting",
                    key: key.into(),
                    detail: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// Sends spooled objects to destinations that are back. Returns, per destination that is
    /// still behind, why.
    pub async fn catch_up(&self) -> Vec<(String, String)> {
        let mut behind = Vec::new();
        for d in &self.list {
            let mut keys = spooled_keys(&d.spool);
            if keys.is_empty() {
                continue;
            }
            keys.sort_by_key(|k| (send_order(k), k.clone()));
            // Probe first, so a destination that is still down costs one request.
            if let Err(e) = d.backend.list("config-probe").await {
                self.mark_down(d, &e.to_string());
                behind.push((d.url.clone(), e.to_string()));
                continue;
            }
            *d.down.lock().unwrap() = None;
            for key in keys {
                let path = d.spool.join(&key);
                let Ok(bytes) = std::fs::read(&path) else {
                    continue;
                };
                match d.backend.put(&key, Bytes::from(bytes)).await {
                    Ok(()) => {
                        let _ = std::fs::remove_file(&path);
                    }
                    Err(e) => {
                        self.mark_down(d, &e.to_string());
                        behind.push((d.url.clone(), e.to_string()));
                        break;
                    }
                }
            }
        }
        behind
    }

    /// Compares the listings of every reachable destination and copies to each one what
    /// another has and it lacks: what a lost spool, a destination restored from an old copy or
    /// an object deleted by hand left missing. Copies go data first, then indexes, then what
    /// refers to them, and stop at a destination's first failed write, so a destination never
    /// gets a snapshot before its data. Objects named by their hash are checked before they
    /// are copied; a damaged copy is never spread. Locks and the config are not compared.
    /// Returns, per destination still behind, why.
    pub async fn copy_missing(&self) -> Vec<(String, String)> {
        let mut behind = Vec::new();
        let mut listed: Vec<Option<BTreeSet<String>>> = Vec::new();
        for d in &self.list {
            if d.down.lock().unwrap().is_some() {
                listed.push(None);
                continue;
            }
            let mut keys = BTreeSet::new();
            let mut failed = None;
            for dir in COMPARED_DIRS {
                match d.backend.list(dir).await {
                    Ok(objects) => keys.extend(objects.into_iter().map(|o| o.key)),
                    Err(e) => {
                        failed = Some(e.to_string());
                        break;
                    }
                }
            }
            if let Some(why) = failed {
                self.mark_down(d, &why);
                behind.push((d.url.clone(), why));
                listed.push(None);
            } else {
                listed.push(Some(keys));
            }
        }
        let union: BTreeSet<&String> = listed.iter().flatten().flatten().collect();
        for (i, d) in self.list.iter().enumerate() {
            let Some(have) = &listed[i] else { continue };
            let mut missing: Vec<&String> = union
                .iter()
                .copied()
                .filter(|k| !have.contains(*k))
                .collect();
            missing.sort_by_key(|k| (send_order(k), k.as_str()));
            let mut no_good_copy = Vec::new();
            for key in missing {
                let mut copy = None;
                for (j, source) in self.list.iter().enumerate() {
                    if j == i || !listed[j].as_ref().is_some_and(|l| l.contains(key)) {
                        continue;
                    }
                    if let Ok(b) = source.backend.get(key).await
                        && intact(key, &b)
                    {
                        copy = Some(b);
                        break;
                    }
                }
                let Some(bytes) = copy else {
                    no_good_copy.push(key.clone());
                    continue;
                };
                if let Err(e) = d.backend.put(key, bytes).await {
                    self.mark_down(d, &e.to_string());
                    behind.push((d.url.clone(), e.to_string()));
                    break;
                }
            }
            if let Some(first) = no_good_copy.first() {
                behind.push((
                    d.url.clone(),
                    format!(
                        "{} object(s) it lacks have no intact copy on any destination (first: {first}); run `lifeboat vault verify --read-data`",
                        no_good_copy.len()
                    ),
                ));
            }
        }
        behind
    }

    /// Records the end of a session: destinations that took every write get a fresh
    /// `last_success`.
    pub fn record_session_end(&self) {
        for d in &self.list {
            if d.down.lock().unwrap().is_none() && spooled_keys(&d.spool).is_empty() {
                let _ = d.save_state(|s| s.last_success = Some(now_rfc3339()));
            }
        }
    }

    /// Whether every destination is reachable with nothing spooled; else the first that is not.
    pub async fn require_all(&self, operation: &'static str) -> Result<()> {
        for d in &self.list {
            let detail = if let Some(why) = d.down.lock().unwrap().clone() {
                Some(why)
            } else if !spooled_keys(&d.spool).is_empty() {
                Some("it still has objects in the local spool".to_string())
            } else {
                d.backend
                    .list("config-probe")
                    .await
                    .err()
                    .map(|e| e.to_string())
            };
            if let Some(detail) = detail {
                return Err(Error::DestinationNeeded {
                    operation,
                    location: d.url.clone(),
                    detail,
                });
            }
        }
        Ok(())
    }

    /// Reachability, lag and history of every destination (probes each one).
    pub async fn status(&self) -> Vec<DestinationStatus> {
        let mut out = Vec::new();
        for d in &self.list {
            let probe = d.backend.list("config-probe").await;
            let state = d.load_state();
            let (objects_behind, bytes_behind) = spool_size(&d.spool);
            out.push(DestinationStatus {
                url: d.url.clone(),
                reachable: probe.is_ok(),
                objects_behind,
                bytes_behind,
                last_success: state.last_success,
                last_error: match probe {
                    Err(e) => Some(e.to_string()),
                    Ok(_) => state.last_error,
                },
            });
        }
        out
    }

    /// Like [`Destinations::status`] without asking the destinations: reachable unless the
    /// last write to it failed (cheap enough for a status line polled often).
    pub fn status_known(&self) -> Vec<DestinationStatus> {
        self.list
            .iter()
            .map(|d| {
                let state = d.load_state();
                let down = d.down.lock().unwrap().clone();
                let (objects_behind, bytes_behind) = spool_size(&d.spool);
                DestinationStatus {
                    url: d.url.clone(),
                    reachable: down.is_none(),
                    objects_behind,
                    bytes_behind,
                    last_success: state.last_success,
                    last_error: down.or(state.last_error),
                }
            })
            .collect()
    }
}

impl Destination {
    fn state_path(&self) -> PathBuf {
        self.spool.with_extension("state.json")
    }
    fn load_state(&self) -> SpoolState {
        std::fs::read(self.state_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
    fn save_state(&self, f: impl FnOnce(&mut SpoolState)) -> std::io::Result<()> {
        let mut s = self.load_state();
        f(&mut s);
        write_durably(
            &self.state_path(),
            &serde_json::to_vec(&s).expect("serializes"),
        )
    }
}

/// What [`Destinations::copy_missing`] compares (everything but locks and the config).
const COMPARED_DIRS: [&str; 5] = ["data", "index", "keys", "snapshots", "segments"];

/// Whether a copy of `key` is intact: objects named by the BLAKE3 of their bytes must match
/// their name. Segments are sealed and bound to their name; their readers check them.
fn intact(key: &str, bytes: &[u8]) -> bool {
    if key.starts_with("segments/") {
        return true;
    }
    key.rsplit('/')
        .next()
        .and_then(|name| crate::crypto::Id::from_hex(name).ok())
        .is_some_and(|id| crate::crypto::Id::of_object(bytes) == id)
}

/// Clears the group and other bits of an existing directory, best effort (see
/// [`Backend::make_private`]).
fn tighten_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::symlink_metadata(dir)
        && m.is_dir()
        && m.permissions().mode() & 0o077 != 0
    {
        let mode = m.permissions().mode() & 0o7700;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode));
    }
}

/// Objects and bytes waiting in a destination's spool.
fn spool_size(dir: &Path) -> (u64, u64) {
    let keys = spooled_keys(dir);
    let bytes = keys
        .iter()
        .filter_map(|k| std::fs::metadata(dir.join(k)).ok())
        .map(|m| m.len())
        .sum();
    (keys.len() as u64, bytes)
}

fn spooled_keys(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if !e.file_name().to_string_lossy().starts_with(".tmp-") {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spooled_objects_are_sent_data_first_and_snapshots_last() {
        let mut keys = [
            "snapshots/aa",
            "index/bb",
            "data/cc/cc",
            "config",
            "keys/dd",
            "segments/wal/01",
        ];
        keys.sort_by_key(|k| send_order(k));
        assert_eq!(keys[0], "data/cc/cc");
        assert_eq!(keys[1], "index/bb");
        assert!(keys.iter().position(|k| *k == "snapshots/aa").unwrap() > 3);
    }

    #[test]
    fn each_destination_has_its_own_spool_directory() {
        assert_ne!(slug("/srv/a"), slug("/srv/b"));
        assert_ne!(
            slug("s3://x/y?endpoint=http://h:1"),
            slug("s3://x/y?endpoint=http://h:2")
        );
        assert!(!slug("s3://x/../../y").contains('/'));
    }
}
