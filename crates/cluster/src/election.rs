//! Leader election with an etcd lease. A node campaigns with one transaction: "create the
//! leader key if it does not exist (create_revision == 0), with my value, under my lease". The
//! revision that created the key is the node's **term**, the fencing token every write of the
//! leader carries (`docs/cluster-format.md`).
//!
//! The leader may write only until its **fence deadline**: the send time of its lease's last
//! successful renewal, plus the TTL, minus the margin (`lease`). Past it, or once etcd says the
//! lease or the key is gone, the status says so and the daemon fences (stops writes, takes
//! its instances out of the front door). A standby follows the key (`observe`) and learns
//! within a fraction of a second that it is gone.
//!
//! This module never decides *whether* to campaign (that is
//! `lifeboat_core::cluster::decide_campaign`, see `failover`), never fences anything itself
//! (it reports; the daemon acts), and never deletes the leader key unless its create revision
//! is this node's own term.

mod observe;

use std::sync::{Arc, Mutex};

use lifeboat_core::cluster::Term;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::etcd::{Compare, EtcdClient, EtcdError, LeaseId, Op, OpResult, Txn};
use crate::keys::{ClusterKeys, FORMAT_VERSION, LeaderValue, NameError, NodeInfo, ValueError};
use crate::lease::{LeaseKeeper, LeaseStatus};
use crate::timing::{ClusterTiming, TimingError};

/// The leader as etcd shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The leader key's create revision.
    pub term: Term,
    /// The lease the key lives under.
    pub lease: Option<LeaseId>,
    /// Who it is; an error if the value can not be read (the key is held all the same, so
    /// nobody may campaign).
    pub info: Result<NodeInfo, ValueError>,
}

impl Leader {
    /// The leader's node name, or `?` when its value can not be read.
    pub fn node(&self) -> &str {
        self.info.as_ref().map_or("?", |i| i.node.as_str())
    }

    /// The leader's zone, if its value can be read.
    pub fn zone(&self) -> Option<&str> {
        self.info.as_ref().ok().map(|i| i.zone.as_str())
    }
}

/// This node's part in the election, at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Does not hold the leader key.
    Standby,
    /// Holds the leader key with `term` and may write until `fence_deadline`.
    Leader { term: Term, fence_deadline: Instant },
    /// Held the leader key with `term`, but the fence deadline passed at `since` without a
    /// successful renewal, and etcd has not said (it may be unreachable) whether the lease is
    /// gone. The node must have stopped writing, unless failsafe
    /// (`lifeboat_core::cluster::decide_failsafe`) says to carry on. If a renewal succeeds
    /// and the key still holds `term`, the role is `Leader` again.
    Unconfirmed { term: Term, since: Instant },
}

/// Why this node stopped being the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LossReason {
    /// etcd said the lease is gone (it expired: renewals did not reach etcd in time).
    LeaseGone,
    /// The leader key was deleted (by etcd with the lease, or by an operator).
    KeyDeleted,
    /// Another node holds the leader key now.
    KeyTaken { by: String, term: Term },
    /// This node resigned.
    Resigned,
}

/// This node lost leadership of `term`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostLeadership {
    pub term: Term,
    pub reason: LossReason,
    pub at: Instant,
}

/// Everything the election knows, published on every change.
#[derive(Debug, Clone)]
pub struct ElectionStatus {
    /// This node's name.
    pub me: String,
    pub role: Role,
    /// The leader key as last seen (`None`: there is no leader).
    pub leader: Option<Leader>,
    /// The leader before the current one (or before the key went away): its zone is the
    /// failed zone for the failover decision.
    pub previous_leader: Option<Leader>,
    /// This node's election lease.
    pub lease: LeaseStatus,
    /// The etcd revision of the last observation of the leader key.
    pub observed_revision: i64,
    /// When etcd last answered a read or watch of the leader key.
    pub last_observed: Option<Instant>,
    /// The last time this node lost leadership, and why.
    pub last_lost: Option<LostLeadership>,
    /// The last error reading the leader key (cleared by the next answer).
    pub last_error: Option<Arc<EtcdError>>,
}

