//! The instance shim (`lifeboat __instance -- CMD...`): runs the command with the parent-death
//! signal armed, and refuses to run an orphan.

mod common;

use std::process::Command;

use common::HELPER;
use lifeboat_supervisor::shim::PARENT_GONE_EXIT_CODE;

#[test]
fn the_shim_runs_the_command_in_its_own_place() {
    let output = Command::new(HELPER)
        .args(["shim", "--", "sh", "-c", "echo \"ran as $$\""])
        .env("LIFEBOAT_SUPERVISOR_PID", std::process::id().to_string())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(printed.starts_with("ran as "), "{printed}");
}

#[test]
fn the_shim_becomes_the_command_keeping_its_pid_and_parent() {
    // The supervisor signals the pid it spawned, so the shim must exec, not fork. (That the
    // parent-death signal works is tested in orphans.rs by killing a real supervisor.)
    let output = Command::new(HELPER)
        .args(["shim", "--", "cat", "/proc/self/stat"])
        .env("LIFEBOAT_SUPERVISOR_PID", std::process::id().to_string())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stat = String::from_utf8(output.stdout).unwrap();
    let ppid: u32 = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        ppid,
        std::process::id(),
        "exec kept the shim's pid and parent"
    );
}

#[test]
fn the_shim_refuses_to_start_an_orphan() {
    // Pretend the supervisor that started us is someone else: it is "gone".
    let output = Command::new(HELPER)
        .args(["shim", "--", "sh", "-c", "echo should-not-run"])
        .env("LIFEBOAT_SUPERVISOR_PID", "1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(PARENT_GONE_EXIT_CODE));
    assert!(output.stdout.is_empty());
}

#[test]
fn the_shim_without_a_command_says_what_to_pass() {
    let output = Command::new(HELPER).args(["shim", "--"]).output().unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8(output.stderr).unwrap();
    assert!(said.contains("after `--`"), "{said}");
}

/// The shim shows a file and a directory of a state copy at the site's own paths, for the
/// command only: the site's own files are untouched, and the machine sees no mount.
#[test]
fn the_shim_shows_the_state_copy_at_the_sites_paths_for_the_command_only() {
    let dir = tempfile::tempdir().unwrap();
    let (site, copy) = (dir.path().join("site"), dir.path().join("copy"));
    for d in [&site, &copy] {
        std::fs::create_dir_all(d.join("media")).unwrap();
    }
    std::fs::write(site.join("db"), "live").unwrap();
    std::fs::write(copy.join("db"), "restored").unwrap();
    std::fs::write(site.join("media/a"), "live").unwrap();
    std::fs::write(copy.join("media/a"), "restored").unwrap();
    let arg = |p: &std::path::Path| p.display().to_string();
    let output = Command::new(HELPER)
        .args([
            "shim",
            "--bind",
            &arg(&copy.join("db")),
            &arg(&site.join("db")),
        ])
        .args([
            "--bind",
            &arg(&copy.join("media")),
            &arg(&site.join("media")),
        ])
        .args(["--", "sh", "-c", "cat db media/a; echo written > media/b"])
        .current_dir(&site)
        .env("LIFEBOAT_SUPERVISOR_PID", std::process::id().to_string())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "restoredrestored");
    assert_eq!(
        std::fs::read_to_string(copy.join("media/b")).unwrap(),
        "written\n"
    );
    assert!(!site.join("media/b").exists(), "the write went to the copy");
    assert_eq!(std::fs::read_to_string(site.join("db")).unwrap(), "live");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&arg(&site)),
        "no mount is left on the machine: {mounts}"
    );
}

#[test]
fn a_bind_that_cannot_be_made_stops_the_command_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let output = Command::new(HELPER)
        .args(["shim", "--bind", &missing.display().to_string(), "/tmp"])
        .args(["--", "sh", "-c", "echo should-not-run"])
        .env("LIFEBOAT_SUPERVISOR_PID", std::process::id().to_string())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let said = String::from_utf8(output.stderr).unwrap();
    assert!(
        said.contains("cannot show") && said.contains("missing"),
        "{said}"
    );
}

/// Without root, the shim makes its mounts inside a user namespace that maps only the user's
/// own uid: the command runs as that user, not as root.
#[test]
fn the_shim_makes_its_mounts_as_an_ordinary_user_too() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path();
    let (site, copy) = (top.join("site"), top.join("copy"));
    std::fs::create_dir_all(&site).unwrap();
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::write(site.join("db"), "live").unwrap();
    std::fs::write(copy.join("db"), "restored").unwrap();
    let as_root = nix::unistd::Uid::effective().is_root();
    let mut command = if as_root {
        // Run the shim as `nobody`, on files it owns.
        for p in [
            top.to_path_buf(),
            site.clone(),
            copy.clone(),
            site.join("db"),
            copy.join("db"),
        ] {
            std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        }
        std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", HELPER]);
        c
    } else {
        Command::new(HELPER)
    };
    let arg = |p: &std::path::Path| p.display().to_string();
    let output = command
        .args([
            "shim",
            "--bind",
            &arg(&copy.join("db")),
            &arg(&site.join("db")),
        ])
        .args(["--", "sh", "-c", "cat db; echo; id -u"])
        .current_dir(&site)
        .env("LIFEBOAT_SUPERVISOR_PID", std::process::id().to_string())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8_lossy(&output.stdout).to_string();
    let expected_uid = if as_root {
        65534
    } else {
        nix::unistd::Uid::effective().as_raw()
    };
    assert_eq!(printed, format!("restored\n{expected_uid}\n"));
}
