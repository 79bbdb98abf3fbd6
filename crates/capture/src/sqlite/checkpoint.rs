//! Capture's own checkpoints: copying the log back into the database file so that the app's
//! next write can start it over, without taking the write lock.
//!
//! The order is what keeps it safe (module doc of [`super`] for the argument):
//!
//! 1. everything handed out is already durable (otherwise the checkpoint is deferred), and
//!    what was read but not handed out (after a failed shipment) is shipped first;
//! 2. hand the pin off to the end of the log, reading the transactions committed since the
//!    last poll, and make them durable through the caller's `ship`: the next pin may sit on
//!    read lock 0, and then the app's next write may overwrite every frame up to it;
//! 3. PASSIVE checkpoint from the spare connection, outside any transaction: it copies
//!    frames up to the pin into the database file (and fsyncs), and neither takes the write
//!    lock nor waits for anyone;
//! 4. hand the pin off again. If nothing was committed since step 2's pin began, SQLite
//!    gives the new pin read lock 0 (everything is copied back) and the app's next write
//!    restarts the log. If something was, go back to step 2 with the few new transactions,
//!    a bounded number of times. What the last handoff read is shipped too (it is safe in
//!    the log until the next handoff anyway: module doc of [`super`]).
//!
//! A kill -9 at any step leaves the user's database as SQLite's own crash-safe checkpoint
//! leaves it, and capture's position file at the last records confirmed durable: the next
//! session repeats what was not confirmed, or says why it cannot.

use super::SqliteCapture;
use crate::error::{CaptureError, Result};
use crate::sqlite::{CaptureEvent, CheckpointReport};

/// How many times one checkpoint copies the log and re-pins, chasing a pin on read lock 0
/// while the app keeps committing. Each round ships what was committed during the last.
const ROUNDS: usize = 3;

impl SqliteCapture {
    /// Checkpoints the WAL once everything handed out is durable, so the app's next write
    /// can start the log over. Transactions committed since the last poll are passed to
    /// `ship` (in up to four batches); when it returns `Ok` they count as durable.
    ///
    /// Never takes the write lock, so it never makes an app transaction fail or wait: the
    /// copy is a PASSIVE checkpoint, and the log restarts at the app's next write only if
    /// the app paused long enough for capture to re-pin with nothing left to copy. Under a
    /// write load without such a pause the log grows (SQLite's checkpoint starvation) until
    /// the app pauses. RESTART and TRUNCATE are never run: they need the write lock.
    pub fn checkpoint<F>(&mut self, mut ship: F) -> Result<CheckpointReport>
    where
        F: FnMut(&[CaptureEvent]) -> std::result::Result<(), String>,
    {
        let waiting = self.last_seq - self.pending_count() - self.durable_seq;
        if waiting > 0 {
            return Ok(deferred(format!(
                "{waiting} records are not confirmed durable yet"
            )));
        }
        self.notice_lost_pin();
        if self.needs_resync.is_some() {
            return Ok(deferred(
                "capture must resync first (its next poll does)".to_string(),
            ));
        }
        // Left over from a shipment that failed: durable before any handoff.
        let mut shipped = self.ship_pending(&mut ship)?;
        self.handoff()?;
        let mut last = (0, 0);
        for _ in 0..ROUNDS {
            // Durable before any pin that may sit on read lock 0.
            shipped += self.ship_pending(&mut ship)?;
            last = self.pins.passive_checkpoint()?;
            self.handoff()?;
            // Nothing new: the pin most likely began with everything copied back, on read
            // lock 0. If not (a reader of the app kept part of the log, or a commit slipped
            // in as the previous pin began), the next checkpoint tries again; safety never
            // depends on which read lock the pin got.
            if self.pending.is_empty() {
                break;
            }
        }
        // What the last handoff read is safe in the log until the next handoff (module doc),
        // but ship it too, so nothing read waits for a poll.
        shipped += self.ship_pending(&mut ship)?;
        let (log, copied) = last;
        Ok(CheckpointReport {
            shipped,
            wal_frames: log,
            checkpointed_frames: copied,
            complete: log >= 0 && log == copied,
            deferred: None,
        })
    }

    /// Ships what was read but not handed out yet, and confirms it durable.
    fn ship_pending<F>(&mut self, ship: &mut F) -> Result<usize>
    where
        F: FnMut(&[CaptureEvent]) -> std::result::Result<(), String>,
    {
        let events = std::mem::take(&mut self.pending);
        if events.is_empty() {
            return Ok(0);
        }
        if let Err(e) = ship(&events) {
            self.pending = events;
            return Err(CaptureError::ShipFailed(e));
        }
        self.confirm_durable(events.last().map_or(0, CaptureEvent::seq))?;
        Ok(events.len())
    }
}

fn deferred(why: String) -> CheckpointReport {
    CheckpointReport {
        shipped: 0,
        wal_frames: 0,
        checkpointed_frames: 0,
        complete: false,
        deferred: Some(why),
    }
}
