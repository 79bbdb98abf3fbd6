//! The supervisor: keeps each instance of a site running, restarts it when it crashes (backing
//! off when it crash-loops), stops it gracefully, and reports what happens.
//!
//! One tokio task per instance runs the instance's life: spawn, wait, decide the restart, wait
//! out the backoff, again, until a stop is asked for. The status table and the run file are
//! updated at each step; events go to every subscriber.
//!
//! Each run of an instance gets a cgroup of its own with the instance's resource limits
//! (`cgroup.rs`), made before the spawn and removed once the run's processes are all gone.
//!
//! When an instance's process exits on its own, the `Exited` event goes out at once (the front
//! door stops sending it requests), but the instance starts again only once every other process
//! of its group is gone: they get SIGTERM and the stop timeout to finish the responses they are
//! writing, then SIGKILL. Until then the group stays in the run file, so a lifeboat killed in
//! the meantime leaves nothing that the next `up` cannot find.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::backoff::RestartTracker;
use crate::cgroup::{InstanceCgroup, SiteCgroups};
use crate::error::SupervisorError;
use crate::group::{self, GroupStop, ProcessGroup};
use crate::logs::{self, RotatingLog, SharedLog};
use crate::runfile::{self, ProcessIdentity, RunEntry, RunFile};
use crate::spawn::{self, ExitedLeader, RunningProcess};
use crate::types::{
    ExitInfo, InstanceSpec, InstanceState, InstanceStatus, SupervisorConfig, SupervisorEvent,
};
use crate::usage;

/// Runs a site's instances on this node. Cheap to clone; clones share the same instances.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

struct Inner {
    config: SupervisorConfig,
    /// The site dir as an absolute path (what instances see as `$LIFEBOAT_SITE_DIR`).
    site_dir: PathBuf,
    run_file: PathBuf,
    me: ProcessIdentity,
    instances: Mutex<BTreeMap<String, Entry>>,
    events: broadcast::Sender<SupervisorEvent>,
    /// Serialises run file writes so the last write always reflects the latest table.
    run_file_writes: Mutex<()>,
    /// The site's cgroups, or why instances run without limits on this machine.
    cgroups: Result<SiteCgroups, String>,
}

struct Entry {
    status: InstanceStatus,
    /// The group of a run whose leader exited while the rest of the group is being stopped
    /// (`status.pid` is `None` then). Kept in the run file until the group is empty.
    leftover_group: Option<u32>,
    next_restart_at: Option<Instant>,
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
    /// The cgroup of the current run, read for the instance's usage.
    cgroup: Option<Arc<InstanceCgroup>>,
}

/// Why limits are not enforced when instances are started without the shim.
const WITHOUT_SHIM: &str =
    "instances are started without the lifeboat shim, which is what puts them in their cgroup";

/// How one run of an instance ended.
enum RunOutcome {
    /// The leader exited on its own; `leader` is its unreaped zombie (if the waiter could keep
    /// it), the rest of its group may still run.
    Exited {
        pid: u32,
        exit: ExitInfo,
        leader: Option<ExitedLeader>,
    },
    FailedToStart(String),
    Stopped,
}

