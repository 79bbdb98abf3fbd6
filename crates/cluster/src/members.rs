//! The member registry: each node keeps `<prefix>/members/<node>` under a lease of its own,
//! holding its [`MemberValue`] (zone, role, addresses, applied position, health). A node that
//! stops renewing disappears from the list after its TTL, so the list is the live members.
//!
//! Writes are coalesced: the applied position moves with every commit, and etcd needs only
//! the latest value, at most every `publish_interval` (or at once with
//! [`MemberRegistry::publish_now`], e.g. when the leader is gone and the failover decision is
//! about to read everyone's position).
//!
//! This module never writes another node's key, and never drops a value it can not read:
//! the list says which keys it could not read and why.

use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::etcd::{EtcdClient, EtcdError, LeaseId};
use crate::keys::{ClusterKeys, MemberValue, NameError, ValueError, decode, encode};
use crate::lease::{LeaseKeeper, LeaseStatus};
use crate::timing::{ClusterTiming, TimingError};

/// The members etcd lists, and the keys under the members prefix it could not read.
#[derive(Debug, Clone, Default)]
pub struct Members {
    /// Readable members, in node-name order.
    pub members: Vec<MemberValue>,
    pub unreadable: Vec<ValueError>,
    /// The etcd revision of the read.
    pub revision: i64,
}

/// An error of the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Timing(#[from] TimingError),
    #[error("{node} could not {action}: {source}")]
    Etcd {
        node: String,
        action: &'static str,
        #[source]
        source: Arc<EtcdError>,
    },
}

/// Lists every member under `keys`.
pub async fn list_members(client: &EtcdClient, keys: &ClusterKeys) -> Result<Members, EtcdError> {
    let range = client.get_prefix(&keys.members_prefix()).await?;
    let mut out = Members {
        revision: range.revision,
        ..Members::default()
    };
    for kv in range.kvs {
        match decode::<MemberValue>(&kv.key, &kv.value) {
            // The key names the member; a value claiming another name is not believed.
            Ok(v) if keys.member_name(&kv.key) == Some(v.info.node.as_str()) => out.members.push(v),
            Ok(v) => out.unreadable.push(ValueError::Unreadable {
                key: String::from_utf8_lossy(&kv.key).into_owned(),
                detail: format!("it names node {:?}, not the key's", v.info.node),
            }),
            Err(e) => out.unreadable.push(e),
        }
    }
    Ok(out)
}

/// What the registry last did.
#[derive(Debug, Clone)]
pub struct RegistryStatus {
    /// The value as this node last wrote it successfully.
    pub published: Option<MemberValue>,
    pub published_at: Option<Instant>,
    /// The lease the member key lives under.
    pub lease: LeaseStatus,
    pub last_error: Option<Arc<EtcdError>>,
}

struct Shared {
    client: EtcdClient,
    keys: ClusterKeys,
    timing: ClusterTiming,
    lease: LeaseKeeper,
    /// The value to publish (the latest), and whether it changed since it was written.
    value: Mutex<(MemberValue, bool)>,
    dirty: Notify,
    status: watch::Sender<RegistryStatus>,
}

impl Shared {
    /// Writes the current value under the current lease.
    async fn write(&self) -> Result<(), Arc<EtcdError>> {
        let Some(lease) = self.lease.status().id else {
            return Err(Arc::new(EtcdError::Unreachable {
                op: "write the member key (no lease yet)",
                attempts: Vec::new(),
            }));
        };
        let value = {
            let mut v = self.value.lock().expect("member value lock");
            v.1 = false;
            v.0.clone()
        };
        let key = self.keys.member(&value.info.node);
        match self.client.put(&key, &encode(&value), Some(lease)).await {
            Ok(_) => {
                self.status.send_modify(|s| {
                    s.published = Some(value);
                    s.published_at = Some(Instant::now());
                    s.lease = self.lease.status();
                    s.last_error = None;
                });
                Ok(())
            }
            Err(e) => {
                // Written again on the next round.
                self.value.lock().expect("member value lock").1 = true;
                let e = Arc::new(e);
                self.status.send_modify(|s| {
                    s.lease = self.lease.status();
                    s.last_error = Some(e.clone());
                });
                Err(e)
            }
        }
    }
}

