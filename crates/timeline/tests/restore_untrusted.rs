//! A site restore treats what it reads from the vault as untrusted: a checkpoint crafted by
//! whoever held the site's key (a compromised server) can neither make the restore write
//! outside the new copy through a link, nor hand the restoring user (often root) a set-id
//! program.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use common::*;
use lifeboat_timeline::{CHECKPOINT_TAG, RestoreTarget, TimelineWorker, restore_site};
use lifeboat_vault::format::{Node, NodeKind};
use lifeboat_vault::{EntryMeta, Id, Repository, SnapshotEntry, SnapshotInfo, SnapshotWriter};

/// Every entry of a snapshot's tree, depth first, with its path.
async fn flatten(repo: &Repository, tree: Id) -> Vec<(String, Node)> {
    let mut out = Vec::new();
    let mut todo = vec![(String::new(), tree)];
    while let Some((prefix, id)) = todo.pop() {
        let mut subdirs = Vec::new();
        for node in repo.read_tree(&id).await.unwrap().nodes {
            let path = format!("{prefix}{}", node.name);
            if let (NodeKind::Dir, Some(sub)) = (node.kind, node.subtree) {
                subdirs.push((format!("{path}/"), sub));
            }
            out.push((path, node));
        }
        todo.extend(subdirs.into_iter().rev());
    }
    out
}

/// What a crafted checkpoint adds to a real one.
#[derive(Clone)]
enum Extra {
    Dir(&'static str),
    Symlink(&'static str, String),
    SetuidFile(&'static str),
}

/// One entry to write: a real one copied, or an extra.
enum Item {
    Real(Node),
    Extra(Extra),
}

/// Writes a checkpoint with the same tags and description as the latest real one, a moment
/// later, holding its entries plus `extra`.
async fn craft_checkpoint(repo: &Arc<Repository>, extra: Vec<Extra>) {
    let real: SnapshotEntry = repo
        .snapshots()
        .await
        .unwrap()
        .into_iter()
        .rfind(|s| s.snapshot.tags.iter().any(|t| t == CHECKPOINT_TAG))
        .unwrap();
    let mut items: Vec<(String, Item)> = flatten(repo, real.snapshot.tree)
        .await
        .into_iter()
        .map(|(p, n)| (p, Item::Real(n)))
        .collect();
    for e in extra {
        let path = match &e {
            Extra::Dir(p) | Extra::Symlink(p, _) | Extra::SetuidFile(p) => p.to_string(),
        };
        items.push((path, Item::Extra(e)));
    }
    // Component by component: a directory's entries right after it (depth first).
    items.sort_by(|a, b| a.0.split('/').cmp(b.0.split('/')));
    let time = time::OffsetDateTime::parse(
        &real.snapshot.time,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
        + time::Duration::milliseconds(1);
    let r = repo.clone();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut w = SnapshotWriter::start(r, handle, std::time::Duration::from_secs(5)).unwrap();
        let meta = |mode: u32, mtime_ns: i128| EntryMeta {
            mode,
            mtime_ns,
            ..Default::default()
        };
        for (path, item) in &items {
            match item {
                Item::Real(node) => {
                    let m = meta(node.mode, node.mtime_ns);
                    match node.kind {
                        NodeKind::Dir => w.add_dir(path, m).unwrap(),
                        NodeKind::File => w
                            .add_stored_file(path, m, node.content.clone(), node.size, true)
                            .unwrap(),
                        NodeKind::Symlink => w
                            .add_symlink(path, m, node.target.as_deref().unwrap())
                            .unwrap(),
                    }
                }
                Item::Extra(Extra::Dir(_)) => w.add_dir(path, meta(0o755, 0)).unwrap(),
                Item::Extra(Extra::Symlink(_, target)) => {
                    w.add_symlink(path, meta(0o777, 0), target).unwrap()
                }
                // A set-id program, its owner not recorded (whoever crafted it can choose).
                Item::Extra(Extra::SetuidFile(_)) => w
                    .add_file(path, meta(0o6755, 0), &b"#!/bin/sh\nid\n"[..])
                    .unwrap(),
            }
        }
        w.finish(SnapshotInfo {
            paths: real.snapshot.paths.clone(),
            tags: real.snapshot.tags.clone(),
            host: Some(real.snapshot.host.clone()),
            time: Some(
                time.format(&time::format_description::well_known::Rfc3339)
                    .unwrap(),
            ),
            parent: None,
        })
        .unwrap()
    })
    .await
    .unwrap();
}

/// A site whose timeline holds, after its first checkpoint, a new upload `a/passwd`.
async fn site_with_a_later_upload() -> (Site, Arc<Repository>) {
    let site = Site::new();
    let repo = site.init_vault(2).await;
    let worker = TimelineWorker::start(site.sources(), fast_options(), repo.clone())
        .await
        .unwrap();
    site.insert(&site.db(), 1..3);
    site.upload("a/passwd", b"root::0:0:owned:/root:/bin/sh\n");
    worker.ship_now().await.unwrap();
    worker
        .stop(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    (site, repo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_in_a_crafted_checkpoint_never_lets_the_restore_write_outside_the_copy() {
    for case in ["link inside a data dir", "data dir is a link"] {
        let (site, repo) = site_with_a_later_upload().await;
        let outside = site.tmp.path().join("etc");
        std::fs::create_dir_all(outside.join("a")).unwrap();
        let target = outside.to_string_lossy().into_owned();
        let extra = match case {
            "link inside a data dir" => {
                vec![Extra::Dir("uploads"), Extra::Symlink("uploads/a", target)]
            }
            _ => vec![Extra::Symlink("uploads", target)],
        };
        craft_checkpoint(&repo, extra).await;

        let into = site.tmp.path().join("restored");
        let result = restore_site(&repo, RestoreTarget::Latest, &into).await;
        let written: Vec<_> = walk(&outside);
        assert!(
            written.is_empty(),
            "{case}: the restore wrote outside its copy: {written:?} (result: {result:?})"
        );
        let err = result.expect_err("a checkpoint with a link in a data dir is refused");
        assert!(err.to_string().contains("link"), "{case}: {err}");
        assert!(!into.exists(), "{case}: nothing is left at the destination");
    }
}

/// Files under `dir`, recursively.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_id_program_in_a_crafted_checkpoint_comes_back_without_its_set_id_bits() {
    let (site, repo) = site_with_a_later_upload().await;
    craft_checkpoint(&repo, vec![Extra::SetuidFile("uploads/tool")]).await;
    let into = site.tmp.path().join("restored");
    restore_site(&repo, RestoreTarget::Latest, &into)
        .await
        .unwrap();
    let mode = std::fs::metadata(into.join("uploads/tool"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755, "{mode:o}");
    assert_eq!(
        std::fs::read(into.join("uploads/a/passwd")).unwrap(),
        b"root::0:0:owned:/root:/bin/sh\n"
    );
}
