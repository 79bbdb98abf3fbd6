//! Promises about requests that carry an `Idempotency-Key` header: when their instance dies after
//! reading them and before answering, a small one is sent once more to another instance, so a
//! kill -9 under load loses no keyed POST; without a key, or with a body too large to keep, the
//! client gets a 502 and the request is never sent twice.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};

/// Largest body the front door keeps to replay (64 KiB).
const LIMIT: usize = 64 * 1024;

/// An instance that reads the whole request, as if it were about to commit it, then dies
/// without answering.
async fn dies_after_reading(name: &str) -> Upstream {
    Upstream::start(
        name,
        handler(|request| async move {
            let _ = request.into_body().collect().await;
            Err(DropConnection)
        }),
    )
    .await
}

/// An instance that answers with its name and the body it received.
async fn echoing(name: &str) -> Upstream {
    let own = name.to_string();
    Upstream::start(
        name,
        handler(move |request| {
            let own = own.clone();
            async move {
                let body = request.into_body().collect().await.unwrap().to_bytes();
                let mut answer = format!("{own}:").into_bytes();
                answer.extend_from_slice(&body);
                text(StatusCode::OK, answer)
            }
        }),
    )
    .await
}

/// A body sent chunked (no Content-Length), in the given pieces.
fn chunked(pieces: Vec<Bytes>) -> TestBody {
    let frames = pieces
        .into_iter()
        .map(|piece| Ok::<_, std::io::Error>(Frame::data(piece)));
    StreamBody::new(futures::stream::iter(frames)).boxed()
}

fn post(proxy: &lifeboat_proxy::Proxy, key: Option<&str>, body: TestBody) -> Request<TestBody> {
    let mut request = Request::post(format!("http://{}/entries", proxy.local_addr()));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.body(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_post_whose_instance_dies_after_reading_it_succeeds_on_another_instance() {
    let dying = dies_after_reading("web-1").await;
    let good = echoing("web-2").await;
    let proxy = proxy_for(&[&dying, &good], test_config()).await;
    let client = client();
    for i in 0..20 {
        let text = format!("text=hello {i}");
        let request = post(
            &proxy,
            Some(&format!("client-1-request-{i}")),
            full(text.clone()),
        );
        let (status, _, body) = send(&client, request).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            format!("web-2:{text}"),
            "the replay carries the same body"
        );
    }
    assert!(
        dying.hits() > 0,
        "some POSTs reached the dying instance first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_chunked_post_is_kept_and_replayed_whole() {
    let dying = dies_after_reading("web-1").await;
    let good = echoing("web-2").await;
    let proxy = proxy_for(&[&dying, &good], test_config()).await;
    let client = client();
    for i in 0..20 {
        let pieces = vec![
            Bytes::from(format!("text=part one of {i}, ")),
            Bytes::from("part two"),
        ];
        let request = post(&proxy, Some(&format!("chunked-{i}")), chunked(pieces));
        let (status, _, body) = send(&client, request).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("web-2:text=part one of {i}, part two"));
    }
    assert!(
        dying.hits() > 0,
        "some POSTs reached the dying instance first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_post_is_retried_at_most_once() {
    let upstreams = [
        dies_after_reading("web-1").await,
        dies_after_reading("web-2").await,
        dies_after_reading("web-3").await,
    ];
    let proxy = proxy_for(
        &[&upstreams[0], &upstreams[1], &upstreams[2]],
        test_config(),
    )
    .await;
    let request = post(&proxy, Some("client-1-request-1"), full("text=hello"));
    let (status, _, _) = send(&client(), request).await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        upstreams.iter().map(|u| u.hits()).sum::<usize>(),
        2,
        "one try and one retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_without_a_key_whose_instance_dies_after_reading_it_gets_a_502_and_is_sent_once() {
    let a = dies_after_reading("web-1").await;
    let b = dies_after_reading("web-2").await;
    let proxy = proxy_for(&[&a, &b], test_config()).await;
    let (status, _, _) = send(&client(), post(&proxy, None, full("text=only once")))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(a.hits() + b.hits(), 1, "the POST was sent exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_post_too_large_to_keep_is_sent_once() {
    let a = dies_after_reading("web-1").await;
    let b = dies_after_reading("web-2").await;
    let proxy = proxy_for(&[&a, &b], test_config()).await;
    for body in [
        full(vec![b'x'; LIMIT + 1]),
        chunked(vec![Bytes::from(vec![b'x'; LIMIT]), Bytes::from("y")]),
    ] {
        let before = a.hits() + b.hits();
        let (status, _, _) = send(&client(), post(&proxy, Some("big"), body))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            a.hits() + b.hits(),
            before + 1,
            "the POST was sent exactly once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_body_larger_than_the_limit_still_arrives_intact() {
    let good = echoing("web-1").await;
    let proxy = proxy_for(&[&good], test_config()).await;
    let pieces: Vec<Bytes> = (0..40u8)
        .map(|i| Bytes::from(vec![b'a' + i % 26; 8 * 1024]))
        .collect();
    let expected: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
    assert!(expected.len() > LIMIT);
    for body in [chunked(pieces.clone()), full(expected.clone())] {
        let (status, _, answer) = send(&client(), post(&proxy, Some("big"), body))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer.len(), "web-1:".len() + expected.len());
        assert_eq!(answer.as_bytes()["web-1:".len()..], expected[..]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_instance_under_keyed_post_load_loses_no_request() {
    let a = echoing("web-1").await;
    let mut b = echoing("web-2").await;
    let c = echoing("web-3").await;
    let proxy = proxy_for(&[&a, &b, &c], test_config()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for writer in 0..8 {
        let (proxy, stop) = (proxy.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let client = client();
            let mut failures = Vec::new();
            let mut done = 0;
            while !stop.load(Ordering::SeqCst) {
                let text = format!("text=writer {writer} post {done}");
                let key = format!("writer-{writer}-post-{done}");
                match send(&client, post(&proxy, Some(&key), full(text.clone()))).await {
                    Ok((StatusCode::OK, _, body)) if body.ends_with(&text) => done += 1,
                    other => failures.push(format!("{other:?}")),
                }
            }
            (done, failures)
        }));
    }
    eventually("load reaches the instance to be killed", || b.hits() > 100).await;
    b.kill().await;
    let after_kill = a.hits() + c.hits();
    eventually("load goes on after the kill", || {
        a.hits() + c.hits() > after_kill + 300
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for task in load {
        let (done, failures) = task.await.unwrap();
        assert!(failures.is_empty(), "failed POSTs: {failures:?}");
        assert!(done > 0);
    }
}
