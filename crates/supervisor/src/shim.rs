//! The instance shim: the last step between lifeboat and an instance's command.
//!
//! `lifeboat __instance [--join-netns PID] [--bind FROM TO]... [--hide DIR]... [--cgroup DIR]...
//! [--user NAME] [--deny DIR] -- CMD...` calls [`exec_instance`], which, in this order:
//!
//! 0. joins the network namespace of process `PID` (and, when that namespace belongs to a user
//!    namespace other than this process's, that user namespace first: how an ordinary user's
//!    simulation puts its sandbox in a network of its own);
//! 1. gives the process a private view of the file system when it has mounts to make: a mount
//!    namespace of its own (inside a user namespace that maps only its own user when lifeboat
//!    does not run as root), in which each `FROM` is bind-mounted onto `TO` (a restored state
//!    shown at the paths the app always uses) and each hidden dir is covered by an empty,
//!    read-only tmpfs (Lifeboat's own `.lifeboat`: its key, vault, socket and store);
//! 2. joins its cgroups (resource limits), while it may still;
//! 3. becomes the site's unprivileged user (as root);
//! 4. denies itself and its children, with Landlock, every access to the denied dir and every
//!    signal to processes outside the sandbox (when it runs as Lifeboat's own user, this is
//!    what keeps the app away from Lifeboat through `/proc/PID/root` of its other processes);
//! 5. asks the kernel to SIGKILL it when its parent (the lifeboat spawner thread) dies, and
//!    checks the parent is still there;
//! 6. replaces itself with the command.
//!
//! The death signal survives `exec`, so even `kill -9` of lifeboat leaves no instance behind.
//! This module never prints; on failure it returns the error to the caller, which writes it to
//! the instance's log and exits. Nothing runs if any step fails: a sandbox half made is no
//! sandbox.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid, User, getppid};

/// Exit code of the shim when lifeboat was already gone before the death signal was armed.
pub const PARENT_GONE_EXIT_CODE: i32 = 75;

/// What the shim sets up before it runs the command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// Bind mounts made in a private mount namespace, in order: `(from, to)`. Both must exist
    /// and be of the same kind (file or directory).
    pub binds: Vec<(PathBuf, PathBuf)>,
    /// Directories covered, in the private mount namespace, by an empty read-only tmpfs.
    pub hide: Vec<PathBuf>,
    /// cgroup directories whose `cgroup.procs` the process joins (resource limits).
    pub cgroups: Vec<PathBuf>,
    /// The user to become, by name, with its groups (only as root).
    pub user: Option<String>,
    /// A directory the command may not read, write or create anything in (Landlock); every
    /// other file stays as the file system allows.
    pub deny: Option<PathBuf>,
    /// A process whose network namespace (with its user namespace, when that is another) the
    /// command runs in.
    pub join_netns: Option<u32>,
}

impl Sandbox {
    /// Whether the shim has nothing to set up.
    pub fn is_empty(&self) -> bool {
        *self == Sandbox::default()
    }

    /// Whether the process needs a mount namespace of its own.
    fn needs_namespace(&self) -> bool {
        !self.binds.is_empty() || !self.hide.is_empty()
    }

    /// The shim's command-line arguments that describe this sandbox (they go before `--`).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        if let Some(pid) = self.join_netns {
            args.push("--join-netns".into());
            args.push(pid.to_string().into());
        }
        for (from, to) in &self.binds {
            args.push(OsString::from("--bind"));
            args.push(from.clone().into_os_string());
            args.push(to.clone().into_os_string());
        }
        for dir in &self.hide {
            args.push("--hide".into());
            args.push(dir.clone().into_os_string());
        }
        for dir in &self.cgroups {
            args.push("--cgroup".into());
            args.push(dir.clone().into_os_string());
        }
        if let Some(user) = &self.user {
            args.push("--user".into());
            args.push(user.into());
        }
        if let Some(dir) = &self.deny {
            args.push("--deny".into());
            args.push(dir.clone().into_os_string());
        }
        args
    }

    /// Reads what [`Sandbox::to_args`] wrote, up to `--`; returns the sandbox and the
    /// command after `--`.
    pub fn from_args(args: &[OsString]) -> io::Result<(Sandbox, &[OsString])> {
        let mut sandbox = Sandbox::default();
        let mut i = 0;
        let value = |i: usize, what: &str| -> io::Result<PathBuf> {
            args.get(i).map(PathBuf::from).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{what} needs a value"))
            })
        };
        while let Some(arg) = args.get(i) {
            match arg.to_str() {
                Some("--") => return Ok((sandbox, &args[i + 1..])),
                Some("--bind") => {
                    sandbox
                        .binds
                        .push((value(i + 1, "--bind")?, value(i + 2, "--bind")?));
                    i += 3;
                }
                Some("--hide") => {
                    sandbox.hide.push(value(i + 1, "--hide")?);
                    i += 2;
                }
                Some("--cgroup") => {
                    sandbox.cgroups.push(value(i + 1, "--cgroup")?);
                    i += 2;
                }
                Some("--user") => {
                    let user = value(i + 1, "--user")?;
                    sandbox.user = Some(user.to_string_lossy().into_owned());
                    i += 2;
                }
                Some("--deny") => {
                    sandbox.deny = Some(value(i + 1, "--deny")?);
                    i += 2;
                }
                Some("--join-netns") => {
                    let pid = value(i + 1, "--join-netns")?;
                    let pid = pid.to_str().and_then(|p| p.parse().ok()).ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("--join-netns takes a process id, not {pid:?}"),
                        )
                    })?;
                    sandbox.join_netns = Some(pid);
                    i += 2;
                }
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("unexpected {arg:?}; pass the command to run after `--`"),
                    ));
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no command given to run as the instance; pass it after `--`",
        ))
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
/// The expected parent is taken from `$LIFEBOAT_SUPERVISOR_PID`, which the supervisor sets
/// (and which the command does not get); without it, being adopted by init (pid 1) counts as
/// the parent being gone.
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
    // Armed after the sandbox: a change of user clears the death signal.
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
    Command::new(program)
        .args(args)
        .env_remove("LIFEBOAT_SUPERVISOR_PID")
        .exec()
}

