//! The site's MariaDB server (`[state] mariadb`): one `mariadbd` per state that runs, each
//! supervised like an instance (restarted when it dies), started before the instances of its
//! state and stopped after them, and the connection facts every process of the site gets
//! (`LIFEBOAT_MARIADB_*`).
//!
//! Where things are, for the state named STATE:
//!
//! | what | where | who may read it |
//! | --- | --- | --- |
//! | data dir (tables, binlog) | `STATE_DIR/<dir>` (the site dir's `mariadb/` for `site`) | the server's user |
//! | config with the admin password, the app's password, the port | `.lifeboat/mariadb/STATE/` | Lifeboat only |
//! | socket, pid file, error log, tmpdir | a short run dir: `/run/lifeboat/mariadb-HASH` as root, else `$TMPDIR/lifeboat-UID/mariadb-HASH` | the server's user (the site's processes connect to the socket) |
//!
//! As root the server runs as the site's user: `mariadbd --user` reads its config (and the
//! admin password in it) as root and then drops to that user, so neither the server nor the
//! app can read the admin password or anything else of `.lifeboat/`. A restored state's data
//! dir lies under `.lifeboat/states/` (root's): the server then runs in a private mount
//! namespace in which it is mounted at the site's own path, as instances see their state.
//!
//! This module never prints; it never puts a password on a command line or in an event.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeboat_core::Manifest;
use lifeboat_core::manifest::MariaDbSpec;
use lifeboat_mariadb::ServerSpec;
use lifeboat_supervisor::shim::Sandbox;
use lifeboat_supervisor::{
    BackoffPolicy, InstanceSpec, ResourceLimits, Shim, Supervisor, SupervisorConfig,
};

use crate::isolation::{Launcher, RunAs};
use crate::{ControlError, SITE_STATE, SitePaths};

/// How long a starting server gets to answer (crash recovery of a large database included).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stopping server gets between SIGTERM and SIGKILL (it flushes InnoDB).
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The environment variables every process of the site gets for the database.
pub const ENV_SOCKET: &str = "LIFEBOAT_MARIADB_SOCKET";
/// `127.0.0.1`.
pub const ENV_HOST: &str = "LIFEBOAT_MARIADB_HOST";
/// The server's TCP port on 127.0.0.1.
pub const ENV_PORT: &str = "LIFEBOAT_MARIADB_PORT";
/// The app's database.
pub const ENV_DATABASE: &str = "LIFEBOAT_MARIADB_DATABASE";
/// The app's database user.
pub const ENV_USER: &str = "LIFEBOAT_MARIADB_USER";
/// The app's database password.
pub const ENV_PASSWORD: &str = "LIFEBOAT_MARIADB_PASSWORD";

/// Where Lifeboat keeps the server's private files of a state.
pub(crate) fn private_dir(paths: &SitePaths, state: &str) -> PathBuf {
    paths.lifeboat_dir().join("mariadb").join(state)
}

fn password_file(paths: &SitePaths, state: &str) -> PathBuf {
    private_dir(paths, state).join("app-password")
}

fn port_file(paths: &SitePaths, state: &str) -> PathBuf {
    private_dir(paths, state).join("port")
}

/// The server's run dir (socket, pid, error log, tmp) for the state whose private dir is
/// `private`: short, because a unix socket's path is at most 107 bytes, and outside
/// `.lifeboat/` so the site's user can reach the socket.
fn run_dir(private: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    private.hash(&mut h);
    let name = format!("mariadb-{:016x}", h.finish());
    let euid = nix::unistd::geteuid();
    if euid.is_root() {
        PathBuf::from("/run/lifeboat").join(name)
    } else {
        std::env::temp_dir()
            .join(format!("lifeboat-{euid}"))
            .join(name)
    }
}

