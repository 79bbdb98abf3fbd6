//! Keeping a live MariaDB server's binlog in step with the timeline: purging the binlog
//! files a durable checkpoint covers, and starting capture again from a new base when the
//! server no longer has what capture needs (a GTID gap, binlogs purged by hand, `RESET
//! MASTER`, a damaged binlog).
//!
//! Never purges a transaction capture has not confirmed durable, nor one after the base of
//! the checkpoint just stored. Never continues past a gap silently: the gap is an event, it
//! is recorded in the checkpoint that ends it, and restores into it are refused.

use std::time::Instant;

use lifeboat_mariadb::MariaDbError;
use time::OffsetDateTime;

use crate::checkpoint;
use crate::error::Result;
use crate::shipper::{Shipper, mariadb_err};
use crate::types::{CheckpointInfo, TimelineEvent};

/// What purging covered binlog files did so far (for `lifeboat status`).
#[derive(Debug, Clone, Default)]
pub(crate) struct PurgeState {
    pub oldest_kept: Option<String>,
    pub files_purged: u64,
    pub last_error: Option<String>,
}

/// A problem MariaDB capture cannot continue past.
#[derive(Debug, Clone)]
pub(crate) struct CaptureGap {
    /// Capture had received everything committed up to about then: restores from here until
    /// the new base are not possible.
    pub since: OffsetDateTime,
    /// The last position captured.
    pub last_captured: String,
    pub why: String,
    /// When a new base was last attempted (a failure is retried after
    /// `catch_up_interval`).
    pub attempted: Option<Instant>,
}

/// After a checkpoint is stored (its snapshot and every segment up to its segment are on a
/// quorum of the destinations): purges each server's binlog files that lie entirely before
/// both the checkpoint's base and what capture confirmed durable. A rewind reads the vault,
/// never the live binlog, so nothing a restore needs is lost; capture resumes from at least
/// its confirmed position, which stays in the files kept. The binlog is rotated first, so
/// the file written until now can go at the next checkpoint.
///
/// A failure is recorded in the status and logged; it never fails the checkpoint.
pub(crate) fn purge_covered_binlogs(shipper: &mut Shipper) {
    for m in &mut shipper.mariadbs {
        let Some(base) = m.last_base.clone() else {
            continue;
        };
        let confirmed = m.cap.status().confirmed;
        let covered = base.common(&confirmed);
        let result = lifeboat_mariadb::rotate_binlog(&m.spec)
            .and_then(|()| lifeboat_mariadb::purge_binlogs_before(&m.spec, &covered));
        match result {
            Ok(Some(report)) => {
                if !report.purged.is_empty() {
                    tracing::info!(
                        database = %m.name,
                        purged = ?report.purged,
                        purged_bytes = report.purged_bytes,
                        oldest_kept = %report.oldest_kept,
                        covered = %covered,
                        "purged the binlog files a durable checkpoint covers"
                    );
                }
                m.purge.files_purged += report.purged.len() as u64;
                m.purge.oldest_kept = Some(report.oldest_kept);
                m.purge.last_error = None;
            }
            Ok(None) => {}
            Err(e) => {
                let message = format!(
                    "could not purge the binlog files of {} that the checkpoint covers ({e}); the server keeps them and the next checkpoint tries again",
                    m.name
                );
                tracing::warn!(database = %m.name, "{message}");
                m.purge.last_error = Some(message);
            }
        }
    }
    shipper.note_mariadb_status();
}

/// After a checkpoint is stored: capture of a source stopped at a gap continues from the
/// checkpoint's base (its transactions are all in the base; those after it come from the
/// server's binlog, which starts before it), and covered binlog files are purged.
pub(crate) fn after_checkpoint(shipper: &mut Shipper, info: &CheckpointInfo) -> Result<()> {
    purge_covered_binlogs(shipper);
    for i in 0..shipper.mariadbs.len() {
        let m = &mut shipper.mariadbs[i];
        let (Some(base), Some(_)) = (m.last_base.clone(), m.gap.as_ref()) else {
            continue;
        };
        m.cap
            .restart_from_base(&base)
            .map_err(mariadb_err(&m.name))?;
        let gap = m.gap.take().expect("checked above");
        m.last_received = OffsetDateTime::now_utc();
        let name = m.name.clone();
        tracing::warn!(database = %name, base = %base, "MariaDB capture continues from a new base");
        shipper.emit(TimelineEvent::MariaDbCaptureResumed {
            database: name,
            last_captured: gap.last_captured,
            base_gtid: base.to_string(),
            unrestorable_from: gap.since,
            unrestorable_until: info.time,
        });
    }
    shipper.note_mariadb_status();
    Ok(())
}

/// Capture of MariaDB source `i` stopped with `error`, which it cannot continue past: says
/// so (once), ships what was captured before it and takes a checkpoint at once (a new base,
/// the gap recorded in it), from whose base capture continues ([`after_checkpoint`]). While
/// destinations refuse the checkpoint it is retried every `catch_up_interval`; meanwhile
/// the rest of the site is captured as usual.
pub(crate) fn recover(shipper: &mut Shipper, i: usize, error: MariaDbError) -> Result<()> {
    if shipper.mariadbs[i].gap.is_none() {
        let m = &mut shipper.mariadbs[i];
        let name = m.name.clone();
        let last_captured = m.cap.status().handed_out.to_string();
        let why = error.to_string();
        tracing::warn!(database = %name, %last_captured, "{why}");
        m.gap = Some(CaptureGap {
            since: m.last_received,
            last_captured: last_captured.clone(),
            why: why.clone(),
            attempted: None,
        });
        shipper.emit(TimelineEvent::MariaDbCaptureGap {
            database: name,
            last_captured,
            why,
        });
    }
    let retry_wait = shipper.options.catch_up_interval;
    let gap = shipper.mariadbs[i].gap.as_mut().expect("set above");
    if gap.attempted.is_some_and(|at| at.elapsed() < retry_wait) {
        return Ok(());
    }
    gap.attempted = Some(Instant::now());
    // What was captured before the problem goes into a segment before the checkpoint's: a
    // restore from the new base reads none of the history before the gap.
    shipper.ship()?;
    checkpoint::take(shipper)?;
    Ok(())
}
