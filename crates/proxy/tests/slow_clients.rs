//! Promises that slow or stuck clients freeze nothing: a client that stops reading its response
//! is cut after the send timeout, one that stops sending its request body gets a 408 after the
//! body timeout (and the request to the instance is aborted), connections past the cap get a
//! fast 503, and draining or shutting down can be bounded, whatever the clients do.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use lifeboat_proxy::Proxy;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

const DOWNLOAD: usize = 48 * 1024 * 1024;

/// An instance whose `/big` is a 48 MiB download and whose other paths answer its name.
async fn serving_downloads(name: &str) -> Upstream {
    let own = name.to_string();
    Upstream::start(
        name,
        handler(move |request| {
            let own = own.clone();
            async move {
                if request.uri().path() == "/big" {
                    large(DOWNLOAD)
                } else {
                    text(StatusCode::OK, own)
                }
            }
        }),
    )
    .await
}

async fn requests_in_flight(proxy: &Proxy, id: &str, n: usize) {
    let watched = proxy.clone();
    let id = id.to_string();
    eventually(&format!("{n} requests in flight on {id}"), move || {
        watched
            .backends()
            .iter()
            .any(|b| b.id == id && b.in_flight == n)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_download_is_cut_after_the_send_timeout() {
    let instance = serving_downloads("web-1").await;
    let mut config = test_config();
    config.timeouts.send = Duration::from_millis(500);
    let proxy = proxy_for(&[&instance], config).await;
    let mut stuck = client_that_never_reads(&proxy, "/big").await;
    requests_in_flight(&proxy, "web-1", 1).await;
    requests_in_flight(&proxy, "web-1", 0).await;
    let received = read_until_closed(&mut stuck, Duration::from_secs(20)).await;
    assert!(
        received.len() < DOWNLOAD,
        "the download was cut, not finished"
    );
    // A client that reads gets the whole download, however long it takes.
    let (status, body) = get(&client(), &proxy, "/big").await.unwrap();
    assert_eq!((status, body.len()), (StatusCode::OK, DOWNLOAD));
}

/// An instance that reads each request body to the end and reports how that went.
async fn reading_bodies() -> (Upstream, mpsc::UnboundedReceiver<Result<usize, String>>) {
    let (read_tx, read_rx) = mpsc::unbounded_channel();
    let instance = Upstream::start(
        "web-1",
        handler(move |request| {
            let read_tx = read_tx.clone();
            async move {
                let read = request
                    .into_body()
                    .collect()
                    .await
                    .map(|body| body.to_bytes().len())
                    .map_err(|e| e.to_string());
                let _ = read_tx.send(read.clone());
                match read {
                    Ok(n) => text(StatusCode::CREATED, n.to_string()),
                    Err(_) => Err(DropConnection),
                }
            }
        }),
    )
    .await;
    (instance, read_rx)
}

/// Sends a request head announcing 100 bytes of body, then 2 of them, and stops.
async fn stalled_upload(proxy: &Proxy, extra_header: &str) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    let head = format!(
        "POST /entries HTTP/1.1\r\nHost: site.example\r\nContent-Length: 100\r\n{extra_header}\r\nab"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_a_408_and_the_request_to_the_instance_is_aborted() {
    let (instance, mut bodies) = reading_bodies().await;
    let mut config = test_config();
    config.timeouts.body = Duration::from_millis(500);
    let proxy = proxy_for(&[&instance], config).await;
    let mut upload = stalled_upload(&proxy, "").await;
    let answer = read_until_closed(&mut upload, Duration::from_secs(20)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    let read = tokio::time::timeout(Duration::from_secs(20), bodies.recv())
        .await
        .expect("the instance's read of the body ends")
        .unwrap();
    assert!(
        read.is_err(),
        "the instance saw the request aborted: {read:?}"
    );
    requests_in_flight(&proxy, "web-1", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_keyed_body_being_kept_for_replay_gets_a_408() {
    let (instance, _bodies) = reading_bodies().await;
    let mut config = test_config();
    config.timeouts.body = Duration::from_millis(500);
    let proxy = proxy_for(&[&instance], config).await;
    let mut upload = stalled_upload(&proxy, "Idempotency-Key: entry-7\r\n").await;
    let answer = read_until_closed(&mut upload, Duration::from_secs(20)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(instance.hits(), 0, "nothing was sent to the instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_get_a_fast_503_and_are_closed() {
    let instance = Upstream::named("web-1").await;
    let mut config = test_config();
    config.max_connections = 2;
    let proxy = proxy_for(&[&instance], config).await;
    assert_eq!(proxy.max_connections(), 2);
    let mut first = one_connection(&proxy).await;
    let mut second = one_connection(&proxy).await;
    assert_eq!(get_on(&mut first, &proxy).await, StatusCode::OK);
    assert_eq!(get_on(&mut second, &proxy).await, StatusCode::OK);

    let started = tokio::time::Instant::now();
    let answer = raw_exchange(&proxy, b"GET / HTTP/1.1\r\nHost: site.example\r\n\r\n").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered and closed at once"
    );
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 30"), "{answer}");
    assert_eq!(
        instance.hits(),
        2,
        "the third request never reached the site"
    );

    drop(second);
    eventually_async("a freed place serves a new connection", || async {
        raw_exchange(
            &proxy,
            b"GET / HTTP/1.1\r\nHost: site.example\r\nConnection: close\r\n\r\n",
        )
        .await
        .starts_with("HTTP/1.1 200")
    })
    .await;
    assert_eq!(get_on(&mut first, &proxy).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_removal_ends_by_its_deadline_though_four_clients_never_read() {
    let stuck_instance = serving_downloads("web-1").await;
    let other = serving_downloads("web-2").await;
    let proxy = proxy_for(&[&stuck_instance], test_config()).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(client_that_never_reads(&proxy, "/big").await);
    }
    requests_in_flight(&proxy, "web-1", 4).await;
    proxy.add_backend("web-2", other.addr);

    let grace = Duration::from_millis(500);
    let started = tokio::time::Instant::now();
    let drained = proxy.remove_backend("web-1").within(grace).await;
    let took = started.elapsed();
    assert!(took >= grace, "{took:?}");
    assert!(took < grace + Duration::from_secs(2), "{took:?}");
    assert_eq!(drained.cut, 4);
    assert!(proxy.backends().iter().all(|b| b.id != "web-1"));
    for client in &mut clients {
        read_until_closed(client, Duration::from_secs(20)).await;
    }
    assert_eq!(
        get(&client(), &proxy, "/").await.unwrap(),
        (StatusCode::OK, "web-2".into()),
        "the other instance serves on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_drain_that_finishes_in_time_cuts_nothing() {
    let instance = serving_downloads("web-1").await;
    let proxy = proxy_for(&[&instance], test_config()).await;
    let drained = proxy
        .remove_backend("web-1")
        .within(Duration::from_secs(10))
        .await;
    assert_eq!(drained.cut, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_promotion_ends_by_its_deadline_though_clients_never_read() {
    let old = serving_downloads("web-1").await;
    let new = serving_downloads("web-1-rewound").await;
    let proxy = proxy_for(&[&old], test_config()).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(client_that_never_reads(&proxy, "/big").await);
    }
    requests_in_flight(&proxy, "web-1", 4).await;
    proxy.add_staged_backend("web-1-rewound", new.addr);
    let watched = proxy.clone();
    eventually("the staged instance is healthy", move || {
        watched
            .backends()
            .iter()
            .any(|b| b.staged && b.health == lifeboat_proxy::BackendHealth::Healthy)
    })
    .await;

    let started = tokio::time::Instant::now();
    let promoted = proxy
        .promote_staged()
        .within(Duration::from_millis(500))
        .await;
    assert!(started.elapsed() < Duration::from_millis(500) + Duration::from_secs(2));
    assert_eq!(promoted.value, ["web-1"]);
    assert_eq!(promoted.cut, 4);
    for client in &mut clients {
        read_until_closed(client, Duration::from_secs(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_shutdown_ends_by_its_deadline_though_four_clients_never_read() {
    let instance = serving_downloads("web-1").await;
    let proxy = proxy_for(&[&instance], test_config()).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(client_that_never_reads(&proxy, "/big").await);
    }
    requests_in_flight(&proxy, "web-1", 4).await;

    let grace = Duration::from_millis(500);
    let started = tokio::time::Instant::now();
    let cut = proxy.shutdown_within(grace).await;
    let took = started.elapsed();
    assert!(took >= grace, "{took:?}");
    assert!(took < grace + Duration::from_secs(2), "{took:?}");
    assert_eq!(cut, 4);
    for client in &mut clients {
        read_until_closed(client, Duration::from_secs(20)).await;
    }
    assert!(std::net::TcpStream::connect(proxy.local_addr()).is_err());
}

/// One keep-alive client connection, like one browser tab.
async fn one_connection(proxy: &Proxy) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let stream = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

async fn get_on(
    sender: &mut hyper::client::conn::http1::SendRequest<TestBody>,
    proxy: &Proxy,
) -> StatusCode {
    sender.ready().await.unwrap();
    let request = http::Request::get("/")
        .header("host", proxy.local_addr().to_string())
        .body(empty())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    status
}

/// Like `eventually`, for a condition that has to be awaited.
async fn eventually_async<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
