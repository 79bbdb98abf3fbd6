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
