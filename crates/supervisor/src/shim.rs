//! The instance shim: the last step between lifeboat and an instance's command.
//!
//! `lifeboat __instance [--bind FROM TO]... -- CMD...` calls [`exec_instance`], which
//!
//! 1. gives the process a private view of the file system when it has mounts to make: a mount
//!    namespace of its own (inside a user namespace that maps only its own user when lifeboat
//!    does not run as root), in which each `FROM` is bind-mounted onto `TO`. This is how a
//!    restored state appears at the paths the app always uses, for this instance only;
//! 2. asks the kernel to SIGKILL this process when its parent (the lifeboat spawner thread)
//!    dies, and checks the parent is still there;
//! 3. replaces itself with the command.
//!
//! The death signal survives `exec`, so even `kill -9` of lifeboat leaves no instance behind.
//! This module never prints; on failure it returns the error to the caller, which writes it to
//! the instance's log and exits.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid, getppid};

/// Exit code of the shim when lifeboat was already gone before the death signal was armed.
pub const PARENT_GONE_EXIT_CODE: i32 = 75;

/// What the shim sets up before it runs the command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// Bind mounts made in a private mount namespace, in order: `(from, to)`. Both must exist
    /// and be of the same kind (file or directory).
    pub binds: Vec<(PathBuf, PathBuf)>,
}

impl Sandbox {
    /// Whether the shim has nothing to set up.
    pub fn is_empty(&self) -> bool {
        self.binds.is_empty()
    }

    /// The shim's command-line arguments that describe this sandbox (they go before `--`).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        for (from, to) in &self.binds {
            args.push(OsString::from("--bind"));
            args.push(from.clone().into_os_string());
            args.push(to.clone().into_os_string());
        }
        args
    }

    /// The sandbox from `--bind FROM TO` values, flattened in order.
    pub fn from_bind_values(values: Vec<PathBuf>) -> io::Result<Sandbox> {
        if !values.len().is_multiple_of(2) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "--bind takes two paths: FROM TO",
            ));
        }
        let mut it = values.into_iter();
        let mut binds = Vec::new();
        while let (Some(from), Some(to)) = (it.next(), it.next()) {
            binds.push((from, to));
        }
        Ok(Sandbox { binds })
    }
}

/// Sets up `sandbox`, arms the parent-death signal (SIGKILL) and execs `argv` (program then
/// arguments). Returns only if something failed, with the reason. If lifeboat died before the
/// signal was armed (this process was already re-parented), exits at once with
/// [`PARENT_GONE_EXIT_CODE`] instead of running an orphan.
///
/// Must be called while the process has a single thread (user namespaces require it): call it
/// before starting any runtime.
///
/// The expected parent is taken from `$LIFEBOAT_SUPERVISOR_PID`, which the supervisor sets;
/// without it, being adopted by init (pid 1) counts as the parent being gone.
pub fn exec_instance<A, S>(sandbox: &Sandbox, argv: A) -> io::Error
where
    A: AsRef<[S]>,
    S: AsRef<OsStr>,
{
    let argv = argv.as_ref();
    let Some((program, args)) = argv.split_first() else {
        return io::Error::new(
            io::ErrorKind::InvalidInput,
            "no command given to run as the instance; pass it after `--`",
        );
    };
    if let Err(e) = enter_sandbox(sandbox) {
        return e;
    }
    // Armed after the namespaces: a change of credentials may clear the death signal.
    if let Err(errno) = prctl::set_pdeathsig(Signal::SIGKILL) {
        return io::Error::other(format!(
            "cannot arm the parent-death signal ({errno}); the instance would outlive lifeboat"
        ));
    }
    // The parent may have died between our fork and the prctl above; then the signal will
    // never come, so check by hand.
    let expected_parent = std::env::var("LIFEBOAT_SUPERVISOR_PID")
        .ok()
        .and_then(|pid| pid.parse::<i32>().ok());
    let parent = getppid().as_raw();
    let parent_gone = match expected_parent {
        Some(expected) => parent != expected,
        None => parent == 1,
    };
    if parent_gone {
        std::process::exit(PARENT_GONE_EXIT_CODE);
    }
    Command::new(program).args(args).exec()
}

/// Makes the sandbox's mounts in a mount namespace of this process's own. Nothing to do for
/// an empty sandbox.
fn enter_sandbox(sandbox: &Sandbox) -> io::Result<()> {
    if sandbox.is_empty() {
        return Ok(());
    }
    private_mount_namespace()?;
    for (from, to) in &sandbox.binds {
        bind(from, to)?;
    }
    Ok(())
}

/// Moves this process into a mount namespace of its own whose mounts never propagate back
/// to the machine. As root that is all; as another user it needs a user namespace too, in
/// which the process keeps its own uid and gid (mapped to themselves) and gets the right to
/// mount only inside it; the capabilities that come with it are dropped by the `exec`.
fn private_mount_namespace() -> io::Result<()> {
    let (uid, gid) = (Uid::effective(), Gid::effective());
    if uid.is_root() {
        unshare(CloneFlags::CLONE_NEWNS).map_err(|e| {
            io::Error::other(format!(
                "cannot make a private mount namespace ({e}); the kernel refused unshare(CLONE_NEWNS)"
            ))
        })?;
    } else {
        unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS).map_err(|e| {
            io::Error::other(format!(
                "cannot make a private mount namespace as user {uid} ({e}); this machine does \
                 not allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone \
                 or user.max_user_namespaces), so run lifeboat as root or allow them"
            ))
        })?;
        // setgroups must be denied before an unprivileged process may write its gid_map.
        write_proc("/proc/self/setgroups", "deny")?;
        write_proc("/proc/self/uid_map", &format!("{uid} {uid} 1"))?;
        write_proc("/proc/self/gid_map", &format!("{gid} {gid} 1"))?;
    }
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| {
        io::Error::other(format!(
            "cannot make the mounts of this instance private ({e})"
        ))
    })
}

fn write_proc(path: &str, what: &str) -> io::Result<()> {
    std::fs::write(path, what)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot write {what:?} to {path}: {e}")))
}

fn bind(from: &Path, to: &Path) -> io::Result<()> {
    mount(
        Some(from),
        to,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        io::Error::other(format!(
            "cannot show {} at {} (bind mount failed: {e}); both must exist and be of the same kind",
            from.display(),
            to.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_goes_through_the_command_line_unchanged() {
        let sandbox = Sandbox {
            binds: vec![
                ("/s/.lifeboat/states/n/db".into(), "/s/db".into()),
                ("/a b/c:d".into(), "/x y/--z".into()),
            ],
        };
        let args = sandbox.to_args();
        assert_eq!(args[0], "--bind");
        let values: Vec<PathBuf> = args
            .into_iter()
            .filter(|a| a != "--bind")
            .map(PathBuf::from)
            .collect();
        assert_eq!(Sandbox::from_bind_values(values).unwrap(), sandbox);
        assert!(Sandbox::from_bind_values(vec!["/only-one".into()]).is_err());
    }
}
