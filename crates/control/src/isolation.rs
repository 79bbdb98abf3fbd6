//! How the site's own processes are kept away from what undoes an attack on them: Lifeboat's
//! key, vault, control socket and store, and its secrets.
//!
//! The app Lifeboat protects is untrusted. Decided once at `up` (the [`Launcher`]):
//!
//! - as root, the site's processes run as an unprivileged user ([`RunAs`]: `[isolation] user`,
//!   or a per-site system user created here), which owns the live state and nothing of
//!   `.lifeboat/` (0700, root's);
//! - every process gets a private mount namespace in which `.lifeboat/` is covered by an empty
//!   tmpfs (and a restored state shows at the usual paths), when the machine allows it;
//! - as Lifeboat's own user (no root), Landlock denies them `.lifeboat/` and signals to
//!   anything outside, since the same uid could otherwise reach it through another process's
//!   view of the machine (`/proc/PID/root`);
//! - everything gets a clean environment: never Lifeboat's own.
//!
//! `status` reports which of these hold ([`Protections`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use lifeboat_core::Manifest;
use serde::{Deserialize, Serialize};

use crate::{ControlError, SitePaths};

/// The unprivileged user the site's processes run as (when Lifeboat is root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// How this machine runs the site's processes; decided once by [`Launcher::prepare`].
#[derive(Debug, Clone)]
pub(crate) struct Launcher {
    /// The program that wraps every process of the site (`lifeboat __instance`).
    pub shim: Option<PathBuf>,
    /// Whether the shim can make private mounts (a restored state at the site's own paths,
    /// `.lifeboat/` hidden); `Err` says why not.
    pub private_mounts: Result<(), String>,
    /// The user the site's processes run as; `None`: Lifeboat's own.
    pub run_as: Option<RunAs>,
    /// Whether Landlock keeps the site's processes out of `.lifeboat/` (used when they run as
    /// Lifeboat's own user); `Err` says why not.
    pub landlock: Result<(), String>,
    /// The environment every process of the site starts from.
    pub base_env: Vec<(String, String)>,
}

/// Which protections hold, for `lifeboat status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Protections {
    /// The user the site's processes run as.
    pub user: String,
    /// Whether that user is another one than Lifeboat's (true only as root).
    pub separate_user: bool,
    /// Lifeboat's own files hidden in a private mount namespace.
    pub private_mounts: bool,
    /// Landlock keeps the site's processes out of Lifeboat's files.
    pub landlock: bool,
    /// The site's processes get none of Lifeboat's environment.
    pub clean_environment: bool,
    /// What is missing, in sentences.
    pub missing: Vec<String>,
}

impl Launcher {
    /// Decides how the site's processes run here: finds (or, for the default name, creates)
    /// the unprivileged user as root, and tries private mounts and Landlock for real with the
    /// shim.
    pub(crate) async fn prepare(
        paths: &SitePaths,
        manifest: &Manifest,
        shim: Option<PathBuf>,
    ) -> Result<Launcher, ControlError> {
        let run_as = if nix::unistd::Uid::effective().is_root() {
            site_user(manifest)?
        } else {
            None
        };
        let probes = paths.lifeboat_dir().join("run");
        let (private_mounts, landlock) = match &shim {
            None => (
                Err("lifeboat runs without its instance shim".to_string()),
                Err("lifeboat runs without its instance shim".to_string()),
            ),
            Some(shim) => {
                let mounts = if manifest.isolation.private_mounts {
                    crate::view::probe_private_mounts(shim, &probes.join("mount-probe")).await
                } else {
                    Err("[isolation] private_mounts = false in lifeboat.toml".to_string())
                };
                let landlock = if run_as.is_some() {
                    Err("not needed: the site's processes run as another user".to_string())
                } else {
                    probe_landlock(shim, &probes.join("landlock-probe")).await
                };
                (mounts, landlock)
            }
        };
        if let Some(user) = &run_as {
            check_reachable(&paths.dir, user)?;
            share_site_dir(&paths.dir, user)?;
        }
        let base_env = base_env(manifest, run_as.as_ref(), std::env::vars());
        Ok(Launcher {
            shim,
            private_mounts,
            run_as,
            landlock,
            base_env,
        })
    }