/// This node's member key, kept alive and up to date. Dropping it stops the renewals (the key
/// goes after the TTL); [`MemberRegistry::leave`] deletes it at once.
pub struct MemberRegistry {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for MemberRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberRegistry")
            .field("keys", &self.shared.keys)
            .finish_non_exhaustive()
    }
}

impl MemberRegistry {
    /// Registers this node with `value`: grants its lease and writes its key, returning once
    /// the key is written (so the node is listed when this returns).
    pub async fn join(
        client: EtcdClient,
        keys: ClusterKeys,
        value: MemberValue,
        timing: ClusterTiming,
    ) -> Result<MemberRegistry, RegistryError> {
        value.info.check()?;
        timing.check()?;
        let node = value.info.node.clone();
        let lease = LeaseKeeper::start(client.clone(), timing);
        lease
            .ensure_alive()
            .await
            .map_err(|source| RegistryError::Etcd {
                node: node.clone(),
                action: "get a lease for its member key",
                source,
            })?;
        let (status, _) = watch::channel(RegistryStatus {
            published: None,
            published_at: None,
            lease: lease.status(),
            last_error: None,
        });
        let shared = Arc::new(Shared {
            client,
            keys,
            timing,
            lease,
            value: Mutex::new((value, true)),
            dirty: Notify::new(),
            status,
        });
        shared.write().await.map_err(|source| RegistryError::Etcd {
            node,
            action: "write its member key",
            source,
        })?;
        let task = tokio::spawn(run(shared.clone()));
        Ok(MemberRegistry { shared, task })
    }

    /// Changes this node's value; it is written within `publish_interval`.
    pub fn update(&self, f: impl FnOnce(&mut MemberValue)) {
        {
            let mut v = self.shared.value.lock().expect("member value lock");
            f(&mut v.0);
            v.1 = true;
        }
        self.shared.dirty.notify_one();
    }

    /// The value as it will be written next.
    pub fn value(&self) -> MemberValue {
        self.shared
            .value
            .lock()
            .expect("member value lock")
            .0
            .clone()
    }

    /// Writes the current value now.
    pub async fn publish_now(&self) -> Result<(), RegistryError> {
        self.shared
            .write()
            .await
            .map_err(|source| RegistryError::Etcd {
                node: self.value().info.node,
                action: "write its member key",
                source,
            })
    }

    /// Every member (this one included, as etcd has it).
    pub async fn list(&self) -> Result<Members, EtcdError> {
        list_members(&self.shared.client, &self.shared.keys).await
    }

    pub fn status(&self) -> RegistryStatus {
        let mut s = self.shared.status.borrow().clone();
        s.lease = self.shared.lease.status();
        s
    }

    /// The lease the member key lives under.
    pub fn lease_id(&self) -> Option<LeaseId> {
        self.shared.lease.status().id
    }

    /// Leaves the cluster: revokes the lease, which deletes the member key.
    pub async fn leave(self) -> Result<(), RegistryError> {
        self.task.abort();
        let node = self.value().info.node;
        self.shared
            .lease
            .revoke()
            .await
            .map_err(|source| RegistryError::Etcd {
                node,
                action: "leave (revoke its member lease)",
                source,
            })
    }
}

impl Drop for MemberRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes the value when it changed (at most every `publish_interval`), and again whenever
/// the lease was replaced (the old key went with the old lease).
async fn run(shared: Arc<Shared>) {
    let mut lease_rx = shared.lease.subscribe();
    let mut written_under = shared.lease.status().id;
    loop {
        tokio::select! {
            _ = shared.dirty.notified() => {}
            changed = lease_rx.changed() => if changed.is_err() { return },
        }
        let lease = shared.lease.status().id;
        let dirty = shared.value.lock().expect("member value lock").1;
        if lease.is_some() && (dirty || lease != written_under) && shared.write().await.is_ok() {
            written_under = lease;
        }
        tokio::time::sleep(shared.timing.publish_interval).await;
        // A change made while sleeping is written on the next round: make sure there is one.
        if shared.value.lock().expect("member value lock").1 {
            shared.dirty.notify_one();
        }
    }
}
