//! The site's vault: its key under `.lifeboat/vault.key` and the repository on the manifest's
//! destinations.
//!
//! The first `up` with a `[vault]` section makes a random key, stores it durably (written to a
//! temp file, fsynced, renamed, the directory fsynced) *before* creating the repository, so a
//! crash in between leaves a key that opens whatever was created, never a repository whose key
//! was lost. The key is the repository's password; the owner must keep a copy elsewhere
//! (`lifeboat vault key export`), because a backup whose key died with the machine is no
//! backup.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat_core::manifest::VaultSpec;
use lifeboat_vault::{Error as VaultError, OpenOptions, Repository};

use crate::{ControlError, SitePaths};

/// The site's repository, opened (or created) from the manifest's `[vault]`.
pub(crate) struct SiteVault {
    pub repo: Arc<Repository>,
    /// The key was made now: the owner has to be told to copy it.
    pub key_created: bool,
}

/// A destination as the vault takes it: `s3://...` as written; a local path made absolute
/// and canonical when it exists (relative paths are relative to the site dir), so the same
/// directory is always named the same way.
pub fn resolve_destination(site_dir: &Path, dest: &str) -> String {
    if dest.contains("://") {
        return dest.to_string();
    }
    let path = Path::new(dest);
    let site = site_dir
        .canonicalize()
        .unwrap_or_else(|_| std::path::absolute(site_dir).unwrap_or(site_dir.to_path_buf()));
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        site.join(path)
    };
    let abs = abs
        .canonicalize()
        .unwrap_or_else(|_| lexically_normal(&abs));
    abs.display().to_string()
}

/// `a/./b/../c` -> `a/c`, without touching the disk.
fn lexically_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Reads the site's vault key, `None` when there is none yet.
pub fn read_key(paths: &SitePaths) -> Result<Option<String>, ControlError> {
    let path = paths.vault_key();
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let key = text.trim().to_string();
            if key.is_empty() {
                return Err(ControlError::Vault(format!(
                    "the vault key file {} is empty; put back the key saved with `lifeboat vault key export`",
                    path.display()
                )));
            }
            Ok(Some(key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ControlError::io("read the vault key", path)(e)),
    }
}

/// Writes a new random key durably, readable by the owner only.
fn create_key(paths: &SitePaths) -> Result<String, ControlError> {
    let key = hex::encode(rand::random::<[u8; 32]>());
    let path = paths.vault_key();
    let tmp = path.with_extension("key.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(format!("{key}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(paths.lifeboat_dir())?.sync_all()
    };
    write().map_err(ControlError::io("write the vault key", path.clone()))?;
    Ok(key)
}

pub(crate) fn open_options(paths: &SitePaths) -> OpenOptions {
    OpenOptions {
        spool_dir: Some(paths.spool()),
        ..OpenOptions::default()
    }
}

/// Opens the repository from the first destination that answers, `Ok(None)` when none holds
/// one.
async fn open_any(
    urls: &[String],
    key: &[u8],
    opts: &OpenOptions,
) -> Result<Option<Repository>, ControlError> {
    let mut last_unreachable = None;
    for url in urls {
        match Repository::open(url, key, opts).await {
            Ok(repo) => return Ok(Some(repo)),
            Err(VaultError::MissingRepository { detail, .. })
                if detail.contains("no config object") => {}
            Err(VaultError::MissingRepository { detail, .. }) => {
                last_unreachable = Some(format!("{url}: {detail}"));
            }
            Err(VaultError::WrongPassword { location }) => {
                return Err(ControlError::Vault(format!(
                    "the vault key in .lifeboat/vault.key does not open the repository at {location}; \
                     put back the key saved with `lifeboat vault key export`, or name another destination in [vault]"
                )));
            }
            // Every destination was already tried for an intact copy of the key file: asking
            // the next one would only repeat that, and "bring one back" would be wrong advice.
            Err(e @ VaultError::DamagedKey { .. }) => {
                return Err(ControlError::Vault(e.to_string()));
            }
            Err(e) => last_unreachable = Some(format!("{url}: {e}")),
        }
    }
    match last_unreachable {
        // Some destination could not even be asked: creating a new repository now could
        // fork the site's history, so refuse.
        Some(why) => Err(ControlError::Vault(format!(
            "no vault destination could be opened ({why}); bring one back or fix [vault] destinations"
        ))),
        None => Ok(None),
    }
}