impl ElectionStatus {
    /// This node may write at `now`: it leads and its fence deadline is ahead.
    pub fn may_write(&self, now: Instant) -> bool {
        matches!(self.role, Role::Leader { fence_deadline, .. } if now < fence_deadline)
    }

    /// The term this node holds (leading or unconfirmed).
    pub fn my_term(&self) -> Option<Term> {
        match self.role {
            Role::Standby => None,
            Role::Leader { term, .. } | Role::Unconfirmed { term, .. } => Some(term),
        }
    }

    /// etcd answered this node (a renewal or a read of the leader key) within the lease TTL.
    pub fn etcd_reachable(&self, now: Instant) -> bool {
        let recent = |t: Option<Instant>| t.is_some_and(|t| now.duration_since(t) < self.lease.ttl);
        recent(self.lease.last_contact) || recent(self.last_observed)
    }

    /// The zone of the leader that just went away, when there is no leader now.
    pub fn failed_leader_zone(&self) -> Option<&str> {
        if self.leader.is_some() {
            return None;
        }
        self.previous_leader.as_ref().and_then(Leader::zone)
    }
}

/// The result of a campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CampaignOutcome {
    /// This node created the leader key: it leads with this term.
    Won { term: Term },
    /// This node already led with this term.
    AlreadyLeader { term: Term },
    /// Another node holds the key.
    Lost { leader: Leader },
}

/// An error of the election.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
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
    #[error(
        "{node} is not the leader (or its fence deadline has passed), so it must not write as \
         leader; wait for the election to make it leader"
    )]
    NotLeader { node: String },
    #[error(
        "a write as leader of {term} was refused by etcd: {}; this node is no longer the \
         leader and must not write",
        match .current { Some(t) => format!("the leader key now has {t}"), None => "there is no leader key".into() }
    )]
    Fenced { term: Term, current: Option<Term> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    term: Term,
    lease: LeaseId,
}

#[derive(Debug, Default)]
struct State {
    held: Option<Held>,
    /// The lease of a campaign whose answer was lost (the transaction may have succeeded): if
    /// the key turns up with this lease and this node's name, this node leads.
    pending: Option<LeaseId>,
    leader: Option<Leader>,
    previous_leader: Option<Leader>,
    observed_revision: i64,
    last_observed: Option<Instant>,
    last_lost: Option<LostLeadership>,
    last_error: Option<Arc<EtcdError>>,
}

struct Shared {
    client: EtcdClient,
    keys: ClusterKeys,
    me: NodeInfo,
    timing: ClusterTiming,
    lease: LeaseKeeper,
    state: Mutex<State>,
    tx: watch::Sender<ElectionStatus>,
}

impl Shared {
    /// Applies `f`, settles what follows from it (leadership lost or adopted), publishes.
    fn update(&self, f: impl FnOnce(&mut State)) -> ElectionStatus {
        self.settled(f, true)
    }

    /// The status for this instant; published only if settling changed who leads (so that
    /// a subscriber reading the status on each change does not wake itself).
    fn current(&self) -> ElectionStatus {
        self.settled(|_| {}, false)
    }

    fn settled(&self, f: impl FnOnce(&mut State), publish: bool) -> ElectionStatus {
        let lease = self.lease.status();
        let mut st = self.state.lock().expect("election state lock");
        f(&mut st);
        let held = st.held;
        self.settle(&mut st, &lease);
        let status = self.status_of(&st, lease);
        if publish || held != st.held {
            self.tx.send_replace(status.clone());
        }
        status
    }

