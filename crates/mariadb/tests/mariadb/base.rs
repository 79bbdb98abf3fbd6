//! Base backups stored in the vault: a second base of an unchanged database costs little.

use std::sync::Arc;

use lifeboat_mariadb::{open_base_backup, take_base_backup};
use lifeboat_vault::{BackupOptions, KdfParams, NoProgress, OpenOptions, Repository};
use mysql::prelude::Queryable;

use crate::common::*;

const MIB: u64 = 1024 * 1024;

#[test]
fn a_second_base_of_an_unchanged_100_mib_database_adds_little_to_the_vault() {
    let t = tmpdir();
    let s = TestServer::new(t.path());
    let mut conn = s.conn();
    conn.query_drop("CREATE DATABASE app; USE app; CREATE TABLE big (id INT PRIMARY KEY, b BLOB)")
        .unwrap();
    // 100 MiB of incompressible rows (1 KiB each), in 10 transactions.
    for chunk in 0..10u32 {
        conn.query_drop(format!(
            "INSERT INTO app.big SELECT seq, RANDOM_BYTES(1024) FROM seq_{}_to_{}",
            chunk * 10240 + 1,
            (chunk + 1) * 10240
        ))
        .unwrap();
    }
    let base1 = take_base_backup(&s.spec, &t.path().join("base1")).unwrap();
    let base2 = take_base_backup(&s.spec, &t.path().join("base2")).unwrap();
    assert_eq!(
        base1.info.gtid_pos, base2.info.gtid_pos,
        "nothing was written in between"
    );
    assert_eq!(open_base_backup(&base2.dir).unwrap(), base2);
    let base_bytes = dir_bytes(&base1.dir);
    assert!(base_bytes > 100 * MIB, "base is {base_bytes} bytes");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let repo_dir = t.path().join("vault");
    let (first, second, new_blobs) = rt.block_on(async {
        let opts = OpenOptions {
            spool_dir: Some(t.path().join("spool")),
            kdf: Some(KdfParams::insecure_fast()),
            s3_credentials: None,
        };
        let url = repo_dir.to_string_lossy().into_owned();
        Repository::init(&[&url], None, b"pw", &opts).await.unwrap();
        let repo = Arc::new(Repository::open(&url, b"pw", &opts).await.unwrap());
        let before = dir_bytes(&repo_dir);
        repo.backup(
            &[&base1.dir],
            &BackupOptions::default(),
            Arc::new(NoProgress),
        )
        .await
        .unwrap();
        let after_first = dir_bytes(&repo_dir);
        let snap = repo
            .backup(
                &[&base2.dir],
                &BackupOptions::default(),
                Arc::new(NoProgress),
            )
            .await
            .unwrap();
        (
            after_first - before,
            dir_bytes(&repo_dir) - after_first,
            snap.snapshot.summary.new_blobs,
        )
    });
    eprintln!(
        "base of a 100 MiB database: {:.1} MiB on disk; first base stored in the vault: {:.1} MiB; \
         second base of the unchanged database added {:.2} MiB ({new_blobs} new chunks)",
        base_bytes as f64 / MIB as f64,
        first as f64 / MIB as f64,
        second as f64 / MIB as f64,
    );
    assert!(first > 90 * MIB, "the first base stored {first} bytes");
    assert!(second < 2 * MIB, "the second base added {second} bytes");
}
