//! The vault command surface as scripts use it: init, backup, snapshots --json, restore,
//! verify, forget/prune, status, and clear errors.
mod common_vault;

use common_vault::*;

#[test]
fn backup_snapshots_and_restore_work_as_scripts_expect() {
    let s = Scratch::new();
    make_site(&s.path("data"));
    s.init(&["repo-a", "repo-b"]);
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
    s.init(&["repo-a"]);
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
    s.init(&["repo-a"]);
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
    s.init(&["repo-a"]);
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

#[test]
fn an_empty_password_is_refused_and_nothing_is_created() {
    let s = Scratch::new();
    let out = s
        .lifeboat()
        .env("LIFEBOAT_PASSWORD", "")
        .args(["vault", "init", "--dest", "repo-a"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("empty password"), "{err}");
    assert!(!s.path("repo-a/config").exists());

    std::fs::write(s.path("pw"), "\n").unwrap();
    let out = s
        .lifeboat()
        .env_remove("LIFEBOAT_PASSWORD")
        .args(["vault", "init", "--dest", "repo-a", "--password-file", "pw"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("empty password"), "{err}");
    assert!(!s.path("repo-a/config").exists());
}

#[test]
fn a_truncated_key_file_is_reported_as_damaged_not_as_a_wrong_password() {
    let s = Scratch::new();
    s.init(&["repo-a"]);
    let key = std::fs::read_dir(s.path("repo-a/keys"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = std::fs::read(&key).unwrap();
    std::fs::write(&key, &bytes[..bytes.len() - 40]).unwrap();
    let out = s.run(&["snapshots", "--repo", "repo-a"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("wrong password"), "{err}");
    assert!(err.contains("damaged"), "{err}");
    let name = key.file_name().unwrap().to_string_lossy().into_owned();
    assert!(err.contains(&name), "the damaged file is named: {err}");
}

/// The argon2id memory (KiB) of a repository's key file.
fn key_memory_kib(repo: &std::path::Path) -> u64 {
    let key = std::fs::read_dir(repo.join("keys"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(key).unwrap()).unwrap();
    file["params"]["memory_kib"].as_u64().unwrap()
}

#[test]
fn the_environment_alone_never_weakens_a_new_key() {
    let s = Scratch::new();
    let out = s
        .lifeboat()
        .env("LIFEBOAT_KDF", "fast")
        .args(["vault", "init", "--dest", "repo-a"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        key_memory_kib(&s.path("repo-a")) >= 19 * 1024,
        "a key made without the explicit option is strongly wrapped"
    );
}

#[test]
fn a_weakly_wrapped_key_takes_an_explicit_option_and_is_reported_by_status_and_verify() {
    let s = Scratch::new();
    let out = s.run(&["vault", "init", "--dest", "repo-a", "--insecure-fast-kdf"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning") && err.contains("weakly wrapped"),
        "{err}"
    );
    assert!(key_memory_kib(&s.path("repo-a")) < 19 * 1024);

    let out = s.run(&["vault", "status", "--repo", "repo-a"]);
    assert!(out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("weakly wrapped"), "{all}");
    let status: serde_json::Value =
        serde_json::from_str(&s.ok(&["--json", "vault", "status", "--repo", "repo-a"])).unwrap();
    assert_eq!(status["key"]["weak"], true, "{status}");

    let out = s.run(&["vault", "verify", "--repo", "repo-a"]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("weakly wrapped"), "{all}");
}

#[test]
fn restore_gives_a_setuid_program_back_its_owner_never_the_restoring_user() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let s = Scratch::new();
    make_site(&s.path("home"));
    let prog = s.path("home/bin/tool");
    write(&s.path("home"), "bin/tool", b"#!/bin/sh\nid\n");
    // As root: another user's program (what a backup of /home finds); else the user's own.
    let (uid, gid) = if nix::unistd::geteuid().is_root() {
        (4321, 4322)
    } else {
        let m = std::fs::metadata(&prog).unwrap();
        (m.uid(), m.gid())
    };
    std::os::unix::fs::chown(&prog, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o4755)).unwrap();
    s.init(&["repo-a"]);
    s.ok(&["backup", "--repo", "repo-a", "home"]);
    s.ok(&["restore", "--repo", "repo-a", "latest", "--to", "restored"]);
    let m = std::fs::metadata(s.path("restored/bin/tool")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (uid, gid, 0o4755));
}
