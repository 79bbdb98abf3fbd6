//! No instance outlives lifeboat: a killed supervisor's instances die with it (parent-death
//! signal armed by the shim), and whatever survives is killed by the next run, but only if it
//! really is one of this site's instances.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use common::workers::{self, LEADER_COMMAND, Worker};
use common::*;
use lifeboat_supervisor::{Supervisor, SupervisorError};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A helper process running a supervisor with one instance; killed when dropped.
struct Lifeboat {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Lifeboat {
    fn start(root: &std::path::Path, shim: bool) -> Lifeboat {
        Lifeboat::start_running(root, shim, "sleep 1000")
    }

    /// A supervisor whose instance runs `instance` (a shell command).
    fn start_running(root: &std::path::Path, shim: bool, instance: &str) -> Lifeboat {
        let mut command = Command::new(HELPER);
        command.arg("run-one");
        if !shim {
            command.arg("--no-shim");
        }
        let mut child = command
            .args(["testsite"])
            .arg(root.join("site"))
            .arg(root.join(".lifeboat/logs"))
            .arg(instance)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the helper");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lifeboat { child, lines }
    }

    /// The next printed line starting with `prefix`, without it.
    fn line(&self, prefix: &str) -> String {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the helper printed no `{prefix}` line"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_string();
            }
        }
    }

    fn instance_pid(&self) -> u32 {
        assert_eq!(self.line("reaped"), "[]");
        self.line("started").parse().unwrap()
    }

    fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Lifeboat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn site_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("site")).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_die_within_seconds_when_lifeboat_is_killed_with_sigkill() {
    let root = site_root();
    let mut lifeboat = Lifeboat::start(root.path(), true);
    let instance = lifeboat.instance_pid();
    assert!(is_running(instance));
    lifeboat.kill_9();
    eventually("the instance died with lifeboat", || async {
        (!is_running(instance)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_run_kills_the_instances_a_killed_lifeboat_left_behind() {
    let root = site_root();
    // Without the shim nothing kills the instance when lifeboat dies: the run file must.
    let mut lifeboat = Lifeboat::start(root.path(), false);
    let leftover = lifeboat.instance_pid();
    lifeboat.kill_9();
    assert!(
        is_running(leftover),
        "without the shim the instance survives"
    );

    let next = Supervisor::new(config(root.path())).unwrap();
    let reaped = next.reap_leftovers().unwrap();
    assert_eq!(reaped, [leftover]);
    assert!(!is_running(leftover));
    assert_eq!(next.reap_leftovers().unwrap(), Vec::<u32>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaping_is_refused_while_the_previous_lifeboat_still_runs() {
    let root = site_root();
    let lifeboat = Lifeboat::start(root.path(), true);
    let instance = lifeboat.instance_pid();
    let next = Supervisor::new(config(root.path())).unwrap();
    let err = next.reap_leftovers().unwrap_err();
    assert!(
        matches!(err, SupervisorError::AlreadyRunning { pid, .. } if pid == lifeboat.child.id())
    );
    assert!(err.to_string().contains("lifeboat down"), "{err}");
    assert!(is_running(instance), "nothing was killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaping_never_kills_a_process_that_is_not_an_instance_of_this_site() {
    let root = site_root();
    let supervisor = Supervisor::new(config(root.path())).unwrap();
    // A stranger in its own process group, as if it had reused a recorded pid.
    let mut stranger = Command::new("sleep")
        .arg("1000")
        .process_group(0)
        .spawn()
        .unwrap();
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let run_file = serde_json::json!({
        "version": 1,
        "site": "testsite",
        "site_dir": root.path().join("site").canonicalize().unwrap(),
        "supervisor": { "pid": dead_pid, "start_time": 0 },
        "instances": [{ "id": "web-1", "pgid": stranger.id() }],
    });
    std::fs::write(supervisor.run_file(), run_file.to_string()).unwrap();

    assert_eq!(supervisor.reap_leftovers().unwrap(), Vec::<u32>::new());
    assert!(is_running(stranger.id()));
    kill(Pid::from_raw(stranger.id() as i32), Signal::SIGKILL).unwrap();
    stranger.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_run_file_stops_the_start_with_advice() {
    let root = site_root();
    let supervisor = Supervisor::new(config(root.path())).unwrap();
    std::fs::write(supervisor.run_file(), b"{\"version\": 1, \"site\"").unwrap();
    let err = supervisor.reap_leftovers().unwrap_err().to_string();
    assert!(err.contains("instances.json"), "{err}");
    assert!(err.contains("ps -eo pid,pgid,cmd"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_left_by_a_lifeboat_killed_while_it_stopped_their_group_are_killed_by_the_next_run()
{
    let root = site_root();
    let dir = root.path().join("site");
    workers::write_leader(&dir, &[("w1", Worker::Finishing), ("s1", Worker::Stubborn)]);
    let mut lifeboat = Lifeboat::start_running(root.path(), true, LEADER_COMMAND);
    let leader = lifeboat.instance_pid();
    let pids = workers::worker_pids(&dir, &["w1", "s1"]).await;
    // The leader dies; lifeboat sends its workers SIGTERM and gives them time (5s) to finish,
    // and is killed in that time. The workers were forked by the leader, so the parent-death
    // signal armed by the shim does not reach them: only the run file can.
    kill(Pid::from_raw(leader as i32), Signal::SIGKILL).unwrap();
    workers::until_terminated(&dir, &["w1"]).await;
    lifeboat.kill_9();
    assert!(
        pids.iter().all(|&pid| is_running(pid)),
        "the workers outlive lifeboat"
    );

    let next = Supervisor::new(config(root.path())).unwrap();
    let reaped = next.reap_leftovers().unwrap();
    for pid in &pids {
        assert!(reaped.contains(pid), "{pid} not in {reaped:?}");
        assert!(!is_running(*pid));
    }
}
