//! Promises about instances failing or leaving: no request is lost to a dead instance, retries
//! happen only when safe, draining waits for in-flight requests.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use http::{Method, Request, StatusCode};
use lifeboat_proxy::{Proxy, ProxyEvent};
use tokio::sync::Notify;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_instance_under_concurrent_load_loses_no_request() {
    let a = Upstream::named("web-1").await;
    let mut b = Upstream::named("web-2").await;
    let c = Upstream::named("web-3").await;
    let proxy = proxy_for(&[&a, &b, &c], test_config()).await;
    let mut events = proxy.subscribe();
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (proxy, stop) = (proxy.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let client = client();
            let mut failures = Vec::new();
            let mut done = 0;
            while !stop.load(Ordering::SeqCst) {
                match get(&client, &proxy, "/").await {
                    Ok((StatusCode::OK, _)) => done += 1,
                    other => failures.push(format!("{other:?}")),
                }
            }
            (done, failures)
        }));
    }
    eventually("load reaches the instance to be killed", || b.hits() > 200).await;
    b.kill().await;
    let after_kill = a.hits() + c.hits();
    eventually("load goes on after the kill", || {
        a.hits() + c.hits() > after_kill + 500
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for task in load {
        let (done, failures) = task.await.unwrap();
        assert!(failures.is_empty(), "failed requests: {failures:?}");
        total += done;
    }
    assert!(total > 700);
    let status = proxy
        .backends()
        .into_iter()
        .find(|s| s.id == "web-2")
        .unwrap();
    assert!(status.ejected || status.health != lifeboat_proxy::BackendHealth::Healthy);
    let mut told = false;
    while let Ok(event) = events.try_recv() {
        told |= matches!(&event, ProxyEvent::Ejected { id, .. } | ProxyEvent::HealthChanged { id, healthy: false, .. } if id == "web-2");
    }
    assert!(told, "subscribers hear that web-2 left the rotation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_cannot_connect_goes_to_another_instance() {
    let a = Upstream::named("web-1").await;
    let mut b = Upstream::named("web-2").await;
    let mut config = test_config();
    // No health check will notice the death: only the failed connect can.
    config.health.interval = Duration::from_secs(3600);
    let proxy = proxy_for(&[&a, &b], config).await;
    b.kill().await;
    let client = client();
    for i in 0..10 {
        let request = Request::post(format!("http://{}/entries", proxy.local_addr()))
            .body(full(format!("text=hello {i}")))
            .unwrap();
        let (status, _, body) = send(&client, request).await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "web-1"));
    }
    let status = proxy
        .backends()
        .into_iter()
        .find(|s| s.id == "web-2")
        .unwrap();
    assert!(
        status.ejected,
        "a refused connect ejects the instance at once"
    );
}