    fn settle(&self, st: &mut State, lease: &LeaseStatus) {
        let now = Instant::now();
        if let Some(h) = st.held {
            let reason = if lease.id != Some(h.lease) {
                Some(LossReason::LeaseGone)
            } else if st.observed_revision >= h.term.0 as i64 {
                match &st.leader {
                    Some(l) if l.term == h.term => None,
                    Some(l) => Some(LossReason::KeyTaken {
                        by: l.node().to_string(),
                        term: l.term,
                    }),
                    None => Some(LossReason::KeyDeleted),
                }
            } else {
                None
            };
            if let Some(reason) = reason {
                st.held = None;
                st.last_lost = Some(LostLeadership {
                    term: h.term,
                    reason,
                    at: now,
                });
            }
        }
        if st.held.is_none()
            && let Some(p) = st.pending
            && lease.id == Some(p)
            && let Some(l) = &st.leader
            && l.lease == Some(p)
            && l.info.as_ref().is_ok_and(|i| i.node == self.me.node)
        {
            st.held = Some(Held {
                term: l.term,
                lease: p,
            });
            st.pending = None;
        }
    }

    fn status_of(&self, st: &State, lease: LeaseStatus) -> ElectionStatus {
        let now = Instant::now();
        let role = match st.held {
            None => Role::Standby,
            Some(h) => match lease.fence_deadline {
                Some(d) if lease.id == Some(h.lease) && now < d => Role::Leader {
                    term: h.term,
                    fence_deadline: d,
                },
                Some(d) => Role::Unconfirmed {
                    term: h.term,
                    since: d,
                },
                None => Role::Unconfirmed {
                    term: h.term,
                    since: now,
                },
            },
        };
        ElectionStatus {
            me: self.me.node.clone(),
            role,
            leader: st.leader.clone(),
            previous_leader: st.previous_leader.clone(),
            lease,
            observed_revision: st.observed_revision,
            last_observed: st.last_observed,
            last_lost: st.last_lost.clone(),
            last_error: st.last_error.clone(),
        }
    }

    /// Records what the leader key held at `revision` (older news than what is known is
    /// dropped).
    fn observe(&self, leader: Option<Leader>, revision: i64) {
        self.update(|st| {
            st.last_observed = Some(Instant::now());
            st.last_error = None;
            if revision < st.observed_revision {
                return;
            }
            let term = |l: &Option<Leader>| l.as_ref().map(|l| l.term);
            if term(&st.leader) != term(&leader)
                && let Some(old) = st.leader.take()
            {
                st.previous_leader = Some(old);
            }
            st.leader = leader;
            st.observed_revision = revision;
        });
    }

    /// etcd answered (a watch batch): the view is current.
    fn observed_alive(&self) {
        self.update(|st| st.last_observed = Some(Instant::now()));
    }

    fn etcd_error(&self, action: &'static str, source: Arc<EtcdError>) -> ElectionError {
        ElectionError::Etcd {
            node: self.me.node.clone(),
            action,
            source,
        }
    }
}

/// This node's election: its lease, its view of the leader key, and its role.
///
/// Dropping it stops renewing the lease without deleting anything (as a crash would: the key
/// goes when the lease expires); [`Election::resign`] hands leadership over at once.
pub struct Election {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election")
            .field("me", &self.shared.me.node)
            .finish_non_exhaustive()
    }
}

