//! Reading a database's journal mode, and switching it to WAL mode (which capture needs),
//! for `lifeboat up --enable-wal`.
//!
//! WAL mode is stored in the database file (header bytes 18 and 19), so it is switched
//! once and stays. SQLite makes the switch only while no other connection has the database
//! open in a transaction; [`enable_wal`] retries briefly, then says what to do. Call it
//! before the site's processes (and capture) start.
//!
//! The connections opened here never checkpoint on close: when one of them is the last to
//! close, the log stays as it was, so a capture that is not running finds its saved
//! position still there when it starts.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::error::{CaptureError, Result, sql_err};

/// How long [`enable_wal`] keeps trying while other connections keep the database busy.
pub const ENABLE_WAL_RETRY: Duration = Duration::from_secs(3);
/// How long SQLite's busy handler waits within one try.
const TRY_TIMEOUT: Duration = Duration::from_millis(100);
const PAUSE: Duration = Duration::from_millis(20);

/// The journal mode of the database at `db` (lower case: `"wal"`, `"delete"`, ...), read
/// without changing anything. Modes other than WAL are not stored in the file, so a
/// database not in WAL mode reports the mode a new connection starts in (`"delete"`).
pub fn journal_mode(db: &Path) -> Result<String> {
    let conn = open(db)?;
    retrying(ENABLE_WAL_RETRY, || {
        conn.query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
    })
    .map_err(|e| match e {
        Failure::Busy(source) | Failure::Other(source) => {
            sql_err(db, "read the journal mode")(source)
        }
    })
}

/// Switches the database at `db` to WAL mode and returns the mode it had before (`"wal"`
/// when it already was; then nothing is changed). Fails with
/// [`CaptureError::WalSwitchBusy`] when other connections kept it busy for
/// [`ENABLE_WAL_RETRY`], and with [`CaptureError::WalRefused`] when SQLite kept another
/// mode.
pub fn enable_wal(db: &Path) -> Result<String> {
    let conn = open(db)?;
    let busy = |source| CaptureError::WalSwitchBusy {
        db: db.to_path_buf(),
        source,
    };
    let deadline = Instant::now() + ENABLE_WAL_RETRY;
    let previous = retrying(ENABLE_WAL_RETRY, || {
        conn.query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
    })
    .map_err(|e| match e {
        Failure::Busy(source) => busy(source),
        Failure::Other(source) => sql_err(db, "read the journal mode")(source),
    })?;
    if previous.eq_ignore_ascii_case("wal") {
        return Ok(previous);
    }
    let left = deadline.saturating_duration_since(Instant::now());
    let now = retrying(left, || {
        conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))
    })
    .map_err(|e| match e {
        Failure::Busy(source) => busy(source),
        Failure::Other(source) => sql_err(db, "switch to WAL mode")(source),
    })?;
    if !now.eq_ignore_ascii_case("wal") {
        return Err(CaptureError::WalRefused {
            db: db.to_path_buf(),
            mode: now,
        });
    }
    Ok(previous)
}

/// Opens an existing database (never creates one), never checkpointing on close.
fn open(db: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(db, flags).map_err(sql_err(
        db,
        "open the database (check that the path names an existing SQLite file)",
    ))?;
    conn.busy_timeout(TRY_TIMEOUT)
        .map_err(sql_err(db, "set the busy timeout"))?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(sql_err(db, "disable checkpoint-on-close"))?;
    Ok(conn)
}

enum Failure {
    /// Still busy when time ran out.
    Busy(rusqlite::Error),
    Other(rusqlite::Error),
}

/// Runs `attempt` until it succeeds, fails with something other than busy, or `within`
/// has passed.
fn retrying<T>(
    within: Duration,
    mut attempt: impl FnMut() -> rusqlite::Result<T>,
) -> std::result::Result<T, Failure> {
    let deadline = Instant::now() + within;
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(e) if is_busy(&e) && Instant::now() < deadline => std::thread::sleep(PAUSE),
            Err(e) if is_busy(&e) => return Err(Failure::Busy(e)),
            Err(e) => return Err(Failure::Other(e)),
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollback_journal_db(dir: &Path) -> std::path::PathBuf {
        let db = dir.join("site.db");
        Connection::open(&db)
            .unwrap()
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        db
    }

    #[test]
    fn journal_mode_reads_without_changing_anything() {
        let dir = tempfile::tempdir().unwrap();
        let db = rollback_journal_db(dir.path());
        let before = std::fs::read(&db).unwrap();
        assert_eq!(journal_mode(&db).unwrap(), "delete");
        assert_eq!(std::fs::read(&db).unwrap(), before, "the file is unchanged");
        assert!(!dir.path().join("site.db-wal").exists());
    }

    #[test]
    fn enable_wal_switches_once_and_reports_the_previous_mode() {
        let dir = tempfile::tempdir().unwrap();
        let db = rollback_journal_db(dir.path());
        assert_eq!(enable_wal(&db).unwrap(), "delete");
        assert_eq!(journal_mode(&db).unwrap(), "wal");
        // Stored in the file: a fresh connection sees it, and the data is intact.
        let conn = Connection::open(&db).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let x: i64 = conn.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(x, 1);
        // Asking again changes nothing and says it already was.
        assert_eq!(enable_wal(&db).unwrap(), "wal");
    }

    #[test]
    fn enable_wal_while_another_connection_reads_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let db = rollback_journal_db(dir.path());
        let app = Connection::open(&db).unwrap();
        app.execute_batch("BEGIN; SELECT count(*) FROM t;").unwrap();
        let started = Instant::now();
        let err = enable_wal(&db).unwrap_err();
        assert!(started.elapsed() >= ENABLE_WAL_RETRY, "it retried first");
        assert!(matches!(err, CaptureError::WalSwitchBusy { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("stop the app"), "{text}");
        assert!(text.contains("--enable-wal"), "{text}");
        app.execute_batch("COMMIT").unwrap();
        assert_eq!(journal_mode(&db).unwrap(), "delete", "nothing was changed");
        // Once the app let go, the switch works.
        assert_eq!(enable_wal(&db).unwrap(), "delete");
    }

    #[test]
    fn enable_wal_on_a_missing_file_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("missing.db");
        let err = enable_wal(&db).unwrap_err();
        assert!(matches!(err, CaptureError::Sqlite { .. }), "{err}");
        assert!(err.to_string().contains("existing SQLite file"), "{err}");
        assert!(!db.exists());
        assert!(journal_mode(&db).is_err());
    }
}