impl Supervisor {
    /// Prepares to run instances: creates the log dir and the run file's dir. Starts nothing.
    pub fn new(config: SupervisorConfig) -> Result<Supervisor, SupervisorError> {
        let run_file = runfile::path_for(&config.log_dir);
        for dir in [
            config.log_dir.as_path(),
            run_file.parent().unwrap_or(Path::new(".")),
        ] {
            std::fs::create_dir_all(dir).map_err(|source| SupervisorError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        // Canonical when it exists, so leftovers are recognised whichever way the dir was named.
        let site_dir = config
            .site_dir
            .canonicalize()
            .or_else(|_| std::path::absolute(&config.site_dir))
            .unwrap_or_else(|_| config.site_dir.clone());
        let cgroups = match &config.shim {
            Some(_) => SiteCgroups::prepare(&config.site, &site_dir).map_err(|e| e.to_string()),
            None => Err(WITHOUT_SHIM.to_string()),
        };
        let (events, _) = broadcast::channel(1024);
        Ok(Supervisor {
            inner: Arc::new(Inner {
                config,
                site_dir,
                run_file,
                me: ProcessIdentity::current(),
                instances: Mutex::new(BTreeMap::new()),
                events,
                run_file_writes: Mutex::new(()),
                cgroups,
            }),
        })
    }

    /// Kills the instances that a previous lifeboat of this site recorded in the run file and
    /// left running (it was killed or crashed), and claims the run file for this supervisor.
    /// Then empties and removes the cgroups that run left, which kills what its instances
    /// started outside their process groups (and removes other sites' cgroups left empty
    /// long ago). Returns the pids killed through the run file. Call it once, before
    /// starting instances. Fails, killing nothing, if that previous lifeboat is still running.
    pub fn reap_leftovers(&self) -> Result<Vec<u32>, SupervisorError> {
        let inner = &self.inner;
        let killed = runfile::reap(
            &inner.run_file,
            &inner.config.site,
            &inner.site_dir,
            inner.me,
        )?;
        inner.write_run_file()?;
        // Only now: the run file check above made sure no other lifeboat runs this site, so
        // whatever is in its cgroups is left over.
        if let Ok(cgroups) = &inner.cgroups {
            for dir in cgroups.clean_stale() {
                tracing::info!(cgroup = %dir.display(), "removed a cgroup left by an earlier run");
            }
        }
        Ok(killed)
    }

    /// Why this machine does not enforce instances' resource limits; `None` when it does.
    pub fn limits_not_enforced(&self) -> Option<String> {
        self.inner.cgroups.as_ref().err().cloned()
    }

    /// Where the run file is (the list of running process groups, for `reap_leftovers`).
    pub fn run_file(&self) -> PathBuf {
        self.inner.run_file.clone()
    }

    /// Starts the instance now and keeps it running until [`Supervisor::stop`]: restarts at
    /// once after a crash, with growing delays while it crash-loops. Does nothing if an
    /// instance with this id is already supervised. Must be called within a tokio runtime.
    pub fn start(&self, spec: InstanceSpec) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(false);
        {
            let mut instances = self.inner.lock();
            if instances.contains_key(&spec.id) {
                tracing::warn!(instance = %spec.id, "already supervised; start ignored");
                return;
            }
            instances.insert(
                spec.id.clone(),
                Entry {
                    status: InstanceStatus {
                        id: spec.id.clone(),
                        process: spec.process.clone(),
                        pid: None,
                        port: spec.port,
                        state: InstanceState::Starting,
                        restarts: 0,
                        last_exit: None,
                        next_restart_in: None,
                        last_error: None,
                        memory_bytes: None,
                        cpu_time: None,
                        pids: None,
                        limits: spec.limits,
                        limits_not_enforced: None,
                        oom_kills: 0,
                    },
                    leftover_group: None,
                    next_restart_at: None,
                    stop: stop_tx,
                    done: done_rx,
                    cgroup: None,
                },
            );
        }
        tokio::spawn(supervise(self.inner.clone(), spec, stop_rx, done_tx));
    }

    /// Stops the instance: SIGTERM to its process group, up to `stop_timeout` to exit, then
    /// SIGKILL. Resolves once every process of the group is gone and the instance is forgotten.
    pub async fn stop(&self, id: &str) {
        let done = {
            let mut instances = self.inner.lock();
            let Some(entry) = instances.get_mut(id) else {
                return;
            };
            entry.status.state = InstanceState::Stopping;
            entry.next_restart_at = None;
            entry.stop.send_replace(true);
            entry.done.clone()
        };
        let mut done = done;
        if done.wait_for(|finished| *finished).await.is_err() {
            // The instance's task died (a bug): forget the instance anyway.
            self.inner.lock().remove(id);
            let _ = self.inner.write_run_file_async().await;
        }
    }

    /// Kills every instance at once, SIGKILL to each whole process group, and forgets them:
    /// for a node that must stop writing now (its lease is running out), where a graceful
    /// stop could let an instance commit one more write. No instance is restarted.
    pub async fn kill_all_now(&self) {
        let pids: Vec<u32> = {
            let mut instances = self.inner.lock();
            instances
                .values_mut()
                .filter_map(|entry| {
                    // Stopping first, so that the kill is not taken for a crash to restart.
                    entry.status.state = InstanceState::Stopping;
                    entry.next_restart_at = None;
                    entry.stop.send_replace(true);
                    entry.status.pid
                })
                .collect()
        };
        for pid in pids {
            crate::group::signal_group(pid, Signal::SIGKILL);
        }
        self.stop_all().await;
    }

    /// Stops every instance, all at once, then removes the site's cgroup.
    pub async fn stop_all(&self) {
        let ids: Vec<String> = self.inner.lock().keys().cloned().collect();
        let mut stops = tokio::task::JoinSet::new();
        for id in ids {
            let supervisor = self.clone();
            stops.spawn(async move { supervisor.stop(&id).await });
        }
        while stops.join_next().await.is_some() {}
        if let Ok(cgroups) = &self.inner.cgroups {
            cgroups.remove_site();
        }
    }

    /// The status of every supervised instance, ordered by id, with what each uses now.
    pub fn instances(&self) -> Vec<InstanceStatus> {
        let now = Instant::now();
        let current: Vec<(InstanceStatus, Option<Arc<InstanceCgroup>>)> = self
            .inner
            .lock()
            .values()
            .map(|entry| {
                let mut status = entry.status.clone();
                status.next_restart_in = entry
                    .next_restart_at
                    .map(|at| at.saturating_duration_since(now));
                (status, entry.cgroup.clone())
            })
            .collect();
        // Read outside the lock: starts and exits do not wait for /proc and /sys.
        current
            .into_iter()
            .map(|(mut status, cgroup)| {
                let counted = cgroup.map(|c| c.usage()).unwrap_or_default();
                // Kills of the current run; earlier runs' are in the status already.
                status.oom_kills += counted.oom_kills;
                if let Some(pid) = status.pid {
                    status.memory_bytes = counted.memory_bytes.or_else(|| usage::memory_bytes(pid));
                    status.cpu_time = counted.cpu_time.or_else(|| usage::cpu_time(pid));
                    status.pids = counted.pids;
                }
                status
            })
            .collect()
    }

    /// Lifecycle events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SupervisorEvent> {
        self.inner.events.subscribe()
    }

