//! Repository locks: small `locks/<id>` objects with a host, a pid and a refresh time.
//! Backups take shared locks, forget and prune take an exclusive one. A lock whose process is
//! gone (same host) or that has not been refreshed within the stale threshold is dead: it is
//! removed by whoever finds it, so a killed process never blocks anyone for long.
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::crypto::random_bytes;
use crate::destinations::Destinations;
use crate::error::{Error, Result};
use crate::repo::Repository;

/// Shared (backups) or exclusive (forget, prune).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Shared,
    Exclusive,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct LockInfo {
    kind: LockKind,
    host: String,
    pid: u32,
    /// Unix seconds.
    started: i64,
    refreshed: i64,
}

/// Seconds after which an unrefreshed lock counts as dead (`LIFEBOAT_LOCK_STALE_SECS`, default
/// 300). Live locks are refreshed every third of that.
pub fn stale_after() -> Duration {
    Duration::from_secs(
        std::env::var("LIFEBOAT_LOCK_STALE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300),
    )
}

/// This machine's name, for lock ownership.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn is_dead(l: &LockInfo, me: &str) -> bool {
    if now() - l.refreshed > stale_after().as_secs() as i64 {
        return true;
    }
    if l.host == me {
        let pid = nix::unistd::Pid::from_raw(l.pid as i32);
        return matches!(
            nix::sys::signal::kill(pid, None),
            Err(nix::errno::Errno::ESRCH)
        );
    }
    false
}

/// A held lock; refreshed in the background, removed on [`RepoLock::release`] (or left to
/// expire if the process dies).
pub struct RepoLock {
    key: String,
    dests: Arc<Destinations>,
    refresher: tokio::task::JoinHandle<()>,
    /// When this lock was taken (Unix seconds).
    pub started: i64,
}

impl RepoLock {
    /// Removes the lock.
    pub async fn release(self) {
        self.refresher.abort();
        self.dests.delete_reachable(&self.key).await;
    }
}

impl Repository {
    /// Takes a lock, waiting up to `wait` for conflicting live locks to go away.
    pub async fn lock(&self, kind: LockKind, wait: Duration) -> Result<RepoLock> {
        let me = hostname();
        let started = now();
        let key = format!("locks/{}", hex::encode(random_bytes::<16>()));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let info = LockInfo {
                kind,
                host: me.clone(),
                pid: std::process::id(),
                started,
                refreshed: now(),
            };
            self.dests
                .put_reachable(
                    &key,
                    Bytes::from(serde_json::to_vec(&info).expect("serializes")),
                )
                .await?;
            let mut holder = None;
            for o in self.dests.list("locks").await? {
                if o.key == key {
                    continue;
                }
                let Ok(bytes) = self.dests.get(&o.key, |_| true).await else {
                    continue;
                };
                let Ok(other) = serde_json::from_slice::<LockInfo>(&bytes) else {
                    continue;
                };
                if is_dead(&other, &me) {
                    self.dests.delete_reachable(&o.key).await;
                    continue;
                }
                if kind == LockKind::Exclusive || other.kind == LockKind::Exclusive {
                    holder = Some(format!(
                        "{:?} lock of pid {} on {}",
                        other.kind, other.pid, other.host
                    ));
                }
            }
            let Some(holder) = holder else {
                let dests = self.dests.clone();
                let key2 = key.clone();
                let refresher = tokio::spawn(async move {
                    let every = (stale_after() / 3).max(Duration::from_secs(1));
                    loop {
                        tokio::time::sleep(every).await;
                        let info = LockInfo {
                            refreshed: now(),
                            ..info.clone()
                        };
                        let _ = dests
                            .put_reachable(
                                &key2,
                                Bytes::from(serde_json::to_vec(&info).expect("serializes")),
                            )
                            .await;
                    }
                });
                return Ok(RepoLock {
                    key,
                    dests: self.dests.clone(),
                    refresher,
                    started,
                });
            };
            self.dests.delete_reachable(&key).await;
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Locked {
                    holder,
                    stale_after_secs: stale_after().as_secs(),
                });
            }
            let jitter = u64::from(random_bytes::<1>()[0]) * 2;
            tokio::time::sleep(Duration::from_millis(300 + jitter)).await;
        }
    }
}
