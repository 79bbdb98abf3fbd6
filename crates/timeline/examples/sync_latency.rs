//! Measures what `durability = "sync"` adds to a write: from a committed transaction to a
//! standby's acknowledgement of it (barrier, then `wait_acked`), on loopback, with a real
//! worker, stream server and replica (its own copy, fsyncs included) on this machine.
//!
//! Usage: `cargo run -p lifeboat-timeline --example sync_latency -- [commits] [writers]
//! [ballast_mib]`. Each of `writers` tasks commits one row at a time and waits for its
//! acknowledgement; concurrent barriers share polls. Prints p50/p90/p99/max of commit→ack.
//! With `ballast_mib`, the database first gets that much data, and a checkpoint is taken
//! while the writers run: its duration shows in the max (a checkpoint holds capture, and with
//! it the barriers, until it is stored).

use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_timeline::{
    FeedOptions, Replica, ReplicaConfig, ReplicaOptions, ServerOptions, SiteSources, StreamKey,
    StreamServer, StreamServerConfig, TimelineWorker, WorkerOptions,
};
use lifeboat_vault::{KdfParams, OpenOptions, Repository};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let commits = args.first().copied().unwrap_or(2000);
    let writers = args.get(1).copied().unwrap_or(1).max(1);
    let ballast_mib = args.get(2).copied().unwrap_or(0);
    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path().join("site");
    std::fs::create_dir_all(site.join("uploads")).unwrap();
    std::fs::write(site.join("lifeboat.toml"), "name = \"bench\"\n").unwrap();
    let db = site.join("app.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.execute_batch("CREATE TABLE entries (id INTEGER PRIMARY KEY, body TEXT);")
        .unwrap();
    if ballast_mib > 0 {
        conn.execute_batch("CREATE TABLE ballast (id INTEGER PRIMARY KEY, data BLOB);")
            .unwrap();
        for i in 0..ballast_mib {
            // Incompressible and unique, as real data would be.
            let mut data = vec![0u8; 1 << 20];
            rand::fill(&mut data[..]);
            conn.execute(
                "INSERT INTO ballast (id, data) VALUES (?1, ?2)",
                rusqlite::params![i as i64, data],
            )
            .unwrap();
        }
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
    }
    drop(conn);
    let dest = tmp.path().join("vault").to_string_lossy().into_owned();
    let opts = |spool: &str| OpenOptions {
        spool_dir: Some(tmp.path().join(spool)),
        kdf: Some(KdfParams::insecure_fast()),
        s3_credentials: None,
    };
    Repository::init(&[&dest], Some(1), b"pw", &opts("spool"))
        .await
        .unwrap();
    let repo = Arc::new(
        Repository::open(&dest, b"pw", &opts("spool"))
            .await
            .unwrap(),
    );
    let sources = SiteSources {
        site_dir: site.clone(),
        databases: vec!["app.db".into()],
        data_dirs: vec!["uploads".into()],
        manifest: "lifeboat.toml".into(),
        mariadb: None,
        state_dir: ".lifeboat/timeline".into(),
    };
    let options = WorkerOptions {
        feed: Some(FeedOptions::new(1)),
        ..WorkerOptions::default()
    };
    let worker = Arc::new(
        TimelineWorker::start(sources, options, repo.clone())
            .await
            .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Arc::new(
        StreamServer::start(
            listener,
            worker.feed().unwrap(),
            StreamServerConfig {
                site: "bench".into(),
                node: "a".into(),
                zone: "z1".into(),
                key: StreamKey::new(repo.derive_key(StreamKey::CONTEXT)),
                options: ServerOptions::default(),
            },
        )
        .unwrap(),
    );
    let standby_repo = Arc::new(
        Repository::open(&dest, b"pw", &opts("spool-b"))
            .await
            .unwrap(),
    );
    let replica = Replica::start(
        ReplicaConfig {
            site: "bench".into(),
            node: "b".into(),
            zone: "z2".into(),
            state_dir: tmp.path().join("standby/state"),
            databases: vec!["app.db".into()],
            data_dirs: vec!["uploads".into()],
            meta_dir: tmp.path().join("standby/meta"),
            key: StreamKey::new(standby_repo.derive_key(StreamKey::CONTEXT)),
            mariadb: None,
            options: ReplicaOptions::default(),
        },
        standby_repo,
        Some(server.local_addr()),
    )
    .await
    .unwrap();
    // Warm up: the standby restored and streams.
    let first = worker.barrier().await.unwrap();
    server
        .wait_acked(first, |_| true, Duration::from_secs(60))
        .await
        .unwrap();

    let started = Instant::now();
    let checkpoint = (ballast_mib > 0).then(|| {
        let worker = worker.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let t = Instant::now();
            worker.checkpoint_now().await.unwrap();
            t.elapsed()
        })
    });
    let per_writer = commits / writers;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (db, worker, server) = (db.clone(), worker.clone(), server.clone());
        tasks.push(tokio::spawn(async move {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.busy_timeout(Duration::from_secs(30)).unwrap();
            let mut samples = Vec::with_capacity(per_writer);
            for i in 0..per_writer {
                conn.execute(
                    "INSERT INTO entries (body) VALUES (?1)",
                    [format!("writer {w} row {i}")],
                )
                .unwrap();
                let t = Instant::now();
                let p = worker.barrier().await.unwrap();
                server
                    .wait_acked(p, |s| s.zone != "z1", Duration::from_secs(10))
                    .await
                    .unwrap();
                samples.push(t.elapsed());
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "{} commits by {writers} writer(s) in {elapsed:.2?} ({:.0}/s): commit -> standby ack p50 {:.2?}, p90 {:.2?}, p99 {:.2?}, max {:.2?}",
        samples.len(),
        samples.len() as f64 / elapsed.as_secs_f64(),
        at(0.50),
        at(0.90),
        at(0.99),
        samples[samples.len() - 1],
    );
    if let Some(c) = checkpoint {
        println!(
            "a checkpoint of the {ballast_mib} MiB database, taken while the writers ran, took {:.2?}",
            c.await.unwrap()
        );
    }
    let status = replica.stop().await.unwrap();
    println!(
        "standby: {} batches applied ({} bytes), {} restore(s)",
        status.batches_applied, status.bytes_applied, status.resyncs
    );
    server.shutdown().await;
}
