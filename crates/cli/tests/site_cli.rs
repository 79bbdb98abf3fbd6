//! The everyday commands against a running site: status reports the real front door address,
//! commands without a daemon say how to start it, logs work without the daemon, `down` stops
//! everything, and a second `up` of the same site is refused.
mod common;

use common::{Lifeboat, SiteDir, alive, cli, wait_until};

#[test]
fn status_reports_the_real_address_and_every_instance() {
    let site = SiteDir::guestbook(2);
    let lifeboat = Lifeboat::up(site.path());
    let status = lifeboat.wait_healthy(2);
    assert_eq!(status["site"], "guestbook");
    assert_eq!(status["maintenance"], false);
    let proxy = status["proxy"].as_str().unwrap();
    assert!(
        proxy.starts_with("http://127.0.0.1:") && !proxy.ends_with(":0"),
        "{proxy}"
    );
    let web1 = &status["instances"][0];
    assert_eq!(web1["id"], "web-1");
    assert_eq!(web1["process"], "web");
    assert_eq!(web1["restarts"], 0);
    assert!(web1["pid"].as_u64().unwrap() > 0 && web1["port"].as_u64().unwrap() > 0);

    let human = lifeboat.cli(&["status"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("INSTANCE") && text.contains("web-2") && text.contains("healthy"),
        "{text}"
    );
}

#[test]
fn commands_without_a_running_site_say_how_to_start_it() {
    let site = SiteDir::guestbook(1);
    let out = cli(site.path(), &["status"]);
    assert!(!out.status.success());
    let err =
        String::from_utf8_lossy(&out.stderr).replace(&site.path().display().to_string(), "SITE");
    insta::assert_snapshot!(err);
}

#[test]
fn a_second_up_of_the_same_site_is_refused() {
    let site = SiteDir::guestbook(1);
    let _lifeboat = Lifeboat::up(site.path());
    let out = cli(site.path(), &["up", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    let err =
        String::from_utf8_lossy(&out.stderr).replace(&site.path().display().to_string(), "SITE");
    insta::assert_snapshot!(err);
}

#[test]
fn down_stops_every_instance_and_logs_stay_readable() {
    let site = SiteDir::guestbook(2);
    let mut lifeboat = Lifeboat::up(site.path());
    let status = lifeboat.wait_healthy(2);
    let pids: Vec<u32> = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pid"].as_u64().unwrap() as u32)
        .collect();

    let out = lifeboat.cli(&["down"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        lifeboat.wait_exit(),
        "lifeboat exited with failure:\n{}",
        lifeboat.output()
    );
    wait_until("every instance to be gone", || {
        pids.iter().all(|&p| !alive(p))
    });
    assert!(!site.path().join(".lifeboat/control.sock").exists());

    let logs = cli(site.path(), &["logs", "web-1"]);
    assert!(
        logs.status.success(),
        "{}",
        String::from_utf8_lossy(&logs.stderr)
    );
    assert!(!logs.stdout.is_empty(), "web-1 wrote nothing to its log");
    let events = cli(site.path(), &["events", "--json"]);
    assert!(
        events.status.success(),
        "{}",
        String::from_utf8_lossy(&events.stderr)
    );
    let events: Vec<serde_json::Value> = serde_json::from_slice(&events.stdout).unwrap();
    assert_eq!(events.last().unwrap()["kind"], "site-down", "{events:#?}");
}
