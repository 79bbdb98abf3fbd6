//! Resource limits through the kernel's cgroups: one cgroup per run of an instance, so that a
//! memory hog, a busy loop or a fork bomb in one instance hits its own ceiling and not
//! Lifeboat's or the other instances'.
//!
//! Layout: `<Lifeboat's own cgroup>/lifeboat-<site>-<hash>/<instance>`, in the v2 hierarchy or
//! in each v1 hierarchy that holds a controller we use (`memory`, `pids`, `cpu`, `cpuacct`).
//! Beneath Lifeboat's own cgroup and not at the root, so that it works where Lifeboat was
//! given a part of the tree (systemd's `Delegate=yes`) and stays inside whatever limits its
//! own cgroup has. The instance's cgroup is made before each start, joined by the shim before
//! the command runs (so nothing the instance starts is ever outside it), and removed once the
//! run is over; processes left in it then (ones that left the instance's process group with
//! `setsid`) are killed, because the instance they belong to is gone. A Lifeboat killed with
//! `kill -9` leaves its cgroups behind: the next start of the same site empties and removes
//! them ([`SiteCgroups::clean_stale`]).
//!
//! Writing the few cgroup files directly rather than using a crate: `cgroups-rs`, the kept
//! one, brings a D-Bus stack (zbus) and a second `nix`, and creates cgroups from the root of
//! each hierarchy unless told otherwise; what is needed here is a dozen files per version.
//!
//! Never: kill a process that is not in a cgroup of this site; remove a cgroup that still has
//! processes (the kernel refuses anyway); keep an instance from starting because its limits
//! cannot be set (it runs without them and its status says why: limits protect the site's
//! availability, refusing to run would end it); print.

mod instance;
mod locate;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;

pub(crate) use instance::InstanceCgroup;
use instance::{InstanceDir, kill_members, members, write_limits};
pub(crate) use locate::Controller;
use locate::{is_site_dir_name, locate, site_dir_name};

use crate::types::ResourceLimits;

/// How long the processes left in a cgroup get to disappear after SIGKILL.
const EMPTY_WITHIN: Duration = Duration::from_secs(5);

/// How long `rmdir` of an emptied cgroup is retried: the kernel may still be tearing the last
/// process down for a moment after it left `cgroup.procs`.
const RMDIR_WITHIN: Duration = Duration::from_secs(2);

const POLL: Duration = Duration::from_millis(20);

/// A cgroup of another site that has been empty at least this long is a leftover of a
/// Lifeboat killed with `kill -9` that never came back; a younger empty one may be a start in
/// progress (made, not yet joined).
const ABANDONED_AFTER: Duration = Duration::from_secs(60);

/// The leaf a v2 Lifeboat moves itself into when it is alone in its cgroup (see
/// [`delegate_v2`]).
const SUPERVISOR_LEAF: &str = "lifeboat-supervisor";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// Why cgroups can not be used. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CgroupError {
    #[error(
        "this machine offers no cgroup controller for memory, processes or CPU that Lifeboat \
         can see (none in /proc/self/cgroup and /proc/self/mountinfo); run it on a Linux \
         kernel with cgroups mounted under /sys/fs/cgroup"
    )]
    Unavailable,
    #[error(
        "Lifeboat may not create cgroups in {path} ({source}): the cgroup tree is read-only \
         here, or this part of it was not given to Lifeboat's user; run it as root (outside a \
         container that mounts cgroups read-only), or as a systemd service with Delegate=yes"
    )]
    NotPermitted { path: PathBuf, source: io::Error },
    #[error(
        "cgroup v2 gives controllers only to cgroups without processes of their own, and \
         {path}, where Lifeboat runs, holds {others} other process(es); start Lifeboat in a \
         cgroup of its own (a systemd service with Delegate=yes, or `systemd-run --scope -p \
         Delegate=yes lifeboat up`)"
    )]
    SharedCgroup { path: PathBuf, others: usize },
    #[error("cannot {what} {path} ({source})")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the instance id {0:?} can not name a cgroup")]
    BadId(String),
    #[error(
        "the cgroup {path} still holds {left} process(es) {within:?} after SIGKILL; it is \
         removed at the next start of the site"
    )]
    NotEmpty {
        path: PathBuf,
        left: usize,
        within: Duration,
    },
}

