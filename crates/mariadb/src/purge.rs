//! Purging the binary logs of a managed server once the timeline no longer needs them.
//!
//! A server with its binlog on keeps every file forever (`binlog_expire_logs_seconds=0`).
//! The timeline needs a transaction from the live binlog only until it is durable in the
//! vault: a rewind reads the base backups and the captured transactions from the vault,
//! never the live binlog. So once a base is durable and capture has confirmed every
//! transaction up to a position, the files that lie entirely before that position can go.
//!
//! This module decides which files those are (a pure function over the file list) and
//! runs `PURGE BINARY LOGS TO`. It never purges the file the server writes to, and never a
//! file holding a transaction after the position it is given. It never prints.

use mysql::prelude::Queryable;

use crate::error::{MariaDbError, Result};
use crate::gtid::GtidPos;
use crate::server::ServerSpec;

/// One binlog file of the server, with the GTID position at its start (every transaction
/// before it is in earlier files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinlogFile {
    /// File name in the data dir, e.g. `binlog.000007`.
    pub name: String,
    /// The position at its start (`BINLOG_GTID_POS(name, 4)`).
    pub starts_at: GtidPos,
    /// Its size in bytes.
    pub size: u64,
}

/// What [`purge_binlogs_before`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeReport {
    /// The files removed, oldest first (empty when none lay entirely before the position).
    pub purged: Vec<String>,
    /// Their size in bytes.
    pub purged_bytes: u64,
    /// The oldest file the server keeps now.
    pub oldest_kept: String,
    /// The GTID position at its start: capture can resume from any position at or after it.
    pub kept_from: GtidPos,
}

/// Whether every transaction before a file starting at `starts_at` is within `covered`.
fn covered_by(covered: &GtidPos, starts_at: &GtidPos) -> bool {
    starts_at.iter().all(|g| covered.contains(g))
}

/// The index of the oldest file to keep so that every file before it lies entirely within
/// `covered`: `PURGE BINARY LOGS TO files[i]` removes exactly the files before it. `None`
/// when nothing can go. The last file (the one the server writes to) is always kept.
pub fn first_file_to_keep(files: &[BinlogFile], covered: &GtidPos) -> Option<usize> {
    // A file lies entirely before `covered` when the *next* file starts within it.
    let keep = (1..files.len())
        .take_while(|&i| covered_by(covered, &files[i].starts_at))
        .last()?;
    Some(keep)
}

/// The server's binlog files, oldest first, each with the GTID position at its start.
pub fn binlog_files(spec: &ServerSpec) -> Result<Vec<BinlogFile>> {
    let mut conn = spec.connect_admin()?;
    let socket = spec.socket();
    let query = |doing: String| {
        let socket = socket.clone();
        move |source| MariaDbError::Query {
            socket,
            doing,
            source,
        }
    };
    let rows: Vec<(String, u64)> = conn
        .query("SHOW BINARY LOGS")
        .map_err(query("list the binlog files".into()))?;
    let mut files = Vec::with_capacity(rows.len());
    for (name, size) in rows {
        let text: Option<String> = conn
            .exec_first("SELECT BINLOG_GTID_POS(?, 4)", (name.clone(),))
            .map_err(query(format!(
                "read the GTID position at the start of {name}"
            )))?;
        let starts_at = text.unwrap_or_default().parse().map_err(
            |e: crate::gtid::BadGtid| MariaDbError::CorruptBinlog {
                what: format!("the GTID position at the start of {name}"),
                why: e.to_string(),
                advice: "this server's GTID state is not what Lifeboat expects; check its error log",
            },
        )?;
        files.push(BinlogFile {
            name,
            starts_at,
            size,
        });
    }
    Ok(files)
}

/// Starts a new binlog file (`FLUSH BINARY LOGS`), so that what was written so far can be
/// purged once it is covered: the server never purges the file it writes to.
pub fn rotate_binlog(spec: &ServerSpec) -> Result<()> {
    let mut conn = spec.connect_admin()?;
    conn.query_drop("FLUSH BINARY LOGS")
        .map_err(|source| MariaDbError::Query {
            socket: spec.socket(),
            doing: "start a new binlog file (FLUSH BINARY LOGS)".into(),
            source,
        })
}

