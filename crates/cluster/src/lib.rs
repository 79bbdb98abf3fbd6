//! lifeboat-cluster: one site on several nodes. etcd holds the cluster's state (never
//! home-made consensus): which node leads, under a lease whose key revision is the term
//! (fencing token), and which nodes are members, with how far each has applied.
//!
//! - [`etcd`]: a small etcd v3 client over etcd's JSON gateway, failing over between
//!   endpoints, every request bounded by a short timeout.
//! - [`lease`]: one lease kept alive, with the fence deadline that follows from it.
//! - [`election`]: campaign, lead, resign; the current leader; when this node must stop
//!   writing.
//! - [`members`]: this node's member key and the list of members.
//! - [`failover`]: gather the campaign decision's inputs, decide, campaign.
//! - [`keys`]: the key layout and the JSON values (`docs/cluster-format.md`).
//!
//! The decisions (who campaigns, until when a leader writes, failsafe) are pure functions in
//! `lifeboat_core::cluster`; this crate gathers their inputs and carries them out. It never
//! prints, never reads the terminal, and never starts or stops instances itself: the daemon
//! acts on what it reports.
#![forbid(unsafe_code)]

pub mod election;
pub mod etcd;
pub mod failover;
pub mod keys;
pub mod lease;
pub mod members;
pub mod timing;

pub use election::{
    CampaignOutcome, Election, ElectionError, ElectionStatus, Leader, LossReason, LostLeadership,
    Role,
};
pub use etcd::{EtcdClient, EtcdConfig, EtcdError, EtcdTls, LeaseId};
pub use failover::{FailoverStep, campaign_if_chosen};
pub use keys::{ClusterKeys, MemberRole, MemberValue, NodeAddresses, NodeInfo};
pub use lease::{LeaseKeeper, LeaseState, LeaseStatus};
pub use members::{MemberRegistry, Members, RegistryError, list_members};
pub use timing::ClusterTiming;
