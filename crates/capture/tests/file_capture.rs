//! File capture on a real directory: every write, change and deletion under a data dir
//! is recorded with the content's hash, nothing is missed when notifications are not
//! available, a restart records only what changed meanwhile, and the file set as of any
//! record can be recomputed.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::wait_for;
use lifeboat_capture::files::{FileCapture, FileCaptureOptions, FileState, hash_file, state_at};
use lifeboat_capture::{FileChange, FileChangeKind};

fn hash_of(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// What is actually on disk under `root`, in the shape `state_at` returns.
fn on_disk(root: &Path) -> BTreeMap<String, FileState> {
    fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, FileState>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path(), &rel, out);
            } else {
                let size = entry.metadata().unwrap().len();
                out.insert(
                    rel,
                    FileState {
                        size,
                        hash: hash_file(&entry.path()).unwrap(),
                    },
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

/// Polls until the accumulated changes satisfy `done`.
fn poll_until(
    capture: &mut FileCapture,
    log: &mut Vec<FileChange>,
    what: &str,
    mut done: impl FnMut(&[FileChange]) -> bool,
) {
    wait_for(what, Duration::from_secs(30), || {
        log.extend(capture.poll().unwrap());
        done(log)
    });
}

/// A data dir `data` with the manifest kept beside it (never inside what is captured).
fn data_dir() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    std::fs::create_dir(&root).unwrap();
    let manifest = dir.path().join("files.json");
    (dir, root, manifest)
}

fn watched(root: &Path, manifest: &Path) -> FileCapture {
    let options = FileCaptureOptions {
        rescan_interval: Duration::from_secs(3600),
        watch: true,
    };
    FileCapture::start(root, manifest, options).unwrap()
}

fn rescan_only(root: &Path, manifest: &Path) -> FileCapture {
    let options = FileCaptureOptions {
        rescan_interval: Duration::from_secs(3600),
        watch: false,
    };
    FileCapture::start(root, manifest, options).unwrap()
}

#[test]
fn writes_changes_and_deletions_are_recorded_with_content_hashes() {
    let (_dir, root, manifest) = data_dir();
    let root = root.as_path();
    let mut capture = watched(root, &manifest);
    let mut log = Vec::new();
    log.extend(capture.poll().unwrap());
    assert!(log.is_empty(), "an empty dir has nothing to record");

    std::fs::create_dir(root.join("uploads")).unwrap();
    std::fs::write(root.join("uploads/cat.png"), b"first").unwrap();
    poll_until(&mut capture, &mut log, "the new file", |log| {
        log.iter().any(|c| {
            c.change
                == FileChangeKind::Written {
                    size: 5,
                    hash: hash_of(b"first"),
                }
        })
    });
    std::fs::write(root.join("uploads/cat.png"), b"second!").unwrap();
    poll_until(&mut capture, &mut log, "the change", |log| {
        log.iter().any(|c| {
            c.change
                == FileChangeKind::Written {
                    size: 7,
                    hash: hash_of(b"second!"),
                }
        })
    });
    std::fs::remove_file(root.join("uploads/cat.png")).unwrap();
    poll_until(&mut capture, &mut log, "the deletion", |log| {
        log.iter()
            .any(|c| c.path == "uploads/cat.png" && c.change == FileChangeKind::Deleted)
    });
    assert!(log.iter().all(|c| c.path == "uploads/cat.png"), "{log:?}");
    assert!(
        log.windows(2).all(|w| w[1].seq == w[0].seq + 1),
        "seqs have no gaps: {log:?}"
    );
}

#[test]
fn a_renamed_directory_is_recorded_as_deletions_and_writes() {
    let (_dir, root, manifest) = data_dir();
    let root = root.as_path();
    std::fs::create_dir(root.join("a")).unwrap();
    std::fs::write(root.join("a/one"), b"1").unwrap();
    std::fs::write(root.join("a/two"), b"2").unwrap();
    let mut capture = watched(root, &manifest);
    let mut log = capture.poll().unwrap();
    assert_eq!(log.len(), 2, "the first poll records what is there");
    std::fs::rename(root.join("a"), root.join("b")).unwrap();
    poll_until(&mut capture, &mut log, "the rename", |log| {
        state_at(log, log.last().unwrap().seq) == on_disk(root)
    });
    assert_eq!(
        state_at(&log, log.last().unwrap().seq)
            .keys()
            .collect::<Vec<_>>(),
        ["b/one", "b/two"]
    );
}

#[test]
fn a_rescan_finds_changes_no_notification_reported() {
    let (_dir, root, manifest) = data_dir();
    let root = root.as_path();
    let mut capture = rescan_only(root, &manifest);
    let mut log = capture.poll().unwrap();
    std::fs::write(root.join("x"), b"x").unwrap();
    std::fs::create_dir_all(root.join("deep/er")).unwrap();
    std::fs::write(root.join("deep/er/y"), b"y").unwrap();
    assert!(
        capture.poll().unwrap().is_empty(),
        "without notifications nothing is seen before the rescan"
    );
    log.extend(capture.rescan().unwrap());
    assert_eq!(state_at(&log, log.last().unwrap().seq), on_disk(root));
}

#[test]
fn a_restart_records_only_what_changed_while_capture_was_down() {
    let (_dir, root, manifest) = data_dir();
    for name in ["keep", "change", "remove"] {
        std::fs::write(root.join(name), name).unwrap();
    }
    let mut log = Vec::new();
    {
        let mut capture = watched(&root, &manifest);
        log.extend(capture.poll().unwrap());
        capture.confirm_durable(log.last().unwrap().seq).unwrap();
    }
    std::fs::write(root.join("change"), "changed while capture was down").unwrap();
    std::fs::remove_file(root.join("remove")).unwrap();
    std::fs::write(root.join("new"), "new").unwrap();

    let mut capture = watched(&root, &manifest);
    let changes = capture.poll().unwrap();
    let mut paths: Vec<_> = changes.iter().map(|c| c.path.as_str()).collect();
    paths.sort();
    assert_eq!(
        paths,
        ["change", "new", "remove"],
        "keep is unchanged: {changes:?}"
    );
    assert_eq!(
        changes[0].seq,
        log.last().unwrap().seq + 1,
        "seqs continue across the restart"
    );
    assert!(
        changes[0].epoch > log[0].epoch,
        "a new session has a new epoch"
    );
    log.extend(changes);
    assert_eq!(state_at(&log, log.last().unwrap().seq), on_disk(&root));
}

#[test]
fn changes_not_confirmed_before_a_crash_are_recorded_again() {
    let (_dir, root, manifest) = data_dir();
    std::fs::write(root.join("a"), "a").unwrap();
    let mut stored = Vec::new();
    {
        let mut capture = rescan_only(&root, &manifest);
        stored.extend(capture.poll().unwrap());
        capture.confirm_durable(stored.last().unwrap().seq).unwrap();
        std::fs::write(root.join("b"), "b").unwrap();
        // Shipped, but the process dies before confirming.
        stored.extend(capture.rescan().unwrap());
    }
    std::fs::write(root.join("b"), "b, changed").unwrap();
    let mut capture = rescan_only(&root, &manifest);
    stored.extend(capture.poll().unwrap());
    let history = lifeboat_capture::record::resolve_history(stored);
    assert!(
        history.windows(2).all(|w| w[1].seq == w[0].seq + 1),
        "{history:?}"
    );
    assert_eq!(
        state_at(&history, history.last().unwrap().seq),
        on_disk(&root)
    );
}

#[test]
fn the_file_set_as_of_every_record_matches_what_was_on_disk_then() {
    let (_dir, root, manifest) = data_dir();
    let root = root.as_path();
    let mut capture = rescan_only(root, &manifest);
    let mut log = capture.poll().unwrap();
    let mut seen: Vec<(u64, BTreeMap<String, FileState>)> = Vec::new();
    for step in 0..12u32 {
        let name = format!("f{}", step % 4);
        if step % 5 == 4 {
            let _ = std::fs::remove_file(root.join(&name));
        } else {
            std::fs::write(root.join(&name), format!("content {step}")).unwrap();
        }
        log.extend(capture.rescan().unwrap());
        seen.push((log.last().map_or(0, |c| c.seq), on_disk(root)));
    }
    for (seq, files) in seen {
        assert_eq!(state_at(&log, seq), files, "as of seq {seq}");
    }
}

#[test]
fn a_missing_data_dir_is_captured_as_empty_until_it_is_created() {
    let (_dir, root, manifest) = data_dir();
    std::fs::remove_dir(&root).unwrap();
    // Watching, with rescans an hour apart: the dir's appearance alone must be noticed.
    let mut capture = watched(&root, &manifest);
    assert!(capture.is_missing());
    assert_eq!(capture.poll().unwrap(), Vec::new(), "nothing to record yet");

    std::fs::create_dir_all(root.join("cats")).unwrap();
    std::fs::write(root.join("cats/tom.png"), b"tom").unwrap();
    let mut log = Vec::new();
    poll_until(&mut capture, &mut log, "the new dir's file", |l| {
        !l.is_empty()
    });
    assert!(!capture.is_missing());
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].path, "cats/tom.png");

    // From then on it is watched like any data dir.
    std::fs::write(root.join("cats/felix.png"), b"felix").unwrap();
    poll_until(&mut capture, &mut log, "a later write", |l| l.len() == 2);
    assert_eq!(state_at(&log, log[1].seq), on_disk(&root));
}
