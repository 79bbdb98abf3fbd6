//! Resource limits hold with real processes: a fork bomb stays at its `pids`, a memory hog is
//! killed at its `memory` and started again, while another instance of the site keeps
//! working; nothing of an instance outlives it in its cgroup; and where limits cannot be
//! enforced, the status says why.
//!
//! Enforcing needs cgroups Lifeboat may write, i.e. root on most machines (or a delegated
//! cgroup). Run as another user without them, each test checks instead that the instance runs
//! and its status says its limits are not enforced, and prints that it did only that.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use lifeboat_supervisor::{InstanceSpec, InstanceStatus, ResourceLimits, SupervisorEvent};

fn status_of(site: &TestSite, id: &str) -> Option<InstanceStatus> {
    site.supervisor.instances().into_iter().find(|i| i.id == id)
}

/// The cgroup directories process `pid` is in that Lifeboat made (`.../lifeboat-SITE-HASH/ID`),
/// from `/proc/PID/cgroup` and this process's mounts.
fn lifeboat_cgroups_of(pid: u32) -> Vec<PathBuf> {
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

/// Whether this machine enforces limits for `site`; if not, says so on the test's output and
/// checks that the status says why.
fn enforced_here(site: &TestSite, id: &str) -> bool {
    let status = status_of(site, id).expect("the instance is supervised");
    match (
        &status.limits_not_enforced,
        site.supervisor.limits_not_enforced(),
    ) {
        (None, None) => true,
        (Some(why), _) => {
            assert!(
                !nix::unistd::geteuid().is_root() || why.contains("no cgroup controller"),
                "as root, limits must be enforced here, but: {why}"
            );
            println!(
                "limits are not enforced on this machine, so only the report is checked: {why}"
            );
            false
        }
        (None, Some(why)) => panic!("the supervisor says {why:?} but {id}'s status does not"),
    }
}

/// An instance that proves it keeps working: it writes a new line to `beat` every 50 ms.
fn heartbeat() -> InstanceSpec {
    spec(
        "steady-1",
        "while :; do date +%s%N >> beat; sleep 0.05; done",
    )
}

async fn beats_on(site: &TestSite) {
    let beat = site.site_dir().join("beat");
    let before = std::fs::read_to_string(&beat)
        .unwrap_or_default()
        .lines()
        .count();
    eventually("the steady instance to beat 5 more times", || {
        let beat = beat.clone();
        async move {
            let now = std::fs::read_to_string(&beat)
                .unwrap_or_default()
                .lines()
                .count();
            (now >= before + 5).then_some(())
        }
    })
    .await;
}

/// Every process makes two more, 2^11 - 1 of them in all, then becomes `sleep 60`: a fork
/// bomb that stops growing and ends by itself, so a limit that fails cannot take the test
/// machine down (about 2000 sleeping processes at most, for a minute).
const BOUNDED_FORK_BOMB: &str =
    "b() { if [ $1 -gt 0 ]; then b $(($1 - 1)) & b $(($1 - 1)) & fi; exec sleep 60; }; b 10";

#[tokio::test]
async fn a_fork_bomb_is_held_at_its_pids_limit_while_the_other_instance_keeps_working() {
    let site = site();
    let mut events = site.supervisor.subscribe();
    site.supervisor.start(heartbeat());
    beats_on(&site).await;
    // Checked before the bomb goes off: without limits it would run uncapped (bounded, but
    // for nothing).
    if !enforced_here(&site, "steady-1") {
        site.supervisor.stop_all().await;
        return;
    }
    let limit = 40;
    site.supervisor.start(InstanceSpec {
        limits: ResourceLimits {
            pids: Some(limit),
            ..Default::default()
        },
        ..spec("bomb-1", BOUNDED_FORK_BOMB)
    });
    next_event(
        &mut events,
        "the bomb started",
        |e| matches!(e, SupervisorEvent::Started { id, .. } if id == "bomb-1"),
    )
    .await;
    assert!(enforced_here(&site, "bomb-1"));
    // The bomb reaches its ceiling and forks fail there.
    let log = site.supervisor.log_path("bomb-1");
    eventually("forks in the bomb to fail at the limit", || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            // dash says "Cannot fork", bash "fork: Resource temporarily unavailable".
            (text.contains("Cannot fork") || text.contains("Resource temporarily unavailable"))
                .then_some(())
        }
    })
    .await;
    for _ in 0..20 {
        let bomb = status_of(&site, "bomb-1").unwrap();
        if let Some(pids) = bomb.pids {
            assert!(
                pids <= limit,
                "the bomb has {pids} processes, over its limit of {limit}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Meanwhile the other instance goes on, and the machine still starts processes.
    beats_on(&site).await;
    let steady = status_of(&site, "steady-1").unwrap();
    assert_eq!(steady.restarts, 0, "the steady instance was restarted");
    site.supervisor
        .start(spec("late-1", "echo started late > late; exec sleep 60"));
    let late = site.site_dir().join("late");
    eventually("an instance started during the bomb to run", || {
        let late = late.clone();
        async move { late.exists().then_some(()) }
    })
    .await;
    site.supervisor.stop_all().await;
}

#[tokio::test]
async fn a_memory_hog_is_killed_at_its_memory_limit_and_started_again() {
    let site = site();
    let mut events = site.supervisor.subscribe();
    site.supervisor.start(heartbeat());
    beats_on(&site).await;
    if !enforced_here(&site, "steady-1") {
        site.supervisor.stop_all().await;
        return;
    }
    // Safety net should the limit fail: 2 GB of address space at most (a MemoryError then,
    // which this test reports as a failure, instead of a machine out of memory).
    let hog =
        "ulimit -v 2000000; exec python3 -c 'b = []\nwhile True: b.append(b\"x\" * (8 << 20))'";
    site.supervisor.start(InstanceSpec {
        limits: ResourceLimits {
            memory_bytes: Some(64 << 20),
            ..Default::default()
        },
        ..spec("hog-1", hog)
    });
    next_event(
        &mut events,
        "the hog started",
        |e| matches!(e, SupervisorEvent::Started { id, .. } if id == "hog-1"),
    )
    .await;
    assert!(enforced_here(&site, "hog-1"));
    let exited = next_event(
        &mut events,
        "the hog to be killed",
        |e| matches!(e, SupervisorEvent::Exited { id, .. } if id == "hog-1"),
    )
    .await;
    assert!(
        matches!(
            exited,
            SupervisorEvent::Exited {
                signal: Some(9),
                ..
            }
        ),
        "the hog was not killed by the kernel (SIGKILL) but ended so: {exited:?}; its log:\n{}",
        read_log(&site, "hog-1")
    );
    next_event(
        &mut events,
        "the hog to be started again",
        |e| matches!(e, SupervisorEvent::Started { id, .. } if id == "hog-1"),
    )
    .await;
    let hog = status_of(&site, "hog-1").unwrap();
    assert!(hog.oom_kills >= 1, "no OOM kill counted: {hog:?}");
    assert!(
        read_log(&site, "hog-1").contains("the memory limit (64MiB) was reached"),
        "the log does not say why: {}",
        read_log(&site, "hog-1")
    );
    beats_on(&site).await;
    assert_eq!(status_of(&site, "steady-1").unwrap().restarts, 0);
    site.supervisor.stop_all().await;
}

#[tokio::test]
async fn usage_and_limits_are_reported_from_the_instance_cgroup() {
    let site = site();
    let limits = ResourceLimits {
        memory_bytes: Some(256 << 20),
        cpu_millis: Some(500),
        pids: Some(100),
    };
    site.supervisor.start(InstanceSpec {
        limits,
        ..spec("web-1", "sleep 300 & sleep 300 & exec sleep 300")
    });
    let status = eventually("web-1 to run", || {
        let s = status_of(&site, "web-1");
        async move { s.filter(|s| s.pid.is_some()) }
    })
    .await;
    assert_eq!(status.limits, limits);
    if !enforced_here(&site, "web-1") {
        site.supervisor.stop_all().await;
        return;
    }
    let status = eventually("the three processes to be counted", || {
        let s = status_of(&site, "web-1");
        async move { s.filter(|s| s.pids == Some(3)) }
    })
    .await;
    assert!(status.memory_bytes.is_some_and(|b| b > 0), "{status:?}");
    let dirs = lifeboat_cgroups_of(status.pid.unwrap());
    assert!(
        !dirs.is_empty(),
        "the instance is in no cgroup of Lifeboat's"
    );
    for dir in &dirs {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).map(|t| t.trim().to_string());
        if let Ok(max) = read("pids.max") {
            assert_eq!(max, "100");
        }
        if let Ok(bytes) = read("memory.limit_in_bytes").or_else(|_| read("memory.max")) {
            assert_eq!(bytes, (256u64 << 20).to_string());
        }
        if let Ok(quota) = read("cpu.cfs_quota_us") {
            assert_eq!(quota, "50000");
        }
        if let Ok(max) = read("cpu.max") {
            assert_eq!(max, "50000 100000");
        }
    }
    site.supervisor.stop_all().await;
}

#[tokio::test]
async fn what_left_the_instance_group_is_killed_with_it_and_its_cgroup_removed() {
    let site = site();
    // `setsid` takes the first sleep out of the instance's process group: stopping the group
    // alone would leave it running.
    site.supervisor.start(spec(
        "web-1",
        "setsid sleep 300 & echo $! > escaped; exec sleep 300",
    ));
    let escaped_file = site.site_dir().join("escaped");
    let escaped: u32 = eventually("the escaped process to start", || {
        let f = escaped_file.clone();
        async move { std::fs::read_to_string(f).ok()?.trim().parse().ok() }
    })
    .await;
    if !enforced_here(&site, "web-1") {
        site.supervisor.stop_all().await;
        return;
    }
    let leader = status_of(&site, "web-1").unwrap().pid.unwrap();
    let dirs = lifeboat_cgroups_of(leader);
    assert!(!dirs.is_empty());
    assert!(
        dirs.iter().all(|d| procs_in(d).contains(&escaped)),
        "the escaped process is not in the instance's cgroups"
    );
    assert_ne!(pgid_of(escaped), Some(leader), "setsid did not take it out");
    site.supervisor.stop("web-1").await;
    assert!(
        !is_running(escaped),
        "the escaped process outlived its instance"
    );
    for dir in &dirs {
        assert!(!dir.exists(), "{} is still there", dir.display());
    }
    site.supervisor.stop_all().await;
    for dir in &dirs {
        let site_cgroup = dir.parent().unwrap();
        assert!(
            !site_cgroup.exists(),
            "the site's cgroup {} is still there after stop_all",
            site_cgroup.display()
        );
    }
}

#[tokio::test]
async fn without_the_shim_limits_are_reported_not_enforced_and_the_instance_runs() {
    let site = site_with(|c| c.shim = None);
    let why = site
        .supervisor
        .limits_not_enforced()
        .expect("limits can not be enforced without the shim");
    assert!(why.contains("shim"), "{why}");
    site.supervisor.start(InstanceSpec {
        limits: ResourceLimits {
            pids: Some(10),
            ..Default::default()
        },
        ..spec("web-1", "echo ran > ran; exec sleep 300")
    });
    let ran = site.site_dir().join("ran");
    eventually("the instance to run", || {
        let ran = ran.clone();
        async move { ran.exists().then_some(()) }
    })
    .await;
    let status = status_of(&site, "web-1").unwrap();
    assert_eq!(status.limits_not_enforced.as_deref(), Some(why.as_str()));
    assert_eq!(status.pids, None);
    site.supervisor.stop_all().await;
}

/// This process's own cgroup directory in each hierarchy Lifeboat uses (where a supervisor
/// made here puts its sites).
fn own_cgroup_dirs() -> Vec<PathBuf> {
    let mine = std::process::id();
    let probe = std::fs::read_to_string(format!("/proc/{mine}/cgroup")).unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    probe
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let wanted = ["memory", "pids", "cpu"];
            let ours = controllers.split(',').any(|c| wanted.contains(&c));
            if !ours {
                return None;
            }
            mounts.lines().find_map(|m| {
                let (before, after) = m.split_once(" - ")?;
                let point = before.split(' ').nth(4)?;
                let mut after = after.split(' ');
                let (fstype, options) = (after.next()?, after.nth(1)?);
                (fstype == "cgroup"
                    && controllers
                        .split(',')
                        .all(|c| options.split(',').any(|o| o == c)))
                .then(|| PathBuf::from(point).join(path.trim_start_matches('/')))
            })
        })
        .collect()
}

