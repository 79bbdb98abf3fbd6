//! The site's states: the site dir's own (`site`) and the restored copies under
//! `.lifeboat/states/` that `rewind` builds. A rewind never deletes the state it replaced, so
//! they pile up; `lifeboat states` lists them with their size and `lifeboat states drop` deletes
//! the ones the owner no longer wants. The live state can never be dropped; the previous one
//! (what `rewind --undo` goes back to) only when asked for by name, and undo is then refused.
//!
//! Order of a drop (a kill -9 at any point leaves nothing that breaks the site): every name is
//! checked first and nothing changes if one is refused; the states record is written without
//! the dropped previous state; each restored copy is renamed to `.dropping-NAME` (so a crash
//! mid-delete leaves an entry that is listed as incomplete, never a half-deleted state under
//! its own name) and then deleted.

use std::path::{Path, PathBuf};

use lifeboat_core::manifest::StateSpec;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::store::StatesRecord;
use crate::{ControlError, SITE_STATE, SitePaths};

/// What a state is to the site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StateRole {
    /// What the site serves now.
    Live,
    /// What `rewind --undo` would go back to.
    Previous,
    /// Neither: an older state, kept until dropped.
    Kept,
    /// A restore that did not finish (a rewind running now, or killed), or a drop that was
    /// interrupted. Never used by the site.
    Incomplete,
}

/// One state in `lifeboat states`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateInfo {
    pub name: String,
    pub role: StateRole,
    /// Bytes of its databases and files (for `site`: only the manifest's `[state]` paths).
    pub bytes: u64,
    /// When its directory last changed (for a restored copy: about when it was restored).
    #[serde(with = "time::serde::rfc3339::option")]
    pub modified: Option<OffsetDateTime>,
    pub path: PathBuf,
}

/// `lifeboat states drop`: the names to delete.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DropRequest {
    pub names: Vec<String>,
    /// Also every kept and incomplete state (`lifeboat states prune`).
    #[serde(default)]
    pub all_kept: bool,
    /// The previous state may be among them (undo is then no longer possible).
    #[serde(default)]
    pub allow_previous: bool,
}

/// What a drop deleted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DropReport {
    pub dropped: Vec<StateInfo>,
    pub freed_bytes: u64,
    /// The state `rewind --undo` goes back to now (none once the previous state is dropped).
    pub previous: Option<String>,
}

