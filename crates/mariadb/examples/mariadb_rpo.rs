//! Measures the recovery point of a MariaDB database, as `lifeboat-timeline`'s `rpo` example
//! does for SQLite: a managed server (release build of Lifeboat's code, a real `mariadbd`) under
//! a steady stream of single-row commits, captured by a timeline worker that ships to two local
//! destinations (quorum 2); the delay from each commit's acknowledgement to the segment holding
//! its transaction being durable on both, matched by GTID.
//!
//! Usage: `cargo run --release -p lifeboat-mariadb --example mariadb_rpo -- [commits/s] [seconds]
//! [segment_interval ms]` (defaults 200, 20, 500). Needs MariaDB (`scripts/install-test-deps`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_mariadb::ServerSpec;
use lifeboat_timeline::{
    STREAM, SiteSources, TimelineEvent, TimelineSegment, TimelineWorker, WorkerOptions,
};
use lifeboat_vault::{KdfParams, OpenOptions, Repository};
use mysql::prelude::Queryable;

const ADMIN_PASSWORD: &str = "rpo-bench-admin";

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rate = args.first().copied().unwrap_or(200);
    let secs = args.get(1).copied().unwrap_or(20);
    let interval_ms = args.get(2).copied().unwrap_or(500);
    let tmp = tempfile::Builder::new()
        .prefix("lb-rpo")
        .tempdir_in("/tmp")
        .unwrap();
    let site = tmp.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("lifeboat.toml"), "name = \"bench\"\n").unwrap();

    // The server, as `lifeboat up` runs it (every commit synced before it is acknowledged).
    let mut spec = ServerSpec::new(&site.join("mariadb"), &tmp.path().join("run"), None).unwrap();
    spec.buffer_pool_mib = 128;
    spec.initialize(ADMIN_PASSWORD).unwrap();
    let server = spec.start(Duration::from_secs(60)).unwrap();
    let mut conn = spec.connect_admin().unwrap();
    conn.query_drop("CREATE DATABASE app").unwrap();
    conn.query_drop("CREATE TABLE app.entries (id INT AUTO_INCREMENT PRIMARY KEY, body TEXT)")
        .unwrap();

    let opts = OpenOptions {
        spool_dir: Some(tmp.path().join("spool")),
        kdf: Some(KdfParams::insecure_fast()),
        s3_credentials: None,
    };
    let a = tmp.path().join("a").to_string_lossy().into_owned();
    let b = tmp.path().join("b").to_string_lossy().into_owned();
    Repository::init(&[&a, &b], Some(2), b"pw", &opts)
        .await
        .unwrap();
    let repo = Arc::new(Repository::open(&a, b"pw", &opts).await.unwrap());
    let sources = SiteSources {
        site_dir: site.clone(),
        databases: Vec::new(),
        data_dirs: Vec::new(),
        manifest: "lifeboat.toml".into(),
        mariadb: Some(("mariadb".into(), spec.clone())),
        state_dir: tmp.path().join("timeline"),
    };
    let options = WorkerOptions {
        segment_interval: Duration::from_millis(interval_ms),
        ..WorkerOptions::default()
    };
    let worker = TimelineWorker::start(sources, options, repo.clone())
        .await
        .unwrap();
    let mut events = worker.subscribe();
    let shipped = tokio::spawn(async move {
        let mut at = Vec::new();
        while let Ok(e) = events.recv().await {
            if let TimelineEvent::SegmentShipped { seq } = e {
                at.push((seq, Instant::now()));
            }
        }
        at
    });

    // The writer: one commit every 1/rate s (open model: a late commit does not delay the
    // next one's due time), its GTID and when its acknowledgement came back.
    let writer = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let mut acks = HashMap::new();
        for i in 0..rate * secs {
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            conn.exec_drop(
                "INSERT INTO app.entries (body) VALUES (?)",
                (format!("entry {i}"),),
            )
            .unwrap();
            let acked = Instant::now();
            let gtid: String = conn.query_first("SELECT @@last_gtid").unwrap().unwrap();
            acks.insert(gtid, acked);
        }
        acks
    });
    let acks = writer.await.unwrap();
    worker.ship_now().await.unwrap();
    worker.stop(Duration::from_secs(30)).await.unwrap();
    server.stop(Duration::from_secs(60)).unwrap();
    let shipped = shipped.await.unwrap();

    let mut delays = Vec::new();
    for (seq, at) in &shipped {
        let seg =
            TimelineSegment::decode(*seq, &repo.get_segment(STREAM, *seq).await.unwrap()).unwrap();
        for record in seg.mariadb.values().flatten() {
            if let Some(acked) = acks.get(&record.gtid.to_string()) {
                delays.push(at.saturating_duration_since(*acked));
            }
        }
    }
    assert_eq!(
        delays.len(),
        acks.len(),
        "every commit must be in a shipped segment"
    );
    delays.sort();
    let pct = |p: f64| delays[((delays.len() as f64 * p) as usize).min(delays.len() - 1)];
    println!(
        "{} commits at {rate}/s over {secs}s, segment_interval {interval_ms} ms, {} segments: \
         commit -> durable on 2 destinations p50 {:?} p99 {:?} max {:?}",
        delays.len(),
        shipped.len(),
        pct(0.5),
        pct(0.99),
        delays.last().unwrap()
    );
}