    /// The current log file of an instance (stdout and stderr). Rotated files are the same
    /// path with `.1`, `.2` ... appended, `.1` being the most recent.
    pub fn log_path(&self, id: &str) -> PathBuf {
        logs::log_file(&self.inner.config.log_dir, id)
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        // A panic while holding this lock cannot leave the table half-updated in a way that
        // matters (each update is one field assignment), so recover from poisoning.
        self.instances.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut Entry)) {
        if let Some(entry) = self.lock().get_mut(id) {
            change(entry);
        }
    }

    fn emit(&self, event: SupervisorEvent) {
        let _ = self.events.send(event);
    }

    fn write_run_file(&self) -> Result<(), SupervisorError> {
        let _writing = self
            .run_file_writes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let instances = self
            .lock()
            .values()
            .filter_map(|entry| {
                Some(RunEntry {
                    id: entry.status.id.clone(),
                    pgid: entry.status.pid.or(entry.leftover_group)?,
                })
            })
            .collect();
        runfile::write(
            &self.run_file,
            &RunFile {
                version: runfile::RUN_FILE_VERSION,
                site: self.config.site.clone(),
                site_dir: self.site_dir.clone(),
                supervisor: self.me,
                instances,
            },
        )
    }

    /// Writes the run file off the async threads (it fsyncs).
    async fn write_run_file_async(self: &Arc<Self>) -> Result<(), SupervisorError> {
        let inner = self.clone();
        match tokio::task::spawn_blocking(move || inner.write_run_file()).await {
            Ok(result) => result,
            Err(_) => Ok(()),
        }
    }

    async fn record_run_file(self: &Arc<Self>, id: &str) {
        if let Err(err) = self.write_run_file_async().await {
            tracing::warn!(instance = %id, "{err}");
        }
    }
}