/// Every state of the site, live first, then previous, then the others by name.
pub fn list(
    paths: &SitePaths,
    spec: &StateSpec,
    record: &StatesRecord,
) -> Result<Vec<StateInfo>, ControlError> {
    let role_of = |name: &str| {
        if name == record.live {
            StateRole::Live
        } else if record.previous.as_deref() == Some(name) {
            StateRole::Previous
        } else if name.starts_with('.') {
            StateRole::Incomplete
        } else {
            StateRole::Kept
        }
    };
    let site_dir = paths.state_dir(SITE_STATE);
    let site = StateInfo {
        name: SITE_STATE.to_string(),
        role: role_of(SITE_STATE),
        bytes: site_state_paths(&site_dir, spec)
            .iter()
            .map(|p| size_of(p))
            .sum(),
        modified: None,
        path: site_dir,
    };
    // The site dir's own state once dropped (or never written) is not worth a line.
    let mut states = Vec::new();
    if site.role != StateRole::Kept || site.bytes > 0 {
        states.push(site);
    }
    let dir = paths.states();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(sorted(states)),
        Err(e) => return Err(ControlError::io("list", &dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(ControlError::io("list", &dir))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_dir() || name == SITE_STATE {
            continue;
        }
        states.push(StateInfo {
            role: role_of(&name),
            bytes: size_of(&path),
            modified: meta.modified().ok().map(OffsetDateTime::from),
            name,
            path,
        });
    }
    Ok(sorted(states))
}

fn sorted(mut states: Vec<StateInfo>) -> Vec<StateInfo> {
    let rank = |r: StateRole| match r {
        StateRole::Live => 0,
        StateRole::Previous => 1,
        StateRole::Kept => 2,
        StateRole::Incomplete => 3,
    };
    states.sort_by(|a, b| {
        rank(a.role)
            .cmp(&rank(b.role))
            .then_with(|| a.name.cmp(&b.name))
    });
    states
}

/// Checks a drop against the states that exist; returns the states to delete and the record
/// to store, or why nothing may change.
pub fn plan_drop(
    states: &[StateInfo],
    record: &StatesRecord,
    req: &DropRequest,
) -> Result<(Vec<StateInfo>, StatesRecord), ControlError> {
    let mut chosen: Vec<StateInfo> = Vec::new();
    for name in &req.names {
        let Some(state) = states.iter().find(|s| &s.name == name) else {
            let known: Vec<&str> = states.iter().map(|s| s.name.as_str()).collect();
            return Err(ControlError::Refused(format!(
                "there is no state named {name:?}; the states are: {} (see `lifeboat states`)",
                known.join(", ")
            )));
        };
        match state.role {
            StateRole::Live => {
                return Err(ControlError::Refused(format!(
                    "{name} is the live state: the site serves it. Rewind (or undo) to another state first"
                )));
            }
            StateRole::Previous if !req.allow_previous => {
                return Err(ControlError::Refused(format!(
                    "{name} is what `lifeboat rewind --undo` goes back to; confirm dropping it (then undo is no longer possible)"
                )));
            }
            _ => {}
        }
        if !chosen.iter().any(|c| c.name == state.name) {
            chosen.push(state.clone());
        }
    }
    if req.all_kept {
        for state in states {
            if matches!(state.role, StateRole::Kept | StateRole::Incomplete)
                && !chosen.iter().any(|c| c.name == state.name)
            {
                chosen.push(state.clone());
            }
        }
    }
    let mut record = record.clone();
    if chosen
        .iter()
        .any(|s| record.previous.as_deref() == Some(s.name.as_str()))
    {
        record.previous = None;
    }
    Ok((chosen, record))
}

/// Deletes states chosen by [`plan_drop`], after the returned record was stored.
pub fn delete(
    paths: &SitePaths,
    spec: &StateSpec,
    chosen: Vec<StateInfo>,
    previous: Option<String>,
) -> Result<DropReport, ControlError> {
    let mut report = DropReport {
        previous,
        ..DropReport::default()
    };
    for state in chosen {
        if state.name == SITE_STATE {
            // Emptied, not removed: these paths are where instances of a restored state see
            // its copy (bind mounts), and removing a mount point detaches the mounts on it in
            // every instance. Empty files and dirs are all that is left.
            for path in site_state_paths(&paths.state_dir(SITE_STATE), spec) {
                empty_in_place(&path)?;
            }
        } else {
            let states = paths.states();
            let doomed = if state.name.starts_with('.') {
                state.path.clone()
            } else {
                let doomed = states.join(format!(".dropping-{}", state.name));
                std::fs::rename(&state.path, &doomed)
                    .map_err(ControlError::io("rename", &state.path))?;
                sync_dir(&states)?;
                doomed
            };
            remove_any(&doomed)?;
            sync_dir(&states)?;
        }
        remove_any(&paths.capture(&state.name))?;
        report.freed_bytes += state.bytes;
        report.dropped.push(state);
    }
    Ok(report)
}

/// Drops states while no daemon runs: the store is opened (which also keeps a daemon from
/// starting meanwhile), the record updated, then the states deleted.
pub fn drop_offline(
    site_dir: &Path,
    spec: &StateSpec,
    req: &DropRequest,
) -> Result<DropReport, ControlError> {
    let paths = SitePaths::new(site_dir);
    let store_path = paths.store();
    let store = store_path
        .exists()
        .then(|| crate::store::Store::open(&store_path, site_dir))
        .transpose()?;
    let record = match &store {
        Some(store) => store.states()?,
        None => StatesRecord::default(),
    };
    let states = list(&paths, spec, &record)?;
    let (chosen, new_record) = plan_drop(&states, &record, req)?;
    if let Some(store) = &store
        && new_record != record
    {
        store.set_states(&new_record)?;
    }
    delete(&paths, spec, chosen, new_record.previous)
}

/// The states while no daemon runs.
pub fn list_offline(site_dir: &Path, spec: &StateSpec) -> Result<Vec<StateInfo>, ControlError> {
    let record = crate::store::stored_states(site_dir)?;
    list(&SitePaths::new(site_dir), spec, &record)
}

/// The files and directories of the site dir's own state: each database with its WAL and
/// shared-memory files, and each data dir.
fn site_state_paths(site_dir: &Path, spec: &StateSpec) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for db in &spec.sqlite {
        let db = site_dir.join(db);
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut side = db.clone().into_os_string();
            side.push(suffix);
            out.push(PathBuf::from(side));
        }
        out.push(db);
    }
    out.extend(spec.dirs.iter().map(|d| site_dir.join(d)));
    out
}

/// Bytes under `path` (a file or a tree); symlinks count as themselves, never followed.
fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| size_of(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

/// Frees what `path` holds but keeps the path: a file is truncated to nothing, a directory
/// loses its contents. A symlink is removed (it is never a mount point).
fn empty_in_place(path: &Path) -> Result<(), ControlError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            let entries = std::fs::read_dir(path).map_err(ControlError::io("list", path))?;
            for entry in entries {
                let entry = entry.map_err(ControlError::io("list", path))?;
                remove_any(&entry.path())?;
            }
            Ok(())
        }
        Ok(meta) if meta.is_file() => std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(0))
            .map_err(ControlError::io("empty", path)),
        Ok(_) => remove_any(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ControlError::io("look at", path)(e)),
    }
}