/// Makes the parent of the run dirs: `/run/lifeboat` (root's, 0755) or `$TMPDIR/lifeboat-UID`
/// (ours, 0700). One that exists must be a real directory of ours, not a link someone left.
fn prepare_run_parent(run_dir: &Path) -> Result<(), ControlError> {
    let parent = run_dir.parent().expect("a run dir has a parent");
    let mode = if nix::unistd::geteuid().is_root() {
        0o755
    } else {
        0o700
    };
    match std::fs::DirBuilder::new().mode(mode).create(parent) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(ControlError::io("create", parent)(e)),
    }
    let meta = std::fs::symlink_metadata(parent).map_err(ControlError::io("look at", parent))?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(ControlError::Refused(format!(
            "{} is not a directory of Lifeboat's own user; remove it (someone else made it) and start again",
            parent.display()
        )));
    }
    Ok(())
}

/// The connection facts of the state named `state`, as the site's processes get them. Empty
/// when the manifest declares no MariaDB; without a port or password yet (the server of that
/// state never ran), those variables are left out.
pub(crate) fn connection_env(
    paths: &SitePaths,
    manifest: &Manifest,
    state: &str,
) -> Vec<(String, String)> {
    let Some(spec) = &manifest.state.mariadb else {
        return Vec::new();
    };
    let private = private_dir(paths, state);
    let mut env = vec![
        (
            ENV_SOCKET.to_string(),
            run_dir(&private)
                .join("mariadbd.sock")
                .display()
                .to_string(),
        ),
        (ENV_HOST.to_string(), "127.0.0.1".to_string()),
        (ENV_DATABASE.to_string(), spec.database.clone()),
        (ENV_USER.to_string(), spec.user.clone()),
    ];
    if let Ok(port) = std::fs::read_to_string(port_file(paths, state)) {
        env.push((ENV_PORT.to_string(), port.trim().to_string()));
    }
    if let Ok(password) = std::fs::read_to_string(password_file(paths, state)) {
        env.push((ENV_PASSWORD.to_string(), password.trim().to_string()));
    }
    env
}

/// A new random password (hex: nothing to quote anywhere).
pub(crate) fn new_password() -> String {
    hex::encode(rand::random::<[u8; 18]>())
}

/// Writes a secret file of mode 0600, durably.
fn write_secret(path: &Path, text: &str) -> Result<(), ControlError> {
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(ControlError::io("create", parent))?;
    }
    let tmp = path.with_extension("partial");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(ControlError::io("create", &tmp))?;
        f.write_all(text.as_bytes())
            .map_err(ControlError::io("write", &tmp))?;
        f.sync_all().map_err(ControlError::io("fsync", &tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(ControlError::io("rename into place", path))
}

/// One MariaDB server of the site, for `lifeboat status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatabaseReport {
    /// The state it serves.
    pub state: String,
    /// The app's database.
    pub database: String,
    /// `mariadbd`'s pid while it runs.
    pub pid: Option<u32>,
    /// How often it was restarted after it died.
    pub restarts: u32,
    /// Its TCP port on 127.0.0.1.
    pub port: Option<u16>,
    /// Its unix socket.
    pub socket: String,
}

/// The site's MariaDB servers, one per running state.
pub(crate) struct SiteDatabase {
    pub(crate) spec: MariaDbSpec,
    paths: SitePaths,
    run_as: Option<RunAs>,
    /// Whether the server of a restored state can be shown its data dir at the site's path.
    private_mounts: bool,
    supervisor: Supervisor,
    /// The running servers by state.
    running: Mutex<BTreeMap<String, ServerSpec>>,
}

