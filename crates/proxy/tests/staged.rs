//! Promises of staged backends, the front door's half of a rewind: new instances on restored data
//! are reachable only by the owner's preview token until they are promoted; promotion switches
//! every later request to them at once and drains the old ones; a cancelled rewind discards them.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use http::{Request, StatusCode};
use lifeboat_proxy::{BackendHealth, Maintenance, Proxy};
use tokio::sync::Notify;

const TOKEN: &str = "preview-secret";

#[derive(Clone, Copy, Debug)]
enum Who {
    Visitor,
    Header,
    Cookie,
    WrongToken,
}

async fn get_as(
    client: &TestClient,
    proxy: &Proxy,
    who: Who,
    path: &str,
) -> Result<(StatusCode, String), String> {
    let mut request = Request::get(format!("http://{}{path}", proxy.local_addr()));
    request = match who {
        Who::Visitor => request,
        Who::Header => request.header("x-lifeboat-bypass", TOKEN),
        Who::Cookie => request.header("cookie", format!("theme=dark; lifeboat_bypass={TOKEN}")),
        Who::WrongToken => request.header("x-lifeboat-bypass", "preview-secreT"),
    };
    send(client, request.body(empty()).unwrap())
        .await
        .map(|(status, _, body)| (status, body))
}

async fn stage(proxy: &Proxy, upstreams: &[&Upstream]) {
    for upstream in upstreams {
        proxy.add_staged_backend(&upstream.name, upstream.addr);
    }
    let ids: Vec<String> = upstreams.iter().map(|u| u.name.clone()).collect();
    let watched = proxy.clone();
    eventually("staged instances healthy", move || {
        let backends = watched.backends();
        ids.iter().all(|id| {
            backends
                .iter()
                .any(|b| &b.id == id && b.staged && b.health == BackendHealth::Healthy)
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preview_token_in_header_or_cookie_reaches_the_staged_instance_and_nobody_else_does() {
    let live = Upstream::named("web-1").await;
    let staged = Upstream::named("web-1-rewound").await;
    let proxy = proxy_for(&[&live], test_config()).await;
    proxy.set_preview_token(Some(TOKEN.into()));
    let client = client();
    assert_eq!(
        get_as(&client, &proxy, Who::Header, "/").await.unwrap(),
        (StatusCode::OK, "web-1".into()),
        "without a healthy staged instance the token changes nothing"
    );
    stage(&proxy, &[&staged]).await;
    for _ in 0..10 {
        for (who, expected) in [
            (Who::Visitor, "web-1"),
            (Who::Header, "web-1-rewound"),
            (Who::Cookie, "web-1-rewound"),
            (Who::WrongToken, "web-1"),
        ] {
            assert_eq!(
                get_as(&client, &proxy, who, "/").await.unwrap(),
                (StatusCode::OK, expected.into()),
                "{who:?}"
            );
        }
    }
    let status = proxy.backends();
    assert_eq!(
        status
            .iter()
            .map(|b| (b.id.as_str(), b.staged))
            .collect::<Vec<_>>(),
        [("web-1", false), ("web-1-rewound", true)]
    );

    proxy.set_preview_token(None);
    assert_eq!(
        get_as(&client, &proxy, Who::Header, "/").await.unwrap().1,
        "web-1",
        "preview routing is off"
    );
    proxy.set_preview_token(Some(TOKEN.into()));
    proxy.mark_down("web-1-rewound");
    assert_eq!(
        get_as(&client, &proxy, Who::Cookie, "/").await.unwrap().1,
        "web-1",
        "a staged instance marked down takes no preview request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_maintenance_the_owner_previews_the_staged_instances_and_visitors_get_the_page() {
    let live = Upstream::named("web-1").await;
    let staged = Upstream::named("web-1-rewound").await;
    let proxy = proxy_for(&[&live], test_config()).await;
    stage(&proxy, &[&staged]).await;
    proxy.set_maintenance(Some(Maintenance {
        page_html: "<h1>Rewinding</h1>".into(),
        bypass_token: TOKEN.into(),
        allow_ips: vec![],
    }));
    let client = client();
    assert_eq!(
        get_as(&client, &proxy, Who::Visitor, "/").await.unwrap(),
        (StatusCode::SERVICE_UNAVAILABLE, "<h1>Rewinding</h1>".into())
    );
    assert_eq!(
        get_as(&client, &proxy, Who::Header, "/").await.unwrap().1,
        "web-1",
        "bypassing maintenance without preview routing reaches the live site"
    );
    proxy.set_preview_token(Some(TOKEN.into()));
    assert_eq!(
        get_as(&client, &proxy, Who::Header, "/").await.unwrap().1,
        "web-1-rewound"
    );
    assert_eq!(live.hits() + staged.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_traffic_never_reaches_a_staged_instance_even_under_concurrent_load() {
    let a = Upstream::named("web-1").await;
    let b = Upstream::named("web-2").await;
    let staged = Upstream::named("web-1-rewound").await;
    let proxy = proxy_for(&[&a, &b], test_config()).await;
    proxy.set_preview_token(Some(TOKEN.into()));
    stage(&proxy, &[&staged]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for i in 0..6 {
        let (proxy, stop) = (proxy.clone(), stop.clone());
        let who = if i == 0 { Who::Cookie } else { Who::Visitor };
        load.push(tokio::spawn(async move {
            let client = client();
            let mut wrong = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let answer = get_as(&client, &proxy, who, "/").await;
                let right = match (who, &answer) {
                    (Who::Cookie, Ok((StatusCode::OK, body))) => body == "web-1-rewound",
                    (_, Ok((StatusCode::OK, body))) => body != "web-1-rewound",
                    _ => false,
                };
                if !right {
                    wrong.push(format!("{who:?}: {answer:?}"));
                }
            }
            wrong
        }));
    }
    eventually("a few thousand live requests", || {
        a.hits() + b.hits() > 2000
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for task in load {
        let wrong = task.await.unwrap();
        assert!(wrong.is_empty(), "wrong answers: {wrong:?}");
    }
    assert!(staged.hits() > 0, "the preview client was served");
}

/// An instance that accepts a request and dies without answering (an idempotent GET sent to it
/// may be retried once elsewhere).
async fn dying_instance(name: &str) -> Upstream {
    Upstream::start(name, handler(|_| async { Err(DropConnection) })).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_never_crosses_between_live_and_staged_instances() {
    let live = dying_instance("web-1").await;
    let staged = dying_instance("web-1-rewound").await;
    let healthy_live = Upstream::named("web-2").await;
    let healthy_staged = Upstream::named("web-2-rewound").await;
    let proxy = proxy_for(&[&live], test_config()).await;
    proxy.set_preview_token(Some(TOKEN.into()));
    stage(&proxy, &[&staged]).await;
    let client = client();
    // Each set has one instance, which dies on every request: the one allowed retry of a GET
    // has nowhere to go in its own set, and must not go to the other.
    for who in [Who::Visitor, Who::Header] {
        let (status, _) = get_as(&client, &proxy, who, "/entries").await.unwrap();
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{who:?}");
    }
    assert_eq!((live.hits(), staged.hits()), (1, 1));

    // With a healthy instance in each set, the retry stays in the set.
    proxy.add_backend("web-2", healthy_live.addr);
    stage(&proxy, &[&healthy_staged]).await;
    let watched = proxy.clone();
    eventually("web-2 healthy", move || {
        watched
            .backends()
            .iter()
            .any(|b| b.id == "web-2" && b.health == BackendHealth::Healthy)
    })
    .await;
    for _ in 0..10 {
        assert_eq!(
            get_as(&client, &proxy, Who::Visitor, "/entries")
                .await
                .unwrap(),
            (StatusCode::OK, "web-2".into())
        );
        assert_eq!(
            get_as(&client, &proxy, Who::Header, "/entries")
                .await
                .unwrap(),
            (StatusCode::OK, "web-2-rewound".into())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_under_load_fails_no_request_and_every_later_request_reaches_the_new_instances() {
    let old = [
        Upstream::named("web-1").await,
        Upstream::named("web-2").await,
        Upstream::named("web-3").await,
    ];
    let new = [
        Upstream::named("web-4").await,
        Upstream::named("web-5").await,
        Upstream::named("web-6").await,
    ];
    let proxy = proxy_for(&[&old[0], &old[1], &old[2]], test_config()).await;
    proxy.set_preview_token(Some(TOKEN.into()));
    stage(&proxy, &[&new[0], &new[1], &new[2]]).await;

    let promoted = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (proxy, promoted, stop) = (proxy.clone(), promoted.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let client = client();
            let (mut failures, mut old_after_promotion, mut after) = (Vec::new(), Vec::new(), 0);
            while !stop.load(Ordering::SeqCst) {
                let started_after_promotion = promoted.load(Ordering::SeqCst);
                match get_as(&client, &proxy, Who::Visitor, "/").await {
                    Ok((StatusCode::OK, body)) if started_after_promotion => {
                        after += 1;
                        if !["web-4", "web-5", "web-6"].contains(&body.as_str()) {
                            old_after_promotion.push(body);
                        }
                    }
                    Ok((StatusCode::OK, _)) => {}
                    other => failures.push(format!("{other:?}")),
                }
            }
            (failures, old_after_promotion, after)
        }));
    }
    let old_hits = || old.iter().map(|u| u.hits()).sum::<usize>();
    let new_hits = || new.iter().map(|u| u.hits()).sum::<usize>();
    eventually("load on the old instances", || old_hits() > 1000).await;
    assert_eq!(new_hits(), 0, "no visitor reached a staged instance");

    let drained = proxy.promote_staged();
    promoted.store(true, Ordering::SeqCst);
    let status = proxy.backends();
    assert_eq!(
        status
            .iter()
            .map(|b| (b.id.as_str(), b.staged))
            .collect::<Vec<_>>(),
        [("web-4", false), ("web-5", false), ("web-6", false)]
    );
    let mut removed = tokio::time::timeout(Duration::from_secs(20), drained)
        .await
        .expect("the old instances drain");
    removed.sort();
    assert_eq!(removed, ["web-1", "web-2", "web-3"]);
    let old_after_drain = old_hits();
    let before = new_hits();
    eventually("load goes on on the new instances", || {
        new_hits() > before + 1000
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut after = 0;
    for task in load {
        let (failures, wrong, n) = task.await.unwrap();
        assert!(failures.is_empty(), "failed requests: {failures:?}");
        assert!(
            wrong.is_empty(),
            "requests started after promotion answered by old instances: {wrong:?}"
        );
        after += n;
    }
    assert!(after > 1000);
    assert_eq!(old_hits(), old_after_drain, "nothing reaches a drained one");
    assert_eq!(
        get_as(&client(), &proxy, Who::Header, "/").await.unwrap().0,
        StatusCode::OK,
        "the preview token is off: it is a visitor like any other"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discarding_staged_instances_drains_them_and_leaves_the_live_site_alone() {
    let release = Arc::new(Notify::new());
    let held = release.clone();
    let slow_staged = Upstream::start(
        "web-1-rewound",
        handler(move |_| {
            let held = held.clone();
            async move {
                held.notified().await;
                text(StatusCode::OK, "web-1-rewound finished")
            }
        }),
    )
    .await;
    let live = Upstream::named("web-1").await;
    let proxy = proxy_for(&[&live], test_config()).await;
    proxy.set_preview_token(Some(TOKEN.into()));
    stage(&proxy, &[&slow_staged]).await;
    let in_flight = {
        let proxy = proxy.clone();
        tokio::spawn(async move { get_as(&client(), &proxy, Who::Header, "/slow").await })
    };
    eventually("the preview request reached the staged instance", || {
        slow_staged.hits() == 1
    })
    .await;

    let drained = tokio::spawn(proxy.discard_staged());
    assert_eq!(
        proxy
            .backends()
            .iter()
            .map(|b| b.id.as_str())
            .collect::<Vec<_>>(),
        ["web-1"]
    );
    let client = client();
    for who in [Who::Visitor, Who::Header] {
        assert_eq!(
            get_as(&client, &proxy, who, "/").await.unwrap(),
            (StatusCode::OK, "web-1".into())
        );
    }
    assert!(
        !drained.is_finished(),
        "discarding waits for the preview request"
    );
    release.notify_one();
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        (StatusCode::OK, "web-1-rewound finished".into())
    );
    tokio::time::timeout(Duration::from_secs(20), drained)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(slow_staged.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_instance_can_be_removed_by_id() {
    let live = Upstream::named("web-1").await;
    let staged = Upstream::named("web-1-rewound").await;
    let proxy = proxy_for(&[&live], test_config()).await;
    proxy.set_preview_token(Some(TOKEN.into()));
    stage(&proxy, &[&staged]).await;
    proxy.remove_backend("web-1-rewound").await;
    assert_eq!(
        get_as(&client(), &proxy, Who::Header, "/").await.unwrap().1,
        "web-1"
    );
    assert_eq!(proxy.backends().len(), 1);
}
