//! Several nodes: virtual hosts in network namespaces on one machine (`common/hosts.rs`),
//! one etcd member and one lifeboat node per host. Needs root.

mod common;
#[path = "common/hosts.rs"]
mod hosts;

use std::time::{Duration, Instant};

use hosts::Lan;

/// `GET http://ADDR/` from host `from`, with a short timeout: true when it answered.
fn reaches(lan: &Lan, from: usize, addr: &str) -> bool {
    lan.host(from)
        .command("python3")
        .args([
            "-c",
            &format!("import urllib.request; urllib.request.urlopen('http://{addr}/', timeout=1)"),
        ])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn virtual_hosts_reach_each_other_until_one_is_cut_off_or_dies() {
    let lan = Lan::new(2);
    let server_addr = format!("{}:8000", lan.host(0).ip);
    let mut server = lan
        .host(0)
        .command("python3")
        .args([
            "-m",
            "http.server",
            "8000",
            "--bind",
            &lan.host(0).ip.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + common::DEADLINE;
    while !reaches(&lan, 1, &server_addr) {
        assert!(Instant::now() < deadline, "host 2 never reached host 1");
        std::thread::sleep(Duration::from_millis(100));
    }
    lan.cut(0);
    assert!(!reaches(&lan, 1, &server_addr), "a cut host is unreachable");
    lan.heal(0);
    common::wait_until("host 1 to be reachable again", || {
        reaches(&lan, 1, &server_addr)
    });
    assert!(lan.host(0).kill_everything() >= 1);
    let _ = server.wait();
    assert!(lan.host(0).pids().is_empty(), "nothing runs on a dead host");
}