impl SiteDatabase {
    /// The site's database servers, when the manifest declares one (none runs yet). Its
    /// supervisor is a separate one (own run file and cgroups), so the reconcile loop, the
    /// status of instances and a rewind's switch never take a server for an instance.
    pub(crate) fn new(
        paths: &SitePaths,
        manifest: &Manifest,
        launcher: &Launcher,
    ) -> Result<Option<Arc<SiteDatabase>>, ControlError> {
        let Some(spec) = manifest.state.mariadb.clone() else {
            return Ok(None);
        };
        lifeboat_mariadb::Binaries::locate().map_err(|e| {
            ControlError::Refused(format!("lifeboat.toml declares [state] mariadb, but {e}"))
        })?;
        let dir = paths.lifeboat_dir().join("mariadb");
        let supervisor = Supervisor::new(SupervisorConfig {
            site: format!("{}-mariadb", manifest.site),
            site_dir: paths.dir.clone(),
            log_dir: dir.join("logs"),
            stop_timeout: STOP_TIMEOUT,
            log_max_bytes: 10 * 1024 * 1024,
            log_keep: 3,
            backoff: BackoffPolicy::default(),
            shim: launcher.shim.clone().map(|program| Shim {
                program,
                args: vec!["__instance".to_string()],
            }),
            base_env: Some(launcher.base_env.clone()),
        })
        .map_err(|e| ControlError::Supervisor(e.to_string()))?;
        supervisor
            .reap_leftovers()
            .map_err(|e| ControlError::Supervisor(e.to_string()))?;
        Ok(Some(Arc::new(SiteDatabase {
            spec,
            paths: paths.clone(),
            run_as: launcher.run_as.clone(),
            private_mounts: launcher.private_mounts.is_ok() && launcher.shim.is_some(),
            supervisor,
            running: Mutex::new(BTreeMap::new()),
        })))
    }

    /// The id of the server of `state` in its supervisor (its log is `.lifeboat/mariadb/logs/ID.log`).
    fn id(state: &str) -> String {
        format!("mariadb@{state}")
    }

    /// How the server of `state` is laid out; `port` is its TCP port.
    pub(crate) fn server_spec(
        &self,
        state: &str,
        port: Option<u16>,
    ) -> Result<ServerSpec, ControlError> {
        let private = private_dir(&self.paths, state);
        let data_dir = self.paths.state_dir(state).join(&self.spec.dir);
        let mut spec = ServerSpec::new(&data_dir, &run_dir(&private), port)?;
        spec.config_dir = private;
        spec.os_user = self.run_as.as_ref().map(|u| u.name.clone());
        if state != SITE_STATE && self.run_as.is_some() {
            // Under `.lifeboat/` the site's user can not reach it: the server sees it at the
            // site's own path, mounted there in its own namespace.
            spec.server_data_dir = Some(self.paths.dir.join(&self.spec.dir));
        }
        Ok(spec)
    }

    /// The spec of the running server of `state`.
    pub(crate) fn running(&self, state: &str) -> Option<ServerSpec> {
        self.running
            .lock()
            .expect("servers lock")
            .get(state)
            .cloned()
    }

