//! Capture's pinned read transaction, kept on one of two connections so it can be handed
//! from one to the other without ever letting go.
//!
//! A read transaction on a WAL database holds one of SQLite's read locks for as long as it
//! lasts; that is what keeps SQLite from overwriting frames capture still needs (the module
//! doc of [`super`] has the argument). To move the pin forward, capture begins a read
//! transaction on the spare connection, reads the log to its end, and only then ends the
//! old one ([`Pins::begin_spare`], then [`Pins::finish_handoff`]). Nothing here ever asks
//! for SQLite's write lock: `BEGIN` is deferred and the transaction only reads.
//!
//! What a kill -9 leaves at any step: the OS drops every lock the process held (SQLite's
//! locks are `fcntl` locks on the database and `-shm` files), so the app simply stops being
//! held back; capture wrote nothing to the user's database. The next session proves from
//! its saved position whether it missed anything.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionState};

use crate::error::{Result, sql_err};

/// How long SQLite's own busy handler waits inside one attempt to begin a read transaction;
/// [`Pins::begin_spare`] retries attempts until its deadline.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(100);
/// Pause between two attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(5);

/// Opens a connection for capture: read-write (a PASSIVE checkpoint needs it, capture
/// never writes), never checkpointing on close.
pub(super) fn open_connection(db: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(db, flags).map_err(sql_err(
        db,
        "open the database (check that the path names an existing SQLite file)",
    ))?;
    conn.busy_timeout(ATTEMPT_TIMEOUT)
        .map_err(sql_err(db, "set the busy timeout"))?;
    // When capture's connection is the last one to close, SQLite would checkpoint and delete
    // the WAL, taking frames not yet confirmed durable with it. Keep the log instead.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(sql_err(db, "disable checkpoint-on-close"))?;
    Ok(conn)
}

/// Two reader connections: `active` holds capture's pinned read transaction, the other is
/// spare (the next pin, and PASSIVE checkpoints from outside any transaction).
pub(super) struct Pins {
    conns: [Connection; 2],
    active: usize,
    db: PathBuf,
    /// How long to keep retrying to begin a read transaction that SQLite answers busy.
    retry_for: Duration,
}

impl Pins {
    /// Opens both connections; neither holds a read transaction yet.
    pub(super) fn open(db: &Path, retry_for: Duration) -> Result<Pins> {
        Ok(Pins {
            conns: [open_connection(db)?, open_connection(db)?],
            active: 0,
            db: db.to_path_buf(),
            retry_for,
        })
    }

    /// The connection holding the pin (also usable for plain queries).
    pub(super) fn active(&self) -> &Connection {
        &self.conns[self.active]
    }

    fn spare_index(&self) -> usize {
        1 - self.active
    }

    /// Whether the pinned read transaction is still open.
    pub(super) fn held(&self) -> bool {
        in_read_transaction(self.active())
    }

    /// Begins a read transaction on the spare connection, retrying while SQLite answers
    /// busy (another connection recovering the WAL index after a crash) until the deadline.
    /// The active pin is untouched: until [`finish_handoff`](Self::finish_handoff), both
    /// are held.
    pub(super) fn begin_spare(&mut self) -> Result<()> {
        self.begin_spare_within(self.retry_for)
    }

    /// [`begin_spare`](Self::begin_spare) with its own patience (zero: one attempt).
    pub(super) fn begin_spare_within(&mut self, patience: Duration) -> Result<()> {
        let conn = &self.conns[self.spare_index()];
        end_transaction(conn);
        let deadline = Instant::now() + patience;
        loop {
            // A deferred BEGIN takes no lock; the read is what starts the read transaction
            // (and takes a WAL read lock). It never asks for the write lock.
            let attempt = conn.execute_batch("BEGIN DEFERRED").and_then(|()| {
                conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
            });
            match attempt {
                Ok(()) => return Ok(()),
                Err(e) if is_transient(&e) && Instant::now() < deadline => {
                    end_transaction(conn);
                    std::thread::sleep(RETRY_PAUSE);
                }
                Err(e) if is_transient(&e) => {
                    end_transaction(conn);
                    return Err(sql_err(
                        &self.db,
                        "open capture's read transaction: SQLite stayed busy (another connection \
                         holds the database exclusively or is recovering it); capture tries again later",
                    )(e));
                }
                Err(e) => {
                    end_transaction(conn);
                    return Err(sql_err(&self.db, "open capture's read transaction")(e));
                }
            }
        }
    }

    /// Ends the old pin; the spare's read transaction becomes the pin. Call only after the
    /// log was read to its end under the new pin.
    pub(super) fn finish_handoff(&mut self) -> Result<()> {
        let old = self.active;
        self.active = self.spare_index();
        let conn = &self.conns[old];
        if conn.is_autocommit() {
            return Ok(());
        }
        conn.execute_batch("COMMIT")
            .map_err(sql_err(&self.db, "end capture's previous read transaction"))
    }

    /// Gives up a handoff: ends the spare's read transaction, the active pin stays.
    pub(super) fn abandon_spare(&mut self) {
        end_transaction(&self.conns[self.spare_index()]);
    }

    /// Runs a PASSIVE checkpoint from the spare connection, outside any transaction: it
    /// copies what no reader still needs into the database file and never takes the write
    /// lock (nor waits for anyone). Returns (frames in the log, frames copied); both are -1
    /// when another checkpoint was running.
    pub(super) fn passive_checkpoint(&self) -> Result<(i64, i64)> {
        let conn = &self.conns[self.spare_index()];
        end_transaction(conn);
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        })
        .map_err(sql_err(&self.db, "checkpoint the WAL"))
    }
}

fn in_read_transaction(conn: &Connection) -> bool {
    matches!(
        conn.transaction_state(Some("main")),
        Ok(TransactionState::Read | TransactionState::Write)
    )
}

/// Ends whatever transaction `conn` is in. Capture's transactions only read, so there is
/// never anything to lose.
fn end_transaction(conn: &Connection) {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
}

/// SQLite's answers that mean "try again shortly": busy (a recovery or a locking race)
/// and its locking-protocol retry limit.
fn is_transient(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::FileLockingProtocolFailed
        )
    )
}