impl Election {
    /// Joins the election as a standby: starts keeping a lease and following the leader key.
    /// Returns at once (nothing is awaited); must run inside a tokio runtime.
    pub fn start(
        client: EtcdClient,
        keys: ClusterKeys,
        me: NodeInfo,
        timing: ClusterTiming,
    ) -> Result<Election, ElectionError> {
        me.check()?;
        timing.check()?;
        let lease = LeaseKeeper::start(client.clone(), timing);
        let mut lease_rx = lease.subscribe();
        let shared = Arc::new(Shared {
            client,
            keys,
            timing,
            state: Mutex::new(State::default()),
            tx: watch::channel(ElectionStatus {
                me: me.node.clone(),
                role: Role::Standby,
                leader: None,
                previous_leader: None,
                lease: lease.status(),
                observed_revision: 0,
                last_observed: None,
                last_lost: None,
                last_error: None,
            })
            .0,
            me,
            lease,
        });
        let observer = tokio::spawn(observe::run(shared.clone()));
        let s = shared.clone();
        // Republishes on every lease change, and when a leader's fence deadline comes (the
        // role turns Unconfirmed then, even if nothing else happens).
        let roles = tokio::spawn(async move {
            loop {
                let deadline = match s.update(|_| {}).role {
                    Role::Leader { fence_deadline, .. } => Some(fence_deadline),
                    _ => None,
                };
                tokio::select! {
                    changed = lease_rx.changed() => if changed.is_err() { return },
                    _ = sleep_until_opt(deadline) => {}
                }
            }
        });
        Ok(Election {
            shared,
            tasks: vec![observer, roles],
        })
    }

    /// The election's status now (the role computed for this instant).
    pub fn status(&self) -> ElectionStatus {
        self.shared.current()
    }

    /// Every change of the status (also each renewal and each read of the leader key): the
    /// daemon waits on this to fence or take over. A leader's fence deadline passing is
    /// published when it comes.
    pub fn subscribe(&self) -> watch::Receiver<ElectionStatus> {
        self.shared.tx.subscribe()
    }

    /// This node may write now (leader, fence deadline ahead).
    pub fn may_write(&self) -> bool {
        self.status().may_write(Instant::now())
    }

    pub fn me(&self) -> &NodeInfo {
        &self.shared.me
    }

    pub fn keys(&self) -> &ClusterKeys {
        &self.shared.keys
    }

    pub fn client(&self) -> &EtcdClient {
        &self.shared.client
    }

    pub fn timing(&self) -> ClusterTiming {
        self.shared.timing
    }

    /// Tries once to become the leader: renews the lease (so a new leader starts with a
    /// whole TTL), then creates the leader key if it does not exist.
    pub async fn campaign(&self) -> Result<CampaignOutcome, ElectionError> {
        let s = &self.shared;
        if let Some(term) = self.status().my_term() {
            return Ok(CampaignOutcome::AlreadyLeader { term });
        }
        let (lease, _) = s
            .lease
            .ensure_alive()
            .await
            .map_err(|e| s.etcd_error("get a live lease to campaign with", e))?;
        let key = s.keys.leader();
        let value = crate::keys::encode(&LeaderValue {
            version: FORMAT_VERSION,
            info: s.me.clone(),
        });
        let txn = Txn::new()
            .when(Compare::create_revision(key.clone(), 0))
            .and_then(Op::put(key.clone(), value, Some(lease)))
            .or_else(Op::get(key.clone()));
        s.update(|st| st.pending = Some(lease));
        let outcome = match s.client.txn(txn).await {
            Ok(o) => o,
            // The transaction may or may not have run: the observer will show the key, and
            // `pending` makes this node the leader if it carries this lease.
            Err(e) => return Err(s.etcd_error("campaign", Arc::new(e))),
        };
        if outcome.succeeded {
            let term = Term(outcome.revision as u64);
            let me = Leader {
                term,
                lease: Some(lease),
                info: Ok(s.me.clone()),
            };
            s.update(|st| {
                st.pending = None;
                st.held = Some(Held { term, lease });
                if outcome.revision >= st.observed_revision {
                    if st.leader.as_ref().map(|l| l.term) != Some(term)
                        && let Some(old) = st.leader.take()
                    {
                        st.previous_leader = Some(old);
                    }
                    st.leader = Some(me);
                    st.observed_revision = outcome.revision;
                }
            });
            return Ok(CampaignOutcome::Won { term });
        }
        s.update(|st| st.pending = None);
        let kv = outcome.results.iter().find_map(|r| match r {
            OpResult::Get(kvs) => kvs.first(),
            _ => None,
        });
        match kv {
            Some(kv) => {
                let leader = observe::leader_from(kv);
                s.observe(Some(leader.clone()), outcome.revision);
                Ok(CampaignOutcome::Lost { leader })
            }
            // Deleted between the comparison and the read: impossible in one transaction.
            None => Err(s.etcd_error(
                "campaign",
                Arc::new(EtcdError::BadResponse {
                    endpoint: String::new(),
                    op: "run a transaction",
                    detail: "the failed campaign did not return the leader key".into(),
                }),
            )),
        }
    }

