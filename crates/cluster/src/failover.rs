//! The failover step: gather what `lifeboat_core::cluster::decide_campaign` needs from etcd
//! (the live members and their positions, the leader or its absence, the failed leader's
//! zone), ask it, and campaign if it says so.
//!
//! This module never decides anything itself, and never campaigns unless the pure decision
//! says so. The daemon calls [`campaign_if_chosen`] when the election status shows no leader
//! (and again on every change of the member list while there is none).

use std::sync::Arc;

use lifeboat_core::cluster::{
    CampaignDecision, CampaignInput, Candidate, LeaderSeen, decide_campaign,
};

use crate::election::{CampaignOutcome, Election, ElectionError};
use crate::etcd::EtcdError;
use crate::members::{MemberRegistry, Members};

/// The decision's inputs as etcd and this node see them now. `me` is this node's own fresh
/// view (its applied position may be ahead of what the registry shows);
/// `failsafe_promise` is `lifeboat_core::cluster::failsafe_promise_holds` for this node.
pub async fn campaign_input(
    election: &Election,
    registry: &MemberRegistry,
    me: Candidate,
    failsafe_promise: bool,
) -> Result<(CampaignInput, Members), EtcdError> {
    let members = registry.list().await?;
    let status = election.status();
    let input = CampaignInput {
        me,
        members: members.members.iter().map(|m| m.candidate()).collect(),
        leader: status.leader.as_ref().map(|l| LeaderSeen {
            node: l.node().to_string(),
            term: l.term,
        }),
        failed_leader_zone: status.failed_leader_zone().map(str::to_string),
        failsafe_promise,
    };
    Ok((input, members))
}

/// What [`campaign_if_chosen`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverStep {
    /// The decision, with its reason for `status` and the event log.
    pub decision: CampaignDecision,
    /// The campaign's outcome, when the decision was to campaign.
    pub outcome: Option<CampaignOutcome>,
}

/// Decides whether this node should campaign now, and campaigns if so.
pub async fn campaign_if_chosen(
    election: &Election,
    registry: &MemberRegistry,
    me: Candidate,
    failsafe_promise: bool,
) -> Result<FailoverStep, ElectionError> {
    let (input, _) = campaign_input(election, registry, me, failsafe_promise)
        .await
        .map_err(|e| ElectionError::Etcd {
            node: election.me().node.clone(),
            action: "read the members to decide on a campaign",
            source: Arc::new(e),
        })?;
    let decision = decide_campaign(&input);
    let outcome = if decision.should_campaign() {
        Some(election.campaign().await?)
    } else {
        None
    };
    Ok(FailoverStep { decision, outcome })
}
