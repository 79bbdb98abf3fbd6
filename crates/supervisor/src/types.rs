//! The supervisor's vocabulary: what to run ([`InstanceSpec`]), how ([`SupervisorConfig`]), and
//! what it reports back ([`InstanceStatus`], [`SupervisorEvent`]). Plain data, no behaviour.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backoff::BackoffPolicy;

/// How a site's instances are run on this node.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// The site's name; set as `$LIFEBOAT_SITE` and used to recognise leftovers.
    pub site: String,
    /// Instances run with this as their working directory.
    pub site_dir: PathBuf,
    /// Per-instance log files go here; the run file goes to `../run/instances.json` next to it.
    pub log_dir: PathBuf,
    /// How long an instance may take to exit after its stop signal before it gets SIGKILL.
    pub stop_timeout: Duration,
    /// A log file is rotated once it would grow past this many bytes.
    pub log_max_bytes: u64,
    /// How many rotated log files (`<id>.log.1` ...) are kept.
    pub log_keep: usize,
    /// When to restart a crashed instance.
    pub backoff: BackoffPolicy,
    /// A program that sets the parent-death signal and then execs the instance; see [`Shim`].
    pub shim: Option<Shim>,
    /// The whole environment instances start from (then their own `env` and the supervisor's
    /// facts on top); `None` inherits the supervisor's, which only tests should do: it holds
    /// Lifeboat's secrets.
    pub base_env: Option<Vec<(String, String)>>,
}

/// A launcher every instance is started through: `program args... -- sh -c "exec <command>"`.
/// The `lifeboat` binary provides one (`lifeboat __instance -- CMD...`, which calls
/// [`crate::shim::exec_instance`]) so that instances die with lifeboat, even on `kill -9`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shim {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// One instance to keep running.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceSpec {
    /// Unique within the site, e.g. `web-1`.
    pub id: String,
    /// The manifest's process name, e.g. `web`.
    pub process: String,
    /// A shell command, run with `sh -c` from the site dir.
    pub command: String,
    /// Set as `$PORT`.
    pub port: u16,
    /// Extra environment; the supervisor itself sets `PORT`, `LIFEBOAT_INSTANCE`,
    /// `LIFEBOAT_SITE`, `LIFEBOAT_SITE_DIR` and `LIFEBOAT_SUPERVISOR_PID`.
    pub env: Vec<(String, String)>,
    /// The private view of the file system the instance runs in (set up by the shim, so a
    /// non-empty sandbox needs [`SupervisorConfig::shim`]). The supervisor adds the
    /// instance's cgroups to it for each run.
    pub sandbox: crate::shim::Sandbox,
    /// What the instance may use of the machine, enforced with a cgroup of its own where the
    /// machine allows (see [`InstanceStatus::limits_not_enforced`]).
    pub limits: ResourceLimits,
    /// The signal that asks its processes to finish and exit, on a stop and when its leader
    /// died; `None`: SIGTERM. (Apache prefork's workers die on SIGTERM in the middle of a
    /// response and finish it on SIGWINCH.)
    pub stop_signal: Option<nix::sys::signal::Signal>,
}

/// What one instance, all its processes together, may use. `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLimits {
    /// RAM and swap together, in bytes; over it the kernel kills a process of the instance.
    pub memory_bytes: Option<u64>,
    /// CPU time in thousandths of a core (1500 is one and a half cores); over it the
    /// instance is slowed down.
    pub cpu_millis: Option<u32>,
    /// Processes and threads at once; past it, `fork` fails in the instance.
    pub pids: Option<u32>,
}

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// About to be spawned.
    Starting,
    /// Its process is running.
    Running,
    /// It exited and waits a little before the next start.
    Backoff,
    /// It keeps exiting soon after starting; it waits longer and longer between starts.
    CrashLooping,
    /// A stop was asked for: SIGTERM sent, waiting for it to exit.
    Stopping,
    /// It exited and will not be restarted.
    Exited,
}

/// How a process ended: an exit code, or the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// What the supervisor knows about one instance right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub id: String,
    pub process: String,
    /// The running process (also its process group id); `None` while it is not running.
    pub pid: Option<u32>,
    pub port: u16,
    pub state: InstanceState,
    /// How many times it was started again after exiting.
    pub restarts: u32,
    pub last_exit: Option<ExitInfo>,
    /// While waiting in backoff: how long until the next start.
    #[serde(rename = "next_restart_in_ms", with = "optional_millis")]
    pub next_restart_in: Option<Duration>,
    /// Why the last start failed, when the command could not even be spawned.
    pub last_error: Option<String>,
    /// Memory the running instance uses, in bytes: all its processes as its cgroup counts
    /// them (what its memory limit is held against), or, without a cgroup, the resident
    /// memory of its main process.
    pub memory_bytes: Option<u64>,
    /// CPU time the running instance has used: all its processes (cgroup), or its main
    /// process only.
    #[serde(rename = "cpu_time_ms", with = "optional_millis")]
    pub cpu_time: Option<Duration>,
    /// Processes and threads the running instance has now (from its cgroup; `None` without).
    #[serde(default)]
    pub pids: Option<u32>,
    /// The limits asked for it.
    #[serde(default)]
    pub limits: ResourceLimits,
    /// Why its limits are not (all) enforced, in words (no cgroups on this machine, no
    /// permission, ...); `None` when they are.
    #[serde(default)]
    pub limits_not_enforced: Option<String>,
    /// How many of its processes the kernel killed for going over the memory limit, over all
    /// its runs.
    #[serde(default)]
    pub oom_kills: u32,
}

/// A lifecycle fact, broadcast to every [`crate::Supervisor::subscribe`]r.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SupervisorEvent {
    /// The instance's process was spawned.
    Started { id: String, pid: u32 },
    /// The instance's process ended on its own (not by a stop).
    Exited {
        id: String,
        pid: u32,
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// The kernel killed `killed` processes of the instance for want of memory: its own
    /// `memory` limit (`limit_bytes`), or, without one, the machine's.
    OutOfMemory {
        id: String,
        killed: u64,
        limit_bytes: Option<u64>,
    },
    /// It will be started again after `delay`. `attempt` counts consecutive quick failures
    /// (1 after a crash that followed a long, healthy run).
    Restarting {
        id: String,
        attempt: u32,
        #[serde(with = "millis")]
        delay: Duration,
    },
    /// It keeps crashing soon after starting; the next start waits `delay`.
    CrashLooping {
        id: String,
        #[serde(with = "millis")]
        delay: Duration,
    },
    /// It was stopped on request and is no longer supervised.
    Stopped { id: String },
}

mod millis {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().try_into().unwrap_or(u64::MAX))
    }
}

mod optional_millis {
    use std::time::Duration;

    use serde::Deserialize;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}
