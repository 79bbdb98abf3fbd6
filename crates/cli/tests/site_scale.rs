//! Scaling 3 -> 5 -> 2 under load loses no request.
mod common;

use common::{Lifeboat, Load, SiteDir, assert_no_failures};
use tokio::task::block_in_place;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scaling_up_and_down_under_load_loses_no_request() {
    let site = SiteDir::guestbook(3);
    let lifeboat = block_in_place(|| Lifeboat::up(site.path()));
    block_in_place(|| lifeboat.wait_healthy(3));
    let load = Load::start(&lifeboat.proxy, 4, None);
    load.wait_for_requests(60).await;

    let out = block_in_place(|| lifeboat.cli(&["scale", "web=5"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = block_in_place(|| lifeboat.wait_healthy(5));
    let ids: Vec<&str> = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["web-1", "web-2", "web-3", "web-4", "web-5"]);
    load.wait_for_requests(60).await;

    let out = block_in_place(|| lifeboat.cli(&["scale", "web=2"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = block_in_place(|| lifeboat.wait_healthy(2));
    let ids: Vec<&str> = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["web-1", "web-2"]);
    load.wait_for_requests(60).await;

    let outcomes = load.stop().await;
    assert_no_failures(&outcomes);
    let events = block_in_place(|| lifeboat.events());
    let scaled: Vec<(u64, u64)> = events
        .iter()
        .filter(|e| e["kind"] == "scaled")
        .map(|e| (e["from"].as_u64().unwrap(), e["to"].as_u64().unwrap()))
        .collect();
    assert_eq!(scaled, [(3, 5), (5, 2)]);
}

/// Clients that ask for a large download and never read it: each holds one of the front
/// door's connections open with its response stuck in the socket buffers.
fn stall_clients(proxy: &str, path: &str, n: usize) -> Vec<std::net::TcpStream> {
    use std::io::Write;
    let addr = proxy.trim_start_matches("http://");
    (0..n)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            // A small receive buffer, so the response backs up at once.
            write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
            s
        })
        .collect()
}

/// Four anonymous clients that never read a 48 MiB download must not freeze the site's
/// operations: a scale-down, a rewind and `down` each finish within the stop timeout plus a
/// margin, cutting the stuck requests, instead of waiting for them for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_that_never_read_do_not_hold_scaling_rewind_or_down() {
    use std::time::{Duration, Instant};
    let site = SiteDir::with_manifest(&format!(
        r#"[site]
name = "guestbook"
[processes.web]
command = "{}"
replicas = 3
stop_timeout = "2s"
env = {{ GUESTBOOK_ADMIN_PASSWORD = "initial-admin-pw" }}
health = {{ path = "/healthz", interval = "200ms", timeout = "2s" }}
[state]
sqlite = ["data/guestbook.db"]
dirs = ["data/uploads"]
[proxy]
listen = "127.0.0.1:0"
[vault]
destinations = [".lifeboat/vault"]
segment_interval = "250ms"
"#,
        common::guestbook_command()
    ));
    let mut lifeboat = block_in_place(|| Lifeboat::up(site.path()));
    block_in_place(|| lifeboat.wait_healthy(3));
    block_in_place(|| {
        lifeboat.wait_for_status("capture to run", |s| s["capture"]["running"] == true)
    });
    let big = "x".repeat(48 << 20);
    let boundary = "b0undary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n\r\n{big}\r\n--{boundary}--\r\n"
    );
    let uploaded = reqwest::Client::new()
        .post(format!("{}/upload", lifeboat.proxy))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 201);
    let bound = Duration::from_secs(20);

    let _stuck = stall_clients(&lifeboat.proxy, "/uploads/big.bin", 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let out = block_in_place(|| lifeboat.cli(&["scale", "web=1"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    block_in_place(|| {
        lifeboat.wait_for_status("one instance left", |s| {
            s["instances"].as_array().unwrap().len() == 1
        })
    });
    assert!(
        started.elapsed() < bound,
        "scale-down took {:?}",
        started.elapsed()
    );
    // A later scale still works: the reconcile loop is not stuck.
    let out = block_in_place(|| lifeboat.cli(&["scale", "web=2"]));
    assert!(out.status.success());
    block_in_place(|| lifeboat.wait_healthy(2));

    let _stuck2 = stall_clients(&lifeboat.proxy, "/uploads/big.bin", 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let out = block_in_place(|| lifeboat.cli(&["rewind", "--to", "latest", "--yes"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < bound,
        "rewind took {:?}",
        started.elapsed()
    );

    let _stuck3 = stall_clients(&lifeboat.proxy, "/uploads/big.bin", 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let out = block_in_place(|| lifeboat.cli(&["down"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(block_in_place(|| lifeboat.wait_exit()), "lifeboat stops");
    assert!(
        started.elapsed() < bound,
        "down took {:?}",
        started.elapsed()
    );
}