fn backdate(dir: &Path) {
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::open(dir)
        .and_then(|f| f.set_modified(long_ago))
        .unwrap();
}

#[tokio::test]
async fn at_start_other_sites_cgroups_left_empty_long_ago_are_removed_and_no_other_is_touched() {
    let site = site();
    if !nix::unistd::geteuid().is_root() || site.supervisor.limits_not_enforced().is_some() {
        println!("not root or no cgroups: there is nothing a start could clean here");
        return;
    }
    // Only v1 hierarchies are looked at here; on a v2 machine the same code runs on one.
    let bases = own_cgroup_dirs();
    if bases.is_empty() {
        println!("no v1 cgroup hierarchies here; the v2 sweep is the same code");
        return;
    }
    let unique = format!("{:08x}", std::process::id());
    let abandoned = format!("lifeboat-gone-{unique}");
    let starting = format!("lifeboat-starting-{unique}");
    let busy = format!("lifeboat-busy-{unique}");
    let mut holder = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    for base in &bases {
        for name in [&abandoned, &starting, &busy] {
            std::fs::create_dir_all(base.join(name).join("web-1")).unwrap();
        }
        backdate(&base.join(&abandoned).join("web-1"));
        backdate(&base.join(&abandoned));
        backdate(&base.join(&busy).join("web-1"));
        backdate(&base.join(&busy));
        std::fs::write(
            base.join(&busy).join("web-1/cgroup.procs"),
            holder.id().to_string(),
        )
        .unwrap();
    }
    site.supervisor.reap_leftovers().unwrap();
    let survivors: Vec<bool> = bases.iter().map(|b| b.join(&abandoned).exists()).collect();
    let cleanup = |base: &Path| {
        // Hand the holder back and remove what the test made, whatever the outcome.
        for name in [&abandoned, &starting, &busy] {
            let _ = std::fs::remove_dir(base.join(name).join("web-1"));
            let _ = std::fs::remove_dir(base.join(name));
        }
    };
    let holder_alive = is_running(holder.id());
    let _ = holder.kill();
    let _ = holder.wait();
    for base in &bases {
        cleanup(base);
    }
    assert!(
        survivors.iter().all(|s| !s),
        "an abandoned site's cgroup was not removed"
    );
    assert!(
        holder_alive,
        "a process in another site's cgroup was killed"
    );
    site.supervisor.stop_all().await;
}
