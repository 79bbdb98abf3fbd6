//! The processes of a sandbox: which are its own (by command line or working dir, read from
//! `/proc`), whether one still runs, and the thread that starts its lifeboat.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;

pub(crate) fn alive(pid: u32) -> bool {
    // A zombie is dead for our purposes: it runs nothing.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub(crate) fn cmdline(pid: u32) -> Option<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&bytes).replace('\0', " "))
}

pub(crate) fn cwd_under(pid: u32, root: &Path) -> bool {
    std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(root))
}

/// Every process whose command line or working dir is inside `root`.
pub(crate) fn processes_under(root: &Path) -> Vec<u32> {
    let root_text = root.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter(|&pid| cmdline(pid).is_some_and(|c| c.contains(&root_text)) || cwd_under(pid, root))
        .collect()
}

/// One long-lived thread that starts the sandbox's processes: the parent-death signal fires
/// when the thread that forked the child ends, so it must not be a runtime's worker thread,
/// which may end whenever it idles. Once it has entered the sandbox's network namespace,
/// everything it starts is in that namespace.
pub(crate) struct Spawner {
    tx: mpsc::Sender<Job>,
}

enum Job {
    Spawn(Command, mpsc::Sender<std::io::Result<Child>>),
    EnterNetns(PathBuf, mpsc::Sender<std::io::Result<()>>),
}

impl Spawner {
    pub(crate) fn start() -> Spawner {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sandbox-spawner".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        Job::Spawn(mut cmd, reply) => {
                            let _ = reply.send(cmd.spawn());
                        }
                        Job::EnterNetns(path, reply) => {
                            let _ = reply.send(crate::netns::enter(&path));
                        }
                    }
                }
            })
            .expect("a thread can be started");
        Spawner { tx }
    }

    pub(crate) fn spawn(&self, cmd: Command) -> std::io::Result<Child> {
        let (reply, answer) = mpsc::channel();
        self.tx
            .send(Job::Spawn(cmd, reply))
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
        answer
            .recv()
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
    }

    /// Moves the spawner's thread into the network namespace at `path`: every process it
    /// starts from then on is in it.
    pub(crate) fn enter_netns(&self, path: &Path) -> std::io::Result<()> {
        let (reply, answer) = mpsc::channel();
        self.tx
            .send(Job::EnterNetns(path.to_path_buf(), reply))
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
        answer
            .recv()
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
    }
}
