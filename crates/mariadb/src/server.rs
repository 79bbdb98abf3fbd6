//! A MariaDB server Lifeboat manages: its data directory, its generated configuration, the
//! command line the supervisor runs, readiness, and the app's database and user.
//!
//! Everything lives in two directories the caller chooses: the *data dir* (the live state:
//! tables and binary logs) and the *run dir* (inside the site's `.lifeboat` area: the config
//! with the admin password, socket, pid file, tmpdir, error log). Nothing is read from or
//! written to `/etc/mysql` or any other system-wide place: the server is started with
//! `--defaults-file` pointing at the generated config, and `mariadb-install-db` with
//! `--no-defaults`.
//!
//! This module never prints; the server's own messages go to its error log.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;

use crate::error::{MariaDbError, Result, io_err};
use crate::gtid::GtidPos;
use crate::tools::{self, Binaries, opt};

/// Longest path a unix socket accepts (`sun_path` is 108 bytes with its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// How a managed server is laid out and configured.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// The data directory (tables, binary logs): part of the site's live state.
    pub data_dir: PathBuf,
    /// The server's run directory: socket, pid file, tmpdir, error log (and the config, unless
    /// `config_dir` is elsewhere). Given to `os_user` when one is set.
    pub run_dir: PathBuf,
    /// Where the generated config with the admin password (mode 0600) lives: `run_dir` by
    /// default. Lifeboat keeps it in its own `.lifeboat/` (root's, 0700) when mariadbd drops
    /// to the site's user, so that user never reads the admin password: mariadbd reads its
    /// config before it changes user.
    pub config_dir: PathBuf,
    /// Where the server itself sees `data_dir`, when it runs in a private mount namespace in
    /// which the data dir is mounted at another path (a restored state shown at the site's
    /// own path). `None`: `data_dir`. Lifeboat's tools (backups, restores) use `data_dir`.
    pub server_data_dir: Option<PathBuf>,
    /// TCP port on 127.0.0.1; `None` serves the unix socket only (`skip-networking`, used by
    /// restores and checks so they never take a port the site may need).
    pub port: Option<u16>,
    /// `server_id`: part of every GTID this server writes.
    pub server_id: u32,
    /// OS user mariadbd runs as. `None`: the current user; when that is root, `root`
    /// (mariadbd refuses root without `--user=root`). Another user must be able to write
    /// both directories.
    pub os_user: Option<String>,
    /// InnoDB buffer pool size in MiB.
    pub buffer_pool_mib: u32,
    /// Extra `[mysqld]` lines (`name=value`) appended to the generated config.
    pub extra_options: Vec<String>,
    /// The MariaDB programs.
    pub binaries: Binaries,
}

/// The program and arguments that run the server in the foreground (for the supervisor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCommand {
    /// `mariadbd`.
    pub program: PathBuf,
    /// Its arguments (`--defaults-file=...` first, as mariadbd requires).
    pub args: Vec<OsString>,
}

impl ServerSpec {
    /// A spec with defaults (server id 1, 128 MiB buffer pool), the programs found on this
    /// machine.
    pub fn new(data_dir: &Path, run_dir: &Path, port: Option<u16>) -> Result<ServerSpec> {
        Ok(ServerSpec {
            data_dir: data_dir.to_path_buf(),
            run_dir: run_dir.to_path_buf(),
            config_dir: run_dir.to_path_buf(),
            server_data_dir: None,
            port,
            server_id: 1,
            os_user: None,
            buffer_pool_mib: 128,
            extra_options: Vec::new(),
            binaries: Binaries::locate()?,
        })
    }

    /// The unix socket the server listens on.
    pub fn socket(&self) -> PathBuf {
        self.run_dir.join("mariadbd.sock")
    }

    /// The generated config (holds the admin password: mode 0600).
    pub fn config_path(&self) -> PathBuf {
        self.config_dir.join("my.cnf")
    }

    /// The server's error log.
    pub fn error_log(&self) -> PathBuf {
        self.run_dir.join("mariadbd.err")
    }

