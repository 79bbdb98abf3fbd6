//! The guestbook's SQLite database: schema, connection pool, and every query the routes run.
//!
//! Several guestbook instances share one database file on one machine, so every write runs in a
//! `BEGIN IMMEDIATE` transaction (the write lock is taken up front, so two writers never
//! deadlock on a lock upgrade) and every connection waits on a busy database instead of failing.
//! All calls here block; the web layer runs them on tokio's blocking pool through [`Db::run`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How long a statement waits for another instance's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a login session stays valid.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// How long an `Idempotency-Key` is remembered: a retry within this time returns the first id.
pub const IDEMPOTENCY_KEY_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// One guestbook entry as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    pub id: i64,
    pub text: String,
    pub created_at: String,
}

/// A handle on the database file with a small pool of open connections. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    path: PathBuf,
    idle: Arc<Mutex<Vec<Connection>>>,
}

impl Db {
    /// Opens (creating if needed) the database at `path`, switches it to WAL mode and creates
    /// the schema. Safe to call from several processes at the same moment.
    pub fn open(path: &Path) -> anyhow::Result<Db> {
        let db = Db {
            path: path.to_path_buf(),
            idle: Arc::new(Mutex::new(Vec::new())),
        };
        let mut conn = db.connect()?;
        create_schema(&mut conn)
            .with_context(|| format!("creating the guestbook schema in {}", path.display()))?;
        db.give_back(conn);
        Ok(db)
    }

    /// Runs `work` with a pooled connection on tokio's blocking pool, so slow disks or a
    /// busy lock never stall the async threads.
    pub async fn run<T, F>(&self, work: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> anyhow::Result<T> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = db.take()?;
            let result = work(&mut conn);
            db.give_back(conn);
            result
        })
        .await
        .context("database task panicked")?
    }

    /// Opens a fresh connection configured for sharing the file with other processes.
    pub fn connect(&self) -> anyhow::Result<Connection> {
        let conn = Connection::open(&self.path)
            .with_context(|| format!("opening the database {}", self.path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // WAL lets readers run while another instance writes. The mode is stored in the file,
        // but switching needs a moment of exclusive access, so retry while others hold it.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            let mode: rusqlite::Result<String> =
                conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0));
            match mode {
                Ok(mode) if mode.eq_ignore_ascii_case("wal") => break,
                Ok(mode) => anyhow::bail!(
                    "the database {} refused WAL mode (it stays in {mode} mode); \
                     check that its directory is on a local file system",
                    self.path.display()
                ),
                Err(err) if std::time::Instant::now() < deadline && is_busy(&err) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(err) => {
                    return Err(err)
                        .with_context(|| format!("switching {} to WAL mode", self.path.display()));
                }
            }
        }
        // FULL: a commit is on disk before we answer 201, so an acknowledged entry survives a
        // power cut, not only a crash of the process.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(conn)
    }

    fn take(&self) -> anyhow::Result<Connection> {
        let pooled = self.idle.lock().expect("pool lock poisoned").pop();
        match pooled {
            Some(conn) => Ok(conn),
            None => self.connect(),
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().expect("pool lock poisoned");
        if idle.len() < 32 {
            idle.push(conn);
        }
    }
}

fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn create_schema(conn: &mut Connection) -> anyhow::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS entries (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             text TEXT NOT NULL,
             created_at TEXT NOT NULL
         );
         CREATE TABLE IF NOT EXISTS admin (
             id INTEGER PRIMARY KEY CHECK (id = 1),
             password_hash TEXT NOT NULL,
             updated_at TEXT NOT NULL
         );
         CREATE TABLE IF NOT EXISTS idempotency_keys (
             key TEXT PRIMARY KEY,
             entry_id INTEGER NOT NULL REFERENCES entries(id),
             created_unix INTEGER NOT NULL DEFAULT 0
         );
         CREATE TABLE IF NOT EXISTS sessions (
             token_hash TEXT PRIMARY KEY,
             created_at TEXT NOT NULL,
             expires_unix INTEGER NOT NULL
         );",
    )?;
    // Databases made before keys expired lack the column; their keys count as expired (0).
    let has_created: bool = tx.query_row(
        "SELECT count(*) FROM pragma_table_info('idempotency_keys') WHERE name = 'created_unix'",
        [],
        |row| row.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_created {
        tx.execute_batch(
            "ALTER TABLE idempotency_keys ADD COLUMN created_unix INTEGER NOT NULL DEFAULT 0;",
        )?;
    }
    tx.execute_batch(
        "CREATE INDEX IF NOT EXISTS idempotency_keys_by_age
             ON idempotency_keys (created_unix);",
    )?;
    tx.commit()?;
    Ok(())
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .expect("formatting the current UTC time as RFC 3339 cannot fail")
}

