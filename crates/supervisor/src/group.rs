//! An instance's process group as a whole: which of its processes still run, and stopping all
//! of them (SIGTERM, time to finish, then SIGKILL) before the instance may start again.
//!
//! A pre-forking server (gunicorn, unicorn, Apache prefork, ...) is a master and workers that
//! share one listening socket; every one of them is in the instance's process group. When the
//! master dies, its workers may be halfway through writing responses, and a new master cannot
//! bind the port while they hold the socket. So the group is stopped the way a graceful stop
//! does it, and the instance restarts only once the group is empty.
//!
//! Signalling a group by id is only safe while its leader is not reaped: the unreaped leader
//! (alive or a zombie) keeps its pid, and so the group id, from being given to anyone else.
//! This module never reaps anything; its callers keep that promise.

use std::future::Future;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How often the group is looked at while waiting for it to empty. Only while an instance is
/// being stopped, and a look is one pass over `/proc`.
const POLL: Duration = Duration::from_millis(20);

/// How long the processes of a group get to disappear after SIGKILL before the supervisor stops
/// waiting (a process stuck in the kernel, e.g. on a dead NFS mount, may never go).
pub(crate) const AFTER_SIGKILL: Duration = Duration::from_secs(5);

/// What the stop procedure needs from a process group; the real one is [`ProcessGroup`].
pub(crate) trait Members {
    /// Sends `signal` to every process of the group.
    fn signal(&self, signal: Signal);
    /// How many of its processes still run (zombies have exited and do not count).
    fn running(&self) -> Result<usize, procfs::ProcError>;
}

/// The process group `pgid` of an instance. Only signal it while its leader is not reaped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcessGroup {
    pub pgid: u32,
}

impl Members for ProcessGroup {
    fn signal(&self, signal: Signal) {
        signal_group(self.pgid, signal);
    }

    fn running(&self) -> Result<usize, procfs::ProcError> {
        Ok(running_in_group(self.pgid)?.len())
    }
}

/// Sends `signal` to every process of the group `pgid`; a group that is already gone is fine.
pub(crate) fn signal_group(pgid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pgid) else { return };
    if raw <= 1 {
        return; // never signal "every process" or init by mistake
    }
    let _ = killpg(Pid::from_raw(raw), signal);
}

/// The pids of the processes of group `pgid` that have not exited (zombies are left out: they
/// hold no socket or file any more, and one that init never reaps must not hold up a restart).
pub(crate) fn running_in_group(pgid: u32) -> Result<Vec<u32>, procfs::ProcError> {
    let mut members = Vec::new();
    for process in procfs::process::all_processes()? {
        // A process that exits while we look is simply not a member any more.
        let Ok(stat) = process.and_then(|p| p.stat()) else {
            continue;
        };
        if u32::try_from(stat.pgrp) == Ok(pgid) && !matches!(stat.state, 'Z' | 'X' | 'x') {
            members.extend(u32::try_from(stat.pid).ok());
        }
    }
    Ok(members)
}

/// How stopping a group ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GroupStop {
    /// Nothing of the group was running; nothing was signalled.
    AlreadyEmpty,
    /// Every process exited within the timeout after SIGTERM.
    Finished,
    /// `left` processes were still running at the timeout and got SIGKILL; `gone` says whether
    /// they had disappeared [`AFTER_SIGKILL`] later.
    Killed { left: usize, gone: bool },
    /// The processes could not be listed (no `/proc`?): SIGTERM, the whole timeout, SIGKILL.
    Unknown(String),
}

/// Stops every process of `group`: `signal` (SIGTERM, or the process's own stop signal;
/// calling `on_term` with how many run, just before), up to `timeout` for all of them to exit,
/// then SIGKILL (calling `on_kill` with how many are left, just before). Returns once the group
/// is empty, or [`AFTER_SIGKILL`] after the SIGKILL. The leader must not be reaped before this
/// returns.
pub(crate) async fn stop_group(
    group: &impl Members,
    signal: Signal,
    timeout: Duration,
    on_term: impl FnOnce(usize),
    on_kill: impl FnOnce(usize),
) -> GroupStop {
    match group.running() {
        Ok(0) => return GroupStop::AlreadyEmpty,
        Ok(running) => on_term(running),
        Err(err) => {
            on_term(0);
            group.signal(signal);
            tokio::time::sleep(timeout).await;
            on_kill(0);
            group.signal(Signal::SIGKILL);
            return GroupStop::Unknown(err.to_string());
        }
    }
    group.signal(signal);
    if within(timeout, until_empty(group)).await {
        return GroupStop::Finished;
    }
    let left = group.running().unwrap_or(0);
    on_kill(left);
    group.signal(Signal::SIGKILL);
    let gone = within(AFTER_SIGKILL, until_empty(group)).await;
    GroupStop::Killed { left, gone }
}

