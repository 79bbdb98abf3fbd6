//! Real parts for the front door's integration tests: tiny hyper servers on loopback ports that
//! play the site's instances, a pooled HTTP client, and waiting with a deadline.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lifeboat_proxy::{BackendHealth, HealthCheckConfig, Proxy, ProxyConfig, Timeouts};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub type TestBody = BoxBody<Bytes, std::io::Error>;
/// `Err(())` makes the instance drop the connection without answering.
pub type Answer = Result<Response<TestBody>, DropConnection>;
pub type Handler =
    Arc<dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync>;

#[derive(Debug)]
pub struct DropConnection;
impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("instance dropped the connection on purpose")
    }
}
impl std::error::Error for DropConnection {}

pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Answer {
    let body = Full::new(body.into())
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    Ok(response)
}

pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    Arc::new(move |request| Box::pin(f(request)))
}

/// One instance of the site: a real HTTP/1.1 server on a loopback port.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    /// Requests other than health checks that reached it.
    pub hits: Arc<AtomicUsize>,
    /// Connections that carried requests other than health checks: (ever opened, still open).
    pub traffic_connections: Arc<(AtomicUsize, AtomicUsize)>,
    /// 1: the listening socket is closed; 2: every connection is closed too.
    kill: watch::Sender<u8>,
    accept: Option<JoinHandle<()>>,
}

impl Upstream {
    /// An instance that answers every request with its name; `/healthz` is 200.
    pub async fn named(name: &str) -> Upstream {
        let own = name.to_string();
        Upstream::start(
            name,
            handler(move |_| {
                let own = own.clone();
                async move { text(StatusCode::OK, own) }
            }),
        )
        .await
    }

    /// An instance whose `/healthz` is 200 and whose other requests go to `handler`.
    pub async fn start(name: &str, handler: Handler) -> Upstream {
        Upstream::start_at(name, "127.0.0.1:0".parse().unwrap(), handler).await
    }

    /// Like [`Upstream::named`], on a given address (a restarted instance keeps its port).
    pub async fn named_at(name: &str, addr: SocketAddr) -> Upstream {
        let own = name.to_string();
        let answer = handler(move |_| {
            let own = own.clone();
            async move { text(StatusCode::OK, own) }
        });
        Upstream::start_at(name, addr, answer).await
    }

    async fn start_at(name: &str, addr: SocketAddr, handler: Handler) -> Upstream {
        Upstream::start_with_health(name, addr, None, handler).await
    }

    /// An instance on `addr` (port 0: any) whose `/healthz` goes to `health` (when given) and
    /// whose other requests go to `handler`.
    pub async fn start_with_health(
        name: &str,
        addr: SocketAddr,
        health: Option<Handler>,
        handler: Handler,
    ) -> Upstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let traffic_connections = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let (kill, killed) = watch::channel(0u8);
        let accept = tokio::spawn(serve(
            listener,
            health,
            handler,
            hits.clone(),
            traffic_connections.clone(),
            killed,
        ));
        Upstream {
            name: name.to_string(),
            addr,
            hits,
            traffic_connections,
            kill,
            accept: Some(accept),
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Connections that carried site requests: (ever opened, still open).
    pub fn traffic_connections(&self) -> (usize, usize) {
        (
            self.traffic_connections.0.load(Ordering::SeqCst),
            self.traffic_connections.1.load(Ordering::SeqCst),
        )
    }

    /// Like kill -9: the port refuses connections and every open connection closes, mid-request
    /// or not. (The listener goes first, as it does when the kernel tears a killed process down,
    /// so a retry can never reach the dying instance.)
    pub async fn kill(&mut self) {
        let _ = self.kill.send(1);
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        let _ = self.kill.send(2);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.kill.send(2);
    }
}

async fn serve(
    listener: TcpListener,
    health: Option<Handler>,
    handler: Handler,
    hits: Arc<AtomicUsize>,
    traffic_connections: Arc<(AtomicUsize, AtomicUsize)>,
    mut killed: watch::Receiver<u8>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
            _ = killed.wait_for(|k| *k >= 1) => return,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let health = health.clone();
        let hits = hits.clone();
        let traffic_connections = traffic_connections.clone();
        let mut killed = killed.clone();
        tokio::spawn(async move {
            let carried = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let counted = carried.clone();
            let counts = traffic_connections.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let handler = handler.clone();
                let health = health.clone();
                let hits = hits.clone();
                let first =
                    request.uri().path() != "/healthz" && !counted.swap(true, Ordering::SeqCst);
                if first {
                    counts.0.fetch_add(1, Ordering::SeqCst);
                    counts.1.fetch_add(1, Ordering::SeqCst);
                }
                async move {
                    if request.uri().path() == "/healthz" {
                        return match health {
                            Some(health) => health(request).await,
                            None => text(StatusCode::OK, "ok"),
                        };
                    }
                    hits.fetch_add(1, Ordering::SeqCst);
                    handler(request).await
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::select! {
                _ = connection => {}
                _ = killed.wait_for(|k| *k >= 2) => {}
            }
            if carried.load(Ordering::SeqCst) {
                traffic_connections.1.fetch_sub(1, Ordering::SeqCst);
            }
        });
    }
}

/// Front door settings for tests: fast health checks, generous timeouts.
pub fn test_config() -> ProxyConfig {
    ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        health: HealthCheckConfig {
            path: "/healthz".into(),
            host: None,
            interval: Duration::from_millis(100),
            timeout: Duration::from_secs(2),
            healthy_threshold: 1,
            unhealthy_threshold: 2,
        },
        timeouts: Timeouts {
            connect: Duration::from_secs(2),
            response_headers: Duration::from_secs(20),
            idle: Duration::from_secs(30),
            send: Duration::from_secs(30),
            body: Duration::from_secs(30),
        },
        retry_after: Duration::from_secs(30),
        max_connections: 4096,
        trusted_proxies: Vec::new(),
        auth_failure_alert: Some(lifeboat_proxy::AuthFailureAlert::default()),
    }
}

