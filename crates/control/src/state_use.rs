//! What the site's instances really use, seen from outside: the files their processes hold
//! open and the state they see at the site's own paths.
//!
//! A silent gap in the backups is the worst failure this product can have, so Lifeboat does
//! not trust that an app reads its data where the manifest says. For every instance it looks
//! at `/proc`: whether the declared state paths, as the instance sees them, are the copy of
//! the state it serves; whether it holds a database of the declared state that is another
//! copy (say the site dir's own after a rewind); and whether it writes a SQLite database, or a
//! file in the site dir, that is not in `[state]` at all, so nothing captures it. Findings
//! become events and warnings in `lifeboat status`.
//!
//! Reading `/proc` of the site's processes needs the same user (or root), which Lifeboat is.
//! This module never changes anything it looks at.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use lifeboat_core::layout::{SQLITE_SIDE_FILES, state_mounts};
use lifeboat_core::manifest::StateSpec;
use procfs::process::{FDPermissions, FDTarget, Process};

/// A file's identity: device and inode.
type FileId = (u64, u64);

/// Something wrong with what an instance uses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Finding {
    /// It writes `path` (a SQLite database when `sqlite`), which no `[state]` entry covers.
    WritesOutside { path: PathBuf, sqlite: bool },
    /// It sees or holds `path` of the declared state, but not the copy of the state it serves.
    WrongCopy { path: PathBuf },
}

/// One file a process holds open.
#[derive(Debug, Clone)]
pub(crate) struct HeldFile {
    /// The path as the process names it (in its own mount namespace).
    pub path: PathBuf,
    pub id: Option<FileId>,
    pub writable: bool,
    /// How to read it from outside (`/proc/PID/fd/N`).
    pub proc_path: PathBuf,
}

/// The state an instance serves, with what it needs to judge its files.
pub(crate) struct StateLayout<'a> {
    pub site_dir: &'a Path,
    pub state_dir: &'a Path,
    pub spec: &'a StateSpec,
}

impl StateLayout<'_> {
    /// The declared path (relative) that `path` falls under, seen from the site dir or from
    /// the state's own dir; `None` when it is not part of the declared state.
    fn declared(&self, path: &Path) -> Option<PathBuf> {
        // The state's own dir first: a restored copy lives inside the site dir.
        let rel = path
            .strip_prefix(self.state_dir)
            .ok()
            .or_else(|| path.strip_prefix(self.site_dir).ok())?;
        let rel = lexical(rel);
        let db_like = self.spec.sqlite.iter().any(|db| {
            let db = lexical(db);
            rel == db || sqlite_side_of(&rel).is_some_and(|base| base == db)
        });
        let in_dir = self.spec.dirs.iter().any(|d| rel.starts_with(lexical(d)));
        (db_like || in_dir).then_some(rel)
    }
}

/// Every regular file held open by a process of the process group `pgid` (an instance and
/// whatever it started). Processes that vanish meanwhile are skipped.
pub(crate) fn held_files(pgid: u32) -> Vec<(u32, HeldFile)> {
    let mut out = Vec::new();
    for pid in group_members(pgid) {
        let Ok(process) = Process::new(pid as i32) else {
            continue;
        };
        let Ok(fds) = process.fd() else { continue };
        for fd in fds.flatten() {
            let FDTarget::Path(path) = &fd.target else {
                continue;
            };
            let proc_path = PathBuf::from(format!("/proc/{pid}/fd/{}", fd.fd));
            let Ok(meta) = std::fs::metadata(&proc_path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            out.push((
                pid,
                HeldFile {
                    path: path.clone(),
                    id: Some((meta.dev(), meta.ino())),
                    writable: fd.mode().contains(FDPermissions::WRITE),
                    proc_path,
                },
            ));
        }
    }
    out
}

/// The processes of the group `pgid`.
pub(crate) fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(all) = procfs::process::all_processes() else {
        return vec![pgid];
    };
    all.flatten()
        .filter_map(|p| {
            let stat = p.stat().ok()?;
            (stat.pgrp == pgid as i32).then_some(stat.pid as u32)
        })
        .collect()
}

