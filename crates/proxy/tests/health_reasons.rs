//! Promises about what the front door says of an instance's health: the reason given for an
//! unhealthy instance is the current one (the last checks'), in events and in `backends()`, and
//! health checks can carry the Host an app insists on.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use common::*;
use http::StatusCode;
use lifeboat_proxy::{BackendHealth, Proxy, ProxyEvent};
use tokio::sync::broadcast;

const SLOW: u8 = 0;
const BAD_HOST: u8 = 1;
const FINE: u8 = 2;
const BROKEN: u8 = 3;

/// A health handler whose answer the test switches: too slow, 400, 200 or 500.
fn switchable_health(mode: Arc<AtomicU8>) -> Handler {
    handler(move |_| {
        let mode = mode.load(Ordering::SeqCst);
        async move {
            match mode {
                SLOW => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    text(StatusCode::OK, "late")
                }
                BAD_HOST => text(StatusCode::BAD_REQUEST, "Invalid HTTP_HOST header"),
                FINE => text(StatusCode::OK, "ok"),
                _ => text(StatusCode::INTERNAL_SERVER_ERROR, "boom"),
            }
        }
    })
}

async fn instance_at(addr: SocketAddr, mode: &Arc<AtomicU8>) -> Upstream {
    Upstream::start_with_health(
        "web-1",
        addr,
        Some(switchable_health(mode.clone())),
        handler(|_| async { text(StatusCode::OK, "web-1") }),
    )
    .await
}