/// Adds an entry and returns its id once the transaction has committed.
///
/// With an idempotency key, a repeated call (a client or proxy retrying after a lost answer)
/// within [`IDEMPOTENCY_KEY_LIFETIME`] returns the id stored the first time instead of adding
/// the entry twice.
pub fn add_entry(
    conn: &mut Connection,
    text: &str,
    idempotency_key: Option<&str>,
) -> anyhow::Result<i64> {
    add_entry_at(
        conn,
        text,
        idempotency_key,
        OffsetDateTime::now_utc().unix_timestamp(),
    )
}

fn add_entry_at(
    conn: &mut Connection,
    text: &str,
    idempotency_key: Option<&str>,
    now_unix: i64,
) -> anyhow::Result<i64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Some(key) = idempotency_key {
        // Expired keys go here, a few at a time, so the table stays as large as one day of
        // keyed posts; the index on created_unix makes this a short range scan.
        tx.execute(
            "DELETE FROM idempotency_keys WHERE created_unix < ?1",
            [now_unix - IDEMPOTENCY_KEY_LIFETIME.as_secs() as i64],
        )?;
        let earlier: Option<i64> = tx
            .query_row(
                "SELECT entry_id FROM idempotency_keys WHERE key = ?1",
                [key],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(id) = earlier {
            tx.commit()
                .context("committing the removal of expired keys")?;
            return Ok(id);
        }
    }
    tx.execute(
        "INSERT INTO entries (text, created_at) VALUES (?1, ?2)",
        params![text, now_rfc3339()],
    )?;
    let id = tx.last_insert_rowid();
    if let Some(key) = idempotency_key {
        tx.execute(
            "INSERT INTO idempotency_keys (key, entry_id, created_unix) VALUES (?1, ?2, ?3)",
            params![key, id, now_unix],
        )?;
    }
    tx.commit().context("committing the new entry")?;
    Ok(id)
}

/// Lists entries, oldest first. `newest` limits the list to the last N entries.
pub fn list_entries(conn: &mut Connection, newest: Option<u32>) -> anyhow::Result<Vec<Entry>> {
    let limit = newest.map_or(-1, i64::from);
    let mut stmt = conn.prepare_cached(
        "SELECT id, text, created_at FROM
             (SELECT id, text, created_at FROM entries ORDER BY id DESC LIMIT ?1)
         ORDER BY id ASC",
    )?;
    let rows = stmt.query_map([limit], entry_from_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Lists entries with an id greater than `after`, oldest first, at most `limit` of them: a
/// reader pages through the whole guestbook with `after` = the last id it saw.
pub fn entries_after(
    conn: &mut Connection,
    after: i64,
    limit: Option<u32>,
) -> anyhow::Result<Vec<Entry>> {
    let limit = limit.map_or(-1, i64::from);
    let mut stmt = conn.prepare_cached(
        "SELECT id, text, created_at FROM entries WHERE id > ?1 ORDER BY id ASC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after, limit], entry_from_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn entry_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        id: row.get(0)?,
        text: row.get(1)?,
        created_at: row.get(2)?,
    })
}

/// Proves the database answers a real query (used by `/healthz`).
pub fn check(conn: &mut Connection) -> anyhow::Result<()> {
    let _count: i64 = conn.query_row("SELECT count(*) FROM entries", [], |row| row.get(0))?;
    Ok(())
}

/// The stored admin password hash (PHC string), if an admin password was ever set.
pub fn admin_password_hash(conn: &mut Connection) -> anyhow::Result<Option<String>> {
    Ok(conn
        .query_row("SELECT password_hash FROM admin WHERE id = 1", [], |row| {
            row.get(0)
        })
        .optional()?)
}

/// Stores `hash` as the admin password only if none is set yet. Returns whether it was stored.
pub fn set_initial_admin_password(conn: &mut Connection, hash: &str) -> anyhow::Result<bool> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO admin (id, password_hash, updated_at) VALUES (1, ?1, ?2)",
        params![hash, now_rfc3339()],
    )?;
    tx.commit()?;
    Ok(inserted == 1)
}