    /// Hands leadership over (a switchover): stops counting as leader at once, deletes the
    /// leader key if it still holds this node's term, and revokes the lease (a fresh one is
    /// granted for later campaigns). The daemon must have stopped writing before.
    pub async fn resign(&self) -> Result<(), ElectionError> {
        let s = &self.shared;
        let mut term = None;
        s.update(|st| {
            st.pending = None;
            if let Some(h) = st.held.take() {
                term = Some(h.term);
                st.last_lost = Some(LostLeadership {
                    term: h.term,
                    reason: LossReason::Resigned,
                    at: Instant::now(),
                });
            }
        });
        let Some(term) = term else {
            return Ok(());
        };
        delete_leader_if_term(&s.client, &s.keys, term)
            .await
            .map_err(|e| s.etcd_error("resign", Arc::new(e)))?;
        s.lease
            .revoke()
            .await
            .map_err(|e| s.etcd_error("revoke its lease after resigning", e))?;
        s.update(|_| {});
        Ok(())
    }

    /// Writes `value` at `key` only if this node leads: checked here (fence deadline ahead)
    /// and by etcd (the leader key still has this node's term). Returns the write's revision.
    pub async fn put_as_leader(&self, key: &[u8], value: &[u8]) -> Result<i64, ElectionError> {
        let status = self.status();
        let Role::Leader { term, .. } = status.role else {
            return Err(ElectionError::NotLeader {
                node: self.shared.me.node.clone(),
            });
        };
        if !status.may_write(Instant::now()) {
            return Err(ElectionError::NotLeader {
                node: self.shared.me.node.clone(),
            });
        }
        put_if_term(&self.shared.client, &self.shared.keys, term, key, value).await
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Writes `value` at `key` if the leader key's create revision is `term`: the fenced write.
/// A leader whose term is over (its key expired, another took it) is refused by etcd itself,
/// whatever its own clock says.
pub async fn put_if_term(
    client: &EtcdClient,
    keys: &ClusterKeys,
    term: Term,
    key: &[u8],
    value: &[u8],
) -> Result<i64, ElectionError> {
    let leader = keys.leader();
    let txn = Txn::new()
        .when(Compare::create_revision(leader.clone(), term.0 as i64))
        .and_then(Op::put(key.to_vec(), value.to_vec(), None))
        .or_else(Op::get(leader));
    let outcome = client.txn(txn).await.map_err(|e| ElectionError::Etcd {
        node: String::new(),
        action: "write as leader",
        source: Arc::new(e),
    })?;
    if outcome.succeeded {
        return Ok(outcome.revision);
    }
    Err(ElectionError::Fenced {
        term,
        current: current_term(&outcome.results),
    })
}

/// Deletes the leader key if its create revision is `term`. `Ok(false)`: it was not (already
/// gone, or another node's).
pub async fn delete_leader_if_term(
    client: &EtcdClient,
    keys: &ClusterKeys,
    term: Term,
) -> Result<bool, EtcdError> {
    let leader = keys.leader();
    let txn = Txn::new()
        .when(Compare::create_revision(leader.clone(), term.0 as i64))
        .and_then(Op::delete(leader));
    Ok(client.txn(txn).await?.succeeded)
}

fn current_term(results: &[OpResult]) -> Option<Term> {
    results.iter().find_map(|r| match r {
        OpResult::Get(kvs) => kvs.first().map(|kv| Term(kv.create_revision as u64)),
        _ => None,
    })
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
