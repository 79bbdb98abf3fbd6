//! An instance's life under the supervisor, with real processes: start, crash and restart,
//! crash loops, graceful and forced stops, logs.

mod common;

use std::time::Duration;

use common::*;
use lifeboat_supervisor::{BackoffPolicy, InstanceState, SupervisorEvent};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn started_pid(event: &SupervisorEvent) -> u32 {
    match event {
        SupervisorEvent::Started { pid, .. } => *pid,
        other => panic!("expected Started, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_runs_in_its_own_group_with_its_port_and_identity() {
    let site = site();
    let mut events = site.supervisor.subscribe();
    site.supervisor.start(spec(
        "web-1",
        "echo \"port=$PORT instance=$LIFEBOAT_INSTANCE site=$LIFEBOAT_SITE greeting=$GREETING cwd=$(pwd)\"; exec sleep 1000",
    ));
    let pid = started_pid(
        &next_event(&mut events, "started", |e| {
            matches!(e, SupervisorEvent::Started { .. })
        })
        .await,
    );
    assert_eq!(
        pgid_of(pid),
        Some(pid),
        "the instance leads its own process group"
    );
    let expected = format!(
        "port=4321 instance=web-1 site=testsite greeting=hello cwd={}",
        site.site_dir().canonicalize().unwrap().display()
    );
    eventually("the instance's output is in its log", || async {
        read_log(&site, "web-1").contains(&expected).then_some(())
    })
    .await;
    let status = &site.supervisor.instances()[0];
    assert_eq!(status.pid, Some(pid));
    assert_eq!(status.state, InstanceState::Running);
    assert_eq!(status.port, 4321);
    assert!(
        status.memory_bytes.is_some_and(|b| b > 0),
        "memory use is reported"
    );
    site.supervisor.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_instance_is_restarted_at_once() {
    let site = site();
    let mut events = site.supervisor.subscribe();
    site.supervisor.start(spec("web-1", "sleep 1000"));
    let first = started_pid(
        &next_event(&mut events, "started", |e| {
            matches!(e, SupervisorEvent::Started { .. })
        })
        .await,
    );

    kill(Pid::from_raw(first as i32), Signal::SIGKILL).unwrap();
    let exited = next_event(&mut events, "exited", |e| {
        matches!(e, SupervisorEvent::Exited { .. })
    })
    .await;
    assert_eq!(
        exited,
        SupervisorEvent::Exited {
            id: "web-1".into(),
            pid: first,
            code: None,
            signal: Some(9)
        }
    );
    let restarting = next_event(&mut events, "restarting", |e| {
        matches!(e, SupervisorEvent::Restarting { .. })
    })
    .await;
    assert!(matches!(restarting, SupervisorEvent::Restarting { delay, .. } if delay.is_zero()));
    let second = started_pid(
        &next_event(&mut events, "started again", |e| {
            matches!(e, SupervisorEvent::Started { .. })
        })
        .await,
    );
    assert_ne!(first, second);
    assert!(is_running(second));

    let status = &site.supervisor.instances()[0];
    assert_eq!(status.restarts, 1);
    assert_eq!(status.last_exit.map(|e| e.signal), Some(Some(9)));
    site.supervisor.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_keeps_crashing_backs_off_and_is_reported_crash_looping() {
    let site = site_with(|c| {
        c.backoff = BackoffPolicy {
            quick_failure: Duration::from_secs(30),
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            crash_loop_after: 3,
        };
    });
    let mut events = site.supervisor.subscribe();
    site.supervisor
        .start(spec("web-1", "echo boom >&2; exit 1"));
    let mut delays = Vec::new();
    while delays.len() < 5 {
        if let SupervisorEvent::Restarting { delay, attempt, .. } =
            next_event(&mut events, "restarting", |e| {
                matches!(e, SupervisorEvent::Restarting { .. })
            })
            .await
        {
            assert_eq!(attempt as usize, delays.len() + 1);
            delays.push(delay);
        }
    }
    let millis: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
    assert_eq!(
        millis,
        [0, 100, 200, 400, 800],
        "the delay doubles after each quick failure"
    );

    next_event(&mut events, "crash-looping", |e| {
        matches!(e, SupervisorEvent::CrashLooping { .. })
    })
    .await;
    let status = eventually("status says crash-looping", || async {
        site.supervisor
            .instances()
            .into_iter()
            .find(|s| s.state == InstanceState::CrashLooping)
    })
    .await;
    assert!(status.restarts >= 3);
    assert_eq!(status.last_exit.and_then(|e| e.code), Some(1));
    assert!(read_log(&site, "web-1").contains("boom"));
    site.supervisor.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_asks_politely_and_the_instance_is_forgotten() {
    let site = site();
    let mut events = site.supervisor.subscribe();
    site.supervisor.start(spec("web-1", "sleep 1000"));
    let pid = started_pid(
        &next_event(&mut events, "started", |e| {
            matches!(e, SupervisorEvent::Started { .. })
        })
        .await,
    );
    site.supervisor.stop("web-1").await;
    assert!(!is_running(pid));
    assert!(site.supervisor.instances().is_empty());
    next_event(&mut events, "stopped", |e| {
        matches!(e, SupervisorEvent::Stopped { .. })
    })
    .await;
    let log = read_log(&site, "web-1");
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(!log.contains("SIGKILL"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_an_instance_that_ignores_sigterm_after_the_timeout() {
    let site = site_with(|c| c.stop_timeout = Duration::from_secs(1));
    let mut events = site.supervisor.subscribe();
    // The shell and its child sleep both ignore SIGTERM (an ignored signal stays ignored
    // across fork and exec).
    site.supervisor.start(spec(
        "web-1",
        "trap '' TERM; word=ready; echo \"now-$word\"; sleep 1000; echo never",
    ));
    let pid = started_pid(
        &next_event(&mut events, "started", |e| {
            matches!(e, SupervisorEvent::Started { .. })
        })
        .await,
    );
    eventually("the instance is ready", || async {
        read_log(&site, "web-1").contains("now-ready").then_some(())
    })
    .await;
    site.supervisor.stop("web-1").await;
    assert!(!is_running(pid));
    let log = read_log(&site, "web-1");
    assert!(log.contains("sending SIGKILL"), "{log}");
    assert!(site.supervisor.instances().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_kills_every_process_the_instance_started() {
    let site = site();
    let mut events = site.supervisor.subscribe();
    site.supervisor
        .start(spec("web-1", "sleep 1000 & echo child=$!; wait"));
    next_event(&mut events, "started", |e| {
        matches!(e, SupervisorEvent::Started { .. })
    })
    .await;
    let child: u32 = eventually("the instance says its child's pid", || async {
        let log = read_log(&site, "web-1");
        log.lines()
            .find_map(|l| l.strip_prefix("child=")?.trim().parse().ok())
    })
    .await;
    assert!(is_running(child));
    site.supervisor.stop("web-1").await;
    eventually("the child is gone too", || async {
        (!is_running(child)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_during_backoff_does_not_wait_for_the_next_start() {
    let site = site_with(|c| {
        c.backoff = BackoffPolicy {
            quick_failure: Duration::from_secs(30),
            first_delay: Duration::from_secs(3600),
            max_delay: Duration::from_secs(3600),
            crash_loop_after: 3,
        };
    });
    let mut events = site.supervisor.subscribe();
    site.supervisor.start(spec("web-1", "exit 2"));
    next_event(&mut events, "a long backoff", |e| {
        matches!(e, SupervisorEvent::Restarting { delay, .. } if *delay >= Duration::from_secs(3600))
    })
    .await;
    let waiting = site.supervisor.instances();
    assert_eq!(waiting[0].state, InstanceState::Backoff);
    assert!(
        waiting[0]
            .next_restart_in
            .is_some_and(|d| d > Duration::from_secs(60))
    );
    tokio::time::timeout(DEADLINE, site.supervisor.stop("web-1"))
        .await
        .expect("stop returns without waiting out the backoff");
    assert!(site.supervisor.instances().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chatty_instance_logs_are_capped_and_rotated() {
    let site = site_with(|c| {
        c.log_max_bytes = 4096;
        c.log_keep = 2;
    });
    site.supervisor.start(spec(
        "web-1",
        "i=0; while [ $i -lt 3000 ]; do echo \"line $i of a chatty instance\"; i=$((i+1)); done; w=writing; echo \"done-$w\"; exec sleep 1000",
    ));
    let current = site.supervisor.log_path("web-1");
    eventually("the last line reached the log", || async {
        read_log(&site, "web-1")
            .contains("done-writing")
            .then_some(())
    })
    .await;
    let rotated = |n: usize| std::path::PathBuf::from(format!("{}.{n}", current.display()));
    for path in [current.clone(), rotated(1), rotated(2)] {
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size <= 4096, "{} has {size} bytes", path.display());
    }
    assert!(!rotated(3).exists(), "only log_keep rotated files are kept");
    site.supervisor.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_cannot_start_is_retried_with_backoff_and_explained() {
    let site = site_with(|c| {
        c.shim = None;
        c.site_dir = c.site_dir.join("missing-dir");
        c.backoff.first_delay = Duration::from_millis(50);
    });
    site.supervisor.start(spec("web-1", "sleep 1000"));
    let status = eventually("the failure is in the status", || async {
        site.supervisor
            .instances()
            .into_iter()
            .find(|s| s.last_error.is_some())
    })
    .await;
    let error = status.last_error.unwrap();
    assert!(error.contains("missing-dir"), "{error}");
    assert!(error.contains("is gone"), "{error}");
    eventually("it keeps trying", || async {
        site.supervisor
            .instances()
            .into_iter()
            .find(|s| s.restarts >= 2)
    })
    .await;
    site.supervisor.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_shim_is_named_in_the_status() {
    let site = site_with(|c| {
        c.shim = Some(lifeboat_supervisor::Shim {
            program: "/nonexistent/lifeboat".into(),
            args: vec!["__instance".into()],
        });
    });
    site.supervisor.start(spec("web-1", "sleep 1000"));
    let status = eventually("the failure is in the status", || async {
        site.supervisor
            .instances()
            .into_iter()
            .find(|s| s.last_error.is_some())
    })
    .await;
    let error = status.last_error.unwrap();
    assert!(error.contains("the shim /nonexistent/lifeboat"), "{error}");
    site.supervisor.stop_all().await;
}
