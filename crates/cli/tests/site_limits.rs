//! `memory`, `cpu` and `pids` hold end to end: a fork bomb in one process of the site stays at
//! its `pids` and a memory hog is killed at its `memory` and started again, while the web
//! process keeps serving every request and `lifeboat status` keeps answering; status shows
//! each instance's limits and usage; the cgroups go with `lifeboat down`, and a `kill -9`'d
//! lifeboat's are emptied (escaped processes included) by the next `up`.
//!
//! Enforcing needs root here (or a delegated cgroup); as another user the tests check that the
//! site runs and `status` says the limits are not enforced, and print that they did only that.
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Lifeboat, Load, SiteDir, assert_no_failures_or_show_log, guestbook_command};
use serde_json::Value;
use tokio::task::block_in_place;

/// Once the test creates `go` (after it checked that limits are enforced): every process makes
/// two more, 2^11 - 1 of them in all, then becomes `sleep 60`: a fork bomb that stops growing
/// and ends by itself, so a limit that fails cannot take the test machine down (about 2000
/// sleeping processes at most, for a minute).
const BOUNDED_FORK_BOMB: &str = "while [ ! -e go ]; do sleep 0.1; done; \
     b() { if [ $1 -gt 0 ]; then b $(($1 - 1)) & b $(($1 - 1)) & fi; exec sleep 60; }; b 10";

/// Lets the bomb or the hog go off, once limits are known to hold.
fn go(site: &SiteDir) {
    std::fs::write(site.path().join("go"), "").unwrap();
}

/// A site serving the guestbook (`web`, 1 replica) plus `extra`, TOML for more processes.
fn site_with(extra: &str) -> SiteDir {
    SiteDir::with_manifest(&format!(
        r#"[site]
name = "guestbook"

[processes.web]
command = "{}"
health = {{ path = "/healthz", interval = "200ms", timeout = "2s" }}

{extra}

[state]
sqlite = ["data/guestbook.db"]
dirs = ["data/uploads"]

[proxy]
listen = "127.0.0.1:0"
"#,
        guestbook_command()
    ))
}

fn instance<'a>(status: &'a Value, id: &str) -> Option<&'a Value> {
    status["instances"]
        .as_array()?
        .iter()
        .find(|i| i["id"] == id)
}

/// Whether lifeboat enforces limits here; if not, checks that `status` says why (per instance
/// and as a warning) and prints that only this was checked.
fn enforced(lifeboat: &Lifeboat, id: &str) -> bool {
    let status = lifeboat.wait_for_status(&format!("{id} to run"), |s| {
        instance(s, id).is_some_and(|i| i["pid"].is_u64())
    });
    let limits = &instance(&status, id).unwrap()["limits"];
    if limits["enforced"] == true {
        return true;
    }
    let why = limits["not_enforced_because"]
        .as_str()
        .unwrap_or_else(|| panic!("{id}'s limits are not enforced and status does not say why"));
    assert!(
        !nix::unistd::geteuid().is_root(),
        "as root, limits must be enforced here, but: {why}"
    );
    let warned = status["warnings"].as_array().unwrap().iter().any(|w| {
        w.as_str()
            .is_some_and(|w| w.contains("not every resource limit"))
    });
    assert!(warned, "status has no warning that limits are not enforced");
    println!("limits are not enforced on this machine, so only the report is checked: {why}");
    false
}

/// The cgroup directories of process `pid` that Lifeboat made (`.../lifeboat-SITE-HASH/ID`).
fn lifeboat_cgroups_of(pid: u64) -> Vec<PathBuf> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut dirs = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !path.contains("/lifeboat-") {
            continue;
        }
        let mount = mounts.lines().find_map(|m| {
            let (before, after) = m.split_once(" - ")?;
            let point = before.split(' ').nth(4)?;
            let mut after = after.split(' ');
            let (fstype, options) = (after.next()?, after.nth(1)?);
            let fits = if controllers.is_empty() {
                fstype == "cgroup2"
            } else {
                fstype == "cgroup"
                    && controllers
                        .split(',')
                        .all(|c| options.split(',').any(|o| o == c))
            };
            fits.then(|| PathBuf::from(point))
        });
        if let Some(mount) = mount {
            dirs.push(mount.join(path.trim_start_matches('/')));
        }
    }
    dirs
}

