//! This node's part in a site that runs on several nodes (`[cluster]` in the manifest).
//!
//! One node is the primary: it holds the leader key in etcd (its term is the key's revision)
//! and runs the site's instances; the others are standbys: they run none, and their front
//! doors forward every request to the primary's. The roles come from `lifeboat-cluster`'s
//! election; this module carries them out:
//!
//! - **promote** when this node becomes the leader: instances start here, the front door
//!   serves them;
//! - **fence** the moment this node may no longer write (its lease could not be renewed by its
//!   fence deadline, or another node took the key): every instance is killed at once, before
//!   the lease can expire anywhere else, and nothing is routed to them any more;
//! - **follow** the leader otherwise: no instances here, the front door forwards to it;
//! - while nobody leads, run the failover step (the most caught-up standby in a healthy zone
//!   campaigns; the pure decision is `lifeboat_core::cluster::decide_campaign`).
//!
//! It never decides who leads by itself: etcd does, through the election.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use lifeboat_cluster::{
    ClusterKeys, ClusterTiming, Election, EtcdClient, EtcdConfig, MemberRegistry, MemberRole,
    MemberValue, NodeAddresses, NodeInfo, Role, campaign_if_chosen,
};
use lifeboat_core::EventKind;
use lifeboat_core::cluster::{Candidate, Health, Position};
use lifeboat_core::manifest::ClusterSpec;
use serde::{Deserialize, Serialize};

use crate::ControlError;
use crate::site::Site;

/// Who this node is, from `lifeboat up --node NAME --zone ZONE --advertise IP`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeOptions {
    pub node: String,
    pub zone: String,
    /// The address the other nodes reach this one at.
    pub advertise: IpAddr,
}

/// The id of the front door's one backend on a standby: the primary's front door.
const PRIMARY_BACKEND: &str = "primary";

/// This node's role, as it carries it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "kebab-case")]
pub enum NodeRole {
    /// Started, not yet following anyone.
    Joining,
    /// Holds the leader key: runs the instances.
    Primary { term: u64 },
    /// Follows the primary `leader` (term `term`): forwards requests to it.
    Standby { leader: String, term: u64 },
    /// Stopped writing: its lease ran out or another node took over. It rejoins as a standby.
    Fenced { term: u64, why: String },
}

/// One node of the site in `lifeboat status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub name: String,
    pub zone: String,
    /// `primary`, `standby` or `joining` (as the node last published it).
    pub role: String,
    pub front_door: String,
    pub peer: String,
    /// The term it leads in (the primary only).
    pub term: Option<u64>,
    /// How far it has applied the primary's changes: `[term, seq]`.
    pub applied: (u64, u64),
    pub healthy: bool,
    /// Why it is not healthy, when it is not.
    pub health: Option<String>,
}

/// This node's cluster machinery.
pub(crate) struct Node {
    pub(crate) election: Election,
    pub(crate) registry: MemberRegistry,
    pub(crate) info: NodeInfo,
    role: Mutex<NodeRole>,
    /// The member list as last read (for `status`, which must not wait on etcd).
    members: Mutex<Vec<NodeReport>>,
    /// Why this node does not campaign now, when nobody leads.
    waiting: Mutex<Option<String>>,
}

impl Node {
    /// Joins the cluster as a standby: keeps a lease, follows the leader key, registers this
    /// node. Nothing runs here until the node knows its role.
    pub(crate) async fn join(
        site_name: &str,
        spec: &ClusterSpec,
        options: &NodeOptions,
        front_door: SocketAddr,
    ) -> Result<Node, ControlError> {
        let refused = |what: &str, e: &dyn std::fmt::Display| {
            ControlError::Refused(format!("could not {what}: {e}"))
        };
        let client = EtcdClient::new(EtcdConfig::new(spec.etcd.clone()))
            .map_err(|e| refused("use the etcd endpoints of [cluster] etcd", &e))?;
        let keys = ClusterKeys::for_site(site_name)
            .map_err(|e| refused("name this site's keys in etcd", &e))?;
        let info = NodeInfo {
            node: options.node.clone(),
            zone: options.zone.clone(),
            addresses: NodeAddresses {
                peer: SocketAddr::new(options.advertise, spec.peer_port).to_string(),
                front_door: SocketAddr::new(options.advertise, front_door.port()).to_string(),
            },
        };
        let timing = ClusterTiming::from_ttl(spec.lease_ttl);
        let election = Election::start(client.clone(), keys.clone(), info.clone(), timing)
            .map_err(|e| refused("join the election", &e))?;
        let mut value = MemberValue::new(info.clone(), MemberRole::Joining);
        value.applied = Position { term: 0, seq: 0 };
        let registry = MemberRegistry::join(client, keys, value, timing)
            .await
            .map_err(|e| refused("register this node in etcd", &e))?;
        Ok(Node {
            election,
            registry,
            info,
            role: Mutex::new(NodeRole::Joining),
            members: Mutex::new(Vec::new()),
            waiting: Mutex::new(None),
        })
    }