    /// The server's pid file.
    pub fn pid_file(&self) -> PathBuf {
        self.run_dir.join("mariadbd.pid")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.run_dir.join("tmp")
    }

    /// The user mariadbd is told to run as (`--user=`), if any.
    fn effective_os_user(&self) -> Option<String> {
        match &self.os_user {
            Some(u) => Some(u.clone()),
            None if nix::unistd::geteuid().is_root() => Some("root".to_string()),
            None => None,
        }
    }

    /// Creates a new data directory (which must be empty or absent) with `mariadb-install-db`,
    /// gives `root@localhost` the password `admin_password` (every other root account and the
    /// anonymous ones are removed, so nothing can log in without a password), and writes the
    /// config. Nothing system-wide is read or written.
    pub fn initialize(&self, admin_password: &str) -> Result<()> {
        if let Ok(mut entries) = fs::read_dir(&self.data_dir)
            && entries.next().is_some()
        {
            return Err(MariaDbError::DataDirNotEmpty {
                path: self.data_dir.clone(),
            });
        }
        fs::create_dir_all(&self.data_dir).map_err(io_err(&self.data_dir, "create"))?;
        self.prepare_run_dir()?;
        let mut cmd = tools::command(&self.binaries.install_db);
        cmd.arg("--no-defaults")
            .arg(opt("datadir", &self.data_dir))
            .arg(opt("tmpdir", self.tmp_dir()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .arg("--skip-name-resolve")
            .arg("--skip-log-bin");
        if let Some(u) = self.effective_os_user() {
            cmd.arg(opt("user", u));
        }
        // mariadb-install-db finds mariadbd next to itself or in the basedir; point it at ours.
        if let Some(sbin) = self.binaries.mariadbd.parent().and_then(Path::parent) {
            cmd.arg(opt("basedir", sbin));
        }
        tools::run(cmd, "initialising the data directory")?;
        set_root_password(self, admin_password)?;
        self.write_config(admin_password)
    }

    fn prepare_run_dir(&self) -> Result<()> {
        fs::create_dir_all(self.tmp_dir()).map_err(io_err(&self.run_dir, "create"))?;
        fs::set_permissions(&self.run_dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(&self.run_dir, "set permissions of"))?;
        // The server writes its socket, pid file, log and temporary files here as its user.
        if let Some(u) = &self.os_user {
            chown_to(&self.run_dir, u)?;
        }
        if self.config_dir != self.run_dir {
            fs::create_dir_all(&self.config_dir).map_err(io_err(&self.config_dir, "create"))?;
            fs::set_permissions(&self.config_dir, fs::Permissions::from_mode(0o700))
                .map_err(io_err(&self.config_dir, "set permissions of"))?;
        }
        let sock = self.socket();
        let len = sock.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(MariaDbError::SocketPathTooLong {
                path: sock,
                len,
                max: MAX_SOCKET_PATH,
            });
        }
        Ok(())
    }

    /// Checks that the data dir holds a MariaDB data directory.
    pub fn check_data_dir(&self) -> Result<()> {
        check_data_dir(&self.data_dir)
    }

    /// Writes the server's config (replacing it): its own socket, TCP port on 127.0.0.1 (or
    /// none), pid file, tmpdir and error log in the run dir, the binary log in the data dir
    /// (row format, GTID strict mode, CRC32 checksums), and every commit durable before it is
    /// acknowledged (`sync_binlog=1`, `innodb_flush_log_at_trx_commit=1`). The `[client]`
    /// part holds the admin login, so the file is mode 0600 in a 0700 directory.
    pub fn write_config(&self, admin_password: &str) -> Result<()> {
        self.prepare_run_dir()?;
        let q = |p: &Path| p.display().to_string();
        let mut c = String::new();
        c.push_str("# Written by Lifeboat for the server it manages; rewritten at each start.\n");
        c.push_str("[mysqld]\n");
        let datadir = self.server_data_dir.as_ref().unwrap_or(&self.data_dir);
        c.push_str(&format!("datadir={}\n", q(datadir)));
        c.push_str(&format!("socket={}\n", q(&self.socket())));
        match self.port {
            Some(p) => c.push_str(&format!("port={p}\nbind-address=127.0.0.1\n")),
            None => c.push_str("skip-networking\n"),
        }
        c.push_str(&format!("pid-file={}\n", q(&self.pid_file())));
        c.push_str(&format!("tmpdir={}\n", q(&self.tmp_dir())));
        c.push_str(&format!("log-error={}\n", q(&self.error_log())));
        c.push_str("log-bin=binlog\nlog-bin-index=binlog.index\n");
        c.push_str("binlog_format=ROW\nbinlog_checksum=CRC32\n");
        // No copy of each statement's text next to its rows (on by default): capture, the
        // vault and a replay need only the rows, and a statement with a large literal would
        // otherwise be kept two or three times over.
        c.push_str("binlog_annotate_row_events=OFF\n");
        c.push_str(&format!("server_id={}\n", self.server_id));
        c.push_str("gtid_strict_mode=1\nsync_binlog=1\ninnodb_flush_log_at_trx_commit=1\n");
        c.push_str("skip-name-resolve\nskip-external-locking\n");
        c.push_str("character-set-server=utf8mb4\ncollation-server=utf8mb4_general_ci\n");
        c.push_str(&format!(
            "innodb_buffer_pool_size={}M\n",
            self.buffer_pool_mib
        ));
        c.push_str("max_allowed_packet=64M\n");
        for line in &self.extra_options {
            c.push_str(line.trim());
            c.push('\n');
        }
        let client = format!(
            "user=root\npassword={admin_password}\nsocket={}\n",
            q(&self.socket())
        );
        c.push_str("[client]\n");
        c.push_str(&client);
        c.push_str("[mariadb-backup]\n");
        c.push_str(&client);
        let path = self.config_path();
        let tmp = path.with_extension("cnf.partial");
        {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err(&tmp, "create"))?;
            f.write_all(c.as_bytes()).map_err(io_err(&tmp, "write"))?;
            f.sync_all().map_err(io_err(&tmp, "fsync"))?;
        }
        fs::rename(&tmp, &path).map_err(io_err(&path, "rename into place"))?;
        if let Some(u) = &self.os_user {
            chown_to(&self.run_dir, u)?;
        }
        Ok(())
    }

