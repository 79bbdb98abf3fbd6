//! One destination's raw object storage: put, get, list, delete by key (`data/ab/abcd…`).
//! A local directory is written with our own code so that every object is fsynced before it is
//! renamed into place (object_store's local backend does not fsync), and so that it is private
//! to its owner (directories 0700, files 0600): `keys/` holds the password-wrapped key, which a
//! local user who could copy it would attack offline. S3-compatible stores go through
//! `object_store`. Nothing here knows about encryption or quorum.
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path as StorePath;

use crate::error::{Error, Result};

/// Where a destination lives.
#[derive(Clone)]
pub enum Backend {
    Local(PathBuf),
    Store {
        store: Arc<dyn ObjectStore>,
        prefix: String,
    },
}

/// Why a backend call failed: the object is absent, or the destination had a problem.
#[derive(Debug)]
pub enum BackendError {
    NotFound,
    /// [`Backend::put_new`]: something is at the key already.
    Exists,
    Other(String),
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendError::NotFound => f.write_str("not found"),
            BackendError::Exists => f.write_str("already exists"),
            BackendError::Other(s) => f.write_str(s),
        }
    }
}

type BResult<T> = std::result::Result<T, BackendError>;

fn io_err(e: std::io::Error) -> BackendError {
    if e.kind() == std::io::ErrorKind::NotFound {
        BackendError::NotFound
    } else {
        BackendError::Other(e.to_string())
    }
}

fn store_err(e: object_store::Error) -> BackendError {
    match e {
        object_store::Error::NotFound { .. } => BackendError::NotFound,
        other => BackendError::Other(other.to_string()),
    }
}

/// Normalizes a user-given destination to the form stored in the config: an absolute local
/// path, or an `s3://bucket/prefix[?endpoint=…&region=…&allow_http=true]` URL.
pub fn normalize_url(url: &str) -> Result<String> {
    if url.starts_with("s3://") {
        let parsed = url::Url::parse(url).map_err(|e| Error::InvalidDestination {
            url: url.into(),
            reason: e.to_string(),
        })?;
        if parsed.host_str().unwrap_or("").is_empty() {
            return Err(Error::InvalidDestination {
                url: url.into(),
                reason: "missing bucket name (s3://BUCKET/prefix)".into(),
            });
        }
        return Ok(url.trim_end_matches('/').to_string());
    }
    if url.contains("://") && !url.starts_with("file://") {
        return Err(Error::InvalidDestination {
            url: url.into(),
            reason: "supported: a local directory path, file:///path, or s3://bucket/prefix".into(),
        });
    }
    let p = PathBuf::from(url.trim_start_matches("file://"));
    let abs = if p.is_absolute() {
        p
    } else {
        std::env::current_dir()
            .map_err(|e| Error::InvalidDestination {
                url: url.into(),
                reason: format!("cannot resolve a relative path: {e}"),
            })?
            .join(p)
    };
    Ok(abs.to_string_lossy().trim_end_matches('/').to_string())
}

