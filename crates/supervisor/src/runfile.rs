//! The run file: which process groups this site's instances run in, so that the next
//! `lifeboat up` can kill what a crashed lifeboat left behind.
//!
//! Format (version 1, JSON, `run/instances.json` next to the log dir):
//! `{"version":1,"site":..,"site_dir":..,"supervisor":{"pid":..,"start_time":..},
//!   "instances":[{"id":"web-1","pgid":1234}]}`.
//! It is replaced atomically (temporary file, fsync, rename, fsync of the directory), so a
//! crash leaves either the old or the new list, never a torn one.
//!
//! Pids get reused, so a recorded pid is only killed after checking, in `/proc`, that the
//! process is still in the recorded group and carries this site's `LIFEBOAT_*` environment.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::SupervisorError;

pub const RUN_FILE_VERSION: u32 = 1;

/// A process, identified robustly against pid reuse by its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
    pub start_time: u64,
}

impl ProcessIdentity {
    pub fn current() -> ProcessIdentity {
        let pid = std::process::id();
        ProcessIdentity {
            pid,
            start_time: proc_stat(pid).map_or(0, |s| s.start_time),
        }
    }

    /// Whether this very process (not a later one with the same pid) is still alive.
    pub fn is_alive(&self) -> bool {
        proc_stat(self.pid).is_some_and(|s| s.start_time == self.start_time && s.state != 'Z')
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEntry {
    pub id: String,
    pub pgid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFile {
    pub version: u32,
    pub site: String,
    pub site_dir: PathBuf,
    pub supervisor: ProcessIdentity,
    pub instances: Vec<RunEntry>,
}

/// Replaces the run file at `path` atomically and durably.
pub fn write(path: &Path, run: &RunFile) -> Result<(), SupervisorError> {
    let fail = |source| SupervisorError::WriteRunFile {
        path: path.to_path_buf(),
        source,
    };
    let temp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(run).expect("the run file always serializes");
    let mut file = std::fs::File::create(&temp).map_err(fail)?;
    file.write_all(&bytes).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    drop(file);
    std::fs::rename(&temp, path).map_err(fail)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(fail)?;
    }
    Ok(())
}

/// Reads the run file; `None` if there is none.
pub fn read(path: &Path) -> Result<Option<RunFile>, SupervisorError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SupervisorError::ReadRunFile {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let run: RunFile =
        serde_json::from_slice(&bytes).map_err(|err| SupervisorError::DamagedRunFile {
            path: path.to_path_buf(),
            reason: err.to_string(),
        })?;
    if run.version != RUN_FILE_VERSION {
        return Err(SupervisorError::DamagedRunFile {
            path: path.to_path_buf(),
            reason: format!(
                "format version {} is not the supported version {RUN_FILE_VERSION}",
                run.version
            ),
        });
    }
    Ok(Some(run))
}

/// The fields of `/proc/PID/stat` we need.
#[derive(Debug, Clone, Copy)]
pub struct ProcStat {
    pub state: char,
    pub pgid: u32,
    pub start_time: u64,
}

pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgid: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Whether process `pid` was started by lifeboat for instance `id` of this site.
fn belongs_to(pid: u32, site: &str, site_dir: &Path, id: &str) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    let has = |name: &str, value: &[u8]| {
        vars.iter().any(|v| {
            v.strip_prefix(name.as_bytes())
                .and_then(|v| v.strip_prefix(b"="))
                .is_some_and(|v| v == value)
        })
    };
    let dir_matches = {
        use std::os::unix::ffi::OsStrExt;
        let recorded_dir = vars.iter().any(|v| v.starts_with(b"LIFEBOAT_SITE_DIR="));
        !recorded_dir || has("LIFEBOAT_SITE_DIR", site_dir.as_os_str().as_bytes())
    };
    has("LIFEBOAT_SITE", site.as_bytes()) && has("LIFEBOAT_INSTANCE", id.as_bytes()) && dir_matches
}

/// Live processes (not zombies) in process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|s| s.pgid == pgid && s.state != 'Z'))
        .collect()
}

/// Kills the instances a previous supervisor of this site recorded and left running. Returns
/// the pids killed. Refuses (changing nothing) if that supervisor is still alive.
pub fn reap(
    path: &Path,
    site: &str,
    site_dir: &Path,
    me: ProcessIdentity,
) -> Result<Vec<u32>, SupervisorError> {
    let Some(previous) = read(path)? else {
        return Ok(Vec::new());
    };
    if previous.supervisor == me {
        return Ok(Vec::new()); // our own instances
    }
    if previous.supervisor.is_alive() {
        return Err(SupervisorError::AlreadyRunning {
            site: site.to_string(),
            pid: previous.supervisor.pid,
        });
    }
    let mut killed = Vec::new();
    for entry in &previous.instances {
        for pid in group_members(entry.pgid) {
            if !belongs_to(pid, site, site_dir, &entry.id) {
                continue;
            }
            match kill(Pid::from_raw(pid as i32), Signal::SIGKILL) {
                Ok(()) => killed.push(pid),
                Err(nix::errno::Errno::ESRCH) => {}
                Err(source) => return Err(SupervisorError::KillLeftover { pid, source }),
            }
        }
    }
    // Wait for them to be gone, so their ports and files are free when new instances start.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && killed
            .iter()
            .any(|pid| proc_stat(*pid).is_some_and(|s| s.state != 'Z'))
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    killed.sort_unstable();
    Ok(killed)
}

/// Where the run file of a supervisor logging to `log_dir` lives.
pub fn path_for(log_dir: &Path) -> PathBuf {
    match log_dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.join("run").join("instances.json"),
        _ => log_dir.join("instances.json"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RunFile {
        RunFile {
            version: RUN_FILE_VERSION,
            site: "guestbook".into(),
            site_dir: "/srv/guestbook".into(),
            supervisor: ProcessIdentity {
                pid: 42,
                start_time: 7,
            },
            instances: vec![RunEntry {
                id: "web-1".into(),
                pgid: 1234,
            }],
        }
    }

    #[test]
    fn a_written_run_file_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("instances.json");
        write(&path, &sample()).unwrap();
        assert_eq!(read(&path).unwrap(), Some(sample()));
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn a_damaged_run_file_is_reported_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("instances.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("is damaged"), "{err}");
        assert!(err.contains("then delete the file"), "{err}");
    }

    #[test]
    fn the_current_process_is_alive_and_a_reused_pid_is_not() {
        let me = ProcessIdentity::current();
        assert!(me.is_alive());
        let impostor = ProcessIdentity {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!impostor.is_alive());
    }

    #[test]
    fn the_run_file_sits_next_to_the_log_dir() {
        assert_eq!(
            path_for(Path::new("/srv/site/.lifeboat/logs")),
            Path::new("/srv/site/.lifeboat/run/instances.json")
        );
    }
}
