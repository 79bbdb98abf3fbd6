//! The faults of a site on several nodes: a node's host dies (every process, its etcd member
//! too), a zone dies (every host in it), the primary's host is cut off the LAN, one etcd
//! member dies, a standby's host dies, the primary's link turns slow and lossy. Those that
//! take the primary away wait, as part of their injection, for the site to serve again from
//! another node (the recovery time, polled every 100 ms); undone, each brings the hosts back
//! and waits until their nodes follow as standbys again. Those that leave the primary in
//! place check, undone, that the same node still leads in the same term.
//!
//! Never does: leave a host cut off or down after its undo; if the run ends first, the LAN
//! and everything in it go with the sandbox.

use std::time::Duration;

use lifeboat_control::node::NodeRole;

use super::{FaultKind, Injected, Undone};
use crate::lan::{LinkState, SLOW_LINK_TABLE, SlowLink, nft_available};
use crate::load::Recorder;
use crate::sandbox::Sandbox;

/// What a cluster fault hit, for its undo and the report.
#[derive(Debug, Default, Clone)]
pub struct ClusterHit {
    /// The node that led when it was injected, and its term.
    pub old_primary: usize,
    pub old_term: u64,
    /// The hosts killed or cut off.
    pub hosts: Vec<usize>,
    /// The host whose etcd member was killed (etcd-member-loss).
    pub etcd_host: Option<usize>,
    /// Cut off rather than killed (partition).
    pub cut: bool,
    /// The node that served after it, and how long after the injection.
    pub new_primary: Option<usize>,
    pub recovered: Option<Duration>,
    /// A cut-off primary stopped leading (fenced) while cut off.
    pub fenced: Option<bool>,
    /// standby-loss: the host killed is a standby's (`hosts` holds it).
    pub standby: bool,
    /// slow-link: the host whose link was slowed, and when.
    pub slowed: Option<usize>,
    pub slowed_at: Option<std::time::Instant>,
    /// `durability = "async"`: what the primary had that no standby in another zone had yet,
    /// as its status showed just before the fault (changes).
    pub unconfirmed: Option<u64>,
    /// The hosts killed or cut off held etcd's leader (an etcd election followed).
    pub etcd_leader_lost: Option<bool>,
}

/// What undoing a cluster fault showed, for the report.
#[derive(Debug, Default, Clone)]
pub struct ClusterUndone {
    /// The node hit (or cut off) and its zone.
    pub node: String,
    pub zone: String,
    pub new_primary: Option<String>,
    /// The hosts brought back: did their nodes follow as standbys again, and after how long.
    pub rejoined_as_standby: Option<bool>,
    pub rejoined_after: Option<Duration>,
    pub old_primary_fenced: Option<bool>,
    /// etcd-member-loss, standby-loss, slow-link: the same node still leads, in the same
    /// term.
    pub primary_unchanged: Option<bool>,
    /// slow-link: the link as it was just before it was set back (its counters).
    pub link: Option<LinkState>,
    /// async: the changes no standby in another zone had when the fault came.
    pub unconfirmed: Option<u64>,
    /// The hosts killed or cut off held etcd's leader.
    pub etcd_leader_lost: Option<bool>,
}

