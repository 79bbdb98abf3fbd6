//! The vault command surface as scripts use it: init, backup, snapshots --json, restore,
//! verify, forget/prune, status, and clear errors.
mod common_vault;

use common_vault::*;

#[test]
fn backup_snapshots_and_restore_work_as_scripts_expect() {
    let s = Scratch::new();
    make_site(&s.path("data"));
    s.ok(&["vault", "init", "--dest", "repo-a", "--dest", "repo-b"]);
    let first = s
        .ok(&["backup", "--repo", "repo-a", "data/"])
        .trim()
        .to_string();
    assert_eq!(first.len(), 64, "backup prints the snapshot id: {first:?}");
    write(&s.path("data"), "uploads/2026/new.txt", b"new upload");
    let second = s
        .ok(&["backup", "--repo", "repo-a", "--tag", "nightly", "data/"])
        .trim()
        .to_string();

    // Any destination names the repository; the list is oldest first.
    let list = s.snapshots("repo-b");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], first);
    assert_eq!(list[1]["id"], second);
    assert_eq!(list[1]["tags"], serde_json::json!(["nightly"]));
    assert!(list[0]["time"].as_str().unwrap() <= list[1]["time"].as_str().unwrap());
    assert!(list[0]["paths"][0].as_str().unwrap().ends_with("/data"));

    s.ok(&[
        "restore",
        "--repo",
        "repo-b",
        &second[..10],
        "--to",
        "restored",
    ]);
    assert_same_tree(&s.path("data"), &s.path("restored"));

    s.ok(&[
        "restore",
        "--repo",
        "repo-a",
        "latest",
        "--to",
        "only-2026",
        "--include",
        "uploads/2026/",
    ]);
    assert_same_tree(
        &s.path("data/uploads/2026"),
        &s.path("only-2026/uploads/2026"),
    );
    assert!(!s.path("only-2026/index.html").exists());

    let verify = s.ok(&["vault", "verify", "--repo", "repo-a", "--read-data"]);
    assert!(verify.contains("no problems found"), "{verify}");
    let status = s.ok(&["--json", "vault", "status", "--repo", "repo-a"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["destinations"].as_array().unwrap().len(), 2);
    assert!(
        status["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["reachable"] == true && d["objects_behind"] == 0)
    );

    s.ok(&["vault", "forget", "--repo", "repo-a", "--keep-last", "1"]);
    s.ok(&["vault", "prune", "--repo", "repo-a"]);
    let list = s.snapshots("repo-a");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], second);
}

#[test]
fn restore_refuses_a_non_empty_target_and_leaves_it_alone() {
    let s = Scratch::new();
    make_site(&s.path("data"));
    s.ok(&["vault", "init", "--dest", "repo-a"]);
    s.ok(&["backup", "--repo", "repo-a", "data"]);
    write(&s.path("target"), "mine.txt", b"mine");
    let out = s.run(&["restore", "--repo", "repo-a", "latest", "--to", "target"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not empty") && err.contains("--overwrite"),
        "{err}"
    );
    let entries: Vec<_> = std::fs::read_dir(s.path("target")).unwrap().collect();
    assert_eq!(entries.len(), 1);
}

#[test]
fn a_wrong_password_or_a_missing_repository_is_a_clear_error() {
    let s = Scratch::new();
    make_site(&s.path("data"));
    s.ok(&["vault", "init", "--dest", "repo-a"]);
    let out = s
        .lifeboat()
        .env("LIFEBOAT_PASSWORD", "guess")
        .args(["snapshots", "--repo", "repo-a"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong password"), "{err}");
    assert!(
        !err.contains("guess"),
        "the password must never be printed: {err}"
    );

    let out = s.run(&["backup", "--repo", "no-such-repo", "data"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no repository at") && err.contains("vault init"),
        "{err}"
    );
    assert!(!s.path("no-such-repo").exists());

    // LIFEBOAT_REPO stands for --repo, and --password-file for the variable.
    std::fs::write(s.path("pw"), format!("{PASSWORD}\n")).unwrap();
    let out = s
        .lifeboat()
        .env_remove("LIFEBOAT_PASSWORD")
        .env("LIFEBOAT_REPO", "repo-a")
        .args(["snapshots", "--password-file", "pw"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn two_backups_running_at_once_into_one_repository_both_succeed() {
    let s = Scratch::new();
    make_site(&s.path("site-one"));
    make_site(&s.path("site-two"));
    write(&s.path("site-two"), "only-two.txt", &noise(9, 2_000_000));
    s.ok(&["vault", "init", "--dest", "repo-a"]);
    let spawn = |dir: &str| {
        s.lifeboat()
            .args(["backup", "--repo", "repo-a", "--lock-wait", "60s", dir])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (one, two) = (spawn("site-one"), spawn("site-two"));
    let (one, two) = (
        one.wait_with_output().unwrap(),
        two.wait_with_output().unwrap(),
    );
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    assert!(
        two.status.success(),
        "{}",
        String::from_utf8_lossy(&two.stderr)
    );
    let verify = s.ok(&["vault", "verify", "--repo", "repo-a", "--read-data"]);
    assert!(verify.contains("no problems found"), "{verify}");
    for (out, dir) in [(one, "site-one"), (two, "site-two")] {
        let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let to = format!("restored-{dir}");
        s.ok(&["restore", "--repo", "repo-a", &id, "--to", &to]);
        assert_same_tree(&s.path(dir), &s.path(&to));
    }
}
