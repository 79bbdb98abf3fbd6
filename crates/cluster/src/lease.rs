//! Keeping one etcd lease alive: grant it, renew it every `renew_interval`, know until when it
//! is surely alive (the fence deadline), and notice when it is gone.
//!
//! The fence deadline is computed from the *send* time of the last successful renewal (see
//! `lifeboat_core::cluster::fence_deadline`): etcd restarts the TTL when its leader receives
//! the renewal, which is later, so the lease can not expire in etcd before the deadline plus
//! the margin. A renewal that answers late never moves the deadline past what its send time
//! allows.
//!
//! This module never decides what the lease protects (the election and the registry do),
//! never gives up on a lease etcd has not said is gone (when etcd is unreachable, the same
//! lease is renewed again once it answers, which is what lets a failsafe leader carry on), and
//! never blocks a renewal longer than `renew_interval`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use lifeboat_core::cluster::fence_deadline;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::etcd::{EtcdClient, EtcdError, KeepAlive, LeaseGrant, LeaseId};
use crate::timing::ClusterTiming;

/// The calls a lease needs. Implemented by [`EtcdClient`]; a fake stands in for it in the
/// timing tests, which run on paused time.
pub(crate) trait LeaseApi: Send + Sync + 'static {
    fn grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseGrant, EtcdError>>;
    fn keepalive(
        &self,
        id: LeaseId,
        budget: Duration,
    ) -> BoxFuture<'_, Result<KeepAlive, EtcdError>>;
    fn revoke(&self, id: LeaseId) -> BoxFuture<'_, Result<(), EtcdError>>;
    /// Where the leases are kept, for error messages.
    fn describe(&self) -> String;
}

impl LeaseApi for EtcdClient {
    fn grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseGrant, EtcdError>> {
        Box::pin(self.lease_grant(ttl))
    }
    fn keepalive(
        &self,
        id: LeaseId,
        budget: Duration,
    ) -> BoxFuture<'_, Result<KeepAlive, EtcdError>> {
        Box::pin(self.lease_keepalive(id, budget))
    }
    fn revoke(&self, id: LeaseId) -> BoxFuture<'_, Result<(), EtcdError>> {
        Box::pin(self.lease_revoke(id))
    }
    fn describe(&self) -> String {
        self.endpoints().join(", ")
    }
}

/// Where a lease stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// No lease yet (being granted, or etcd has not answered the grant).
    None,
    /// Renewed recently enough: alive until at least the fence deadline.
    Alive,
    /// The fence deadline passed without a successful renewal, and etcd has not said the lease
    /// is gone (it may be unreachable). Renewals go on.
    Unconfirmed,
}

/// A snapshot of a lease, published on every change.
#[derive(Debug, Clone)]
pub struct LeaseStatus {
    pub id: Option<LeaseId>,
    pub state: LeaseState,
    /// The TTL etcd granted.
    pub ttl: Duration,
    /// When the last successful grant or renewal of this lease was *sent*.
    pub last_renewal_sent: Option<Instant>,
    /// The instant by which a holder of this lease must have stopped writing, unless a renewal
    /// succeeds before.
    pub fence_deadline: Option<Instant>,
    /// When etcd last answered anything about the lease.
    pub last_contact: Option<Instant>,
    /// Leases of this keeper that etcd said were gone, latest last (kept short).
    pub lost: Vec<LeaseId>,
    /// The last failure, cleared by the next success.
    pub last_error: Option<Arc<EtcdError>>,
}

impl LeaseStatus {
    fn new(ttl: Duration) -> LeaseStatus {
        LeaseStatus {
            id: None,
            state: LeaseState::None,
            ttl,
            last_renewal_sent: None,
            fence_deadline: None,
            last_contact: None,
            lost: Vec::new(),
            last_error: None,
        }
    }

    /// The lease is alive at `now` (its fence deadline is still ahead).
    pub fn alive_at(&self, now: Instant) -> bool {
        self.id.is_some() && self.fence_deadline.is_some_and(|d| now < d)
    }
}

fn state_at(st: &LeaseStatus, now: Instant) -> LeaseState {
    match (st.id, st.fence_deadline) {
        (None, _) => LeaseState::None,
        (Some(_), Some(d)) if now < d => LeaseState::Alive,
        (Some(_), _) => LeaseState::Unconfirmed,
    }
}

