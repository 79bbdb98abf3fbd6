//! Test support: a standby's replica in a process of its own, so the stream tests can kill
//! it with SIGKILL while it applies and start it again.
//!
//! Usage: `timeline-test-standby --state DIR --meta DIR --vault URL --spool DIR --primary
//! ADDR --stop-file PATH [--db REL]... [--dir REL]... [--node NAME] [--zone ZONE]
//! [--crash-at STEP:N]`, with the vault's password in `LIFEBOAT_TEST_PASSWORD`. Follows the
//! primary until the stop file exists, then stops the replica cleanly and exits 0.
//! `--crash-at databases-written:3` kills the process with SIGKILL the third
//! time a group reaches that step (`intent-saved`, `databases-written`, `files-written`,
//! `position-saved`).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lifeboat_timeline::replication::{ApplyStep, FaultHook};
use lifeboat_timeline::{Replica, ReplicaConfig, ReplicaOptions, StreamKey};
use lifeboat_vault::{OpenOptions, Repository};

type Failure = Box<dyn std::error::Error>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Failure> {
    let mut args = std::env::args().skip(1);
    let (mut state, mut meta, mut vault, mut spool, mut primary, mut stop) =
        (None, None, None, None, None, None);
    let (mut dbs, mut dirs, mut crash) = (Vec::new(), Vec::new(), None);
    let (mut node, mut zone) = ("standby".to_string(), "zone-b".to_string());
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--state" => state = Some(PathBuf::from(value)),
            "--meta" => meta = Some(PathBuf::from(value)),
            "--vault" => vault = Some(value),
            "--spool" => spool = Some(PathBuf::from(value)),
            "--primary" => primary = Some(value.parse()?),
            "--stop-file" => stop = Some(PathBuf::from(value)),
            "--db" => dbs.push(PathBuf::from(value)),
            "--dir" => dirs.push(PathBuf::from(value)),
            "--node" => node = value,
            "--zone" => zone = value,
            "--crash-at" => crash = Some(value),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let password = std::env::var("LIFEBOAT_TEST_PASSWORD")?;
    let repo = Arc::new(
        Repository::open(
            &vault.ok_or("--vault")?,
            password.as_bytes(),
            &OpenOptions {
                spool_dir: spool,
                kdf: None,
                s3_credentials: None,
            },
        )
        .await?,
    );
    let fault: Option<FaultHook> = match crash {
        None => None,
        Some(spec) => {
            let (step, n) = spec.split_once(':').ok_or("--crash-at STEP:N")?;
            let step = match step {
                "intent-saved" => ApplyStep::IntentSaved,
                "databases-written" => ApplyStep::DatabasesWritten,
                "files-written" => ApplyStep::FilesWritten,
                "position-saved" => ApplyStep::PositionSaved,
                other => return Err(format!("unknown step {other}").into()),
            };
            let n: u64 = n.parse()?;
            let seen = AtomicU64::new(0);
            Some(Arc::new(move |s: ApplyStep| {
                if s == step && seen.fetch_add(1, Ordering::SeqCst) + 1 == n {
                    // A real SIGKILL, mid-apply: no destructor, no flush, no cleanup.
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", &std::process::id().to_string()])
                        .status();
                    loop {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }))
        }
    };
    let config = ReplicaConfig {
        site: "guestbook".into(),
        node,
        zone,
        state_dir: state.ok_or("--state")?,
        databases: dbs,
        data_dirs: dirs,
        meta_dir: meta.ok_or("--meta")?,
        key: StreamKey::new(repo.derive_key(StreamKey::CONTEXT)),
        mariadb: None,
        options: ReplicaOptions {
            reconnect_max: Duration::from_millis(500),
            fault,
            ..ReplicaOptions::default()
        },
    };
    let stop = stop.ok_or("--stop-file")?;
    // Where the replica stands, for a test that fails to read.
    let status_file = stop.with_file_name("status.txt");
    let replica = Replica::start(config, repo, Some(primary.ok_or("--primary")?)).await?;
    let mut ticks = 0u64;
    while !stop.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        ticks += 1;
        if ticks.is_multiple_of(10) {
            let _ = std::fs::write(&status_file, format!("{:#?}\n", replica.status()));
        }
    }
    replica.stop().await?;
    Ok(())
}
