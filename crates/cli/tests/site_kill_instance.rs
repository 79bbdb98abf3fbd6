//! Killing an instance with SIGKILL under load loses no request: GETs and keyed POSTs
//! (`Idempotency-Key`) that the dying instance never answered are replayed on another one, and
//! no entry is stored twice. The instance comes back healthy and the events tell what happened.
//! Killing the master of a pre-forking server again and again cuts no response either: its
//! workers finish what they are writing before the instance starts again.
mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Lifeboat, Load, SiteDir, assert_no_failures_or_show_log};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
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

/// A pre-forking server (`fixtures/prefork/server.py`: a master and workers sharing one
/// listening socket), `replicas` instances of it, run by lifeboat.
fn prefork_site(replicas: u32) -> SiteDir {
    let python = std::process::Command::new("python3")
        .arg("--version")
        .output();
    assert!(
        python.is_ok_and(|out| out.status.success()),
        "the pre-forking test server needs python3 on the PATH (apt-get install python3)"
    );
    let server =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prefork/server.py");
    SiteDir::with_manifest(&format!(
        r#"[site]
name = "prefork"

[processes.web]
command = "python3 {server}"
replicas = {replicas}
stop_timeout = "10s"
health = {{ path = "/healthz", interval = "200ms", timeout = "2s" }}

[proxy]
listen = "127.0.0.1:0"
"#,
        server = server.display()
    ))
}

/// How many times the prefork test kills a master: `LIFEBOAT_TEST_PREFORK_KILLS`, default 20.
fn prefork_kills() -> usize {
    std::env::var("LIFEBOAT_TEST_PREFORK_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20)
}

/// Clients asking the front door for `/r/CLIENT/N` without pause; each answer must be the
/// server's whole answer for that very path.
struct PreforkLoad {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl PreforkLoad {
    fn start(proxy: &str, clients: usize) -> PreforkLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let tasks = (0..clients)
            .map(|c| {
                let (stop, done, proxy) = (stop.clone(), done.clone(), proxy.to_string());
                tokio::spawn(async move {
                    let http = reqwest::Client::builder()
                        .timeout(Duration::from_secs(30))
                        .build()
                        .unwrap();
                    let mut failures = Vec::new();
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        n += 1;
                        let path = format!("/r/{c}/{n}");
                        let answer = match http.get(format!("{proxy}{path}")).send().await {
                            Ok(resp) => {
                                let status = resp.status().as_u16();
                                resp.bytes().await.map(|body| (status, body))
                            }
                            Err(err) => Err(err),
                        };
                        let expected = format!("prefork {path}\n");
                        match answer {
                            Ok((200, body)) if body == expected.as_bytes() => {}
                            Ok((status, body)) => failures.push(format!(
                                "GET {path}: {status} {:?}",
                                String::from_utf8_lossy(&body)
                            )),
                            Err(err) => failures.push(format!("GET {path}: {err:?}")),
                        }
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    failures
                })
            })
            .collect();
        PreforkLoad { stop, done, tasks }
    }

    /// Waits until `more` further requests were answered (or failed).
    async fn wait_for_requests(&self, more: usize) {
        let target = self.done.load(Ordering::SeqCst) + more;
        let deadline = Instant::now() + common::DEADLINE;
        while self.done.load(Ordering::SeqCst) < target {
            assert!(Instant::now() < deadline, "the load made no progress");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the clients; returns how many requests were sent and the failed ones.
    async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let mut failures = Vec::new();
        for task in self.tasks {
            failures.extend(task.await.expect("client task"));
        }
        (self.done.load(Ordering::SeqCst), failures)
    }
}

/// The pid of `id` once it is healthy with a master not killed yet, while another instance is
/// too (so the site keeps answering while this one is down). A master killed a moment ago may
/// still be reported healthy, hence the check of every pid against the ones killed.
fn next_victim(lifeboat: &Lifeboat, id: &str, killed: &BTreeSet<u64>) -> u64 {
    let status = lifeboat.wait_for_status(&format!("{id} healthy with a new master"), |s| {
        let instances = s["instances"].as_array().unwrap();
        let serving = |i: &&serde_json::Value| {
            i["state"] == "healthy" && i["pid"].as_u64().is_some_and(|pid| !killed.contains(&pid))
        };
        instances.iter().filter(serving).any(|i| i["id"] == id)
            && instances.iter().filter(serving).any(|i| i["id"] != id)
    });
    status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id)
        .and_then(|i| i["pid"].as_u64())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_preforking_master_under_load_cuts_no_response() {
    const REPLICAS: usize = 3;
    let site = prefork_site(REPLICAS as u32);
    let lifeboat = block_in_place(|| Lifeboat::up(site.path()));
    block_in_place(|| lifeboat.wait_healthy(REPLICAS));
    let load = PreforkLoad::start(&lifeboat.proxy, 6);
    load.wait_for_requests(50).await;

    // Each kill is a quick failure for the restart backoff, so the victims take turns: one
    // instance killed 20 times in a row would wait minutes between its restarts.
    let mut killed = BTreeSet::new();
    for round in 0..prefork_kills() {
        let id = format!("web-{}", round % REPLICAS + 1);
        let master = block_in_place(|| next_victim(&lifeboat, &id, &killed));
        // The victim's workers are in the middle of answering: the load goes to every instance.
        load.wait_for_requests(20).await;
        killed.insert(master);
        kill(Pid::from_raw(master as i32), Signal::SIGKILL).expect("kill the master");
    }
    // The load goes on while the last victims' workers finish and their masters come back.
    load.wait_for_requests(100).await;
    let (sent, failures) = load.stop().await;

    assert!(sent > 200, "the load sent only {sent} requests");
    assert!(
        failures.is_empty(),
        "{} of {sent} responses failed or were cut across {} kills, e.g. {:#?}\nlifeboat's output:\n{}",
        failures.len(),
        killed.len(),
        failures.iter().take(5).collect::<Vec<_>>(),
        lifeboat.output()
    );
    // The workers were asked to finish, not killed: the supervisor says so in the logs.
    let logs = lifeboat.cli(&["logs", "web-1", "-n", "10000"]);
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.contains("group still running; SIGTERM"),
        "web-1's log does not tell its workers got SIGTERM:\n{logs}"
    );
    eprintln!(
        "{sent} requests across {} kills of a master: none failed",
        killed.len()
    );
}
