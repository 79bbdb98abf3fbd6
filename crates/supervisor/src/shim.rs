//! The instance shim: the last step between lifeboat and an instance's command.
//!
//! `lifeboat __instance -- CMD...` calls [`exec_instance`], which asks the kernel to SIGKILL
//! this process when its parent (the lifeboat spawner thread) dies, and then replaces itself
//! with the command. The death signal survives `exec`, so even `kill -9` of lifeboat leaves no
//! instance behind. This module never prints; on failure it returns the error to the caller.

use std::ffi::OsStr;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::unistd::getppid;

/// Exit code of the shim when lifeboat was already gone before the death signal was armed.
pub const PARENT_GONE_EXIT_CODE: i32 = 75;

/// Arms the parent-death signal (SIGKILL) and execs `argv` (program then arguments). Returns
/// only if something failed, with the reason. If lifeboat died before the signal was armed (this
/// process was already re-parented), exits at once with [`PARENT_GONE_EXIT_CODE`] instead of
/// running an orphan.
///
/// The expected parent is taken from `$LIFEBOAT_SUPERVISOR_PID`, which the supervisor sets;
/// without it, being adopted by init (pid 1) counts as the parent being gone.
pub fn exec_instance<A, S>(argv: A) -> io::Error
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
