//! The etcd client against a real etcd (3.4's JSON gateway).

mod common;

use std::time::Duration;

use common::gate::{Gate, Mode};
use common::{EtcdCluster, prefix};
use lifeboat_cluster::etcd::{Compare, KeepAlive, Op, OpResult, Txn, WatchEvent};
use lifeboat_cluster::{EtcdClient, EtcdConfig, EtcdError};

#[tokio::test]
async fn keys_are_written_read_listed_and_deleted() {
    let etcd = EtcdCluster::single();
    let c = etcd.client();
    let p = prefix("kv");
    let rev = c
        .put(format!("{p}/a").as_bytes(), b"1", None)
        .await
        .unwrap();
    c.put(format!("{p}/b").as_bytes(), b"2", None)
        .await
        .unwrap();
    c.put(format!("{p}c").as_bytes(), b"not under p/", None)
        .await
        .unwrap();
    let a = c.get(format!("{p}/a").as_bytes()).await.unwrap();
    assert_eq!(a.kvs.len(), 1);
    assert_eq!(a.kvs[0].value, b"1");
    assert_eq!(a.kvs[0].create_revision, rev);
    assert_eq!(a.kvs[0].lease, None);
    let all = c.get_prefix(format!("{p}/").as_bytes()).await.unwrap();
    let values: Vec<&[u8]> = all.kvs.iter().map(|kv| kv.value.as_slice()).collect();
    assert_eq!(values, vec![b"1".as_slice(), b"2".as_slice()]);
    assert_eq!(c.delete(format!("{p}/a").as_bytes()).await.unwrap(), 1);
    assert!(
        c.get(format!("{p}/a").as_bytes())
            .await
            .unwrap()
            .kvs
            .is_empty()
    );
}

#[tokio::test]
async fn a_create_if_absent_transaction_succeeds_once() {
    let etcd = EtcdCluster::single();
    let c = etcd.client();
    let key = format!("{}/once", prefix("txn")).into_bytes();
    let create = |v: &'static [u8]| {
        Txn::new()
            .when(Compare::create_revision(key.clone(), 0))
            .and_then(Op::put(key.clone(), v, None))
            .or_else(Op::get(key.clone()))
    };
    let first = c.txn(create(b"first")).await.unwrap();
    assert!(first.succeeded);
    assert_eq!(first.results, vec![OpResult::Put]);
    let second = c.txn(create(b"second")).await.unwrap();
    assert!(!second.succeeded);
    let OpResult::Get(kvs) = &second.results[0] else {
        panic!("the failure branch reads the key")
    };
    assert_eq!(kvs[0].value, b"first");
    // The created key's revision is the revision of the transaction that created it.
    assert_eq!(kvs[0].create_revision, first.revision);
}