    pub(crate) fn role(&self) -> NodeRole {
        self.role.lock().expect("role lock").clone()
    }

    /// Whether this node runs the site's instances now.
    pub(crate) fn runs_instances(&self) -> bool {
        matches!(self.role(), NodeRole::Primary { .. }) && self.election.may_write()
    }

    pub(crate) fn members(&self) -> Vec<NodeReport> {
        self.members.lock().expect("members lock").clone()
    }

    pub(crate) fn waiting(&self) -> Option<String> {
        self.waiting.lock().expect("waiting lock").clone()
    }

    fn set_role(&self, role: NodeRole) {
        *self.role.lock().expect("role lock") = role;
    }

    fn candidate(&self) -> Candidate {
        Candidate {
            node: self.info.node.clone(),
            zone: self.info.zone.clone(),
            applied: self.registry.value().applied,
            health: Health::Healthy,
        }
    }
}

/// Joins the cluster (retrying while etcd does not answer: it may start after this node),
/// then carries out this node's role until the site stops.
pub(crate) async fn join_and_run(site: Arc<Site>, spec: ClusterSpec, options: NodeOptions) {
    let mut said = String::new();
    let node = loop {
        match Node::join(
            &site.manifest.site,
            &spec,
            &options,
            site.proxy.local_addr(),
        )
        .await
        {
            Ok(node) => break Arc::new(node),
            Err(e) => {
                let why = e.to_string();
                if why != said {
                    tracing::warn!("{why}; retrying");
                    said = why;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = site.shutdown.cancelled() => return,
                }
            }
        }
    };
    let _ = site.node.set(node.clone());
    run(site, node).await;
}

/// Carries out this node's role for as long as the site runs (see the module doc).
pub(crate) async fn run(site: Arc<Site>, node: Arc<Node>) {
    let mut status_rx = node.election.subscribe();
    let timing = node.election.timing();
    let mut next_members_read = Instant::now();
    loop {
        let status = status_rx.borrow_and_update().clone();
        let now = Instant::now();
        let mut wake_at = now + timing.poll_interval;
        match &status.role {
            Role::Leader {
                term,
                fence_deadline,
            } if status.may_write(now) => {
                if node.role() != (NodeRole::Primary { term: term.0 }) {
                    promote(&site, &node, term.0).await;
                }
                // Wake at the fence deadline at the latest: a renewal that never comes must
                // fence this node on time even if no status change is published.
                wake_at = wake_at.min(*fence_deadline);
            }
            Role::Leader { term, .. } | Role::Unconfirmed { term, .. } => {
                fence(
                    &site,
                    &node,
                    term.0,
                    "its lease in etcd could not be renewed in time",
                )
                .await;
            }
            Role::Standby => {
                if let NodeRole::Primary { term } = node.role() {
                    let why = match &status.last_lost {
                        Some(lost) => format!("it lost the leader key ({:?})", lost.reason),
                        None => "another node leads".to_string(),
                    };
                    fence(&site, &node, term, &why).await;
                }
                match &status.leader {
                    Some(leader) if leader.node() != node.info.node => {
                        let front_door = leader
                            .info
                            .as_ref()
                            .ok()
                            .map(|i| i.addresses.front_door.clone());
                        follow(
                            &site,
                            &node,
                            leader.node(),
                            leader.term.0,
                            front_door.as_deref(),
                        );
                        *node.waiting.lock().expect("waiting lock") = None;
                    }
                    Some(_) => {}
                    None => failover_step(&site, &node).await,
                }
            }
        }
        if now >= next_members_read {
            refresh_members(&node).await;
            next_members_read = Instant::now() + timing.poll_interval;
        }
        tokio::select! {
            changed = status_rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep_until(wake_at) => {}
            _ = site.shutdown.cancelled() => return,
        }
    }
}

