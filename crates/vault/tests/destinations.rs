//! Several destinations: S3 against a real s3s-fs process, quorum, spool and catch-up,
//! and reads that survive a damaged destination.
mod common;

use std::sync::Arc;

use common::s3::{S3Server, credentials};
use common::*;
use lifeboat_vault::{BackupOptions, OpenOptions, Repository, RestoreOptions, VerifyOptions};

fn s3_opts(dir: &std::path::Path) -> OpenOptions {
    OpenOptions {
        s3_credentials: Some(credentials()),
        ..opts(&dir.join("spool"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_to_local_and_s3_restores_from_s3_alone() {
    let t = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&t.path().join("s3"), "backups");
    let local = t.path().join("local").to_string_lossy().into_owned();
    let remote = s3.url("backups", "blog");
    let o = s3_opts(t.path());
    Repository::init(&[&local, &remote], None, PASSWORD, &o)
        .await
        .unwrap();
    let src = t.path().join("site");
    make_tree(&src, 2_000_000);
    let repo = Arc::new(Repository::open(&local, PASSWORD, &o).await.unwrap());
    repo.backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();

    // The local copy is gone; the repository opened through S3 knows everything.
    std::fs::remove_dir_all(&local).unwrap();
    let from_s3 = Arc::new(Repository::open(&remote, PASSWORD, &o).await.unwrap());
    let snaps = from_s3.snapshots().await.unwrap();
    assert_eq!(snaps.len(), 1);
    let out = t.path().join("restored");
    from_s3
        .restore(
            snaps[0].snapshot.tree,
            &out,
            &RestoreOptions::default(),
            no_progress(),
        )
        .await
        .unwrap();
    assert_same_tree(&src, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_down_during_backup_is_caught_up_when_it_returns() {
    let t = tempfile::tempdir().unwrap();
    let mut s3 = S3Server::start(&t.path().join("s3"), "backups");
    let local = t.path().join("local").to_string_lossy().into_owned();
    let remote = s3.url("backups", "blog");
    let o = s3_opts(t.path());
    Repository::init(&[&local, &remote], Some(1), PASSWORD, &o)
        .await
        .unwrap();
    let src = t.path().join("site");
    make_tree(&src, 2_000_000);

    s3.stop();
    let repo = Arc::new(Repository::open(&local, PASSWORD, &o).await.unwrap());
    let snap = repo
        .backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();
    let status = repo.status().await;
    let down = status.iter().find(|d| d.url == remote).unwrap();
    assert!(!down.reachable);
    assert!(down.objects_behind >= 3, "{down:?}");
    drop(repo);

    s3.restart();
    let repo = Arc::new(Repository::open(&local, PASSWORD, &o).await.unwrap());
    let status = repo.status().await;
    assert!(
        status.iter().all(|d| d.reachable && d.objects_behind == 0),
        "{status:?}"
    );
    let report = repo
        .verify(&VerifyOptions {
            read_data: true,
            destination: Some(remote.clone()),
        })
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    std::fs::remove_dir_all(&local).unwrap();
    let from_s3 = Arc::new(Repository::open(&remote, PASSWORD, &o).await.unwrap());
    let out = t.path().join("restored");
    from_s3
        .restore(
            snap.snapshot.tree,
            &out,
            &RestoreOptions::default(),
            no_progress(),
        )
        .await
        .unwrap();
    assert_same_tree(&src, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_default_quorum_a_backup_fails_while_a_destination_is_down() {
    let t = tempfile::tempdir().unwrap();
    let mut s3 = S3Server::start(&t.path().join("s3"), "backups");
    let local = t.path().join("local").to_string_lossy().into_owned();
    let remote = s3.url("backups", "blog");
    let o = s3_opts(t.path());
    Repository::init(&[&local, &remote], None, PASSWORD, &o)
        .await
        .unwrap();
    let src = t.path().join("site");
    make_tree(&src, 100_000);
    s3.stop();
    let repo = Arc::new(Repository::open(&local, PASSWORD, &o).await.unwrap());
    let err = repo
        .backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spool"), "{err}");
    assert!(
        repo.snapshots().await.unwrap().is_empty(),
        "no snapshot may count as done"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_named_by_verify_and_restore_uses_the_healthy_copy() {
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a").to_string_lossy().into_owned();
    let b = t.path().join("b").to_string_lossy().into_owned();
    let o = opts(&t.path().join("spool"));
    Repository::init(&[&a, &b], None, PASSWORD, &o)
        .await
        .unwrap();
    let src = t.path().join("site");
    make_tree(&src, 3_000_000);
    let repo = Arc::new(Repository::open(&a, PASSWORD, &o).await.unwrap());
    let snap = repo
        .backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();

    // Damage the largest pack on destination a.
    let mut packs: Vec<_> = walk(&t.path().join("a/data"));
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let victim = packs.last().unwrap().clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&victim, &bytes).unwrap();
    let pack_name = victim.file_name().unwrap().to_string_lossy().into_owned();

    let report = repo
        .verify(&VerifyOptions {
            read_data: true,
            destination: None,
        })
        .await
        .unwrap();
    assert!(!report.is_ok());
    let da = report.destinations.iter().find(|d| d.url == a).unwrap();
    assert_eq!(da.problems.len(), 1, "{da:?}");
    assert!(da.problems[0].object.ends_with(&pack_name));
    assert_eq!(
        da.problems[0].snapshots,
        vec![snap.id.to_hex()[..8].to_string()]
    );
    let db = report.destinations.iter().find(|d| d.url == b).unwrap();
    assert!(db.problems.is_empty(), "{db:?}");

    let out = t.path().join("restored");
    repo.restore(
        snap.snapshot.tree,
        &out,
        &RestoreOptions::default(),
        no_progress(),
    )
    .await
    .unwrap();
    assert_same_tree(&src, &out);
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_copies_back_what_a_destination_lost_even_without_a_spool() {
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a").to_string_lossy().into_owned();
    let b = t.path().join("b").to_string_lossy().into_owned();
    let o = opts(&t.path().join("spool"));
    Repository::init(&[&a, &b], None, PASSWORD, &o)
        .await
        .unwrap();
    let src = t.path().join("site");
    make_tree(&src, 3_000_000);
    let repo = Arc::new(Repository::open(&a, PASSWORD, &o).await.unwrap());
    repo.backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();
    repo.put_segment("db", 7, b"segment seven").await.unwrap();
    drop(repo);

    // b loses a pack, an index, the snapshot and a segment behind the spool's back; a's copy
    // of another pack is damaged and b loses that one too.
    let mut packs = walk(&t.path().join("b/data"));
    packs.sort();
    assert!(packs.len() >= 2, "{packs:?}");
    let lost = |p: &std::path::Path| std::fs::remove_file(p).unwrap();
    lost(&packs[0]);
    lost(&walk(&t.path().join("b/index"))[0]);
    lost(&walk(&t.path().join("b/snapshots"))[0]);
    lost(&walk(&t.path().join("b/segments"))[0]);
    let damaged_rel = packs[1]
        .strip_prefix(t.path().join("b"))
        .unwrap()
        .to_path_buf();
    let on_a = t.path().join("a").join(&damaged_rel);
    let mut bytes = std::fs::read(&on_a).unwrap();
    bytes[10] ^= 0x01;
    std::fs::write(&on_a, &bytes).unwrap();
    lost(&packs[1]);
    assert!(spool_is_empty(&t.path().join("spool")));

    let repo = Arc::new(Repository::open(&a, PASSWORD, &o).await.unwrap());
    let behind = repo.catch_up().await;
    assert_eq!(behind.len(), 1, "{behind:?}");
    assert_eq!(behind[0].0, b);
    let name = damaged_rel
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(behind[0].1.contains(&name), "{behind:?}");
    assert!(
        !t.path().join("b").join(&damaged_rel).exists(),
        "a damaged copy was spread"
    );
    // Everything else is back on b, byte for byte.
    assert_eq!(walk(&t.path().join("b/data")).len(), packs.len() - 1);
    for dir in ["index", "snapshots", "segments"] {
        let listing = |d: &str| {
            let mut keys: Vec<_> = walk(&t.path().join(d).join(dir))
                .iter()
                .map(|p| p.strip_prefix(t.path().join(d)).unwrap().to_path_buf())
                .collect();
            keys.sort();
            keys
        };
        let (on_a, on_b) = (listing("a"), listing("b"));
        assert_eq!(on_a, on_b, "{dir}");
    }
    let first = packs[0].strip_prefix(t.path().join("b")).unwrap();
    assert!(
        std::fs::read(t.path().join("b").join(first)).unwrap()
            == std::fs::read(t.path().join("a").join(first)).unwrap()
    );
}

/// No spooled object (the per-destination state files do not count).
fn spool_is_empty(p: &std::path::Path) -> bool {
    !p.exists()
        || walk(p)
            .iter()
            .all(|f| f.extension().is_some_and(|e| e == "json"))
}

/// Several `init`s racing for one destination (the nodes of a site started at once): one
/// creates the repository, every other is told it exists, and the one repository left opens
/// with one key and reads back what is written to it. Before, each wrote its own key and the
/// last config won, so one node encrypted with a key the others could not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_inits_leave_one_repository_with_one_key() {
    let t = tempfile::tempdir().unwrap();
    let local = t.path().join("shared").to_string_lossy().into_owned();
    let inits = (0..8).map(|i| {
        let local = local.clone();
        let o = opts(&t.path().join(format!("spool-{i}")));
        async move { Repository::init(&[&local], None, PASSWORD, &o).await }
    });
    let results = futures::future::join_all(inits).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "exactly one init creates the repository");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(r, lifeboat_vault::Error::AlreadyExists { .. }),
            "the others are told it exists: {r}"
        );
    }
    let keys = std::fs::read_dir(t.path().join("shared/keys"))
        .unwrap()
        .count();
    assert_eq!(keys, 1, "the losers took their keys away");
    let o = opts(&t.path().join("spool-open"));
    let repo = Arc::new(Repository::open(&local, PASSWORD, &o).await.unwrap());
    let src = t.path().join("site");
    make_tree(&src, 200_000);
    repo.backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();
    let again = Repository::open(&local, PASSWORD, &o).await.unwrap();
    let report = again.verify(&VerifyOptions::default()).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
}

/// The key file an init that lost the race leaves for a moment (it takes it away once it
/// sees the config is not its own) opens with the same password. A process opening the
/// repository in that moment must still take the repository's own key: before, it took the
/// first key file the password opened, and could seal everything it wrote with keys nobody
/// else had (seen as "index ... fails authentication" on the other nodes of a cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_racing_inits_leftover_key_is_never_used() {
    let t = tempfile::tempdir().unwrap();
    let shared = t.path().join("shared");
    let local = shared.to_string_lossy().into_owned();
    let o = opts(&t.path().join("spool"));
    let repo = Arc::new(
        Repository::init(&[&local], None, PASSWORD, &o)
            .await
            .unwrap(),
    );
    let own = std::fs::read_dir(shared.join("keys"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    // Another init with the same password, elsewhere: its key file is what a loser leaves.
    // Keep making one until its name sorts before the repository's own (listings are in
    // name order), so the old code would have taken it.
    let mut leftover = None;
    for i in 0..40 {
        let other = t.path().join(format!("other-{i}"));
        let other_url = other.to_string_lossy().into_owned();
        Repository::init(&[&other_url], None, PASSWORD, &o)
            .await
            .unwrap();
        let name = std::fs::read_dir(other.join("keys"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .file_name();
        if name < own {
            std::fs::copy(
                other.join("keys").join(&name),
                shared.join("keys").join(&name),
            )
            .unwrap();
            leftover = Some(name);
            break;
        }
    }
    let leftover = leftover.expect("a key name sorting first within 40 tries");
    let src = t.path().join("site");
    make_tree(&src, 100_000);
    repo.backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();
    let opened = Repository::open(&local, PASSWORD, &o).await.unwrap();
    assert_eq!(
        opened.key().key,
        format!("keys/{}", own.to_string_lossy()),
        "the repository's own key, not the leftover"
    );
    let report = opened.verify(&VerifyOptions::default()).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    // With its own key gone, the leftover alone is refused, and said why.
    std::fs::remove_file(shared.join("keys").join(&own)).unwrap();
    let err = Repository::open(&local, PASSWORD, &o)
        .await
        .err()
        .expect("a leftover key opens nothing")
        .to_string();
    assert!(
        err.contains(&leftover.to_string_lossy().to_string()) && err.contains("config names"),
        "{err}"
    );
}
