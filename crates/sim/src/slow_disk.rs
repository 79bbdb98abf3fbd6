//! The slow-disk fault's means: the sandbox's processes moved into a blkio cgroup (cgroup v1)
//! of the simulation's that throttles the state's block device (the loop device under the
//! state's small disk, `state_disk.rs`) to a few operations a second; and a probe that times
//! an fsync'd write on it, as the site's commits feel it.
//!
//! Never does: throttle any device but the state's loop device, or touch a process outside the
//! sandbox. Undone by [`Throttle::undo`] or its `Drop` (limits lifted, processes moved back, the
//! cgroup removed); the cgroup is named after the run and recorded in `run.json`, so the next
//! run removes one a killed run left.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Write operations per second the slow disk takes (a busy network disk).
pub const WRITE_IOPS: u32 = 20;
/// Read operations per second.
pub const READ_IOPS: u32 = 50;

const BLKIO_ROOT: &str = "/sys/fs/cgroup/blkio";

/// The cgroup the slow-disk fault of the simulation run by `pid` uses.
pub fn cgroup_for(pid: u32) -> Result<PathBuf, String> {
    Ok(own_blkio_dir()?.join(format!("lbsim-{pid}")))
}

/// This process's blkio cgroup dir (cgroup v1), or why there is none.
fn own_blkio_dir() -> Result<PathBuf, String> {
    if !Path::new(BLKIO_ROOT)
        .join("blkio.throttle.write_iops_device")
        .exists()
    {
        return Err(
            "needs cgroup v1's blkio controller (/sys/fs/cgroup/blkio) to throttle the state's \
             disk; cgroup v2's io.max is not built yet"
                .into(),
        );
    }
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let rel = own
        .lines()
        // "ID:CONTROLLERS:PATH"
        .filter_map(|l| l.split_once(':')?.1.split_once(':'))
        .find(|(controllers, _)| controllers.split(',').any(|c| c == "blkio"))
        .map(|(_, path)| path.trim_start_matches('/').to_string())
        .unwrap_or_default();
    Ok(Path::new(BLKIO_ROOT).join(rel))
}

/// The state's device throttled for some processes.
pub struct Throttle {
    pub cgroup: PathBuf,
    /// Where the processes were (and go back to).
    home: PathBuf,
    pub device: (u64, u64),
    pub pids: Vec<u32>,
    undone: bool,
}

impl Throttle {
    /// Makes `cgroup`, limits `device` in it and moves `pids` (whole processes) into it.
    pub fn start(cgroup: &Path, device: (u64, u64), pids: &[u32]) -> Result<Throttle, String> {
        let home = cgroup
            .parent()
            .map(Path::to_path_buf)
            .ok_or("the cgroup has no parent")?;
        std::fs::create_dir_all(cgroup)
            .map_err(|e| format!("cannot make {}: {e}", cgroup.display()))?;
        let mut t = Throttle {
            cgroup: cgroup.to_path_buf(),
            home,
            device,
            pids: Vec::new(),
            undone: false,
        };
        let (major, minor) = device;
        t.limit(
            &format!("{major}:{minor} {WRITE_IOPS}"),
            &format!("{major}:{minor} {READ_IOPS}"),
        )?;
        for &pid in pids {
            // A process that ended meanwhile is no error.
            if write(&cgroup.join("cgroup.procs"), &pid.to_string()).is_ok() {
                t.pids.push(pid);
            }
        }
        Ok(t)
    }

    fn limit(&self, write_rule: &str, read_rule: &str) -> Result<(), String> {
        write(
            &self.cgroup.join("blkio.throttle.write_iops_device"),
            write_rule,
        )?;
        write(
            &self.cgroup.join("blkio.throttle.read_iops_device"),
            read_rule,
        )
    }

    /// Lifts the limits, moves every process back and removes the cgroup.
    pub fn undo(&mut self) -> Result<(), String> {
        self.undone = true;
        let (major, minor) = self.device;
        let lifted = self.limit(&format!("{major}:{minor} 0"), &format!("{major}:{minor} 0"));
        let moved = move_all_out(&self.cgroup, &self.home);
        let removed = remove(&self.cgroup);
        lifted.and(moved).and(removed)
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        if !self.undone {
            let _ = self.undo();
        }
    }
}

/// Moves every process of `cgroup` to `home`.
fn move_all_out(cgroup: &Path, home: &Path) -> Result<(), String> {
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines() {
        let _ = write(&home.join("cgroup.procs"), pid);
    }
    Ok(())
}

/// Removes `cgroup` (after moving out what is still in it); for the next run's cleanup too.
pub fn remove(cgroup: &Path) -> Result<(), String> {
    if !cgroup.exists() {
        return Ok(());
    }
    if let Some(home) = cgroup.parent() {
        let _ = move_all_out(cgroup, home);
    }
    // The last processes may take a moment to leave (a kill under way).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(cgroup) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("cannot remove {}: {e}", cgroup.display()));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot write {text:?} to {}: {e}", path.display()))
}

/// The median time of ten 4 KiB writes, each followed by fsync, in `dir`; from a thread that
/// is in `cgroup` for the time of the probe (when given), so it is throttled as the site is.
pub fn fsync_time(dir: &Path, cgroup: Option<&Path>) -> Result<Duration, String> {
    let dir = dir.to_path_buf();
    let cgroup = cgroup.map(Path::to_path_buf);
    std::thread::spawn(move || {
        let tid = nix::unistd::gettid().to_string();
        if let Some(cg) = &cgroup {
            write(&cg.join("tasks"), &tid)?;
        }
        let timed = time_fsyncs(&dir.join("lbsim-fsync-probe"));
        if let Some(home) = cgroup.as_deref().and_then(Path::parent) {
            let _ = write(&home.join("tasks"), &tid);
        }
        timed
    })
    .join()
    .map_err(|_| "the probe thread panicked".to_string())?
}

fn time_fsyncs(path: &Path) -> Result<Duration, String> {
    let mut file = std::fs::File::create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let mut times = Vec::new();
    for i in 0..10u8 {
        let started = Instant::now();
        file.write_all(&[i; 4096])
            .and_then(|()| file.sync_data())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        times.push(started.elapsed());
    }
    drop(file);
    let _ = std::fs::remove_file(path);
    times.sort();
    Ok(times[times.len() / 2])
}
