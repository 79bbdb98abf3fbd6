//! `durability = "sync"`: a barrier and `wait_acked` return only once a standby holds the
//! commit durably. With the standby gone the wait times out with a typed error; started
//! again, it catches up and the same wait succeeds.

mod common;

use std::time::Duration;

use common::stream::*;
use lifeboat_timeline::StreamError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_commit_is_durable_on_the_standby_and_a_dead_standby_times_the_wait_out() {
    let p = Primary::start(feed_options(7)).await;
    let dirs = StandbyDirs::new(p.site.tmp.path(), "standby");
    let mut standby = spawn_standby(&p, &dirs, None);
    let conn = p.site.db();
    p.site.insert(&conn, 1..2);
    p.sync(Duration::from_secs(60)).await;

    // Acknowledged: the standby holds it even if it dies right now.
    p.site.insert(&conn, 2..3);
    p.site.upload("acked.txt", b"acknowledged");
    let position = p.worker.barrier().await.unwrap();
    let by = p
        .server
        .wait_acked(position, |s| s.zone != "zone-a", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!((by.node.as_str(), by.zone.as_str()), ("standby", "zone-b"));
    assert!(by.acked >= position);
    standby.kill();
    let ids: Vec<i64> = rows(&dirs.db()).into_iter().map(|r| r.0).collect();
    assert_eq!(ids, vec![1, 2]);
    assert_eq!(
        std::fs::read(dirs.uploads().join("acked.txt")).unwrap(),
        b"acknowledged"
    );
    assert_intact(&dirs.db());

    // No standby: the wait runs out, with an error that says so.
    p.site.insert(&conn, 3..4);
    let position = p.worker.barrier().await.unwrap();
    let err = p
        .server
        .wait_acked(position, |s| s.zone != "zone-a", Duration::from_millis(700))
        .await
        .unwrap_err();
    match &err {
        StreamError::NotAcknowledged {
            position: p2,
            waited,
            standbys,
        } => {
            assert_eq!(*p2, position);
            assert!(*waited >= Duration::from_millis(700));
            assert!(standbys.contains("standby in zone-b"), "{standbys}");
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("not confirmed durable"), "{err}");
    // A rule no standby meets never succeeds either.
    let none = p
        .server
        .wait_acked(position, |s| s.zone == "zone-z", Duration::from_millis(200))
        .await;
    assert!(matches!(none, Err(StreamError::NotAcknowledged { .. })));

    // Back: it catches up and the same wait succeeds.
    let mut standby = spawn_standby(&p, &dirs, None);
    let by = p
        .server
        .wait_acked(position, |s| s.zone != "zone-a", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(by.acked >= position);
    stop_standby(&mut standby, &dirs);
    let ids: Vec<i64> = rows(&dirs.db()).into_iter().map(|r| r.0).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    assert_intact(&dirs.db());
    p.worker.stop(Duration::from_secs(30)).await.unwrap();
}