/// Waits for the next health event of `web-1` whose reason contains `words`, skipping others.
async fn told(events: &mut broadcast::Receiver<ProxyEvent>, healthy: bool, words: &str) -> String {
    let wait = async {
        loop {
            match events.recv().await.expect("the proxy keeps telling") {
                ProxyEvent::HealthChanged {
                    id,
                    healthy: h,
                    reason,
                } if id == "web-1" && h == healthy && reason.contains(words) => return reason,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("no health event (healthy: {healthy}) saying {words:?}"))
}

fn last_check(proxy: &Proxy) -> String {
    proxy.backends()[0].last_check.clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_instance_is_reported_with_why_it_fails_now_not_why_it_failed_first() {
    let mode = Arc::new(AtomicU8::new(SLOW));
    let mut instance = instance_at("127.0.0.1:0".parse().unwrap(), &mode).await;
    let mut config = test_config();
    config.health.timeout = Duration::from_millis(200);
    let proxy = Proxy::start(config).await.unwrap();
    let mut events = proxy.subscribe();
    proxy.add_backend("web-1", instance.addr);

    // Slow while starting, then the app answers 400 (Django's ALLOWED_HOSTS): still unhealthy,
    // but for another reason, and that is what is told and shown.
    told(&mut events, false, "took longer than 200ms").await;
    mode.store(BAD_HOST, Ordering::SeqCst);
    let reason = told(&mut events, false, "400").await;
    assert!(reason.contains("400 Bad Request"), "{reason}");
    assert!(last_check(&proxy).contains("400 Bad Request"));
    assert_eq!(proxy.backends()[0].health, BackendHealth::Unhealthy);

    mode.store(FINE, Ordering::SeqCst);
    told(&mut events, true, "passed").await;
    assert_eq!(last_check(&proxy), "health check passed");

    // Killed: connections are refused. Restarted on its port but failing with a 500: the 500 is
    // what is told, not the refused connection.
    let addr = instance.addr;
    instance.kill().await;
    told(&mut events, false, "refused").await;
    mode.store(BROKEN, Ordering::SeqCst);
    let _restarted = instance_at(addr, &mode).await;
    let reason = told(&mut events, false, "500").await;
    assert!(reason.contains("500 Internal Server Error"), "{reason}");
    assert!(last_check(&proxy).contains("500 Internal Server Error"));
}

/// An instance that, like Django with `ALLOWED_HOSTS = ["example.com"]`, answers 400 to any
/// other Host; it records the Host of every health check.
async fn picky_about_host(seen: Arc<std::sync::Mutex<Vec<String>>>) -> Upstream {
    let health = handler(move |request| {
        let host = request
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_string();
        seen.lock().unwrap().push(host.clone());
        async move {
            if host == "example.com" {
                text(StatusCode::OK, "ok")
            } else {
                text(StatusCode::BAD_REQUEST, "Invalid HTTP_HOST header")
            }
        }
    });
    Upstream::start_with_health(
        "web-1",
        "127.0.0.1:0".parse().unwrap(),
        Some(health),
        handler(|_| async { text(StatusCode::OK, "web-1") }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_send_the_configured_host() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let instance = picky_about_host(seen.clone()).await;
    let mut config = test_config();
    config.health.host = Some("example.com".into());
    let proxy = proxy_for(&[&instance], config).await;
    assert_eq!(
        get(&client(), &proxy, "/").await.unwrap(),
        (StatusCode::OK, "web-1".into())
    );
    assert!(seen.lock().unwrap().iter().all(|h| h == "example.com"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_refused_for_its_host_says_which_host_it_sent() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let instance = picky_about_host(seen).await;
    let proxy = Proxy::start(test_config()).await.unwrap();
    let mut events = proxy.subscribe();
    proxy.add_backend("web-1", instance.addr);
    let reason = told(&mut events, false, "400").await;
    assert!(
        reason.contains(&format!("(Host: {})", instance.addr)),
        "{reason}"
    );
}

#[tokio::test]
async fn a_health_check_host_that_is_no_header_value_is_refused_before_listening() {
    let mut config = test_config();
    config.health.host = Some("example.com\r\nX-Evil: 1".into());
    let message = Proxy::start(config).await.unwrap_err().to_string();
    assert!(message.contains("health check host"), "{message}");
}

/// A primary's front door with a healthy instance and one that answers its first health check
/// and then hangs, which the primary itself checks only once (so it stays in rotation there).
async fn primary_with_a_hung_instance() -> (Proxy, Upstream, Upstream) {
    let fine = Upstream::named("web-1").await;
    let checks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hangs = handler(move |_| {
        let first = checks.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if !first {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            text(StatusCode::OK, "ok")
        }
    });
    let hung = Upstream::start_with_health(
        "web-2",
        "127.0.0.1:0".parse().unwrap(),
        Some(hangs),
        handler(|_| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            text(StatusCode::OK, "web-2")
        }),
    )
    .await;
    let mut config = test_config();
    config.health.interval = Duration::from_secs(600);
    let primary = proxy_for(&[&fine, &hung], config).await;
    (primary, fine, hung)
}

/// Whether `standby` kept its primary backend healthy for all of `within`; the reason of the
/// first failed check otherwise.
async fn stays_healthy(standby: &Proxy, within: Duration) -> Result<(), String> {
    let mut events = standby.subscribe();
    let watch = async {
        loop {
            if let Ok(ProxyEvent::HealthChanged {
                id,
                healthy: false,
                reason,
            }) = events.recv().await
                && id == "primary"
            {
                return reason;
            }
        }
    };
    match tokio::time::timeout(within, watch).await {
        Ok(reason) => Err(reason),
        Err(_) => Ok(()),
    }
}

/// A standby's front door checks its primary's by asking that front door whether it serves,
/// which it answers itself: one hung instance behind the primary never makes the whole primary
/// look down from the standby (which would fail every request there), while a check passed on
/// to the primary's instances does, as soon as one lands on the hung one. With no instance
/// serving, the primary's front door says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_checks_its_primarys_front_door_not_one_of_its_instances() {
    let (primary, _fine, _hung) = primary_with_a_hung_instance().await;
    let mut config = test_config();
    config.health.timeout = Duration::from_millis(300);
    config.health.unhealthy_threshold = 1;
    let standby = Proxy::start(config.clone()).await.unwrap();
    standby.add_front_door_backend("primary", primary.local_addr());
    let watched = standby.clone();
    eventually("the primary healthy from the standby", move || {
        watched.backends()[0].health == BackendHealth::Healthy
    })
    .await;
    // 30 checks at 100 ms, half of which would reach the hung instance if passed on.
    stays_healthy(&standby, Duration::from_secs(3))
        .await
        .expect("the primary's front door stays healthy from the standby");

    // The same check passed on to the instances fails on the hung one (so the test can tell).
    let plain = Proxy::start(config).await.unwrap();
    plain.add_backend("primary", primary.local_addr());
    let why = stays_healthy(&plain, Duration::from_secs(10))
        .await
        .expect_err("a check that reaches the hung instance fails");
    assert!(why.contains("longer than"), "{why}");

    // With no instance serving, the primary's front door answers the check with a 503.
    drop(primary.remove_backend("web-1"));
    drop(primary.remove_backend("web-2"));
    let why = stays_healthy(&standby, Duration::from_secs(10))
        .await
        .expect_err("a front door with no instance is down");
    assert!(why.contains("503"), "{why}");
}