    /// The admin password stored in the config.
    pub fn admin_password(&self) -> Result<String> {
        let path = self.config_path();
        let text = fs::read_to_string(&path).map_err(|e| MariaDbError::BadConfig {
            path: path.clone(),
            problem: format!("cannot be read ({e})"),
        })?;
        text.lines()
            .find_map(|l| l.strip_prefix("password="))
            .map(str::to_string)
            .ok_or_else(|| MariaDbError::BadConfig {
                path,
                problem: "holds no admin password".into(),
            })
    }

    /// The command line that runs the server in the foreground: for Lifeboat's supervisor.
    /// It stops cleanly on SIGTERM.
    pub fn command(&self) -> ServerCommand {
        let mut args = vec![opt("defaults-file", self.config_path())];
        if let Some(u) = self.effective_os_user() {
            args.push(opt("user", u));
        }
        ServerCommand {
            program: self.binaries.mariadbd.clone(),
            args,
        }
    }

    /// Options for the MariaDB client programs (`mariadb`, `mariadb-dump`, `mariadb-backup`):
    /// `--defaults-file` (must come first) giving them the socket and admin login.
    pub(crate) fn client_defaults(&self) -> OsString {
        opt("defaults-file", self.config_path())
    }

    /// Connects as the admin over the socket.
    pub fn connect_admin(&self) -> Result<mysql::Conn> {
        let password = self.admin_password()?;
        connect_socket(&self.socket(), "root", &password, None)
    }

