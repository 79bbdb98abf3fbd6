//! Scaling 3 -> 5 -> 2 under load loses no request.
mod common;

use common::{Lifeboat, Load, SiteDir, assert_no_failures};
use tokio::task::block_in_place;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scaling_up_and_down_under_load_loses_no_request() {
    let site = SiteDir::guestbook(3);
    let lifeboat = block_in_place(|| Lifeboat::up(site.path()));
    block_in_place(|| lifeboat.wait_healthy(3));
    let load = Load::start(&lifeboat.proxy, 4, None);
    load.wait_for_requests(60).await;

    let out = block_in_place(|| lifeboat.cli(&["scale", "web=5"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = block_in_place(|| lifeboat.wait_healthy(5));
    let ids: Vec<&str> = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["web-1", "web-2", "web-3", "web-4", "web-5"]);
    load.wait_for_requests(60).await;

    let out = block_in_place(|| lifeboat.cli(&["scale", "web=2"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = block_in_place(|| lifeboat.wait_healthy(2));
    let ids: Vec<&str> = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["web-1", "web-2"]);
    load.wait_for_requests(60).await;

    let outcomes = load.stop().await;
    assert_no_failures(&outcomes);
    let events = block_in_place(|| lifeboat.events());
    let scaled: Vec<(u64, u64)> = events
        .iter()
        .filter(|e| e["kind"] == "scaled")
        .map(|e| (e["from"].as_u64().unwrap(), e["to"].as_u64().unwrap()))
        .collect();
    assert_eq!(scaled, [(3, 5), (5, 2)]);
}