/// Judges the files one instance holds and the state it sees, against the state it serves.
/// `is_sqlite` reads a held file's header (injected, so the rules are tested without files).
pub(crate) fn judge(
    layout: &StateLayout<'_>,
    held: &[HeldFile],
    copy_ids: &HashMap<PathBuf, FileId>,
    mut is_sqlite: impl FnMut(&HeldFile) -> bool,
) -> BTreeSet<Finding> {
    let mut findings = BTreeSet::new();
    for file in held {
        // The site's own files count wherever the site is (even under /tmp).
        let in_site = file.path.starts_with(layout.site_dir);
        if deleted(&file.path) || (!in_site && ignored(&file.path)) {
            continue;
        }
        if let Some(rel) = layout.declared(&file.path) {
            // A database file of the state: it must be the serving copy's very file.
            if let (Some(expected), Some(id)) = (copy_ids.get(&rel), file.id)
                && *expected != id
            {
                findings.insert(Finding::WrongCopy {
                    path: file.path.clone(),
                });
            }
            continue;
        }
        let sqlite = looks_like_sqlite(&file.path) || (file.writable && is_sqlite(file));
        if file.writable && (sqlite || in_site) {
            findings.insert(Finding::WritesOutside {
                path: file.path.clone(),
                sqlite,
            });
        }
    }
    findings
}

/// The identities of the serving copy's database files (database, `-wal`, `-shm`), by path
/// relative to the site dir.
pub(crate) fn copy_ids(layout: &StateLayout<'_>) -> HashMap<PathBuf, FileId> {
    let mut ids = HashMap::new();
    for db in &layout.spec.sqlite {
        let db = lexical(db);
        let mut names = vec![db.clone()];
        for side in SQLITE_SIDE_FILES.iter().chain(&["-journal"]) {
            let mut n = db.clone().into_os_string();
            n.push(side);
            names.push(PathBuf::from(n));
        }
        for rel in names {
            if let Ok(meta) = std::fs::metadata(layout.state_dir.join(&rel)) {
                ids.insert(rel, (meta.dev(), meta.ino()));
            }
        }
    }
    ids
}

/// Whether the declared state paths, as the process `pid` sees them, are the serving copy's:
/// each mount's target seen through `/proc/PID/root` must be its source. Returns the targets
/// that are not (for a state that needs no mounts, nothing).
pub(crate) fn unseen_mounts(layout: &StateLayout<'_>, pid: u32) -> Vec<PathBuf> {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    state_mounts(layout.site_dir, layout.state_dir, layout.spec)
        .into_iter()
        .filter(|m| {
            let inside = root.join(m.target.strip_prefix("/").unwrap_or(&m.target));
            let seen = std::fs::metadata(&inside).map(|x| (x.dev(), x.ino()));
            let copy = std::fs::metadata(&m.source).map(|x| (x.dev(), x.ino()));
            match (seen, copy) {
                (Ok(a), Ok(b)) => a != b,
                // The process is gone, or the copy lacks it: nothing to say.
                _ => false,
            }
        })
        .map(|m| m.target)
        .collect()
}

/// Reads the first bytes of a held file: SQLite databases start with "SQLite format 3\0".
pub(crate) fn has_sqlite_header(file: &HeldFile) -> bool {
    use std::io::Read;
    let mut head = [0u8; 16];
    std::fs::File::open(&file.proc_path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head == b"SQLite format 3\0")
}

/// Files outside the site dir nobody would call the site's state: devices, kernel files,
/// temporary files.
fn ignored(path: &Path) -> bool {
    const SYSTEM: [&str; 7] = [
        "/dev/",
        "/proc/",
        "/sys/",
        "/run/",
        "/tmp/",
        "/var/tmp/",
        "/memfd:",
    ];
    let text = path.to_string_lossy();
    SYSTEM.iter().any(|p| text.starts_with(p))
}

