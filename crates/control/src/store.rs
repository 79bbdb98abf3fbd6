//! The site's durable state: desired scale and maintenance (so a restarted lifeboat comes back
//! the same), and the append-only event history. One redb file, `.lifeboat/state.redb`.
//!
//! Every write is one redb transaction committed with immediate durability (fsync before
//! `commit` returns), so a kill -9 at any point leaves either the old or the new value.
//! redb locks the file: only one daemon per site can open it.

#![allow(
    clippy::result_large_err,
    reason = "redb's own error type is large; it lives only until it becomes a ControlError"
)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use lifeboat_core::{Event, EventKind};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ControlError;

/// Desired state, one JSON value per key. Format version 1.
const DESIRED: TableDefinition<&str, &[u8]> = TableDefinition::new("desired-v1");
/// What the running daemon is (pid, front door address), JSON. Format version 1.
const RUNTIME: TableDefinition<&str, &[u8]> = TableDefinition::new("runtime-v1");
/// Events by sequence number, JSON. Format version 1.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events-v1");

const KEY_SCALE: &str = "scale";
const KEY_MAINTENANCE: &str = "maintenance";
const KEY_DAEMON: &str = "daemon";
const KEY_STATES: &str = "states";

/// Which state of the site is live (`site`: the site dir itself; else a restored copy under
/// `.lifeboat/states/`), and which one was live before the last rewind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatesRecord {
    pub live: String,
    pub previous: Option<String>,
}

impl Default for StatesRecord {
    fn default() -> Self {
        StatesRecord {
            live: crate::SITE_STATE.to_string(),
            previous: None,
        }
    }
}

/// The daemon that runs (or last ran) the site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonRecord {
    pub pid: u32,
    /// The front door's real address, e.g. `http://127.0.0.1:8080`.
    pub proxy: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
}

/// The maintenance switch as the owner left it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MaintenanceState {
    pub on: bool,
    /// The message shown (the manifest's unless `maintenance on --message` gave one).
    pub message: String,
    /// Secret that lets the owner through (header or cookie). Never put in events or logs.
    pub bypass_token: String,
    /// Client addresses that always get the real site.
    pub allow: Vec<IpAddr>,
}

/// The open store of one site.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the store. Fails with [`ControlError::AlreadyRunning`] when another
    /// lifeboat holds it.
    pub fn open(path: &Path, site_dir: &Path) -> Result<Store, ControlError> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => ControlError::AlreadyRunning {
                dir: site_dir.to_path_buf(),
            },
            other => store_error(path, other),
        })?;
        let store = Store {
            db,
            path: path.to_path_buf(),
        };
        // Create the tables so read transactions never meet a missing table.
        store.write(|tx| {
            tx.open_table(DESIRED)?;
            tx.open_table(RUNTIME)?;
            tx.open_table(EVENTS)?;
            Ok(())
        })?;
        Ok(store)
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, ControlError> {
        let tx = self
            .db
            .begin_write()
            .map_err(|e| store_error(&self.path, e))?;
        let out = f(&tx).map_err(|e| store_error(&self.path, e))?;
        tx.commit().map_err(|e| store_error(&self.path, e))?;
        Ok(out)
    }

    fn get_desired<T: for<'de> Deserialize<'de>>(
        &self,
        key: &str,
    ) -> Result<Option<T>, ControlError> {
        let read = || -> Result<Option<Vec<u8>>, redb::Error> {
            let tx = self.db.begin_read()?;
            let table = tx.open_table(DESIRED)?;
            Ok(table.get(key)?.map(|v| v.value().to_vec()))
        };
        match read().map_err(|e| store_error(&self.path, e))? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| store_error(&self.path, e)),
        }
    }

    fn put_desired<T: Serialize>(&self, key: &str, value: &T) -> Result<(), ControlError> {
        let bytes = serde_json::to_vec(value).expect("desired state serializes");
        self.write(|tx| {
            tx.open_table(DESIRED)?.insert(key, bytes.as_slice())?;
            Ok(())
        })
    }

    /// Scale set by `lifeboat scale`, per process (processes not listed follow the manifest).
    pub fn scale(&self) -> Result<BTreeMap<String, u32>, ControlError> {
        Ok(self.get_desired(KEY_SCALE)?.unwrap_or_default())
    }

    pub fn set_scale(&self, scale: &BTreeMap<String, u32>) -> Result<(), ControlError> {
        self.put_desired(KEY_SCALE, scale)
    }

    pub fn maintenance(&self) -> Result<MaintenanceState, ControlError> {
        Ok(self.get_desired(KEY_MAINTENANCE)?.unwrap_or_default())
    }

    pub fn set_maintenance(&self, state: &MaintenanceState) -> Result<(), ControlError> {
        self.put_desired(KEY_MAINTENANCE, state)
    }

    /// Which state is live (the site dir until the first rewind).
    pub fn states(&self) -> Result<StatesRecord, ControlError> {
        Ok(self.get_desired(KEY_STATES)?.unwrap_or_default())
    }

    pub fn set_states(&self, states: &StatesRecord) -> Result<(), ControlError> {
        self.put_desired(KEY_STATES, states)
    }

    /// The event with this seq.
    pub fn event(&self, seq: u64) -> Result<Option<Event>, ControlError> {
        if seq == 0 {
            return Ok(None);
        }
        Ok(self
            .events_after(seq - 1, 1)?
            .into_iter()
            .find(|e| e.seq == seq))
    }

    /// Records the daemon now running the site.
    pub fn set_daemon(&self, daemon: &DaemonRecord) -> Result<(), ControlError> {
        let bytes = serde_json::to_vec(daemon).expect("daemon record serializes");
        self.write(|tx| {
            tx.open_table(RUNTIME)?
                .insert(KEY_DAEMON, bytes.as_slice())?;
            Ok(())
        })
    }

    /// The daemon that runs (or last ran) the site.
    pub fn daemon(&self) -> Result<Option<DaemonRecord>, ControlError> {
        let read = || -> Result<Option<Vec<u8>>, redb::Error> {
            let tx = self.db.begin_read()?;
            let table = tx.open_table(RUNTIME)?;
            Ok(table.get(KEY_DAEMON)?.map(|v| v.value().to_vec()))
        };
        match read().map_err(|e| store_error(&self.path, e))? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| store_error(&self.path, e)),
        }
    }

    /// Appends events (in order) in one durable transaction and returns them as stored.
    pub fn append_events(
        &self,
        kinds: Vec<(OffsetDateTime, EventKind)>,
    ) -> Result<Vec<Event>, ControlError> {
        self.write(|tx| {
            let mut table = tx.open_table(EVENTS)?;
            let mut seq = table.last()?.map(|(k, _)| k.value()).unwrap_or(0);
            let mut stored = Vec::with_capacity(kinds.len());
            for (at, what) in kinds {
                seq += 1;
                let event = Event { seq, at, what };
                let bytes = serde_json::to_vec(&event).expect("events serialize");
                table.insert(seq, bytes.as_slice())?;
                stored.push(event);
            }
            Ok(stored)
        })
    }

    /// Events with `seq > after`, oldest first, at most `limit`.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, ControlError> {
        let read = || -> Result<Vec<Vec<u8>>, redb::Error> {
            let tx = self.db.begin_read()?;
            let table = tx.open_table(EVENTS)?;
            let mut out = Vec::new();
            for row in table.range(after.saturating_add(1)..)?.take(limit) {
                out.push(row?.1.value().to_vec());
            }
            Ok(out)
        };
        let rows = read().map_err(|e| store_error(&self.path, e))?;
        rows.iter()
            .map(|bytes| serde_json::from_slice(bytes).map_err(|e| store_error(&self.path, e)))
            .collect()
    }

    /// The last `n` events, oldest first.
    pub fn last_events(&self, n: usize) -> Result<Vec<Event>, ControlError> {
        let last = {
            let tx = self
                .db
                .begin_read()
                .map_err(|e| store_error(&self.path, e))?;
            let table = tx
                .open_table(EVENTS)
                .map_err(|e| store_error(&self.path, e))?;
            table
                .last()
                .map_err(|e| store_error(&self.path, e))?
                .map(|(k, _)| k.value())
                .unwrap_or(0)
        };
        self.events_after(last.saturating_sub(n as u64), n)
    }
}

