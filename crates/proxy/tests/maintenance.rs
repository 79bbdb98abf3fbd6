//! Promises of maintenance mode: while on, everyone but the owner gets the 503 page from the
//! front door itself; switching on and off under load drops no connection.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use common::*;
use http::{Request, StatusCode};
use lifeboat_proxy::Maintenance;

const PAGE: &str = "<h1>Upgrading the database, back in 10 minutes</h1>";

fn maintenance() -> Maintenance {
    Maintenance {
        page_html: PAGE.into(),
        bypass_token: "owner-secret".into(),
        allow_ips: vec![],
    }
}

#[derive(Clone, Copy)]
enum Who {
    Visitor,
    OwnerWithHeader,
    OwnerWithCookie,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_on_and_off_under_load_answers_every_request_and_drops_no_connection() {
    let a = Upstream::named("web-1").await;
    let b = Upstream::named("web-2").await;
    let proxy = proxy_for(&[&a, &b], test_config()).await;
    // 0: off, 1: switching on, 2: on, 3: switching off, 4: off again. A request that starts and
    // ends within phase 0, 2 or 4 must see that mode; one that overlaps a switch may see either.
    let phase = Arc::new(AtomicU8::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for i in 0..6 {
        let who = [
            Who::Visitor,
            Who::Visitor,
            Who::Visitor,
            Who::Visitor,
            Who::OwnerWithHeader,
            Who::OwnerWithCookie,
        ][i];
        let (proxy, phase, stop) = (proxy.clone(), phase.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let client = client();
            let mut wrong = Vec::new();
            let mut seen = [0usize; 5];
            while !stop.load(Ordering::SeqCst) {
                let started_in = phase.load(Ordering::SeqCst);
                let mut request = Request::get(format!("http://{}/", proxy.local_addr()));
                match who {
                    Who::Visitor => {}
                    Who::OwnerWithHeader => {
                        request = request.header("x-lifeboat-bypass", "owner-secret")
                    }
                    Who::OwnerWithCookie => {
                        request = request.header("cookie", "a=b; lifeboat_bypass=owner-secret")
                    }
                }
                let answer = send(&client, request.body(empty()).unwrap()).await;
                let ended_in = phase.load(Ordering::SeqCst);
                let ok = match (&answer, who) {
                    (Err(_), _) => false,
                    (Ok((status, _, body)), Who::Visitor) => {
                        let page = *status == StatusCode::SERVICE_UNAVAILABLE && body == PAGE;
                        let site = *status == StatusCode::OK && body.starts_with("web-");
                        match (started_in, ended_in) {
                            (2, 2) => page,
                            (0, 0) | (4, 4) => site,
                            _ => page || site,
                        }
                    }
                    (Ok((status, _, body)), _) => {
                        *status == StatusCode::OK && body.starts_with("web-")
                    }
                };
                if !ok {
                    wrong.push(format!("phase {started_in}->{ended_in}: {answer:?}"));
                }
                seen[ended_in as usize] += 1;
            }
            (seen, wrong)
        }));
    }
    let hits = || a.hits() + b.hits();
    eventually("load before maintenance", || hits() > 300).await;
    phase.store(1, Ordering::SeqCst);
    proxy.set_maintenance(Some(maintenance()));
    phase.store(2, Ordering::SeqCst);
    let on_hits = hits();
    // Owners keep reaching the site during maintenance.
    eventually("owners reach the site during maintenance", || {
        hits() > on_hits + 300
    })
    .await;
    assert!(proxy.maintenance_on());
    phase.store(3, Ordering::SeqCst);
    proxy.set_maintenance(None);
    phase.store(4, Ordering::SeqCst);
    let off_hits = hits();
    eventually("load after maintenance", || hits() > off_hits + 300).await;
    stop.store(true, Ordering::SeqCst);
    for task in load {
        let (seen, wrong) = task.await.unwrap();
        assert!(
            wrong.is_empty(),
            "wrong answers: {:?}",
            &wrong[..wrong.len().min(5)]
        );
        assert!(
            [0, 2, 4].iter().all(|phase| seen[*phase] > 0),
            "every client saw every mode: {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maintenance_page_is_served_without_touching_instances() {
    let a = Upstream::named("web-1").await;
    let proxy = proxy_for(&[&a], test_config()).await;
    proxy.set_maintenance(Some(maintenance()));
    let request = Request::post(format!("http://{}/entries", proxy.local_addr()))
        .body(full("text=hi"))
        .unwrap();
    let (status, headers, body) = send(&client(), request).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, PAGE);
    assert_eq!(headers["retry-after"], "30");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(a.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_address_reaches_the_real_site_during_maintenance() {
    let a = Upstream::named("web-1").await;
    let proxy = proxy_for(&[&a], test_config()).await;
    proxy.set_maintenance(Some(Maintenance {
        allow_ips: vec!["127.0.0.1".parse().unwrap()],
        ..maintenance()
    }));
    assert_eq!(
        get(&client(), &proxy, "/").await.unwrap(),
        (StatusCode::OK, "web-1".into())
    );
}