    /// Starts the server of `state` unless it runs, and waits until it answers. On the first
    /// start of a state without a data dir, initialises one and creates the app's database and
    /// user with a new password (kept in `.lifeboat/mariadb/STATE/app-password`).
    pub(crate) async fn ensure_running(&self, state: &str) -> Result<ServerSpec, ControlError> {
        if let Some(spec) = self.running(state) {
            return Ok(spec);
        }
        let port = crate::daemon::free_port()
            .map_err(|e| ControlError::Supervisor(format!("no free port for MariaDB: {e}")))?;
        let spec = self.server_spec(state, Some(port))?;
        prepare_run_parent(&spec.run_dir)?;
        let (paths, run_as, state_owned) =
            (self.paths.clone(), self.run_as.clone(), state.to_string());
        let prepared = spec.clone();
        blocking(move || prepare_data_dir(&prepared, run_as.as_ref())).await??;
        write_secret(&port_file(&paths, &state_owned), &port.to_string())?;
        let sandbox = match &spec.server_data_dir {
            Some(shown_at) if self.private_mounts => {
                std::fs::create_dir_all(shown_at).map_err(ControlError::io("create", shown_at))?;
                Sandbox {
                    binds: vec![(spec.data_dir.clone(), shown_at.clone())],
                    ..Sandbox::default()
                }
            }
            Some(_) => {
                return Err(ControlError::Refused(format!(
                    "the MariaDB server of the restored state `{state}` needs a private mount \
                     namespace to reach its data dir as the site's user, and this machine gives \
                     none ({}); serve the site's own state, or allow mount namespaces",
                    self.paths.dir.display()
                )));
            }
            None => Sandbox::default(),
        };
        let command = spec.command();
        let mut line = String::from("exec");
        for part in std::iter::once(command.program.as_os_str())
            .chain(command.args.iter().map(|a| a.as_os_str()))
        {
            line.push(' ');
            line.push_str(&shell_quote(&part.to_string_lossy()));
        }
        self.supervisor.start(InstanceSpec {
            id: Self::id(state),
            process: "mariadb".into(),
            command: line,
            port,
            env: Vec::new(),
            sandbox,
            limits: ResourceLimits::default(),
            // mariadbd stops cleanly (and at once) on SIGTERM.
            stop_signal: None,
        });
        let waiting = spec.clone();
        if let Err(e) = blocking(move || waiting.wait_ready(READY_TIMEOUT)).await? {
            self.supervisor.stop(&Self::id(state)).await;
            return Err(e.into());
        }
        self.running
            .lock()
            .expect("servers lock")
            .insert(state.to_string(), spec.clone());
        let password = password_file(&self.paths, state);
        if !password.exists() {
            // The password is written only once the user has it: a crash in between makes
            // the next start create the user again with another one.
            let new = new_password();
            let (s, db, user, pw) = (
                spec.clone(),
                self.spec.database.clone(),
                self.spec.user.clone(),
                new.clone(),
            );
            blocking(move || s.create_app_database(&db, &user, &pw)).await??;
            write_secret(&password, &new)?;
        }
        Ok(spec)
    }

    /// Stops the server of `state` (cleanly: SIGTERM, InnoDB flushes) if it runs.
    pub(crate) async fn stop(&self, state: &str) {
        self.running.lock().expect("servers lock").remove(state);
        self.supervisor.stop(&Self::id(state)).await;
    }

    /// The app's database password of `state`, if its server ever ran.
    pub(crate) fn app_password(&self, state: &str) -> Option<String> {
        std::fs::read_to_string(password_file(&self.paths, state))
            .ok()
            .map(|p| p.trim().to_string())
    }

    /// How a rewind restores the database into the state named `state`: its config (and new
    /// admin password) in that state's private dir, the app's user given `app_password`
    /// (recorded for the state once the restore succeeded: [`Self::set_app_password`]).
    pub(crate) fn restore_options(
        &self,
        state: &str,
        app_password: &str,
    ) -> lifeboat_timeline::MariaDbRestoreOptions {
        let private = private_dir(&self.paths, state);
        lifeboat_timeline::MariaDbRestoreOptions {
            run_dir: run_dir(&private.with_extension("restore")),
            config_dir: Some(private),
            admin_password: new_password(),
            app: Some((
                self.spec.database.clone(),
                self.spec.user.clone(),
                app_password.to_string(),
            )),
        }
    }

    /// Records the app's password of `state` (what its processes get as
    /// `LIFEBOAT_MARIADB_PASSWORD`).
    pub(crate) fn set_app_password(&self, state: &str, password: &str) -> Result<(), ControlError> {
        write_secret(&password_file(&self.paths, state), password)
    }

    /// Removes what Lifeboat keeps of the server of `state` (a rewind that was called off).
    pub(crate) fn forget(&self, state: &str) {
        let _ = std::fs::remove_dir_all(private_dir(&self.paths, state));
    }

    /// Stops every server.
    pub(crate) async fn stop_all(&self) {
        self.running.lock().expect("servers lock").clear();
        self.supervisor.stop_all().await;
    }