/// Why a fault does not apply to this sandbox, if it does not: a cluster fault on one node,
/// or a single-node fault that makes no sense on a cluster. (The rewind faults do apply: the
/// primary rewinds, and its standbys take the rewound state from the vault.)
pub fn not_applicable(kind: FaultKind, sandbox: &Sandbox) -> Option<String> {
    let cluster = sandbox.cluster.is_some();
    match kind {
        _ if kind.cluster_only() && !cluster => {
            Some("the site runs on one node (its manifest has no [cluster])".into())
        }
        FaultKind::KillLifeboat if cluster => Some(
            "on a cluster, node-loss kills a node's Lifeboat with everything on its host".into(),
        ),
        FaultKind::NodeLoss | FaultKind::Partition | FaultKind::ZoneLoss
            if sandbox.cluster.as_ref().is_some_and(|c| c.nodes.len() < 2) =>
        {
            Some(
                "the cluster has one node: losing it is losing the site; add a node in another \
                 zone"
                    .into(),
            )
        }
        FaultKind::StandbyLoss if sandbox.cluster.as_ref().is_some_and(|c| c.nodes.len() < 2) => {
            Some("the cluster has one node: it has no standby to lose".into())
        }
        FaultKind::ZoneLoss => {
            let c = sandbox.cluster.as_ref()?;
            let mut zones: Vec<&str> = c.nodes.iter().map(|n| n.zone.as_str()).collect();
            zones.sort_unstable();
            zones.dedup();
            (zones.len() < 2).then(|| {
                "every node is in one zone: losing it is losing the whole site; put a node in \
                 another zone"
                    .into()
            })
        }
        _ => None,
    }
}

