//! Test support: runs SQLite capture the way the capture worker will, in its own process,
//! so tests can kill it with SIGKILL mid-capture and start it again.
//!
//! Usage: `capture-test-driver DB STATE_DIR SPOOL_DIR`. Polls the database, writes each
//! batch of records durably into SPOOL_DIR as a segment (base images beside it), then
//! confirms it; checkpoints every 20 rounds. Exits once SPOOL_DIR/stop exists and a poll
//! after it found nothing new.
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::Duration;

use lifeboat_capture::{CaptureEvent, CaptureOptions, Record, SqliteCapture, encode_segment};

type Failure = Box<dyn std::error::Error>;

/// Makes `events` durable in `spool`: images first, then the segment naming them.
fn store(spool: &Path, state: &Path, events: &[CaptureEvent]) -> Result<(), Failure> {
    let mut records = Vec::new();
    for event in events {
        match event {
            CaptureEvent::Commit(c) => records.push(Record::Commit(c.clone())),
            CaptureEvent::BaseImage(image) => {
                let name = format!("image-{}.db", image.record.image_hash);
                let tmp = spool.join(format!("{name}.partial"));
                std::fs::copy(&image.path, &tmp)?;
                std::fs::File::open(&tmp)?.sync_all()?;
                std::fs::rename(&tmp, spool.join(name))?;
                records.push(Record::BaseImage(image.record.clone()));
            }
        }
    }
    let first = events[0].seq();
    let epoch = match &records[0] {
        Record::Commit(c) => c.epoch,
        Record::BaseImage(b) => b.epoch,
        Record::File(f) => f.epoch,
    };
    let name = format!("seg-{epoch:06}-{first:020}.bin");
    let tmp = spool.join(format!("{name}.partial"));
    std::fs::write(&tmp, encode_segment(&records))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, spool.join(name))?;
    std::fs::File::open(spool)?.sync_all()?;
    for event in events {
        if let CaptureEvent::BaseImage(image) = event {
            let _ = std::fs::remove_file(&image.path);
        }
    }
    let _ = state;
    Ok(())
}

fn main() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().collect();
    let [_, db, state, spool] = args.as_slice() else {
        return Err("usage: capture-test-driver DB STATE_DIR SPOOL_DIR".into());
    };
    let (db, state, spool) = (Path::new(db), Path::new(state), Path::new(spool));
    std::fs::create_dir_all(spool)?;
    let mut capture = SqliteCapture::open(db, state, CaptureOptions::default())?;
    let mut round = 0u64;
    loop {
        let stopping = spool.join("stop").exists();
        let events = capture.poll()?;
        if !events.is_empty() {
            store(spool, state, &events)?;
            capture.confirm_durable(events.last().map_or(0, CaptureEvent::seq))?;
        }
        round += 1;
        if round.is_multiple_of(20) {
            capture.checkpoint(|events| store(spool, state, events).map_err(|e| e.to_string()))?;
        }
        if stopping && events.is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
