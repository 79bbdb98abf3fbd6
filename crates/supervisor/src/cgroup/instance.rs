//! One run's cgroup: setting its limits, reading its usage, emptying and removing it.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{CgroupError, Controller, EMPTY_WITHIN, POLL, RMDIR_WITHIN, Version, errno};
use crate::types::ResourceLimits;

/// The period of the CPU bandwidth limit: `cpu = 1.5` is 150 ms of CPU time per 100 ms (the
/// kernel's default period; a shorter one costs more scheduler work, a longer one lets a
/// burst stall the instance longer).
const CPU_PERIOD_US: u64 = 100_000;

/// Writes every limit this hierarchy enforces. An unset limit is written as "none" too: a
/// reused directory may hold the last run's.
pub(super) fn write_limits(
    version: Version,
    controllers: &[Controller],
    dir: &Path,
    limits: &ResourceLimits,
) -> Result<(), CgroupError> {
    let write = |file: &str, value: String| {
        let path = dir.join(file);
        std::fs::write(&path, value).map_err(|e| CgroupError::io("set the limit", &path, e))
    };
    // Written only where the kernel has it (swap accounting can be off).
    let write_if_present = |file: &str, value: String| {
        let path = dir.join(file);
        if path.exists() {
            write(file, value)
        } else {
            Ok(())
        }
    };
    for c in controllers {
        match (c, version) {
            (Controller::Memory, Version::V1) => {
                let bytes = limits
                    .memory_bytes
                    .map_or("-1".to_string(), |b| b.to_string());
                // RAM + swap at the same value as RAM: the limit means "memory", and an
                // instance over it must be stopped, not swap the machine to a crawl. The kernel
                // wants RAM + swap >= RAM at every step, so it is lifted first (a reused
                // directory may hold a lower one).
                write_if_present("memory.memsw.limit_in_bytes", "-1".to_string())?;
                write("memory.limit_in_bytes", bytes.clone())?;
                write_if_present("memory.memsw.limit_in_bytes", bytes)?;
            }
            (Controller::Memory, Version::V2) => {
                let bytes = limits
                    .memory_bytes
                    .map_or("max".to_string(), |b| b.to_string());
                write("memory.max", bytes)?;
                let swap = if limits.memory_bytes.is_some() {
                    "0"
                } else {
                    "max"
                };
                write_if_present("memory.swap.max", swap.to_string())?;
            }
            (Controller::Pids, _) => {
                write(
                    "pids.max",
                    limits.pids.map_or("max".to_string(), |p| p.to_string()),
                )?;
            }
            (Controller::Cpu, Version::V1) => {
                write("cpu.cfs_period_us", CPU_PERIOD_US.to_string())?;
                let quota = limits.cpu_millis.map_or("-1".to_string(), |m| {
                    (u64::from(m) * CPU_PERIOD_US / 1000).to_string()
                });
                write("cpu.cfs_quota_us", quota)?;
            }
            (Controller::Cpu, Version::V2) => {
                let quota = limits.cpu_millis.map_or("max".to_string(), |m| {
                    (u64::from(m) * CPU_PERIOD_US / 1000).to_string()
                });
                write("cpu.max", format!("{quota} {CPU_PERIOD_US}"))?;
            }
            (Controller::CpuAcct, _) => {}
        }
    }
    Ok(())
}

/// One run's cgroup: a directory per hierarchy, all joined by the instance's first process.
#[derive(Debug)]
pub(crate) struct InstanceCgroup {
    pub(super) dirs: Vec<InstanceDir>,
    /// The asked-for limits this machine cannot enforce, in words.
    pub not_enforced: Option<String>,
}

#[derive(Debug, Clone)]
pub(super) struct InstanceDir {
    pub(super) version: Version,
    pub(super) path: PathBuf,
    pub(super) controllers: Vec<Controller>,
}

/// What an instance uses now, as its cgroup counts it (all its processes together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CgroupUsage {
    pub memory_bytes: Option<u64>,
    pub pids: Option<u32>,
    pub cpu_time: Option<Duration>,
    /// Processes the kernel killed in this run for going over the memory limit.
    pub oom_kills: u32,
}