/// A file already deleted holds nothing anyone can restore.
fn deleted(path: &Path) -> bool {
    path.to_string_lossy().ends_with(" (deleted)")
}

/// Whether the name is one SQLite gives its databases or their side files.
fn looks_like_sqlite(path: &Path) -> bool {
    let name = path.to_string_lossy();
    sqlite_side_of(path).is_some()
        || [".db", ".sqlite", ".sqlite3", ".db3"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// For `x-wal`, `x-shm` or `x-journal`, the database `x`.
fn sqlite_side_of(path: &Path) -> Option<PathBuf> {
    let name = path.to_str()?;
    ["-wal", "-shm", "-journal"]
        .iter()
        .find_map(|side| name.strip_suffix(side))
        .map(PathBuf::from)
}

/// `a/./b` → `a/b` (state paths in the manifest may be written with `./`).
fn lexical(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// How often the watcher looks at every instance.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// What is wrong with what instance `id` (group leader `pid`, serving `state`) uses now.
pub(crate) fn check_instance(site: &crate::site::Site, pid: u32, state: &str) -> BTreeSet<Finding> {
    let state_dir = site.paths.state_dir(state);
    let layout = StateLayout {
        site_dir: &site.paths.dir,
        state_dir: &state_dir,
        spec: &site.manifest.state,
    };
    let held: Vec<HeldFile> = held_files(pid).into_iter().map(|(_, f)| f).collect();
    let ids = copy_ids(&layout);
    let mut findings = judge(&layout, &held, &ids, has_sqlite_header);
    tracing::debug!(pid, state, ?held, ?ids, ?findings, "what the instance uses");
    if site.launcher.private_mounts.is_ok() {
        for target in unseen_mounts(&layout, pid) {
            findings.insert(Finding::WrongCopy { path: target });
        }
    }
    findings
}

/// The event that announces a finding.
pub(crate) fn event_of(instance: &str, state: &str, finding: &Finding) -> lifeboat_core::EventKind {
    match finding {
        Finding::WritesOutside { path, sqlite } => lifeboat_core::EventKind::WritesOutsideState {
            instance: instance.to_string(),
            path: path.display().to_string(),
            sqlite: *sqlite,
        },
        Finding::WrongCopy { path } => lifeboat_core::EventKind::WrongStateCopy {
            instance: instance.to_string(),
            path: path.display().to_string(),
            state: state.to_string(),
        },
    }
}

/// Looks at every running instance every few seconds; each new finding is an event once, and
/// the current ones are what `status` warns about.
pub(crate) async fn watch(site: std::sync::Arc<crate::site::Site>) {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = site.shutdown.cancelled() => return,
        }
        let checked = {
            let site = site.clone();
            tokio::task::spawn_blocking(move || {
                site.supervisor
                    .instances()
                    .into_iter()
                    .filter_map(|i| {
                        let pid = i.pid?;
                        let state = site.state_of(&i.id);
                        let found = check_instance(&site, pid, &state);
                        Some((i.id, state, found))
                    })
                    .collect::<Vec<_>>()
            })
            .await
        };
        let Ok(checked) = checked else { continue };
        site.set_findings(checked);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> StateSpec {
        StateSpec {
            sqlite: vec!["db.sqlite3".into(), "./data/app.db".into()],
            dirs: vec!["media".into()],
            mariadb: None,
        }
    }

    fn held(path: &str, id: FileId, writable: bool) -> HeldFile {
        HeldFile {
            path: path.into(),
            id: Some(id),
            writable,
            proc_path: "/nonexistent".into(),
        }
    }

    fn judge_all(files: &[HeldFile], sqlite_headers: &[&str]) -> Vec<Finding> {
        let spec = spec();
        let layout = StateLayout {
            site_dir: Path::new("/site"),
            state_dir: Path::new("/site/.lifeboat/states/n"),
            spec: &spec,
        };
        let ids: HashMap<PathBuf, FileId> = [
            ("db.sqlite3".into(), (1, 10)),
            ("db.sqlite3-wal".into(), (1, 11)),
            ("data/app.db".into(), (1, 12)),
        ]
        .into_iter()
        .collect();
        judge(&layout, files, &ids, |f| {
            sqlite_headers.contains(&f.path.to_str().unwrap())
        })
        .into_iter()
        .collect()
    }

    #[test]
    fn the_serving_copys_files_at_the_usual_place_are_fine() {
        let files = [
            held("/site/db.sqlite3", (1, 10), true),
            held("/site/db.sqlite3-wal", (1, 11), true),
            held("/site/media/a.png", (1, 99), true),
            held("/site/.lifeboat/states/n/data/app.db", (1, 12), true),
            held("/site/app.py", (1, 50), false),
            held("/tmp/upload-123", (1, 51), true),
            held("/site/old.log (deleted)", (1, 52), true),
        ];
        assert_eq!(judge_all(&files, &[]), []);
    }

    #[test]
    fn a_site_under_tmp_is_judged_like_any_other() {
        let spec = spec();
        let layout = StateLayout {
            site_dir: Path::new("/tmp/site"),
            state_dir: Path::new("/tmp/site/.lifeboat/states/n"),
            spec: &spec,
        };
        let ids: HashMap<PathBuf, FileId> = [("db.sqlite3".into(), (1, 10))].into_iter().collect();
        let files = [
            held("/tmp/site/db.sqlite3", (1, 77), true),
            held("/tmp/site/other.db", (1, 78), true),
            held("/tmp/scratch.db", (1, 79), true),
        ];
        let found: Vec<Finding> = judge(&layout, &files, &ids, |_| false)
            .into_iter()
            .collect();
        assert_eq!(
            found,
            [
                Finding::WritesOutside {
                    path: "/tmp/site/other.db".into(),
                    sqlite: true
                },
                Finding::WrongCopy {
                    path: "/tmp/site/db.sqlite3".into()
                },
            ]
        );
    }

    #[test]
    fn a_database_of_the_state_that_is_another_copy_is_named() {
        let files = [held("/site/db.sqlite3", (1, 77), true)];
        assert_eq!(
            judge_all(&files, &[]),
            [Finding::WrongCopy {
                path: "/site/db.sqlite3".into()
            }]
        );
    }

    #[test]
    fn writes_that_no_state_entry_covers_are_named() {
        let files = [
            held("/site/other.sqlite3", (1, 1), true),
            held("/srv/elsewhere/cache", (1, 2), true),
            held("/srv/elsewhere/data.bin", (1, 3), true),
            held("/site/notes.txt", (1, 4), true),
            held("/srv/readonly.db", (1, 5), false),
        ];
        assert_eq!(
            judge_all(&files, &["/srv/elsewhere/data.bin"]),
            [
                Finding::WritesOutside {
                    path: "/site/notes.txt".into(),
                    sqlite: false
                },
                Finding::WritesOutside {
                    path: "/site/other.sqlite3".into(),
                    sqlite: true
                },
                Finding::WritesOutside {
                    path: "/srv/elsewhere/data.bin".into(),
                    sqlite: true
                },
            ]
        );
    }
}

#[cfg(test)]
mod proc_tests {
    use super::*;

    #[test]
    fn held_files_sees_a_file_this_process_holds_open_for_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held.db");
        let _file = std::fs::File::create(&path).unwrap();
        let pgid = nix::unistd::getpgrp().as_raw() as u32;
        let held = held_files(pgid);
        let found = held
            .iter()
            .find(|(_, f)| f.path == path)
            .unwrap_or_else(|| panic!("{} not in {held:?}", path.display()));
        assert!(found.1.writable);
        assert!(found.1.id.is_some());
    }
}
