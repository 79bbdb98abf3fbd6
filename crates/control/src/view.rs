//! How the site's own processes (instances, the credentials hook, `lifeboat exec`) see a state.
//!
//! An app opens its data where it always has. When the state it must serve is a restored copy
//! (`.lifeboat/states/NAME`), the process runs in a private mount namespace in which the
//! copy's declared `[state]` paths are bind-mounted over the site dir's own
//! (`lifeboat_core::layout`), set up by the instance shim. Two sets of instances on two states
//! can then run side by side during a rewind's switch, each seeing its own.
//!
//! Where the machine does not allow private mounts, the process only gets the copy's path as
//! `$LIFEBOAT_STATE_DIR`, and the owner is warned: an app that does not read it would serve
//! the wrong data (the open-file watcher in `state_use.rs` catches it).

use std::ffi::OsString;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use lifeboat_core::Manifest;
use lifeboat_core::layout::{MountKind, StateMount, state_mounts};
use lifeboat_supervisor::shim::Sandbox;
use serde::{Deserialize, Serialize};

use crate::isolation::Launcher;
use crate::{ControlError, SITE_STATE, SitePaths};

/// What a process of the site gets to run on a state: its environment and its sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessView {
    /// The working directory: the site dir.
    pub dir: PathBuf,
    /// The environment every process of the site starts from (never Lifeboat's own).
    pub base_env: Vec<(String, String)>,
    /// The process's own environment on top: its `env` and the `LIFEBOAT_*` facts.
    pub env: Vec<(String, String)>,
    /// `(from, to)` bind mounts, in order.
    pub binds: Vec<(PathBuf, PathBuf)>,
    /// Directories hidden from the process (Lifeboat's own).
    #[serde(default)]
    pub hide: Vec<PathBuf>,
    /// The user it runs as, when not Lifeboat's own.
    #[serde(default)]
    pub user: Option<String>,
    /// The directory Landlock keeps it out of.
    #[serde(default)]
    pub deny: Option<PathBuf>,
}

impl ProcessView {
    /// The shim's sandbox for this view.
    pub fn sandbox(&self) -> Sandbox {
        Sandbox {
            binds: self.binds.clone(),
            hide: self.hide.clone(),
            cgroups: Vec::new(),
            user: self.user.clone(),
            deny: self.deny.clone(),
            join_netns: None,
        }
    }

    /// The arguments of `lifeboat __instance` that run `command` in this view.
    pub fn shim_args(&self, command: &[OsString]) -> Vec<OsString> {
        let mut args = vec![OsString::from("__instance")];
        args.extend(self.sandbox().to_args());
        args.push("--".into());
        args.extend(command.iter().cloned());
        args
    }

    /// The whole environment of a hook or `exec` command: nothing inherited.
    pub fn full_env(&self) -> impl Iterator<Item = (&String, &String)> {
        self.base_env.iter().chain(&self.env).map(|(k, v)| (k, v))
    }
}

/// `lifeboat exec`'s question to the daemon.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Whose environment the command gets (default: [`default_process`]).
    pub process: Option<String>,
}