impl Backend {
    /// Opens a destination from its normalized URL. S3 credentials come from the usual
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` environment variables, never the URL.
    pub fn open(url: &str, creds: Option<&crate::repo::S3Credentials>) -> Result<Backend> {
        if !url.starts_with("s3://") {
            return Ok(Backend::Local(PathBuf::from(
                url.trim_start_matches("file://"),
            )));
        }
        let bad = |reason: String| Error::InvalidDestination {
            url: url.into(),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let bucket = parsed.host_str().unwrap_or_default().to_string();
        let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(&bucket);
        if let Some(c) = creds {
            b = b
                .with_access_key_id(&c.access_key_id)
                .with_secret_access_key(&c.secret_access_key);
        }
        let mut region_set = false;
        for (k, v) in parsed.query_pairs() {
            match &*k {
                "endpoint" => {
                    b = b.with_endpoint(v.to_string());
                    if v.starts_with("http://") {
                        b = b.with_allow_http(true);
                    }
                }
                "region" => {
                    region_set = true;
                    b = b.with_region(v.to_string());
                }
                "allow_http" => b = b.with_allow_http(v == "true"),
                "virtual_hosted" => b = b.with_virtual_hosted_style_request(v == "true"),
                other => return Err(bad(format!("unknown option {other:?}"))),
            }
        }
        if !region_set
            && std::env::var("AWS_REGION").is_err()
            && std::env::var("AWS_DEFAULT_REGION").is_err()
        {
            b = b.with_region("us-east-1");
        }
        let store = b.build().map_err(|e| bad(e.to_string()))?;
        let prefix = parsed.path().trim_matches('/').to_string();
        Ok(Backend::Store {
            store: Arc::new(store),
            prefix,
        })
    }

    fn store_path(prefix: &str, key: &str) -> StorePath {
        if prefix.is_empty() {
            StorePath::from(key)
        } else {
            StorePath::from(format!("{prefix}/{key}"))
        }
    }

    /// Closes an existing local repository to other users, as this version creates them: no
    /// group or other access to the top directory (which alone keeps everything below it from
    /// other users), nor to the key material, the config and the top-level directories. Best effort: a repository we may read but
    /// not change (a read-only mount, someone else's) is still opened. Objects written from now
    /// on are private anyway (see [`write_durably`]).
    pub fn make_private(&self) {
        let Backend::Local(root) = self else {
            return;
        };
        // Clears the group and other bits; never adds any.
        let tighten = |p: &Path, m: std::io::Result<std::fs::Metadata>| {
            if let Ok(m) = m
                && !m.file_type().is_symlink()
                && m.permissions().mode() & 0o077 != 0
            {
                let mode = m.permissions().mode() & 0o7700;
                let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
            }
        };
        // The destination itself may be a link the user made (`/srv/backup -> /mnt/disk`):
        // what it points to is the repository. Links inside it are never followed.
        tighten(root, std::fs::metadata(root));
        let mut inside = vec![root.join("config")];
        for dir in ["keys", "data", "index", "snapshots", "locks", "segments"] {
            inside.push(root.join(dir));
        }
        if let Ok(keys) = std::fs::read_dir(root.join("keys")) {
            inside.extend(keys.flatten().map(|k| k.path()));
        }
        for p in inside {
            tighten(&p, std::fs::symlink_metadata(&p));
        }
    }

    /// Stores `bytes` under `key`, durably: when this returns Ok the object survives a crash.
    pub async fn put(&self, key: &str, bytes: Bytes) -> BResult<()> {
        match self {
            Backend::Local(root) => {
                let path = root.join(key);
                tokio::task::spawn_blocking(move || write_durably(&path, &bytes))
                    .await
                    .map_err(|e| BackendError::Other(e.to_string()))?
                    .map_err(io_err)
            }
            Backend::Store { store, prefix } => store
                .put(&Self::store_path(prefix, key), bytes.into())
                .await
                .map(|_| ())
                .map_err(store_err),
        }
    }

    /// Writes `bytes` under `key` only if nothing is there yet ([`BackendError::Exists`]
    /// otherwise): two writers racing for the same key never both succeed. A local
    /// directory links the durable temporary file into place (`link` fails if the name
    /// exists); S3 sends a conditional put (`If-None-Match: *`); a store that cannot do
    /// that is checked first and written (a race there is not excluded).
    pub async fn put_new(&self, key: &str, bytes: Bytes) -> BResult<()> {
        match self {
            Backend::Local(root) => {
                let path = root.join(key);
                tokio::task::spawn_blocking(move || write_new_durably(&path, &bytes))
                    .await
                    .map_err(|e| BackendError::Other(e.to_string()))?
                    .map_err(|e| {
                        if e.kind() == std::io::ErrorKind::AlreadyExists {
                            BackendError::Exists
                        } else {
                            io_err(e)
                        }
                    })
            }
            Backend::Store { store, prefix } => {
                let path = Self::store_path(prefix, key);
                let opts = object_store::PutOptions {
                    mode: object_store::PutMode::Create,
                    ..Default::default()
                };
                match store.put_opts(&path, bytes.clone().into(), opts).await {
                    Ok(_) => Ok(()),
                    Err(object_store::Error::AlreadyExists { .. })
                    | Err(object_store::Error::Precondition { .. }) => Err(BackendError::Exists),
                    Err(object_store::Error::NotImplemented) => {
                        match store.head(&path).await {
                            Ok(_) => return Err(BackendError::Exists),
                            Err(object_store::Error::NotFound { .. }) => {}
                            Err(e) => return Err(store_err(e)),
                        }
                        store
                            .put(&path, bytes.into())
                            .await
                            .map(|_| ())
                            .map_err(store_err)
                    }
                    Err(e) => Err(store_err(e)),
                }
            }
        }
    }

    /// Reads a whole object.
    pub async fn get(&self, key: &str) -> BResult<Bytes> {
        match self {
            Backend::Local(root) => {
                let path = root.join(key);
                tokio::fs::read(&path)
                    .await
                    .map(Bytes::from)
                    .map_err(io_err)
            }
            Backend::Store { store, prefix } => {
                let r = store
                    .get(&Self::store_path(prefix, key))
                    .await
                    .map_err(store_err)?;
                r.bytes().await.map_err(store_err)
            }
        }
    }

    /// Reads `len` bytes at `offset` of an object.
    pub async fn get_range(&self, key: &str, offset: u64, len: u64) -> BResult<Bytes> {
        match self {
            Backend::Local(root) => {
                let path = root.join(key);
                tokio::task::spawn_blocking(move || {
                    use std::io::{Read, Seek};
                    let mut f = std::fs::File::open(&path)?;
                    f.seek(std::io::SeekFrom::Start(offset))?;
                    // Read into spare capacity: no zeroing of a buffer about to be overwritten.
                    let mut buf = Vec::with_capacity(len as usize);
                    f.take(len).read_to_end(&mut buf)?;
                    if buf.len() as u64 != len {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("the object ends before byte {}", offset + len),
                        ));
                    }
                    Ok(Bytes::from(buf))
                })
                .await
                .map_err(|e| BackendError::Other(e.to_string()))?
                .map_err(io_err)
            }
            Backend::Store { store, prefix } => store
                .get_range(&Self::store_path(prefix, key), offset..offset + len)
                .await
                .map_err(store_err),
        }
    }

    /// Every object whose key starts with `dir` + "/".
    pub async fn list(&self, dir: &str) -> BResult<Vec<ObjectInfo>> {
        match self {
            Backend::Local(root) => {
                let root = root.clone();
                let dir = dir.to_string();
                tokio::task::spawn_blocking(move || {
                    if !root.is_dir() {
                        return Err(BackendError::Other(format!(
                            "{} is not a directory",
                            root.display()
                        )));
                    }
                    let mut out = Vec::new();
                    list_local(&root, &root.join(&dir), &mut out).map_err(io_err)?;
                    Ok(out)
                })
                .await
                .map_err(|e| BackendError::Other(e.to_string()))?
            }
            Backend::Store { store, prefix } => {
                let p = Self::store_path(prefix, dir);
                let metas: Vec<_> = store
                    .list(Some(&p))
                    .try_collect()
                    .await
                    .map_err(store_err)?;
                let strip = if prefix.is_empty() {
                    0
                } else {
                    prefix.len() + 1
                };
                Ok(metas
                    .into_iter()
                    .map(|m| ObjectInfo {
                        key: m.location.as_ref()[strip..].to_string(),
                        size: m.size,
                        modified: m.last_modified.timestamp(),
                    })
                    .collect())
            }
        }
    }

    /// Removes an object; removing an absent object is not an error.
    pub async fn delete(&self, key: &str) -> BResult<()> {
        let r = match self {
            Backend::Local(root) => tokio::fs::remove_file(root.join(key)).await.map_err(io_err),
            Backend::Store { store, prefix } => store
                .delete(&Self::store_path(prefix, key))
                .await
                .map_err(store_err),
        };
        match r {
            Err(BackendError::NotFound) => Ok(()),
            other => other,
        }
    }
}

/// A listed object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// Last modification, Unix seconds.
    pub modified: i64,
}

fn list_local(root: &Path, dir: &Path, out: &mut Vec<ObjectInfo>) -> std::io::Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let entry = entry?;
        let ft = entry.file_type()?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(".tmp-") {
            continue;
        }
        if ft.is_dir() {
            list_local(root, &entry.path(), out)?;
        } else if ft.is_file() {
            let rel = entry
                .path()
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            let meta = entry.metadata()?;
            let modified = meta
                .modified()?
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            out.push(ObjectInfo {
                key: rel,
                size: meta.len(),
                modified,
            });
        }
    }
    Ok(())
}

/// Writes a file so that after a crash it is either absent or complete: write a temporary
/// file, fsync it, rename it into place, fsync the directory. The file is readable by its
/// owner only (0600), and directories this creates are 0700: repositories and the spool hold
/// key material and what the site stores.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_via_temp(path, bytes, |tmp, path| std::fs::rename(tmp, path))
}

/// [`write_durably`], failing with `AlreadyExists` when `path` exists (the durable
/// temporary file is hard-linked into place, which never replaces a file).
pub fn write_new_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_via_temp(path, bytes, |tmp, path| {
        std::fs::hard_link(tmp, path)?;
        // The object is in place; a temporary name left behind is only clutter.
        let _ = std::fs::remove_file(tmp);
        Ok(())
    })
}

/// Writes `bytes` to a fresh temporary file beside `path` (created exclusively: never
/// written through something already at that name), fsyncs it, lets `place` put it at
/// `path`, and fsyncs the directory. The temporary file is removed on failure.
fn write_via_temp(
    path: &Path,
    bytes: &[u8],
    place: impl FnOnce(&Path, &Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().expect("object paths have a parent");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        path.file_name().unwrap().to_string_lossy(),
        hex::encode(crate::crypto::random_bytes::<6>())
    ));
    let result = (|| {
        let mut f = std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        place(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_new_never_replaces_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        write_new_durably(&path, b"first").unwrap();
        let err = write_new_durably(&path, b"second").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn destinations_are_normalized_to_absolute_paths_or_s3_urls() {
        assert_eq!(normalize_url("/srv/backup/").unwrap(), "/srv/backup");
        assert!(normalize_url("relative/dir").unwrap().starts_with('/'));
        assert_eq!(normalize_url("file:///srv/x").unwrap(), "/srv/x");
        assert_eq!(
            normalize_url("s3://bucket/blog/").unwrap(),
            "s3://bucket/blog"
        );
        assert!(matches!(
            normalize_url("s3:///nobucket"),
            Err(Error::InvalidDestination { .. })
        ));
        assert!(matches!(
            normalize_url("ftp://x/y"),
            Err(Error::InvalidDestination { .. })
        ));
    }

    #[test]
    fn unknown_s3_options_are_refused() {
        let err = Backend::open("s3://b/p?endpont=http://x", None)
            .err()
            .unwrap();
        assert!(err.to_string().contains("endpont"), "{err}");
    }
}
