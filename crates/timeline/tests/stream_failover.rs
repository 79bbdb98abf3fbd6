//! Failover: the primary dies, a caught-up standby is stopped, its capture state seeded from
//! its copy, and a worker with the next term started on the copy; another standby follows
//! the new primary from where it stands, without restoring from the vault, and the copies
//! stay equal.

mod common;

use std::time::Duration;

use common::stream::*;
use common::*;
use lifeboat_timeline::{Replica, SiteSources, StreamServer, TimelineWorker, seed_capture_state};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_standby_continues_and_the_other_standby_follows_it_without_a_restore() {
    let a = Primary::start(feed_options(7)).await;
    let conn = a.site.db();
    a.site.insert(&conn, 0..20);
    a.site.upload("a.txt", b"from a");
    let b_dirs = StandbyDirs::new(a.site.tmp.path(), "b");
    let c_dirs = StandbyDirs::new(a.site.tmp.path(), "c");
    let b = start_replica(&a, &b_dirs, quick_replica_options()).await;
    let mut c_config = c_dirs.config(quick_replica_options(), &a.repo);
    c_config.node = "c".into();
    c_config.zone = "zone-c".into();
    let c = Replica::start(
        c_config,
        a.site.open_vault(&a.site.dest_a, "c-spool").await,
        Some(a.addr()),
    )
    .await
    .unwrap();
    a.site.insert(&conn, 20..40);
    a.site.upload("b.txt", b"also from a");
    let position = a.worker.barrier().await.unwrap();
    for zone in ["zone-b", "zone-c"] {
        a.server
            .wait_acked(position, move |s| s.zone == zone, Duration::from_secs(60))
            .await
            .unwrap();
    }

    // The primary dies (its worker and server dropped, nothing shipped at exit).
    let Primary {
        site,
        repo,
        worker,
        server,
    } = a;
    drop(conn);
    drop(server);
    drop(worker);

    // b is promoted: stopped (its logs copied back), seeded, and a worker of term 8 starts
    // on its copy, then the app writes there.
    let b_config = b_dirs.config(quick_replica_options(), &repo);
    let b_status = b.stop().await.unwrap();
    assert!(b_status.applied >= position);
    let capture_state = b_dirs.state.join(".lifeboat/timeline");
    seed_capture_state(&b_config, &capture_state).unwrap();
    let sources = SiteSources {
        site_dir: b_dirs.state.clone(),
        databases: vec!["data/app.db".into()],
        data_dirs: vec!["uploads".into()],
        manifest: "lifeboat.toml".into(),
        mariadb: None,
        state_dir: ".lifeboat/timeline".into(),
    };
    let worker = TimelineWorker::start(sources, feed_options(8), repo.clone())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server =
        StreamServer::start(listener, worker.feed().unwrap(), server_config(&repo)).unwrap();
    c.set_primary(Some(server.local_addr()));

    let app = rusqlite::Connection::open(b_dirs.db()).unwrap();
    app.busy_timeout(Duration::from_secs(30)).unwrap();
    for id in 40..60 {
        app.execute(
            "INSERT INTO entries (id, body) VALUES (?1, 'after the failover')",
            [id],
        )
        .unwrap();
    }
    std::fs::write(b_dirs.uploads().join("c.txt"), b"from b").unwrap();
    std::fs::remove_file(b_dirs.uploads().join("a.txt")).unwrap();
    let position = worker.barrier().await.unwrap();
    assert_eq!(position.term, 8);
    let by = server
        .wait_acked(position, |s| s.zone == "zone-c", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(by.node, "c");

    let c_status = c.stop().await.unwrap();
    assert_eq!(c_status.highest_term, 8);
    assert_eq!(c_status.resyncs, 1, "only its first restore: {c_status:?}");
    assert!(c_status.applied >= position);
    drop(app);
    let b_rows = rows(&b_dirs.db());
    assert_eq!(b_rows.len(), 60);
    assert_eq!(rows(&c_dirs.db()), b_rows);
    assert_eq!(files_in(&c_dirs.uploads()), files_in(&b_dirs.uploads()));
    assert_intact(&c_dirs.db());
    worker.stop(Duration::from_secs(30)).await.unwrap();
    drop(site);
}

/// A standby whose reconnect pause grew while its primary was dead connects to the new
/// primary within a few short attempts, not after the grown pause: the pause starts over
/// when the primary changes. (Before, a failover's sync writes waited up to 5 s for it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_reaches_a_new_primary_at_once_after_a_long_backoff() {
    let a = Primary::start(feed_options(7)).await;
    let conn = a.site.db();
    a.site.insert(&conn, 0..5);
    let dirs = StandbyDirs::new(a.site.tmp.path(), "standby");
    let options = lifeboat_timeline::ReplicaOptions {
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(30),
        ..quick_replica_options()
    };
    let replica = start_replica(&a, &dirs, options).await;
    wait_until("the standby to stream", Duration::from_secs(60), || {
        matches!(
            replica.status().state,
            lifeboat_timeline::ReplicaState::Streaming { .. }
        )
    })
    .await;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    // Its primary is gone: nothing listens where it points, and the pause grows past 1.6 s.
    replica.set_primary(Some(free()));
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The new primary is elected, and opens its stream a moment later.
    let next = free();
    replica.set_primary(Some(next));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listener = tokio::net::TcpListener::bind(next).await.unwrap();
    let _server =
        StreamServer::start(listener, a.worker.feed().unwrap(), server_config(&a.repo)).unwrap();
    let opened = std::time::Instant::now();
    wait_until(
        "the standby to stream from the new primary",
        Duration::from_secs(30),
        || {
            matches!(
                replica.status().state,
                lifeboat_timeline::ReplicaState::Streaming { primary } if primary == next
            )
        },
    )
    .await;
    assert!(
        opened.elapsed() < Duration::from_millis(1500),
        "connected {:?} after the new primary opened its stream",
        opened.elapsed()
    );
    replica.stop().await.unwrap();
}

