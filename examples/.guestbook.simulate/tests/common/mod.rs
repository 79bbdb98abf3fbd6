//! Helpers for the guestbook's end-to-end tests: the real binary on a free port (it prints the
//! port it got), real SQLite files, real HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

pub const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
pub const PASSWORD: &str = "initial-secret-1";

/// A running guestbook process, killed when dropped.
pub struct Guestbook {
    pub child: Child,
    pub addr: SocketAddr,
    pub lines: mpsc::Receiver<String>,
    pub listening_line: String,
}

impl Guestbook {
    pub fn start(data: &Path) -> Guestbook {
        Self::start_with(data, &[("GUESTBOOK_ADMIN_PASSWORD", PASSWORD)])
    }

    pub fn start_with(data: &Path, env: &[(&str, &str)]) -> Guestbook {
        let mut command = Command::new(env!("CARGO_BIN_EXE_guestbook"));
        command
            .env("GUESTBOOK_DATA", data)
            .env_remove("GUESTBOOK_ADMIN_PASSWORD")
            .env_remove("GUESTBOOK_ADMIN_PASSWORD_FILE")
            .envs(env.iter().copied());
        Self::spawn(command)
    }

    /// Starts `command` (the binary, or a script that execs it) on a free port and waits for
    /// its listening line.
    pub fn spawn(mut command: Command) -> Guestbook {
        let mut child = command
            .env("PORT", "0")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the guestbook");
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
            listening_line: String::new(),
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
                gb.listening_line = line;
                return gb;
            }
        }
    }

    /// The data dir the guestbook said it uses on its listening line.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.listening_line
            .split(", data ")
            .nth(1)
            .expect("the listening line names the data dir")
            .trim_end_matches(')')
            .into()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Guestbook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

pub async fn entries(gb: &Guestbook) -> Vec<Value> {
    let resp = client().get(gb.url("/api/entries")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json::<Vec<Value>>().await.unwrap()
}

pub fn multipart(field: &str, filename: &str, content: &[u8]) -> (String, Vec<u8>) {
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

pub async fn login(gb: &Guestbook, password: &str) -> reqwest::Response {
    client()
        .post(gb.url("/login"))
        .json(&serde_json::json!({ "password": password }))
        .send()
        .await
        .unwrap()
}

pub fn session_cookie(resp: &reqwest::Response) -> String {
    let set_cookie = resp
        .headers()
        .get("set-cookie")
        .expect("a successful login sets a cookie")
        .to_str()
        .unwrap();
    set_cookie.split(';').next().unwrap().to_string()
}