/// How `lifeboat exec` runs a command on the site in `dir` while no daemon runs: the live
/// state recorded in the store, seen the way the site's processes see it. `shim` is the
/// lifeboat binary, used to find out whether private mounts work here.
pub async fn offline_view(
    dir: &Path,
    process: Option<&str>,
    shim: &Path,
) -> Result<ProcessView, ControlError> {
    let paths = SitePaths::new(dir);
    let manifest = crate::daemon::load_manifest(&paths)?;
    let process = match process {
        Some(p) if !manifest.processes.contains_key(p) => {
            return Err(ControlError::Refused(format!(
                "the manifest has no process `{p}`; the processes are: {}",
                manifest
                    .processes
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Some(p) => Some(p),
        None => default_process(&manifest),
    };
    let live = crate::store::stored_states(dir)?.live;
    let launcher = Launcher::prepare(&paths, &manifest, Some(shim.to_path_buf())).await?;
    process_view(&paths, &manifest, &live, process, &launcher)
}

/// The process of the manifest whose environment hooks and `exec` get by default: `web`, else
/// the first process serving HTTP, else the first one.
pub fn default_process(manifest: &Manifest) -> Option<&str> {
    if manifest.processes.contains_key("web") {
        return Some("web");
    }
    manifest
        .processes
        .iter()
        .find(|(_, p)| p.http)
        .or_else(|| manifest.processes.iter().next())
        .map(|(name, _)| name.as_str())
}

/// The view a process of kind `process` gets of the state named `state`, with the mount
/// sources and targets it needs made ready on disk, and the state given to the site's user.
pub(crate) fn process_view(
    paths: &SitePaths,
    manifest: &Manifest,
    state: &str,
    process: Option<&str>,
    launcher: &Launcher,
) -> Result<ProcessView, ControlError> {
    let private_mounts = launcher.private_mounts.is_ok();
    let state_dir = paths.state_dir(state);
    if let Some(user) = &launcher.run_as {
        crate::isolation::grant_state(&state_dir, manifest, user)?;
    }
    let mounts = if state == SITE_STATE || !private_mounts {
        Vec::new()
    } else {
        state_mounts(&paths.dir, &state_dir, &manifest.state)
    };
    for mount in &mounts {
        prepare(mount)?;
    }
    // Where the app finds its state when it asks: the usual place when it is mounted there.
    let shown_at = if state == SITE_STATE || private_mounts {
        paths.dir.clone()
    } else {
        state_dir
    };
    let mut env: Vec<(String, String)> = process
        .and_then(|p| manifest.processes.get(p))
        .map(|p| p.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    env.push(("LIFEBOAT_STATE_DIR".into(), shown_at.display().to_string()));
    env.push(("LIFEBOAT_SITE".into(), manifest.site.clone()));
    env.push(("LIFEBOAT_SITE_DIR".into(), paths.dir.display().to_string()));
    env.extend(crate::mariadb::connection_env(paths, manifest, state));
    let lifeboat_dir = paths.lifeboat_dir();
    Ok(ProcessView {
        dir: paths.dir.clone(),
        base_env: launcher.base_env.clone(),
        env,
        binds: mounts.into_iter().map(|m| (m.source, m.target)).collect(),
        hide: if private_mounts {
            vec![lifeboat_dir.clone()]
        } else {
            Vec::new()
        },
        user: launcher.run_as.as_ref().map(|u| u.name.clone()),
        deny: (launcher.run_as.is_none() && launcher.landlock.is_ok()).then_some(lifeboat_dir),
    })
}

/// Makes sure both ends of a mount exist and are of its kind. A missing end is created empty:
/// a declared dir the copy never had, a database's `-wal` / `-shm` (SQLite treats empty ones as
/// "no log yet"), or the site dir's own mount point.
fn prepare(mount: &StateMount) -> Result<(), ControlError> {
    for end in [&mount.source, &mount.target] {
        match mount.kind {
            MountKind::Dir => {
                if end.exists() && !end.is_dir() {
                    return Err(ControlError::Rewind(format!(
                        "{} is declared in [state] dirs but is not a directory; move it aside or fix the manifest",
                        end.display()
                    )));
                }
                std::fs::create_dir_all(end).map_err(ControlError::io("create", end))?;
            }
            MountKind::File => {
                if end.is_dir() {
                    return Err(ControlError::Rewind(format!(
                        "{} should be a database file (declared in [state] sqlite) but is a directory; move it aside or fix the manifest",
                        end.display()
                    )));
                }
                if let Some(parent) = end.parent() {
                    std::fs::create_dir_all(parent).map_err(ControlError::io("create", parent))?;
                }
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o644)
                    .open(end)
                    .map_err(ControlError::io("create", end))?;
            }
        }
    }
    Ok(())
}

/// Whether the shim can make private mounts on this machine, found by trying: a directory
/// with a marker is bind-mounted over an empty one for `test -e`. `Err` says why not.
pub async fn probe_private_mounts(shim: &Path, scratch: &Path) -> Result<(), String> {
    let (from, to) = (scratch.join("from"), scratch.join("to"));
    let setup = || -> std::io::Result<()> {
        let _ = std::fs::remove_dir_all(scratch);
        std::fs::create_dir_all(&from)?;
        std::fs::create_dir_all(&to)?;
        std::fs::write(from.join("marker"), b"")
    };
    setup().map_err(|e| format!("could not prepare {}: {e}", scratch.display()))?;
    let view = ProcessView {
        dir: scratch.to_path_buf(),
        binds: vec![(from, to.clone())],
        ..ProcessView::default()
    };
    let command = [
        OsString::from("test"),
        OsString::from("-e"),
        to.join("marker").into_os_string(),
    ];
    let output = tokio::process::Command::new(shim)
        .args(view.shim_args(&command))
        .env("LIFEBOAT_SUPERVISOR_PID", std::process::id().to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    let _ = std::fs::remove_dir_all(scratch);
    let output = output.map_err(|e| format!("could not run {}: {e}", shim.display()))?;
    if output.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&output.stderr).trim().to_string();
    Err(if said.is_empty() {
        format!("the test mount did not show ({})", output.status)
    } else {
        said
    })
}

/// Keeps every database of the site dir's own state open with a read lock, in a process of
/// its own, until its parent (the daemon) is gone; `lifeboat __hold-sqlite` runs it.
///
/// Why: the site dir's database files are the mount points over which instances of a restored
/// state see the restored copy's. SQLite deletes a database's `-wal` and `-shm` when its last
/// connection closes, and the kernel then detaches the mounts on them in every instance's
/// namespace: the instances would start a second log beside the site dir's database, and the
/// restored copy would be corrupted. While any connection holds the database's shared lock,
/// no connection is the last, so nothing is deleted. (A process of its own, because closing
/// any descriptor of a file drops every POSIX lock the closing process has on it, and the
/// daemon opens and closes these files for capture.) The connections never checkpoint, never
/// write and hold no read transaction, so the app cannot notice them.
pub fn hold_databases(parent: u32, databases: &[PathBuf]) -> std::io::Result<()> {
    use rusqlite::{Connection, OpenFlags, config::DbConfig};
    let mut held = Vec::new();
    for db in databases {
        if !db.is_file() {
            continue;
        }
        let conn = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| std::io::Error::other(format!("could not open {}: {e}", db.display())))?;
        let _ = conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true);
        let _ = conn.busy_timeout(std::time::Duration::from_secs(5));
        // Only a database in WAL mode keeps its shared lock between transactions, and only
        // WAL mode has files that could be deleted under the mounts.
        let wal = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
            .is_ok_and(|m| m.eq_ignore_ascii_case("wal"));
        if !wal {
            continue;
        }
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
            .map_err(|e| std::io::Error::other(format!("could not read {}: {e}", db.display())))?;
        held.push(conn);
    }
    // Tell the daemon the locks are taken: it lets an older holder go only after this.
    println!("held {}", held.len());
    use std::io::Write;
    std::io::stdout().flush()?;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        if nix::unistd::getppid().as_raw() as u32 != parent {
            return Ok(());
        }
    }
}

/// The daemon's holder of the site dir's databases ([`hold_databases`]).
pub(crate) struct DatabaseHolder {
    child: std::process::Child,
}

impl DatabaseHolder {
    /// Starts a holder of the site dir's declared databases (those that exist now).
    pub(crate) fn start(
        shim: &Path,
        paths: &SitePaths,
        manifest: &Manifest,
    ) -> std::io::Result<DatabaseHolder> {
        let dbs: Vec<PathBuf> = manifest
            .state
            .sqlite
            .iter()
            .map(|db| paths.dir.join(db))
            .collect();
        let mut child = std::process::Command::new(shim)
            .arg("__hold-sqlite")
            .arg("--parent")
            .arg(std::process::id().to_string())
            .arg("--")
            .args(&dbs)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        // Wait (bounded) until it says its locks are taken.
        let stdout = child.stdout.take();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut line = String::new();
            if let Some(out) = stdout {
                let _ = std::io::BufReader::new(out).read_line(&mut line);
            }
            let _ = tx.send(line);
        });
        let holder = DatabaseHolder { child };
        match rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(line) if line.starts_with("held") => Ok(holder),
            _ => Err(std::io::Error::other(
                "the holder of the site's databases did not start; see lifeboat's log",
            )),
        }
    }
}