/// Opens the site's existing repository with the site's key (for `restore-site` and
/// `timeline` while the daemon is down). Never creates anything.
pub async fn open_existing(
    paths: &SitePaths,
    spec: &VaultSpec,
) -> Result<Repository, ControlError> {
    let urls: Vec<String> = spec
        .destinations
        .iter()
        .map(|d| resolve_destination(&paths.dir, d))
        .collect();
    let Some(key) = read_key(paths)? else {
        return Err(ControlError::Vault(format!(
            "this site has no vault key ({} is missing): start it once with `lifeboat up`, or put back the key saved with `lifeboat vault key export`",
            paths.vault_key().display()
        )));
    };
    open_any(&urls, key.as_bytes(), &open_options(paths))
        .await?
        .ok_or_else(|| {
            ControlError::Vault(format!(
                "no vault repository at {} yet; `lifeboat up` creates it and starts capturing",
                urls.join(", ")
            ))
        })
}

/// Opens the site's repository, creating the key and the repository on first use.
pub(crate) async fn open_site_vault(
    paths: &SitePaths,
    spec: &VaultSpec,
) -> Result<SiteVault, ControlError> {
    let urls: Vec<String> = spec
        .destinations
        .iter()
        .map(|d| resolve_destination(&paths.dir, d))
        .collect();
    for url in &urls {
        if !url.contains("://") {
            std::fs::create_dir_all(url).map_err(ControlError::io(
                "create the vault destination",
                PathBuf::from(url),
            ))?;
        }
    }
    let opts = open_options(paths);
    let existing = read_key(paths)?;
    let (key, key_created) = match existing {
        Some(key) => (key, false),
        None => {
            // No key here: a repository on a destination means the key was lost.
            let probe = hex::encode(rand::random::<[u8; 32]>());
            if let Err(ControlError::Vault(_)) | Ok(Some(_)) =
                open_any(&urls, probe.as_bytes(), &opts).await
            {
                return Err(ControlError::Vault(format!(
                    "a vault repository already exists at {} but this site has no key ({} is missing); \
                     put back the key saved with `lifeboat vault key export` (one line) at that path",
                    urls.join(", "),
                    paths.vault_key().display()
                )));
            }
            (create_key(paths)?, true)
        }
    };
    let repo = match open_any(&urls, key.as_bytes(), &opts).await? {
        Some(repo) => repo,
        None => match Repository::init(&urls, spec.quorum, key.as_bytes(), &opts).await {
            Ok(repo) => repo,
            // Another node of the site created it meanwhile: open theirs.
            Err(VaultError::AlreadyExists { .. }) => open_any(&urls, key.as_bytes(), &opts)
                .await?
                .ok_or_else(|| {
                    ControlError::Vault(format!(
                        "the site's vault on {} was being created by another node and cannot be opened yet; run `lifeboat up` again",
                        urls.join(", ")
                    ))
                })?,
            Err(e) => {
                return Err(ControlError::Vault(format!(
                    "could not create the site's vault on {}: {e}",
                    urls.join(", ")
                )));
            }
        },
    };
    Ok(SiteVault {
        repo: Arc::new(repo),
        key_created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_destinations_are_relative_to_the_site_and_s3_stays_as_written() {
        let site = Path::new("/srv/blog");
        assert_eq!(
            resolve_destination(site, ".lifeboat/vault"),
            "/srv/blog/.lifeboat/vault"
        );
        assert_eq!(resolve_destination(site, "./a/../../b"), "/srv/b");
        assert_eq!(resolve_destination(site, "/mnt/b"), "/mnt/b");
        assert_eq!(resolve_destination(site, "s3://bk/blog"), "s3://bk/blog");
    }

    #[tokio::test]
    async fn the_first_open_makes_a_private_key_and_later_opens_reuse_it() {
        // SAFETY of the test: fast KDF only for this process's tests.
        let dir = tempfile::tempdir().unwrap();
        let paths = SitePaths::new(dir.path());
        paths.create().unwrap();
        let spec = VaultSpec {
            destinations: vec!["vault-a".into(), "vault-b".into()],
            quorum: None,
            segment_interval: std::time::Duration::from_secs(1),
            checkpoint_interval: std::time::Duration::from_secs(600),
            integrity_check_interval: std::time::Duration::from_secs(600),
        };
        let first = open_site_vault(&paths, &spec).await.unwrap();
        assert!(first.key_created);
        let key = read_key(&paths).unwrap().unwrap();
        assert_eq!(key.len(), 64);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(paths.vault_key())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let id = first.repo.config().id.clone();
        drop(first);
        let again = open_site_vault(&paths, &spec).await.unwrap();
        assert!(!again.key_created);
        assert_eq!(again.repo.config().id, id);
        assert_eq!(read_key(&paths).unwrap().unwrap(), key);
        drop(again);

        // The key is lost: refuse, and never make a second repository.
        std::fs::remove_file(paths.vault_key()).unwrap();
        let err = open_site_vault(&paths, &spec)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("already exists"), "{err}");
        assert!(err.contains("vault key export"), "{err}");
        assert!(read_key(&paths).unwrap().is_none());
    }
}