/// A standby a few batches behind the one promoted follows the new primary without a
/// restore: the promoted standby kept the batches it applied last, and the new primary's
/// feed starts with them (before, the feed started empty, and anything short of the new
/// primary's position meant a full restore from the vault while sync writes waited).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_behind_the_promoted_one_catches_up_from_its_history() {
    let a = Primary::start(feed_options(7)).await;
    let conn = a.site.db();
    a.site.insert(&conn, 0..20);
    let b_dirs = StandbyDirs::new(a.site.tmp.path(), "b");
    let c_dirs = StandbyDirs::new(a.site.tmp.path(), "c");
    let b = start_replica(&a, &b_dirs, quick_replica_options()).await;
    let mut c_config = c_dirs.config(quick_replica_options(), &a.repo);
    c_config.node = "c".into();
    c_config.zone = "zone-c".into();
    let c = Replica::start(
        c_config.clone(),
        a.site.open_vault(&a.site.dest_a, "c-spool").await,
        Some(a.addr()),
    )
    .await
    .unwrap();
    let position = a.worker.barrier().await.unwrap();
    for zone in ["zone-b", "zone-c"] {
        a.server
            .wait_acked(position, move |s| s.zone == zone, Duration::from_secs(60))
            .await
            .unwrap();
    }
    // c stops (its copy stays); the primary goes on with b alone, one commit at a time.
    let c_before = c.stop().await.unwrap();
    assert_eq!(c_before.resyncs, 1, "its first restore only");
    for id in 20..40 {
        a.site.insert(&conn, id..id + 1);
        a.worker.barrier().await.unwrap();
    }
    a.site.upload("while-c-was-away.txt", b"from a");
    let position = a.worker.barrier().await.unwrap();
    a.server
        .wait_acked(position, |s| s.zone == "zone-b", Duration::from_secs(60))
        .await
        .unwrap();

    // The primary dies; b is promoted with its history.
    let Primary {
        site,
        repo,
        worker,
        server,
    } = a;
    drop(conn);
    drop(server);
    drop(worker);
    let b_config = b_dirs.config(quick_replica_options(), &repo);
    let (b_status, history) = b.stop_keeping_history().await.unwrap();
    assert!(b_status.applied >= position);
    assert!(!history.is_empty(), "b kept what it applied last");
    seed_capture_state(&b_config, &b_dirs.state.join(".lifeboat/timeline")).unwrap();
    let sources = SiteSources {
        site_dir: b_dirs.state.clone(),
        databases: vec!["data/app.db".into()],
        data_dirs: vec!["uploads".into()],
        manifest: "lifeboat.toml".into(),
        mariadb: None,
        state_dir: ".lifeboat/timeline".into(),
    };
    let options = lifeboat_timeline::WorkerOptions {
        feed: Some(lifeboat_timeline::FeedOptions {
            history: Some(std::sync::Arc::new(history)),
            ..lifeboat_timeline::FeedOptions::new(8)
        }),
        first_checkpoint_later: true,
        ..fast_options()
    };
    let worker = TimelineWorker::start(sources, options, repo.clone())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server =
        StreamServer::start(listener, worker.feed().unwrap(), server_config(&repo)).unwrap();

    // c comes back, following b: it lacks 20 commits and a file, and is sent them.
    let c = Replica::start(
        c_config,
        site.open_vault(&site.dest_a, "c-spool-2").await,
        Some(server.local_addr()),
    )
    .await
    .unwrap();
    let app = rusqlite::Connection::open(b_dirs.db()).unwrap();
    app.busy_timeout(Duration::from_secs(30)).unwrap();
    for id in 40..50 {
        app.execute(
            "INSERT INTO entries (id, body) VALUES (?1, 'after the failover')",
            [id],
        )
        .unwrap();
    }
    let position = worker.barrier().await.unwrap();
    server
        .wait_acked(position, |s| s.zone == "zone-c", Duration::from_secs(60))
        .await
        .unwrap();
    let c_status = c.stop().await.unwrap();
    assert_eq!(
        c_status.resyncs, 0,
        "c caught up from the new primary's history, not the vault: {c_status:?}"
    );
    drop(app);
    let b_rows = rows(&b_dirs.db());
    assert_eq!(b_rows.len(), 50);
    assert_eq!(rows(&c_dirs.db()), b_rows);
    assert_eq!(files_in(&c_dirs.uploads()), files_in(&b_dirs.uploads()));
    assert_intact(&c_dirs.db());
    worker.stop(Duration::from_secs(30)).await.unwrap();
    drop(site);
}
