//! Bringing an existing database in: from a dump file (`mariadb-dump --single-transaction`
//! output) or straight from a running server, into a database of a managed server.
//!
//! The source's password is handed to `mariadb-dump` in an option file of mode 0600 in the
//! managed server's run dir (removed afterwards), never on a command line, where any user
//! could read it in `ps`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Stdio;

use mysql::prelude::Queryable;

use crate::error::{MariaDbError, Result, io_err};
use crate::server::{ServerSpec, check_name};
use crate::tools::{self, opt};

/// A running MariaDB or MySQL server to import from.
#[derive(Debug, Clone)]
pub struct RemoteSource {
    /// Host name or address (`localhost` means its unix socket, `socket` if given).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Its unix socket, when it is on this machine and reached that way.
    pub socket: Option<std::path::PathBuf>,
    /// A user allowed to read the database (SELECT, SHOW VIEW, TRIGGER, LOCK TABLES).
    pub user: String,
    /// Its password.
    pub password: String,
    /// The database to import.
    pub database: String,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// The database imported into.
    pub database: String,
    /// Its base tables after the import.
    pub tables: usize,
}

fn ensure_database(spec: &ServerSpec, database: &str) -> Result<()> {
    check_name(database, "database")?;
    let mut conn = spec.connect_admin()?;
    conn.query_drop(format!(
        "CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4"
    ))
    .map_err(|source| MariaDbError::Query {
        socket: spec.socket(),
        doing: format!("create database {database}"),
        source,
    })
}

fn count_tables(spec: &ServerSpec, database: &str) -> Result<usize> {
    let mut conn = spec.connect_admin()?;
    let n: Option<u64> = conn
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE'",
            (database,),
        )
        .map_err(|source| MariaDbError::Query {
            socket: spec.socket(),
            doing: format!("count the tables of {database}"),
            source,
        })?;
    Ok(n.unwrap_or(0) as usize)
}

/// Loads a dump file (SQL, as `mariadb-dump --single-transaction DB` writes it) into
/// `database` of the running managed server, creating the database if needed.
pub fn import_dump(spec: &ServerSpec, database: &str, dump: &Path) -> Result<ImportReport> {
    let file = fs::File::open(dump).map_err(io_err(dump, "open the dump file"))?;
    ensure_database(spec, database)?;
    let mut client = tools::command(&spec.binaries.client);
    client
        .arg(spec.client_defaults())
        .arg("--binary-mode")
        .arg(database)
        .stdin(file);
    tools::run(
        client,
        &format!("loading the dump {} into {database}", dump.display()),
    )?;
    Ok(ImportReport {
        database: database.to_string(),
        tables: count_tables(spec, database)?,
    })
}

/// Copies `source.database` from a running server into `database` of the running managed
/// server: `mariadb-dump --single-transaction` (a consistent snapshot of InnoDB tables that
/// does not block the source's writers) piped into the managed server.
pub fn import_from_server(
    spec: &ServerSpec,
    source: &RemoteSource,
    database: &str,
) -> Result<ImportReport> {
    check_name(&source.database, "database")?;
    ensure_database(spec, database)?;
    let creds = spec.config_dir.join("import-source.cnf");
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&creds)
            .map_err(io_err(&creds, "create"))?;
        let mut text = format!(
            "[client]\nhost={}\nport={}\nuser={}\npassword={}\n",
            source.host, source.port, source.user, source.password
        );
        if let Some(s) = &source.socket {
            text.push_str(&format!("socket={}\n", s.display()));
        }
        f.write_all(text.as_bytes())
            .map_err(io_err(&creds, "write"))?;
    }
    let result = dump_into(spec, &creds, source, database);
    let _ = fs::remove_file(&creds);
    result?;
    Ok(ImportReport {
        database: database.to_string(),
        tables: count_tables(spec, database)?,
    })
}

fn dump_into(spec: &ServerSpec, creds: &Path, source: &RemoteSource, database: &str) -> Result<()> {
    let mut dump = tools::command(&spec.binaries.dump);
    dump.arg(opt("defaults-file", creds))
        .arg("--single-transaction")
        .arg("--triggers")
        .arg("--hex-blob")
        .arg("--no-tablespaces")
        .arg(&source.database)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut dump = dump
        .spawn()
        .map_err(|e| tools::spawn_error(&spec.binaries.dump, e))?;
    let mut client = tools::command(&spec.binaries.client);
    client
        .arg(spec.client_defaults())
        .arg("--binary-mode")
        .arg(database)
        .stdin(dump.stdout.take().expect("piped"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let client_out = client
        .output()
        .map_err(|e| tools::spawn_error(&spec.binaries.client, e))?;
    let dump_err = tools::read_all(dump.stderr.take().expect("piped"));
    let status = dump
        .wait()
        .map_err(io_err(&spec.binaries.dump, "wait for"))?;
    if !status.success() {
        return Err(tools::failed(
            &spec.binaries.dump,
            &format!(
                "dumping {} from {}:{}",
                source.database, source.host, source.port
            ),
            &status,
            &dump_err,
        ));
    }
    if !client_out.status.success() {
        return Err(tools::failed(
            &spec.binaries.client,
            &format!("loading the dump into {database}"),
            &client_out.status,
            &client_out.stderr,
        ));
    }
    Ok(())
}
