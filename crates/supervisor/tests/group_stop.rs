//! An instance is its whole process group: when its leader dies (a pre-forking server's master
//! killed with SIGKILL), its workers get SIGTERM and time to finish what they are writing, and
//! the instance starts again only once they are all gone; a stop waits for all of them too.

mod common;

use std::time::Duration;

use common::workers::{self, LEADER_COMMAND, Worker};
use common::*;
use lifeboat_supervisor::{InstanceState, SupervisorEvent};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::broadcast;
use tokio::time::Instant;

async fn started(events: &mut broadcast::Receiver<SupervisorEvent>) -> u32 {
    match next_event(events, "started", |e| {
        matches!(e, SupervisorEvent::Started { .. })
    })
    .await
    {
        SupervisorEvent::Started { pid, .. } => pid,
        _ => unreachable!(),
    }
}

fn kill_9(pid: u32) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
}

/// The run file's process groups.
fn recorded_groups(site: &TestSite) -> Vec<u64> {
    let run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(site.supervisor.run_file()).unwrap()).unwrap();
    run["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["pgid"].as_u64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leader_dies_its_workers_finish_before_the_instance_starts_again() {
    let site = site(); // a stop timeout (20s) far longer than the workers need
    let dir = site.site_dir();
    workers::write_leader(
        &dir,
        &[("w1", Worker::Finishing), ("w2", Worker::Finishing)],
    );
    let mut events = site.supervisor.subscribe();
    site.supervisor.start(spec("web-1", LEADER_COMMAND));
    let leader = started(&mut events).await;
    let pids = workers::worker_pids(&dir, &["w1", "w2"]).await;

    kill_9(leader);
    let exited = next_event(&mut events, "exited", |e| {
        matches!(e, SupervisorEvent::Exited { .. })
    })
    .await;
    assert_eq!(
        exited,
        SupervisorEvent::Exited {
            id: "web-1".into(),
            pid: leader,
            code: None,
            signal: Some(9)
        },
        "the exit is told at once, so the front door stops sending requests"
    );
    workers::until_terminated(&dir, &["w1", "w2"]).await;

    // The workers cannot finish before they are released: the instance must wait for them.
    assert!(pids.iter().all(|&pid| is_running(pid)));
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(event, SupervisorEvent::Started { .. }),
            "started again while its workers were still finishing"
        );
    }
    let status = &site.supervisor.instances()[0];
    assert_eq!((status.pid, status.state), (None, InstanceState::Backoff));
    // Another instance starting now rewrites the run file: the group must stay in it, or a
    // lifeboat killed now would leave the workers to nobody.
    site.supervisor.start(spec("web-2", "sleep 1000"));
    let other = started(&mut events).await;
    let mut groups = recorded_groups(&site);
    groups.sort_unstable();
    assert_eq!(groups, [u64::from(leader), u64::from(other)]);

    workers::release(&dir, "w1");
    workers::release(&dir, "w2");
    let second = started(&mut events).await;
    assert_ne!(second, leader);
    let new_leader = format!("leader {second} started");
    let lines = eventually("the new leader runs", || async {
        let lines = workers::events(&dir);
        lines.contains(&new_leader).then_some(lines)
    })
    .await;
    let position = |line: &str| lines.iter().position(|l| l == line);
    let restarted = position(&new_leader).unwrap();
    for name in ["w1", "w2"] {
        let finished = position(&format!("{name} finished"));
        assert!(
            finished.is_some_and(|f| f < restarted),
            "{name} finished before the new start: {lines:#?}"
        );
    }
    assert!(pids.iter().all(|&pid| !is_running(pid)));
    site.supervisor.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_ignores_sigterm_is_killed_after_the_stop_timeout_before_the_restart() {
    let stop_timeout = Duration::from_secs(1);
    let site = site_with(|c| c.stop_timeout = stop_timeout);
    let dir = site.site_dir();
    workers::write_leader(&dir, &[("s1", Worker::Stubborn)]);
    let mut events = site.supervisor.subscribe();
    site.supervisor.start(spec("web-1", LEADER_COMMAND));
    let leader = started(&mut events).await;
    let stubborn = workers::worker_pids(&dir, &["s1"]).await[0];

    let killed_at = Instant::now();
    kill_9(leader);
    next_event(&mut events, "exited", |e| {
        matches!(e, SupervisorEvent::Exited { .. })
    })
    .await;
    let second = started(&mut events).await;
    assert!(
        killed_at.elapsed() >= stop_timeout,
        "started again {:?} after the kill, before the stop timeout",
        killed_at.elapsed()
    );
    assert!(!is_running(stubborn));
    let log = read_log(&site, "web-1");
    let killed = log
        .find("did not exit within 1.0s of SIGTERM; sending SIGKILL")
        .unwrap_or_else(|| panic!("no SIGKILL in the log:\n{log}"));
    let restarted = log
        .find(&format!("started pid {second}"))
        .expect("the restart is in the log");
    assert!(killed < restarted, "{log}");
    site.supervisor.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_waits_for_every_process_of_the_group_not_only_the_leader() {
    let site = site();
    let dir = site.site_dir();
    workers::write_leader(&dir, &[("w1", Worker::Finishing)]);
    let mut events = site.supervisor.subscribe();
    site.supervisor.start(spec("web-1", LEADER_COMMAND));
    let leader = started(&mut events).await;
    let worker = workers::worker_pids(&dir, &["w1"]).await[0];

    let supervisor = site.supervisor.clone();
    let stopping = tokio::spawn(async move { supervisor.stop("web-1").await });
    workers::until_terminated(&dir, &["w1"]).await;
    eventually("the leader exited on SIGTERM", || async {
        (!is_running(leader)).then_some(())
    })
    .await;
    assert!(
        !stopping.is_finished(),
        "stop returned while a worker was still finishing"
    );
    assert_eq!(site.supervisor.instances().len(), 1);

    workers::release(&dir, "w1");
    tokio::time::timeout(DEADLINE, stopping)
        .await
        .expect("stop returns once the worker finished")
        .unwrap();
    assert!(!is_running(worker));
    assert!(site.supervisor.instances().is_empty());
    assert!(workers::events(&dir).contains(&"w1 finished".to_string()));
}
