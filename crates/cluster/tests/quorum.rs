//! A leader on a 3-member etcd: one member down changes nothing, two down (no quorum) fences
//! it at its deadline, and quorum back gives it its lease and term again.

mod common;

use std::time::Duration;

use common::{EtcdCluster, prefix, wait_for};
use lifeboat_cluster::{
    CampaignOutcome, ClusterKeys, ClusterTiming, Election, EtcdClient, EtcdConfig, LeaseState,
    NodeAddresses, NodeInfo, Role,
};
use tokio::time::Instant;

fn node(name: &str) -> NodeInfo {
    NodeInfo {
        node: name.into(),
        zone: "z1".into(),
        addresses: NodeAddresses {
            peer: "127.0.0.1:7440".into(),
            front_door: "127.0.0.1:8080".into(),
        },
    }
}

#[tokio::test]
async fn a_leaders_renewals_move_past_a_dead_etcd_member_without_fencing_it() {
    let mut etcd = EtcdCluster::start(3);
    let raft_leader = etcd.raft_leader().expect("the cluster has a raft leader");
    // The member the client talks to first, and not etcd's raft leader (killing that one
    // makes etcd elect another, which takes about its election timeout, 1 s).
    let first = (0..3).find(|&i| i != raft_leader).unwrap();
    let mut endpoints = vec![etcd.members[first].url()];
    endpoints.extend(
        (0..3)
            .filter(|&i| i != first)
            .map(|i| etcd.members[i].url()),
    );
    let client = EtcdClient::new(EtcdConfig::new(endpoints)).unwrap();
    let keys = ClusterKeys::with_prefix(&prefix("member-down"));
    let a = Election::start(client, keys, node("a"), ClusterTiming::default()).unwrap();
    let CampaignOutcome::Won { term } = a.campaign().await.unwrap() else {
        panic!("a is alone")
    };
    etcd.kill(first);
    let killed_at = Instant::now();
    // For longer than a TTL, a may write all along: every renewal finds a live member.
    while killed_at.elapsed() < Duration::from_secs(3) {
        let s = a.status();
        assert!(
            s.may_write(Instant::now()),
            "a was fenced with one etcd member down: {:?} (last error: {:?})",
            s.role,
            s.lease.last_error.map(|e| e.to_string())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = a.status();
    assert_eq!(s.my_term(), Some(term));
    assert!(s.lease.last_renewal_sent.unwrap() > killed_at);
}

#[tokio::test]
async fn stopping_two_of_three_etcd_members_fails_renewals_and_the_fence_deadline_passes() {
    let mut etcd = EtcdCluster::start(3);
    let keys = ClusterKeys::with_prefix(&prefix("quorum"));
    let a = Election::start(etcd.client(), keys, node("a"), ClusterTiming::default()).unwrap();
    let CampaignOutcome::Won { term } = a.campaign().await.unwrap() else {
        panic!("a is alone")
    };
    etcd.kill(1);
    etcd.kill(2);
    let mut rx = a.subscribe();
    let since = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Role::Unconfirmed { since, .. } = rx.borrow_and_update().role {
                return since;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("a was not fenced without quorum:\n{}", etcd.logs()));
    let s = a.status();
    assert!(!s.may_write(Instant::now()));
    assert_eq!(s.lease.state, LeaseState::Unconfirmed);
    // The deadline is the last successful renewal's send time + TTL - margin, and it was
    // reported when it came, not later.
    let sent = s.lease.last_renewal_sent.unwrap();
    assert_eq!(since, sent + Duration::from_millis(1_500));
    assert!(Instant::now() - since < Duration::from_millis(500));
    assert!(s.lease.last_error.is_some());

    // Quorum back: etcd's new raft leader extends every lease, the next renewal succeeds, and
    // a leads again with the same term (what failsafe relies on).
    etcd.restart(1);
    etcd.restart(2);
    wait_for("a leads again", Duration::from_secs(20), || async {
        a.may_write()
    })
    .await;
    assert_eq!(a.status().my_term(), Some(term));
}