/// Injects a cluster fault and waits (up to `rto`) for another node to serve.
pub async fn inject(
    f: &mut Injected,
    sandbox: &mut Sandbox,
    recorder: &Recorder,
    rto: Duration,
) -> Option<String> {
    sandbox.follow_primary().await;
    let Some(c) = sandbox.cluster.as_ref() else {
        return Some("the site runs on one node".into());
    };
    let Some((p, term)) = c.serving_primary().await else {
        return Some("no node led and served when it was to be injected".into());
    };
    let node = &c.nodes[p];
    let mut hit = ClusterHit {
        old_primary: p,
        old_term: term,
        ..ClusterHit::default()
    };
    let what = format!(
        "node {} (zone {}, {})",
        node.name,
        node.zone,
        c.lan.host(p).name
    );
    if f.kind == FaultKind::StandbyLoss {
        return standby_loss(f, sandbox, recorder, hit, what).await;
    }
    if f.kind == FaultKind::SlowLink {
        if !nft_available() {
            return Some(
                "`nft` is missing, so packets cannot be dropped: install nftables (apt-get \
                 install nftables, or scripts/install-test-deps)"
                    .into(),
            );
        }
        let spec = SlowLink::SIMULATED;
        f.at = recorder.now();
        f.wall = time::OffsetDateTime::now_utc();
        let host = c.lan.host(p);
        if let Err(e) = host.slow_link(spec) {
            return Some(format!("could not slow the link of {what}: {e}"));
        }
        let state = host.link_state();
        hit.slowed = Some(p);
        hit.slowed_at = Some(std::time::Instant::now());
        f.evidence = format!(
            "the link of {what}, the primary: {}; inside it tc shows a {} qdisc on eth0 and \
             nft {}",
            spec.describe(),
            state.qdisc,
            if state.drop_table {
                format!("the table {SLOW_LINK_TABLE}")
            } else {
                format!("NO table {SLOW_LINK_TABLE}")
            }
        );
        f.cluster = Some(hit);
        return None;
    }
    // async: what a takeover now could lose, as the primary says.
    let window = if matches!(
        f.kind,
        FaultKind::NodeLoss | FaultKind::ZoneLoss | FaultKind::Partition
    ) {
        c.status(p).await.and_then(|s| s.loss_window)
    } else {
        None
    };
    let window_text = window.as_ref().map(|w| {
        format!(
            "; durability async: just before, {} lacked {} changes ({} bytes, {:.1} s) the \
             primary had acknowledged",
            w.best_standby
                .as_deref()
                .map_or("every standby in another zone".to_string(), |n| format!(
                    "the best standby in another zone, {n},"
                )),
            w.changes,
            w.bytes,
            w.seconds
        )
    });
    hit.unconfirmed = window.map(|w| w.changes);
    let etcd_leader = c.etcd_leader_host(&sandbox.dialer).await;
    f.at = recorder.now();
    f.wall = time::OffsetDateTime::now_utc();
    match f.kind {
        FaultKind::NodeLoss | FaultKind::ZoneLoss => {
            hit.hosts = if f.kind == FaultKind::ZoneLoss {
                let zone = node.zone.clone();
                (0..c.nodes.len())
                    .filter(|&i| c.nodes[i].zone == zone)
                    .collect()
            } else {
                vec![p]
            };
            let c = sandbox.cluster.as_mut()?;
            let names: Vec<String> = hit.hosts.iter().map(|&h| c.nodes[h].name.clone()).collect();
            let mut pids = Vec::new();
            for &h in &hit.hosts {
                pids.extend(c.kill_host(h));
            }
            f.evidence = format!(
                "SIGKILL to every process of the host{} of {} ({} processes: lifeboat, instances, \
                 etcd member); the primary was {what}",
                if hit.hosts.len() > 1 { "s" } else { "" },
                names.join(", "),
                pids.len()
            );
        }
        FaultKind::Partition => {
            hit.hosts = vec![p];
            hit.cut = true;
            if let Err(e) = c.cut(p) {
                return Some(format!("could not cut {what} off: {e}"));
            }
            f.evidence = format!("the cable of {what}, the primary, unplugged from the LAN");
        }
        FaultKind::EtcdMemberLoss => {
            // The member on the primary's own host (the one its client may talk to), else
            // the first.
            let etcd_hosts = c.etcd_hosts();
            let h = if etcd_hosts.contains(&p) {
                p
            } else {
                etcd_hosts[0]
            };
            let c = sandbox.cluster.as_mut()?;
            let Some(pid) = c.kill_etcd(h) else {
                return Some("the etcd member was not running".into());
            };
            hit.etcd_host = Some(h);
            f.evidence = format!(
                "SIGKILL to the etcd member on {} (pid {pid}); the primary is {what}",
                c.lan.host(h).name
            );
            f.cluster = Some(hit);
            return None;
        }
        _ => return Some(format!("{} is not a cluster fault", f.kind.name())),
    }
    if let Some(text) = window_text {
        f.evidence.push_str(&text);
    }
    if let Some(h) = etcd_leader {
        hit.etcd_leader_lost = Some(hit.hosts.contains(&h));
        f.evidence.push_str(&etcd_leader_text(&hit, h, sandbox));
    }
    // Another node leads and serves: the recovery.
    let c = sandbox.cluster.as_ref()?;
    let took = c
        .wait_until(rto, || async {
            c.serving_primary()
                .await
                .is_some_and(|(i, t)| !hit.hosts.contains(&i) && t > term)
        })
        .await;
    if took.is_some() {
        hit.new_primary = c.serving_primary().await.map(|(i, _)| i);
        hit.recovered = Some(recorder.now().saturating_sub(f.at));
        f.evidence.push_str(&format!(
            "; node {} took over",
            hit.new_primary.map_or("?", |i| c.nodes[i].name.as_str())
        ));
    } else {
        f.evidence
            .push_str(&format!("; no other node served within {rto:?}"));
    }
    if hit.cut {
        // The cut-off primary must have stopped leading by now (its lease ran out).
        let fenced = c
            .wait_until(Duration::from_secs(5), || async {
                c.status(p)
                    .await
                    .is_some_and(|s| !matches!(s.role, Some(NodeRole::Primary { .. })))
            })
            .await
            .is_some();
        hit.fenced = Some(fenced);
        f.evidence.push_str(if fenced {
            "; the cut-off node stopped leading (fenced)"
        } else {
            "; the cut-off node still says it leads"
        });
    }
    f.cluster = Some(hit);
    sandbox.follow_primary().await;
    None
}

