//! Events: every lifecycle fact of a site (an instance started, exited, restarted, changed
//! health; maintenance switched; a process scaled), with the moment it happened.
//!
//! Events are plain values; the daemon stores them durably and `lifeboat events` lists them.
//! They must never carry secrets (bypass tokens, passwords).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// One stored event: its place in the site's history, when it happened, and what happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the site's event history; strictly increasing, starting at 1.
    pub seq: u64,
    /// When it happened (UTC, RFC 3339 in JSON).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// What happened.
    #[serde(flatten)]
    pub what: EventKind,
}

/// What happened. In JSON the variant is the `kind` field, e.g. `"kind": "instance-exited"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum EventKind {
    /// `lifeboat up` started serving the site.
    SiteUp { proxy: String },
    /// `lifeboat up` stopped (Ctrl-C, SIGTERM or `lifeboat down`).
    SiteDown { reason: String },
    /// Instances left behind by a lifeboat that died were killed.
    LeftoversReaped { pids: Vec<u32> },
    /// An instance's process was spawned.
    InstanceStarted { instance: String, pid: u32 },
    /// An instance's process ended (by itself or by a signal).
    InstanceExited {
        instance: String,
        pid: u32,
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// A crashed instance is being started again after `delay_ms`.
    InstanceRestarting {
        instance: String,
        attempt: u32,
        delay_ms: u64,
    },
    /// An instance keeps crashing; restarts are spaced out by `delay_ms`.
    InstanceCrashLooping { instance: String, delay_ms: u64 },
    /// An instance was stopped on purpose (scale down, shutdown).
    InstanceStopped { instance: String },
    /// The front door's health check of an instance changed its verdict.
    HealthChanged {
        instance: String,
        healthy: bool,
        reason: String,
    },
    /// The front door stopped sending traffic to an instance at once (connect failed, exited).
    InstanceEjected { instance: String, reason: String },
    /// Maintenance mode was switched on.
    MaintenanceOn { message: String },
    /// Maintenance mode was switched off.
    MaintenanceOff,
    /// A process's desired number of instances changed.
    Scaled { process: String, from: u32, to: u32 },
    /// The site's vault key was created (at the first `up` with a `[vault]`): it must be
    /// copied somewhere safe (`lifeboat vault key export`).
    VaultKeyCreated { path: String },
    /// Continuous capture started on the live state.
    CaptureStarted { state: String },
    /// Capture could not start or keeps failing; it retries.
    CaptureError { message: String },
    /// A full checkpoint of the site was stored in the vault.
    CheckpointTaken { snapshot: String, segment: u64 },
    /// Capture of a database could not prove it missed nothing and took a fresh image.
    ContinuityLost { database: String, why: String },
    /// MariaDB capture cannot continue from where it was (a GTID gap, binlogs purged by
    /// hand, `RESET MASTER`, a damaged binlog): the transactions after `last_captured` are
    /// not in the timeline. A new base is taken at once.
    #[serde(rename = "mariadb-capture-gap")]
    MariaDbCaptureGap {
        database: String,
        last_captured: String,
        why: String,
    },
    /// MariaDB capture continues from a new base after a gap: no rewind to a moment from
    /// `unrestorable_from` to `unrestorable_until` is possible.
    #[serde(rename = "mariadb-capture-resumed")]
    MariaDbCaptureResumed {
        database: String,
        #[serde(default)]
        last_captured: String,
        base_gtid: String,
        unrestorable_from: String,
        unrestorable_until: String,
    },
    /// A live database failed `PRAGMA quick_check`: rewind to before this event for a clean
    /// copy.
    IntegrityFailed { database: String, detail: String },
    /// A rewind began: the site as of `to` is being restored beside the live state.
    RewindStarted { to: String },
    /// The front door now serves the restored copy in `state`; `previous` is kept for
    /// `rewind --undo`.
    RewindDone {
        to: String,
        state: String,
        previous: String,
        credentials_rotated: bool,
        /// The accounts the credentials hook said it rotated (`rotated: NAME` lines).
        #[serde(default)]
        rotated: Vec<String>,
    },
    /// A rewind stopped before going live; the live site was not changed.
    RewindFailed { to: String, why: String },
    /// `rewind --undo`: the state that was live before the last rewind serves again.
    RewindUndone { state: String, previous: String },
    /// `lifeboat states drop`: restored copies (or the site dir's own state) were deleted.
    StatesDropped {
        names: Vec<String>,
        freed_bytes: u64,
    },
    /// An instance could not be started at all (its state could not be prepared).
    InstanceStartFailed { instance: String, why: String },
    /// This machine does not let Lifeboat show a restored state at the site's own paths, so
    /// after a rewind instances find it only through `$LIFEBOAT_STATE_DIR`.
    PrivateMountsUnavailable { why: String },
    /// An instance writes a file (or holds a SQLite database) that is not part of the declared
    /// `[state]`: it is not backed up and a rewind will not bring it back.
    WritesOutsideState {
        instance: String,
        path: String,
        sqlite: bool,
    },
    /// An instance holds a database of the declared state that is not the copy it should
    /// serve (`state`): it does not serve the live data.
    WrongStateCopy {
        instance: String,
        path: String,
        state: String,
    },
    /// A database was switched to WAL mode so it can be captured.
    WalEnabled { database: String, previous: String },
    /// A declared database is not in WAL mode, so nothing of it is captured.
    NotWalMode { database: String, mode: String },
    /// A data dir declared in `[state]` was missing and was created empty.
    StateDirCreated { path: String },
    /// This node became the site's primary (it holds the leader key in etcd) in `term`.
    NodePromoted { node: String, term: u64 },
    /// This node follows the primary `leader` (term `term`): it runs no instances and its
    /// front door forwards to the primary's.
    NodeFollowing {
        node: String,
        leader: String,
        term: u64,
    },
    /// This node stopped writing (its instances were killed at once): it could no longer be
    /// sure it was the primary.
    NodeFenced {
        node: String,
        term: u64,
        why: String,
    },
    /// etcd can not be reached (it lost quorum), but every standby confirms this primary
    /// directly: it serves on (failsafe mode) instead of stopping the site.
    NodeFailsafe {
        node: String,
        term: u64,
        why: String,
    },
    /// etcd answers again: the primary's lease decides as usual.
    NodeFailsafeEnded { node: String, term: u64 },
    /// A node kept a state of its own aside (as `state`, listed by `lifeboat states`) before
    /// following another primary: what it holds that the primary does not is not lost.
    StateForked {
        state: String,
        why: String,
        /// Kept after a switchover (the successor confirmed everything): a precaution, not
        /// an alert.
        #[serde(default)]
        planned: bool,
    },
    /// One visitor had many requests refused as unauthorized (401/403) in a short time:
    /// password guessing or stolen cookies tried one after another.
    AuthFailures {
        client: String,
        failures: u32,
        seconds: f64,
        path: String,
    },
    /// A state kept aside (`fork`) is stored in the vault as a snapshot: `lifeboat timeline`
    /// lists it on any machine and `lifeboat restore-site --fork` rebuilds it.
    ForkStored { fork: String, snapshot: String },
    /// The kernel killed processes of an instance for want of memory: its `memory` limit
    /// (`limit_bytes`), or the machine's when it has none.
    InstanceOutOfMemory {
        instance: String,
        killed: u64,
        limit_bytes: Option<u64>,
    },
}