/// This node leads in `term`: instances start here and the front door serves them.
async fn promote(site: &Arc<Site>, node: &Node, term: u64) {
    node.set_role(NodeRole::Primary { term });
    node.registry.update(|v| v.role = MemberRole::Leader);
    let _ = node.registry.publish_now().await;
    // Requests go to this node's own instances from now on.
    let _ = site
        .proxy
        .remove_backend(PRIMARY_BACKEND)
        .within(Duration::ZERO)
        .await;
    site.record(EventKind::NodePromoted {
        node: node.info.node.clone(),
        term,
    });
    site.reconcile.notify_one();
}

/// This node must not write any more: its instances are killed at once (a graceful stop
/// could let one more write through after another node took over), and the front door sends
/// nothing more to them. It rejoins as a standby.
async fn fence(site: &Arc<Site>, node: &Node, term: u64, why: &str) {
    if matches!(node.role(), NodeRole::Fenced { .. }) {
        return;
    }
    node.set_role(NodeRole::Fenced {
        term,
        why: why.to_string(),
    });
    site.supervisor.kill_all_now().await;
    for backend in site.proxy.backends() {
        if backend.id != PRIMARY_BACKEND {
            let _ = site
                .proxy
                .remove_backend(&backend.id)
                .within(Duration::ZERO)
                .await;
        }
    }
    node.registry.update(|v| v.role = MemberRole::Joining);
    site.record(EventKind::NodeFenced {
        node: node.info.node.clone(),
        term,
        why: why.to_string(),
    });
}

/// Another node leads: this one runs no instances, and its front door forwards every request
/// to the leader's.
fn follow(site: &Site, node: &Node, leader: &str, term: u64, front_door: Option<&str>) {
    let role = NodeRole::Standby {
        leader: leader.to_string(),
        term,
    };
    if node.role() == role {
        return;
    }
    node.set_role(role);
    node.registry.update(|v| v.role = MemberRole::Standby);
    if let Some(addr) = front_door.and_then(|a| a.parse::<SocketAddr>().ok()) {
        // Replace whatever it forwarded to before (an old leader).
        let old = site.proxy.remove_backend(PRIMARY_BACKEND);
        drop(old);
        site.proxy.add_backend(PRIMARY_BACKEND, addr);
    }
    site.record(EventKind::NodeFollowing {
        node: node.info.node.clone(),
        leader: leader.to_string(),
        term,
    });
    site.reconcile.notify_one();
}

/// Nobody leads: campaign if this node is the one the decision picks.
async fn failover_step(site: &Site, node: &Node) {
    match campaign_if_chosen(&node.election, &node.registry, node.candidate(), false).await {
        Ok(step) => {
            let reason = step.decision.reason().to_string();
            let mut waiting = node.waiting.lock().expect("waiting lock");
            if step.outcome.is_none() && waiting.as_deref() != Some(reason.as_str()) {
                tracing::info!("not campaigning: {reason}");
            }
            *waiting = step.outcome.is_none().then_some(reason);
        }
        Err(e) => {
            tracing::warn!("the failover step failed: {e}");
            *node.waiting.lock().expect("waiting lock") = Some(e.to_string());
        }
    }
    let _ = site;
}

/// Reads the member list for `status` (bounded by the etcd client's timeouts).
async fn refresh_members(node: &Node) {
    let Ok(members) = node.registry.list().await else {
        return;
    };
    let leader = node.election.status().leader;
    let reports = members
        .members
        .iter()
        .map(|m| {
            let leads = leader.as_ref().is_some_and(|l| l.node() == m.info.node);
            NodeReport {
                name: m.info.node.clone(),
                zone: m.info.zone.clone(),
                role: match m.role {
                    MemberRole::Leader => "primary",
                    MemberRole::Standby => "standby",
                    MemberRole::Joining => "joining",
                }
                .to_string(),
                front_door: m.info.addresses.front_door.clone(),
                peer: m.info.addresses.peer.clone(),
                term: leads.then(|| leader.as_ref().map(|l| l.term.0)).flatten(),
                applied: (m.applied.term, m.applied.seq),
                healthy: m.health.is_healthy(),
                health: match &m.health {
                    Health::Healthy => None,
                    Health::Unhealthy(why) => Some(why.clone()),
                },
            }
        })
        .collect();
    *node.members.lock().expect("members lock") = reports;
}