struct Shared {
    api: Arc<dyn LeaseApi>,
    timing: ClusterTiming,
    status: Mutex<LeaseStatus>,
    tx: watch::Sender<LeaseStatus>,
    /// Held while granting: the keeper and a campaign must not both grant (the second lease
    /// would replace the first under keys already attached to it).
    granting: tokio::sync::Mutex<()>,
}

impl Shared {
    /// The status, its state computed for this instant (a deadline may have passed since the
    /// last update).
    fn snapshot(&self) -> LeaseStatus {
        let mut st = self.status.lock().expect("lease status lock").clone();
        st.state = state_at(&st, Instant::now());
        st
    }

    /// Applies `f` to the status, recomputes the state for now, publishes.
    fn update(&self, f: impl FnOnce(&mut LeaseStatus)) {
        let mut st = self.status.lock().expect("lease status lock");
        f(&mut st);
        st.state = state_at(&st, Instant::now());
        self.tx.send_replace(st.clone());
    }

    /// Grants a lease unless there is one (granted meanwhile by someone else).
    async fn grant(&self) -> Result<LeaseId, Arc<EtcdError>> {
        let _granting = self.granting.lock().await;
        if let Some(id) = self.snapshot().id {
            return Ok(id);
        }
        let sent = Instant::now();
        let budget = self.timing.renew_interval.max(Duration::from_millis(100)) * 2;
        let result = match tokio::time::timeout(budget, self.api.grant(self.timing.ttl)).await {
            Ok(r) => r,
            Err(_) => Err(EtcdError::Unreachable {
                op: "grant a lease",
                attempts: Vec::new(),
            }),
        };
        match result {
            Ok(g) => {
                self.update(|st| {
                    st.id = Some(g.id);
                    st.ttl = g.ttl;
                    st.last_renewal_sent = Some(sent);
                    st.fence_deadline = Some(fence_deadline(sent, g.ttl, self.timing.fence_margin));
                    st.last_contact = Some(Instant::now());
                    st.last_error = None;
                });
                Ok(g.id)
            }
            Err(e) => {
                let e = Arc::new(e);
                self.update(|st| st.last_error = Some(e.clone()));
                Err(e)
            }
        }
    }

    /// One renewal of the current lease. `Ok(true)`: renewed; `Ok(false)`: etcd says the lease
    /// is gone (the status then has no lease, and the keeper grants a new one).
    async fn renew(&self) -> Result<bool, Arc<EtcdError>> {
        let Some(id) = self.snapshot().id else {
            return Ok(false);
        };
        let budget = self.timing.renew_interval;
        let sent = Instant::now();
        // The client bounds its attempts by the budget; the timeout here makes sure of it.
        let result = match tokio::time::timeout(budget, self.api.keepalive(id, budget)).await {
            Ok(r) => r,
            Err(_) => Err(EtcdError::Unreachable {
                op: "renew a lease",
                attempts: Vec::new(),
            }),
        };
        let margin = self.timing.fence_margin;
        match result {
            Ok(KeepAlive::Alive { ttl }) => {
                self.update(|st| {
                    if st.id != Some(id) {
                        return; // replaced meanwhile
                    }
                    // Renewals may overlap (the keeper's and a campaign's): only a later send
                    // time may move the deadline.
                    if st.last_renewal_sent.is_none_or(|s| s < sent) {
                        st.last_renewal_sent = Some(sent);
                        st.ttl = ttl;
                        st.fence_deadline = Some(fence_deadline(sent, ttl, margin));
                    }
                    st.last_contact = Some(Instant::now());
                    st.last_error = None;
                });
                Ok(true)
            }
            Ok(KeepAlive::Gone) => {
                self.forget(id);
                Ok(false)
            }
            Err(e) => {
                let e = Arc::new(e);
                self.update(|st| st.last_error = Some(e.clone()));
                Err(e)
            }
        }
    }

    /// Marks lease `id` gone (etcd said so, or it was revoked).
    fn forget(&self, id: LeaseId) {
        self.update(|st| {
            if st.id == Some(id) {
                st.id = None;
                st.last_renewal_sent = None;
                st.fence_deadline = None;
                st.last_contact = Some(Instant::now());
                st.lost.push(id);
                let excess = st.lost.len().saturating_sub(8);
                st.lost.drain(..excess);
            }
        });
    }
}

