//! A standby that fell out of the primary's window is told so, restores the latest state
//! from the vault (a local destination), continues the stream exactly where the restored
//! copy ends, and converges.

mod common;

use std::time::Duration;

use common::stream::*;
use common::*;
use lifeboat_timeline::FeedOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_out_of_the_window_resyncs_from_the_vault_and_converges() {
    let options = lifeboat_timeline::WorkerOptions {
        feed: Some(FeedOptions {
            window_batches: 4,
            ..FeedOptions::new(7)
        }),
        ..fast_options()
    };
    let p = Primary::start(options).await;
    let dirs = StandbyDirs::new(p.site.tmp.path(), "standby");
    let mut standby = spawn_standby(&p, &dirs, None);
    let conn = p.site.db();
    p.site.insert(&conn, 1..4);
    p.site.upload("first.txt", b"first");
    p.sync(Duration::from_secs(60)).await;
    stop_standby(&mut standby, &dirs);

    // Down while far more batches than the window holds go by (each poll is one batch).
    for i in 0..40i64 {
        p.site.insert(&conn, 4 + i * 5..9 + i * 5);
        if i % 5 == 0 {
            p.site
                .upload(&format!("while-down/{i}.txt"), format!("{i}").as_bytes());
        }
        if i == 20 {
            p.site.delete_upload("first.txt");
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(p.worker.feed().unwrap().status().window_batches <= 4);
    // In the vault (the resync reads it), then more while it restores and streams again.
    p.worker.ship_now().await.unwrap();
    let mut standby = spawn_standby(&p, &dirs, None);
    let mut writer = spawn_writer(&p.db(), "150", 3);
    wait_until(
        "the standby to be told to resync",
        Duration::from_secs(60),
        || {
            p.server
                .status()
                .standbys
                .iter()
                .any(|s| s.resync_told.as_ref().is_some_and(|r| r.contains("window")))
        },
    )
    .await;
    assert!(
        writer.wait_success(Duration::from_secs(120)),
        "the writer failed"
    );
    p.site.upload("after.txt", b"after the resync");
    p.sync(Duration::from_secs(120)).await;
    stop_standby(&mut standby, &dirs);

    let primary_rows = rows(&p.db());
    assert_eq!(primary_rows.len(), 203 + 150);
    assert_eq!(rows(&dirs.db()), primary_rows);
    assert_eq!(files_in(&dirs.uploads()), files_in(&p.uploads()));
    assert_intact(&dirs.db());
    let status = std::fs::read_to_string(dirs.stop_file.with_file_name("status.txt")).unwrap();
    // Restored at least once in this run (again while the writer outran the tiny window
    // and the vault lagged behind it), always because of the window.
    assert!(!status.contains("resyncs: 0,"), "{status}");
    assert!(status.contains("window"), "{status}");
    p.worker.stop(Duration::from_secs(30)).await.unwrap();
}
