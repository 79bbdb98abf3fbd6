//! The guestbook as a process: health, start-up next to other instances, clean shutdown.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use reqwest::StatusCode;

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
