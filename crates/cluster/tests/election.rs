//! Leader election against a real etcd: races, takeovers, fencing by term, resigning.

mod common;

use std::time::Duration;

use common::gate::{Gate, Mode};
use common::{EtcdCluster, prefix, wait_for};
use lifeboat_cluster::election::{delete_leader_if_term, put_if_term};
use lifeboat_cluster::{
    CampaignOutcome, ClusterKeys, ClusterTiming, Election, ElectionError, EtcdClient, EtcdConfig,
    LossReason, NodeAddresses, NodeInfo, Role,
};
use lifeboat_core::cluster::Term;
use tokio::time::Instant;

fn node(name: &str, zone: &str) -> NodeInfo {
    NodeInfo {
        node: name.into(),
        zone: zone.into(),
        addresses: NodeAddresses {
            peer: "127.0.0.1:7440".into(),
            front_door: "127.0.0.1:8080".into(),
        },
    }
}

fn start(client: EtcdClient, keys: &ClusterKeys, name: &str, zone: &str) -> Election {
    Election::start(
        client,
        keys.clone(),
        node(name, zone),
        ClusterTiming::default(),
    )
    .unwrap()
}

async fn key_term(client: &EtcdClient, keys: &ClusterKeys) -> Option<Term> {
    let r = client.get(&keys.leader()).await.unwrap();
    r.kvs.first().map(|kv| Term(kv.create_revision as u64))
}

#[tokio::test]
async fn of_racing_candidates_exactly_one_wins_and_its_term_is_the_keys_revision() {
    let etcd = EtcdCluster::single();
    for round in 0..3 {
        let keys = ClusterKeys::with_prefix(&prefix(&format!("race-{round}")));
        let nodes: Vec<Election> = ["a", "b", "c"]
            .iter()
            .map(|n| start(etcd.client(), &keys, n, n))
            .collect();
        let (ra, rb, rc) = tokio::join!(
            nodes[0].campaign(),
            nodes[1].campaign(),
            nodes[2].campaign()
        );
        let outcomes = [ra.unwrap(), rb.unwrap(), rc.unwrap()];
        let won: Vec<(usize, Term)> = outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, o)| match o {
                CampaignOutcome::Won { term } => Some((i, *term)),
                _ => None,
            })
            .collect();
        assert_eq!(won.len(), 1, "{outcomes:?}");
        let (winner, term) = won[0];
        assert_eq!(key_term(&etcd.client(), &keys).await, Some(term));
        for (i, o) in outcomes.iter().enumerate() {
            if i != winner {
                let CampaignOutcome::Lost { leader } = o else {
                    panic!("{o:?}")
                };
                assert_eq!(
                    (leader.node(), leader.term),
                    (nodes[winner].me().node.as_str(), term)
                );
            }
        }
        assert!(nodes[winner].may_write());
        // Every node's view converges on the winner.
        for n in &nodes {
            wait_for(
                "every node sees the leader",
                Duration::from_secs(5),
                || async { n.status().leader.is_some_and(|l| l.term == term) },
            )
            .await;
        }
    }
}

#[tokio::test]
async fn a_leader_cut_off_from_etcd_is_fenced_before_a_waiting_standby_takes_over_with_a_higher_term()
 {
    let etcd = EtcdCluster::single();
    let keys = ClusterKeys::with_prefix(&prefix("takeover"));
    let gate = Gate::open(etcd.members[0].client_port).await;
    let a_client = EtcdClient::new(EtcdConfig::new([gate.url()])).unwrap();
    let a = start(a_client, &keys, "a", "z1");
    let b = start(etcd.client(), &keys, "b", "z2");
    let CampaignOutcome::Won { term: t1 } = a.campaign().await.unwrap() else {
        panic!("a is alone")
    };
    wait_for("b sees a lead", Duration::from_secs(5), || async {
        b.status().leader.is_some_and(|l| l.term == t1)
    })
    .await;

    // a's path to etcd breaks: its renewals fail from now on.
    gate.set(Mode::Closed);
    let mut a_rx = a.subscribe();
    let fence_deadline = match a.status().role {
        Role::Leader { fence_deadline, .. } => fence_deadline,
        other => panic!("{other:?}"),
    };
    // a notices on its own, at its fence deadline.
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Role::Unconfirmed { term, since } = a_rx.borrow_and_update().role {
                assert_eq!(term, t1);
                assert!(since >= fence_deadline);
                return;
            }
            a_rx.changed().await.unwrap();
        }
    })
    .await
    .expect("a's role turns unconfirmed");
    assert!(!a.may_write());
    let a_stopped = Instant::now();

    // etcd expires a's lease; b sees the key go, never before a had to stop writing.
    let mut b_rx = b.subscribe();
    tokio::time::timeout(Duration::from_secs(10), async {
        while b_rx.borrow_and_update().leader.is_some() {
            b_rx.changed().await.unwrap();
        }
    })
    .await
    .expect("the leader key expires");
    let b_saw_no_leader = Instant::now();
    assert!(b_saw_no_leader >= a_stopped);
    assert_eq!(b.status().failed_leader_zone(), Some("z1"));

    let CampaignOutcome::Won { term: t2 } = b.campaign().await.unwrap() else {
        panic!("b campaigns alone")
    };
    assert!(t2 > t1, "{t2} after {t1}");
    assert_eq!(key_term(&etcd.client(), &keys).await, Some(t2));

    // a's path comes back: etcd says its lease is gone, and a knows it lost.
    gate.set(Mode::Open);
    wait_for("a learns it lost", Duration::from_secs(5), || async {
        let s = a.status();
        s.role == Role::Standby && s.leader.is_some_and(|l| l.term == t2)
    })
    .await;
    let lost = a.status().last_lost.unwrap();
    assert_eq!(lost.term, t1);
    // Whichever a hears first: etcd saying its lease is gone, or b's key.
    assert!(
        lost.reason == LossReason::LeaseGone
            || lost.reason
                == LossReason::KeyTaken {
                    by: "b".into(),
                    term: t2
                },
        "{lost:?}"
    );
}

