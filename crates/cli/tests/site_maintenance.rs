//! Maintenance under load: after `maintenance on` returns, every visitor gets the 503 page and
//! the owner's bypass gets the real site; after `maintenance off` everyone gets the real site;
//! no request fails with a connection error at any point.
mod common;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::{Lifeboat, Load, Outcome, SiteDir};
use tokio::task::block_in_place;

const MESSAGE: &str = "Upgrading the database, back in 10 minutes";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn maintenance_on_and_off_under_load_switches_every_response() {
    let site = SiteDir::guestbook(3);
    let lifeboat = block_in_place(|| Lifeboat::up(site.path()));
    block_in_place(|| lifeboat.wait_healthy(3));
    let token = Arc::new(Mutex::new(None));
    let load = Load::start(&lifeboat.proxy, 6, Some(token.clone()));
    load.wait_for_requests(60).await;

    let on_started = Instant::now();
    let out = block_in_place(|| lifeboat.cli(&["maintenance", "on", "--json"]));
    let on_done = Instant::now();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["on"], true);
    assert_eq!(report["message"], MESSAGE);
    *token.lock().unwrap() = Some(report["bypass_token"].as_str().unwrap().to_string());
    let token_set = Instant::now();
    // Bypassed requests reach the real site and are slower than the page: wait for enough of both.
    load.wait_for(
        "requests with and without the bypass during maintenance",
        |all| {
            let after = all.iter().filter(|o| o.started > token_set);
            let (bypassed, plain): (Vec<&Outcome>, Vec<&Outcome>) = after.partition(|o| o.bypass);
            bypassed.len() > 20 && plain.len() > 20
        },
    )
    .await;

    let direct = reqwest::get(format!("{}/", lifeboat.proxy)).await.unwrap();
    assert_eq!(direct.status(), 503);
    assert!(direct.headers().contains_key("retry-after"));
    assert!(direct.text().await.unwrap().contains(MESSAGE));
    assert_eq!(block_in_place(|| lifeboat.status())["maintenance"], true);

    let off_started = Instant::now();
    let out = block_in_place(|| lifeboat.cli(&["maintenance", "off"]));
    let off_done = Instant::now();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    load.wait_for_requests(100).await;
    let outcomes = load.stop().await;

    let errors: Vec<&Outcome> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    assert!(errors.is_empty(), "connection errors: {errors:#?}");
    let is_page = |o: &Outcome| o.result == Ok(503) && o.body.contains(MESSAGE);
    let is_real = |o: &Outcome| matches!(o.result, Ok(200..=299));
    let mut during = (0, 0);
    for o in &outcomes {
        let ok = if o.started < on_started || o.started > off_done {
            is_real(o)
        } else if o.started > on_done && o.started < off_started {
            if o.bypass {
                during.1 += 1;
                is_real(o)
            } else {
                during.0 += 1;
                is_page(o)
            }
        } else {
            // Sent while a switch was in progress: either answer is right.
            is_real(o) || is_page(o) || (o.started < token_set && o.result == Ok(503))
        };
        assert!(
            ok,
            "wrong answer for a request sent at {:?} after the switch on: {o:#?}",
            o.started.saturating_duration_since(on_started)
        );
    }
    assert!(
        during.0 > 10 && during.1 > 10,
        "too few requests during maintenance: {during:?}"
    );
    let events = block_in_place(|| lifeboat.events());
    let kinds: Vec<&str> = events
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .filter(|k| k.starts_with("maintenance"))
        .collect();
    assert_eq!(kinds, ["maintenance-on", "maintenance-off"]);
    let all = serde_json::to_string(&events).unwrap();
    assert!(
        !all.contains(report["bypass_token"].as_str().unwrap()),
        "the bypass token leaked into the events"
    );
}
