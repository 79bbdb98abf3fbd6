//! Measures the recovery point: under a steady stream of committed writes, the delay from a
//! commit being acknowledged to the segment holding it being durable in the vault (local
//! destinations). Usage: `cargo run --release -p lifeboat-timeline --example rpo -- [writes/s] [seconds] [segment_interval ms]`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_capture::Record;
use lifeboat_timeline::{
    STREAM, SiteSources, TimelineEvent, TimelineSegment, TimelineWorker, WorkerOptions,
};
use lifeboat_vault::{KdfParams, OpenOptions, Repository};

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rate = args.first().copied().unwrap_or(500);
    let secs = args.get(1).copied().unwrap_or(10);
    let interval_ms = args.get(2).copied().unwrap_or(1000);
    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path().join("site");
    std::fs::create_dir_all(site.join("uploads")).unwrap();
    std::fs::write(site.join("lifeboat.toml"), "name = \"bench\"\n").unwrap();
    let conn = rusqlite::Connection::open(site.join("app.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.execute_batch("CREATE TABLE entries (id INTEGER PRIMARY KEY, body TEXT);")
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
        databases: vec!["app.db".into()],
        data_dirs: vec!["uploads".into()],
        manifest: "lifeboat.toml".into(),
        mariadb: None,
        state_dir: ".lifeboat/timeline".into(),
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
    let first_seq = worker.status().last_segment_seq.unwrap() + 1;
    let objects_before = count_files(std::path::Path::new(&a));
    let writer = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let mut acks = Vec::new();
        for i in 0..rate * secs {
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            conn.execute(
                "INSERT INTO entries (body) VALUES (?1)",
                [format!("entry {i}")],
            )
            .unwrap();
            acks.push(Instant::now());
        }
        acks
    });
    let acks = writer.await.unwrap();
    worker.ship_now().await.unwrap();
    worker.stop(Duration::from_secs(30)).await.unwrap();
    let shipped = shipped.await.unwrap();
    let objects = count_files(std::path::Path::new(&a)) - objects_before;
    // The k-th commit record after the start is the k-th insert.
    let mut delays = Vec::new();
    let mut k = 0;
    for (seq, at) in shipped.iter().filter(|(s, _)| *s >= first_seq) {
        let seg =
            TimelineSegment::decode(*seq, &repo.get_segment(STREAM, *seq).await.unwrap()).unwrap();
        for r in seg.sources.values().flatten() {
            if let Record::Commit(_) = r
                && k < acks.len()
            {
                delays.push(at.saturating_duration_since(acks[k]));
                k += 1;
            }
        }
    }
    delays.sort();
    let pct = |p: f64| delays[((delays.len() as f64 * p) as usize).min(delays.len() - 1)];
    println!(
        "{} commits at {rate}/s over {secs}s, {} segments: commit -> durable on 2 destinations p50 {:?} p99 {:?} max {:?}",
        delays.len(),
        shipped.len(),
        pct(0.5),
        pct(0.99),
        delays.last().unwrap()
    );
    println!(
        "objects written per destination: {objects} ({:.0}/hour at this rate)",
        objects as f64 * 3600.0 / secs as f64
    );
}

fn count_files(dir: &std::path::Path) -> i64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            n += count_files(&e.path());
        } else {
            n += 1;
        }
    }
    n
}