impl CgroupError {
    fn io(what: &'static str, path: &Path, source: io::Error) -> CgroupError {
        if is_refusal(&source) {
            CgroupError::NotPermitted {
                path: path.to_path_buf(),
                source,
            }
        } else {
            CgroupError::Io {
                what,
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

fn errno(e: &io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw)
}

/// The kernel said no: not root and not delegated, or a read-only cgroup file system.
fn is_refusal(e: &io::Error) -> bool {
    matches!(errno(e), Some(Errno::EACCES | Errno::EPERM | Errno::EROFS))
}

/// One hierarchy the site uses: the site's cgroup in it, and which of our controllers it holds.
#[derive(Debug, Clone)]
struct Hierarchy {
    version: Version,
    /// Lifeboat's own cgroup (or, on v2, the one it made room in), where the site's goes.
    base: PathBuf,
    /// `base/lifeboat-SITE-HASH`.
    site: PathBuf,
    controllers: Vec<Controller>,
}

/// A site's cgroups on this machine: made once at start, then one per instance run.
#[derive(Debug)]
pub(crate) struct SiteCgroups {
    hierarchies: Vec<Hierarchy>,
    /// Controllers for limits that can not be used here, each with the reason (no `pids`
    /// controller on this kernel; no permission in the `memory` hierarchy).
    missing: Vec<(Controller, String)>,
}

impl SiteCgroups {
    /// Finds where Lifeboat runs in each hierarchy and makes the site's cgroup beneath it.
    /// A hierarchy it may not use costs its controllers only (v1 mounts each apart, and only
    /// some may be delegated): the others still protect. Fails when none can be used.
    pub(crate) fn prepare(site: &str, site_dir: &Path) -> Result<SiteCgroups, CgroupError> {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let located = locate(&read("/proc/self/cgroup"), &read("/proc/self/mountinfo"));
        let name = site_dir_name(site, site_dir);
        let mut hierarchies = Vec::new();
        let mut missing: Vec<(Controller, String)> = Vec::new();
        let mut refused = None;
        // A controller is attached to one hierarchy at most: v2 or one of the v1 mounts.
        if let Some(own) = &located.v2 {
            let base = v2_base(own);
            let offered = offered_by_v2(&base);
            if !offered.is_empty() {
                match delegate_v2(&base, &offered) {
                    Ok(enabled) => {
                        for c in offered.iter().filter(|c| !enabled.contains(c)) {
                            let why = format!(
                                "the kernel refused to enable it in {}",
                                base.join("cgroup.subtree_control").display()
                            );
                            missing.push((*c, why));
                        }
                        hierarchies.push(Hierarchy {
                            version: Version::V2,
                            site: base.join(&name),
                            base,
                            controllers: enabled,
                        });
                    }
                    Err(err) => {
                        missing.extend(offered.iter().map(|c| (*c, err.to_string())));
                        refused = Some(err);
                    }
                }
            }
        }
        for (controllers, own) in located.v1 {
            hierarchies.push(Hierarchy {
                version: Version::V1,
                site: own.join(&name),
                base: own,
                controllers,
            });
        }
        hierarchies.retain(|h| match ensure_site(h) {
            Ok(()) => true,
            Err(err) => {
                let limiting = h.controllers.iter().filter(|c| **c != Controller::CpuAcct);
                missing.extend(limiting.map(|c| (*c, err.to_string())));
                refused = Some(err);
                false
            }
        });
        for c in [Controller::Memory, Controller::Pids, Controller::Cpu] {
            let placed = hierarchies.iter().any(|h| h.controllers.contains(&c))
                || missing.iter().any(|(m, _)| *m == c);
            if !placed {
                let why = "this machine has no cgroup controller for it (not mounted, or mounted \
                           where Lifeboat can not see its own cgroup)";
                missing.push((c, why.to_string()));
            }
        }
        let limits_something = hierarchies
            .iter()
            .any(|h| h.controllers.iter().any(|c| *c != Controller::CpuAcct));
        if !limits_something {
            return Err(refused.unwrap_or(CgroupError::Unavailable));
        }
        Ok(SiteCgroups {
            hierarchies,
            missing,
        })
    }

    /// Makes the cgroup of one run of instance `id` with `limits` set, emptying a leftover of
    /// the same name first. The shim joins [`InstanceCgroup::dirs`].
    pub(crate) fn create(
        &self,
        id: &str,
        limits: &ResourceLimits,
    ) -> Result<InstanceCgroup, CgroupError> {
        if id.is_empty() || id == "." || id == ".." || id.contains('/') {
            return Err(CgroupError::BadId(id.to_string()));
        }
        let mut made = InstanceCgroup {
            dirs: Vec::new(),
            not_enforced: self.not_enforced(limits),
        };
        for h in &self.hierarchies {
            let dir = h.site.join(id);
            let result = make_dir(h, &dir).and_then(|()| {
                made.dirs.push(InstanceDir {
                    version: h.version,
                    path: dir.clone(),
                    controllers: h.controllers.clone(),
                });
                write_limits(h.version, &h.controllers, &dir, limits)
            });
            if let Err(err) = result {
                // Half made is not made: the instance runs without, and says so.
                let _ = made.remove();
                return Err(err);
            }
        }
        Ok(made)
    }

    /// Which asked-for limits can not be enforced here, and why, in words; `None` when all can.
    fn not_enforced(&self, limits: &ResourceLimits) -> Option<String> {
        let unenforced: Vec<String> = self
            .missing
            .iter()
            .filter(|(c, _)| match c {
                Controller::Memory => limits.memory_bytes.is_some(),
                Controller::Pids => limits.pids.is_some(),
                Controller::Cpu => limits.cpu_millis.is_some(),
                Controller::CpuAcct => false,
            })
            .map(|(c, why)| format!("{}: {why}", c.name()))
            .collect();
        (!unenforced.is_empty())
            .then(|| format!("{}; the other limits are enforced", unenforced.join("; ")))
    }

    /// Empties and removes what a previous run of this site left (it was killed with
    /// `kill -9`, or a removal failed), and removes other sites' cgroups that have been empty
    /// for a while (their Lifeboat was killed and never came back). Call it only when no other
    /// Lifeboat runs this site: the processes in this site's cgroups are killed. Returns the
    /// cgroups removed.
    pub(crate) fn clean_stale(&self) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        for h in &self.hierarchies {
            for dir in subdirs(&h.site) {
                let leftover = InstanceDir {
                    version: h.version,
                    path: dir.clone(),
                    controllers: h.controllers.clone(),
                };
                if leftover.empty_and_remove().is_ok() {
                    removed.push(dir);
                }
            }
            for other in subdirs(&h.base) {
                let is_other_site = other != h.site
                    && other
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(is_site_dir_name);
                if !is_other_site {
                    continue;
                }
                // Before its children go: removing one makes the directory look new.
                let site_abandoned = age(&other).is_some_and(|a| a >= ABANDONED_AFTER);
                for dir in subdirs(&other) {
                    let abandoned = members(&dir).is_ok_and(|m| m.is_empty())
                        && age(&dir).is_some_and(|a| a >= ABANDONED_AFTER);
                    if abandoned && std::fs::remove_dir(&dir).is_ok() {
                        removed.push(dir);
                    }
                }
                // Fails while it still has instance cgroups: then it is someone's.
                if site_abandoned && std::fs::remove_dir(&other).is_ok() {
                    removed.push(other);
                }
            }
        }
        removed
    }

    /// Removes the site's own cgroups once every instance's is gone (at shutdown). Best effort.
    pub(crate) fn remove_site(&self) {
        for h in &self.hierarchies {
            let _ = std::fs::remove_dir(&h.site);
        }
    }
}

/// Where a v2 Lifeboat makes its sites: its own cgroup, or, when it moved itself aside before
/// (another supervisor in this process), beside its leaf rather than inside it.
fn v2_base(own: &Path) -> PathBuf {
    match own.file_name() {
        Some(leaf) if leaf == SUPERVISOR_LEAF => own.parent().unwrap_or(own).to_path_buf(),
        _ => own.to_path_buf(),
    }
}

/// The limiting controllers the v2 hierarchy offers at `base`.
fn offered_by_v2(base: &Path) -> Vec<Controller> {
    let offered = std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
    [Controller::Memory, Controller::Pids, Controller::Cpu]
        .into_iter()
        .filter(|c| offered.split_whitespace().any(|o| o == c.name()))
        .collect()
}

/// On v2, controllers reach a child cgroup only when its parent lists them in
/// `cgroup.subtree_control`, and the kernel allows that only for a cgroup without processes of
/// its own. So Lifeboat, when it is the only process of its cgroup (a systemd service with
/// `Delegate=yes`), moves itself into a leaf beside the sites' cgroups; it never moves anyone
/// else. Returns the controllers enabled.
fn delegate_v2(base: &Path, wanted: &[Controller]) -> Result<Vec<Controller>, CgroupError> {
    let control = base.join("cgroup.subtree_control");
    let enabled_now = || std::fs::read_to_string(&control).unwrap_or_default();
    let mut enabled = Vec::new();
    let mut moved = false;
    for c in wanted {
        if enabled_now().split_whitespace().any(|e| e == c.name()) {
            enabled.push(*c);
            continue;
        }
        let enable = || std::fs::write(&control, format!("+{}", c.name()));
        match enable() {
            Ok(()) => enabled.push(*c),
            Err(e) if errno(&e) == Some(Errno::EBUSY) && !moved => {
                move_self_aside(base)?;
                moved = true;
                enable().map_err(|e| CgroupError::io("enable controllers in", &control, e))?;
                enabled.push(*c);
            }
            Err(e) if is_refusal(&e) => {
                return Err(CgroupError::io("enable controllers in", &control, e));
            }
            // Another reason (a real-time process keeps `cpu` from being enabled): do
            // without this controller; `status` names the limits not enforced.
            Err(_) => {}
        }
    }
    Ok(enabled)
}

/// Moves this process into `base/lifeboat-supervisor` if it is the only process in `base`.
fn move_self_aside(base: &Path) -> Result<(), CgroupError> {
    let me = std::process::id();
    let others = members(base)
        .map_err(|e| CgroupError::io("list the processes of", base, e))?
        .into_iter()
        .filter(|p| *p != me)
        .count();
    if others > 0 {
        return Err(CgroupError::SharedCgroup {
            path: base.to_path_buf(),
            others,
        });
    }
    let leaf = base.join(SUPERVISOR_LEAF);
    match std::fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(CgroupError::io("create", &leaf, e)),
    }
    let procs = leaf.join("cgroup.procs");
    std::fs::write(&procs, me.to_string())
        .map_err(|e| CgroupError::io("move Lifeboat into", &leaf, e))
}

/// Makes the site's cgroup in `h` (again, if a sweep removed it while it was empty) and gives
/// its children the controllers.
fn ensure_site(h: &Hierarchy) -> Result<(), CgroupError> {
    match std::fs::create_dir(&h.site) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(CgroupError::io("create", &h.site, e)),
    }
    if h.version == Version::V2 {
        let control = h.site.join("cgroup.subtree_control");
        let names: Vec<String> = h
            .controllers
            .iter()
            .map(|c| format!("+{}", c.name()))
            .collect();
        std::fs::write(&control, names.join(" "))
            .map_err(|e| CgroupError::io("enable controllers in", &control, e))?;
    }
    if h.controllers.contains(&Controller::Cpu) {
        // Inside the site's cgroup each instance weighs as much as the others, whatever its
        // number of processes: a busy or forking instance can not starve its neighbours. The
        // site as a whole weighs as much as one busy process per core, so putting its
        // instances in a group does not leave them less CPU against the rest of the machine.
        // Best effort: a weight is a fairness hint, not a limit anyone asked for.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let _ = match h.version {
            Version::V1 => std::fs::write(h.site.join("cpu.shares"), (1024 * cores).to_string()),
            Version::V2 => std::fs::write(
                h.site.join("cpu.weight"),
                (100 * cores).min(10_000).to_string(),
            ),
        };
    }
    Ok(())
}

