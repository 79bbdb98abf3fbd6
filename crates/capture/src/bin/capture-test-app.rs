//! Test support: an app process that writes the way Django does inside
//! `transaction.atomic()`: a deferred `BEGIN`, a read, then a write, then `COMMIT`, with
//! Django's default busy timeout of 5 s. It counts the transactions SQLite fails instead of
//! stopping at the first, so a test can assert that none failed.
//!
//! Usage: `capture-test-app DB COUNT LOCK_FILE REPORT_FILE PAUSE_EVERY PAUSE_MS`. Commits COUNT
//! transactions, each inserting the next id (one more than the largest committed, read
//! inside the transaction). The transactions of every process given the same LOCK_FILE
//! are serialized by an exclusive lock on it, as one worker serving requests one at a
//! time would: SQLite refuses a deferred transaction's upgrade at once, without waiting,
//! when another connection wrote meanwhile, so app processes writing concurrently fail
//! against each other with or without capture. Serialized, every failure counted has
//! another cause. Between transactions the process thinks for 0-3 ms; after every
//! PAUSE_EVERY-th transaction it pauses PAUSE_MS while still holding the lock, a quiet
//! moment for the whole app.
//!
//! At the end it writes REPORT_FILE atomically: `committed N`, `failed N`, then the first
//! few error messages, one a line.
#![forbid(unsafe_code)]

use std::fs::File;
use std::time::Duration;

use rusqlite::Connection;

/// One Django-style transaction: the id is read, then written.
fn transaction(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN")?;
    let id: i64 = conn.query_row("SELECT coalesce(max(id), 0) + 1 FROM entries", [], |r| {
        r.get(0)
    })?;
    let body = "a".repeat((id as usize * 37) % 3000);
    conn.execute(
        "INSERT INTO entries (id, body) VALUES (?1, ?2)",
        rusqlite::params![id, body],
    )?;
    conn.execute_batch("COMMIT")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, db, count, lock, report, pause_every, pause_ms] = args.as_slice() else {
        return Err(
            "usage: capture-test-app DB COUNT LOCK_FILE REPORT_FILE PAUSE_EVERY PAUSE_MS".into(),
        );
    };
    let pause = Duration::from_millis(pause_ms.parse()?);
    let count: u64 = count.parse()?;
    let pause_every: u64 = pause_every.parse()?;
    let conn = Connection::open(db)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock)?;
    let (mut committed, mut failed) = (0u64, 0u64);
    let mut errors = Vec::new();
    // A small xorshift generator for think times; seeded per process.
    let mut state = u64::from(std::process::id()) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    while committed + failed < count {
        lock.lock()?;
        match transaction(&conn) {
            Ok(()) => committed += 1,
            Err(e) => {
                failed += 1;
                if errors.len() < 10 {
                    errors.push(e.to_string());
                }
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
        if pause_every > 0 && (committed + failed).is_multiple_of(pause_every) {
            std::thread::sleep(pause);
        }
        lock.unlock()?;
        std::thread::sleep(Duration::from_micros(next() % 3000));
    }
    let text = format!(
        "committed {committed}\nfailed {failed}\n{}",
        errors.join("\n")
    );
    let tmp = format!("{report}.partial");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, report)?;
    Ok(())
}
