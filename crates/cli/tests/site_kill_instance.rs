//! Killing an instance with SIGKILL under load loses no request: GETs and keyed POSTs
//! (`Idempotency-Key`) that the dying instance never answered are replayed on another one, and
//! no entry is stored twice. The instance comes back healthy and the events tell what happened.
mod common;

use common::{Lifeboat, Load, SiteDir, assert_no_failures_or_show_log};
use tokio::task::block_in_place;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_an_instance_under_load_loses_no_request() {
    let site = SiteDir::guestbook(3);
    let lifeboat = block_in_place(|| Lifeboat::up(site.path()));
    let status = block_in_place(|| lifeboat.wait_healthy(3));
    let victim = &status["instances"][1];
    assert_eq!(victim["id"], "web-2");
    let old_pid = victim["pid"].as_u64().unwrap() as i32;

    let load = Load::start(&lifeboat.proxy, 4, None);
    load.wait_for_requests(60).await;
    let killed_at = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The kernel needs a moment to tear the process down; a request may still reach it then.
    block_in_place(|| {
        let deadline = killed_at + common::DEADLINE;
        while common::alive(old_pid as u32) {
            assert!(
                std::time::Instant::now() < deadline,
                "web-2 survived SIGKILL"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    });
    block_in_place(|| {
        lifeboat.wait_for_status("web-2 to be back and healthy with a new pid", |s| {
            s["instances"].as_array().unwrap().iter().any(|i| {
                i["id"] == "web-2"
                    && i["state"] == "healthy"
                    && i["pid"].as_i64() != Some(old_pid as i64)
                    && i["restarts"].as_u64() >= Some(1)
            })
        })
    });
    load.wait_for_requests(60).await;
    let outcomes = load.stop().await;
    assert_no_failures_or_show_log(&outcomes, &lifeboat.output());

    // A replayed POST must not have been stored twice.
    let entries: Vec<serde_json::Value> = reqwest::get(format!("{}/api/entries", lifeboat.proxy))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut texts: Vec<&str> = entries
        .iter()
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    let stored = texts.len();
    texts.sort_unstable();
    texts.dedup();
    assert_eq!(texts.len(), stored, "an entry was stored twice");
    let posted = outcomes.iter().filter(|o| o.method == "POST").count();
    assert_eq!(
        stored, posted,
        "every acknowledged POST is stored exactly once"
    );

    let exited = block_in_place(|| {
        lifeboat.wait_for_event("web-2 exited by signal 9", |e| {
            e["kind"] == "instance-exited" && e["instance"] == "web-2" && e["signal"] == 9
        })
    });
    let events = block_in_place(|| lifeboat.events());
    assert!(
        events.iter().any(|e| e["kind"] == "instance-started"
            && e["instance"] == "web-2"
            && e["seq"].as_u64() > exited["seq"].as_u64()),
        "no restart of web-2 after its crash in {events:#?}"
    );
}
