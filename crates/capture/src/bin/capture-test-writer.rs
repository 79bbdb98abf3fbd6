//! Test support: an app process writing a SQLite database the way a site does, so the
//! capture tests can have *other processes* commit while capture runs.
//!
//! Usage: `capture-test-writer DB COUNT [TRUNCATE_EVERY]`. Commits COUNT transactions (or,
//! with COUNT written `until:PATH`, until PATH exists); each
//! inserts one row whose id is one more than the largest committed id (allocated inside the
//! write transaction, so ids follow commit order). With TRUNCATE_EVERY, it also runs
//! `PRAGMA wal_checkpoint(TRUNCATE)` after every that many commits, as some apps do.
#![forbid(unsafe_code)]

use std::time::Duration;

use rusqlite::Connection;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, db, count, rest @ ..] = args.as_slice() else {
        return Err("usage: capture-test-writer DB COUNT [TRUNCATE_EVERY]".into());
    };
    let (count, until) = match count.strip_prefix("until:") {
        Some(path) => (u64::MAX, Some(std::path::PathBuf::from(path))),
        None => (count.parse()?, None),
    };
    let truncate_every: Option<u64> = rest.first().map(|s| s.parse()).transpose()?;
    let conn = Connection::open(db)?;
    conn.busy_timeout(Duration::from_secs(60))?;
    conn.execute_batch("PRAGMA wal_autocheckpoint=50;")?;
    let checkpointer = Connection::open(db)?;
    checkpointer.busy_timeout(Duration::from_millis(20))?;
    for i in 1..=count {
        if until.as_ref().is_some_and(|p| p.exists()) {
            break;
        }
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let id: i64 = conn.query_row("SELECT coalesce(max(id), 0) + 1 FROM entries", [], |r| {
            r.get(0)
        })?;
        let body = "p".repeat((id as usize * 37) % 3000);
        conn.execute(
            "INSERT INTO entries (id, body) VALUES (?1, ?2)",
            rusqlite::params![id, body],
        )?;
        conn.execute_batch("COMMIT")?;
        if truncate_every.is_some_and(|n| i.is_multiple_of(n)) {
            // The result (busy or not) does not matter: the point is that it may happen.
            let _ = checkpointer.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        }
    }
    Ok(())
}
