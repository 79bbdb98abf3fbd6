//! A standby killed (SIGKILL) in the middle of applying restarts and converges: no commit
//! missing, none twice, every file as on the primary, and its database passes
//! `PRAGMA integrity_check` — whether it died at a chosen step of applying a group or at a
//! random moment under load.

mod common;

use std::time::{Duration, Instant};

use common::stream::*;
use common::*;

/// Commits and file changes while the standby is down, so that when it comes back it
/// receives a burst of batches (applied in groups of several).
async fn backlog(p: &Primary, round: usize) {
    let mut writer = spawn_writer(&p.db(), "120", 0);
    for i in 0..12 {
        p.site.upload(
            &format!("r{round}/{i}.bin"),
            &vec![(round * 16 + i) as u8; 500 + i * 700],
        );
        if i % 3 == 2 {
            p.site.delete_upload(&format!("r{round}/{}.bin", i - 1));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        writer.wait_success(Duration::from_secs(120)),
        "the writer failed"
    );
}

async fn converge_and_compare(p: &Primary, dirs: &StandbyDirs) {
    let mut standby = spawn_standby(p, dirs, None);
    p.sync(Duration::from_secs(120)).await;
    stop_standby(&mut standby, dirs);
    let primary_rows = rows(&p.db());
    let ids: Vec<i64> = rows(&dirs.db()).iter().map(|r| r.0).collect();
    assert_eq!(
        ids,
        (1..=primary_rows.len() as i64).collect::<Vec<_>>(),
        "no gap and no duplicate"
    );
    assert_eq!(rows(&dirs.db()), primary_rows);
    assert_eq!(files_in(&dirs.uploads()), files_in(&p.uploads()));
    assert_intact(&dirs.db());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_killed_at_each_step_of_applying_a_group_converges() {
    let p = Primary::start(feed_options(7)).await;
    let dirs = StandbyDirs::new(p.site.tmp.path(), "standby");
    // A first copy, from the vault and the stream.
    let mut standby = spawn_standby(&p, &dirs, None);
    p.sync(Duration::from_secs(120)).await;
    stop_standby(&mut standby, &dirs);

    // The first group of several batches saves an intent; every group has the other steps.
    for (round, step) in [
        "intent-saved:1",
        "databases-written:2",
        "files-written:2",
        "position-saved:2",
    ]
    .into_iter()
    .enumerate()
    {
        backlog(&p, round).await;
        let mut standby = spawn_standby(&p, &dirs, Some(step));
        let deadline = Instant::now() + Duration::from_secs(120);
        let conn = p.site.db();
        while !standby.exited() {
            // More groups keep coming until it dies at the chosen step.
            conn.execute("INSERT INTO entries (body) VALUES ('more')", [])
                .unwrap();
            assert!(
                Instant::now() < deadline,
                "the standby never reached {step}; it says {}",
                std::fs::read_to_string(dirs.stop_file.with_file_name("status.txt"))
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        // Killed mid-apply, the copy still opens cleanly in SQLite.
        assert_intact(&dirs.db());
        if step.starts_with("intent-saved") {
            let state = lifeboat_timeline::replication::inspect_replica_state(&dirs.meta)
                .unwrap()
                .unwrap();
            assert!(
                state.contains("\"applying\""),
                "the intent is on disk: {state}"
            );
        }
    }
    converge_and_compare(&p, &dirs).await;
    p.worker.stop(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_killed_at_random_moments_under_load_converges() {
    let p = Primary::start(feed_options(7)).await;
    let dirs = StandbyDirs::new(p.site.tmp.path(), "standby");
    let stop_writing = p.site.tmp.path().join("stop-writing");
    let mut writer = spawn_writer(&p.db(), &format!("until:{}", stop_writing.display()), 1);
    let mut standby = spawn_standby(&p, &dirs, None);
    p.sync(Duration::from_secs(120)).await;
    for round in 0..5u64 {
        // Kill it while it is busy applying: files change, the writer commits.
        for i in 0..6 {
            p.site.upload(
                &format!("k{round}/{i}.bin"),
                &vec![i as u8; 2000 + 5000 * i],
            );
            tokio::time::sleep(Duration::from_millis(7 + round * 11)).await;
        }
        standby.kill();
        assert_intact(&dirs.db());
        standby = spawn_standby(&p, &dirs, None);
        tokio::time::sleep(Duration::from_millis(150 + round * 40)).await;
    }
    std::fs::write(&stop_writing, b"").unwrap();
    assert!(
        writer.wait_success(Duration::from_secs(120)),
        "the writer failed"
    );
    drop(standby);
    converge_and_compare(&p, &dirs).await;
    p.worker.stop(Duration::from_secs(30)).await.unwrap();
}
