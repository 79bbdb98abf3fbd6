//! The member registry and the failover step against a real etcd.

mod common;

use std::time::Duration;

use common::{EtcdCluster, prefix, wait_for};
use lifeboat_cluster::{
    CampaignOutcome, ClusterKeys, ClusterTiming, Election, MemberRegistry, MemberRole, MemberValue,
    NodeAddresses, NodeInfo, campaign_if_chosen, list_members,
};
use lifeboat_core::cluster::{CampaignDecision, Position};

fn info(name: &str, zone: &str) -> NodeInfo {
    NodeInfo {
        node: name.into(),
        zone: zone.into(),
        addresses: NodeAddresses {
            peer: format!("127.0.0.1:74{}", name.len()),
            front_door: "127.0.0.1:8080".into(),
        },
    }
}

async fn join(
    etcd: &EtcdCluster,
    keys: &ClusterKeys,
    name: &str,
    zone: &str,
    applied: (u64, u64),
) -> MemberRegistry {
    let mut value = MemberValue::new(info(name, zone), MemberRole::Standby);
    value.applied = Position {
        term: applied.0,
        seq: applied.1,
    };
    MemberRegistry::join(etcd.client(), keys.clone(), value, ClusterTiming::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn members_are_listed_with_their_latest_values_and_go_when_they_stop_renewing() {
    let etcd = EtcdCluster::single();
    let keys = ClusterKeys::with_prefix(&prefix("members"));
    let a = join(&etcd, &keys, "a", "z1", (0, 0)).await;
    let b = join(&etcd, &keys, "b", "z2", (0, 0)).await;
    let listed = a.list().await.unwrap();
    let names: Vec<&str> = listed
        .members
        .iter()
        .map(|m| m.info.node.as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert!(listed.unreadable.is_empty());

    // Many updates in a row (written coalesced): the latest value arrives.
    for seq in 1..=100 {
        b.update(|v| v.applied = Position { term: 3, seq });
    }
    let c = etcd.client();
    wait_for(
        "b's position is published",
        Duration::from_secs(5),
        || async {
            let m = list_members(&c, &keys).await.unwrap();
            m.members
                .iter()
                .any(|m| m.info.node == "b" && m.applied == Position { term: 3, seq: 100 })
        },
    )
    .await;

    // b stops (a crash): its key goes after the TTL. a leaves: its key goes at once.
    drop(b);
    a.leave().await.unwrap();
    let names: Vec<String> = list_members(&c, &keys)
        .await
        .unwrap()
        .members
        .into_iter()
        .map(|m| m.info.node)
        .collect();
    assert_eq!(names, ["b"]);
    wait_for("b's key expires", Duration::from_secs(10), || async {
        list_members(&c, &keys).await.unwrap().members.is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_value_another_program_wrote_is_listed_as_unreadable_not_dropped() {
    let etcd = EtcdCluster::single();
    let keys = ClusterKeys::with_prefix(&prefix("unreadable"));
    let c = etcd.client();
    c.put(&keys.member("x"), b"not json", None).await.unwrap();
    let m = list_members(&c, &keys).await.unwrap();
    assert!(m.members.is_empty());
    assert_eq!(m.unreadable.len(), 1);
    let text = m.unreadable[0].to_string();
    assert!(
        text.contains("/members/x does not hold a Lifeboat value"),
        "{text}"
    );
}

#[tokio::test]
async fn after_a_leader_crashes_the_most_caught_up_standby_outside_its_zone_takes_over() {
    let etcd = EtcdCluster::single();
    let keys = ClusterKeys::with_prefix(&prefix("failover"));
    let timing = ClusterTiming::default();
    let elect = |name, zone| {
        Election::start(etcd.client(), keys.clone(), info(name, zone), timing).unwrap()
    };

    let a = elect("a", "z1");
    let a_member = join(&etcd, &keys, "a", "z1", (0, 0)).await;
    let CampaignOutcome::Won { term } = a.campaign().await.unwrap() else {
        panic!("a is alone")
    };
    // b shares a's zone and is the furthest ahead; c and d are elsewhere, c ahead of d.
    let t = term.0;
    let standbys = [
        ("b", "z1", (t, 30)),
        ("c", "z2", (t, 20)),
        ("d", "z3", (t, 10)),
    ];
    let mut nodes = Vec::new();
    for (name, zone, applied) in standbys {
        nodes.push((
            elect(name, zone),
            join(&etcd, &keys, name, zone, applied).await,
        ));
    }

    // a crashes: its election and member key stop being renewed.
    drop(a);
    drop(a_member);
    for (e, _) in &nodes {
        let mut rx = e.subscribe();
        tokio::time::timeout(Duration::from_secs(10), async {
            while rx.borrow_and_update().leader.is_some() {
                rx.changed().await.unwrap();
            }
        })
        .await
        .expect("every standby sees the leader key go");
        assert_eq!(e.status().failed_leader_zone(), Some("z1"));
    }

    let mut steps = Vec::new();
    for (e, m) in &nodes {
        let me = m.value().candidate();
        steps.push(campaign_if_chosen(e, m, me, false).await.unwrap());
    }
    assert_eq!(
        steps[0].decision,
        CampaignDecision::Wait {
            reason: "the failed leader was in this node's zone z1, and c in zone z2 is a \
                     healthy candidate"
                .into()
        }
    );
    assert!(steps[1].decision.should_campaign(), "{:?}", steps[1]);
    let Some(CampaignOutcome::Won { term: new_term }) = steps[1].outcome else {
        panic!("{:?}", steps[1])
    };
    assert!(new_term > term);
    // d decided after c won: it sees c lead, or (if its watch has not shown c's key yet)
    // that c is ahead. Either way it waits.
    assert!(!steps[2].decision.should_campaign(), "{:?}", steps[2]);
}