    /// Every running server, for `status`.
    pub(crate) fn report(&self) -> Vec<DatabaseReport> {
        let running = self.running.lock().expect("servers lock").clone();
        let instances = self.supervisor.instances();
        running
            .into_iter()
            .map(|(state, spec)| {
                let id = Self::id(&state);
                let i = instances.iter().find(|i| i.id == id);
                DatabaseReport {
                    database: self.spec.database.clone(),
                    pid: i.and_then(|i| i.pid),
                    restarts: i.map(|i| i.restarts).unwrap_or(0),
                    port: spec.port,
                    socket: spec.socket().display().to_string(),
                    state,
                }
            })
            .collect()
    }
}

/// A data dir for the server: a new one initialised when there is none, the config
/// rewritten (its port changes at each start) with the admin password it had, and the whole
/// dir given to the server's user.
fn prepare_data_dir(spec: &ServerSpec, run_as: Option<&RunAs>) -> Result<(), ControlError> {
    let empty = std::fs::read_dir(&spec.data_dir)
        .map(|mut rd| rd.next().is_none())
        .unwrap_or(true);
    if empty {
        spec.initialize(&new_password())?;
    } else {
        spec.check_data_dir()?;
        let admin = spec.admin_password().map_err(|e| {
            ControlError::Refused(format!(
                "{e}; the data dir {} is there but Lifeboat's config of it is not: put \
                 .lifeboat/mariadb back, or move the data dir aside to start a new database",
                spec.data_dir.display()
            ))
        })?;
        spec.write_config(&admin)?;
    }
    if let Some(user) = run_as {
        give_to(&spec.data_dir, user)?;
    }
    Ok(())
}

/// Gives `dir` and everything in it to `user` (only what is not theirs yet).
pub(crate) fn give_to(dir: &Path, user: &RunAs) -> Result<(), ControlError> {
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = entry.map_err(|e| {
            ControlError::io("walk", dir)(
                e.into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("a symlink loop")),
            )
        })?;
        let meta = entry
            .path()
            .symlink_metadata()
            .map_err(ControlError::io("look at", entry.path()))?;
        if meta.uid() != user.uid || meta.gid() != user.gid {
            std::os::unix::fs::lchown(entry.path(), Some(user.uid), Some(user.gid))
                .map_err(ControlError::io("give the site's user", entry.path()))?;
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
        .map_err(ControlError::io("set permissions of", dir))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ControlError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ControlError::Supervisor(format!("a MariaDB task failed: {e}")))
}

/// Where an import goes: the live state's running server of the site in `dir`.
pub struct ImportTarget {
    /// The server (socket and admin login for Lifeboat's tools).
    pub spec: ServerSpec,
    /// The app's database.
    pub database: String,
}

/// The running MariaDB server of the live state of the site in `dir` (asked of its daemon),
/// for `lifeboat import-db`.
pub async fn import_target(dir: &Path) -> Result<ImportTarget, ControlError> {
    let paths = SitePaths::new(dir);
    let manifest = crate::daemon::load_manifest(&paths)?;
    let Some(db) = &manifest.state.mariadb else {
        return Err(ControlError::Refused(
            "lifeboat.toml declares no MariaDB database: add e.g. `mariadb = { database = \"wordpress\" }` under [state], then `lifeboat up`".into(),
        ));
    };
    let status = crate::ControlClient::for_site(dir)?.status().await?;
    let Some(running) = status.databases.iter().find(|d| d.state == status.state) else {
        return Err(ControlError::Refused(format!(
            "the site's MariaDB server of the live state `{}` is not running; check `lifeboat status` and its log in .lifeboat/mariadb/logs",
            status.state
        )));
    };
    let private = private_dir(&paths, &running.state);
    let run = Path::new(&running.socket)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| run_dir(&private));
    let mut spec = ServerSpec::new(
        &paths.state_dir(&running.state).join(&db.dir),
        &run,
        running.port,
    )?;
    spec.config_dir = private;
    Ok(ImportTarget {
        spec,
        database: db.database.clone(),
    })
}
