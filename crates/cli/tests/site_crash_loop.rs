//! An instance that exits at once on every start: its restarts are spaced out more and more,
//! status says crash-looping, and the other instances keep serving without a failed request.
mod common;

use common::{Lifeboat, Load, SiteDir, assert_no_failures, guestbook_command};
use tokio::task::block_in_place;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_looping_instance_backs_off_while_the_others_serve() {
    let command = format!(
        r#"if [ "$LIFEBOAT_INSTANCE" = web-3 ]; then echo "web-3 refuses to start" >&2; exit 3; fi; exec {}"#,
        guestbook_command()
    );
    let site = SiteDir::with_command(&command.replace('"', "\\\""), 3);
    let lifeboat = block_in_place(|| Lifeboat::up(site.path()));
    let load = Load::start(&lifeboat.proxy, 4, None);
    // Requests before web-1 and web-2 are healthy may fail; measure from when they are.
    block_in_place(|| {
        lifeboat.wait_for_status("web-1 and web-2 healthy", |s| {
            let i = s["instances"].as_array().unwrap();
            i.iter().filter(|i| i["state"] == "healthy").count() == 2
        })
    });
    let healthy_from = load.count();
    let status = block_in_place(|| {
        lifeboat.wait_for_status("web-3 crash-looping", |s| {
            s["instances"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["id"] == "web-3" && i["state"] == "crash-looping")
        })
    });
    let web3 = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "web-3")
        .unwrap()
        .clone();
    assert!(web3["restarts"].as_u64().unwrap() >= 2, "{web3:#?}");
    assert_eq!(web3["last_exit"], "code 3");
    load.wait_for_requests(60).await;
    let outcomes = load.stop().await;
    assert_no_failures(&outcomes[healthy_from..]);

    let delays: Vec<u64> = block_in_place(|| lifeboat.events())
        .iter()
        .filter(|e| {
            e["instance"] == "web-3"
                && (e["kind"] == "instance-restarting" || e["kind"] == "instance-crash-looping")
        })
        .map(|e| e["delay_ms"].as_u64().unwrap())
        .collect();
    assert!(
        delays.windows(2).all(|w| w[1] >= w[0]) && delays.last() > delays.first(),
        "restart delays do not grow: {delays:?}"
    );
    assert!(
        block_in_place(|| lifeboat.events())
            .iter()
            .any(|e| e["kind"] == "instance-crash-looping" && e["instance"] == "web-3")
    );
    let out = block_in_place(|| lifeboat.cli(&["logs", "web-3", "-n", "5"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("web-3 refuses to start"));
}