async fn within(limit: Duration, work: impl Future<Output = ()>) -> bool {
    tokio::time::timeout(limit, work).await.is_ok()
}

/// Resolves once no process of the group runs (or they can no longer be listed).
async fn until_empty(group: &impl Members) {
    while group.running().is_ok_and(|n| n > 0) {
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::time::Instant;

    use super::*;

    /// A group of one process that exits `exits_after` SIGTERM (never if `None`) and at once
    /// on SIGKILL; remembers when it got which signal.
    struct FakeGroup {
        started: Instant,
        exits_after: Option<Duration>,
        signals: Mutex<Vec<(Duration, Signal)>>,
        empty: bool,
    }

    impl FakeGroup {
        fn new(exits_after: Option<Duration>) -> FakeGroup {
            FakeGroup {
                started: Instant::now(),
                exits_after,
                signals: Mutex::new(Vec::new()),
                empty: false,
            }
        }

        fn signals(&self) -> Vec<(Duration, Signal)> {
            self.signals.lock().unwrap().clone()
        }
    }

    impl Members for FakeGroup {
        fn signal(&self, signal: Signal) {
            self.signals
                .lock()
                .unwrap()
                .push((self.started.elapsed(), signal));
        }

        fn running(&self) -> Result<usize, procfs::ProcError> {
            let now = self.started.elapsed();
            let gone = self.empty
                || self.signals().iter().any(|(at, signal)| match signal {
                    Signal::SIGKILL => true,
                    Signal::SIGTERM => self.exits_after.is_some_and(|d| now >= *at + d),
                    _ => false,
                });
            Ok(usize::from(!gone))
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_group_that_finishes_in_time_gets_only_sigterm() {
        let group = FakeGroup::new(Some(Duration::from_millis(300)));
        let mut terminated_with = None;
        let outcome = stop_group(
            &group,
            Signal::SIGTERM,
            TIMEOUT,
            |running| terminated_with = Some(running),
            |_| panic!("no SIGKILL"),
        )
        .await;
        assert_eq!(outcome, GroupStop::Finished);
        assert_eq!(terminated_with, Some(1));
        assert_eq!(group.signals(), [(Duration::ZERO, Signal::SIGTERM)]);
        let took = group.started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took <= Duration::from_millis(300) + POLL,
            "returned {took:?} after SIGTERM, not as soon as the group was empty"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_that_ignores_sigterm_gets_sigkill_at_the_timeout_and_not_before() {
        let group = FakeGroup::new(None);
        let mut killed_with_left = None;
        let outcome = stop_group(
            &group,
            Signal::SIGTERM,
            TIMEOUT,
            |_| {},
            |left| killed_with_left = Some(left),
        )
        .await;
        assert_eq!(
            outcome,
            GroupStop::Killed {
                left: 1,
                gone: true
            }
        );
        assert_eq!(killed_with_left, Some(1));
        assert_eq!(
            group.signals(),
            [
                (Duration::ZERO, Signal::SIGTERM),
                (TIMEOUT, Signal::SIGKILL)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_group_is_not_signalled() {
        let group = FakeGroup {
            empty: true,
            ..FakeGroup::new(None)
        };
        let outcome = stop_group(
            &group,
            Signal::SIGTERM,
            TIMEOUT,
            |_| panic!("no SIGTERM"),
            |_| panic!("no SIGKILL"),
        )
        .await;
        assert_eq!(outcome, GroupStop::AlreadyEmpty);
        assert!(group.signals().is_empty());
        assert_eq!(group.started.elapsed(), Duration::ZERO);
    }

    #[test]
    fn this_process_group_has_this_process_running() {
        let me = std::process::id();
        let pgid = nix::unistd::getpgrp().as_raw() as u32;
        assert!(running_in_group(pgid).unwrap().contains(&me));
    }
}
