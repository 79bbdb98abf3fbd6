//! Physical base backups: `mariadb-backup --backup` of a running server, prepared at once,
//! into a directory that is a ready data directory plus `lifeboat-base.json` (the GTID
//! position it holds exactly, when it was taken).
//!
//! Prepared at backup time, not at restore time: a restore is then a copy (no redo to apply
//! while the site is down, so the recovery time is shorter), a base that cannot be prepared
//! is found the day it is taken instead of the day it is needed, and the stored files are
//! plain tablespaces, which deduplicate against the previous base page for page (a redo log
//! would not).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::durable::write_atomically;
use crate::error::{MariaDbError, Result, io_err};
use crate::gtid::GtidPos;
use crate::server::{ServerSpec, check_data_dir};
use crate::tools::{self, opt};

/// Version of `lifeboat-base.json`.
pub const BASE_FORMAT_VERSION: u32 = 1;
/// The file in a base backup that describes it.
pub const BASE_INFO_FILE: &str = "lifeboat-base.json";

/// What a base backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseInfo {
    /// Layout version ([`BASE_FORMAT_VERSION`]).
    pub version: u32,
    /// The base holds exactly the transactions up to this position (per domain), and none
    /// after.
    pub gtid_pos: GtidPos,
    /// When the backup's consistent point was taken (Lifeboat's clock, after it).
    #[serde(with = "time::serde::rfc3339")]
    pub taken_at: OffsetDateTime,
    /// The server's version string (a restore needs a server that can open these files).
    pub server_version: String,
    /// Whether `--prepare` was applied (always true for bases Lifeboat takes).
    pub prepared: bool,
}

/// A base backup on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackup {
    /// The directory (a prepared data directory plus [`BASE_INFO_FILE`]).
    pub dir: PathBuf,
    /// What it holds.
    pub info: BaseInfo,
}

/// Takes a consistent physical backup of the running server of `spec` into `dest` (which
/// must not exist), prepared and ready to be used as a data directory. It is built in
/// `dest` + `.partial` and renamed into place when complete; a leftover `.partial` from an
/// interrupted run is removed first.
pub fn take_base_backup(spec: &ServerSpec, dest: &Path) -> Result<BaseBackup> {
    if dest.exists() {
        return Err(MariaDbError::Io {
            action: "write a base backup into",
            path: dest.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "it already exists; choose a new directory",
            ),
        });
    }
    let partial = partial_path(dest);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io_err(&partial, "remove"))?;
    }
    let server_version = {
        use mysql::prelude::Queryable;
        let mut conn = spec.connect_admin()?;
        conn.query_first::<String, _>("SELECT VERSION()")
            .map_err(|source| MariaDbError::Query {
                socket: spec.socket(),
                doing: "read the server version".into(),
                source,
            })?
            .unwrap_or_default()
    };
    // mariadb-backup copies the files of the data dir the server reports (`datadir` of SHOW
    // VARIABLES), whatever --datadir says. A server that sees its data dir at another path (a
    // restored state shown at the site's own path in the server's mount namespace) would get
    // the files at that path here copied: another state's, or a failed backup when their redo
    // log does not match. So the backup runs in a mount namespace of its own in which the data
    // dir is mounted where the server sees it (only Lifeboat as root runs a server that way).
    let mut backup = match spec
        .server_data_dir
        .as_ref()
        .filter(|p| **p != spec.data_dir)
    {
        Some(shown_at) => {
            let mut c = tools::command(Path::new("unshare"));
            c.args(["--mount", "--propagation", "private", "/bin/sh", "-c"])
                .arg(r#"mount --bind "$1" "$2" && shift 2 && exec "$@""#)
                .arg("sh")
                .arg(&spec.data_dir)
                .arg(shown_at)
                .arg(&spec.binaries.backup);
            c
        }
        None => tools::command(&spec.binaries.backup),
    };
    backup
        .arg(spec.client_defaults())
        .arg("--backup")
        .arg(opt("target-dir", &partial))
        .arg(opt("datadir", &spec.data_dir));
    tools::run(backup, "taking a base backup")?;
    let taken_at = OffsetDateTime::now_utc();
    let mut prepare = tools::command(&spec.binaries.backup);
    prepare.arg("--prepare").arg(opt("target-dir", &partial));
    tools::run(prepare, "preparing the base backup")?;
    let gtid_pos = read_backup_gtid(&partial)?;
    let info = BaseInfo {
        version: BASE_FORMAT_VERSION,
        gtid_pos,
        taken_at,
        server_version,
        prepared: true,
    };
    let bytes = serde_json::to_vec_pretty(&info).expect("plain data");
    write_atomically(&partial.join(BASE_INFO_FILE), &bytes)?;
    std::fs::rename(&partial, dest).map_err(io_err(dest, "rename into place"))?;
    crate::durable::sync_parent(dest)?;
    Ok(BaseBackup {
        dir: dest.to_path_buf(),
        info,
    })
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// The GTID position `mariadb-backup` recorded (`xtrabackup_binlog_info`: file, offset,
/// GTID position; the position is absent when the server had written no transaction).
fn read_backup_gtid(dir: &Path) -> Result<GtidPos> {
    let path = ["mariadb_backup_binlog_info", "xtrabackup_binlog_info"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| MariaDbError::BadBaseBackup {
            path: dir.to_path_buf(),
            why: "mariadb-backup wrote no binlog position (is log-bin on?)".into(),
        })?;
    let text = std::fs::read_to_string(&path).map_err(io_err(&path, "read"))?;
    let gtid = text.split_whitespace().nth(2).unwrap_or("");
    gtid.parse()
        .map_err(|e: crate::gtid::BadGtid| MariaDbError::BadBaseBackup {
            path: dir.to_path_buf(),
            why: format!("its binlog position is unreadable: {e}"),
        })
}

/// Opens a base backup directory (as taken, or as restored from the vault), checking that it
/// is one.
pub fn open_base_backup(dir: &Path) -> Result<BaseBackup> {
    let path = dir.join(BASE_INFO_FILE);
    let bytes = std::fs::read(&path).map_err(|e| MariaDbError::BadBaseBackup {
        path: dir.to_path_buf(),
        why: format!("{BASE_INFO_FILE} cannot be read: {e}"),
    })?;
    let info: BaseInfo =
        serde_json::from_slice(&bytes).map_err(|e| MariaDbError::BadBaseBackup {
            path: dir.to_path_buf(),
            why: format!("{BASE_INFO_FILE} is unreadable: {e}"),
        })?;
    if info.version != BASE_FORMAT_VERSION {
        return Err(MariaDbError::BadBaseBackup {
            path: dir.to_path_buf(),
            why: format!("unknown version {}; upgrade lifeboat", info.version),
        });
    }
    if !info.prepared {
        return Err(MariaDbError::BadBaseBackup {
            path: dir.to_path_buf(),
            why: "it was never prepared".into(),
        });
    }
    check_data_dir(dir)?;
    Ok(BaseBackup {
        dir: dir.to_path_buf(),
        info,
    })
}