impl InstanceCgroup {
    /// The directories the instance's first process joins.
    pub(crate) fn dirs(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.path.clone()).collect()
    }

    fn with(&self, c: Controller) -> Option<&InstanceDir> {
        self.dirs.iter().find(|d| d.controllers.contains(&c))
    }

    /// Reads the instance's usage. A value the kernel does not offer is `None`.
    pub(crate) fn usage(&self) -> CgroupUsage {
        let read =
            |dir: &InstanceDir, file: &str| std::fs::read_to_string(dir.path.join(file)).ok();
        let number = |text: Option<String>| text.and_then(|t| t.trim().parse::<u64>().ok());
        let memory = self.with(Controller::Memory);
        let memory_bytes = memory.and_then(|d| {
            number(read(
                d,
                match d.version {
                    Version::V1 => "memory.usage_in_bytes",
                    Version::V2 => "memory.current",
                },
            ))
        });
        let oom_kills = memory
            .and_then(|d| {
                let file = match d.version {
                    Version::V1 => "memory.oom_control",
                    Version::V2 => "memory.events",
                };
                keyed(&read(d, file)?, "oom_kill")
            })
            .unwrap_or(0);
        let pids = self
            .with(Controller::Pids)
            .and_then(|d| number(read(d, "pids.current")))
            .and_then(|n| u32::try_from(n).ok());
        let cpu_time = match self.dirs.iter().find(|d| d.version == Version::V2) {
            // v2 counts CPU time in every cgroup, controller or not.
            Some(d) => read(d, "cpu.stat")
                .and_then(|t| keyed(&t, "usage_usec"))
                .map(Duration::from_micros),
            None => self
                .with(Controller::CpuAcct)
                .and_then(|d| number(read(d, "cpuacct.usage")))
                .map(Duration::from_nanos),
        };
        CgroupUsage {
            memory_bytes,
            pids,
            cpu_time,
            oom_kills: u32::try_from(oom_kills).unwrap_or(u32::MAX),
        }
    }

    /// Kills what is still in the cgroup (processes that left the instance's process group;
    /// the run they belong to is over) and removes it. Blocks up to a few seconds.
    pub(crate) fn remove(&self) -> Result<(), CgroupError> {
        let mut result = Ok(());
        for dir in &self.dirs {
            if let Err(err) = dir.empty_and_remove() {
                result = Err(err);
            }
        }
        result
    }
}

impl InstanceDir {
    pub(super) fn empty_and_remove(&self) -> Result<(), CgroupError> {
        let left = kill_members(std::slice::from_ref(&self.path), self.version, EMPTY_WITHIN);
        if left > 0 {
            return Err(CgroupError::NotEmpty {
                path: self.path.clone(),
                left,
                within: EMPTY_WITHIN,
            });
        }
        let deadline = Instant::now() + RMDIR_WITHIN;
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if errno(&e) == Some(Errno::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(POLL);
                }
                Err(e) => return Err(CgroupError::io("remove", &self.path, e)),
            }
        }
    }
}

/// SIGKILLs every process in the cgroups `dirs` until they are empty or `within` has passed;
/// returns how many were left. Lifeboat itself is never signalled, should it be listed.
///
/// A pid read from `cgroup.procs` is signalled at once; for it to name another process by
/// then, it would have to exit and its number be reused by a new process within that moment,
/// which the kernel's pid allocation (it cycles through the whole range) makes out of reach.
pub(super) fn kill_members(dirs: &[PathBuf], version: Version, within: Duration) -> usize {
    let me = std::process::id();
    let deadline = Instant::now() + within;
    loop {
        let mut left: Vec<u32> = dirs
            .iter()
            .flat_map(|d| members(d).unwrap_or_default())
            .filter(|p| *p != me && *p > 1)
            .collect();
        left.sort_unstable();
        left.dedup();
        if left.is_empty() || Instant::now() >= deadline {
            return left.len();
        }
        // v2's cgroup.kill (Linux 5.14+) kills every member at once, even one forking now.
        let killed_by_kernel = version == Version::V2
            && dirs
                .iter()
                .all(|d| std::fs::write(d.join("cgroup.kill"), "1").is_ok());
        if !killed_by_kernel {
            for pid in &left {
                if let Ok(raw) = i32::try_from(*pid) {
                    let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
                }
            }
        }
        std::thread::sleep(POLL);
    }
}