impl Drop for Inner {
    /// The site's cgroup goes with the last handle on the supervisor (the kernel refuses while
    /// an instance's cgroup is still in it, which the next start then cleans).
    fn drop(&mut self) {
        if let Ok(cgroups) = &self.cgroups {
            cgroups.remove_site();
        }
    }
}

/// The life of one instance, until it is stopped.
async fn supervise(
    inner: Arc<Inner>,
    spec: InstanceSpec,
    mut stop: watch::Receiver<bool>,
    done: watch::Sender<bool>,
) {
    let config = &inner.config;
    let mut tracker = RestartTracker::new(config.backoff);
    let mut log: Option<SharedLog> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        inner.update(&spec.id, |e| {
            e.status.state = InstanceState::Starting;
            e.next_restart_at = None;
        });
        let started_at = Instant::now();
        let opened = open_log(&inner, &spec.id, &mut log);
        let mut cgroup = enter_cgroup(&inner, &spec, log.as_ref()).await;
        let outcome = match opened {
            Ok(log) => run_once(&inner, &spec, cgroup.as_deref(), &log, &mut stop).await,
            Err(reason) => RunOutcome::FailedToStart(reason),
        };
        if matches!(outcome, RunOutcome::Stopped | RunOutcome::FailedToStart(_)) {
            // Nothing of this run is left running (a stop waits for the whole group).
            leave_cgroup(&inner, &spec, cgroup.take(), log.as_ref()).await;
        }
        match outcome {
            RunOutcome::Stopped => break,
            RunOutcome::Exited { pid, exit, leader } => {
                inner.update(&spec.id, |e| {
                    e.status.pid = None;
                    e.status.last_exit = Some(exit);
                    e.leftover_group = leader.as_ref().and_then(|l| l.group()).map(|g| g.pgid);
                    if e.status.state != InstanceState::Stopping {
                        // Exited, and waiting for its other processes before the next start.
                        e.status.state = InstanceState::Backoff;
                    }
                });
                // Tell subscribers first: the front door must stop sending it requests now,
                // while the rest of the group may still be finishing responses.
                inner.emit(SupervisorEvent::Exited {
                    id: spec.id.clone(),
                    pid,
                    code: exit.code,
                    signal: exit.signal,
                });
                if let Some(log) = &log {
                    logs::note(log, &format!("pid {pid} exited ({})", describe(exit)));
                }
                if let Some(leader) = leader {
                    stop_rest_of_group(&inner, &spec, pid, leader, log.as_ref()).await;
                }
                leave_cgroup(&inner, &spec, cgroup.take(), log.as_ref()).await;
                inner.update(&spec.id, |e| e.leftover_group = None);
                inner.record_run_file(&spec.id).await;
            }
            RunOutcome::FailedToStart(reason) => {
                if let Some(log) = &log {
                    logs::note(log, &reason);
                }
                tracing::warn!(instance = %spec.id, "{reason}");
                inner.update(&spec.id, |e| e.status.last_error = Some(reason));
            }
        }

        let decision = tracker.after_exit(started_at.elapsed());
        let state = if decision.crash_looping {
            InstanceState::CrashLooping
        } else if decision.delay.is_zero() {
            InstanceState::Starting
        } else {
            InstanceState::Backoff
        };
        let stopping = {
            let mut instances = inner.lock();
            match instances.get_mut(&spec.id) {
                Some(e) if e.status.state != InstanceState::Stopping => {
                    e.status.state = state;
                    e.status.restarts += 1;
                    e.next_restart_at = Some(Instant::now() + decision.delay);
                    false
                }
                _ => true,
            }
        };
        if stopping || *stop.borrow() {
            break;
        }
        if let Some(log) = &log {
            logs::note(log, &format!("restarting in {}", humanize(decision.delay)));
        }
        inner.emit(SupervisorEvent::Restarting {
            id: spec.id.clone(),
            attempt: decision.attempt,
            delay: decision.delay,
        });
        if decision.crash_looping {
            inner.emit(SupervisorEvent::CrashLooping {
                id: spec.id.clone(),
                delay: decision.delay,
            });
        }
        if !decision.delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(decision.delay) => {}
                _ = stop_requested(&mut stop) => break,
            }
        }
    }
    inner.lock().remove(&spec.id);
    inner.record_run_file(&spec.id).await;
    if let Some(log) = &log {
        logs::note(log, "stopped");
    }
    inner.emit(SupervisorEvent::Stopped {
        id: spec.id.clone(),
    });
    done.send_replace(true);
}