/// standby-loss: kill -9 of everything on the host of a standby that streams (one in another
/// zone than the primary's first: the kind sync writes wait for).
async fn standby_loss(
    f: &mut Injected,
    sandbox: &mut Sandbox,
    recorder: &Recorder,
    mut hit: ClusterHit,
    what: String,
) -> Option<String> {
    let c = sandbox.cluster.as_ref()?;
    let p = hit.old_primary;
    let zone = c.nodes[p].zone.clone();
    let mut standbys = Vec::new();
    for i in (0..c.nodes.len()).filter(|&i| i != p) {
        if c.is_streaming_standby(i).await {
            standbys.push(i);
        }
    }
    standbys.sort_by_key(|&i| c.nodes[i].zone == zone);
    let Some(&s) = standbys.first() else {
        return Some("no standby followed the primary when it was to be injected".into());
    };
    let left: Vec<String> = standbys
        .iter()
        .filter(|&&i| i != s && c.nodes[i].zone != zone)
        .map(|&i| format!("{} (zone {})", c.nodes[i].name, c.nodes[i].zone))
        .collect();
    let lost = format!(
        "standby {} (zone {}, {})",
        c.nodes[s].name,
        c.nodes[s].zone,
        c.lan.host(s).name
    );
    hit.hosts = vec![s];
    hit.standby = true;
    let etcd_leader = c.etcd_leader_host(&sandbox.dialer).await;
    f.at = recorder.now();
    f.wall = time::OffsetDateTime::now_utc();
    let c = sandbox.cluster.as_mut()?;
    let pids = c.kill_host(s);
    f.evidence = format!(
        "SIGKILL to every process of the host of {lost} ({} processes: lifeboat, etcd member); \
         the primary is {what}; {}",
        pids.len(),
        if left.is_empty() {
            "no other standby in another zone is left to confirm sync writes".to_string()
        } else {
            format!(
                "{} is left to confirm writes in another zone",
                left.join(", ")
            )
        }
    );
    if let Some(h) = etcd_leader {
        hit.etcd_leader_lost = Some(hit.hosts.contains(&h));
        f.evidence.push_str(&etcd_leader_text(&hit, h, sandbox));
    }
    f.cluster = Some(hit);
    None
}

/// Where etcd's leader was when the hosts were hit, for the evidence.
fn etcd_leader_text(hit: &ClusterHit, h: usize, sandbox: &Sandbox) -> String {
    let host = sandbox
        .cluster
        .as_ref()
        .map(|c| c.lan.host(h).name.clone())
        .unwrap_or_default();
    if hit.hosts.contains(&h) {
        format!("; its etcd member led etcd ({host}): etcd had to elect another leader")
    } else {
        format!("; etcd's leader was elsewhere ({host})")
    }
}

/// Who leads and serves, asked again while no node answers as such (at most `within`).
async fn primary_now(
    c: &crate::sandbox::cluster::ClusterSandbox,
    within: Duration,
) -> Option<(usize, u64)> {
    let deadline = std::time::Instant::now() + within;
    let mut now = c.serving_primary().await;
    while now.is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = c.serving_primary().await;
    }
    now
}

/// Says who leads now against who led when the fault was injected.
fn who_leads(
    c: &crate::sandbox::cluster::ClusterSandbox,
    hit: &ClusterHit,
    now: Option<(usize, u64)>,
) -> String {
    if now == Some((hit.old_primary, hit.old_term)) {
        format!(
            "node {} still leads in term {}",
            c.nodes[hit.old_primary].name, hit.old_term
        )
    } else {
        match now {
            Some((i, t)) => format!("node {} leads now, in term {t}", c.nodes[i].name),
            None => "no node leads and serves".into(),
        }
    }
}

