//! Promises about what passes through the front door unchanged, or changed on purpose: headers,
//! streamed bodies, protocol switches; and about starting and stopping it.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures::StreamExt;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use lifeboat_proxy::{BackendHealth, Proxy, ProxyError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// An instance that answers with the request headers it received, one `name: value` a line.
async fn echo_headers() -> Upstream {
    Upstream::start(
        "web-1",
        handler(|request| async move {
            let mut lines = String::new();
            for (name, value) in request.headers() {
                lines.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
            }
            let mut response = text(StatusCode::OK, lines)?;
            response
                .headers_mut()
                .insert("keep-alive", "timeout=5".parse().unwrap());
            response
                .headers_mut()
                .insert("x-app", "kept".parse().unwrap());
            Ok(response)
        }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_see_forwarded_headers_and_no_hop_by_hop_headers() {
    let upstream = echo_headers().await;
    let proxy = proxy_for(&[&upstream], test_config()).await;
    let request = Request::get(format!("http://{}/entries?page=2", proxy.local_addr()))
        .header("host", "guestbook.example")
        .header("connection", "keep-alive, x-private-hop")
        .header("x-private-hop", "secret")
        .header("keep-alive", "timeout=99")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-forwarded-for", "203.0.113.5")
        .header("accept", "text/html")
        .body(empty())
        .unwrap();
    let (status, headers, seen) = send(&client(), request).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let seen: Vec<&str> = seen.lines().collect();
    for expected in [
        "host: guestbook.example",
        // The test client is not a trusted proxy: what it claimed is replaced (bad_input.rs).
        "x-forwarded-for: 127.0.0.1",
        "x-forwarded-proto: http",
        "x-forwarded-host: guestbook.example",
        "accept: text/html",
    ] {
        assert!(seen.contains(&expected), "{expected:?} missing in {seen:?}");
    }
    for hop in [
        "x-private-hop",
        "keep-alive",
        "te:",
        "proxy-authorization",
        "connection: keep-alive",
    ] {
        assert!(
            !seen.iter().any(|l| l.starts_with(hop)),
            "{hop} reached the instance: {seen:?}"
        );
    }
    assert_eq!(headers["x-app"], "kept");
    assert!(
        !headers.contains_key("keep-alive"),
        "hop-by-hop response header reached the client"
    );
}

/// An instance whose one (non-health) request gets a response streaming whatever is sent on
/// the returned channel, chunk by chunk, ending when the sender is dropped.
async fn streaming_upstream() -> (Upstream, mpsc::Sender<Bytes>) {
    let (chunks_tx, chunks_rx) = mpsc::channel::<Bytes>(1);
    let chunks_rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(chunks_rx)));
    let upstream = Upstream::start(
        "web-1",
        handler(move |_| {
            let chunks_rx = chunks_rx.clone();
            async move {
                let rx = chunks_rx
                    .lock()
                    .await
                    .take()
                    .expect("one streaming request");
                let stream = tokio_stream(rx).map(|b| Ok::<_, std::io::Error>(Frame::data(b)));
                Ok(http::Response::new(BodyExt::boxed(StreamBody::new(stream))))
            }
        }),
    )
    .await;
    (upstream, chunks_tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_streamed_response_reaches_the_client_chunk_by_chunk() {
    let (upstream, chunks_tx) = streaming_upstream().await;
    let proxy = proxy_for(&[&upstream], test_config()).await;
    let response = client()
        .request(
            Request::get(format!("http://{}/events", proxy.local_addr()))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = response.into_body();
    for chunk in ["first ", "second ", "third"] {
        // The next chunk is only produced after the client received the previous one, so a
        // proxy that buffers the body would hang here.
        chunks_tx.send(Bytes::from(chunk)).await.unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(20), body.frame())
            .await
            .expect("the chunk arrives while the response is still open")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), chunk);
    }
    drop(chunks_tx);
    assert!(body.frame().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_request_body_reaches_the_instance_chunk_by_chunk() {
    let (got_tx, mut got_rx) = mpsc::unbounded_channel::<Bytes>();
    let upstream = Upstream::start(
        "web-1",
        handler(move |request| {
            let got_tx = got_tx.clone();
            async move {
                let mut body = request.into_body();
                let mut total = 0;
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data() {
                        total += data.len();
                        let _ = got_tx.send(data);
                    }
                }
                text(StatusCode::CREATED, total.to_string())
            }
        }),
    )
    .await;
    let proxy = proxy_for(&[&upstream], test_config()).await;
    let (body_tx, body_rx) = mpsc::channel::<Bytes>(1);
    let stream = tokio_stream(body_rx).map(|b| Ok::<_, std::io::Error>(Frame::data(b)));
    let request = Request::post(format!("http://{}/upload", proxy.local_addr()))
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap();
    let upload = tokio::spawn(async move { send(&client(), request).await });
    for chunk in ["part one,", "part two"] {
        body_tx.send(Bytes::from(chunk)).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(20), got_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            got, chunk,
            "the instance reads each chunk before the next one is sent"
        );
    }
    drop(body_tx);
    let (status, _, body) = upload.await.unwrap().unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::CREATED, "17"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_passes_through_both_ways() {
    let upstream = Upstream::start(
        "web-1",
        handler(|mut request| async move {
            assert_eq!(request.headers()["upgrade"], "websocket");
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let mut io = TokioIo::new(upgrade.await.unwrap());
                let mut buf = [0u8; 64];
                loop {
                    let n = io.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    let mut reply = b"echo:".to_vec();
                    reply.extend_from_slice(&buf[..n]);
                    io.write_all(&reply).await.unwrap();
                }
            });
            let mut response = text(StatusCode::SWITCHING_PROTOCOLS, "")?;
            response
                .headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            response
                .headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            Ok(response)
        }),
    )
    .await;
    let proxy = proxy_for(&[&upstream], test_config()).await;
    let stream = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection.with_upgrades());
    let request = Request::get("/chat")
        .header("host", "guestbook.example")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(empty())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.headers()["upgrade"], "websocket");
    let mut io = TokioIo::new(hyper::upgrade::on(response).await.unwrap());
    for message in ["hello", "again"] {
        io.write_all(message.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 5 + message.len()];
        tokio::time::timeout(Duration::from_secs(20), io.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, format!("echo:{message}").into_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_receives_traffic_only_once_its_health_check_passes() {
    let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = healthy.clone();
    // This instance's own /healthz is served by the test server (always 200), so it is gated
    // with a custom health path that fails until the flag flips.
    let upstream = Upstream::start(
        "web-1",
        handler(move |request| {
            let up = flag.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                match (request.uri().path(), up) {
                    ("/ready", false) => text(StatusCode::SERVICE_UNAVAILABLE, "starting"),
                    _ => text(StatusCode::OK, "web-1"),
                }
            }
        }),
    )
    .await;
    let mut config = test_config();
    config.health.path = "/ready".into();
    let proxy = Proxy::start(config).await.unwrap();
    proxy.add_backend("web-1", upstream.addr);
    let watched = proxy.clone();
    eventually("a few failed checks", || upstream.hits() >= 3).await;
    assert_eq!(watched.backends()[0].health, BackendHealth::Unhealthy);
    let (status, _) = get(&client(), &proxy, "/").await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    eventually("healthy after a passed check", move || {
        watched.backends()[0].health == BackendHealth::Healthy
    })
    .await;
    assert_eq!(
        get(&client(), &proxy, "/").await.unwrap(),
        (StatusCode::OK, "web-1".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_request_in_flight_finish_and_then_refuses_connections() {
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let held = release.clone();
    let slow = Upstream::start(
        "web-1",
        handler(move |_| {
            let held = held.clone();
            async move {
                held.notified().await;
                text(StatusCode::OK, "finished")
            }
        }),
    )
    .await;
    let proxy = proxy_for(&[&slow], test_config()).await;
    let in_flight = {
        let proxy = proxy.clone();
        tokio::spawn(async move { get(&client(), &proxy, "/slow").await })
    };
    eventually("the request reached the instance", || slow.hits() == 1).await;
    let stopping = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.shutdown().await })
    };
    let addr = proxy.local_addr();
    eventually("the listener is closed", || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    assert!(
        !stopping.is_finished(),
        "shutdown waits for the request in flight"
    );
    release.notify_one();
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        (StatusCode::OK, "finished".into())
    );
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .unwrap()
        .unwrap();
}

/// One keep-alive client connection, like one browser tab.
async fn one_client_connection(proxy: &Proxy) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let stream = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
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
    let request = Request::get("/")
        .header("host", proxy.local_addr().to_string())
        .body(empty())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reuse_one_kept_alive_instance_connection_until_it_idles_out() {
    let upstream = Upstream::named("web-1").await;
    let mut config = test_config();
    config.timeouts.idle = Duration::from_millis(500);
    let proxy = proxy_for(&[&upstream], config).await;
    let mut client = one_client_connection(&proxy).await;
    for _ in 0..50 {
        assert_eq!(get_on(&mut client, &proxy).await, StatusCode::OK);
    }
    assert_eq!(
        upstream.traffic_connections(),
        (1, 1),
        "50 requests, one instance connection"
    );
    eventually(
        "the unused connection is closed after the idle timeout",
        || upstream.traffic_connections().1 == 0,
    )
    .await;
    // The client connection idled out too (same timeout); a new one gets a new instance
    // connection.
    let mut client = one_client_connection(&proxy).await;
    assert_eq!(get_on(&mut client, &proxy).await, StatusCode::OK);
    assert_eq!(upstream.traffic_connections(), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_frees_the_port() {
    let upstream = Upstream::named("web-1").await;
    let proxy = proxy_for(&[&upstream], test_config()).await;
    let addr = proxy.local_addr();
    let clone = proxy.clone();
    drop(proxy);
    assert_eq!(
        get(&client(), &clone, "/").await.unwrap().0,
        StatusCode::OK,
        "a clone keeps it running"
    );
    drop(clone);
    eventually("the port is free again", || {
        std::net::TcpListener::bind(addr).is_ok()
    })
    .await;
}

#[tokio::test]
async fn a_busy_listen_address_is_reported_with_what_to_do() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = test_config();
    config.listen = taken.local_addr().unwrap();
    let error = Proxy::start(config).await.unwrap_err();
    assert!(matches!(error, ProxyError::Bind { .. }));
    let message = error.to_string();
    assert!(
        message.contains(&taken.local_addr().unwrap().to_string()),
        "{message}"
    );
    assert!(message.contains("port 0 picks a free one"), "{message}");
}

#[tokio::test]
async fn a_zero_timeout_or_a_relative_health_path_is_refused_before_listening() {
    let mut config = test_config();
    config.timeouts.idle = Duration::ZERO;
    let message = Proxy::start(config).await.unwrap_err().to_string();
    assert!(message.contains("timeouts.idle is zero"), "{message}");
    let mut config = test_config();
    config.health.path = "healthz".into();
    let message = Proxy::start(config).await.unwrap_err().to_string();
    assert!(message.contains("must start with '/'"), "{message}");
}

/// Turns a channel receiver into a stream.
fn tokio_stream<T: Send + 'static>(rx: mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// Reads from a raw client connection until the front door closes it; the time that took.
async fn closed_after(stream: &mut tokio::net::TcpStream) -> Duration {
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the front door kept an idle connection open"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_trickling_clients_are_closed_but_a_long_response_is_not() {
    let idle = Duration::from_millis(400);
    let (upstream, chunks_tx) = streaming_upstream().await;
    let mut config = test_config();
    config.timeouts.idle = idle;
    let proxy = proxy_for(&[&upstream], config).await;
    let addr = proxy.local_addr();

    // A client that connects and says nothing.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let waited = closed_after(&mut silent).await;
    assert!(waited >= idle - Duration::from_millis(50), "{waited:?}");

    // A client that trickles a request head and never finishes it.
    let mut trickler = tokio::net::TcpStream::connect(addr).await.unwrap();
    let trickle = tokio::spawn(async move {
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "
            .iter()
            .cycle()
            .take(400)
        {
            if trickler.write_all(&[*byte]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    });
    let cut = tokio::time::timeout(Duration::from_secs(15), trickle)
        .await
        .expect("the trickling client is cut off")
        .unwrap();
    assert!(cut, "the front door kept reading a head that never ends");

    // A response that streams for several idle timeouts reaches the client whole.
    let response = client()
        .request(
            Request::get(format!("http://{addr}/download"))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = response.into_body();
    for i in 0..6 {
        tokio::time::sleep(idle / 2).await;
        let chunk = Bytes::from(format!("part {i} "));
        chunks_tx.send(chunk.clone()).await.unwrap();
        let frame = body.frame().await.expect("still open").unwrap();
        assert_eq!(frame.into_data().unwrap(), chunk);
    }
    drop(chunks_tx);
    assert!(body.frame().await.is_none(), "the response ends cleanly");
}
