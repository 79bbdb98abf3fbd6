//! Killing lifeboat itself with SIGKILL leaves no instance behind, and the next `lifeboat up`
//! comes back with the same scale and maintenance state.
mod common;

use std::time::{Duration, Instant};

use common::{Lifeboat, SiteDir, alive};

#[test]
fn kill_9_of_lifeboat_leaves_no_instance_and_up_restores_scale_and_maintenance() {
    let site = SiteDir::guestbook(3);
    let mut lifeboat = Lifeboat::up(site.path());
    lifeboat.wait_healthy(3);
    assert!(lifeboat.cli(&["scale", "web=4"]).status.success());
    assert!(
        lifeboat
            .cli(&["maintenance", "on", "--message", "Back soon"])
            .status
            .success()
    );
    let status = lifeboat.wait_healthy(4);
    let pids: Vec<u32> = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pid"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(pids.len(), 4);

    lifeboat.kill_9();
    let killed_at = Instant::now();
    let deadline = killed_at + Duration::from_secs(10);
    while pids.iter().any(|&p| alive(p)) {
        assert!(
            Instant::now() < deadline,
            "instances outlived lifeboat: {:?}",
            pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let survived = killed_at.elapsed();
    assert!(
        survived < Duration::from_secs(5),
        "instances survived lifeboat for {survived:?}"
    );

    let again = Lifeboat::up(site.path());
    let status = again.wait_healthy(4);
    assert_eq!(status["maintenance"], true);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (code, page) = runtime.block_on(async {
        let resp = reqwest::get(format!("{}/", again.proxy)).await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    });
    assert_eq!(code, 503);
    assert!(page.contains("Back soon"), "{page}");
    drop(lifeboat);
}