/// Makes an instance's cgroup directory; one left by an earlier run is emptied and reused.
fn make_dir(h: &Hierarchy, dir: &Path) -> Result<(), CgroupError> {
    for attempt in 0..3 {
        match std::fs::create_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // What is still in it belongs to an earlier run of this instance, which is over.
                // Made anew rather than reused: an old, empty directory is what another site's
                // sweep removes, which would leave the shim nothing to join.
                kill_members(&[dir.to_path_buf()], h.version, EMPTY_WITHIN);
                if std::fs::remove_dir(dir).is_err() {
                    return Ok(()); // still busy: reused, its limits are written again
                }
            }
            // Another site's sweep removed our (then empty) site cgroup: make it again.
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 2 => ensure_site(h)?,
            Err(e) => return Err(CgroupError::io("create", dir, e)),
        }
    }
    Err(CgroupError::io(
        "create",
        dir,
        io::Error::other("it kept being removed or made by someone else meanwhile"),
    ))
}

/// The directories in `dir` (a cgroup's children); none if it can not be read.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// How long ago `dir` was last changed (cgroup directories keep the time they were made).
fn age(dir: &Path) -> Option<Duration> {
    std::fs::metadata(dir).ok()?.modified().ok()?.elapsed().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_a_machine_lacks_are_named() {
        let cgroups = SiteCgroups {
            hierarchies: Vec::new(),
            missing: vec![(Controller::Pids, "no pids controller".into())],
        };
        let limits = ResourceLimits {
            memory_bytes: Some(1 << 30),
            cpu_millis: None,
            pids: Some(100),
        };
        let why = cgroups.not_enforced(&limits).expect("pids is not enforced");
        assert!(why.contains("pids"), "{why}");
        let without_pids = ResourceLimits {
            pids: None,
            ..limits
        };
        assert_eq!(cgroups.not_enforced(&without_pids), None);
    }

    #[test]
    fn an_instance_id_that_is_a_path_is_refused() {
        let cgroups = SiteCgroups {
            hierarchies: Vec::new(),
            missing: Vec::new(),
        };
        for id in ["", ".", "..", "web/1", "../x"] {
            assert!(matches!(
                cgroups.create(id, &ResourceLimits::default()),
                Err(CgroupError::BadId(_))
            ));
        }
    }
}