fn remove_any(path: &Path) -> Result<(), ControlError> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(ControlError::io("delete", path)(e))
        }
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), ControlError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ControlError::io("fsync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, role: StateRole) -> StateInfo {
        StateInfo {
            name: name.into(),
            role,
            bytes: 10,
            modified: None,
            path: PathBuf::from(name),
        }
    }

    fn record(live: &str, previous: Option<&str>) -> StatesRecord {
        StatesRecord {
            live: live.into(),
            previous: previous.map(String::from),
        }
    }

    fn names(states: &[StateInfo]) -> Vec<&str> {
        states.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn the_live_state_and_unknown_names_are_refused_and_nothing_is_chosen() {
        let states = [
            info("b", StateRole::Live),
            info("site", StateRole::Previous),
            info("a", StateRole::Kept),
        ];
        let rec = record("b", Some("site"));
        let drop = |names: &[&str]| DropRequest {
            names: names.iter().map(|n| n.to_string()).collect(),
            allow_previous: true,
            ..DropRequest::default()
        };
        let err = plan_drop(&states, &rec, &drop(&["a", "b"])).unwrap_err();
        assert!(err.to_string().contains("b is the live state"), "{err}");
        let err = plan_drop(&states, &rec, &drop(&["../../etc"])).unwrap_err();
        assert!(
            err.to_string().contains("no state named \"../../etc\""),
            "{err}"
        );
    }

    #[test]
    fn the_previous_state_needs_consent_and_dropping_it_ends_undo() {
        let states = [
            info("b", StateRole::Live),
            info("site", StateRole::Previous),
        ];
        let rec = record("b", Some("site"));
        let mut req = DropRequest {
            names: vec!["site".into()],
            ..DropRequest::default()
        };
        let err = plan_drop(&states, &rec, &req).unwrap_err();
        assert!(err.to_string().contains("rewind --undo"), "{err}");
        req.allow_previous = true;
        let (chosen, new) = plan_drop(&states, &rec, &req).unwrap();
        assert_eq!(names(&chosen), ["site"]);
        assert_eq!(new, record("b", None));
    }

    #[test]
    fn prune_takes_kept_and_incomplete_states_only() {
        let states = [
            info("c", StateRole::Live),
            info("b", StateRole::Previous),
            info("a", StateRole::Kept),
            info(".partial-x", StateRole::Incomplete),
        ];
        let rec = record("c", Some("b"));
        let req = DropRequest {
            all_kept: true,
            ..DropRequest::default()
        };
        let (chosen, new) = plan_drop(&states, &rec, &req).unwrap();
        assert_eq!(names(&chosen), ["a", ".partial-x"]);
        assert_eq!(new, rec, "undo still goes back to b");
    }

    #[test]
    fn listing_and_deleting_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SitePaths::new(dir.path());
        let spec = StateSpec {
            sqlite: vec![PathBuf::from("data/app.db")],
            dirs: vec![PathBuf::from("data/uploads")],
            mariadb: None,
        };
        std::fs::create_dir_all(dir.path().join("data/uploads")).unwrap();
        std::fs::write(dir.path().join("data/app.db"), [0u8; 100]).unwrap();
        std::fs::write(dir.path().join("data/app.db-wal"), [0u8; 20]).unwrap();
        std::fs::write(dir.path().join("data/uploads/x"), [0u8; 7]).unwrap();
        std::fs::write(dir.path().join("data/keep.txt"), b"not state").unwrap();
        for name in ["r1", "r2", ".partial-r3"] {
            let d = paths.states().join(name).join("data");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("app.db"), [0u8; 50]).unwrap();
        }
        let rec = record("r2", Some("site"));
        let states = list(&paths, &spec, &rec).unwrap();
        let summary: Vec<(&str, StateRole, u64)> = states
            .iter()
            .map(|s| (s.name.as_str(), s.role, s.bytes))
            .collect();
        assert_eq!(
            summary,
            [
                ("r2", StateRole::Live, 50),
                ("site", StateRole::Previous, 127),
                ("r1", StateRole::Kept, 50),
                (".partial-r3", StateRole::Incomplete, 50),
            ]
        );
        let req = DropRequest {
            names: vec!["site".into()],
            all_kept: true,
            allow_previous: true,
        };
        let (chosen, new) = plan_drop(&states, &rec, &req).unwrap();
        let report = delete(&paths, &spec, chosen, new.previous.clone()).unwrap();
        assert_eq!(report.freed_bytes, 227);
        assert_eq!(report.previous, None);
        // Emptied in place: they are the mount points of the live state's instances.
        let size = |p: &str| std::fs::metadata(dir.path().join(p)).unwrap().len();
        assert_eq!(size("data/app.db"), 0);
        assert_eq!(size("data/app.db-wal"), 0);
        assert_eq!(
            std::fs::read_dir(dir.path().join("data/uploads"))
                .unwrap()
                .count(),
            0
        );
        let again = list(&paths, &spec, &new).unwrap();
        assert!(
            again.iter().all(|s| s.name != "site"),
            "an emptied site state is not listed: {again:?}"
        );
        assert!(
            dir.path().join("data/keep.txt").exists(),
            "only the manifest's state paths are deleted from the site dir"
        );
        let left: Vec<String> = std::fs::read_dir(paths.states())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["r2"]);
    }
}