fn open_log(inner: &Inner, id: &str, log: &mut Option<SharedLog>) -> Result<SharedLog, String> {
    if let Some(log) = log {
        return Ok(log.clone());
    }
    let path = logs::log_file(&inner.config.log_dir, id);
    let opened = RotatingLog::open(
        path.clone(),
        inner.config.log_max_bytes,
        inner.config.log_keep,
    )
    .map_err(|err| {
        format!(
            "cannot open the log file {} ({err}); check that the log dir is writable",
            path.display()
        )
    })?;
    let shared = Arc::new(Mutex::new(opened));
    *log = Some(shared.clone());
    Ok(shared)
}

/// Makes the cgroup of the next run of the instance, with its limits. Without one (the
/// machine has no usable cgroups, or making this one failed) the instance runs all the same,
/// and its status says why its limits are not enforced.
async fn enter_cgroup(
    inner: &Arc<Inner>,
    spec: &InstanceSpec,
    log: Option<&SharedLog>,
) -> Option<Arc<InstanceCgroup>> {
    let made = {
        let (inner, id, limits) = (inner.clone(), spec.id.clone(), spec.limits);
        // Blocking: a leftover cgroup of the same name is emptied first.
        tokio::task::spawn_blocking(move || match &inner.cgroups {
            Ok(cgroups) => cgroups.create(&id, &limits).map_err(|e| e.to_string()),
            Err(why) => Err(why.clone()),
        })
        .await
        .unwrap_or_else(|_| Err("making the instance's cgroup failed (a bug)".to_string()))
    };
    let (cgroup, not_enforced) = match made {
        Ok(cgroup) => {
            let why = cgroup.not_enforced.clone();
            (Some(Arc::new(cgroup)), why)
        }
        Err(why) => (None, Some(why)),
    };
    // Said in the instance's log when it changes, not at every restart.
    let news = inner
        .lock()
        .get(&spec.id)
        .is_some_and(|e| e.status.limits_not_enforced != not_enforced);
    if let (Some(why), Some(log), true) = (&not_enforced, log, news) {
        logs::note(log, &format!("resource limits not enforced: {why}"));
    }
    inner.update(&spec.id, |e| {
        e.cgroup = cgroup.clone();
        e.status.limits_not_enforced = not_enforced;
    });
    cgroup
}

/// Once nothing of a run is left in its process group: counts what the memory limit killed,
/// then empties (kills what left the group) and removes the run's cgroup.
async fn leave_cgroup(
    inner: &Arc<Inner>,
    spec: &InstanceSpec,
    cgroup: Option<Arc<InstanceCgroup>>,
    log: Option<&SharedLog>,
) {
    let Some(cgroup) = cgroup else { return };
    let oom_kills = cgroup.usage().oom_kills;
    // One step, so a status read in between never counts these kills twice or not at all.
    inner.update(&spec.id, |e| {
        e.cgroup = None;
        e.status.oom_kills += oom_kills;
    });
    let note = |text: &str| {
        if let Some(log) = log {
            logs::note(log, text);
        }
    };
    if oom_kills > 0 {
        inner.emit(SupervisorEvent::OutOfMemory {
            id: spec.id.clone(),
            killed: u64::from(oom_kills),
            limit_bytes: spec.limits.memory_bytes,
        });
    }
    match spec.limits.memory_bytes {
        _ if oom_kills == 0 => {}
        Some(limit) => note(&format!(
            "the memory limit ({}) was reached: the kernel killed {} of this instance",
            bytes(limit),
            processes(oom_kills as usize)
        )),
        // No limit of its own: the machine, or the cgroup Lifeboat runs in, ran out.
        None => note(&format!(
            "out of memory: the kernel killed {} of this instance (it has no memory limit; \
             the machine or Lifeboat's own cgroup ran out)",
            processes(oom_kills as usize)
        )),
    }
    let removed = tokio::task::spawn_blocking(move || cgroup.remove()).await;
    if let Ok(Err(err)) = removed {
        note(&err.to_string());
        tracing::warn!(instance = %spec.id, "{err}");
    }
}

