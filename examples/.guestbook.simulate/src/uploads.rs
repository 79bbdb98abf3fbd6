//! Uploaded files: which names are allowed, and storing a file so that it is either fully there
//! or not there at all.
//!
//! A file is written to a hidden temporary name in the uploads dir, fsynced, renamed over its
//! final name, and then the directory is fsynced, so a crash at any moment leaves either the old
//! file or the complete new one (and perhaps a stray `.upload-*` temporary, never a torn file).

use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::RngCore;
use tokio::io::AsyncWriteExt;

/// Longest file name we accept, in bytes.
pub const MAX_NAME_LEN: usize = 200;
/// The prefix of temporary files; names starting with a dot are never accepted from users.
const TEMP_PREFIX: &str = ".upload-";

/// Why a file name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadName {
    #[error("the file name is empty; give the file a name")]
    Empty,
    #[error("the file name is longer than {MAX_NAME_LEN} bytes; use a shorter name")]
    TooLong,
    #[error("the file name may not contain '/' or '\\'; upload a plain file name")]
    PathSeparator,
    #[error("the file name may not start with '.'; rename the file")]
    LeadingDot,
    #[error("the file name may not contain control characters; rename the file")]
    ControlCharacter,
}

/// Returns `name` if it is a plain file name that stays inside the uploads dir.
pub fn check_name(name: &str) -> Result<&str, BadName> {
    if name.is_empty() {
        return Err(BadName::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(BadName::TooLong);
    }
    if name.contains('/') || name.contains('\\') {
        return Err(BadName::PathSeparator);
    }
    // Rejecting a leading dot also rejects "." and "..", hidden files and our temporaries.
    if name.starts_with('.') {
        return Err(BadName::LeadingDot);
    }
    if name.chars().any(char::is_control) {
        return Err(BadName::ControlCharacter);
    }
    Ok(name)
}

/// A file being received: bytes go to a temporary file until [`Upload::finish`] publishes it.
pub struct Upload {
    dir: PathBuf,
    temp: PathBuf,
    file: tokio::fs::File,
}

impl Upload {
    /// Starts receiving a file into `dir`.
    pub async fn begin(dir: &Path) -> anyhow::Result<Upload> {
        let mut random = [0u8; 8];
        rand::rng().fill_bytes(&mut random);
        let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let temp = dir.join(format!("{TEMP_PREFIX}{suffix}"));
        let file = tokio::fs::File::create(&temp)
            .await
            .with_context(|| format!("creating {}", temp.display()))?;
        Ok(Upload {
            dir: dir.to_path_buf(),
            temp,
            file,
        })
    }

    /// Appends a chunk.
    pub async fn write(&mut self, chunk: &[u8]) -> anyhow::Result<()> {
        self.file
            .write_all(chunk)
            .await
            .with_context(|| format!("writing {}", self.temp.display()))
    }

    /// Makes the file durable and visible under `name`, replacing any older file of that name.
    pub async fn finish(mut self, name: &str) -> anyhow::Result<()> {
        self.file.flush().await?;
        // Order matters: data on disk first, then the rename, then the directory entry.
        self.file
            .sync_all()
            .await
            .with_context(|| format!("syncing {}", self.temp.display()))?;
        let target = self.dir.join(name);
        tokio::fs::rename(&self.temp, &target)
            .await
            .with_context(|| format!("renaming the upload to {}", target.display()))?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
            .await
            .context("directory sync task panicked")?
            .with_context(|| format!("syncing the directory {}", self.dir.display()))?;
        Ok(())
    }

    /// Drops the partial file.
    pub async fn abandon(self) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.temp).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_accepted() {
        assert_eq!(check_name("photo.jpg"), Ok("photo.jpg"));
        assert_eq!(check_name("résumé 2026.pdf"), Ok("résumé 2026.pdf"));
    }

    #[test]
    fn names_that_could_leave_the_uploads_dir_are_refused() {
        assert_eq!(check_name(""), Err(BadName::Empty));
        assert_eq!(check_name(".."), Err(BadName::LeadingDot));
        assert_eq!(check_name("."), Err(BadName::LeadingDot));
        assert_eq!(check_name("../etc/passwd"), Err(BadName::PathSeparator));
        assert_eq!(check_name("a/b"), Err(BadName::PathSeparator));
        assert_eq!(check_name("a\\b"), Err(BadName::PathSeparator));
        assert_eq!(check_name(".upload-1234"), Err(BadName::LeadingDot));
        assert_eq!(check_name("a\nb"), Err(BadName::ControlCharacter));
        assert_eq!(check_name(&"x".repeat(201)), Err(BadName::TooLong));
    }
}
