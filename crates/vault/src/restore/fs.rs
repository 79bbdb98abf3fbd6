//! How a restore touches the target: it opens what it writes without ever following a link
//! (a link planted by another local user, or one the snapshot itself restores), and gives
//! each entry its metadata.
//!
//! Ownership is restored as restic does it. Run as root, a restore gives every entry the
//! numeric owner and group its snapshot recorded; run as anyone else, entries belong to that
//! user (the kernel lets no one else give files away) and only the recorded group is tried.
//! Set-user-id and set-group-id bits are kept only on an entry that ended up with the owner
//! (for set-user-id) or group (for set-group-id) its snapshot recorded. So a snapshot that
//! records none (format version 1), or an owner that could not be given back, never turns
//! someone's set-id program into one that runs with the restoring user's rights: as root,
//! never a root-owned set-id file that was not root's in the snapshot.
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use crate::error::{Error, IoContext, Result};
use crate::format::Node;

const SET_UID: u32 = 0o4000;
const SET_GID: u32 = 0o2000;

/// `O_NOFOLLOW`: opening a path whose last component is a link fails instead of following it.
fn no_follow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

/// Who runs the restore, which decides whose files it can make.
#[derive(Clone, Copy, Debug)]
pub(super) struct Owners {
    root: bool,
}

impl Owners {
    pub(super) fn of_this_process() -> Owners {
        Owners {
            root: nix::unistd::geteuid().is_root(),
        }
    }
}

/// The permission bits an entry is given: `mode` without the set-id bits whose owner (or
/// group) the entry did not get back as recorded.
pub(super) fn restored_mode(
    mode: u32,
    recorded: (Option<u32>, Option<u32>),
    actual: (u32, u32),
) -> u32 {
    let mut m = mode & 0o7777;
    if recorded.0 != Some(actual.0) {
        m &= !SET_UID;
    }
    if recorded.1 != Some(actual.1) {
        m &= !SET_GID;
    }
    m
}

/// Creates a file under a name nothing else may hold (not even a link), readable by the
/// restoring user only until [`set_file_meta`] gives it its mode.
pub(super) fn create_private(path: &Path) -> std::io::Result<File> {
    File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(no_follow())
        .open(path)
}

/// Opens an existing file for writing; fails if `path` is a link.
pub(super) fn open_existing(path: &Path) -> std::io::Result<File> {
    File::options()
        .write(true)
        .custom_flags(no_follow())
        .open(path)
}

/// Opens an existing file for reading; fails if `path` is a link.
pub(super) fn open_for_reading(path: &Path) -> std::io::Result<File> {
    File::options()
        .read(true)
        .custom_flags(no_follow())
        .open(path)
}

/// Gives the entry open as `file` its recorded owner where it can (see the module docs) and
/// returns the owner it has now.
fn give_owner(file: &File, node: &Node, owners: Owners, path: &Path) -> Result<(u32, u32)> {
    let now = file.metadata().ctx("reading the owner of", path)?;
    let now = (now.uid(), now.gid());
    let uid = node.uid.filter(|&u| u != now.0);
    let gid = node.gid.filter(|&g| g != now.1);
    if uid.is_none() && gid.is_none() {
        return Ok(now);
    }
    if owners.root {
        std::os::unix::fs::fchown(file, uid, gid).map_err(|e| owner_not_restored(path, node, e))?;
        return Ok((uid.unwrap_or(now.0), gid.unwrap_or(now.1)));
    }
    // Not root: the kernel allows only a group the user is in. Anything else stays the
    // user's own, and the set-id bits of what was not given back are dropped.
    if gid.is_some() && std::os::unix::fs::fchown(file, None, gid).is_ok() {
        return Ok((now.0, gid.unwrap_or(now.1)));
    }
    Ok(now)
}

fn owner_not_restored(path: &Path, node: &Node, source: std::io::Error) -> Error {
    let id = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
    Error::OwnerNotRestored {
        path: path.to_path_buf(),
        uid: id(node.uid),
        gid: id(node.gid),
        source,
    }
}

