//! Cluster decisions: who may campaign for leadership after a leader is gone, until when a
//! leader may write (fencing), and whether a leader that lost etcd may keep serving (failsafe).
//!
//! Pure: plain values in, plain values out. This module never reads a clock, never talks to
//! etcd or another node, and never sleeps: times are passed in as values of any type that can
//! add a `Duration` (`std::time::Instant` in the daemon, `Duration` since an origin in tests).
//! `lifeboat-cluster` gathers the inputs from etcd and carries the decisions out.
//!
//! The safety argument these rules share: a leader stops writing by a deadline measured from
//! the moment it *sent* the request that proved it was still leader (a lease renewal, or a
//! standby's confirmation), minus a margin; whoever grants that proof (etcd, a standby) counts
//! its own period from when it *received* the request, which is later. So the leader's deadline
//! always falls before anyone else may take over, by at least the margin.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Add;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A leadership term: the etcd revision at which the leader key was created. It grows with
/// every new leader, so it is the fencing token: a write carrying an older term is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Term(pub u64);

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "term {}", self.0)
    }
}

/// How far a node has applied the site's history: the term of the leader that wrote the last
/// applied commit, and that commit's sequence number. Ordered by term first: a commit of a
/// later term supersedes any commit of an earlier one, whatever their sequence numbers.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    pub term: u64,
    pub seq: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.term, self.seq)
    }
}

/// Whether a node can take over: a node with a failed disk, a diverged state or instances that
/// cannot start says so, and is not chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum Health {
    Healthy,
    Unhealthy(String),
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }
}

/// What the failover decision needs to know about one live member (its registry key exists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node: String,
    pub zone: String,
    pub applied: Position,
    pub health: Health,
    /// Set by a primary that is handing over on purpose (`lifeboat switchover --to NODE`):
    /// the node that must take over, and no other.
    pub hands_over_to: Option<String>,
}

/// The current leader as etcd shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderSeen {
    pub node: String,
    pub term: Term,
}

/// Everything [`decide_campaign`] looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignInput {
    /// This node, with its own fresh values (not what the registry last showed of it).
    pub me: Candidate,
    /// Every live member; an entry with my name is ignored in favour of `me`.
    pub members: Vec<Candidate>,
    /// The leader key's holder, if the key exists.
    pub leader: Option<LeaderSeen>,
    /// The zone of the leader whose key just went away, if known.
    pub failed_leader_zone: Option<String>,
    /// I confirmed a leader to keep serving in failsafe mode within the last TTL
    /// ([`failsafe_promise_holds`]): that leader may still be writing.
    pub failsafe_promise: bool,
}

/// Campaign now, or wait; with the reason in words for `status` and the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CampaignDecision {
    Campaign { reason: String },
    Wait { reason: String },
}

impl CampaignDecision {
    pub fn should_campaign(&self) -> bool {
        matches!(self, CampaignDecision::Campaign { .. })
    }

    pub fn reason(&self) -> &str {
        match self {
            CampaignDecision::Campaign { reason } | CampaignDecision::Wait { reason } => reason,
        }
    }
}