impl EventKind {
    /// One line for humans, e.g. "web-2 exited (signal 9)".
    pub fn describe(&self) -> String {
        match self {
            EventKind::SiteUp { proxy } => format!("site up, front door at {proxy}"),
            EventKind::SiteDown { reason } => format!("site down ({reason})"),
            EventKind::LeftoversReaped { pids } => {
                format!(
                    "killed {} instance process(es) left by a previous lifeboat: {pids:?}",
                    pids.len()
                )
            }
            EventKind::InstanceStarted { instance, pid } => {
                format!("{instance} started (pid {pid})")
            }
            EventKind::InstanceExited {
                instance,
                pid,
                code,
                signal,
            } => {
                let how = match (code, signal) {
                    (_, Some(s)) => format!("signal {s}"),
                    (Some(c), None) => format!("code {c}"),
                    (None, None) => "unknown status".to_string(),
                };
                format!("{instance} exited ({how}, pid {pid})")
            }
            EventKind::InstanceRestarting {
                instance,
                attempt,
                delay_ms,
            } => {
                format!(
                    "{instance} restarting (attempt {attempt}, in {})",
                    millis(*delay_ms)
                )
            }
            EventKind::InstanceCrashLooping { instance, delay_ms } => {
                format!(
                    "{instance} is crash-looping; next restart in {}",
                    millis(*delay_ms)
                )
            }
            EventKind::InstanceStopped { instance } => format!("{instance} stopped"),
            EventKind::HealthChanged {
                instance,
                healthy,
                reason,
            } => {
                let verdict = if *healthy { "healthy" } else { "unhealthy" };
                if reason.is_empty() {
                    format!("{instance} is {verdict}")
                } else {
                    format!("{instance} is {verdict} ({reason})")
                }
            }
            EventKind::InstanceEjected { instance, reason } => {
                format!("{instance} taken out of the front door ({reason})")
            }
            EventKind::MaintenanceOn { message } => format!("maintenance on: {message}"),
            EventKind::MaintenanceOff => "maintenance off".to_string(),
            EventKind::Scaled { process, from, to } => format!("{process} scaled {from} -> {to}"),
            EventKind::VaultKeyCreated { path } => format!(
                "vault key created at {path}; copy it somewhere safe (`lifeboat vault key export`)"
            ),
            EventKind::CaptureStarted { state } => format!("capture started on {state}"),
            EventKind::CaptureError { message } => format!("capture: {message}"),
            EventKind::CheckpointTaken { snapshot, segment } => {
                let short = snapshot.get(..12).unwrap_or(snapshot);
                format!("checkpoint {short} stored (timeline segment {segment})")
            }
            EventKind::ContinuityLost { database, why } => {
                format!("capture of {database} lost continuity ({why}); took a fresh image")
            }
            EventKind::MariaDbCaptureGap {
                database,
                last_captured,
                why,
            } => format!(
                "MariaDB capture of {database} cannot continue after GTID {last_captured}: {why}; the transactions after it are not in the timeline, a new base is being taken"
            ),
            EventKind::MariaDbCaptureResumed {
                database,
                last_captured,
                base_gtid,
                unrestorable_from,
                unrestorable_until,
            } => format!(
                "MariaDB capture of {database} continues from a new base at GTID {base_gtid}; the transactions after GTID {last_captured} up to it are in that base but were not captured one by one, so no rewind to a moment from {unrestorable_from} to {unrestorable_until} is possible"
            ),
            EventKind::IntegrityFailed { database, detail } => format!(
                "{database} fails its integrity check ({detail}); `lifeboat rewind --to before-event:ID` gives a clean copy"
            ),
            EventKind::RewindStarted { to } => format!("rewind to {to} started"),
            EventKind::RewindDone {
                to,
                state,
                previous,
                credentials_rotated,
                rotated,
            } => {
                let creds = match (credentials_rotated, rotated.is_empty()) {
                    (true, true) => ", credentials rotated".to_string(),
                    (true, false) => format!(", credentials rotated for {}", rotated.join(", ")),
                    (false, _) => String::new(),
                };
                format!(
                    "rewound to {to}: serving {state}{creds}; {previous} kept for `rewind --undo`"
                )
            }
            EventKind::RewindFailed { to, why } => {
                format!("rewind to {to} failed, the live site is unchanged: {why}")
            }
            EventKind::RewindUndone { state, previous } => {
                format!("rewind undone: serving {state} again; {previous} kept")
            }
            EventKind::StatesDropped { names, freed_bytes } => format!(
                "states dropped: {} ({} MiB freed)",
                names.join(", "),
                freed_bytes.div_ceil(1 << 20)
            ),
            EventKind::InstanceStartFailed { instance, why } => {
                format!("{instance} could not start: {why}")
            }
            EventKind::PrivateMountsUnavailable { why } => format!(
                "restored states can not be shown at the site's own paths on this machine ({why}); \
                 after a rewind instances find them only through $LIFEBOAT_STATE_DIR"
            ),
            EventKind::WritesOutsideState {
                instance,
                path,
                sqlite,
            } => {
                let what = if *sqlite { "a SQLite database at " } else { "" };
                format!(
                    "{instance} writes {what}{path}, which is not in [state]: it is not backed up \
                     (add it to [state] in lifeboat.toml)"
                )
            }
            EventKind::WrongStateCopy {
                instance,
                path,
                state,
            } => format!(
                "{instance} has {path} open, but not the copy of the state it serves ({state}): \
                 it does not serve the live data"
            ),
            EventKind::WalEnabled { database, previous } => {
                format!("{database} switched from {previous} to WAL mode so it can be captured")
            }
            EventKind::NotWalMode { database, mode } => format!(
                "{database} is in {mode} journal mode, so Lifeboat can not capture it: nothing of \
                 it is backed up. Restart with `lifeboat up --enable-wal` to switch it to WAL mode \
                 (SQLite's own mode; the app needs no change)"
            ),
            EventKind::StateDirCreated { path } => {
                format!("{path} (a data dir in [state]) was missing; created it empty")
            }
            EventKind::NodePromoted { node, term } => {
                format!("{node} is the primary now (term {term}): it runs the site's instances")
            }
            EventKind::NodeFollowing { node, leader, term } => format!(
                "{node} follows the primary {leader} (term {term}): it forwards requests there"
            ),
            EventKind::NodeFenced { node, term, why } => format!(
                "{node} stopped writing (term {term}): {why}; its instances were killed and it rejoins as a standby"
            ),
            EventKind::StateForked { state, why, .. } => {
                format!("state kept aside as {state}: {why}")
            }
            EventKind::AuthFailures {
                client,
                failures,
                seconds,
                path,
            } => format!(
                "{failures} requests from {client} refused as unauthorized within {seconds:.0} s (the last to {path}): someone guessing passwords? If one got in, `lifeboat rewind --to before-event:ID --rotate-credentials`"
            ),
            EventKind::ForkStored { fork, snapshot } => format!(
                "fork {fork} stored in the vault (snapshot {}): `lifeboat restore-site --fork {fork} --into DIR` rebuilds it",
                snapshot.get(..12).unwrap_or(snapshot)
            ),
            EventKind::NodeFailsafe { node, term, why } => {
                format!("{node} serves on in failsafe mode (term {term}): {why}")
            }
            EventKind::NodeFailsafeEnded { node, term } => {
                format!("{node} reaches etcd again: failsafe mode ended (term {term})")
            }
            EventKind::InstanceOutOfMemory {
                instance,
                killed,
                limit_bytes,
            } => match limit_bytes {
                Some(limit) => format!(
                    "{instance} reached its memory limit ({} MiB): the kernel killed {killed} of its processes; raise `memory` in [processes] if it needs more",
                    limit >> 20
                ),
                None => format!(
                    "{instance} ran out of memory (it has no limit; the machine ran out): the kernel killed {killed} of its processes"
                ),
            },
        }
    }

