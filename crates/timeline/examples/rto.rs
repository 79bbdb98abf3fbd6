//! Measures restore time: a site with a database and uploads of the given sizes is captured
//! (one checkpoint), then restored as of now into a fresh directory.
//! Usage: `cargo run --release -p lifeboat-timeline --example rto -- [db MiB] [uploads MiB]`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_timeline::{RestoreTarget, SiteSources, TimelineWorker, WorkerOptions, restore_site};
use lifeboat_vault::{KdfParams, OpenOptions, Repository};

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let db_mib = args.first().copied().unwrap_or(64);
    let up_mib = args.get(1).copied().unwrap_or(64);
    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path().join("site");
    std::fs::create_dir_all(site.join("uploads")).unwrap();
    std::fs::write(site.join("lifeboat.toml"), "name = \"bench\"\n").unwrap();
    let conn = rusqlite::Connection::open(site.join("app.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.execute_batch("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB);")
        .unwrap();
    for i in 0..db_mib {
        conn.execute(
            "INSERT INTO blobs (data) VALUES (?1)",
            [noise(i as u64, 1 << 20)],
        )
        .unwrap();
    }
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    for i in 0..up_mib {
        std::fs::write(
            site.join(format!("uploads/{i}.bin")),
            noise(1000 + i as u64, 1 << 20),
        )
        .unwrap();
    }
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
    let started = Instant::now();
    let worker = TimelineWorker::start(sources, WorkerOptions::default(), repo.clone())
        .await
        .unwrap();
    let captured = started.elapsed();
    worker.stop(Duration::from_secs(30)).await.unwrap();
    let fresh = Arc::new(Repository::open(&b, b"pw", &opts).await.unwrap());
    let started = Instant::now();
    let report = restore_site(&fresh, RestoreTarget::Latest, &tmp.path().join("restored"))
        .await
        .unwrap();
    println!(
        "db {db_mib} MiB + uploads {up_mib} MiB: first checkpoint {captured:?}, restore {:?} ({} files)",
        started.elapsed(),
        report.files
    );
}