/// Whether this node should campaign for leadership now.
///
/// Only when there is no leader, I am healthy, I made no failsafe promise, and I am the best
/// candidate: the most caught-up healthy member (ties go to the node name that sorts first),
/// looking only outside the failed leader's zone when any healthy member is outside it. Every
/// node runs the same rule on the same registry, so at most one of them sees itself as best;
/// etcd's create-if-absent transaction settles any race left by stale views.
pub fn decide_campaign(input: &CampaignInput) -> CampaignDecision {
    use CampaignDecision::{Campaign, Wait};
    let me = &input.me;
    if let Some(leader) = &input.leader {
        let reason = if leader.node == me.node {
            format!("this node leads ({})", leader.term)
        } else {
            format!("{} leads ({})", leader.node, leader.term)
        };
        return Wait { reason };
    }
    if input.failsafe_promise {
        return Wait {
            reason: "this node confirmed the leader in failsafe mode within the last lease TTL; \
                     that leader may still be writing"
                .into(),
        };
    }
    if let Health::Unhealthy(why) = &me.health {
        return Wait {
            reason: format!("this node is not healthy: {why}"),
        };
    }
    // A switchover names its successor: it campaigns, everybody else waits, as long as the
    // successor is a live, healthy member (else the usual rule applies).
    let handover = input
        .members
        .iter()
        .chain(std::iter::once(me))
        .find_map(|c| Some((c.node.as_str(), c.hands_over_to.as_deref()?)));
    if let Some((from, to)) = handover {
        if to == me.node {
            return Campaign {
                reason: format!("{from} hands over to this node (switchover)"),
            };
        }
        let successor_live = input
            .members
            .iter()
            .any(|c| c.node == to && c.health.is_healthy());
        if successor_live {
            return Wait {
                reason: format!("{from} hands over to {to} (switchover)"),
            };
        }
    }
    let mut pool: Vec<&Candidate> = input
        .members
        .iter()
        .filter(|c| c.node != me.node && c.health.is_healthy())
        .chain(std::iter::once(me))
        .collect();
    if let Some(failed) = &input.failed_leader_zone
        && pool.iter().any(|c| &c.zone != failed)
    {
        if &me.zone == failed {
            let other = pool
                .iter()
                .find(|c| &c.zone != failed)
                .expect("checked above");
            return Wait {
                reason: format!(
                    "the failed leader was in this node's zone {failed}, and {} in zone {} is a \
                     healthy candidate",
                    other.node, other.zone
                ),
            };
        }
        pool.retain(|c| &c.zone != failed);
    }
    // Most caught up first; among equals, the name that sorts first.
    let best = pool
        .iter()
        .copied()
        .max_by(|a, b| a.applied.cmp(&b.applied).then(b.node.cmp(&a.node)))
        .expect("the pool holds at least me");
    if best.node == me.node {
        let others = pool.len() - 1;
        Campaign {
            reason: format!(
                "no leader; this node (zone {}, applied {}) is the most caught-up of {} healthy \
                 candidate{}",
                me.zone,
                me.applied,
                others + 1,
                if others == 0 { "" } else { "s" }
            ),
        }
    } else if best.applied > me.applied {
        Wait {
            reason: format!(
                "{} (zone {}) has applied more: {} against this node's {}",
                best.node, best.zone, best.applied, me.applied
            ),
        }
    } else {
        Wait {
            reason: format!(
                "{} (zone {}) is as caught up ({}) and its name sorts first",
                best.node, best.zone, best.applied
            ),
        }
    }
}

/// The instant by which a leader must have stopped writing if no renewal succeeds after the
/// one sent at `last_renewal_sent`.
///
/// etcd counts the lease's `ttl` from when its leader *receives* the renewal, which is after
/// we sent it, so the lease cannot expire (and no other node can take over) before
/// `last_renewal_sent + ttl`. The `margin` is what the fence itself needs before that: the
/// time for the daemon to notice the deadline and stop writes (a late timer, a busy machine,
/// closing the front door), and any difference between the two machines' clock rates.
pub fn fence_deadline<T: Add<Duration, Output = T>>(
    last_renewal_sent: T,
    ttl: Duration,
    margin: Duration,
) -> T {
    last_renewal_sent + ttl.saturating_sub(margin)
}

/// Whether a leader whose last successful renewal was sent at `last_renewal_sent` must have
/// stopped writing by `now` ([`fence_deadline`] has come).
pub fn must_stop_writing<T: Add<Duration, Output = T> + Ord>(
    last_renewal_sent: T,
    ttl: Duration,
    margin: Duration,
    now: T,
) -> bool {
    now >= fence_deadline(last_renewal_sent, ttl, margin)
}

/// Everything [`decide_failsafe`] looks at, from the leader's side.
///
/// Failsafe (after Patroni's failsafe mode): when etcd loses quorum while every node is
/// healthy, the leader's lease can not be renewed, yet nobody else can take over either. The
/// leader keeps serving as long as *every* member it last knew confirms it directly; a member
/// that confirms promises not to campaign for one TTL ([`failsafe_promise_holds`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailsafeInput<T> {
    /// The last lease renewal (or any request to etcd) succeeded within the TTL.
    pub etcd_reachable: bool,
    /// This node held the leader key, with this term, when etcd last answered.
    pub my_term: Option<Term>,
    /// The other members in the registry when etcd last answered (not this node).
    pub members_last_known: BTreeSet<String>,
    /// For each member that confirmed this leader and term: when this node *sent* the request
    /// that member confirmed (the latest such request).
    pub confirmations: BTreeMap<String, T>,
    pub ttl: Duration,
    pub margin: Duration,
    pub now: T,
}

/// What the leader does while etcd can not renew its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailsafeDecision<T> {
    /// etcd answers (or this node does not lead): the lease alone decides, as usual.
    NotNeeded,
    /// Every member last known confirmed this leader: keep serving until `until` (the
    /// earliest confirmation's deadline), unless a newer round of confirmations extends it.
    KeepServing { until: T, reason: String },
    /// Stop writing now: some member did not confirm in time.
    StopWriting { reason: String },
}

