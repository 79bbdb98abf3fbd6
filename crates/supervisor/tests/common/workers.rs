//! A stand-in for a pre-forking server, in shell: a leader (the instance's process) that starts
//! workers in its process group and waits. Everything they do is appended to the file `events`
//! in the site dir, in the order it happens.
//!
//! - a *finishing* worker, on SIGTERM, writes `NAME got SIGTERM`, then finishes its work: it
//!   waits until the test creates `release-NAME`, writes `NAME finished` and exits;
//! - a *stubborn* worker ignores SIGTERM and only SIGKILL ends it.

use std::path::Path;

use super::eventually;

#[derive(Debug, Clone, Copy)]
pub enum Worker {
    Finishing,
    Stubborn,
}

const FINISHING: &str = r#"name=$1
finish() {
    echo "$name got SIGTERM" >> events
    while [ ! -e "release-$name" ]; do sleep 0.02; done
    echo "$name finished" >> events
    exit 0
}
trap finish TERM
echo "$name=$$" >> pids
while :; do sleep 1 & wait $!; done
"#;

const STUBBORN: &str = r#"name=$1
trap '' TERM
echo "$name=$$" >> pids
while :; do sleep 1; done
"#;

/// Writes `leader.sh` starting `workers` (name, kind) and the worker scripts into `site_dir`;
/// the instance's command is then `sh ./leader.sh`.
pub fn write_leader(site_dir: &Path, workers: &[(&str, Worker)]) {
    let mut leader = String::from("echo \"leader $$ started\" >> events\n");
    for (name, kind) in workers {
        let script = match kind {
            Worker::Finishing => "finishing.sh",
            Worker::Stubborn => "stubborn.sh",
        };
        leader.push_str(&format!("sh ./{script} {name} &\n"));
    }
    leader.push_str("wait\n");
    std::fs::write(site_dir.join("leader.sh"), leader).unwrap();
    std::fs::write(site_dir.join("finishing.sh"), FINISHING).unwrap();
    std::fs::write(site_dir.join("stubborn.sh"), STUBBORN).unwrap();
}

pub const LEADER_COMMAND: &str = "sh ./leader.sh";

/// What the leader and workers wrote to `events` so far, one line each.
pub fn events(site_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(site_dir.join("events"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The pids of the named workers of the first run, once they all started.
pub async fn worker_pids(site_dir: &Path, names: &[&str]) -> Vec<u32> {
    eventually("the workers are started", || async {
        let pids = std::fs::read_to_string(site_dir.join("pids")).unwrap_or_default();
        names
            .iter()
            .map(|name| {
                pids.lines()
                    .find_map(|line| line.strip_prefix(&format!("{name}="))?.trim().parse().ok())
            })
            .collect::<Option<Vec<u32>>>()
    })
    .await
}

/// Waits until every named worker wrote that it got SIGTERM.
pub async fn until_terminated(site_dir: &Path, names: &[&str]) {
    eventually("the workers got SIGTERM", || async {
        let events = events(site_dir);
        names
            .iter()
            .all(|name| events.contains(&format!("{name} got SIGTERM")))
            .then_some(())
    })
    .await
}

/// Lets a finishing worker finish.
pub fn release(site_dir: &Path, name: &str) {
    std::fs::write(site_dir.join(format!("release-{name}")), b"").unwrap();
}