/// slow-link undone: the link's counters read, the qdisc and the table removed and checked
/// gone; who leads after it (a lossy link may have cost the primary its lease: then the
/// old primary must follow as a standby once its link is back).
async fn speed_up(
    sandbox: &Sandbox,
    hit: &ClusterHit,
    h: usize,
    rto: Duration,
    cu: &mut ClusterUndone,
    u: &mut Undone,
) {
    let Some(c) = sandbox.cluster.as_ref() else {
        return;
    };
    let host = c.lan.host(h);
    let during = host.link_state();
    let cleared = host.clear_link();
    let after = host.link_state();
    let gone = cleared.is_ok() && !after.drop_table && after.qdisc != "tbf";
    let now = primary_now(c, rto).await;
    cu.primary_unchanged = Some(now == Some((hit.old_primary, hit.old_term)));
    cu.new_primary = now
        .filter(|&(i, _)| i != hit.old_primary)
        .map(|(i, _)| c.nodes[i].name.clone());
    // Every other node streams as a standby again (a lossy link may have broken their
    // streams, or cost the primary its lease): the next fault starts from a whole cluster.
    let primary = now.map(|(i, _)| i);
    let followers: Vec<usize> = (0..c.nodes.len()).filter(|&i| Some(i) != primary).collect();
    let streaming = c
        .wait_until(rto, || async {
            for &i in &followers {
                if !c.is_streaming_standby(i).await {
                    return false;
                }
            }
            true
        })
        .await;
    if primary.is_some_and(|i| i != hit.old_primary) {
        cu.rejoined_as_standby = Some(streaming.is_some());
        cu.rejoined_after = streaming;
    }
    u.ok = gone && streaming.is_some() && now.is_some();
    let slow_for = hit.slowed_at.map(|t| t.elapsed()).unwrap_or_default();
    let allowed = SlowLink::SIMULATED.rate_kbit as f64 * 1000.0 / 8.0 * slow_for.as_secs_f64();
    u.evidence = format!(
        "while it was slow ({:.1} s) it sent {:.0} KiB (the rate allows {:.0} KiB), nftables \
         dropped {} packets and tbf held {} back over its rate ({} dropped); {}; {}; {}",
        slow_for.as_secs_f64(),
        during.sent_bytes as f64 / 1024.0,
        allowed / 1024.0,
        during.dropped,
        during.overlimits,
        during.qdisc_dropped,
        match &cleared {
            Err(e) => format!("could not set the link back: {e}"),
            Ok(()) if gone => format!(
                "the tbf qdisc and the table {SLOW_LINK_TABLE} removed (tc shows {} on eth0, \
                 nft no table)",
                if after.qdisc.is_empty() {
                    "no qdisc"
                } else {
                    after.qdisc.as_str()
                }
            ),
            Ok(()) => format!("the link is NOT as it was: {after:?}"),
        },
        who_leads(c, hit, now),
        match streaming {
            Some(d) => format!(
                "every other node follows it as a streaming standby after {:.1} s",
                d.as_secs_f64()
            ),
            None => format!("not every other node follows as a streaming standby within {rto:?}"),
        }
    );
    cu.link = Some(during);
}

