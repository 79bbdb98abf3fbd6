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

#[test]
fn sigterm_stops_the_site_gracefully() {
    let site = SiteDir::guestbook(2);
    let mut lifeboat = Lifeboat::up(site.path());
    let status = lifeboat.wait_healthy(2);
    let pids: Vec<u32> = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pid"].as_u64().unwrap() as u32)
        .collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(lifeboat.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(
        lifeboat.wait_exit(),
        "lifeboat exited with failure:\n{}",
        lifeboat.output()
    );
    wait_until("every instance to be gone", || {
        pids.iter().all(|&p| !alive(p))
    });
    let events = cli(site.path(), &["events", "--json"]);
    let events: Vec<serde_json::Value> = serde_json::from_slice(&events.stdout).unwrap();
    let stopped = events
        .iter()
        .filter(|e| e["kind"] == "instance-stopped")
        .count();
    assert_eq!(stopped, 2, "{events:#?}");
    assert_eq!(events.last().unwrap()["reason"], "terminated (SIGTERM)");
}

#[test]
fn only_the_owner_can_reach_the_control_socket() {
    use std::os::unix::fs::PermissionsExt;
    let site = SiteDir::guestbook(1);
    let _lifeboat = Lifeboat::up(site.path());
    let mode = |p: &str| {
        std::fs::metadata(site.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(".lifeboat"), 0o700);
    assert_eq!(mode(".lifeboat/control.sock"), 0o600);
}

#[test]
fn events_follow_prints_new_events_as_they_happen() {
    use std::io::{BufRead, BufReader};
    let site = SiteDir::guestbook(1);
    let lifeboat = Lifeboat::up(site.path());
    lifeboat.wait_healthy(1);
    let mut follow = std::process::Command::new(common::lifeboat_bin())
        .args(["events", "--follow", "--json", "-n", "0", "-C"])
        .arg(site.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let guard = common::KillOnDrop(follow.id());
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    assert!(lifeboat.cli(&["scale", "web=2"]).status.success());
    // The follower may have started before or after the `scaled` event was stored; either way
    // the events of web-2 (which only exists after the scale) must show up as they happen.
    let line = lines.next().expect("a followed event").unwrap();
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(
        event["kind"] == "scaled" || event["instance"] == "web-2",
        "{event}"
    );
    drop(guard);
    let _ = follow.wait();
}

#[test]
fn a_worker_process_runs_without_the_front_door_and_a_page_file_is_the_maintenance_page() {
    let manifest = format!(
        r#"[site]
name = "guestbook"

[processes.web]
command = "{}"
health = {{ path = "/healthz", interval = "200ms" }}

[processes.worker]
command = "exec sleep 1000"
http = false

[proxy]
listen = "127.0.0.1:0"

[maintenance]
page = "down.html"
"#,
        common::guestbook_command()
    );
    let site = SiteDir::with_manifest(&manifest);
    std::fs::write(site.path().join("down.html"), "<h1>Our own page</h1>").unwrap();
    let lifeboat = Lifeboat::up(site.path());
    let status = lifeboat.wait_healthy(2);
    let ids: Vec<&str> = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["web-1", "worker-1"]);

    assert!(lifeboat.cli(&["maintenance", "on"]).status.success());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (code, page) = runtime.block_on(async {
        let resp = reqwest::get(format!("{}/", lifeboat.proxy)).await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    });
    assert_eq!((code, page.as_str()), (503, "<h1>Our own page</h1>"));
}

/// The instance shim runs a command given without any sandbox option (the supervisor then
/// passes `__instance -- sh -c ...`, whose `--` the argument parser takes for its own): the
/// site's MariaDB server is started this way when no cgroup or user applies.
#[test]
fn the_instance_shim_runs_a_command_without_sandbox_options() {
    let out = std::process::Command::new(common::lifeboat_bin())
        .args(["__instance", "--", "sh", "-c", "echo ran-$((40 + 2))"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ran-42");
}