/// Replaces the admin password and ends every session except `keep_session` (if given), so a
/// stolen session cookie stops working the moment the password is rotated.
pub fn replace_admin_password(
    conn: &mut Connection,
    hash: &str,
    keep_session: Option<&str>,
) -> anyhow::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO admin (id, password_hash, updated_at) VALUES (1, ?1, ?2)
         ON CONFLICT(id) DO UPDATE SET password_hash = excluded.password_hash,
                                       updated_at = excluded.updated_at",
        params![hash, now_rfc3339()],
    )?;
    tx.execute(
        "DELETE FROM sessions WHERE token_hash IS NOT ?1",
        params![keep_session],
    )?;
    tx.commit()?;
    Ok(())
}

/// Records a new session by the hash of its token.
pub fn add_session(conn: &mut Connection, token_hash: &str) -> anyhow::Result<()> {
    let expires = OffsetDateTime::now_utc().unix_timestamp() + SESSION_LIFETIME.as_secs() as i64;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "DELETE FROM sessions WHERE expires_unix < ?1",
        params![OffsetDateTime::now_utc().unix_timestamp()],
    )?;
    tx.execute(
        "INSERT INTO sessions (token_hash, created_at, expires_unix) VALUES (?1, ?2, ?3)",
        params![token_hash, now_rfc3339(), expires],
    )?;
    tx.commit()?;
    Ok(())
}

/// Whether a session with this token hash exists and has not expired.
pub fn session_is_valid(conn: &mut Connection, token_hash: &str) -> anyhow::Result<bool> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let found: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sessions WHERE token_hash = ?1 AND expires_unix >= ?2",
            params![token_hash, now],
            |row| row.get(0),
        )
        .optional()?;
    Ok(found.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3600;

    fn keys_stored(conn: &mut Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM idempotency_keys", [], |row| {
            row.get(0)
        })
        .unwrap()
    }

    #[test]
    fn a_key_is_remembered_for_a_day_and_then_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("guestbook.db")).unwrap();
        let mut conn = db.connect().unwrap();
        let t0 = 1_800_000_000;
        let first = add_entry_at(&mut conn, "hello", Some("k"), t0).unwrap();
        let retried = add_entry_at(&mut conn, "hello", Some("k"), t0 + 23 * HOUR).unwrap();
        assert_eq!(first, retried, "a retry within a day returns the first id");

        add_entry_at(&mut conn, "later", Some("other"), t0 + 25 * HOUR).unwrap();
        assert_eq!(keys_stored(&mut conn), 1, "the day-old key was removed");
        let after_a_day = add_entry_at(&mut conn, "hello", Some("k"), t0 + 25 * HOUR).unwrap();
        assert_ne!(after_a_day, first);
        assert_eq!(list_entries(&mut conn, None).unwrap().len(), 3);
    }

    #[test]
    fn a_database_made_before_keys_expired_is_upgraded_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("guestbook.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE entries (id INTEGER PRIMARY KEY AUTOINCREMENT, text TEXT NOT NULL,
                                   created_at TEXT NOT NULL);
             CREATE TABLE idempotency_keys (key TEXT PRIMARY KEY,
                                            entry_id INTEGER NOT NULL REFERENCES entries(id));
             INSERT INTO entries (text, created_at) VALUES ('old', '2026-01-01T00:00:00Z');
             INSERT INTO idempotency_keys (key, entry_id) VALUES ('old-key', 1);",
        )
        .unwrap();
        drop(old);
        let db = Db::open(&path).unwrap();
        Db::open(&path).expect("opening an upgraded database again works");
        let mut conn = db.connect().unwrap();
        add_entry_at(&mut conn, "new", Some("new-key"), 1_800_000_000).unwrap();
        assert_eq!(keys_stored(&mut conn), 1, "the old key counted as expired");
        assert_eq!(list_entries(&mut conn, None).unwrap().len(), 2);
    }
}
