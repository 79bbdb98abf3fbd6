//! Finding the MariaDB programs Lifeboat runs, and running them with a clear error when they
//! fail.
//!
//! Programs are looked up in `$LIFEBOAT_MARIADB_BIN` when it is set (and only there), else in
//! `$PATH`, then `/usr/sbin` and `/usr/bin` (Debian puts `mariadbd` in `/usr/sbin`, which an
//! ordinary user's `PATH` often lacks).

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::error::{MariaDbError, Result};

/// Environment variable naming the one directory to take MariaDB programs from.
pub const BIN_DIR_ENV: &str = "LIFEBOAT_MARIADB_BIN";

/// The MariaDB programs, resolved to paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// The server, `mariadbd`.
    pub mariadbd: PathBuf,
    /// `mariadb-install-db`, which creates a data directory.
    pub install_db: PathBuf,
    /// The command-line client, `mariadb`.
    pub client: PathBuf,
    /// `mariadb-binlog`, which turns binary log events into SQL for replay.
    pub binlog: PathBuf,
    /// `mariadb-backup`, physical base backups.
    pub backup: PathBuf,
    /// `mariadb-dump`, logical dumps (import from a running server).
    pub dump: PathBuf,
}

impl Binaries {
    /// Finds every program, or says which one is missing and how to install it.
    pub fn locate() -> Result<Binaries> {
        Ok(Binaries {
            mariadbd: find("mariadbd")?,
            install_db: find("mariadb-install-db")?,
            client: find("mariadb")?,
            binlog: find("mariadb-binlog")?,
            backup: find("mariadb-backup")?,
            dump: find("mariadb-dump")?,
        })
    }

    /// The same set with every program looked up in `dir` only (a missing one is an error
    /// when it is used: [`Binaries::check`] says which).
    pub fn in_dir(dir: &Path) -> Binaries {
        Binaries {
            mariadbd: dir.join("mariadbd"),
            install_db: dir.join("mariadb-install-db"),
            client: dir.join("mariadb"),
            binlog: dir.join("mariadb-binlog"),
            backup: dir.join("mariadb-backup"),
            dump: dir.join("mariadb-dump"),
        }
    }

    /// Checks that every program exists and is executable.
    pub fn check(&self) -> Result<()> {
        for (name, path) in [
            ("mariadbd", &self.mariadbd),
            ("mariadb-install-db", &self.install_db),
            ("mariadb", &self.client),
            ("mariadb-binlog", &self.binlog),
            ("mariadb-backup", &self.backup),
            ("mariadb-dump", &self.dump),
        ] {
            if !is_executable(path) {
                return Err(MariaDbError::MissingBinary {
                    program: name,
                    looked_in: path.display().to_string(),
                    env_var: BIN_DIR_ENV,
                });
            }
        }
        Ok(())
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn search_dirs() -> Vec<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV).filter(|d| !d.is_empty()) {
        return vec![PathBuf::from(dir)];
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        if !dirs.iter().any(|d| d == Path::new(extra)) {
            dirs.push(PathBuf::from(extra));
        }
    }
    dirs
}

fn find(program: &'static str) -> Result<PathBuf> {
    let dirs = search_dirs();
    dirs.iter()
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
        .ok_or_else(|| MariaDbError::MissingBinary {
            program,
            looked_in: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
            env_var: BIN_DIR_ENV,
        })
}

/// Builds a command for `program`, mapping "not found" to [`MariaDbError::MissingBinary`]
/// when it is run through [`run`] or [`spawn_checked`].
pub(crate) fn command(program: &Path) -> Command {
    let mut c = Command::new(program);
    c.stdin(Stdio::null());
    c
}

fn program_name(program: &Path) -> String {
    program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| program.display().to_string())
}

pub(crate) fn missing(program: &Path) -> MariaDbError {
    let name: &'static str = match program_name(program).as_str() {
        "mariadbd" => "mariadbd",
        "mariadb-install-db" => "mariadb-install-db",
        "mariadb" => "mariadb",
        "mariadb-binlog" => "mariadb-binlog",
        "mariadb-backup" => "mariadb-backup",
        "mariadb-dump" => "mariadb-dump",
        _ => "a MariaDB program",
    };
    MariaDbError::MissingBinary {
        program: name,
        looked_in: program.display().to_string(),
        env_var: BIN_DIR_ENV,
    }
}

/// The last `n` non-empty lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Runs `cmd` to completion; a non-zero exit is [`MariaDbError::ProgramFailed`] naming
/// `doing` and the end of its stderr.
pub(crate) fn run(mut cmd: Command, doing: &str) -> Result<Output> {
    let program = PathBuf::from(cmd.get_program());
    let out = cmd.output().map_err(|e| spawn_error(&program, e))?;
    if !out.status.success() {
        return Err(failed(&program, doing, &out.status, &out.stderr));
    }
    Ok(out)
}

pub(crate) fn spawn_error(program: &Path, e: std::io::Error) -> MariaDbError {
    if e.kind() == std::io::ErrorKind::NotFound {
        missing(program)
    } else {
        MariaDbError::Io {
            action: "start",
            path: program.to_path_buf(),
            source: e,
        }
    }
}

pub(crate) fn failed(
    program: &Path,
    doing: &str,
    status: &std::process::ExitStatus,
    stderr: &[u8],
) -> MariaDbError {
    MariaDbError::ProgramFailed {
        program: program_name(program),
        doing: doing.to_string(),
        status: status.to_string(),
        stderr_tail: tail(&String::from_utf8_lossy(stderr), 6),
    }
}

/// Reads what a child wrote to stderr (used after it exited).
pub(crate) fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    v
}

/// `--name=value` as an OS string (paths may be any bytes).
pub(crate) fn opt(name: &str, value: impl AsRef<std::ffi::OsStr>) -> OsString {
    let mut s = OsString::from(format!("--{name}="));
    s.push(value.as_ref());
    s
}