    /// What `status` says about the protections.
    pub(crate) fn protections(&self) -> Protections {
        let mut missing = Vec::new();
        let me = nix::unistd::User::from_uid(nix::unistd::Uid::effective())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| nix::unistd::Uid::effective().to_string());
        let user = match &self.run_as {
            Some(u) => u.name.clone(),
            None => me,
        };
        if self.run_as.is_none() {
            if nix::unistd::Uid::effective().is_root() {
                missing.push(
                    "the site's processes run as root ([isolation] user = \"root\"): a \
                     compromised app can reach everything, backups included"
                        .to_string(),
                );
            } else {
                missing.push(format!(
                    "the site's processes run as {user}, Lifeboat's own user: run lifeboat as \
                     root to give them a user of their own"
                ));
            }
        }
        if let Err(why) = &self.private_mounts {
            missing.push(format!("no private mounts ({why})"));
        }
        if self.run_as.is_none()
            && let Err(why) = &self.landlock
        {
            missing.push(format!(
                "no Landlock ({why}): a process of the site could reach Lifeboat's files through \
                 another of your processes"
            ));
        }
        Protections {
            user,
            separate_user: self.run_as.is_some(),
            private_mounts: self.private_mounts.is_ok(),
            landlock: self.run_as.is_none() && self.landlock.is_ok(),
            clean_environment: true,
            missing,
        }
    }
}

/// Variables of Lifeboat's environment every process of the site may see (locale, time zone,
/// the search path); the rest only when `[isolation] pass_env` names them.
const PASSED: [&str; 5] = ["PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR"];

/// The environment the site's processes start from: `PASSED` and `LC_*` from Lifeboat's own,
/// the names `[isolation] pass_env` lists, and the user's `HOME`, `USER` and `LOGNAME`.
pub(crate) fn base_env(
    manifest: &Manifest,
    run_as: Option<&RunAs>,
    mine: impl Iterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = mine
        .filter(|(k, _)| {
            PASSED.contains(&k.as_str())
                || k.starts_with("LC_")
                || manifest.isolation.pass_env.contains(k)
                || (run_as.is_none() && ["HOME", "USER", "LOGNAME"].contains(&k.as_str()))
        })
        .collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push((
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ));
    }
    if let Some(user) = run_as {
        env.push(("HOME".into(), user.home.display().to_string()));
        env.push(("USER".into(), user.name.clone()));
        env.push(("LOGNAME".into(), user.name.clone()));
    }
    env.sort();
    env
}