/// The processes in cgroup `dir` (not their threads).
pub(super) fn members(dir: &Path) -> io::Result<Vec<u32>> {
    Ok(std::fs::read_to_string(dir.join("cgroup.procs"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// The value of `key` in a `key value` per line file (`memory.events`, `cpu.stat`).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files_are_read_by_key() {
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed(oom_control, "oom_kill"), Some(3));
        assert_eq!(keyed(oom_control, "oom"), None);
        assert_eq!(
            keyed("usage_usec 1500\nuser_usec 1000\n", "usage_usec"),
            Some(1500)
        );
    }

    #[test]
    fn limits_are_written_as_each_version_spells_them() {
        let limits = ResourceLimits {
            memory_bytes: Some(512 << 20),
            cpu_millis: Some(1500),
            pids: Some(200),
        };
        let all = [Controller::Memory, Controller::Pids, Controller::Cpu];
        let read = |dir: &Path, f: &str| std::fs::read_to_string(dir.join(f)).unwrap();

        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("memory.swap.max"), "max").unwrap();
        write_limits(Version::V2, &all, v2.path(), &limits).unwrap();
        assert_eq!(read(v2.path(), "memory.max"), "536870912");
        assert_eq!(read(v2.path(), "memory.swap.max"), "0");
        assert_eq!(read(v2.path(), "pids.max"), "200");
        assert_eq!(read(v2.path(), "cpu.max"), "150000 100000");

        let v1 = tempfile::tempdir().unwrap();
        write_limits(Version::V1, &all, v1.path(), &limits).unwrap();
        assert_eq!(read(v1.path(), "memory.limit_in_bytes"), "536870912");
        // No swap accounting here: the file is absent and not made up.
        assert!(!v1.path().join("memory.memsw.limit_in_bytes").exists());
        assert_eq!(read(v1.path(), "pids.max"), "200");
        assert_eq!(read(v1.path(), "cpu.cfs_period_us"), "100000");
        assert_eq!(read(v1.path(), "cpu.cfs_quota_us"), "150000");

        // A reused directory loses the last run's limits.
        write_limits(Version::V2, &all, v2.path(), &ResourceLimits::default()).unwrap();
        assert_eq!(read(v2.path(), "memory.max"), "max");
        assert_eq!(read(v2.path(), "memory.swap.max"), "max");
        assert_eq!(read(v2.path(), "pids.max"), "max");
        assert_eq!(read(v2.path(), "cpu.max"), "max 100000");
        write_limits(Version::V1, &all, v1.path(), &ResourceLimits::default()).unwrap();
        assert_eq!(read(v1.path(), "memory.limit_in_bytes"), "-1");
        assert_eq!(read(v1.path(), "cpu.cfs_quota_us"), "-1");
    }

    #[test]
    fn usage_is_read_from_either_version() {
        let v2 = tempfile::tempdir().unwrap();
        let w = |f: &str, t: &str| std::fs::write(v2.path().join(f), t).unwrap();
        w("memory.current", "1048576\n");
        w("memory.events", "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n");
        w("pids.current", "7\n");
        w("cpu.stat", "usage_usec 2500000\nuser_usec 2000000\n");
        let cgroup = InstanceCgroup {
            dirs: vec![InstanceDir {
                version: Version::V2,
                path: v2.path().to_path_buf(),
                controllers: vec![Controller::Memory, Controller::Pids, Controller::Cpu],
            }],
            not_enforced: None,
        };
        assert_eq!(
            cgroup.usage(),
            CgroupUsage {
                memory_bytes: Some(1 << 20),
                pids: Some(7),
                cpu_time: Some(Duration::from_millis(2500)),
                oom_kills: 2,
            }
        );
    }
}
