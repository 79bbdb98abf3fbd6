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
use lifeboat_core::cluster::{Candidate, FailsafeDecision, Health, Position};
use lifeboat_core::manifest::{ClusterSpec, Durability};
use lifeboat_timeline::{
    Replica, ReplicaConfig, ReplicaOptions, StreamServer, StreamServerConfig,
    apply_mariadb_journal, seed_capture_state,
};
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
/// How long a standby holds its requests for a new primary's front door to pass its first
/// check; past it they go on (and get a 503 while it still does not pass).
const PRIMARY_FIRST_CHECK: Duration = Duration::from_secs(5);

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
    /// Handing the primary role over to `to` on purpose (`lifeboat switchover`): requests
    /// are held, instances drain, and it resigns once `to` has everything.
    HandingOver { term: u64, to: String },
}

/// What `lifeboat switchover` did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwitchoverReport {
    pub from: String,
    pub to: String,
    /// The term handed over, and the successor's.
    pub old_term: u64,
    pub new_term: u64,
    /// How long requests were held (none failed).
    pub held_ms: u64,
}

/// A standby's copy of the primary's state, in `lifeboat status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaReport {
    /// `starting`, `restoring`, `waiting-for-primary`, `connecting`, `streaming`, `stopped`.
    pub state: String,
    /// More about the state: why it restores, where it connects.
    pub detail: Option<String>,
    /// Whether the copy is whole (false while a restore from the vault replaces it).
    pub ready: bool,
    /// The last change applied: `[term, seq]`.
    pub applied: (u64, u64),
    pub primary: Option<String>,
    pub batches_applied: u64,
    pub bytes_applied: u64,
    /// Seconds since a change was last applied.
    pub idle_seconds: Option<f64>,
    /// Restores from the vault since this node started, and why the last one was needed.
    pub resyncs: u64,
    pub last_resync_reason: Option<String>,
    pub last_error: Option<String>,
}

impl ReplicaReport {
    fn from_status(s: &lifeboat_timeline::ReplicaStatus) -> ReplicaReport {
        use lifeboat_timeline::ReplicaState;
        let (state, detail) = match &s.state {
            ReplicaState::Starting => ("starting", None),
            ReplicaState::Restoring { reason } => ("restoring", Some(reason.clone())),
            ReplicaState::WaitingForPrimary => ("waiting-for-primary", None),
            ReplicaState::Connecting { primary } => ("connecting", Some(primary.to_string())),
            ReplicaState::Streaming { primary } => ("streaming", Some(primary.to_string())),
            ReplicaState::Stopped => ("stopped", None),
        };
        ReplicaReport {
            state: state.to_string(),
            detail,
            ready: s.ready,
            applied: (s.applied.term, s.applied.seq),
            primary: s.primary_node.clone(),
            batches_applied: s.batches_applied,
            bytes_applied: s.bytes_applied,
            idle_seconds: s.last_applied_at.map(|t| t.elapsed().as_secs_f64()),
            resyncs: s.resyncs,
            last_resync_reason: s.last_resync_reason.clone(),
            last_error: s.last_error.clone(),
        }
    }
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
    /// How far behind this primary a standby is, as the primary sees it (only in the
    /// primary's own `status`; `None` elsewhere and for the primary itself).
    #[serde(default)]
    pub behind: Option<Behind>,
}

/// How far a standby is behind the primary: what the primary captured that it has not
/// acknowledged as applied and durable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Behind {
    /// Whether it is connected to the primary's stream now.
    pub connected: bool,
    /// Batches of commits and file changes not acknowledged.
    pub changes: u64,
    /// Their bytes (of those still in the primary's window).
    pub bytes: u64,
    /// Age of the oldest change not acknowledged (0 when caught up).
    pub seconds: f64,
}

/// `durability = "async"`, on the primary: what losing this node now would lose, i.e. what no
/// standby in another zone has acknowledged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossWindow {
    /// The standby in another zone that holds the most (none: every change is at risk).
    pub best_standby: Option<String>,
    /// Changes it lacks.
    pub changes: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Age of the oldest of them.
    pub seconds: f64,
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
    /// Where this node listens for standbys while it is the primary.
    peer_listen: SocketAddr,
    /// The copy of the primary's state this node keeps while it is a standby.
    replica: tokio::sync::Mutex<Option<Replica>>,
    /// The stream of changes to the standbys while this node is the primary.
    stream: Mutex<Option<Arc<StreamServer>>>,
    /// The replica's last status, for `lifeboat status` (refreshed every loop).
    replica_status: Mutex<Option<ReplicaReport>>,
    /// This primary serves on in failsafe mode (etcd unreachable, every standby confirms).
    failsafe: std::sync::atomic::AtomicBool,
}

/// Reads the TLS files `[cluster]` names (relative to the site dir).
fn etcd_tls(
    site_dir: &std::path::Path,
    spec: &lifeboat_core::manifest::EtcdTlsSpec,
) -> Result<lifeboat_cluster::EtcdTls, ControlError> {
    let read = |key: &str, path: &std::path::Path| {
        let full = site_dir.join(path);
        std::fs::read(&full).map_err(|e| {
            ControlError::Refused(format!(
                "could not read [cluster] {key} {}: {e}; put the file there (under .lifeboat/, where the site's processes cannot read it) or fix the path",
                full.display()
            ))
        })
    };
    let ca_pem = spec.ca.as_deref().map(|p| read("etcd_ca", p)).transpose()?;
    let identity_pem = match &spec.client {
        Some((cert, key)) => {
            let mut pem = read("etcd_cert", cert)?;
            pem.push(b'\n');
            pem.extend(read("etcd_key", key)?);
            Some(pem)
        }
        None => None,
    };
    Ok(lifeboat_cluster::EtcdTls {
        ca_pem,
        identity_pem,
    })
}