    /// Waits until the server answers `SELECT 1` on its socket, or `timeout` passes.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        self.wait_ready_while(timeout, || Ok(()))
    }

    fn wait_ready_while(
        &self,
        timeout: Duration,
        mut still_running: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let err = match self.connect_admin() {
                Ok(mut conn) => match conn.query_drop("SELECT 1") {
                    Ok(()) => return Ok(()),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            still_running()?;
            if Instant::now() >= deadline {
                return Err(MariaDbError::NotReady {
                    socket: self.socket(),
                    waited_s: timeout.as_secs(),
                    last_error: err,
                    error_log: self.error_log(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the server as a child of this process and waits until it is ready. Lifeboat's
    /// supervisor runs [`ServerSpec::command`] instead; this is for restores, checks, imports
    /// and tests.
    pub fn start(&self, timeout: Duration) -> Result<Server> {
        self.check_data_dir()?;
        self.prepare_run_dir()?;
        let cmd = self.command();
        let child = std::process::Command::new(&cmd.program)
            .args(&cmd.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| tools::spawn_error(&cmd.program, e))?;
        let mut server = Server {
            spec: self.clone(),
            child: Some(child),
        };
        let error_log = self.error_log();
        let ready = self.wait_ready_while(timeout, || {
            let child = server.child.as_mut().expect("child is set");
            match child.try_wait() {
                Ok(Some(status)) => Err(MariaDbError::ServerExited {
                    status: status.to_string(),
                    log_tail: {
                        let mut text = String::from_utf8_lossy(&tools::read_all(
                            child.stderr.take().expect("stderr is piped"),
                        ))
                        .into_owned();
                        text.push_str(&fs::read_to_string(&error_log).unwrap_or_default());
                        tools::tail(&text, 8)
                    },
                    error_log: error_log.clone(),
                }),
                _ => Ok(()),
            }
        });
        if let Err(e) = ready {
            server.kill();
            return Err(e);
        }
        Ok(server)
    }

    /// Creates the app's database (utf8mb4) and a user for it with `password`, allowed from
    /// the socket (`localhost`) and 127.0.0.1, with every privilege on that database only.
    /// Safe to run again (the password is then set anew).
    pub fn create_app_database(&self, database: &str, user: &str, password: &str) -> Result<()> {
        self.create_app_database_with(database, user, password, true)
    }

    /// [`ServerSpec::create_app_database`] kept out of the binary log: its statements take
    /// no GTID, so the server's position stays exactly where a restore left it (a standby's
    /// copy must hold the primary's transaction N under GTID N, and nothing of its own), and
    /// the password never reaches a captured transaction.
    pub fn create_app_database_unlogged(
        &self,
        database: &str,
        user: &str,
        password: &str,
    ) -> Result<()> {
        self.create_app_database_with(database, user, password, false)
    }

    fn create_app_database_with(
        &self,
        database: &str,
        user: &str,
        password: &str,
        logged: bool,
    ) -> Result<()> {
        check_name(database, "database")?;
        check_name(user, "user")?;
        let mut conn = self.connect_admin()?;
        let socket = self.socket();
        let run = |conn: &mut mysql::Conn, sql: String, doing: String| {
            conn.query_drop(sql).map_err(|source| MariaDbError::Query {
                socket: socket.clone(),
                doing,
                source,
            })
        };
        if !logged {
            run(
                &mut conn,
                "SET SESSION sql_log_bin = 0".into(),
                "keep the app's login out of the binary log".into(),
            )?;
        }
        run(
            &mut conn,
            format!("CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4"),
            format!("create database {database}"),
        )?;
        for host in ["localhost", "127.0.0.1"] {
            run(
                &mut conn,
                format!(
                    "CREATE OR REPLACE USER '{user}'@'{host}' IDENTIFIED BY {}",
                    quote(password)
                ),
                format!("create user {user}@{host}"),
            )?;
            run(
                &mut conn,
                format!("GRANT ALL PRIVILEGES ON `{database}`.* TO '{user}'@'{host}'"),
                format!("grant {user}@{host} access to {database}"),
            )?;
        }
        Ok(())
    }

    /// Gives the app's user a new password (both of its hosts). Sessions already open keep
    /// working until they end (MariaDB checks passwords at login): restart the app's
    /// instances after a rotation.
    pub fn rotate_app_password(&self, user: &str, new_password: &str) -> Result<()> {
        check_name(user, "user")?;
        let mut conn = self.connect_admin()?;
        for host in ["localhost", "127.0.0.1"] {
            conn.query_drop(format!(
                "ALTER USER '{user}'@'{host}' IDENTIFIED BY {}",
                quote(new_password)
            ))
            .map_err(|source| MariaDbError::Query {
                socket: self.socket(),
                doing: format!("set a new password for {user}@{host}"),
                source,
            })?;
        }
        Ok(())
    }

    /// The GTID position at the start of the server's oldest binlog file (empty for a server
    /// whose binlog began with its first transaction): where capture of a server it never
    /// saw starts. A restored server's binlog starts at its base's position, not at 1.
    pub fn binlog_start_pos(&self) -> Result<GtidPos> {
        let mut conn = self.connect_admin()?;
        let socket = self.socket();
        let first: Option<(String, u64)> =
            conn.query_first("SHOW BINARY LOGS")
                .map_err(|source| MariaDbError::Query {
                    socket: socket.clone(),
                    doing: "list the binlog files".into(),
                    source,
                })?;
        let Some((file, _)) = first else {
            return Ok(GtidPos::new());
        };
        let text: Option<String> = conn
            .exec_first("SELECT BINLOG_GTID_POS(?, 4)", (file.clone(),))
            .map_err(|source| MariaDbError::Query {
                socket: socket.clone(),
                doing: format!("read the GTID position at the start of {file}"),
                source,
            })?;
        text.unwrap_or_default()
            .parse()
            .map_err(|e: crate::gtid::BadGtid| MariaDbError::CorruptBinlog {
                what: format!("the GTID position at the start of {file}"),
                why: e.to_string(),
                advice: "this server's GTID state is not what Lifeboat expects; check its error log",
            })
    }

    /// The server's current binlog GTID position.
    pub fn gtid_binlog_pos(&self) -> Result<GtidPos> {
        let mut conn = self.connect_admin()?;
        query_gtid_pos(&mut conn, &self.socket(), "@@GLOBAL.gtid_binlog_pos")
    }
}

pub(crate) fn query_gtid_pos(conn: &mut mysql::Conn, socket: &Path, var: &str) -> Result<GtidPos> {
    let text: Option<String> = conn
        .query_first(format!("SELECT {var}"))
        .map_err(|source| MariaDbError::Query {
            socket: socket.to_path_buf(),
            doing: format!("read {var}"),
            source,
        })?;
    let text = text.unwrap_or_default();
    text.parse()
        .map_err(|e: crate::gtid::BadGtid| MariaDbError::CorruptBinlog {
            what: var.to_string(),
            why: e.to_string(),
            advice: "this server's GTID state is not what Lifeboat expects; check its error log",
        })
}

/// Connects to a server over its unix socket.
pub(crate) fn connect_socket(
    socket: &Path,
    user: &str,
    password: &str,
    read_timeout: Option<Duration>,
) -> Result<mysql::Conn> {
    let opts = mysql::OptsBuilder::new()
        .socket(Some(socket.to_string_lossy()))
        .user(Some(user))
        .pass(Some(password))
        .read_timeout(read_timeout)
        .write_timeout(Some(Duration::from_secs(30)));
    mysql::Conn::new(opts).map_err(|source| MariaDbError::Connect {
        target: socket.display().to_string(),
        source,
    })
}

/// A SQL string literal (the server runs without `NO_BACKSLASH_ESCAPES`).
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for ch in s.chars() {
        match ch {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Refuses names that would need quoting in SQL.
pub(crate) fn check_name(name: &str, what: &'static str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(MariaDbError::BadName {
            name: name.to_string(),
            what,
        })
    }
}

/// Checks that `dir` holds a MariaDB data directory (the `mysql` system schema and InnoDB's
/// system tablespace).
pub fn check_data_dir(dir: &Path) -> Result<()> {
    let missing = |why: &str| MariaDbError::NotADataDir {
        path: dir.to_path_buf(),
        why: why.to_string(),
    };
    if !dir.is_dir() {
        return Err(missing("it does not exist or is not a directory"));
    }
    if !dir.join("mysql").is_dir() {
        return Err(missing("it has no `mysql` system schema directory"));
    }
    if !dir.join("ibdata1").is_file() {
        return Err(missing("it has no InnoDB system tablespace `ibdata1`"));
    }
    Ok(())
}

/// Gives `path` and everything under it to the OS user `user`.
pub(crate) fn chown_to(path: &Path, user: &str) -> Result<()> {
    let u = nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .ok_or_else(|| MariaDbError::Io {
            action: "give to the server's user",
            path: path.to_path_buf(),
            source: std::io::Error::other(format!("no OS user named {user}")),
        })?;
    for entry in walk(path) {
        nix::unistd::chown(&entry, Some(u.uid), Some(u.gid)).map_err(|e| MariaDbError::Io {
            action: "give to the server's user",
            path: entry.clone(),
            source: std::io::Error::from(e),
        })?;
    }
    Ok(())
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir()
            && !out[i].is_symlink()
            && let Ok(rd) = fs::read_dir(&out[i])
        {
            let children: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            out.extend(children);
        }
        i += 1;
    }
    out
}

/// Sets `root@localhost`'s password on a data directory that no server runs on, and removes
/// every other root account and the anonymous ones (`mariadbd --bootstrap`, which reads SQL
/// from stdin, logs nothing to the binlog and opens no socket).
pub(crate) fn set_root_password(spec: &ServerSpec, password: &str) -> Result<()> {
    let mut cmd = std::process::Command::new(&spec.binaries.mariadbd);
    cmd.arg("--no-defaults")
        .arg(opt("datadir", &spec.data_dir))
        .arg(opt("tmpdir", spec.tmp_dir()))
        .arg("--bootstrap")
        .arg("--skip-networking")
        .arg("--skip-log-bin")
        .arg("--log-warnings=0");
    if let Some(u) = spec.effective_os_user() {
        cmd.arg(opt("user", u));
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| tools::spawn_error(&spec.binaries.mariadbd, e))?;
    let sql = format!(
        "FLUSH PRIVILEGES;\n\
         DELETE FROM mysql.global_priv WHERE User = '' OR (User = 'root' AND Host <> 'localhost');\n\
         FLUSH PRIVILEGES;\n\
         ALTER USER root@localhost IDENTIFIED BY {};\n",
        quote(password)
    );
    {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin
            .write_all(sql.as_bytes())
            .map_err(io_err(&spec.binaries.mariadbd, "write to"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(io_err(&spec.binaries.mariadbd, "wait for"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || stderr.contains("ERROR") {
        return Err(tools::failed(
            &spec.binaries.mariadbd,
            "setting the admin password (bootstrap)",
            &out.status,
            &out.stderr,
        ));
    }
    Ok(())
}

/// A server started by [`ServerSpec::start`]: stopped cleanly by [`Server::stop`], killed
/// when dropped.
#[derive(Debug)]
pub struct Server {
    spec: ServerSpec,
    child: Option<Child>,
}

impl Server {
    /// Its spec.
    pub fn spec(&self) -> &ServerSpec {
        &self.spec
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server cleanly (SIGTERM: InnoDB flushes, the binlog is closed) and waits up
    /// to `timeout`, then kills it.
    pub fn stop(mut self, timeout: Duration) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(MariaDbError::DidNotStop {
                        socket: self.spec.socket(),
                        waited_s: timeout.as_secs(),
                        error_log: self.spec.error_log(),
                    });
                }
            }
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_literals_are_safe_in_sql() {
        assert!(check_name("wordpress_1", "database").is_ok());
        assert!(check_name("wp`; DROP", "database").is_err());
        assert!(check_name("", "user").is_err());
        assert_eq!(quote("a'b\\c"), "'a\\'b\\\\c'");
    }
}