/// Makes the sandbox, step by step (see the module doc). Nothing to do for an empty one.
fn enter_sandbox(sandbox: &Sandbox) -> io::Result<()> {
    if let Some(pid) = sandbox.join_netns {
        join_network_of(pid)?;
    }
    if sandbox.needs_namespace() {
        private_mount_namespace()?;
        for (from, to) in &sandbox.binds {
            bind(from, to)?;
        }
        for dir in &sandbox.hide {
            hide(dir)?;
        }
    }
    for dir in &sandbox.cgroups {
        join_cgroup(dir)?;
    }
    if let Some(user) = &sandbox.user {
        become_user(user)?;
    }
    if let Some(dir) = &sandbox.deny {
        crate::landlock::deny_beneath(dir)?;
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

/// Moves this process into the network namespace of process `pid`. When that namespace belongs
/// to another user namespace (one an ordinary user made, mapping only their own uid), joins it
/// first: that gives the right to join its network, and the `exec` that follows drops every
/// capability it gave, as the process keeps its own non-root uid.
fn join_network_of(pid: u32) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let open = |kind: &str| {
        let path = format!("/proc/{pid}/ns/{kind}");
        std::fs::File::open(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open {path} to join its network ({e}); is process {pid} running?"),
            )
        })
    };
    let (user, net) = (open("user")?, open("net")?);
    let same = |a: &std::fs::File, own: &str| -> io::Result<bool> {
        let (a, b) = (a.metadata()?, std::fs::metadata(own)?);
        Ok(a.dev() == b.dev() && a.ino() == b.ino())
    };
    if !same(&user, "/proc/self/ns/user")? {
        nix::sched::setns(&user, CloneFlags::CLONE_NEWUSER).map_err(|e| {
            io::Error::other(format!(
                "cannot join the user namespace of process {pid} ({e}); only its owner can"
            ))
        })?;
    }
    nix::sched::setns(&net, CloneFlags::CLONE_NEWNET).map_err(|e| {
        io::Error::other(format!(
            "cannot join the network namespace of process {pid} ({e})"
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

/// Covers `dir` with an empty, read-only tmpfs nobody may enter: what was there is out of
/// reach of this process and its children, and `dir` can not be renamed or removed from here
/// (it is a mount point).
fn hide(dir: &Path) -> io::Result<()> {
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=000,size=4k"),
    )
    .map_err(|e| {
        io::Error::other(format!(
            "cannot hide {} from the instance (tmpfs mount failed: {e})",
            dir.display()
        ))
    })
}

/// Moves this process into the cgroup `dir` (its children follow).
fn join_cgroup(dir: &Path) -> io::Result<()> {
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot join the cgroup {} (writing {}: {e}); its resource limits would not apply",
                dir.display(),
                procs.display()
            ),
        )
    })
}

/// Becomes `name` (uid, primary group and supplementary groups), for good: as root only.
fn become_user(name: &str) -> io::Result<()> {
    let user = User::from_name(name)
        .map_err(|e| io::Error::other(format!("cannot look up the user {name}: {e}")))?
        .ok_or_else(|| {
            io::Error::other(format!(
                "there is no user {name} on this machine; create it or name another in [isolation] user"
            ))
        })?;
    let cname = CString::new(name).map_err(|_| io::Error::other("a user name holds a NUL"))?;
    let groups = nix::unistd::getgrouplist(&cname, user.gid)
        .map_err(|e| io::Error::other(format!("cannot list the groups of {name}: {e}")))?;
    let fail = |what: &str, e: nix::Error| {
        io::Error::other(format!("cannot {what} to run as {name}: {e}"))
    };
    // Groups first, then the gid, then the uid: after setuid nothing else may change.
    nix::unistd::setgroups(&groups).map_err(|e| fail("set the groups", e))?;
    nix::unistd::setgid(user.gid).map_err(|e| fail("set the group", e))?;
    nix::unistd::setuid(user.uid).map_err(|e| fail("set the user", e))?;
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(io::Error::other(format!(
            "running as {name} could still become root again; refusing to run"
        )));
    }
    Ok(())
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
            hide: vec!["/s/.lifeboat".into()],
            cgroups: vec!["/sys/fs/cgroup/memory/lifeboat/s/web-1".into()],
            user: Some("lifeboat-s".into()),
            deny: Some("/s/.lifeboat".into()),
            join_netns: Some(4242),
        };
        let mut args = sandbox.to_args();
        args.extend(["--".into(), "sh".into(), "-c".into(), "--bind".into()]);
        let (back, command) = Sandbox::from_args(&args).unwrap();
        assert_eq!(back, sandbox);
        assert_eq!(command, ["sh", "-c", "--bind"]);
        let half: Vec<OsString> = vec!["--bind".into(), "/only-one".into()];
        assert!(Sandbox::from_args(&half).is_err());
        let no_command: Vec<OsString> = vec!["--hide".into(), "/x".into()];
        assert!(Sandbox::from_args(&no_command).is_err());
        let not_a_pid: Vec<OsString> = vec!["--join-netns".into(), "x".into(), "--".into()];
        let err = Sandbox::from_args(&not_a_pid).unwrap_err();
        assert!(err.to_string().contains("process id"), "{err}");
    }
}