fn procs_in(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// `lifeboat status` answers, quickly enough for a person waiting on it.
fn status_answers(lifeboat: &Lifeboat) {
    let asked = Instant::now();
    let out = lifeboat.cli(&["status"]);
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "status took {:?}",
        asked.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fork_bomb_is_held_at_its_pids_while_the_site_keeps_serving() {
    let site = site_with(&format!(
        "[processes.bomb]\ncommand = '{BOUNDED_FORK_BOMB}'\nhttp = false\npids = 64\n"
    ));
    let lifeboat = block_in_place(|| Lifeboat::up(site.path()));
    block_in_place(|| {
        lifeboat.wait_for_status("web-1 healthy", |s| {
            instance(s, "web-1").is_some_and(|i| i["state"] == "healthy")
        })
    });
    if !block_in_place(|| enforced(&lifeboat, "bomb-1")) {
        return;
    }
    go(&site);
    let load = Load::start(&lifeboat.proxy, 3, None);
    load.wait_for_requests(30).await;
    // The bomb reaches its ceiling: forks fail there.
    block_in_place(|| {
        common::wait_until("forks in bomb-1 to fail at its limit", || {
            let out = lifeboat.cli(&["logs", "bomb-1", "-n", "200"]);
            let text = String::from_utf8_lossy(&out.stdout);
            text.contains("Cannot fork") || text.contains("Resource temporarily unavailable")
        })
    });
    for _ in 0..10 {
        let status = block_in_place(|| lifeboat.status());
        let bomb = instance(&status, "bomb-1").unwrap();
        if let Some(pids) = bomb["usage"]["pids"].as_u64() {
            assert!(pids <= 64, "bomb-1 has {pids} processes, over its 64");
        }
        block_in_place(|| status_answers(&lifeboat));
        load.wait_for_requests(10).await;
    }
    let outcomes = load.stop().await;
    assert_no_failures_or_show_log(&outcomes, &lifeboat.output());
    let status = block_in_place(|| lifeboat.status());
    assert_eq!(instance(&status, "web-1").unwrap()["restarts"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_memory_hog_is_killed_at_its_memory_limit_and_restarted_while_the_site_keeps_serving() {
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let site =
        site_with("[processes.hog]\ncommand = \"sh ./hog.sh\"\nhttp = false\nmemory = \"64MiB\"\n");
    // Safety net should the limit fail: 2 GB of address space at most (a MemoryError then,
    // which the test reports, instead of a machine out of memory).
    std::fs::write(
        site.path().join("hog.sh"),
        format!(
            "while [ ! -e go ]; do sleep 0.1; done\nulimit -v 2000000\nexec {python} -c 'b = []\nwhile True: b.append(b\"x\" * (8 << 20))'\n"
        ),
    )
    .unwrap();
    let lifeboat = block_in_place(|| Lifeboat::up(site.path()));
    block_in_place(|| {
        lifeboat.wait_for_status("web-1 healthy", |s| {
            instance(s, "web-1").is_some_and(|i| i["state"] == "healthy")
        })
    });
    if !block_in_place(|| enforced(&lifeboat, "hog-1")) {
        return;
    }
    go(&site);
    let load = Load::start(&lifeboat.proxy, 3, None);
    load.wait_for_requests(30).await;
    let status = block_in_place(|| {
        lifeboat.wait_for_status("hog-1 killed at its limit and started again", |s| {
            instance(s, "hog-1").is_some_and(|i| {
                i["usage"]["oom_kills"].as_u64() >= Some(1) && i["restarts"].as_u64() >= Some(1)
            })
        })
    });
    let hog = instance(&status, "hog-1").unwrap();
    assert_eq!(
        hog["limits"]["memory_bytes"],
        64 << 20,
        "the limit is reported: {hog:#}"
    );
    let logs = block_in_place(|| lifeboat.cli(&["logs", "hog-1", "-n", "100"]));
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.contains("the memory limit (64MiB) was reached") && !logs.contains("MemoryError"),
        "hog-1's log does not show the kill by its limit:\n{logs}"
    );
    let event = block_in_place(|| {
        lifeboat.wait_for_event("the instance-out-of-memory event", |e| {
            e["kind"] == "instance-out-of-memory" && e["instance"] == "hog-1"
        })
    });
    assert_eq!(event["limit_bytes"], 64 << 20);
    let text = block_in_place(|| lifeboat.cli(&["status"]));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("hog-1: over its memory limit of 64MiB"),
        "status does not say so:\n{text}"
    );
    load.wait_for_requests(30).await;
    let outcomes = load.stop().await;
    assert_no_failures_or_show_log(&outcomes, &lifeboat.output());
    let status = block_in_place(|| lifeboat.status());
    assert_eq!(instance(&status, "web-1").unwrap()["restarts"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_limits_and_usage_and_down_removes_the_cgroups() {
    let site = SiteDir::with_manifest(&format!(
        r#"[site]
name = "guestbook"

[processes.web]
command = "{}"
replicas = 2
memory = "256MiB"
cpu = 0.5
pids = 100
health = {{ path = "/healthz", interval = "200ms", timeout = "2s" }}

[state]
sqlite = ["data/guestbook.db"]
dirs = ["data/uploads"]

[proxy]
listen = "127.0.0.1:0"
"#,
        guestbook_command()
    ));
    let mut lifeboat = block_in_place(|| Lifeboat::up(site.path()));
    let status = block_in_place(|| lifeboat.wait_healthy(2));
    let web = instance(&status, "web-1").unwrap();
    assert_eq!(web["limits"]["memory_bytes"], 256 << 20);
    assert_eq!(web["limits"]["cpu"], 0.5);
    assert_eq!(web["limits"]["pids"], 100);
    let text = block_in_place(|| lifeboat.cli(&["status"]));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("limits per instance: memory 256MiB, cpu 0.5, pids 100"),
        "status does not show the limits:\n{text}"
    );
    if !block_in_place(|| enforced(&lifeboat, "web-1")) {
        return;
    }
    assert!(
        web["usage"]["memory_bytes"].as_u64().is_some_and(|b| b > 0),
        "no memory usage: {web:#}"
    );
    assert!(
        web["usage"]["pids"]
            .as_u64()
            .is_some_and(|p| (1..=100).contains(&p)),
        "no process count: {web:#}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("web-1") && l.contains("/256MiB") && l.contains("/100")),
        "the table does not show usage against the limits:\n{text}"
    );
    let dirs: Vec<PathBuf> = ["web-1", "web-2"]
        .iter()
        .flat_map(|id| lifeboat_cgroups_of(instance(&status, id).unwrap()["pid"].as_u64().unwrap()))
        .collect();
    assert!(
        !dirs.is_empty(),
        "the instances are in no cgroup of Lifeboat's"
    );
    let site_cgroups: Vec<PathBuf> = dirs
        .iter()
        .map(|d| d.parent().unwrap().to_path_buf())
        .collect();
    let out = block_in_place(|| lifeboat.cli(&["down"]));
    assert!(out.status.success());
    assert!(block_in_place(|| lifeboat.wait_exit()), "lifeboat failed");
    for dir in dirs.iter().chain(&site_cgroups) {
        assert!(!dir.exists(), "{} is still there after down", dir.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_the_next_up_empties_the_old_cgroups_escaped_processes_included() {
    let site = site_with(
        "[processes.escaper]\ncommand = 'setsid sleep 300 & echo $! > escaped; exec sleep 300'\nhttp = false\n",
    );
    let mut lifeboat = block_in_place(|| Lifeboat::up(site.path()));
    if !block_in_place(|| enforced(&lifeboat, "escaper-1")) {
        return;
    }
    let escaped_file = site.path().join("escaped");
    block_in_place(|| common::wait_until("the escaped process to start", || escaped_file.exists()));
    let escaped: u32 = std::fs::read_to_string(&escaped_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _reaper = common::KillOnDrop(escaped);
    block_in_place(|| lifeboat.kill_9());
    // The parent-death signal took the instances, but not what left their process group.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        common::alive(escaped),
        "the escaped process died with lifeboat: this test shows nothing"
    );
    std::fs::remove_file(&escaped_file).unwrap();
    let again = block_in_place(|| Lifeboat::up(site.path()));
    block_in_place(|| {
        common::wait_until("the escaped process of the killed run to be killed", || {
            !common::alive(escaped)
        })
    });
    let status = block_in_place(|| {
        again.wait_for_status("escaper-1 to run again", |s| {
            instance(s, "escaper-1").is_some_and(|i| i["pid"].is_u64())
        })
    });
    let pid = instance(&status, "escaper-1").unwrap()["pid"]
        .as_u64()
        .unwrap();
    for dir in lifeboat_cgroups_of(pid) {
        assert!(
            !procs_in(&dir).contains(&escaped),
            "{} still holds the old run's process",
            dir.display()
        );
    }
}
