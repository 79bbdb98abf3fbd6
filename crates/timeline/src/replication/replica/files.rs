//! Applying file changes to a standby's data dirs: each written file atomically (a temporary
//! file beside it, fsynced, renamed over it), each deletion by unlinking; the directories
//! touched are fsynced once the group's changes are done, before the group counts as applied.
//!
//! Paths come from the network: each must be a plain relative path, and nothing on the way
//! to it under the data dir may be a link (the copy never holds one: capture records regular
//! files only), so a write never lands outside the standby's copy.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use super::super::error::StreamError;

/// Suffix of the temporary files a write leaves behind if it is interrupted; removed when the
/// standby starts (they were never renamed into place, so never part of the copy).
pub(crate) const PARTIAL_SUFFIX: &str = ".lifeboat-replica-partial";

/// `root/rel` after checking `rel` is plain and nothing under `root` on the way is a link.
/// With `make_parents`, missing directories on the way are created (and recorded in
/// `touched`, whose parents then need an fsync).
fn beneath(
    root: &Path,
    rel: &str,
    make_parents: bool,
    touched: &mut BTreeSet<PathBuf>,
) -> Result<PathBuf, String> {
    let rel_path = Path::new(rel);
    if rel.is_empty()
        || !rel_path
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(format!("path {rel:?} is not a plain relative path"));
    }
    if rel.ends_with(PARTIAL_SUFFIX) {
        return Err(format!("path {rel:?} uses a name reserved for the standby"));
    }
    let mut path = root.to_path_buf();
    let mut components = rel_path.components().peekable();
    while let Some(c) = components.next() {
        path.push(c);
        let last = components.peek().is_none();
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!("{} is a symbolic link", path.display()));
            }
            Ok(m) if !last && !m.is_dir() => {
                return Err(format!("{} is not a directory", path.display()));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !last && make_parents {
                    std::fs::create_dir(&path)
                        .map_err(|e| format!("could not create {}: {e}", path.display()))?;
                    touched.insert(path.parent().expect("below root").to_path_buf());
                }
            }
            Err(e) => return Err(format!("could not inspect {}: {e}", path.display())),
        }
    }
    Ok(path)
}

/// Why a file change could not be applied: the copy does not look like what the primary
/// describes (resync), or the disk failed.
#[derive(Debug)]
pub(crate) enum FileError {
    Mismatch(String),
    Io(StreamError),
}

/// Writes `bytes` at `root/rel` atomically. The rename is durable once the directories in
/// `touched` are fsynced.
pub(crate) fn write(
    root: &Path,
    rel: &str,
    bytes: &[u8],
    touched: &mut BTreeSet<PathBuf>,
) -> Result<(), FileError> {
    let path = beneath(root, rel, true, touched).map_err(FileError::Mismatch)?;
    let name = path
        .file_name()
        .expect("a plain path has a file name")
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}{PARTIAL_SUFFIX}"));
    let io = |action| {
        let tmp = tmp.clone();
        move |e| FileError::Io(StreamError::io(action, &tmp)(e))
    };
    {
        let mut f = std::fs::File::create(&tmp).map_err(io("create"))?;
        f.write_all(bytes).map_err(io("write"))?;
        f.sync_all().map_err(io("fsync"))?;
    }
    // A directory where the primary now has a file: its files were deleted before (changes
    // come in order), so it is empty, unless the copy differs from the primary.
    if let Ok(m) = std::fs::symlink_metadata(&path)
        && m.is_dir()
    {
        std::fs::remove_dir(&path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            FileError::Mismatch(format!(
                "{} is a directory that is not empty ({e}) where the primary has a file",
                path.display()
            ))
        })?;
    }
    std::fs::rename(&tmp, &path)
        .map_err(|e| FileError::Io(StreamError::io("rename into place", &path)(e)))?;
    touched.insert(path.parent().expect("below root").to_path_buf());
    Ok(())
}

/// Removes `root/rel` (already gone is fine).
pub(crate) fn delete(
    root: &Path,
    rel: &str,
    touched: &mut BTreeSet<PathBuf>,
) -> Result<(), FileError> {
    let path = beneath(root, rel, false, touched).map_err(FileError::Mismatch)?;
    match std::fs::remove_file(&path) {
        Ok(()) => {
            touched.insert(path.parent().expect("below root").to_path_buf());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FileError::Io(StreamError::io("remove", &path)(e))),
    }
}

/// Fsyncs every directory in `touched`, deepest first (a created directory's own entry is
/// made durable by fsyncing its parent, which is also in `touched`).
pub(crate) fn sync_dirs(touched: &BTreeSet<PathBuf>) -> Result<(), StreamError> {
    for dir in touched.iter().rev() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(StreamError::io("fsync", dir))?;
    }
    Ok(())
}

/// Removes temporary files an interrupted write left under `root`.
pub(crate) fn remove_partials(root: &Path) -> Result<(), StreamError> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StreamError::io("list", root)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(StreamError::io("list", root))?;
        let kind = entry
            .file_type()
            .map_err(StreamError::io("stat", entry.path()))?;
        if kind.is_dir() {
            remove_partials(&entry.path())?;
        } else if entry
            .file_name()
            .to_string_lossy()
            .ends_with(PARTIAL_SUFFIX)
        {
            std::fs::remove_file(entry.path()).map_err(StreamError::io("remove", entry.path()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_that_leaves_the_copy_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("uploads");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a")).unwrap();
        let mut touched = BTreeSet::new();
        for rel in ["a/passwd", "../x", "/etc/passwd", "", "b/../../c"] {
            assert!(
                matches!(
                    write(&root, rel, b"x", &mut touched),
                    Err(FileError::Mismatch(_))
                ),
                "{rel}"
            );
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        write(&root, "new/dir/f.txt", b"hello", &mut touched).unwrap();
        assert_eq!(std::fs::read(root.join("new/dir/f.txt")).unwrap(), b"hello");
        sync_dirs(&touched).unwrap();
        delete(&root, "new/dir/f.txt", &mut touched).unwrap();
        delete(&root, "new/dir/f.txt", &mut touched).unwrap();
        assert!(!root.join("new/dir/f.txt").exists());
    }
}
