//! Starting instance processes and noticing when they end.
//!
//! Every instance is forked by one long-lived thread, "lifeboat-spawner". The parent-death
//! signal set by the shim fires when the *thread* that forked the child exits, so forking from
//! a short-lived thread (such as tokio's blocking pool) would kill instances at random; the
//! spawner lives as long as the process.
//!
//! Each instance runs as the leader of its own process group, so a signal to the group reaches
//! everything it started. When the leader exits, a waiter thread looks at the exit without
//! reaping it and hands the zombie over as an [`ExitedLeader`]: while it is unreaped, the group
//! id cannot be given to anyone else, so the supervisor can stop the rest of the group (see
//! `group.rs`) and reap the leader only once the group is empty.

use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{OnceLock, mpsc};

use nix::sys::signal::Signal;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use tokio::sync::oneshot;

use crate::group::{ProcessGroup, signal_group};
use crate::logs::{SharedLog, copy_pipe};
use crate::types::{ExitInfo, InstanceSpec, SupervisorConfig};

struct Launch {
    command: Command,
    reply: oneshot::Sender<io::Result<Child>>,
}

fn spawner() -> io::Result<&'static mpsc::Sender<Launch>> {
    static SPAWNER: OnceLock<Result<mpsc::Sender<Launch>, String>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Launch>();
            std::thread::Builder::new()
                .name("lifeboat-spawner".into())
                .spawn(move || run_spawner(rx))
                .map(|_| tx)
                .map_err(|err| err.to_string())
        })
        .as_ref()
        .map_err(|err| io::Error::other(format!("cannot start the lifeboat-spawner thread: {err}")))
}

fn run_spawner(requests: mpsc::Receiver<Launch>) {
    for mut launch in requests {
        let spawned = launch.command.spawn();
        if let Err(Ok(mut orphan)) = launch.reply.send(spawned) {
            // Nobody waits for this child any more: do not leave it running unsupervised.
            signal_group(orphan.id(), Signal::SIGKILL);
            let _ = orphan.wait();
        }
    }
}

/// Forks `command` on the spawner thread.
pub(crate) async fn spawn(command: Command) -> io::Result<Child> {
    let (reply, answer) = oneshot::channel();
    spawner()?
        .send(Launch { command, reply })
        .map_err(|_| io::Error::other("the lifeboat-spawner thread is gone"))?;
    answer
        .await
        .map_err(|_| io::Error::other("the lifeboat-spawner thread dropped the request"))?
}

/// The shell script an instance runs: `exec <command>` so the command itself becomes the group
/// leader and gets signals directly, unless the command is a compound shell command.
pub(crate) fn shell_script(command: &str) -> String {
    let compound = command.contains([';', '&', '|', '\n', '(', ')', '`'])
        || command.trim_start().starts_with("exec ");
    if compound {
        command.to_string()
    } else {
        format!("exec {command}")
    }
}