/// The user the site's processes run as when Lifeboat is root: `[isolation] user` (which must
/// exist), or `lifeboat-SITE`, created as a system user when missing. `None` for `"root"`.
fn site_user(manifest: &Manifest) -> Result<Option<RunAs>, ControlError> {
    let (name, ours) = match &manifest.isolation.user {
        Some(name) if name == "root" => return Ok(None),
        Some(name) => (name.clone(), false),
        None => {
            let mut name = format!("lifeboat-{}", manifest.site);
            name.truncate(32);
            (name, true)
        }
    };
    if let Some(user) = lookup(&name)? {
        return Ok(Some(user));
    }
    if !ours {
        return Err(ControlError::Refused(format!(
            "there is no user {name} on this machine ([isolation] user in lifeboat.toml); create \
             it (e.g. `useradd --system --user-group --no-create-home {name}`) or remove `user` \
             to let Lifeboat make one for this site"
        )));
    }
    let made = std::process::Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            &name,
        ])
        .output();
    match made {
        Ok(out) if out.status.success() => {}
        // Another `up` may have made it meanwhile (exit 9: the name exists).
        Ok(out) if out.status.code() == Some(9) => {}
        Ok(out) => {
            return Err(ControlError::Refused(format!(
                "could not create the user {name} for the site's processes (useradd: {}); \
                 create an unprivileged user yourself and name it in [isolation] user",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Err(e) => {
            return Err(ControlError::Refused(format!(
                "could not run useradd to create the user {name} for the site's processes \
                 ({e}); create an unprivileged user yourself and name it in [isolation] user"
            )));
        }
    }
    lookup(&name)?.map(Some).ok_or_else(|| {
        ControlError::Refused(format!(
            "the user {name} was created but can not be found; check /etc/passwd"
        ))
    })
}

fn lookup(name: &str) -> Result<Option<RunAs>, ControlError> {
    let user = nix::unistd::User::from_name(name)
        .map_err(|e| ControlError::Refused(format!("could not look up the user {name}: {e}")))?;
    Ok(user.map(|u| RunAs {
        name: u.name,
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        home: u.dir,
    }))
}

/// The site's processes start in the site dir and read its code: every directory from `/`
/// down to it must let `user` through, or nothing would run. Refuses with the fix.
fn check_reachable(site_dir: &Path, user: &RunAs) -> Result<(), ControlError> {
    let mut dir = PathBuf::from("/");
    for component in site_dir.components().skip(1) {
        dir.push(component);
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        let mode = meta.mode();
        let can_enter = if meta.uid() == user.uid {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !can_enter {
            return Err(ControlError::Refused(format!(
                "the site's processes run as {} (an unprivileged user, since lifeboat runs as \
                 root), who may not enter {} (mode {:o}); let them through with `chmod o+x {}` \
                 (and make the site's code readable), or name a user who may in [isolation] user",
                user.name,
                dir.display(),
                mode & 0o7777,
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Lets the site's user create files in the site dir, as apps do (a `data/` dir on first start,
/// `collectstatic`, caches), without letting it remove or rename anything it did not create:
/// the dir gets the user's group with write access and the sticky bit, as `/tmp` has. So
/// `.lifeboat/` and the site's code stay as they are. Nothing changes when the user may write
/// the dir already.
fn share_site_dir(site_dir: &Path, user: &RunAs) -> Result<(), ControlError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(site_dir).map_err(ControlError::io("look at", site_dir))?;
    let mode = meta.mode() & 0o7777;
    if meta.uid() == user.uid || (meta.gid() == user.gid && mode & 0o1070 == 0o1070) {
        return Ok(());
    }
    std::os::unix::fs::chown(site_dir, None, Some(user.gid))
        .map_err(ControlError::io("give the site's group", site_dir))?;
    std::fs::set_permissions(site_dir, std::fs::Permissions::from_mode(mode | 0o1070))
        .map_err(ControlError::io("set permissions of", site_dir))
}

/// Gives the site's user the state it must write, in `state_dir`: the declared dirs (all that
/// is in them), each declared database with its `-wal` and `-shm` (made when missing, so
/// SQLite never has to create them in a directory the user may not write), and the directory
/// holding a database when it is not the state's top (a data dir such as `data/`).
pub(crate) fn grant_state(
    state_dir: &Path,
    manifest: &Manifest,
    user: &RunAs,
) -> Result<(), ControlError> {
    let chown = |path: &Path| -> Result<(), ControlError> {
        std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))
            .map_err(ControlError::io("give the site's user", path))
    };
    for dir in &manifest.state.dirs {
        let dir = state_dir.join(dir);
        std::fs::create_dir_all(&dir).map_err(ControlError::io("create", &dir))?;
        for entry in walkdir::WalkDir::new(&dir).follow_links(false) {
            let entry = entry.map_err(|e| {
                ControlError::io("walk", &dir)(
                    e.into_io_error()
                        .unwrap_or_else(|| std::io::Error::other("a symlink loop")),
                )
            })?;
            chown(entry.path())?;
        }
    }
    for db in &manifest.state.sqlite {
        let path = state_dir.join(db);
        if let Some(parent) = path.parent()
            && parent != state_dir
        {
            std::fs::create_dir_all(parent).map_err(ControlError::io("create", parent))?;
            chown(parent)?;
        }
        if !path.exists() {
            continue;
        }
        chown(&path)?;
        for side in ["-wal", "-shm"] {
            let mut name = path.clone().into_os_string();
            name.push(side);
            let side = PathBuf::from(name);
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&side)
                .map_err(ControlError::io("create", &side))?;
            chown(&side)?;
        }
    }
    Ok(())
}

/// Whether Landlock can keep a process out of a directory here, found by trying: the shim
/// denies a scratch dir and must then fail to read a file in it.
async fn probe_landlock(shim: &Path, scratch: &Path) -> Result<(), String> {
    let denied = scratch.join("denied");
    let secret = denied.join("secret");
    let setup = || -> std::io::Result<()> {
        let _ = std::fs::remove_dir_all(scratch);
        std::fs::create_dir_all(&denied)?;
        std::fs::write(&secret, b"x")
    };
    setup().map_err(|e| format!("could not prepare {}: {e}", scratch.display()))?;
    let output = tokio::process::Command::new(shim)
        .arg("__instance")
        .arg("--deny")
        .arg(&denied)
        .args(["--", "cat"])
        .arg(&secret)
        .env("LIFEBOAT_SUPERVISOR_PID", std::process::id().to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    let _ = std::fs::remove_dir_all(scratch);
    let output = output.map_err(|e| format!("could not run {}: {e}", shim.display()))?;
    let said = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        return Err("the kernel did not enforce it".into());
    }
    if said.contains("cannot set up Landlock") || said.contains("does not enforce Landlock") {
        return Err(said.trim().to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(extra: &str) -> Manifest {
        Manifest::parse(
            "lifeboat.toml",
            &format!("[site]\nname = \"blog\"\n[processes.web]\ncommand = \"x\"\n{extra}"),
        )
        .unwrap()
    }

    #[test]
    fn the_site_gets_none_of_lifeboats_secrets_and_only_what_it_is_given() {
        let mine = [
            ("PATH", "/usr/bin:/bin"),
            ("LANG", "C.UTF-8"),
            ("LC_TIME", "en_GB.UTF-8"),
            ("LIFEBOAT_PASSWORD", "hunter2"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
            ("AWS_ACCESS_KEY_ID", "AKIA"),
            ("HOME", "/root"),
            ("DATABASE_URL", "sqlite:///x"),
            ("SSH_AUTH_SOCK", "/tmp/agent"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let m = manifest("[isolation]\npass_env = [\"DATABASE_URL\"]\n");
        let user = RunAs {
            name: "lifeboat-blog".into(),
            uid: 998,
            gid: 998,
            home: "/nonexistent".into(),
        };
        let env = base_env(&m, Some(&user), mine.clone().into_iter());
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "DATABASE_URL",
                "HOME",
                "LANG",
                "LC_TIME",
                "LOGNAME",
                "PATH",
                "USER"
            ]
        );
        assert!(env.contains(&("HOME".into(), "/nonexistent".into())));
        let as_me = base_env(&manifest(""), None, mine.into_iter());
        assert!(as_me.contains(&("HOME".into(), "/root".into())));
        assert!(
            !as_me
                .iter()
                .any(|(k, _)| k.starts_with("AWS") || k == "LIFEBOAT_PASSWORD")
        );
    }

    #[test]
    fn lifeboats_secrets_can_not_be_passed_through() {
        let err = Manifest::parse(
            "lifeboat.toml",
            "[site]\nname = \"blog\"\n[processes.web]\ncommand = \"x\"\n[isolation]\npass_env = [\"LIFEBOAT_PASSWORD\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("isolation.pass_env"), "{err}");
    }
}
