//! Following the leader key: read it, watch it from the next revision, and read it again every
//! `poll_interval` in case the watch went silent. A standby learns that the key is gone as soon
//! as etcd deletes it (the watch), and at worst within the poll interval.
//!
//! This module never writes to etcd and never decides anything: it reports what the key holds.

use std::sync::Arc;
use std::time::Duration;

use lifeboat_core::cluster::Term;
use tokio::time::Instant;

use super::{Leader, Shared};
use crate::etcd::{EtcdError, KeyValue, WatchEvent};
use crate::keys::{LeaderValue, decode};

/// How long to wait before reading again after etcd failed to answer.
const RETRY: Duration = Duration::from_millis(100);

/// The leader in a key's value, or `None` for a deleted key.
pub(super) fn leader_from(kv: &KeyValue) -> Leader {
    Leader {
        term: Term(kv.create_revision as u64),
        lease: kv.lease,
        info: decode::<LeaderValue>(&kv.key, &kv.value).map(|v| v.info),
    }
}

/// Runs until the election is dropped.
pub(super) async fn run(shared: Arc<Shared>) {
    let key = shared.keys.leader();
    let poll = shared.timing.poll_interval;
    loop {
        let range = match shared.client.get(&key).await {
            Ok(r) => r,
            Err(e) => {
                shared.observe_error(e);
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        shared.observe(range.kvs.first().map(leader_from), range.revision);
        let mut watch = match shared.client.watch(&key, false, range.revision + 1).await {
            Ok(w) => w,
            Err(e) => {
                shared.observe_error(e);
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let mut next_poll = Instant::now() + poll;
        loop {
            tokio::select! {
                batch = watch.next() => match batch {
                    Ok(batch) => {
                        for ev in &batch.events {
                            match ev {
                                WatchEvent::Put(kv) => {
                                    shared.observe(Some(leader_from(kv)), kv.mod_revision)
                                }
                                WatchEvent::Delete(kv) => shared.observe(None, kv.mod_revision),
                            }
                        }
                        shared.observed_alive();
                    }
                    Err(e) => {
                        shared.observe_error(e);
                        break;
                    }
                },
                _ = tokio::time::sleep_until(next_poll) => {
                    next_poll = Instant::now() + poll;
                    match shared.client.get(&key).await {
                        Ok(r) => shared.observe(r.kvs.first().map(leader_from), r.revision),
                        Err(e) => {
                            // etcd does not answer a read: the watch is likely dead too. Start
                            // again (another endpoint may answer).
                            shared.observe_error(e);
                            break;
                        }
                    }
                }
            }
        }
    }
}

impl Shared {
    fn observe_error(&self, e: EtcdError) {
        tracing::debug!(error = %e, "reading the leader key failed");
        self.update(|st| st.last_error = Some(Arc::new(e)));
    }
}