    /// Whether the owner should hear of it at once (on the terminal of `lifeboat up`), not
    /// only in `lifeboat events`: something is not backed up, not served, or broken.
    pub fn is_alert(&self) -> bool {
        matches!(
            self,
            EventKind::CaptureError { .. }
                | EventKind::ContinuityLost { .. }
                | EventKind::MariaDbCaptureGap { .. }
                | EventKind::MariaDbCaptureResumed { .. }
                | EventKind::IntegrityFailed { .. }
                | EventKind::InstanceCrashLooping { .. }
                | EventKind::InstanceStartFailed { .. }
                | EventKind::PrivateMountsUnavailable { .. }
                | EventKind::WritesOutsideState { .. }
                | EventKind::WrongStateCopy { .. }
                | EventKind::WalEnabled { .. }
                | EventKind::NotWalMode { .. }
                | EventKind::StateDirCreated { .. }
                | EventKind::InstanceOutOfMemory { .. }
                | EventKind::NodePromoted { .. }
                | EventKind::NodeFenced { .. }
                | EventKind::StateForked { planned: false, .. }
                | EventKind::AuthFailures { .. }
                | EventKind::NodeFailsafe { .. }
                | EventKind::RewindFailed { .. }
        )
    }
}

fn millis(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_json_with_a_kind_field() {
        let event = Event {
            seq: 7,
            at: time::macros::datetime!(2026-01-02 03:04:05 UTC),
            what: EventKind::InstanceExited {
                instance: "web-2".into(),
                pid: 42,
                code: None,
                signal: Some(9),
            },
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["kind"], "instance-exited");
        assert_eq!(json["at"], "2026-01-02T03:04:05Z");
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
        assert_eq!(back.what.describe(), "web-2 exited (signal 9, pid 42)");
    }

    #[test]
    fn a_fork_kept_after_a_switchover_is_no_alert_and_older_records_still_read() {
        let old: EventKind = serde_json::from_value(serde_json::json!({
            "kind": "state-forked", "state": "fork-a-term3-1", "why": "a joined b"
        }))
        .unwrap();
        assert!(old.is_alert(), "a fork after a failure is news");
        let planned = EventKind::StateForked {
            state: "fork-a-term4-2".into(),
            why: "a handed over to b".into(),
            planned: true,
        };
        assert!(!planned.is_alert(), "a switchover's precaution is not");
    }
}
