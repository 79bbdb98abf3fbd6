//! A standby follows the primary: it starts from the vault, applies every batch the primary's
//! capture reads (database commits of a writer process, file changes), and after a barrier
//! acknowledged by it, its copy equals the primary's row for row and byte for byte.

mod common;

use std::time::Duration;

use common::stream::*;
use common::*;
use lifeboat_timeline::ReplicaState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_applies_the_stream_and_matches_the_primary_row_for_row() {
    let p = Primary::start(feed_options(7)).await;
    // Before the standby exists: this is what it restores from the vault.
    let conn = p.site.db();
    p.site.insert(&conn, 100_000..100_010);
    p.site
        .upload("before.txt", b"written before the standby started");
    p.worker.ship_now().await.unwrap();

    let dirs = StandbyDirs::new(p.site.tmp.path(), "standby");
    let replica = start_replica(&p, &dirs, quick_replica_options()).await;
    wait_until("the standby to stream", Duration::from_secs(60), || {
        matches!(replica.status().state, ReplicaState::Streaming { .. })
    })
    .await;

    // While it streams: another process commits, files come and go.
    let mut writer = spawn_writer(&p.db(), "300", 2);
    for i in 0..20 {
        p.site
            .upload(&format!("batch/{i}.bin"), &vec![i as u8; 1000 + i * 3000]);
        if i == 4 {
            p.site.delete_upload("before.txt");
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    p.site.upload("big.bin", &vec![7u8; 3 << 20]);
    p.site.delete_upload("batch/3.bin");
    assert!(
        writer.wait_success(Duration::from_secs(120)),
        "the writer failed"
    );

    let position = p.sync(Duration::from_secs(60)).await;
    let status = replica.status();
    assert!(status.applied >= position, "{status:?}");
    assert_eq!(status.highest_term, 7);
    let standbys = p.server.status().standbys;
    assert_eq!(standbys.len(), 1);
    assert!(standbys[0].acked.is_some_and(|a| a >= position));
    assert_eq!(standbys[0].zone, "zone-b");
    assert!(standbys[0].last_confirmed_request_sent.is_some());

    let final_status = replica.stop().await.unwrap();
    assert!(final_status.applied >= position);
    // One restore (it started with nothing); everything after came through the stream.
    assert_eq!(final_status.resyncs, 1, "{final_status:?}");
    assert!(final_status.batches_applied > 10, "{final_status:?}");
    let primary_rows = rows(&p.db());
    assert_eq!(primary_rows.len(), 310);
    assert_eq!(rows(&dirs.db()), primary_rows);
    assert_eq!(files_in(&dirs.uploads()), files_in(&p.uploads()));
    assert_intact(&dirs.db());
    p.worker.stop(Duration::from_secs(30)).await.unwrap();
}