/// Spawns the instance once and waits until it exits or a stop is asked for.
async fn run_once(
    inner: &Arc<Inner>,
    spec: &InstanceSpec,
    cgroup: Option<&InstanceCgroup>,
    log: &SharedLog,
    stop: &mut watch::Receiver<bool>,
) -> RunOutcome {
    let command = match cgroup {
        Some(cgroup) => {
            // The shim joins the cgroup before anything of the instance runs, so no process
            // of it is ever outside its limits.
            let mut in_cgroup = spec.clone();
            in_cgroup.sandbox.cgroups.extend(cgroup.dirs());
            spawn::instance_command(&inner.config, &in_cgroup, &inner.site_dir)
        }
        None => spawn::instance_command(&inner.config, spec, &inner.site_dir),
    };
    let child = match spawn::spawn(command).await {
        Ok(child) => child,
        Err(err) if !inner.site_dir.is_dir() => {
            return RunOutcome::FailedToStart(format!(
                "cannot start `{}`: the site dir {} is gone ({err}); put the site back or \
                 run lifeboat from the right dir",
                spec.command,
                inner.site_dir.display()
            ));
        }
        Err(err) => {
            let program = match &inner.config.shim {
                Some(shim) => format!("the shim {}", shim.program.display()),
                None => "sh".to_string(),
            };
            return RunOutcome::FailedToStart(format!(
                "cannot start `{}` in {}: running {program} failed ({err}); check that it \
                 exists and is executable",
                spec.command,
                inner.site_dir.display()
            ));
        }
    };
    let RunningProcess { pid, mut exit } = match spawn::watch(child, log) {
        Ok(running) => running,
        Err(err) => {
            return RunOutcome::FailedToStart(format!(
                "cannot watch the new instance process ({err}); the machine may be out of threads"
            ));
        }
    };
    inner.update(&spec.id, |e| {
        e.status.pid = Some(pid);
        e.status.last_error = None;
        if e.status.state != InstanceState::Stopping {
            e.status.state = InstanceState::Running;
        }
    });
    logs::note(log, &format!("started pid {pid}: {}", spec.command));
    inner.record_run_file(&spec.id).await;
    inner.emit(SupervisorEvent::Started {
        id: spec.id.clone(),
        pid,
    });
    tokio::select! {
        exited = &mut exit => match exited {
            Ok(leader) => RunOutcome::Exited { pid, exit: leader.exit, leader: Some(leader) },
            // The waiter thread is gone (a bug); it killed the group when it went.
            Err(_) => RunOutcome::Exited {
                pid,
                exit: ExitInfo { code: None, signal: None },
                leader: None,
            },
        },
        _ = stop_requested(stop) => {
            stop_gracefully(inner, spec, pid, &mut exit, log).await;
            RunOutcome::Stopped
        }
    }
}

/// The instance's stop signal (SIGTERM unless its spec names another).
fn stop_signal_of(spec: &InstanceSpec) -> Signal {
    spec.stop_signal.unwrap_or(Signal::SIGTERM)
}