/// The full command line and environment of one start of an instance.
pub(crate) fn instance_command(
    config: &SupervisorConfig,
    spec: &InstanceSpec,
    site_dir: &std::path::Path,
) -> Command {
    let script = shell_script(&spec.command);
    let mut command = match &config.shim {
        Some(shim) => {
            let mut c = Command::new(&shim.program);
            c.args(&shim.args)
                .args(spec.sandbox.to_args())
                .arg("--")
                .args(["sh", "-c", &script]);
            c
        }
        None if !spec.sandbox.is_empty() => {
            // Only the shim can set up private mounts; running the command without them would
            // show it the wrong state, so it fails loudly instead.
            let mut c = Command::new("sh");
            c.args([
                "-c",
                "echo 'lifeboat: this instance needs private mounts, which only the lifeboat shim sets up' >&2; exit 70",
            ]);
            c
        }
        None => {
            let mut c = Command::new("sh");
            c.args(["-c", &script]);
            c
        }
    };
    if let Some(base) = &config.base_env {
        // Nothing of lifeboat's own environment (its vault password, S3 credentials) reaches
        // the instance unless it is in the base.
        command.env_clear().envs(base.iter().map(|(k, v)| (k, v)));
    }
    command
        .current_dir(site_dir)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env("PORT", spec.port.to_string())
        .env("LIFEBOAT_INSTANCE", &spec.id)
        .env("LIFEBOAT_SITE", &config.site)
        .env("LIFEBOAT_SITE_DIR", site_dir)
        .env("LIFEBOAT_SUPERVISOR_PID", std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    command
}

/// A started instance process.
pub(crate) struct RunningProcess {
    pub pid: u32,
    /// Resolves when the process has exited, with the process still unreaped.
    pub exit: oneshot::Receiver<ExitedLeader>,
}

/// The leader of an instance's process group after it exited, not yet reaped. While this
/// zombie exists its pid, and so the group id, cannot be given to another process: signalling
/// the group reaches only what the instance started.
///
/// Dropped without [`ExitedLeader::reap`] (nobody finished stopping the group, e.g. the
/// supervisor is shutting down), it kills whatever is left of the group and reaps the leader,
/// so no process is left running unsupervised.
pub(crate) struct ExitedLeader {
    child: Option<Child>,
    pub exit: ExitInfo,
}

impl ExitedLeader {
    /// The process group it led, safe to signal until [`ExitedLeader::reap`]; `None` if the
    /// leader could not be kept unreaped (its group was killed at once then).
    pub fn group(&self) -> Option<ProcessGroup> {
        self.child
            .as_ref()
            .map(|child| ProcessGroup { pgid: child.id() })
    }

    /// Reaps the leader. From now on its group id may name another process's group: never
    /// signal it again.
    pub fn reap(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait(); // a zombie: returns at once
        }
    }
}

impl Drop for ExitedLeader {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(child.id(), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// Starts copying the child's output into `log` and waiting for its exit.
pub(crate) fn watch(mut child: Child, log: &SharedLog) -> io::Result<RunningProcess> {
    let pid = child.id();
    if let Some(stdout) = child.stdout.take() {
        let log = log.clone();
        std::thread::Builder::new()
            .name(format!("lifeboat-log-{pid}"))
            .spawn(move || copy_pipe(stdout, log))?;
    }
    if let Some(stderr) = child.stderr.take() {
        let log = log.clone();
        std::thread::Builder::new()
            .name(format!("lifeboat-log-{pid}"))
            .spawn(move || copy_pipe(stderr, log))?;
    }
    let (tx, exit) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("lifeboat-wait-{pid}"))
        .spawn(move || {
            // If nobody listens any more, dropping the leader kills what is left of its group.
            let _ = tx.send(wait_without_reaping(child));
        })?;
    Ok(RunningProcess { pid, exit })
}

/// Waits for the child to exit and returns it unreaped.
fn wait_without_reaping(mut child: Child) -> ExitedLeader {
    let pid = Pid::from_raw(child.id() as i32);
    let exit = loop {
        // WNOWAIT: look at the exit but leave the zombie in place.
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(WaitStatus::Exited(_, code)) => {
                break ExitInfo {
                    code: Some(code),
                    signal: None,
                };
            }
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                break ExitInfo {
                    code: None,
                    signal: Some(signal as i32),
                };
            }
            // Cannot happen for WEXITED; should it, reaping tells how it ended (the group is
            // then killed at once, as the zombie is gone).
            _ => {
                signal_group(child.id(), Signal::SIGKILL);
                let exit = child.wait().map_or(
                    ExitInfo {
                        code: None,
                        signal: None,
                    },
                    exit_info,
                );
                return ExitedLeader { child: None, exit };
            }
        }
    };
    ExitedLeader {
        child: Some(child),
        exit,
    }
}

fn exit_info(status: ExitStatus) -> ExitInfo {
    ExitInfo {
        code: status.code(),
        signal: status.signal(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_commands_are_execed_and_compound_ones_left_alone() {
        assert_eq!(shell_script("./run.sh --port 1"), "exec ./run.sh --port 1");
        assert_eq!(shell_script("a && b"), "a && b");
        assert_eq!(shell_script("a; b"), "a; b");
        assert_eq!(shell_script("exec a"), "exec a");
        assert_eq!(shell_script("a | b"), "a | b");
    }
}