impl Node {
    /// Joins the cluster as a standby: keeps a lease, follows the leader key, registers this
    /// node. Nothing runs here until the node knows its role.
    pub(crate) async fn join(
        site_name: &str,
        site_dir: &std::path::Path,
        spec: &ClusterSpec,
        options: &NodeOptions,
        front_door: SocketAddr,
    ) -> Result<Node, ControlError> {
        let refused = |what: &str, e: &dyn std::fmt::Display| {
            ControlError::Refused(format!("could not {what}: {e}"))
        };
        let mut config = EtcdConfig::new(spec.etcd.clone());
        if let Some(tls) = &spec.etcd_tls {
            config.tls = Some(etcd_tls(site_dir, tls)?);
        }
        let client = EtcdClient::new(config)
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
            peer_listen: SocketAddr::new(options.advertise, spec.peer_port),
            replica: tokio::sync::Mutex::new(None),
            stream: Mutex::new(None),
            replica_status: Mutex::new(None),
            failsafe: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub(crate) fn role(&self) -> NodeRole {
        self.role.lock().expect("role lock").clone()
    }

    /// Whether this node runs the site's instances now.
    pub(crate) fn runs_instances(&self) -> bool {
        matches!(self.role(), NodeRole::Primary { .. })
            && (self.election.may_write()
                || self.failsafe.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Every member as etcd last showed it; on the primary, with how far behind each
    /// standby is.
    pub(crate) fn members(&self) -> Vec<NodeReport> {
        let mut members = self.members.lock().expect("members lock").clone();
        if let Some(stream) = self.stream() {
            let standbys = stream.status().standbys;
            for m in &mut members {
                if let Some(s) = standbys.iter().find(|s| s.node == m.name) {
                    m.behind = Some(Behind {
                        connected: s.connected,
                        changes: s.lag_batches,
                        bytes: s.lag_bytes,
                        seconds: s.lag_time.as_secs_f64(),
                    });
                }
            }
        }
        members
    }

    /// `durability = "async"` on the primary: what no standby in another zone has yet.
    pub(crate) fn loss_window(&self, durability: Durability) -> Option<LossWindow> {
        if durability != Durability::Async || !matches!(self.role(), NodeRole::Primary { .. }) {
            return None;
        }
        let status = self.stream()?.status();
        let best = status
            .standbys
            .iter()
            .filter(|s| s.connected && s.zone != self.info.zone)
            .min_by_key(|s| (s.lag_batches, s.lag_time));
        Some(match best {
            Some(s) => LossWindow {
                best_standby: Some(s.node.clone()),
                changes: s.lag_batches,
                bytes: s.lag_bytes,
                seconds: s.lag_time.as_secs_f64(),
            },
            None => LossWindow {
                best_standby: None,
                changes: status.feed.window_batches as u64,
                bytes: status.feed.window_bytes,
                seconds: 0.0,
            },
        })
    }

    pub(crate) fn waiting(&self) -> Option<String> {
        self.waiting.lock().expect("waiting lock").clone()
    }

    fn set_role(&self, role: NodeRole) {
        *self.role.lock().expect("role lock") = role;
    }

    /// The replica's last status, while this node keeps one.
    pub(crate) fn replica_report(&self) -> Option<ReplicaReport> {
        self.replica_status
            .lock()
            .expect("replica status lock")
            .clone()
    }

    /// The stream server while this node is the primary.
    pub(crate) fn stream(&self) -> Option<Arc<StreamServer>> {
        self.stream.lock().expect("stream lock").clone()
    }

    fn candidate(&self) -> Candidate {
        Candidate {
            node: self.info.node.clone(),
            zone: self.info.zone.clone(),
            applied: self.registry.value().applied,
            health: Health::Healthy,
            hands_over_to: None,
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
            &site.paths.dir,
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
                if node
                    .failsafe
                    .swap(false, std::sync::atomic::Ordering::SeqCst)
                {
                    site.record(EventKind::NodeFailsafeEnded {
                        node: node.info.node.clone(),
                        term: term.0,
                    });
                }
                let handing_over = matches!(node.role(), NodeRole::HandingOver { .. });
                if !handing_over && node.role() != (NodeRole::Primary { term: term.0 }) {
                    promote(&site, &node, term.0).await;
                }
                // Wake at the fence deadline at the latest: a renewal that never comes must
                // fence this node on time even if no status change is published.
                wake_at = wake_at.min(*fence_deadline);
            }
            Role::Leader { term, .. } | Role::Unconfirmed { term, .. } => {
                match failsafe(&node, &status, now) {
                    FailsafeDecision::KeepServing { until, reason } => {
                        if !node
                            .failsafe
                            .swap(true, std::sync::atomic::Ordering::SeqCst)
                        {
                            site.record(EventKind::NodeFailsafe {
                                node: node.info.node.clone(),
                                term: term.0,
                                why: reason,
                            });
                        }
                        wake_at = wake_at.min(until);
                    }
                    FailsafeDecision::StopWriting { reason } => {
                        fence(&site, &node, term.0, &reason).await;
                    }
                    FailsafeDecision::NotNeeded => {
                        fence(
                            &site,
                            &node,
                            term.0,
                            "its lease in etcd could not be renewed in time",
                        )
                        .await;
                    }
                }
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
                        let addresses = leader.info.as_ref().ok().map(|i| i.addresses.clone());
                        follow(
                            &site,
                            &node,
                            leader.node(),
                            leader.term.0,
                            addresses.as_ref(),
                        )
                        .await;
                        *node.waiting.lock().expect("waiting lock") = None;
                    }
                    Some(_) => {}
                    None => failover_step(&site, &node).await,
                }
            }
        }
        publish_applied(&node).await;
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

/// What the standby's replica keeps: the live state (the site dir's own), as the manifest
/// declares it.
/// The key nodes authenticate and encrypt the stream with: derived from the site's vault
/// key, which every node holds and the site's own processes never see.
fn stream_key(site: &Site) -> lifeboat_timeline::StreamKey {
    let seed = match site.capture.get() {
        Some(capture) => capture
            .repository()
            .derive_key(lifeboat_timeline::StreamKey::CONTEXT),
        // No vault: no replica or stream server runs (they need one); a random key lets no
        // peer in.
        None => rand::random(),
    };
    lifeboat_timeline::StreamKey::new(seed)
}

fn replica_config(site: &Site, node: &Arc<Node>) -> ReplicaConfig {
    // Failsafe: while etcd has lost quorum, the primary keeps serving only as long as every
    // standby confirms it directly; this node confirms per `core::cluster::confirm_leader`.
    let weak = Arc::downgrade(node);
    let confirm: lifeboat_timeline::ConfirmPolicy = Arc::new(move |request| {
        let Some(node) = weak.upgrade() else {
            return Err("this node is stopping".into());
        };
        let status = node.election.status();
        let now = tokio::time::Instant::now();
        let leader_in_etcd = status
            .leader
            .as_ref()
            .map(|l| lifeboat_core::cluster::LeaderSeen {
                node: l.node().to_string(),
                term: l.term,
            });
        let highest = [
            status.leader.as_ref().map(|l| l.term.0),
            status.previous_leader.as_ref().map(|l| l.term.0),
            node.registry.value().applied.term.into(),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);
        lifeboat_core::cluster::confirm_leader(&lifeboat_core::cluster::ConfirmInput {
            request: request.clone(),
            etcd_reachable: status.etcd_reachable(now),
            leader_in_etcd,
            highest_term_seen: lifeboat_core::cluster::Term(highest),
            i_lead: status.my_term().is_some(),
        })
    });
    ReplicaConfig {
        site: site.manifest.site.clone(),
        node: node.info.node.clone(),
        zone: node.info.zone.clone(),
        state_dir: site.paths.state_dir(&site.live_state()),
        databases: site.manifest.state.sqlite.clone(),
        data_dirs: site.manifest.state.dirs.clone(),
        meta_dir: site.paths.lifeboat_dir().join("replica"),
        key: stream_key(site),
        mariadb: replica_mariadb(site),
        options: ReplicaOptions {
            confirm: Some(confirm),
            // Peers are on the site's network: retrying a connection every second at most
            // costs nothing and keeps a failover's acknowledgements from waiting on a backoff.
            reconnect_max: Duration::from_secs(1),
            ..ReplicaOptions::default()
        },
    }
}

/// The site's MariaDB database in a standby's copy: received transactions are applied by a
/// server on the live state's data dir with this node's own config (a restore from the
/// vault writes its admin password there), and the app's user gets this node's password.
fn replica_mariadb(site: &Site) -> Option<lifeboat_timeline::ReplicaMariaDb> {
    let db = site.database.get()?;
    let live = site.live_state();
    let spec = match db.server_spec(&live, None) {
        // Like a restore's, the server that applies the journal runs as Lifeboat's user; the
        // data dir is given to the site's user when the node promotes (`ensure_running`).
        Ok(mut s) => {
            s.os_user = None;
            s.server_data_dir = None;
            s
        }
        Err(e) => {
            tracing::warn!("the standby cannot lay out its MariaDB copy: {e}");
            return None;
        }
    };
    let password = match db.app_password(&live) {
        Some(p) => p,
        None => {
            let p = crate::mariadb::new_password();
            if let Err(e) = db.set_app_password(&live, &p) {
                tracing::warn!("could not keep the app's MariaDB password: {e}");
                return None;
            }
            p
        }
    };
    Some(lifeboat_timeline::ReplicaMariaDb {
        name: db.spec.dir.to_string_lossy().into_owned(),
        spec,
        restore: db.restore_options(&live, &password),
        fold_bytes: site
            .manifest
            .cluster
            .as_ref()
            .map_or(lifeboat_core::manifest::DEFAULT_STANDBY_JOURNAL, |c| {
                c.standby_journal
            }),
    })
}

/// This node leads in `term`: its replica (if any) stops where it is and capture continues
/// from there in the new term, the stream to the standbys opens, and instances start here.
async fn promote(site: &Arc<Site>, node: &Arc<Node>, term: u64) {
    let live = site.live_state();
    let mut history = None;
    let replica = node.replica.lock().await.take();
    let had_replica = replica.is_some();
    if let Some(replica) = replica {
        match replica.stop_keeping_history().await {
            Ok((status, kept)) => {
                tracing::info!(
                    "replica stopped at {:?} to take over ({} batches kept for the other standbys)",
                    status.applied,
                    kept.len()
                );
                history = Some(kept);
            }
            Err(e) => tracing::warn!("the replica did not stop cleanly: {e}"),
        }
    }
    // The database serves here from now on: on the copy the replica left, or a new one on
    // a site's first start.
    let server = match site.database.get() {
        Some(db) => match db.ensure_running(&live).await {
            Ok(spec) => Some(spec),
            Err(e) => {
                site.record(EventKind::CaptureError {
                    message: format!("the MariaDB server of the promoted node did not start: {e}"),
                });
                None
            }
        },
        None => None,
    };
    if had_replica {
        // The transactions the copy received and did not apply yet go in through that
        // server; then capture goes on from exactly where the copy ends, so standbys that
        // followed the old primary follow this one without a restore.
        let config = replica_config(site, node);
        let capture_dir = site.paths.capture(&live);
        let seeded = tokio::task::spawn_blocking(move || {
            if let Some(spec) = &server {
                let n = apply_mariadb_journal(&config, spec)?;
                if n > 0 {
                    tracing::info!("{n} received MariaDB transactions applied to take over");
                }
            }
            seed_capture_state(&config, &capture_dir)
        })
        .await
        .unwrap_or_else(|e| Err(lifeboat_timeline::StreamError::Invalid(e.to_string())));
        if let Err(e) = seeded {
            tracing::warn!("capture starts afresh (the standbys restore from the vault): {e}");
        }
    }
    if let Some(capture) = site.capture.get() {
        capture.start_in_term(&live, Some(term), history);
    }
    {
        let site = site.clone();
        let _ = tokio::task::spawn_blocking(move || site.hold_site_databases()).await;
    }
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
    if let (Some(capture), Some(spec)) = (site.capture.get(), site.manifest.cluster.as_ref()) {
        if spec.durability == Durability::Sync {
            site.proxy.set_write_gate(Some(Box::new(SyncGate {
                node: node.clone(),
                capture: capture.clone(),
                runtime: tokio::runtime::Handle::current(),
                timeout: spec.sync_timeout,
            })));
        }
        // Capture starts once the databases exist (on a fresh site the app creates them, so
        // this cannot wait before the instances start); the stream opens when it runs.
        open_stream_once_capture_runs(site, node, capture, term);
    }
}

/// Opens the stream to the standbys in the background once capture's worker runs, unless this
/// node stopped being the primary of `term` meanwhile.
fn open_stream_once_capture_runs(
    site: &Arc<Site>,
    node: &Arc<Node>,
    capture: &Arc<crate::capture::Capture>,
    term: u64,
) {
    let (site, node, capture) = (site.clone(), node.clone(), capture.clone());
    tokio::spawn(async move {
        loop {
            if node.role() != (NodeRole::Primary { term }) {
                return;
            }
            if let Some(worker) = capture.running_worker(Duration::from_millis(500)).await {
                start_stream(&site, &node, &worker, term).await;
                return;
            }
        }
    });
}

/// After a rewind on the primary (`capture` stopped on the old state): capture follows the
/// rewound `state` in the same term, and the stream to the standbys opens again on it once
/// its base is stored (their copies are of the old state: they take the rewound one from the
/// vault). False when this node is no cluster's primary (capture is the caller's then).
pub(crate) async fn follow_rewind(site: &Arc<Site>, state: &str) -> bool {
    let (Some(node), Some(capture)) = (site.node.get(), site.capture.get()) else {
        return false;
    };
    let NodeRole::Primary { term } = node.role() else {
        return false;
    };
    // The stream of the old state's capture ends; the standbys wait for the new one.
    let old = node.stream.lock().expect("stream lock").take();
    if let Some(stream) = old {
        stream.shutdown().await;
    }
    capture.start_rewound_in_term(state, term);
    open_stream_once_capture_runs(site, node, capture, term);
    true
}

/// `durability = "sync"`: the answer to a request that may write waits until everything the
/// site committed before it is applied and durable on a standby in another zone, for at most
/// `sync_timeout` (then the client gets a 503 that says the change was not confirmed).
struct SyncGate {
    node: Arc<Node>,
    capture: Arc<crate::capture::Capture>,
    /// The daemon's runtime: the front door's serving threads run their own.
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl std::fmt::Debug for SyncGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncGate")
            .field("node", &self.node.info.node)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl lifeboat_proxy::WriteGate for SyncGate {
    fn hold(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> {
        let (node, capture, timeout) = (self.node.clone(), self.capture.clone(), self.timeout);
        let done = self.runtime.spawn(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            tokio::time::timeout_at(deadline, durable_elsewhere(&node, &capture, deadline))
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "no standby in another zone confirmed it within {}",
                        humantime::format_duration(timeout)
                    ))
                })
        });
        Box::pin(async move {
            done.await
                .unwrap_or_else(|_| Err("this node is stopping".to_string()))
        })
    }
}

