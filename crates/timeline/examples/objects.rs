//! Counts the objects the timeline worker writes to a destination (local directory), by kind,
//! and extrapolates them to one hour.
//!
//! Usage: `cargo run --release -p lifeboat-timeline --example objects -- MODE SECONDS`
//!
//! - `quiet`: one guestbook-like write a minute (a row, and a 2 KiB upload every other
//!   write), **time-scaled by 60**: one write per second with every interval of the worker
//!   divided by 60 (checkpoint every 10 s instead of 10 min, ...). Objects depend on how many
//!   writes, segments and checkpoints happen, not on wall time, so SECONDS of this run stand
//!   for SECONDS minutes.
//! - `idle`: nothing written at all, default options: what a quiet site costs per hour.
//! - `busy`: 200 row inserts a second through rusqlite, default options, real time.
//! - `compact`: like `busy` (100/s), then compacts everything (older_than 0) and counts again.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_timeline::{CompactOptions, SiteSources, TimelineWorker, WorkerOptions, compact};
use lifeboat_vault::{KdfParams, OpenOptions, Repository};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args
        .first()
        .map(String::as_str)
        .unwrap_or("quiet")
        .to_string();
    let secs: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(60);
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
    let scaled = mode == "quiet";
    let options = if scaled {
        let d = WorkerOptions::default();
        WorkerOptions {
            segment_interval: d.segment_interval / 60,
            poll_interval: Duration::from_millis(10),
            checkpoint_interval: d.checkpoint_interval / 60,
            rescan_interval: d.rescan_interval / 60,
            wal_checkpoint_interval: d.wal_checkpoint_interval / 60,
            catch_up_interval: d.catch_up_interval / 60,
            ..d
        }
    } else {
        WorkerOptions {
            compact_interval: Duration::from_secs(3600 * 24),
            ..WorkerOptions::default()
        }
    };
    let worker = TimelineWorker::start(sources, options, repo.clone())
        .await
        .unwrap();
    let before = count(Path::new(&a));
    let rate: u64 = match mode.as_str() {
        "quiet" => 1,
        "idle" => 0,
        "compact" => 100,
        _ => 200,
    };
    let upload_dir = site.join("uploads");
    let writer = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let mut i = 0u64;
        while start.elapsed() < Duration::from_secs(secs) {
            if rate == 0 {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            conn.execute(
                "INSERT INTO entries (body) VALUES (?1)",
                [format!("entry {i}: a guestbook message of some length")],
            )
            .unwrap();
            if rate == 1 && i % 2 == 1 {
                let body = format!("upload {i} ").repeat(200);
                std::fs::write(upload_dir.join(format!("u{i}.txt")), body).unwrap();
            }
            i += 1;
        }
        i
    });
    let writes = writer.await.unwrap();
    worker.ship_now().await.unwrap();
    let status = worker.status();
    worker.stop(Duration::from_secs(30)).await.unwrap();
    let after = count(Path::new(&a));
    let per_hour = |n: i64| {
        if scaled {
            n as f64 * 60.0 / secs as f64
        } else {
            n as f64 * 3600.0 / secs as f64
        }
    };
    println!(
        "mode {mode}: {writes} writes in {secs}s ({}), {} segments ({} KiB), {} errors",
        if scaled {
            "time-scaled x60"
        } else {
            "real time"
        },
        status.segments_shipped,
        status.bytes_shipped / 1024,
        status.last_error.as_deref().unwrap_or("no")
    );
    let mut total = 0;
    for (kind, n) in &after {
        let d = n - before.get(kind).copied().unwrap_or(0);
        total += d;
        println!(
            "  {kind:<10} +{d:>6} objects per destination ({:.0}/hour)",
            per_hour(d)
        );
    }
    println!(
        "  total      +{total:>6} objects per destination ({:.0}/hour)",
        per_hour(total)
    );
    if mode == "compact" {
        let report = compact(
            &repo,
            &CompactOptions {
                older_than: Duration::ZERO,
                ..CompactOptions::default()
            },
        )
        .await
        .unwrap();
        let c = count(Path::new(&a));
        println!(
            "after compaction: {report:?}\n  segment objects now {} ({} originals, {} bundles)",
            c.get("segments").copied().unwrap_or(0),
            repo.list_segments(lifeboat_timeline::STREAM)
                .await
                .unwrap()
                .len(),
            repo.list_segments(lifeboat_timeline::BUNDLE_STREAM)
                .await
                .unwrap()
                .len(),
        );
    }
}

/// Files under each top-level directory of a local destination.
fn count(root: &Path) -> BTreeMap<String, i64> {
    fn walk(dir: &Path, n: &mut i64) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), n);
            } else if !e.file_name().to_string_lossy().starts_with(".tmp") {
                *n += 1;
            }
        }
    }
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(root).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let mut n = 0;
        if e.file_type().unwrap().is_dir() {
            walk(&e.path(), &mut n);
        } else {
            n = 1;
        }
        out.insert(name, n);
    }
    out
}