/// Undoes a cluster fault: hosts back (their etcd member and lifeboat started again, or the
/// cable plugged in), then waits up to `rto` for their nodes to follow as standbys.
pub async fn undo(f: &mut Injected, sandbox: &mut Sandbox, rto: Duration, u: &mut Undone) {
    let Some(hit) = f.cluster.take() else {
        u.ok = true;
        u.evidence = "nothing was injected".into();
        return;
    };
    let Some(c) = sandbox.cluster.as_ref() else {
        return;
    };
    let mut cu = ClusterUndone {
        node: c.nodes[hit.old_primary].name.clone(),
        zone: c.nodes[hit.old_primary].zone.clone(),
        new_primary: hit.new_primary.map(|i| c.nodes[i].name.clone()),
        old_primary_fenced: hit.fenced,
        unconfirmed: hit.unconfirmed,
        etcd_leader_lost: hit.etcd_leader_lost,
        ..ClusterUndone::default()
    };
    u.recovered_after = hit.recovered;
    if hit.standby
        && let Some(&s) = hit.hosts.first()
    {
        cu.node = c.nodes[s].name.clone();
        cu.zone = c.nodes[s].zone.clone();
    }
    if let Some(h) = hit.slowed {
        speed_up(sandbox, &hit, h, rto, &mut cu, u).await;
        u.cluster = Some(cu);
        sandbox.follow_primary().await;
        return;
    }
    if let Some(h) = hit.etcd_host {
        let host = c.lan.host(h).name.clone();
        if let Err(e) = sandbox.start_etcd(h) {
            u.evidence = format!("could not start the etcd member on {host} again: {e}");
            u.cluster = Some(cu);
            return;
        }
        let c = sandbox.cluster.as_ref().expect("a cluster sandbox");
        let dialer = sandbox.dialer.clone();
        let back = c
            .wait_until(rto, || c.etcd_healthy(&dialer, h))
            .await
            .is_some();
        // Who leads once it is back (a status slow to answer is asked again).
        let deadline = std::time::Instant::now() + rto;
        let mut now = c.serving_primary().await;
        while now.is_none() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            now = c.serving_primary().await;
        }
        let unchanged = now == Some((hit.old_primary, hit.old_term));
        cu.primary_unchanged = Some(unchanged);
        u.ok = back;
        u.evidence = format!(
            "the etcd member on {host} started again and {}; {}",
            if back { "healthy" } else { "not healthy" },
            if unchanged {
                format!("node {} still leads in term {}", cu.node, hit.old_term)
            } else {
                match now {
                    Some((i, t)) => format!("node {} leads now, in term {t}", c.nodes[i].name),
                    None => "no node leads and serves".into(),
                }
            }
        );
        u.cluster = Some(cu);
        return;
    }
    let mut back = Vec::new();
    for &h in &hit.hosts {
        let name = sandbox.cluster.as_ref().expect("a cluster sandbox").nodes[h]
            .name
            .clone();
        let started = if hit.cut {
            sandbox.cluster.as_ref().expect("a cluster sandbox").heal(h)
        } else {
            let has_member = sandbox
                .cluster
                .as_ref()
                .is_some_and(|c| c.etcd_hosts().contains(&h));
            let etcd = if has_member {
                sandbox.start_etcd(h).map(|_| ())
            } else {
                Ok(())
            };
            etcd.and_then(|()| sandbox.start_node(h).map(|_| ()))
                .map_err(|e| e.to_string())
        };
        if let Err(e) = started {
            u.evidence = format!("could not bring node {name} back: {e}");
            u.cluster = Some(cu);
            return;
        }
        back.push(name);
    }
    let c = sandbox.cluster.as_ref().expect("a cluster sandbox");
    let hosts = hit.hosts.clone();
    let rejoined = c
        .wait_until(rto, || async {
            for &h in &hosts {
                if !c.is_streaming_standby(h).await {
                    return false;
                }
            }
            true
        })
        .await;
    cu.rejoined_as_standby = Some(rejoined.is_some());
    cu.rejoined_after = rejoined;
    u.ok = rejoined.is_some();
    // A standby lost: the same node must still lead, in the same term.
    let leads = if hit.standby {
        let now = primary_now(c, rto).await;
        cu.primary_unchanged = Some(now == Some((hit.old_primary, hit.old_term)));
        cu.new_primary = now
            .filter(|&(i, _)| i != hit.old_primary)
            .map(|(i, _)| c.nodes[i].name.clone());
        format!("; {}", who_leads(c, &hit, now))
    } else {
        String::new()
    };
    u.evidence = format!(
        "{} {}; {}{leads}",
        back.join(", "),
        if hit.cut {
            "plugged back in"
        } else {
            "started again (etcd member and lifeboat)"
        },
        match rejoined {
            Some(d) => format!(
                "following the primary as a standby after {:.1} s",
                d.as_secs_f64()
            ),
            None => format!("not following as a standby within {rto:?}"),
        }
    );
    u.cluster = Some(cu);
    sandbox.follow_primary().await;
}