/// Removes the server's binlog files that lie entirely before `covered` (`PURGE BINARY
/// LOGS TO`). The caller promises that every transaction up to `covered` is durable
/// elsewhere (in a base backup and in the captured history); this function promises to
/// remove nothing after it and never the file the server writes to. `None` when the server
/// has no binlog.
pub fn purge_binlogs_before(spec: &ServerSpec, covered: &GtidPos) -> Result<Option<PurgeReport>> {
    let files = binlog_files(spec)?;
    if files.is_empty() {
        return Ok(None);
    }
    let Some(keep) = first_file_to_keep(&files, covered) else {
        return Ok(Some(PurgeReport {
            purged: Vec::new(),
            purged_bytes: 0,
            oldest_kept: files[0].name.clone(),
            kept_from: files[0].starts_at.clone(),
        }));
    };
    let target = &files[keep];
    let mut conn = spec.connect_admin()?;
    conn.query_drop(format!(
        "PURGE BINARY LOGS TO {}",
        crate::server::quote(&target.name)
    ))
    .map_err(|source| MariaDbError::Query {
        socket: spec.socket(),
        doing: format!("purge the binlog files before {}", target.name),
        source,
    })?;
    // What is really gone: a file a replica still reads is kept by the server (a warning,
    // not an error).
    let now: Vec<String> = binlog_files(spec)?.into_iter().map(|f| f.name).collect();
    let purged: Vec<&BinlogFile> = files[..keep]
        .iter()
        .filter(|f| !now.contains(&f.name))
        .collect();
    let oldest = files
        .iter()
        .find(|f| now.contains(&f.name))
        .unwrap_or(target);
    Ok(Some(PurgeReport {
        purged: purged.iter().map(|f| f.name.clone()).collect(),
        purged_bytes: purged.iter().map(|f| f.size).sum(),
        oldest_kept: oldest.name.clone(),
        kept_from: oldest.starts_at.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, starts_at: &str) -> BinlogFile {
        BinlogFile {
            name: name.into(),
            starts_at: starts_at.parse().unwrap(),
            size: 100,
        }
    }

    #[test]
    fn only_files_entirely_before_the_position_go_and_never_the_last() {
        let files = [
            file("binlog.000001", ""),
            file("binlog.000002", "0-1-10"),
            file("binlog.000003", "0-1-20"),
            file("binlog.000004", "0-1-30"),
        ];
        // Nothing of file 1 is covered yet.
        assert_eq!(first_file_to_keep(&files, &"0-1-9".parse().unwrap()), None);
        // File 1 ends at 0-1-10: covered exactly.
        assert_eq!(
            first_file_to_keep(&files, &"0-1-10".parse().unwrap()),
            Some(1)
        );
        assert_eq!(
            first_file_to_keep(&files, &"0-1-25".parse().unwrap()),
            Some(2)
        );
        // Everything covered: the current file stays all the same.
        assert_eq!(
            first_file_to_keep(&files, &"0-1-99".parse().unwrap()),
            Some(3)
        );
        assert_eq!(
            first_file_to_keep(&files[..1], &"0-1-99".parse().unwrap()),
            None
        );
        assert_eq!(first_file_to_keep(&[], &"0-1-99".parse().unwrap()), None);
    }

    #[test]
    fn a_domain_the_position_does_not_know_keeps_the_file() {
        let files = [
            file("binlog.000001", ""),
            file("binlog.000002", "0-1-10,1-1-3"),
        ];
        assert_eq!(first_file_to_keep(&files, &"0-1-10".parse().unwrap()), None);
        assert_eq!(
            first_file_to_keep(&files, &"0-1-10,1-1-3".parse().unwrap()),
            Some(1)
        );
    }
}
