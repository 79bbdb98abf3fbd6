//! Where the live state appears to the site's processes.
//!
//! An app opens its data where it always has (`db.sqlite3` next to its code, `data/uploads`).
//! After a rewind the live state is a restored copy under `.lifeboat/states/NAME`, so each
//! instance gets a private view of the site dir in which the declared `[state]` paths of that
//! copy are bind-mounted over the site dir's own: the app needs no change, and instances of two
//! states (the old ones draining, the new ones starting) run side by side, each seeing its own.
//!
//! This module only decides *what* to mount; it never touches the file system.

use std::path::{Path, PathBuf};

use crate::manifest::{StateSpec, site_relative};

/// Whether a mount shows a directory or a single file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    Dir,
    File,
}

/// One path of a state shown at its usual place: `source` (inside the state's copy) is
/// bind-mounted onto `target` (the same path inside the site dir).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub kind: MountKind,
}

/// The files SQLite keeps beside a database in WAL mode. They are opened by name next to the
/// database, so a database shown somewhere else needs them shown there too: otherwise two
/// copies of the database would share one log.
pub const SQLITE_SIDE_FILES: [&str; 2] = ["-wal", "-shm"];

/// The mounts that show the state in `state_dir` at its usual place in `site_dir`: nothing when
/// the state is the site dir itself. Declared dirs are mounted whole (a dir inside another
/// declared dir comes with it); each database outside them is mounted as three files (the
/// database, its `-wal` and its `-shm`). Parents come before children.
pub fn state_mounts(site_dir: &Path, state_dir: &Path, state: &StateSpec) -> Vec<StateMount> {
    if site_dir == state_dir {
        return Vec::new();
    }
    let mut dirs: Vec<PathBuf> = state.dirs.iter().filter_map(|d| normal(d)).collect();
    dirs.sort();
    dirs.dedup();
    let top: Vec<PathBuf> = dirs
        .iter()
        .filter(|d| !dirs.iter().any(|o| o != *d && d.starts_with(o)))
        .cloned()
        .collect();
    let mut mounts: Vec<StateMount> = top
        .iter()
        .map(|d| StateMount {
            source: state_dir.join(d),
            target: site_dir.join(d),
            kind: MountKind::Dir,
        })
        .collect();
    for db in state.sqlite.iter().filter_map(|d| normal(d)) {
        if top.iter().any(|d| db.starts_with(d)) {
            continue;
        }
        let mut names = vec![db.clone().into_os_string()];
        for side in SQLITE_SIDE_FILES {
            let mut name = db.clone().into_os_string();
            name.push(side);
            names.push(name);
        }
        for name in names {
            let rel = PathBuf::from(name);
            let mount = StateMount {
                source: state_dir.join(&rel),
                target: site_dir.join(&rel),
                kind: MountKind::File,
            };
            if !mounts.contains(&mount) {
                mounts.push(mount);
            }
        }
    }
    mounts
}

/// A state path relative to the site dir, or `None` for one the manifest refused (absolute,
/// leading out, or the site dir itself).
fn normal(path: &Path) -> Option<PathBuf> {
    site_relative(path).filter(|p| !p.as_os_str().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(sqlite: &[&str], dirs: &[&str]) -> StateSpec {
        StateSpec {
            sqlite: sqlite.iter().map(PathBuf::from).collect(),
            dirs: dirs.iter().map(PathBuf::from).collect(),
            mariadb: None,
        }
    }

    #[test]
    fn the_site_dir_itself_needs_no_mounts() {
        let s = spec(&["db.sqlite3"], &["media"]);
        assert!(state_mounts(Path::new("/s"), Path::new("/s"), &s).is_empty());
    }

    #[test]
    fn a_database_is_shown_with_its_log_and_shared_memory_files() {
        let s = spec(&["db.sqlite3"], &[]);
        let m = state_mounts(Path::new("/s"), Path::new("/s/.lifeboat/states/n"), &s);
        let targets: Vec<_> = m.iter().map(|m| m.target.display().to_string()).collect();
        assert_eq!(
            targets,
            ["/s/db.sqlite3", "/s/db.sqlite3-wal", "/s/db.sqlite3-shm"]
        );
        assert_eq!(
            m[1].source,
            Path::new("/s/.lifeboat/states/n/db.sqlite3-wal")
        );
        assert!(m.iter().all(|m| m.kind == MountKind::File));
    }

    #[test]
    fn dirs_are_mounted_whole_and_what_they_hold_comes_with_them() {
        let s = spec(
            &["data/app.db", "./other.db"],
            &["data", "data/uploads", "media/"],
        );
        let m = state_mounts(Path::new("/s"), Path::new("/c"), &s);
        let shown: Vec<_> = m
            .iter()
            .map(|m| {
                (
                    m.source.display().to_string(),
                    m.target.display().to_string(),
                    m.kind,
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("/c/data".into(), "/s/data".into(), MountKind::Dir),
                ("/c/media".into(), "/s/media".into(), MountKind::Dir),
                ("/c/other.db".into(), "/s/other.db".into(), MountKind::File),
                (
                    "/c/other.db-wal".into(),
                    "/s/other.db-wal".into(),
                    MountKind::File
                ),
                (
                    "/c/other.db-shm".into(),
                    "/s/other.db-shm".into(),
                    MountKind::File
                ),
            ]
        );
    }
}