/// Whether a leader that can not reach etcd keeps serving. See [`FailsafeInput`].
///
/// The deadline for each confirmation is computed as for a lease renewal
/// ([`fence_deadline`]): from when this node sent the request, which the member answered
/// later, so its promise not to campaign outlasts this node's writes by at least the margin.
pub fn decide_failsafe<T>(input: &FailsafeInput<T>) -> FailsafeDecision<T>
where
    T: Add<Duration, Output = T> + Ord + Copy,
{
    let Some(term) = input.my_term else {
        return FailsafeDecision::NotNeeded;
    };
    if input.etcd_reachable {
        return FailsafeDecision::NotNeeded;
    }
    let mut until: Option<T> = None;
    let mut missing = Vec::new();
    for member in &input.members_last_known {
        let deadline = input
            .confirmations
            .get(member)
            .map(|&sent| fence_deadline(sent, input.ttl, input.margin))
            .filter(|&d| d > input.now);
        match deadline {
            Some(d) => until = Some(until.map_or(d, |u| u.min(d))),
            None => missing.push(member.as_str()),
        }
    }
    if !missing.is_empty() {
        return FailsafeDecision::StopWriting {
            reason: format!(
                "etcd is unreachable and {} did not confirm this leader ({term}) within the \
                 lease TTL",
                missing.join(", ")
            ),
        };
    }
    match until {
        Some(until) => FailsafeDecision::KeepServing {
            until,
            reason: format!(
                "etcd is unreachable; all {} other member{} confirmed this leader ({term})",
                input.members_last_known.len(),
                if input.members_last_known.len() == 1 {
                    ""
                } else {
                    "s"
                }
            ),
        },
        // A leader alone: nobody can confirm it, and nobody is there to take over. Serving on
        // without etcd would be safe only if no other node could join meanwhile, which this
        // node can not know: stop.
        None => FailsafeDecision::StopWriting {
            reason: format!(
                "etcd is unreachable and no other member is known to confirm this leader ({term})"
            ),
        },
    }
}

/// A leader's request to a standby, sent over the node-to-node stream every renewal interval
/// while etcd is unreachable: "I lead with this term; confirm that you will not take over".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailsafeRequest {
    /// Format version of this message: 1.
    pub version: u32,
    pub leader: String,
    pub term: Term,
    /// The members the leader counts on (its last known registry), so every standby can see
    /// that it is one of them.
    pub members: Vec<String>,
}

/// A standby's answer to a [`FailsafeRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailsafeAnswer {
    /// Format version of this message: 1.
    pub version: u32,
    pub node: String,
    pub term: Term,
    pub confirmed: bool,
    /// Why not, when `confirmed` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_because: Option<String>,
}

/// What a standby knows when a [`FailsafeRequest`] arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmInput {
    pub request: FailsafeRequest,
    /// This node reached etcd within the last TTL.
    pub etcd_reachable: bool,
    /// The leader key as this node last saw it in etcd (`None`: the key was absent).
    pub leader_in_etcd: Option<LeaderSeen>,
    /// The highest term this node has seen anywhere.
    pub highest_term_seen: Term,
    /// This node holds the leader key itself.
    pub i_lead: bool,
}

/// Whether a standby confirms a leader in failsafe mode. `Ok(())` means confirm: the standby
/// must then not campaign for one TTL from now ([`failsafe_promise_holds`]).
///
/// A standby that reaches etcd confirms only the leader etcd shows: if the key is gone there,
/// etcd has quorum and the ordinary failover must run, so the old leader must fence. One that
/// can not reach etcd confirms any leader whose term is not older than what it has seen.
pub fn confirm_leader(input: &ConfirmInput) -> Result<(), String> {
    let req = &input.request;
    if input.i_lead {
        return Err("this node holds the leader key itself".into());
    }
    if req.term < input.highest_term_seen {
        return Err(format!(
            "{} is older than {} seen by this node",
            req.term, input.highest_term_seen
        ));
    }
    if input.etcd_reachable {
        return match &input.leader_in_etcd {
            Some(l) if l.node == req.leader && l.term == req.term => Ok(()),
            Some(l) => Err(format!("etcd shows {} as leader ({})", l.node, l.term)),
            None => Err("etcd answers and shows no leader".into()),
        };
    }
    Ok(())
}

/// Whether a standby's failsafe promise still holds at `now`: it confirmed a leader at
/// `last_confirmed` (when it *answered*, by its own clock) and must not campaign for one TTL
/// after that, since that leader may write until its send time plus TTL minus margin.
pub fn failsafe_promise_holds<T: Add<Duration, Output = T> + Ord>(
    last_confirmed: Option<T>,
    ttl: Duration,
    now: T,
) -> bool {
    last_confirmed.is_some_and(|at| now < at + ttl)
}

#[cfg(test)]
mod tests;
