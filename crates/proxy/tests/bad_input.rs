//! Promises about what the front door refuses or rewrites before a request reaches the site:
//! requests nginx answers with a 400 never reach it, the owner's tokens never reach it, and
//! `X-Forwarded-*` headers are believed only from trusted proxies.

mod common;

use common::*;
use http::{Request, StatusCode};
use lifeboat_proxy::{BackendHealth, IpRange, Maintenance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_host_with_two_hosts_or_connect_get_a_400_and_never_reach_the_site() {
    let instance = Upstream::named("web-1").await;
    let proxy = proxy_for(&[&instance], test_config()).await;
    for request in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a..example\r\n\r\n",
        b"CONNECT internal.example:443 HTTP/1.1\r\nHost: internal.example:443\r\n\r\n",
    ] {
        let answer = raw_exchange(&proxy, request).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{:?} got {answer}",
            String::from_utf8_lossy(request)
        );
    }
    assert_eq!(instance.hits(), 0);
    // HTTP/1.0 did not require a Host; nginx serves it, so does the front door.
    let answer = raw_exchange(&proxy, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maintenance_bypass_never_reaches_the_site() {
    let instance = echo_headers("web-1").await;
    let proxy = proxy_for(&[&instance], test_config()).await;
    proxy.set_maintenance(Some(Maintenance {
        page_html: "<h1>Back soon</h1>".into(),
        bypass_token: "owner-secret".into(),
        allow_ips: Vec::new(),
    }));
    for (name, value) in [
        ("x-lifeboat-bypass", "owner-secret"),
        (
            "cookie",
            "theme=dark; lifeboat_bypass=owner-secret; lang=en",
        ),
    ] {
        let request = Request::get(format!("http://{}/", proxy.local_addr()))
            .header(name, value)
            .header("cookie", "session=abc")
            .body(empty())
            .unwrap();
        let (status, _, seen) = send(&client(), request).await.unwrap();
        assert_eq!(status, StatusCode::OK, "the owner got through");
        assert!(!seen.contains("owner-secret"), "{seen}");
        assert!(!seen.contains("lifeboat"), "{seen}");
        assert!(seen.contains("session=abc"), "other cookies pass: {seen}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preview_token_never_reaches_the_staged_instance() {
    let live = Upstream::named("web-1").await;
    let staged = echo_headers("web-1-rewound").await;
    let proxy = proxy_for(&[&live], test_config()).await;
    proxy.set_preview_token(Some("preview-secret".into()));
    proxy.add_staged_backend("web-1-rewound", staged.addr);
    let watched = proxy.clone();
    eventually("the staged instance is healthy", move || {
        watched
            .backends()
            .iter()
            .any(|b| b.staged && b.health == BackendHealth::Healthy)
    })
    .await;
    let request = Request::get(format!("http://{}/", proxy.local_addr()))
        .header("cookie", "lifeboat_bypass=preview-secret")
        .header("x-lifeboat-bypass", "preview-secret")
        .body(empty())
        .unwrap();
    let (status, _, seen) = send(&client(), request).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        seen.contains("x-forwarded-for"),
        "the staged instance answered: {seen}"
    );
    assert!(!seen.contains("preview-secret"), "{seen}");
    assert!(
        !seen.contains("cookie"),
        "the only cookie was the token: {seen}"
    );
}

/// What the instance sees of a request that claims to come from behind a TLS terminator.
async fn forwarded_as_seen(trusted_proxies: Vec<IpRange>) -> Vec<String> {
    let instance = echo_headers("web-1").await;
    let mut config = test_config();
    config.trusted_proxies = trusted_proxies;
    let proxy = proxy_for(&[&instance], config).await;
    let request = Request::get(format!("http://{}/", proxy.local_addr()))
        .header("host", "site.example")
        .header("x-forwarded-for", "203.0.113.5")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "www.site.example")
        .body(empty())
        .unwrap();
    let (_, _, seen) = send(&client(), request).await.unwrap();
    seen.lines()
        .filter(|line| line.starts_with("x-forwarded-"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_from_a_trusted_proxy_are_passed_on() {
    // The test client connects from 127.0.0.1: it plays the TLS terminator.
    let loopback = IpRange {
        addr: "127.0.0.0".parse().unwrap(),
        prefix_len: 8,
    };
    let seen = forwarded_as_seen(vec![loopback]).await;
    for expected in [
        "x-forwarded-for: 203.0.113.5, 127.0.0.1",
        "x-forwarded-proto: https",
        "x-forwarded-host: www.site.example",
    ] {
        assert!(
            seen.iter().any(|l| l == expected),
            "{expected:?} not in {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_from_anyone_else_are_replaced() {
    let elsewhere = IpRange {
        addr: "10.0.0.0".parse().unwrap(),
        prefix_len: 8,
    };
    let mut seen = forwarded_as_seen(vec![elsewhere]).await;
    seen.sort();
    assert_eq!(
        seen,
        [
            "x-forwarded-for: 127.0.0.1",
            "x-forwarded-host: site.example",
            "x-forwarded-proto: http",
        ]
    );
}

/// Password guessing through the front door: a visitor whose requests the site refuses as
/// unauthorized (401) again and again is told once, as an event naming the address, the
/// count and the path; a visitor who fails a few times, and answers that are not refusals,
/// make none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_refused_again_and_again_is_reported_once() {
    let instance = Upstream::start(
        "web-1",
        handler(|request| async move {
            if request.uri().path() == "/login" {
                text(StatusCode::UNAUTHORIZED, "wrong password")
            } else {
                text(StatusCode::OK, "hello")
            }
        }),
    )
    .await;
    let mut config = test_config();
    config.auth_failure_alert = Some(lifeboat_proxy::AuthFailureAlert {
        failures: 10,
        ..Default::default()
    });
    let proxy = proxy_for(&[&instance], config).await;
    let mut events = proxy.subscribe();
    let client = client();
    let login = |password: &str| {
        Request::post(format!("http://{}/login", proxy.local_addr()))
            .body(full(format!("password={password}")))
            .unwrap()
    };
    for _ in 0..9 {
        let (status, _, _) = send(&client, login("x")).await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = get(&client, &proxy, "/").await.unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    let nothing = tokio::time::timeout(std::time::Duration::from_millis(300), async {
        loop {
            if let Ok(lifeboat_proxy::ProxyEvent::AuthFailures { .. }) = events.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(nothing.is_err(), "nine refusals are not reported");
    for _ in 0..50 {
        send(&client, login("y")).await.unwrap();
    }
    let reported = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut seen = Vec::new();
        while let Ok(e) = events.recv().await {
            if let lifeboat_proxy::ProxyEvent::AuthFailures {
                client,
                failures,
                path,
                ..
            } = e
            {
                seen.push((client, failures, path));
                // A moment for a second report, which must not come.
                if let Ok(Ok(lifeboat_proxy::ProxyEvent::AuthFailures { .. })) =
                    tokio::time::timeout(std::time::Duration::from_millis(300), events.recv()).await
                {
                    seen.push(seen[0].clone());
                }
                return seen;
            }
        }
        seen
    })
    .await
    .expect("the guessing is reported");
    assert_eq!(reported.len(), 1, "{reported:?}");
    let (ip, failures, path) = &reported[0];
    assert_eq!(ip.to_string(), "127.0.0.1");
    assert_eq!(*failures, 10);
    assert_eq!(path, "/login");
}