/// The last `n` stored events of the site in `site_dir`, read straight from the store while no
/// daemon runs (a running daemon holds the store; ask it through the API instead).
pub fn stored_events(site_dir: &Path, n: usize) -> Result<Vec<Event>, ControlError> {
    let path = crate::SitePaths::new(site_dir).store();
    if !path.exists() {
        return Err(ControlError::NotRunning {
            dir: site_dir.to_path_buf(),
        });
    }
    Store::open(&path, site_dir)?.last_events(n)
}

/// Which state is live, read straight from the store while no daemon runs.
pub fn stored_states(site_dir: &Path) -> Result<StatesRecord, ControlError> {
    let path = crate::SitePaths::new(site_dir).store();
    if !path.exists() {
        return Ok(StatesRecord::default());
    }
    Store::open(&path, site_dir)?.states()
}

fn store_error(path: &Path, err: impl std::fmt::Display) -> ControlError {
    ControlError::Store {
        path: path.to_path_buf(),
        message: err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_state_and_events_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = Store::open(&path, dir.path()).unwrap();
            store
                .set_scale(&BTreeMap::from([("web".to_string(), 5)]))
                .unwrap();
            let m = MaintenanceState {
                on: true,
                message: "later".into(),
                bypass_token: "t".into(),
                allow: vec![],
            };
            store.set_maintenance(&m).unwrap();
            let at = OffsetDateTime::now_utc();
            store
                .append_events(vec![(at, EventKind::MaintenanceOff)])
                .unwrap();
            store
                .append_events(vec![(
                    at,
                    EventKind::MaintenanceOn {
                        message: "x".into(),
                    },
                )])
                .unwrap();
        }
        let store = Store::open(&path, dir.path()).unwrap();
        assert_eq!(store.scale().unwrap()["web"], 5);
        assert!(store.maintenance().unwrap().on);
        let events = store.events_after(0, 100).unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(store.events_after(1, 100).unwrap().len(), 1);
        assert_eq!(store.last_events(1).unwrap()[0].seq, 2);
        let daemon = DaemonRecord {
            pid: 7,
            proxy: "http://127.0.0.1:1".into(),
            started_at: time::macros::datetime!(2026-01-01 00:00 UTC),
        };
        store.set_daemon(&daemon).unwrap();
        drop(store);
        let store = Store::open(&path, dir.path()).unwrap();
        assert_eq!(store.daemon().unwrap(), Some(daemon));
    }

    #[test]
    fn a_second_daemon_can_not_open_the_same_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let _first = Store::open(&path, dir.path()).unwrap();
        let err = Store::open(&path, dir.path()).err().unwrap();
        assert!(matches!(err, ControlError::AlreadyRunning { .. }), "{err}");
    }
}
