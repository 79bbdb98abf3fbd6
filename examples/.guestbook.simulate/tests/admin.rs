//! The admin login: initial password, sessions, password changes and rotation.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn the_admin_logs_in_with_the_initial_password_and_can_change_it() {
    let data = tempfile::tempdir().unwrap();
    let gb = Guestbook::start(data.path());
    assert_eq!(
        login(&gb, "wrong password").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let resp = login(&gb, PASSWORD).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = session_cookie(&resp);

    let anonymous = client()
        .post(gb.url("/admin/password"))
        .json(&serde_json::json!({ "password": "attacker-choice" }))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    let changed = client()
        .post(gb.url("/admin/password"))
        .header("cookie", &cookie)
        .form(&[("password", "rotated-secret-2")])
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    assert_eq!(
        login(&gb, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login(&gb, "rotated-secret-2").await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_initial_password_is_ignored_once_the_database_has_one() {
    let data = tempfile::tempdir().unwrap();
    drop(Guestbook::start(data.path()));
    let gb = Guestbook::start_with(
        data.path(),
        &[("GUESTBOOK_ADMIN_PASSWORD", "another-initial-3")],
    );
    assert_eq!(login(&gb, PASSWORD).await.status(), StatusCode::OK);
    assert_eq!(
        login(&gb, "another-initial-3").await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn the_initial_password_can_come_from_a_secrets_file() {
    let data = tempfile::tempdir().unwrap();
    let secret = data.path().join("admin_password");
    std::fs::write(&secret, "from-a-file-4\n").unwrap();
    let gb = Guestbook::start_with(
        data.path(),
        &[("GUESTBOOK_ADMIN_PASSWORD_FILE", secret.to_str().unwrap())],
    );
    assert_eq!(login(&gb, "from-a-file-4").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn set_admin_password_rotates_the_password_and_signs_every_session_out() {
    let data = tempfile::tempdir().unwrap();
    let gb = Guestbook::start(data.path());
    let stolen = session_cookie(&login(&gb, PASSWORD).await);

    let mut rotate = Command::new(env!("CARGO_BIN_EXE_guestbook"))
        .arg("set-admin-password")
        .env("GUESTBOOK_DATA", data.path())
        .env_remove("GUESTBOOK_ADMIN_PASSWORD")
        .env_remove("GUESTBOOK_ADMIN_PASSWORD_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    rotate
        .stdin
        .take()
        .unwrap()
        .write_all(b"fresh-after-incident\n")
        .unwrap();
    assert!(rotate.wait().unwrap().success());

    assert_eq!(
        login(&gb, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login(&gb, "fresh-after-incident").await.status(),
        StatusCode::OK
    );
    let with_stolen_cookie = client()
        .post(gb.url("/admin/password"))
        .header("cookie", &stolen)
        .json(&serde_json::json!({ "password": "attacker-choice" }))
        .send()
        .await
        .unwrap();
    assert_eq!(with_stolen_cookie.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_login_on_one_instance_is_valid_on_another() {
    let data = tempfile::tempdir().unwrap();
    let a = Guestbook::start(data.path());
    let b = Guestbook::start(data.path());
    let cookie = session_cookie(&login(&a, PASSWORD).await);
    let changed = client()
        .post(b.url("/admin/password"))
        .header("cookie", &cookie)
        .json(&serde_json::json!({ "password": "changed-via-b-5" }))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    assert_eq!(login(&a, "changed-via-b-5").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn without_an_admin_password_login_says_how_to_set_one() {
    let data = tempfile::tempdir().unwrap();
    let gb = Guestbook::start_with(data.path(), &[]);
    let resp = login(&gb, "anything-at-all").await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("guestbook set-admin-password")
    );
}
