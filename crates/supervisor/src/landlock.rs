//! Landlock for the shim: keeps a site's processes out of one directory (Lifeboat's own) and
//! from signalling anything outside their sandbox, without root.
//!
//! Landlock grants rights by file hierarchy: a right given on a directory holds for all that
//! is beneath it. So the denied directory is left out by granting every right on each of its
//! *siblings* and on the siblings of each of its ancestors, and on the ancestors themselves
//! only the right to list them (listing the denied directory's names is allowed; its files'
//! contents, writing, creating and removing anything in it are not). What this costs the app:
//! it cannot create or remove files directly in the site dir or its parents, only in their
//! subdirectories (SQLite's `-wal` and `-shm` beside a database at the site root exist
//! already: Lifeboat makes them).
//!
//! Rights are given to what exists when the instance starts; the hierarchy is walked through
//! `/proc/PID/root` of other processes too, so this also stops the way round a private mount
//! namespace (a same-user process's view of the machine).

use std::io;
use std::path::{Component, Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope,
};

/// The newest Landlock ABI this code was written and tested against; older kernels get what
/// they support (best effort), and say so through [`deny_beneath`]'s result.
const ABI_USED: ABI = ABI::V6;

/// Restricts this process and its future children: nothing under `denied` may be read,
/// written, created or removed, and no signal may reach a process outside the sandbox.
/// Fails when the kernel enforces none of it.
pub(crate) fn deny_beneath(denied: &Path) -> io::Result<()> {
    let denied = denied.canonicalize().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot find {} to keep the instance out of it: {e}",
                denied.display()
            ),
        )
    })?;
    let err = |what: &str, e: &dyn std::fmt::Display| {
        io::Error::other(format!("cannot set up Landlock ({what}): {e}"))
    };
    let all = AccessFs::from_all(ABI_USED);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .map_err(|e| err("file rights", &e))?
        .scope(Scope::from_all(ABI_USED))
        .map_err(|e| err("scopes", &e))?
        .create()
        .map_err(|e| err("ruleset", &e))?;
    for (path, whole) in allowed(&denied)? {
        let Ok(fd) = PathFd::new(&path) else {
            continue; // vanished meanwhile, or not openable: no right needed
        };
        let rights = if whole { all } else { AccessFs::ReadDir.into() };
        let rule = PathBeneath::new(fd, rights).set_compatibility(CompatLevel::BestEffort);
        ruleset = ruleset
            .add_rule(rule)
            .map_err(|e| err(&format!("a rule for {}", path.display()), &e))?;
    }
    let status = ruleset
        .restrict_self()
        .map_err(|e| err("enforcing it", &e))?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err(io::Error::other(
            "this kernel does not enforce Landlock (it needs Linux 5.13 with Landlock enabled)",
        ));
    }
    Ok(())
}

/// What to grant so that everything but `denied` stays reachable: `(path, true)` for a whole
/// sibling hierarchy, `(path, false)` for an ancestor that may only be listed.
fn allowed(denied: &Path) -> io::Result<Vec<(PathBuf, bool)>> {
    let mut out = Vec::new();
    let mut ancestor = PathBuf::from("/");
    for component in denied.components() {
        let Component::Normal(next) = component else {
            continue;
        };
        out.push((ancestor.clone(), false));
        let entries = std::fs::read_dir(&ancestor).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot list {} to set up Landlock: {e}", ancestor.display()),
            )
        })?;
        for entry in entries.flatten() {
            if entry.file_name() != next {
                out.push((entry.path(), true));
            }
        }
        ancestor.push(next);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_denied_dir_and_its_ancestors_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("site");
        std::fs::create_dir_all(site.join(".lifeboat/vault")).unwrap();
        std::fs::create_dir_all(site.join("data")).unwrap();
        std::fs::write(site.join("manage.py"), "").unwrap();
        let denied = site.join(".lifeboat").canonicalize().unwrap();
        let granted = allowed(&denied).unwrap();
        let whole: Vec<&PathBuf> = granted.iter().filter(|(_, w)| *w).map(|(p, _)| p).collect();
        let site = site.canonicalize().unwrap();
        assert!(whole.contains(&&site.join("data")));
        assert!(whole.contains(&&site.join("manage.py")));
        assert!(whole.iter().all(|p| !denied.starts_with(p)), "{whole:?}");
        let listed: Vec<&PathBuf> = granted
            .iter()
            .filter(|(_, w)| !*w)
            .map(|(p, _)| p)
            .collect();
        assert_eq!(listed.first(), Some(&&PathBuf::from("/")));
        assert_eq!(listed.last(), Some(&&site));
    }
}