/// Gives a file or directory open as `file` its owner, permission bits and mtime, in that
/// order: changing the owner clears set-id bits, so the mode comes after it.
pub(super) fn set_meta(file: &File, node: &Node, owners: Owners, path: &Path) -> Result<()> {
    let owner = give_owner(file, node, owners, path)?;
    let mode = restored_mode(node.mode, (node.uid, node.gid), owner);
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .ctx("setting permissions of", path)?;
    file.set_modified(to_time(node.mtime_ns))
        .ctx("setting the mtime of", path)
}

/// Gives a directory its metadata, opening it without following a link.
pub(super) fn set_dir_meta(path: &Path, node: &Node, owners: Owners) -> Result<()> {
    let dir = File::options()
        .read(true)
        .custom_flags(no_follow() | nix::fcntl::OFlag::O_DIRECTORY.bits())
        .open(path)
        .ctx("opening", path)?;
    set_meta(&dir, node, owners, path)
}

/// Creates the symlink `path` and gives it its recorded owner where it can (a link's mode
/// means nothing on Linux).
pub(super) fn make_symlink(path: &Path, node: &Node, owners: Owners) -> Result<()> {
    std::os::unix::fs::symlink(node.target.as_deref().unwrap_or(""), path)
        .ctx("creating the symlink", path)?;
    if node.uid.is_none() && node.gid.is_none() {
        return Ok(());
    }
    if owners.root {
        std::os::unix::fs::lchown(path, node.uid, node.gid)
            .map_err(|e| owner_not_restored(path, node, e))?;
    } else if node.gid.is_some() {
        // Only a group the user is in is allowed; otherwise the link stays as it is.
        let _ = std::os::unix::fs::lchown(path, None, node.gid);
    }
    Ok(())
}

pub(super) fn to_time(ns: i128) -> std::time::SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos((-ns) as u64)
    }
}

/// Makes `path` a directory the restore can write into. It is created closed to other users
/// (0700): what is written inside stays private until the directory gets its recorded mode,
/// last.
pub(super) fn make_dir(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            // Make sure we can write inside even if a previous restore made it read-only.
            let mode = m.permissions().mode() | 0o700;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .ctx("making writable", path)
        }
        Ok(_) => {
            remove_entry(path)?;
            new_dir(path)
        }
        Err(_) => new_dir(path),
    }
}

fn new_dir(path: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .ctx("creating", path)
}

/// Removes a file, a link (not what it points to) or a whole directory.
pub(super) fn remove_entry(path: &Path) -> Result<()> {
    let m = std::fs::symlink_metadata(path).ctx("reading", path)?;
    if m.is_dir() {
        std::fs::remove_dir_all(path).ctx("removing", path)
    } else {
        std::fs::remove_file(path).ctx("removing", path)
    }
}

/// Removes what is at `path` unless it is a regular file (which a rename replaces).
pub(super) fn remove_if_not_file(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.is_file() => remove_entry(path),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_id_bits_stay_only_with_the_recorded_owner() {
        let me = (1000, 1000);
        // Recorded and given back: kept.
        assert_eq!(restored_mode(0o6755, (Some(1000), Some(1000)), me), 0o6755);
        // Not recorded (format version 1): dropped, whoever restores.
        assert_eq!(restored_mode(0o6755, (None, None), me), 0o755);
        assert_eq!(restored_mode(0o6755, (None, None), (0, 0)), 0o755);
        // Someone else's program restored by this user (or by root failing to give it
        // back): it would run with the restorer's rights, so its bits go.
        assert_eq!(restored_mode(0o4755, (Some(4321), Some(1000)), me), 0o755);
        // The group came back, the owner did not: only set-group-id stays.
        assert_eq!(restored_mode(0o6755, (Some(4321), Some(1000)), me), 0o2755);
        // Root's own setuid program, recorded as root's and restored by root.
        assert_eq!(restored_mode(0o4755, (Some(0), Some(0)), (0, 0)), 0o4755);
        // Other bits (sticky, permissions) are never touched.
        assert_eq!(restored_mode(0o1777, (None, None), me), 0o1777);
    }
}
