//! The guestbook's side of a rewind: it finds its data through `$LIFEBOAT_STATE_DIR` (run.sh),
//! and the `[credentials] rotate` hook (rotate-credentials.sh) locks whoever held the old admin
//! password or a session out of a restored copy. Real scripts, real binary, real SQLite files.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use reqwest::StatusCode;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// A command for one of the site's scripts with none of the variables that steer it inherited
/// from the test's environment.
fn site_script(name: &str) -> Command {
    let mut command = Command::new(script(name));
    command
        .env("GUESTBOOK_BIN", env!("CARGO_BIN_EXE_guestbook"))
        .env_remove("GUESTBOOK_DATA")
        .env_remove("LIFEBOAT_STATE_DIR")
        .env_remove("GUESTBOOK_ADMIN_PASSWORD")
        .env_remove("GUESTBOOK_ADMIN_PASSWORD_FILE");
    command
}

fn rotate(state_dir: Option<&Path>) -> Output {
    let mut command = site_script("rotate-credentials.sh");
    if let Some(dir) = state_dir {
        command.env("LIFEBOAT_STATE_DIR", dir);
    }
    command.output().expect("run rotate-credentials.sh")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn run_sh_keeps_the_data_in_the_state_dir_lifeboat_gives() {
    let state = tempfile::tempdir().unwrap();
    let mut command = site_script("run.sh");
    command
        .env("LIFEBOAT_STATE_DIR", state.path())
        .env("GUESTBOOK_ADMIN_PASSWORD", PASSWORD);
    let gb = Guestbook::spawn(command);
    assert_eq!(gb.data_dir(), state.path().join("data"));
    assert!(state.path().join("data/guestbook.db").exists());
    assert_eq!(login(&gb, PASSWORD).await.status(), StatusCode::OK);
}

#[test]
fn run_sh_prefers_an_explicit_guestbook_data() {
    let state = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut command = site_script("run.sh");
    command
        .env("LIFEBOAT_STATE_DIR", state.path())
        .env("GUESTBOOK_DATA", data.path());
    let gb = Guestbook::spawn(command);
    assert_eq!(gb.data_dir(), data.path());
    assert!(!state.path().join("data").exists());
}

#[tokio::test]
async fn the_rotate_hook_locks_out_the_old_password_and_every_session() {
    // A restored copy: the state of a site where the attacker knew the password and held a
    // session, with no instance running on it yet.
    let state = tempfile::tempdir().unwrap();
    let data = state.path().join("data");
    let stolen_cookie = {
        let before = Guestbook::start(&data);
        session_cookie(&login(&before, PASSWORD).await)
    };

    let out = rotate(Some(state.path()));
    assert!(
        out.status.success(),
        "the hook succeeds: {}",
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line for the owner: {stdout:?}");
    let new_password = lines[0]
        .strip_prefix("new admin password: ")
        .expect("the line gives the new password");
    assert!(
        new_password.len() >= 24 && new_password.chars().all(|c| c.is_ascii_alphanumeric()),
        "a long random password: {new_password:?}"
    );

    let after = Guestbook::start_with(&data, &[]);
    assert_eq!(
        login(&after, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED,
        "the old password no longer works"
    );
    let stolen_session = client()
        .post(after.url("/admin/password"))
        .header("cookie", &stolen_cookie)
        .json(&serde_json::json!({ "password": "attacker-choice" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        stolen_session.status(),
        StatusCode::UNAUTHORIZED,
        "a session from before the rotation is signed out"
    );
    assert_eq!(
        login(&after, new_password).await.status(),
        StatusCode::OK,
        "the printed password works"
    );
}

#[test]
fn two_rotations_give_two_different_passwords() {
    let state = tempfile::tempdir().unwrap();
    drop(Guestbook::start(&state.path().join("data")));
    let first = text(&rotate(Some(state.path())).stdout);
    let second = text(&rotate(Some(state.path())).stdout);
    assert!(first.starts_with("new admin password: "), "{first:?}");
    assert_ne!(first, second);
}

#[test]
fn the_rotate_hook_without_a_state_dir_says_what_to_set() {
    let out = rotate(None);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "nothing for the owner on failure");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("LIFEBOAT_STATE_DIR is not set"), "{stderr}");
}

#[test]
fn the_rotate_hook_refuses_a_state_dir_without_a_database() {
    let state = tempfile::tempdir().unwrap();
    let out = rotate(Some(state.path()));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "nothing for the owner on failure");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("no guestbook database at") && stderr.contains("data/guestbook.db"),
        "{stderr}"
    );
    assert!(
        !state.path().join("data").exists(),
        "the hook creates no empty database"
    );
}