/// The stop signal to the group, then SIGKILL if any of its processes is still running after
/// the stop timeout. Returns once every process of the group is gone and the leader is reaped.
async fn stop_gracefully(
    inner: &Inner,
    spec: &InstanceSpec,
    pid: u32,
    exit: &mut tokio::sync::oneshot::Receiver<ExitedLeader>,
    log: &SharedLog,
) {
    let timeout = inner.config.stop_timeout;
    let signal = stop_signal_of(spec);
    // The leader is not reaped before it comes out of `exit` (the waiter thread keeps its
    // zombie), so the group id is still this instance's for the whole stop.
    let outcome = group::stop_group(
        &ProcessGroup { pgid: pid },
        signal,
        timeout,
        |_| logs::note(log, &format!("stopping pid {pid} ({})", signal.as_str())),
        |left| {
            logs::note(
                log,
                &format!(
                    "{} of pid {pid}'s group did not exit within {} of {}; sending SIGKILL",
                    processes(left),
                    humanize(timeout),
                    signal.as_str()
                ),
            )
        },
    )
    .await;
    note_unfinished_stop(log, pid, &outcome);
    if let Ok(leader) = exit.await {
        leader.reap();
    }
}

/// After the leader of a run exited on its own: lets the rest of its group finish (the stop
/// signal, the stop timeout, then SIGKILL) and only then reaps the leader. Killing them at once
/// would cut the responses a pre-forking server's workers are writing, and a new run could not
/// bind the port while they hold the listening socket.
async fn stop_rest_of_group(
    inner: &Inner,
    spec: &InstanceSpec,
    pid: u32,
    leader: ExitedLeader,
    log: Option<&SharedLog>,
) {
    let note = |text: &str| {
        if let Some(log) = log {
            logs::note(log, text);
        }
    };
    if let Some(group) = leader.group() {
        let timeout = inner.config.stop_timeout;
        let signal = stop_signal_of(spec);
        let started = Instant::now();
        let outcome = group::stop_group(
            &group,
            signal,
            timeout,
            |running| {
                note(&format!(
                    "{} of pid {pid}'s group still running; {}, up to {} to finish before the \
                     restart",
                    processes(running),
                    signal.as_str(),
                    humanize(timeout)
                ))
            },
            |left| {
                note(&format!(
                    "{} of pid {pid}'s group did not exit within {} of {}; sending SIGKILL",
                    processes(left),
                    humanize(timeout),
                    signal.as_str()
                ))
            },
        )
        .await;
        if outcome == GroupStop::Finished {
            note(&format!(
                "the rest of pid {pid}'s group finished within {}",
                humanize(started.elapsed())
            ));
        }
        if let Some(log) = log {
            note_unfinished_stop(log, pid, &outcome);
        }
    }
    leader.reap();
}

/// Notes a stop that could not make sure the whole group is gone.
fn note_unfinished_stop(log: &SharedLog, pid: u32, outcome: &GroupStop) {
    match outcome {
        GroupStop::Killed { left, gone: false } => logs::note(
            log,
            &format!(
                "{} of pid {pid}'s group still there {} after SIGKILL; going on without them",
                processes(*left),
                humanize(group::AFTER_SIGKILL)
            ),
        ),
        GroupStop::Unknown(reason) => logs::note(
            log,
            &format!(
                "cannot list the processes of pid {pid}'s group ({reason}); waited the whole \
                 stop timeout, then sent SIGKILL"
            ),
        ),
        _ => {}
    }
}

/// Bytes as people read a memory limit: `64MiB`, `1.5GiB`.
fn bytes(n: u64) -> String {
    let mib = n as f64 / f64::from(1 << 20);
    if mib >= 1024.0 {
        format!("{:.1}GiB", mib / 1024.0).replace(".0GiB", "GiB")
    } else {
        format!("{mib:.0}MiB")
    }
}

fn processes(n: usize) -> String {
    match n {
        1 => "1 process".into(),
        n => format!("{n} processes"),
    }
}

/// Resolves once a stop is asked for (or the supervisor forgot the instance).
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

fn describe(exit: ExitInfo) -> String {
    match (exit.code, exit.signal) {
        (_, Some(signal)) => match Signal::try_from(signal) {
            Ok(s) => format!("killed by {s}"),
            Err(_) => format!("killed by signal {signal}"),
        },
        (Some(code), None) => format!("exit code {code}"),
        (None, None) => "unknown status".into(),
    }
}

fn humanize(d: Duration) -> String {
    if d.is_zero() {
        "0s".into()
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