#[tokio::test]
async fn a_fenced_leaders_writes_and_resignation_with_its_old_term_are_refused_by_etcd() {
    let etcd = EtcdCluster::single();
    let keys = ClusterKeys::with_prefix(&prefix("fenced"));
    let a = start(etcd.client(), &keys, "a", "z1");
    let CampaignOutcome::Won { term: t1 } = a.campaign().await.unwrap() else {
        panic!("a is alone")
    };
    let data = format!("{}/data", keys.prefix()).into_bytes();
    a.put_as_leader(&data, b"from a").await.unwrap();
    // a crashes: its renewals stop, and its lease runs out in etcd.
    drop(a);
    let b = start(etcd.client(), &keys, "b", "z2");
    let c = etcd.client();
    wait_for("a's key expires", Duration::from_secs(10), || async {
        key_term(&c, &keys).await.is_none()
    })
    .await;
    let CampaignOutcome::Won { term: t2 } = b.campaign().await.unwrap() else {
        panic!("b campaigns alone")
    };

    // Whatever a still believes, a write carrying its term is refused.
    let e = put_if_term(&c, &keys, t1, &data, b"late write from a")
        .await
        .unwrap_err();
    assert!(
        matches!(e, ElectionError::Fenced { term, current: Some(now) } if term == t1 && now == t2),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "a write as leader of {t1} was refused by etcd: the leader key now has {t2}; this \
             node is no longer the leader and must not write"
        )
    );
    assert!(!delete_leader_if_term(&c, &keys, t1).await.unwrap());
    assert_eq!(key_term(&c, &keys).await, Some(t2));
    assert_eq!(c.get(&data).await.unwrap().kvs[0].value, b"from a");
    b.put_as_leader(&data, b"from b").await.unwrap();
}

#[tokio::test]
async fn a_leader_that_resigns_hands_over_at_once() {
    let etcd = EtcdCluster::single();
    let keys = ClusterKeys::with_prefix(&prefix("resign"));
    let a = start(etcd.client(), &keys, "a", "z1");
    let b = start(etcd.client(), &keys, "b", "z2");
    let CampaignOutcome::Won { term: t1 } = a.campaign().await.unwrap() else {
        panic!("a is alone")
    };
    let lease = a.status().lease.id.unwrap();
    a.resign().await.unwrap();
    assert!(!a.may_write());
    assert_eq!(a.status().last_lost.unwrap().reason, LossReason::Resigned);
    assert_eq!(key_term(&etcd.client(), &keys).await, None);
    // No waiting for a TTL: b takes over at once.
    let CampaignOutcome::Won { term: t2 } = b.campaign().await.unwrap() else {
        panic!("the key is free")
    };
    assert!(t2 > t1);
    // a's old lease is revoked; it has a fresh one for later campaigns.
    wait_for("a has a new lease", Duration::from_secs(5), || async {
        a.status().lease.id.is_some_and(|id| id != lease)
    })
    .await;
    let e = a.put_as_leader(b"/x", b"y").await.unwrap_err();
    assert!(matches!(e, ElectionError::NotLeader { .. }), "{e}");
}

#[tokio::test]
async fn a_leader_keeps_renewing_and_its_deadline_moves_ahead() {
    let etcd = EtcdCluster::single();
    let keys = ClusterKeys::with_prefix(&prefix("renew"));
    let a = start(etcd.client(), &keys, "a", "z1");
    a.campaign().await.unwrap();
    let first = match a.status().role {
        Role::Leader { fence_deadline, .. } => fence_deadline,
        other => panic!("{other:?}"),
    };
    // Longer than the TTL: the lease lives on because it is renewed.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let Role::Leader { fence_deadline, .. } = a.status().role else {
        panic!("{:?}", a.status().role)
    };
    assert!(fence_deadline > first + Duration::from_secs(2));
    assert!(a.may_write());
}
