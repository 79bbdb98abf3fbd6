//! Test support: an app process committing to a SQLite database the way a site does, so the
//! stream tests have another process write while the primary captures.
//!
//! Usage: `timeline-test-writer DB COUNT|until:PATH [PAUSE_MS]`. Commits COUNT transactions
//! (or until PATH exists), each inserting the row whose id is one more than the largest
//! committed (allocated inside the write transaction, so ids follow commit order), with a
//! body of a few hundred to a few thousand bytes; PAUSE_MS between commits (default 0).
#![forbid(unsafe_code)]

use std::time::Duration;

use rusqlite::Connection;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, db, count, rest @ ..] = args.as_slice() else {
        return Err("usage: timeline-test-writer DB COUNT|until:PATH [PAUSE_MS]".into());
    };
    let (count, until) = match count.strip_prefix("until:") {
        Some(path) => (u64::MAX, Some(std::path::PathBuf::from(path))),
        None => (count.parse()?, None),
    };
    let pause = Duration::from_millis(rest.first().map(|s| s.parse()).transpose()?.unwrap_or(0));
    let conn = Connection::open(db)?;
    conn.busy_timeout(Duration::from_secs(60))?;
    for _ in 0..count {
        if until.as_ref().is_some_and(|p| p.exists()) {
            break;
        }
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let id: i64 = conn.query_row("SELECT coalesce(max(id), 0) + 1 FROM entries", [], |r| {
            r.get(0)
        })?;
        let body = "w".repeat(200 + (id as usize * 37) % 3000);
        conn.execute(
            "INSERT INTO entries (id, body) VALUES (?1, ?2)",
            rusqlite::params![id, body],
        )?;
        conn.execute_batch("COMMIT")?;
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    Ok(())
}
