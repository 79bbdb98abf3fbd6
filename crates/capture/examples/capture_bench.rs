//! Rough numbers for SQLite capture on this machine:
//!
//! - capture delay: from a writer's acknowledged commit (500 commits/s) to capture having
//!   read it (polling every 5 ms), p50/p99/max;
//! - base image: time to write a full image of a database of about `BENCH_MB` MiB;
//! - replay: time to rebuild that database from the image plus the captured commits.
//!
//! Run: `cargo run --release -p lifeboat-capture --example capture_bench`.
#![forbid(unsafe_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_capture::replay::{RebuildTarget, rebuild};
use lifeboat_capture::{CaptureEvent, CaptureOptions, Record, SqliteCapture};
use rusqlite::Connection;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mb: usize = std::env::var("BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("site.db");
    let setup = Connection::open(&db)?;
    setup.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE entries (id INTEGER PRIMARY KEY, body TEXT NOT NULL);
         CREATE TABLE filler (b BLOB);",
    )?;
    let blob = vec![7u8; 1 << 20];
    for _ in 0..mb {
        setup.execute("INSERT INTO filler VALUES (?1)", [&blob])?;
    }
    setup.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;

    let started = Instant::now();
    let mut capture =
        SqliteCapture::open(&db, &dir.path().join("state"), CaptureOptions::default())?;
    let first = capture.poll()?;
    let image_time = started.elapsed();
    let Some(CaptureEvent::BaseImage(image)) = first.last().cloned() else {
        return Err("no base image".into());
    };
    capture.confirm_durable(image.record.seq)?;

    let commits_total = 2500u64;
    let acked: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (db, acked) = (db.clone(), acked.clone());
        std::thread::spawn(move || -> rusqlite::Result<()> {
            let conn = Connection::open(&db)?;
            conn.busy_timeout(Duration::from_secs(30))?;
            let t0 = Instant::now();
            for i in 0..commits_total {
                // 500 commits per second.
                let due = t0 + Duration::from_micros(2000 * i);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                conn.execute(
                    "INSERT INTO entries (body) VALUES (?1)",
                    ["a guestbook entry of modest size"],
                )?;
                acked.lock().unwrap().push(Instant::now());
            }
            Ok(())
        })
    };
    let mut delays = Vec::new();
    let mut commits = Vec::new();
    let mut last_checkpoint = Instant::now();
    let mut checkpoint_times = Vec::new();
    while (commits.len() as u64) < commits_total {
        let mut events = capture.poll()?;
        if let Some(last) = events.last() {
            capture.confirm_durable(last.seq())?;
        }
        if last_checkpoint.elapsed() > Duration::from_millis(500) {
            // Commits since the poll are handed over while the app is held off.
            let t = Instant::now();
            capture.checkpoint(|shipped| {
                events.extend_from_slice(shipped);
                Ok(())
            })?;
            checkpoint_times.push(t.elapsed());
            last_checkpoint = Instant::now();
        }
        let seen = Instant::now();
        for e in events {
            if let CaptureEvent::Commit(c) = e {
                commits.push(c);
                let acked_at = acked.lock().unwrap().get(commits.len() - 1).copied();
                // A commit read before its writer returned counts as zero delay.
                delays.push(acked_at.map_or(Duration::ZERO, |a| seen.saturating_duration_since(a)));
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    writer.join().unwrap()?;
    delays.sort();
    checkpoint_times.sort();

    let history: Vec<Record> = commits.iter().cloned().map(Record::Commit).collect();
    let out = dir.path().join("rebuilt.db");
    let t = Instant::now();
    let report = rebuild(
        &image.path,
        &image.record,
        &history,
        RebuildTarget::Seq(commits.last().unwrap().seq),
        &out,
    )?;
    let replay_time = t.elapsed();

    println!(
        "database: {mb} MiB; base image written in {:.2?} ({:.0} MiB/s)",
        image_time,
        mb as f64 / image_time.as_secs_f64()
    );
    println!(
        "capture delay at 500 commits/s, polling every 5 ms: p50 {:.2?} p99 {:.2?} max {:.2?} over {} commits",
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays.last().unwrap(),
        delays.len()
    );
    println!(
        "checkpoint calls every 500 ms (the app waits only for the final tail): median {:.2?} max {:.2?}",
        percentile(&checkpoint_times, 0.5),
        checkpoint_times.last().unwrap()
    );
    println!(
        "rebuild from image + {} commits with integrity check: {:.2?}",
        report.commits_applied, replay_time
    );
    Ok(())
}