/// Waits until what capture reads now is acknowledged by a standby outside this node's zone.
async fn durable_elsewhere(
    node: &Node,
    capture: &crate::capture::Capture,
    deadline: tokio::time::Instant,
) -> Result<(), String> {
    let (worker, stream) = loop {
        if let (Some(worker), Some(stream)) = (capture.worker(), node.stream()) {
            break (worker, stream);
        }
        if !matches!(node.role(), NodeRole::Primary { .. }) {
            return Err("this node is no longer the primary".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let position = worker.barrier().await.map_err(|e| e.to_string())?;
    let zone = node.info.zone.clone();
    stream
        .wait_acked(
            position,
            move |s| s.zone != zone,
            deadline.saturating_duration_since(tokio::time::Instant::now()),
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
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
    node.failsafe
        .store(false, std::sync::atomic::Ordering::SeqCst);
    // Answers still waiting for a standby get their 503 (the stream goes away below).
    site.proxy.set_write_gate(None);
    for backend in site.proxy.backends() {
        if backend.id != PRIMARY_BACKEND {
            let _ = site
                .proxy
                .remove_backend(&backend.id)
                .within(Duration::ZERO)
                .await;
        }
    }
    // Nothing more leaves this node in the old term: not to the standbys, not to the vault.
    let stream = node.stream.lock().expect("stream lock").take();
    if let Some(stream) = stream {
        stream.shutdown().await;
    }
    if let Some(capture) = site.capture.get() {
        capture.abandon().await;
    }
    // The replica takes the copy over (or sets it aside as a fork): no server may hold it.
    if let Some(db) = site.database.get() {
        db.stop(&site.live_state()).await;
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
async fn follow(
    site: &Arc<Site>,
    node: &Arc<Node>,
    leader: &str,
    term: u64,
    addresses: Option<&NodeAddresses>,
) {
    let role = NodeRole::Standby {
        leader: leader.to_string(),
        term,
    };
    if node.role() == role {
        return;
    }
    let front_door = addresses.map(|a| a.front_door.as_str());
    let peer = addresses.and_then(|a| a.peer.parse::<SocketAddr>().ok());
    follow_with_replica(site, node, term, peer).await;
    node.set_role(role);
    node.registry.update(|v| v.role = MemberRole::Standby);
    if let Some(addr) = front_door.and_then(|a| a.parse::<SocketAddr>().ok()) {
        // A new backend takes requests once its first check passes: until then requests
        // here wait for it (as long as a switchover's hold would) rather than get a 503.
        let hold = !site.proxy.requests_held();
        if hold {
            site.proxy.hold_requests(true);
        }
        // Replace whatever it forwarded to before (an old leader).
        let old = site.proxy.remove_backend(PRIMARY_BACKEND);
        drop(old);
        // Checked by asking its front door, not one of its instances (one hung there is
        // no reason to fail every request here).
        site.proxy.add_front_door_backend(PRIMARY_BACKEND, addr);
        if hold {
            let proxy = site.proxy.clone();
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + PRIMARY_FIRST_CHECK;
                while tokio::time::Instant::now() < deadline
                    && !proxy.backends().iter().any(|b| {
                        b.id == PRIMARY_BACKEND
                            && b.health == lifeboat_proxy::BackendHealth::Healthy
                    })
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                proxy.hold_requests(false);
            });
        }
    }
    site.record(EventKind::NodeFollowing {
        node: node.info.node.clone(),
        leader: leader.to_string(),
        term,
    });
    site.reconcile.notify_one();
}

/// Opens the stream of changes to the standbys on this node's peer address, for `term`; a
/// standby that shows a newer term fences this node.
async fn start_stream(
    site: &Arc<Site>,
    node: &Arc<Node>,
    worker: &lifeboat_timeline::TimelineWorker,
    term: u64,
) {
    let Some(feed) = worker.feed() else { return };
    let listener = match tokio::net::TcpListener::bind(node.peer_listen).await {
        Ok(l) => l,
        Err(e) => {
            site.record(EventKind::CaptureError {
                message: format!(
                    "could not listen for standbys on {} ({e}); they get no stream: free the port or change [cluster] peer_port",
                    node.peer_listen
                ),
            });
            return;
        }
    };
    let config = StreamServerConfig {
        site: site.manifest.site.clone(),
        node: node.info.node.clone(),
        zone: node.info.zone.clone(),
        key: stream_key(site),
        options: Default::default(),
    };
    match StreamServer::start(listener, feed, config) {
        Ok(server) => {
            let server = Arc::new(server);
            *node.stream.lock().expect("stream lock") = Some(server.clone());
            let (site, node) = (site.clone(), node.clone());
            tokio::spawn(async move {
                let newer = server.superseded().await;
                fence(
                    &site,
                    &node,
                    term,
                    &format!("a standby has seen a newer term ({newer})"),
                )
                .await;
            });
        }
        Err(e) => site.record(EventKind::CaptureError {
            message: format!("could not start the stream to the standbys: {e}"),
        }),
    }
}

/// Keeps the copy of the primary's state this node needs to take over: a replica following
/// the primary at `peer` in `term`. A state this node had without a replica (it was the
/// primary, or ran alone) is kept aside first: what it holds that the new primary does not is
/// a fork, never thrown away.
async fn follow_with_replica(
    site: &Arc<Site>,
    node: &Arc<Node>,
    term: u64,
    peer: Option<SocketAddr>,
) {
    let mut replica = node.replica.lock().await;
    if replica.is_none() {
        let Some(capture) = site.capture.get() else {
            return;
        };
        let config = replica_config(site, node);
        if !config.meta_dir.join("replica.state").exists() {
            keep_aside_as_fork(site, node, term).await;
        }
        // This one, and any set aside before a crash or while the vault was down.
        spawn_store_forks(site);
        match Replica::start(config, capture.repository(), peer).await {
            Ok(r) => *replica = Some(r),
            Err(e) => {
                site.record(EventKind::CaptureError {
                    message: format!("could not start the standby's copy of the state: {e}"),
                });
                return;
            }
        }
    }
    if let Some(r) = replica.as_ref() {
        r.note_term(term);
        r.set_primary(peer);
    }
}

/// Moves the state this node holds (the declared databases with their logs, the data dirs)
/// into `.lifeboat/states/fork-...`, so the replica starts from the vault and the primary's
/// stream, and nothing this node had is lost: `lifeboat states` lists the fork here, and once
/// it is stored in the vault (in the background) `lifeboat timeline` lists it everywhere and
/// `lifeboat restore-site --fork` rebuilds it on any machine.
async fn keep_aside_as_fork(site: &Arc<Site>, node: &Node, term: u64) {
    let state_dir = site.paths.state_dir(&site.live_state());
    let mut paths = Vec::new();
    for db in &site.manifest.state.sqlite {
        for side in ["", "-wal", "-shm"] {
            let mut name = db.clone().into_os_string();
            name.push(side);
            paths.push(std::path::PathBuf::from(name));
        }
    }
    paths.extend(site.manifest.state.dirs.iter().cloned());
    if let Some(m) = &site.manifest.state.mariadb {
        // Its server was stopped when this node was fenced (or never started here).
        paths.push(m.dir.clone());
    }
    let present: Vec<_> = paths
        .into_iter()
        .filter(|p| std::fs::symlink_metadata(state_dir.join(p)).is_ok())
        .collect();
    let has_data = present.iter().any(|p| {
        let full = state_dir.join(p);
        if full.is_dir() {
            std::fs::read_dir(&full).is_ok_and(|mut d| d.next().is_some())
        } else {
            std::fs::metadata(&full).is_ok_and(|m| m.len() > 0)
        }
    });
    if !has_data {
        return;
    }
    let now = time::OffsetDateTime::now_utc();
    let name = format!(
        "fork-{}-term{term}-{}",
        node.info.node,
        now.unix_timestamp()
    );
    let fork = site.paths.states().join(&name);
    let planned = node.registry.value().hands_over_to.is_some();
    let why = match node.registry.value().hands_over_to {
        Some(to) => format!(
            "{} handed over to {to}, which confirmed everything it held; its copy is kept as a precaution",
            node.info.node
        ),
        None => format!(
            "{} had a state of its own when it joined as a standby (term {term}); what the primary does not have is kept here",
            node.info.node
        ),
    };
    let mut description =
        lifeboat_timeline::ForkDescription::new(&name, &node.info.node, term, now, &why);
    description.databases = site
        .manifest
        .state
        .sqlite
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    description.dirs = site
        .manifest
        .state
        .dirs
        .iter()
        .chain(site.manifest.state.mariadb.iter().map(|m| &m.dir))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let moved = (|| -> std::io::Result<()> {
        for p in &present {
            let to = fork.join(p);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(state_dir.join(p), &to)?;
        }
        // Written beside the data, so a fork moved aside just before a crash is still
        // described (and stored) after the restart.
        write_fork_description(&fork, &description)
    })();
    match moved {
        Ok(()) => {
            site.record(EventKind::StateForked {
                state: name,
                why: format!("{why}; it is being stored in the vault as a fork"),
                planned,
            });
        }
        Err(e) => site.record(EventKind::CaptureError {
            message: format!(
                "could not keep this node's state aside in {}: {e}",
                fork.display()
            ),
        }),
    }
}

/// Where a fork's description is kept inside the state set aside.
fn fork_description_path(fork: &std::path::Path) -> std::path::PathBuf {
    fork.join(".lifeboat-timeline").join("fork.json")
}

fn write_fork_description(
    fork: &std::path::Path,
    description: &lifeboat_timeline::ForkDescription,
) -> std::io::Result<()> {
    let path = fork_description_path(fork);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let bytes = serde_json::to_vec_pretty(description).map_err(std::io::Error::other)?;
    std::fs::write(&path, bytes)
}

/// Stores in the vault every fork this node set aside and has not stored yet (one moved
/// aside just before a crash or while the vault was unreachable is stored on the next
/// try), each announced with [`EventKind::ForkStored`]. One sweep at a time.
fn spawn_store_forks(site: &Arc<Site>) {
    let Some(capture) = site.capture.get() else {
        return;
    };
    let repo = capture.repository();
    let site = site.clone();
    tokio::spawn(async move {
        static SWEEPING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _one = SWEEPING.lock().await;
        let stored: std::collections::BTreeSet<String> = match lifeboat_timeline::list_forks(&repo)
            .await
        {
            Ok(forks) => forks.into_iter().map(|f| f.description.name).collect(),
            Err(e) => {
                site.record(EventKind::CaptureError {
                    message: format!("could not list the forks in the vault: {e}; this node's forks stay only in .lifeboat/states until the next try"),
                });
                return;
            }
        };
        let Ok(entries) = std::fs::read_dir(site.paths.states()) else {
            return;
        };
        let manifest = std::fs::read(site.paths.manifest()).ok();
        for entry in entries.flatten() {
            let dir = entry.path();
            let Ok(bytes) = std::fs::read(fork_description_path(&dir)) else {
                continue;
            };
            let Ok(description) =
                serde_json::from_slice::<lifeboat_timeline::ForkDescription>(&bytes)
            else {
                continue;
            };
            if stored.contains(&description.name) {
                continue;
            }
            let manifest = manifest
                .as_deref()
                .map(|b| (lifeboat_core::MANIFEST_FILE, b));
            match lifeboat_timeline::store_fork(&repo, &dir, &description, manifest).await {
                Ok(info) => site.record(EventKind::ForkStored {
                    fork: description.name,
                    snapshot: info.snapshot,
                }),
                Err(e) => site.record(EventKind::CaptureError {
                    message: format!(
                        "could not store the fork {} in the vault: {e}; it stays in .lifeboat/states and is stored on the next try",
                        description.name
                    ),
                }),
            }
        }
    });
}

/// `lifeboat switchover --to NODE` on the primary: moves the primary role to `to` without
/// failing a request. New requests are held at this node's front door (and so at every
/// standby's, which forward here); this node's instances drain (requests under way finish,
/// their answers released once `to` has their writes); `to` acknowledges everything captured;
/// capture ships what is pending and stops; this node names `to` as its successor in its
/// member key and resigns, so `to` (and no other node) campaigns; once `to` leads and its
/// front door is healthy here, the held requests go there.
pub(crate) async fn switchover(
    site: &Arc<Site>,
    node: &Arc<Node>,
    to: &str,
) -> Result<SwitchoverReport, crate::ControlError> {
    use crate::ControlError::Refused;
    let NodeRole::Primary { term } = node.role() else {
        return Err(Refused(format!(
            "{} is not the primary ({}); run `lifeboat switchover` on the primary",
            node.info.node,
            match node.role() {
                NodeRole::Standby { leader, .. } => format!("{leader} is"),
                _ => "no node is known to be".into(),
            }
        )));
    };
    if to == node.info.node {
        return Err(Refused(format!("{to} is the primary already")));
    }
    refresh_members(node).await;
    let target = node
        .members()
        .into_iter()
        .find(|m| m.name == to)
        .ok_or_else(|| {
            Refused(format!(
                "no node named {to} is in the cluster; `lifeboat status` lists them"
            ))
        })?;
    if target.role != "standby" || !target.healthy {
        return Err(Refused(format!(
            "{to} is not a healthy standby (it is {}{}); wait until it is",
            target.role,
            target
                .health
                .as_deref()
                .map(|h| format!(": {h}"))
                .unwrap_or_default()
        )));
    }
    let (Some(stream), Some(capture)) = (node.stream(), site.capture.get().cloned()) else {
        return Err(Refused(
            "the stream to the standbys is not running yet; wait a moment and try again".into(),
        ));
    };
    let Some(worker) = capture.worker() else {
        return Err(Refused(
            "capture is not running yet; try again in a moment".into(),
        ));
    };
    // `to` must be following closely already: a handover must not wait on a restore.
    let target_node = to.to_string();
    let position = worker.barrier().await.map_err(|e| Refused(e.to_string()))?;
    stream
        .wait_acked(
            position,
            move |s| s.node == target_node,
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| Refused(format!("{to} is not caught up: {e}")))?;
    // Capture stops during the handover, and waits for every holder of the worker to let go.
    drop(worker);

    let started = Instant::now();
    site.proxy.hold_requests(true);
    node.set_role(NodeRole::HandingOver {
        term,
        to: to.to_string(),
    });
    let result = hand_over(site, node, &capture, &stream, term, to).await;
    let new_term = match &result {
        Ok(t) => *t,
        Err(_) => 0,
    };
    site.proxy.hold_requests(false);
    node.registry.update(|v| v.hands_over_to = None);
    let _ = node.registry.publish_now().await;
    let held_ms = started.elapsed().as_millis() as u64;
    result.map(|_| SwitchoverReport {
        from: node.info.node.clone(),
        to: to.to_string(),
        old_term: term,
        new_term,
        held_ms,
    })
}

/// The steps of [`switchover`] while requests are held; the successor's term.
async fn hand_over(
    site: &Arc<Site>,
    node: &Arc<Node>,
    capture: &Arc<crate::capture::Capture>,
    stream: &Arc<StreamServer>,
    term: u64,
    to: &str,
) -> Result<u64, crate::ControlError> {
    use crate::ControlError::Refused;
    // Instances drain (the reconcile loop stops them: this node no longer runs them).
    site.reconcile.notify_one();
    let drain_deadline = Instant::now() + site.longest_stop_timeout() + Duration::from_secs(5);
    while !site.supervisor.instances().is_empty() {
        if Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Everything the instances committed is at `to`.
    if let Some(worker) = capture.worker() {
        let target = to.to_string();
        let position = worker.barrier().await.map_err(|e| Refused(e.to_string()))?;
        stream
            .wait_acked(position, move |s| s.node == target, Duration::from_secs(10))
            .await
            .map_err(|e| Refused(format!("{to} did not confirm the last writes: {e}")))?;
    }
    site.proxy.set_write_gate(None);
    // The vault gets what is pending from this term before the next one begins.
    capture.stop().await;
    // The database's last transactions are at `to`: the server stops before this node's
    // copy is kept aside and a replica takes the data dir.
    if let Some(db) = site.database.get() {
        db.stop(&site.live_state()).await;
    }
    let taken = node.stream.lock().expect("stream lock").take();
    if let Some(taken) = taken {
        taken.shutdown().await;
    }
    node.registry.update(|v| {
        v.hands_over_to = Some(to.to_string());
        v.role = MemberRole::Joining;
    });
    node.registry
        .publish_now()
        .await
        .map_err(|e| Refused(format!("could not name {to} as the successor in etcd: {e}")))?;
    node.election
        .resign()
        .await
        .map_err(|e| Refused(format!("could not resign in etcd: {e}")))?;
    site.record(EventKind::NodeFenced {
        node: node.info.node.clone(),
        term,
        why: format!("it handed the primary role over to {to} (switchover)"),
    });
    // Wait for `to` to lead and for its front door to be healthy from here.
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        if let NodeRole::Standby { leader, term: new } = node.role()
            && leader == to
            && site.proxy.backends().iter().any(|b| {
                b.id == PRIMARY_BACKEND && b.health == lifeboat_proxy::BackendHealth::Healthy
            })
        {
            return Ok(new);
        }
        if Instant::now() > deadline {
            return Err(Refused(format!(
                "{to} did not take over within 25s; `lifeboat status` shows who leads now"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether this primary, whose lease could not be renewed, serves on in failsafe mode: only
/// while etcd is unreachable and every other member it last knew confirmed it directly
/// (`core::cluster::decide_failsafe`, Patroni's failsafe mode).
fn failsafe(
    node: &Node,
    status: &lifeboat_cluster::ElectionStatus,
    now: Instant,
) -> FailsafeDecision<Instant> {
    let Some(stream) = node.stream() else {
        return FailsafeDecision::NotNeeded;
    };
    // Everybody who could take over must confirm: the members etcd last listed, and every
    // standby connected to the stream (one may have joined after the last listing).
    let standbys = stream.status().standbys;
    let members: std::collections::BTreeSet<String> = node
        .members()
        .into_iter()
        .map(|m| m.name)
        .chain(standbys.iter().map(|s| s.node.clone()))
        .filter(|n| *n != node.info.node)
        .collect();
    let confirmations = standbys
        .into_iter()
        .filter_map(|s| Some((s.node, Instant::from_std(s.last_confirmed_request_sent?))))
        .collect();
    let timing = node.election.timing();
    lifeboat_core::cluster::decide_failsafe(&lifeboat_core::cluster::FailsafeInput {
        // Past the fence deadline no renewal got through: etcd is unreachable as far as the
        // lease goes, even if it answered something else a moment ago. (If it answered that
        // the lease is gone, this node would be a standby already; if it shows another
        // leader to a standby, that standby refuses to confirm.)
        etcd_reachable: false,
        my_term: status.my_term(),
        members_last_known: members,
        confirmations,
        ttl: timing.ttl,
        margin: timing.fence_margin,
        now,
    })
}

/// Nobody leads: campaign if this node is the one the decision picks.
async fn failover_step(site: &Site, node: &Node) {
    // A standby that confirmed a primary in failsafe mode within the last TTL must not
    // campaign: that primary may still be writing.
    let promise = node
        .replica
        .lock()
        .await
        .as_ref()
        .map(|r| r.status().last_confirmed_at)
        .is_some_and(|at| {
            lifeboat_core::cluster::failsafe_promise_holds(
                at,
                node.election.timing().ttl,
                std::time::Instant::now(),
            )
        });
    match campaign_if_chosen(&node.election, &node.registry, node.candidate(), promise).await {
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

/// Tells the other nodes how far this one has applied (what failover compares): the
/// replica's position on a standby, the stream's on the primary.
async fn publish_applied(node: &Node) {
    let replica = node.replica.lock().await.as_ref().map(|r| r.status());
    *node.replica_status.lock().expect("replica status lock") =
        replica.as_ref().map(ReplicaReport::from_status);
    let applied = if let Some(stream) = node.stream() {
        Some(stream.status().feed.last_position)
    } else {
        replica.filter(|s| s.ready).map(|s| s.applied)
    };
    if let Some(applied) = applied
        && node.registry.value().applied != applied
    {
        node.registry.update(|v| v.applied = applied);
    }
}

/// Reads the member list for `status` (bounded by the etcd client's timeouts).
async fn refresh_members(node: &Node) {
    let Ok(members) = node.registry.list().await else {
        return;
    };
    if let Some(stream) = node.stream() {
        stream.set_failsafe_members(
            members
                .members
                .iter()
                .map(|m| m.info.node.clone())
                .filter(|n| *n != node.info.node)
                .collect(),
        );
    }
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
                behind: None,
            }
        })
        .collect();
    *node.members.lock().expect("members lock") = reports;
}
