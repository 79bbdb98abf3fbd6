//! Forget and prune free space without touching what remaining snapshots need; locks keep
//! prune away from running backups, and a dead process's lock blocks nobody.
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use lifeboat_vault::{
    BackupOptions, Error, Id, KeepPolicy, LockKind, PruneFaultHook, PruneOptions, PruneStep,
    Repository, RestoreOptions, VerifyOptions,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_and_prune_free_space_and_keep_what_remaining_snapshots_need() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("site");
    make_tree(&src, 4_000_000);
    let repo = new_repo(t.path()).await;
    repo.backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();
    std::fs::write(src.join("uploads/2026/02/big.bin"), noise(77, 6_000_000)).unwrap();
    std::fs::remove_file(src.join("dup/one.bin")).unwrap();
    let kept = repo
        .backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();
    let before = dir_bytes(&t.path().join("repo"));

    let removed = repo
        .forget(
            &KeepPolicy {
                last: 1,
                ..Default::default()
            },
            false,
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(removed.len(), 1);
    let summary = repo.prune(&PruneOptions::default()).await.unwrap();
    let after = dir_bytes(&t.path().join("repo"));
    assert!(
        after + 3_500_000 < before,
        "prune freed only {} bytes: {summary:?}",
        before - after
    );

    let report = repo
        .verify(&VerifyOptions {
            read_data: true,
            destination: None,
        })
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    let out = t.path().join("restored");
    repo.restore(
        kept.snapshot.tree,
        &out,
        &RestoreOptions::default(),
        no_progress(),
    )
    .await
    .unwrap();
    assert_same_tree(&src, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_waits_for_a_running_backup_lock_and_says_who_holds_it() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path()).await;
    let backup_lock = repo.lock(LockKind::Shared, Duration::ZERO).await.unwrap();
    let err = repo.prune(&PruneOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    assert!(
        err.to_string().contains(&std::process::id().to_string()),
        "{err}"
    );
    backup_lock.release().await;
    repo.prune(&PruneOptions::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_left_by_a_dead_process_does_not_block() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path()).await;
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let lock = format!(
        r#"{{"kind":"exclusive","host":"{host}","pid":{dead_pid},"started":{now},"refreshed":{now}}}"#
    );
    std::fs::create_dir_all(t.path().join("repo/locks")).unwrap();
    std::fs::write(t.path().join("repo/locks/0123456789abcdef"), lock).unwrap();
    let held = repo
        .lock(LockKind::Exclusive, Duration::ZERO)
        .await
        .unwrap();
    held.release().await;
    assert!(
        !t.path().join("repo/locks/0123456789abcdef").exists(),
        "the dead lock is cleaned up"
    );
}

/// Makes every file under `dir` look last modified `ago` in the past.
fn age_files(dir: &Path, ago: Duration) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            age_files(&p, ago);
        } else {
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(SystemTime::now() - ago).unwrap();
        }
    }
}

/// Regression: with `--unindexed-grace 0s`, a prune that crossed a second boundary between
/// repacking and its sweep of unindexed leftovers deleted the packs it had just repacked into
/// (no index it read at its start names them), so the snapshots it kept lost blobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_that_outlasts_the_grace_period_keeps_the_packs_it_repacked_into() {
    let t = tempfile::tempdir().unwrap();
    let (repo, kept) = repository_with_work_for_prune(t.path()).await;

    // Just before its sweep, every pack looks older than the grace period, as when a prune
    // takes longer than the grace.
    let data = t.path().join("repo/data");
    let stall: PruneFaultHook = Arc::new(move |step| {
        if step == PruneStep::PacksDeleted {
            age_files(&data, Duration::from_secs(2 * 3600));
        }
    });
    let summary = repo
        .prune(&PruneOptions {
            unindexed_grace: Duration::from_secs(3600),
            fault: Some(stall),
            ..PruneOptions::default()
        })
        .await
        .unwrap();
    assert!(
        summary.packs_repacked >= 1 && summary.packs_written >= 1,
        "the case needs a repack: {summary:?}"
    );

    assert_intact(t.path(), kept, "after a prune that outlasted its grace").await;
}