/// A started front door with the instances added and healthy.
pub async fn proxy_for(upstreams: &[&Upstream], config: ProxyConfig) -> Proxy {
    let proxy = Proxy::start(config).await.unwrap();
    for upstream in upstreams {
        proxy.add_backend(&upstream.name, upstream.addr);
    }
    let ids: Vec<String> = upstreams.iter().map(|u| u.name.clone()).collect();
    let watched = proxy.clone();
    eventually("all instances healthy", move || {
        let backends = watched.backends();
        ids.iter().all(|id| {
            backends
                .iter()
                .any(|b| &b.id == id && b.health == BackendHealth::Healthy && !b.ejected)
        })
    })
    .await;
    proxy
}

/// Waits until `condition` holds, failing the test after a generous deadline.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub type TestClient = Client<HttpConnector, TestBody>;

/// A pooled keep-alive client, like a browser or load generator.
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn empty() -> TestBody {
    Full::new(Bytes::new())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// Sends a request and reads the whole answer.
pub async fn send(
    client: &TestClient,
    request: Request<TestBody>,
) -> Result<(StatusCode, http::HeaderMap, String), String> {
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("{e:?}"))?
        .to_bytes();
    Ok((
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

pub async fn get(
    client: &TestClient,
    proxy: &Proxy,
    path: &str,
) -> Result<(StatusCode, String), String> {
    let request = Request::get(format!("http://{}{path}", proxy.local_addr()))
        .body(empty())
        .unwrap();
    send(client, request)
        .await
        .map(|(status, _, body)| (status, body))
}

/// An answer of `len` bytes, streamed in 64 KiB pieces made as the body is read, so a client
/// that does not read holds it (and the instance) up.
pub fn large(len: usize) -> Answer {
    let piece = Bytes::from(vec![b'x'; 64 * 1024]);
    let pieces = len.div_ceil(piece.len());
    let stream = futures::stream::iter(
        (0..pieces).map(move |_| Ok::<_, std::io::Error>(hyper::body::Frame::data(piece.clone()))),
    );
    Ok(Response::new(BodyExt::boxed(
        http_body_util::StreamBody::new(stream),
    )))
}

/// A client that sends a request and then never reads: its connection, held open.
pub async fn client_that_never_reads(proxy: &Proxy, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: site.example\r\n\r\n").as_bytes())
        .await
        .unwrap();
    stream
}

/// Reads a raw connection until the front door closes it (end of file or reset), failing the
/// test if that takes longer than `deadline`; what was read.
pub async fn read_until_closed(stream: &mut tokio::net::TcpStream, deadline: Duration) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(deadline, read_all)
        .await
        .expect("the front door closes the connection in time");
    seen
}

/// Sends raw bytes on a new connection and returns all the front door answered before closing.
pub async fn raw_exchange(proxy: &Proxy, request: &[u8]) -> String {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    stream.write_all(request).await.unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(20)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// An instance that answers with the request headers it received, one `name: value` a line.
pub async fn echo_headers(name: &str) -> Upstream {
    Upstream::start(
        name,
        handler(|request| async move {
            let mut lines = String::new();
            for (name, value) in request.headers() {
                lines.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
            }
            text(StatusCode::OK, lines)
        }),
    )
    .await
}