/// An instance that accepts the request and then dies without answering, except on `/ok`.
async fn dying_instance(name: &str) -> Upstream {
    Upstream::start(name, handler(|_| async { Err(DropConnection) })).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_get_is_retried_on_another_instance_when_its_instance_dies_before_answering()
{
    let dying = dying_instance("web-1").await;
    let good = Upstream::named("web-2").await;
    let proxy = proxy_for(&[&dying, &good], test_config()).await;
    let client = client();
    for _ in 0..20 {
        assert_eq!(
            get(&client, &proxy, "/entries").await.unwrap(),
            (StatusCode::OK, "web-2".into())
        );
    }
    assert!(
        dying.hits() > 0,
        "some GETs went to the dying instance first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_is_retried_at_most_once() {
    let upstreams = [
        dying_instance("web-1").await,
        dying_instance("web-2").await,
        dying_instance("web-3").await,
    ];
    let proxy = proxy_for(
        &[&upstreams[0], &upstreams[1], &upstreams[2]],
        test_config(),
    )
    .await;
    let (status, _) = get(&client(), &proxy, "/entries").await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        upstreams.iter().map(|u| u.hits()).sum::<usize>(),
        2,
        "one try and one retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_reached_its_instance_is_not_retried() {
    let a = dying_instance("web-1").await;
    let b = dying_instance("web-2").await;
    let proxy = proxy_for(&[&a, &b], test_config()).await;
    let request = Request::post(format!("http://{}/entries", proxy.local_addr()))
        .body(full("text=only once"))
        .unwrap();
    let (status, _, _) = send(&client(), request).await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(a.hits() + b.hits(), 1, "the POST was sent exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_instance_that_is_restarted_on_its_port_gets_traffic_again() {
    let mut crashing = Upstream::named("web-1").await;
    let other = Upstream::named("web-2").await;
    let proxy = proxy_for(&[&crashing, &other], test_config()).await;
    let addr = crashing.addr;
    crashing.kill().await;
    proxy.mark_down("web-1"); // what the supervisor's exit event leads to
    let client = client();
    for _ in 0..10 {
        assert_eq!(
            get(&client, &proxy, "/").await.unwrap(),
            (StatusCode::OK, "web-2".into())
        );
    }
    let restarted = Upstream::named_at("web-1", addr).await;
    let watched = proxy.clone();
    eventually("web-1 back in rotation", move || {
        watched.backends().iter().any(|s| {
            s.id == "web-1" && !s.ejected && s.health == lifeboat_proxy::BackendHealth::Healthy
        })
    })
    .await;
    let before = restarted.hits();
    for _ in 0..20 {
        assert_eq!(get(&client, &proxy, "/").await.unwrap().0, StatusCode::OK);
    }
    assert!(
        restarted.hits() > before,
        "the restarted instance serves requests again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marked_down_instance_gets_no_new_request() {
    let a = Upstream::named("web-1").await;
    let b = Upstream::named("web-2").await;
    let mut config = test_config();
    config.health.interval = Duration::from_secs(3600);
    let proxy = proxy_for(&[&a, &b], config).await;
    proxy.mark_down("web-1");
    let before = a.hits();
    let client = client();
    for _ in 0..20 {
        assert_eq!(
            get(&client, &proxy, "/").await.unwrap(),
            (StatusCode::OK, "web-2".into())
        );
    }
    assert_eq!(a.hits(), before);
    assert!(
        proxy
            .backends()
            .iter()
            .any(|s| s.id == "web-1" && s.ejected)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_instance_stops_new_requests_at_once_and_resolves_after_its_in_flight_requests()
{
    let release = Arc::new(Notify::new());
    let held = release.clone();
    let slow = Upstream::start(
        "web-1",
        handler(move |_| {
            let held = held.clone();
            async move {
                held.notified().await;
                text(StatusCode::OK, "web-1 finished")
            }
        }),
    )
    .await;
    let other = Upstream::named("web-2").await;
    let proxy = proxy_for(&[&slow], test_config()).await;
    let in_flight = {
        let proxy = proxy.clone();
        tokio::spawn(async move { get(&client(), &proxy, "/slow").await })
    };
    eventually("the slow request reached web-1", || slow.hits() == 1).await;
    proxy.add_backend("web-2", other.addr);
    let watched = proxy.clone();
    eventually("web-2 healthy", move || {
        watched
            .backends()
            .iter()
            .any(|s| s.id == "web-2" && s.health == lifeboat_proxy::BackendHealth::Healthy)
    })
    .await;

    let drained = tokio::spawn(proxy.remove_backend("web-1"));
    assert!(
        proxy.backends().iter().all(|s| s.id != "web-1"),
        "removed from the rotation at once"
    );
    let client = client();
    for _ in 0..10 {
        assert_eq!(
            get(&client, &proxy, "/").await.unwrap(),
            (StatusCode::OK, "web-2".into())
        );
    }
    assert!(
        !drained.is_finished(),
        "draining waits for the slow request"
    );

    release.notify_one();
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        (StatusCode::OK, "web-1 finished".into())
    );
    tokio::time::timeout(Duration::from_secs(20), drained)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(slow.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_does_not_answer_in_time_gets_a_504_and_no_retry() {
    let stuck = Upstream::start("web-1", handler(|_| std::future::pending())).await;
    let other = Upstream::start("web-2", handler(|_| std::future::pending())).await;
    let mut config = test_config();
    config.timeouts.response_headers = Duration::from_millis(300);
    let proxy = proxy_for(&[&stuck, &other], config).await;
    let (status, _) = get(&client(), &proxy, "/").await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(stuck.hits() + other.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_healthy_instance_clients_get_503_with_retry_after() {
    let proxy = Proxy::start(test_config()).await.unwrap();
    let request = Request::builder()
        .method(Method::GET)
        .uri(format!("http://{}/", proxy.local_addr()))
        .body(empty())
        .unwrap();
    let (status, headers, _) = send(&client(), request).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "30");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_on_a_kept_alive_connection_gets_its_own_answer_deadline() {
    let instance = Upstream::start(
        "web-1",
        handler(|request| async move {
            if request.uri().path() == "/stuck" {
                std::future::pending::<()>().await;
            }
            text(StatusCode::OK, "web-1")
        }),
    )
    .await;
    let mut config = test_config();
    config.timeouts.response_headers = Duration::from_millis(300);
    let proxy = proxy_for(&[&instance], config).await;
    let stream = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    // One client connection: fast, stuck, fast, stuck, fast. Each stuck request gets a 504,
    // each other one its answer, whatever came before it on the connection.
    for (path, expected) in [
        ("/", StatusCode::OK),
        ("/stuck", StatusCode::GATEWAY_TIMEOUT),
        ("/", StatusCode::OK),
        ("/", StatusCode::OK),
        ("/stuck", StatusCode::GATEWAY_TIMEOUT),
        ("/", StatusCode::OK),
    ] {
        sender.ready().await.unwrap();
        let request = Request::get(path)
            .header("host", proxy.local_addr().to_string())
            .body(empty())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), expected, "{path}");
        http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap();
    }
}

/// The owner's write gate (a cluster's `durability = "sync"`): the answer to a request that
/// may write waits for it, a refusal becomes a 503 that says the change was not confirmed,
/// and reads never wait.
#[derive(Debug)]
struct TestGate {
    open: Arc<Notify>,
    refuse: bool,
}

impl lifeboat_proxy::WriteGate for TestGate {
    fn hold(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> {
        let (open, refuse) = (self.open.clone(), self.refuse);
        Box::pin(async move {
            if refuse {
                return Err("no standby in another zone confirmed it within 5s".into());
            }
            open.notified().await;
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_to_writes_wait_for_the_write_gate_and_reads_do_not() {
    let a = Upstream::named("web-1").await;
    let proxy = proxy_for(&[&a], test_config()).await;
    let open = Arc::new(Notify::new());
    proxy.set_write_gate(Some(Box::new(TestGate {
        open: open.clone(),
        refuse: false,
    })));
    let client = client();
    assert_eq!(
        get(&client, &proxy, "/").await.unwrap().0,
        StatusCode::OK,
        "a read does not wait for the gate"
    );
    let post = |client: TestClient, proxy: Proxy| async move {
        let request = Request::post(format!("http://{}/entries", proxy.local_addr()))
            .body(full("text=hi"))
            .unwrap();
        send(&client, request).await
    };
    let waiting = tokio::spawn(post(client.clone(), proxy.clone()));
    eventually("the instance to answer the write", || a.hits() == 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the answer waits for the gate");
    open.notify_one();
    let (status, _, body) = waiting.await.unwrap().unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "web-1"));

    proxy.set_write_gate(Some(Box::new(TestGate {
        open: open.clone(),
        refuse: true,
    })));
    let (status, headers, body) = post(client.clone(), proxy.clone()).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body.contains("could not confirm your change was stored safely")
            && body.contains("no standby in another zone"),
        "{body}"
    );
    assert_eq!(headers["retry-after"], "1");
    let request = Request::delete(format!("http://{}/entries/1", proxy.local_addr()))
        .body(empty())
        .unwrap();
    assert_eq!(
        send(&client, request).await.unwrap().0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    proxy.set_write_gate(None);
    let (status, _, _) = post(client.clone(), proxy.clone()).await.unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "without a gate writes are answered at once"
    );
}

/// While the owner holds requests (a switchover moving the primary), new requests wait
/// instead of failing, and go where the owner routed them meanwhile once released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_wait_and_go_to_where_the_owner_routed_them() {
    let old = Upstream::named("old-primary").await;
    let new = Upstream::named("new-primary").await;
    let proxy = proxy_for(&[&old], test_config()).await;
    proxy.hold_requests(true);
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let (client, proxy) = (client(), proxy.clone());
            tokio::spawn(async move { get(&client, &proxy, "/").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(waiting.iter().all(|w| !w.is_finished()), "held");
    assert_eq!(old.hits(), 0);
    let _ = proxy
        .remove_backend("old-primary")
        .within(Duration::ZERO)
        .await;
    proxy.add_backend("new-primary", new.addr);
    eventually("the new backend healthy", || {
        proxy
            .backends()
            .iter()
            .any(|b| b.id == "new-primary" && b.health == lifeboat_proxy::BackendHealth::Healthy)
    })
    .await;
    proxy.hold_requests(false);
    for w in waiting {
        assert_eq!(
            w.await.unwrap().unwrap(),
            (StatusCode::OK, "new-primary".to_string())
        );
    }
    assert_eq!(old.hits(), 0, "nothing reached the old primary");
}

/// An instance that hangs (stopped, not dead: its connections stay open and say nothing):
/// the GETs already sent to it are answered by another instance as soon as health checks
/// find it hung, instead of waiting for it to run again; a POST sent to it is not sent
/// twice, it waits for its own instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_on_a_hung_instance_move_when_it_is_found_hung_and_only_if_safe() {
    let hung = Arc::new(AtomicBool::new(false));
    let resumed = Arc::new(Notify::new());
    let stalls = |name: &'static str| {
        let (hung, resumed) = (hung.clone(), resumed.clone());
        handler(move |_| {
            let (hung, resumed) = (hung.clone(), resumed.clone());
            async move {
                if name == "web-1" && hung.load(Ordering::SeqCst) {
                    resumed.notified().await;
                }
                text(StatusCode::OK, name)
            }
        })
    };
    let a = Upstream::start_with_health(
        "web-1",
        "127.0.0.1:0".parse().unwrap(),
        Some(stalls("web-1")),
        stalls("web-1"),
    )
    .await;
    let b = Upstream::start("web-2", stalls("web-2")).await;
    let mut config = test_config();
    config.health.interval = Duration::from_millis(100);
    config.health.timeout = Duration::from_millis(300);
    let proxy = proxy_for(&[&a, &b], config).await;
    hung.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let mut gets = Vec::new();
    for _ in 0..6 {
        let proxy = proxy.clone();
        gets.push(tokio::spawn(async move {
            get(&client(), &proxy, "/page").await
        }));
    }
    let post = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let client = client();
            let mut answers = Vec::new();
            for _ in 0..2 {
                let request = Request::builder()
                    .method(Method::POST)
                    .uri(format!("http://{}/entries", proxy.local_addr()))
                    .body(full("text=once"))
                    .unwrap();
                answers.push(send(&client, request).await.map(|(s, _, body)| (s, body)));
            }
            answers
        })
    };
    for g in gets {
        let (status, body) = g.await.unwrap().unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "web-2"));
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "the GETs waited {waited:?} for the hung instance"
    );
    // One of the two POSTs went to web-1 (round-robin) and waits there; the other is done.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !post.is_finished(),
        "a POST sent to the hung instance was not sent again"
    );
    hung.store(false, Ordering::SeqCst);
    resumed.notify_waiters();
    let answers = tokio::time::timeout(Duration::from_secs(10), post)
        .await
        .expect("the POST is answered once its instance runs again")
        .unwrap();
    let served_by: Vec<String> = answers
        .into_iter()
        .map(|a| {
            let (status, body) = a.unwrap();
            assert_eq!(status, StatusCode::OK);
            body
        })
        .collect();
    assert!(served_by.contains(&"web-1".to_string()), "{served_by:?}");
}