/// Keeps one lease alive in the background. Dropping it stops the renewals without revoking
/// (as a crash would: the lease then expires after its TTL); [`LeaseKeeper::revoke`] ends it at
/// once.
pub struct LeaseKeeper {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for LeaseKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseKeeper")
            .field("status", &self.shared.snapshot())
            .finish_non_exhaustive()
    }
}

impl LeaseKeeper {
    /// Starts keeping a lease of `timing.ttl` with `client`. Returns at once; the first grant
    /// happens in the background (see [`LeaseKeeper::ensure_alive`] to wait for one).
    pub fn start(client: EtcdClient, timing: ClusterTiming) -> LeaseKeeper {
        LeaseKeeper::start_with(Arc::new(client), timing)
    }

    pub(crate) fn start_with(api: Arc<dyn LeaseApi>, timing: ClusterTiming) -> LeaseKeeper {
        let (tx, _) = watch::channel(LeaseStatus::new(timing.ttl));
        let shared = Arc::new(Shared {
            api,
            timing,
            status: Mutex::new(LeaseStatus::new(timing.ttl)),
            tx,
            granting: tokio::sync::Mutex::new(()),
        });
        let task = tokio::spawn(run(shared.clone()));
        LeaseKeeper { shared, task }
    }

    /// The lease as it stands now.
    pub fn status(&self) -> LeaseStatus {
        self.shared.snapshot()
    }

    /// Every change of the lease's status (renewals, deadline passed, lost, regranted).
    pub fn subscribe(&self) -> watch::Receiver<LeaseStatus> {
        self.shared.tx.subscribe()
    }

    /// Makes sure there is a lease renewed just now, granting one if there is none, and
    /// returns its id and fence deadline. Used before a campaign, so a new leader starts with
    /// a whole TTL.
    pub async fn ensure_alive(&self) -> Result<(LeaseId, Instant), Arc<EtcdError>> {
        for _ in 0..2 {
            let renewed = if self.status().id.is_none() {
                self.shared.grant().await.map(|_| true)?
            } else {
                self.shared.renew().await?
            };
            let st = self.status();
            if renewed
                && let (Some(id), Some(d)) = (st.id, st.fence_deadline)
                && st.alive_at(Instant::now())
            {
                return Ok((id, d));
            }
            // Gone: the next round grants a new lease.
        }
        // Granted, then gone before the renewal that follows: etcd is revoking or expiring
        // leases as fast as they come (a clock or configuration problem on its side).
        Err(Arc::new(EtcdError::Refused {
            endpoint: self.shared.api.describe(),
            op: "keep a lease",
            code: 0,
            message: "a lease granted just now was already gone at its first renewal".into(),
        }))
    }

    /// Revokes the current lease (deleting every key attached to it) and lets the keeper grant
    /// a new one. For a switchover (resign) and for leaving the cluster.
    pub async fn revoke(&self) -> Result<(), Arc<EtcdError>> {
        let Some(id) = self.status().id else {
            return Ok(());
        };
        // Forgotten first: from now on nothing treats this lease as alive.
        self.shared.forget(id);
        self.shared.api.revoke(id).await.map_err(Arc::new)
    }

    /// The timing this keeper runs with.
    pub fn timing(&self) -> ClusterTiming {
        self.shared.timing
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The keeper's loop: grant when there is no lease; renew every `renew_interval`; wake at the
/// fence deadline to publish that it passed.
async fn run(shared: Arc<Shared>) {
    let interval = shared.timing.renew_interval;
    let mut next_renewal = Instant::now();
    loop {
        let st = shared.snapshot();
        if st.id.is_none() {
            if shared.grant().await.is_err() {
                tokio::time::sleep(interval).await;
            }
            next_renewal = Instant::now() + interval;
            continue;
        }
        let deadline = st.fence_deadline.filter(|_| st.state == LeaseState::Alive);
        tokio::select! {
            _ = tokio::time::sleep_until(next_renewal) => {
                next_renewal = Instant::now() + interval;
                let _ = shared.renew().await;
            }
            _ = sleep_until_opt(deadline) => {
                // The deadline passed without a renewal: republish so watchers see it now.
                shared.update(|_| {});
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
