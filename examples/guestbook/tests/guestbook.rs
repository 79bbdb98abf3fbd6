//! End-to-end tests of the guestbook: the real binary on a free port, real SQLite files, real
//! HTTP. Each test states one promise the site makes to its users (and to Lifeboat's tests).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
const PASSWORD: &str = "initial-secret-1";

/// A running guestbook process, killed when dropped.
struct Guestbook {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
}

impl Guestbook {
    fn start(data: &Path) -> Guestbook {
        Self::start_with(data, &[("GUESTBOOK_ADMIN_PASSWORD", PASSWORD)])
    }

    fn start_with(data: &Path, env: &[(&str, &str)]) -> Guestbook {
        let mut child = Command::new(env!("CARGO_BIN_EXE_guestbook"))
            .env("PORT", "0")
            .env("GUESTBOOK_DATA", data)
            .env_remove("GUESTBOOK_ADMIN_PASSWORD")
            .env_remove("GUESTBOOK_ADMIN_PASSWORD_FILE")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the guestbook binary");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Owned by the guard from here on, so a failed start never leaves a process behind.
        let mut gb = Guestbook {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            lines,
        };
        let deadline = std::time::Instant::now() + STARTUP_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = gb
                .lines
                .recv_timeout(left)
                .expect("the guestbook printed its listening line in time");
            if let Some(rest) = line.split("listening on http://").nth(1) {
                gb.addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                return gb;
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Guestbook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn entries(gb: &Guestbook) -> Vec<Value> {
    let resp = client().get(gb.url("/api/entries")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json::<Vec<Value>>().await.unwrap()
}

fn multipart(field: &str, filename: &str, content: &[u8]) -> (String, Vec<u8>) {
    let boundary = "XyZboundary1234";
    let mut body = Vec::new();
    write!(
        body,
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .unwrap();
    body.extend_from_slice(content);
    write!(body, "\r\n--{boundary}--\r\n").unwrap();
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn login(gb: &Guestbook, password: &str) -> reqwest::Response {
    client()
        .post(gb.url("/login"))
        .json(&serde_json::json!({ "password": password }))
        .send()
        .await
        .unwrap()
}

fn session_cookie(resp: &reqwest::Response) -> String {
    let set_cookie = resp
        .headers()
        .get("set-cookie")
        .expect("a successful login sets a cookie")
        .to_str()
        .unwrap();
    set_cookie.split(';').next().unwrap().to_string()
}

#[tokio::test]
async fn entries_posted_as_form_or_json_are_listed_in_order() {
    let data = tempfile::tempdir().unwrap();
    let gb = Guestbook::start(data.path());
    let c = client();
    let resp = c
        .post(gb.url("/entries"))
        .form(&[("text", "hello from a form")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let first: Value = resp.json().await.unwrap();
    let resp = c
        .post(gb.url("/entries"))
        .json(&serde_json::json!({ "text": "hello from json" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let second: Value = resp.json().await.unwrap();
    assert!(second["id"].as_i64().unwrap() > first["id"].as_i64().unwrap());

    let list = entries(&gb).await;
    let texts: Vec<&str> = list.iter().map(|e| e["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["hello from a form", "hello from json"]);
    assert_eq!(list[0]["id"], first["id"]);
    let created = list[0]["created_at"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
            .is_ok_and(|t| t.offset().is_utc()),
        "created_at is RFC 3339 UTC: {created}"
    );
}

#[tokio::test]
async fn the_html_page_shows_entries_with_markup_escaped() {
    let data = tempfile::tempdir().unwrap();
    let gb = Guestbook::start(data.path());
    let resp = client()
        .post(gb.url("/entries"))
        .form(&[("text", "<script>alert('pwned')</script>")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let page = client().get(gb.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;"));
    assert!(!html.contains("<script>"));
}

#[tokio::test]
async fn empty_or_too_long_entries_are_refused_and_not_stored() {
    let data = tempfile::tempdir().unwrap();
    let gb = Guestbook::start(data.path());
    for text in ["", "   ", &"x".repeat(2001)] {
        let resp = client()
            .post(gb.url("/entries"))
            .json(&serde_json::json!({ "text": text }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].as_str().is_some());
    }
    assert!(entries(&gb).await.is_empty());
}

#[tokio::test]
async fn an_uploaded_file_can_be_downloaded_byte_for_byte() {
    let data = tempfile::tempdir().unwrap();
    let gb = Guestbook::start(data.path());
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (ctype, body) = multipart("file", "photo.bin", &content);
    let resp = client()
        .post(gb.url("/upload"))
        .header("content-type", ctype)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["name"], "photo.bin");
    assert_eq!(
        std::fs::read(data.path().join("uploads/photo.bin")).unwrap(),
        content
    );
    let got = client()
        .get(gb.url("/uploads/photo.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap().as_ref(), content.as_slice());
    let missing = client()
        .get(gb.url("/uploads/nothing.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    // No temporary file is left behind.
    let names: Vec<PathBuf> = std::fs::read_dir(data.path().join("uploads"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(names, [data.path().join("uploads/photo.bin")]);
}

#[tokio::test]
async fn uploads_with_names_that_escape_the_uploads_dir_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let gb = Guestbook::start(data.path());
    for name in ["../escape.txt", "..", "a/b.txt", ".hidden"] {
        let (ctype, body) = multipart("file", name, b"evil");
        let resp = client()
            .post(gb.url("/upload"))
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "name {name:?}");
    }
    assert!(!data.path().join("escape.txt").exists());
    assert_eq!(
        std::fs::read_dir(data.path().join("uploads"))
            .unwrap()
            .count(),
        0
    );
    let resp = client()
        .get(gb.url("/uploads/..%2Fguestbook.db"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

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
async fn healthz_answers_ok_after_querying_the_database() {
    let data = tempfile::tempdir().unwrap();
    let gb = Guestbook::start(data.path());
    let resp = client().get(gb.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "ok");
    assert!(data.path().join("guestbook.db").exists());
}

#[tokio::test]
async fn two_instances_writing_to_one_database_lose_no_entry() {
    let data = tempfile::tempdir().unwrap();
    let a = Guestbook::start(data.path());
    let b = Guestbook::start(data.path());
    const WRITERS_PER_INSTANCE: usize = 4;
    const ENTRIES_PER_WRITER: usize = 40;
    let mut tasks = Vec::new();
    for (name, gb) in [("a", &a), ("b", &b)] {
        for writer in 0..WRITERS_PER_INSTANCE {
            let url = gb.url("/entries");
            tasks.push(tokio::spawn(async move {
                let c = client();
                let mut ids = Vec::new();
                for n in 0..ENTRIES_PER_WRITER {
                    let resp = c
                        .post(&url)
                        .json(&serde_json::json!({ "text": format!("{name}-{writer}-{n}") }))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), StatusCode::CREATED);
                    let body: Value = resp.json().await.unwrap();
                    ids.push(body["id"].as_i64().unwrap());
                }
                ids
            }));
        }
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    let total = 2 * WRITERS_PER_INSTANCE * ENTRIES_PER_WRITER;
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), total, "every acknowledged id is distinct");
    let from_a = entries(&a).await;
    let from_b = entries(&b).await;
    assert_eq!(from_a.len(), total);
    assert_eq!(from_a, from_b);
}

#[tokio::test]
async fn sigterm_stops_the_guestbook_cleanly() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let data = tempfile::tempdir().unwrap();
    let mut gb = Guestbook::start(data.path());
    assert_eq!(
        client()
            .get(gb.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    kill(Pid::from_raw(gb.child.id() as i32), Signal::SIGTERM).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = gb.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the guestbook exits after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "clean exit after SIGTERM: {status}");
    let said: Vec<String> = gb.lines.try_iter().collect();
    assert!(said.iter().any(|l| l.contains("stopped")), "{said:?}");
}

#[tokio::test]
async fn instances_started_at_the_same_moment_on_a_fresh_data_dir_all_come_up() {
    let data = tempfile::tempdir().unwrap();
    let path = data.path().to_path_buf();
    let instances: Vec<Guestbook> = std::thread::scope(|scope| {
        let starting: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| Guestbook::start(&path)))
            .collect();
        starting.into_iter().map(|s| s.join().unwrap()).collect()
    });
    for gb in &instances {
        let resp = client().get(gb.url("/healthz")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    assert_eq!(
        login(&instances[2], PASSWORD).await.status(),
        StatusCode::OK
    );
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
async fn a_closed_log_pipe_does_not_crash_the_site() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_guestbook"))
        .env("PORT", "0")
        .env("GUESTBOOK_DATA", data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    {
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        reader.read_line(&mut first).unwrap();
        // Dropping the reader closes the pipe: every later log line hits a broken pipe.
    }
    let addr = first.split("listening on http://").nth(1).unwrap();
    let addr = addr.split_whitespace().next().unwrap();
    let health = client()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the guestbook did not exit after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.success(),
        "clean exit despite the closed pipe: {status}"
    );
}

#[tokio::test]
async fn entries_can_be_read_page_by_page() {
    let data = tempfile::tempdir().unwrap();
    let gb = Guestbook::start(data.path());
    let mut ids = Vec::new();
    for n in 0..5 {
        let resp = client()
            .post(gb.url("/entries"))
            .json(&serde_json::json!({ "text": format!("entry {n}") }))
            .send()
            .await
            .unwrap();
        let body: Value = resp.json().await.unwrap();
        ids.push(body["id"].clone());
    }
    let page: Vec<Value> = client()
        .get(gb.url(&format!("/api/entries?after={}&limit=2", ids[1])))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let got: Vec<&Value> = page.iter().map(|e| &e["id"]).collect();
    assert_eq!(got, [&ids[2], &ids[3]]);
    let bad = client()
        .get(gb.url("/api/entries?after=yesterday"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_retried_post_with_the_same_idempotency_key_adds_one_entry() {
    let data = tempfile::tempdir().unwrap();
    let a = Guestbook::start(data.path());
    let b = Guestbook::start(data.path());
    let mut ids = Vec::new();
    // The retry may land on another instance, as it does behind the front door.
    for gb in [&a, &b, &a] {
        let resp = client()
            .post(gb.url("/entries"))
            .header("idempotency-key", "client-7-request-42")
            .json(&serde_json::json!({ "text": "only once" }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let body: Value = resp.json().await.unwrap();
        ids.push(body["id"].clone());
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(entries(&b).await.len(), 1);
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