impl Drop for DatabaseHolder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launcher(private_mounts: bool) -> Launcher {
        Launcher {
            shim: None,
            private_mounts: if private_mounts {
                Ok(())
            } else {
                Err("off".into())
            },
            run_as: None,
            landlock: Err("off".into()),
            base_env: Vec::new(),
        }
    }

    fn manifest(text: &str) -> Manifest {
        Manifest::parse("lifeboat.toml", text).unwrap()
    }

    const SITE: &str = r#"
[site]
name = "blog"
[processes.worker]
command = "./worker"
http = false
[processes.web]
command = "./web"
env = { DJANGO_SETTINGS_MODULE = "mysite.settings" }
[state]
sqlite = ["db.sqlite3"]
dirs = ["media"]
"#;

    #[test]
    fn a_restored_state_is_shown_at_the_usual_place_with_every_mount_point_ready() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SitePaths::new(dir.path());
        let m = manifest(SITE);
        std::fs::write(paths.dir.join("db.sqlite3"), "live").unwrap();
        let copy = paths.state_dir("n");
        std::fs::create_dir_all(&copy).unwrap();
        std::fs::write(copy.join("db.sqlite3"), "restored").unwrap();
        let view = process_view(&paths, &m, "n", Some("web"), &launcher(true)).unwrap();
        assert_eq!(view.binds.len(), 4);
        for (from, to) in &view.binds {
            assert!(
                from.starts_with(&copy) && from.exists(),
                "{}",
                from.display()
            );
            assert!(
                to.starts_with(&paths.dir) && to.exists(),
                "{}",
                to.display()
            );
        }
        assert_eq!(
            std::fs::read_to_string(paths.dir.join("db.sqlite3")).unwrap(),
            "live",
            "the site's own files are only mount points"
        );
        assert!(
            view.env
                .contains(&("DJANGO_SETTINGS_MODULE".into(), "mysite.settings".into()))
        );
        assert!(
            view.env
                .contains(&("LIFEBOAT_STATE_DIR".into(), paths.dir.display().to_string()))
        );
    }

    #[test]
    fn without_private_mounts_the_copy_is_named_by_its_absolute_path() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SitePaths::new(dir.path());
        let view =
            process_view(&paths, &manifest(SITE), "n", Some("web"), &launcher(false)).unwrap();
        assert!(view.binds.is_empty());
        let state_dir = &view
            .env
            .iter()
            .find(|(k, _)| k == "LIFEBOAT_STATE_DIR")
            .unwrap()
            .1;
        assert!(Path::new(state_dir).is_absolute());
        assert!(state_dir.ends_with(".lifeboat/states/n"), "{state_dir}");
    }

    #[test]
    fn hooks_and_exec_get_the_web_process_environment_by_default() {
        assert_eq!(default_process(&manifest(SITE)), Some("web"));
    }
}