#[tokio::test]
async fn a_lease_keeps_its_keys_until_it_is_revoked() {
    let etcd = EtcdCluster::single();
    let c = etcd.client();
    // etcd raises a 1 s TTL to its minimum, 2 s with the default election timeout.
    let lease = c.lease_grant(Duration::from_secs(1)).await.unwrap();
    assert_eq!(lease.ttl, Duration::from_secs(2));
    let key = format!("{}/leased", prefix("lease")).into_bytes();
    c.put(&key, b"v", Some(lease.id)).await.unwrap();
    assert_eq!(c.get(&key).await.unwrap().kvs[0].lease, Some(lease.id));
    let renewed = c
        .lease_keepalive(lease.id, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(
        renewed,
        KeepAlive::Alive {
            ttl: Duration::from_secs(2)
        }
    );
    c.lease_revoke(lease.id).await.unwrap();
    assert!(c.get(&key).await.unwrap().kvs.is_empty());
    let after = c
        .lease_keepalive(lease.id, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(after, KeepAlive::Gone);
    // Revoking again is not an error: the lease is gone either way.
    c.lease_revoke(lease.id).await.unwrap();
    // Writing under a lease that is gone is refused, and says why.
    let e = c.put(&key, b"v", Some(lease.id)).await.unwrap_err();
    assert!(e.is_lease_not_found(), "{e}");
}

#[tokio::test]
async fn a_renewal_moves_past_a_dead_and_a_silent_endpoint_to_a_live_one() {
    let etcd = EtcdCluster::single();
    let dead = Gate::open(etcd.members[0].client_port).await;
    dead.set(Mode::Closed);
    let silent = Gate::open(etcd.members[0].client_port).await;
    silent.set(Mode::Blackhole);
    let mut config = EtcdConfig::new([dead.url(), silent.url(), etcd.members[0].url()]);
    config.request_timeout = Duration::from_millis(150);
    let c = EtcdClient::new(config).unwrap();
    let lease = etcd
        .client()
        .lease_grant(Duration::from_secs(2))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let r = c
        .lease_keepalive(lease.id, Duration::from_millis(500))
        .await
        .unwrap();
    assert!(matches!(r, KeepAlive::Alive { .. }));
    assert!(started.elapsed() < Duration::from_millis(500));
    // The client now starts with the endpoint that answered.
    let started = tokio::time::Instant::now();
    c.lease_keepalive(lease.id, Duration::from_millis(500))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(100));
}

#[tokio::test]
async fn when_no_endpoint_answers_the_error_names_each_and_what_to_do() {
    let etcd = EtcdCluster::single();
    let dead = Gate::open(etcd.members[0].client_port).await;
    dead.set(Mode::Closed);
    let silent = Gate::open(etcd.members[0].client_port).await;
    silent.set(Mode::Blackhole);
    let mut config = EtcdConfig::new([dead.url(), silent.url()]);
    config.request_timeout = Duration::from_millis(100);
    let c = EtcdClient::new(config).unwrap();
    let e = c.get(b"/x").await.unwrap_err();
    assert!(e.is_unreachable());
    let EtcdError::Unreachable { attempts, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(attempts.len(), 2);
    let text = e.to_string();
    assert!(
        text.starts_with("could not read a key: no etcd endpoint answered ("),
        "{text}"
    );
    assert!(text.contains(&format!("{}: ", dead.url())), "{text}");
    assert!(
        text.contains(&format!("{}: no answer within 100ms", silent.url())),
        "{text}"
    );
    assert!(
        text.ends_with("check that etcd runs, that a majority of its members is up, and that this node can reach them"),
        "{text}"
    );
}

#[tokio::test]
async fn a_watch_reports_puts_and_deletes_in_order() {
    let etcd = EtcdCluster::single();
    let c = etcd.client();
    let p = format!("{}/", prefix("watch"));
    let mut w = c.watch(p.as_bytes(), true, 0).await.unwrap();
    let key = format!("{p}k").into_bytes();
    let put_rev = c.put(&key, b"1", None).await.unwrap();
    c.delete(&key).await.unwrap();
    let mut events = Vec::new();
    while events.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .expect("the watch delivers")
            .unwrap();
        events.extend(batch.events);
    }
    let WatchEvent::Put(kv) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(
        (kv.value.as_slice(), kv.mod_revision),
        (b"1".as_slice(), put_rev)
    );
    let WatchEvent::Delete(kv) = &events[1] else {
        panic!("{events:?}")
    };
    assert_eq!(kv.key, key);
    assert_eq!(kv.mod_revision, put_rev + 1);
}

#[tokio::test]
async fn a_watch_ends_with_an_error_when_its_member_goes_away() {
    let mut etcd = EtcdCluster::single();
    let c = etcd.client();
    let mut w = c.watch(b"/x", false, 0).await.unwrap();
    etcd.kill(0);
    let e = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("a dead member ends the watch")
        .unwrap_err();
    assert!(matches!(e, EtcdError::WatchEnded { .. }), "{e}");
}