/// Two backups of a tree with a changed file and the first one forgotten: a prune of it
/// repacks, writes a new index, replaces the old ones and deletes packs. Returns the kept
/// snapshot's tree.
async fn repository_with_work_for_prune(dir: &Path) -> (Arc<Repository>, Id) {
    let src = dir.join("site");
    make_tree(&src, 2_000_000);
    let repo = new_repo(dir).await;
    repo.backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();
    std::fs::write(src.join("uploads/2026/01/photo.jpg"), noise(9, 300_000)).unwrap();
    let kept = repo
        .backup(&[&src], &BackupOptions::default(), no_progress())
        .await
        .unwrap();
    let policy = KeepPolicy {
        last: 1,
        ..Default::default()
    };
    repo.forget(&policy, false, Duration::ZERO).await.unwrap();
    (repo, kept.snapshot.tree)
}

/// The repository in `dir` as the next process opens it.
async fn reopen(dir: &Path) -> Arc<Repository> {
    let dest = dir.join("repo").to_string_lossy().into_owned();
    Arc::new(
        Repository::open(&dest, PASSWORD, &opts(&dir.join("spool")))
            .await
            .unwrap(),
    )
}

/// The kept snapshot verifies and restores exactly as `dir/site` is, in a freshly opened
/// repository. Returns how many packs no index names.
async fn assert_intact(dir: &Path, tree: Id, what: &str) -> u64 {
    let repo = reopen(dir).await;
    let report = repo
        .verify(&VerifyOptions {
            read_data: true,
            destination: None,
        })
        .await
        .unwrap();
    assert!(report.is_ok(), "{what}: {report:?}");
    let out = dir.join("restored");
    let _ = std::fs::remove_dir_all(&out);
    repo.restore(tree, &out, &RestoreOptions::default(), no_progress())
        .await
        .unwrap();
    assert_same_tree(&dir.join("site"), &out);
    report.destinations[0].unindexed_packs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_stopped_at_any_step_leaves_the_kept_snapshots_restorable() {
    for stop_at in [
        PruneStep::Repacked,
        PruneStep::IndexWritten,
        PruneStep::OldIndexesDeleted,
        PruneStep::PacksDeleted,
    ] {
        let t = tempfile::tempdir().unwrap();
        let (repo, kept) = repository_with_work_for_prune(t.path()).await;
        // The prune stops dead at `stop_at`, as if killed there: nothing after it runs.
        let stop: PruneFaultHook = Arc::new(move |step| {
            if step == stop_at {
                panic!("prune stopped at {step:?}");
            }
        });
        let opts = PruneOptions {
            unindexed_grace: Duration::ZERO,
            fault: Some(stop),
            ..PruneOptions::default()
        };
        let stopped = tokio::spawn(async move { repo.prune(&opts).await }).await;
        assert!(
            stopped.is_err_and(|e| e.is_panic()),
            "{stop_at:?} was reached"
        );
        // A killed process's lock is dead by its pid; this one ran in the test's own process.
        std::fs::remove_dir_all(t.path().join("repo/locks")).unwrap();
        assert_intact(
            t.path(),
            kept,
            &format!("after a prune stopped at {stop_at:?}"),
        )
        .await;

        // The next prune, once the leftovers are older than its grace, finishes the work.
        age_files(&t.path().join("repo/data"), Duration::from_secs(2 * 3600));
        reopen(t.path())
            .await
            .prune(&PruneOptions::default())
            .await
            .unwrap();
        let after = format!("after the prune that followed one stopped at {stop_at:?}");
        let leftovers = assert_intact(t.path(), kept, &after).await;
        assert_eq!(leftovers, 0, "{after}: packs no index names are left");
    }
}
