//! `lifeboat simulate` end to end: the real lifeboat binary restores a real guestbook site from
//! its vault into a sandbox, runs it, breaks it one fault at a time and writes its report.
//! The promises: the report says what happened, field by field; each fault really happened
//! and was undone (Lifeboat's own events show it); a fragile site fails with the right advice;
//! nothing of the sandbox survives the run, Ctrl-C or a kill -9 of `simulate`; the HTML opens
//! in a real browser.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const SIMULATE: &str = r#"
[simulate]
rate = 40
reads = [{ path = "/api/entries?limit=5", weight = 3 }, "/healthz"]
probe = { path = "/entries", body = "text=probe+{id}", read_back = "/api/entries" }
login = { path = "/login" }
targets = { availability = 0.9, p99 = "1s", rto = "30s" }
"#;

/// A guestbook site with a vault, run once so its state is captured, then stopped.
fn captured_site(replicas: u32, health: bool, simulate: &str) -> SiteDir {
    captured_site_running(&guestbook_command(), &[], replicas, health, simulate)
}

/// [`captured_site`] whose instances run `command`, with `files` (name, executable text)
/// written into the site dir first.
fn captured_site_running(
    command: &str,
    files: &[(&str, &str)],
    replicas: u32,
    health: bool,
    simulate: &str,
) -> SiteDir {
    let health = if health {
        "health = { path = \"/healthz\", interval = \"200ms\", timeout = \"500ms\" }"
    } else {
        ""
    };
    let site = SiteDir::with_manifest(&format!(
        r#"[site]
name = "guestbook"

[processes.web]
command = "{}"
replicas = {replicas}
stop_timeout = "2s"
{health}

[state]
sqlite = ["data/guestbook.db"]
dirs = ["data/uploads"]

[proxy]
listen = "127.0.0.1:0"

[vault]
destinations = [".lifeboat/vault"]
segment_interval = "200ms"
{simulate}"#,
        command
    ));
    for (name, text) in files {
        use std::os::unix::fs::PermissionsExt;
        let path = site.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut lifeboat = Lifeboat::up(site.path());
    lifeboat.wait_healthy(replicas as usize);
    for n in 0..5 {
        let status = sign(&lifeboat.proxy, n);
        assert_eq!(status, 201, "the guestbook took an entry");
    }
    lifeboat.wait_for_status("a shipped segment", |s| {
        s["capture"]["last_segment_seq"].as_u64().is_some()
    });
    assert!(lifeboat.cli(&["down"]).status.success(), "lifeboat down");
    assert!(lifeboat.wait_exit(), "lifeboat exits after down");
    site
}

/// Signs the guestbook once through `proxy` (the test's own client, not the simulator's).
fn sign(proxy: &str, n: u32) -> u16 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{proxy}/entries"))
            .form(&[("text", format!("before the simulation {n}"))])
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    })
}

fn sandbox_of(site: &Path) -> PathBuf {
    let site = site.canonicalize().unwrap();
    site.parent().unwrap().join(format!(
        ".{}.simulate",
        site.file_name().unwrap().to_string_lossy()
    ))
}

/// Every process whose command line names `dir`.
fn processes_naming(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| alive(pid))
        .filter_map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(&needle).then_some((pid, cmd))
        })
        .collect()
}

/// Every mount point at or beneath `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&needle))
        .map(str::to_string)
        .collect()
}

fn simulate(site: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(lifeboat_bin());
    cmd.arg("simulate").args(args).arg("-C").arg(site);
    cmd
}

struct QuickRun {
    _site: SiteDir,
    sandbox: PathBuf,
    report_dir: tempfile::TempDir,
    out: Output,
    took: Duration,
}

/// One `--quick` run of every fault on a healthy guestbook, shared by the tests that read it.
fn quick_run() -> &'static QuickRun {
    static RUN: OnceLock<QuickRun> = OnceLock::new();
    RUN.get_or_init(|| {
        let site = captured_site(3, true, SIMULATE);
        let report_dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let out = simulate(
            site.path(),
            &["--quick", "--report", report_dir.path().to_str().unwrap()],
        )
        .output()
        .unwrap();
        QuickRun {
            sandbox: sandbox_of(site.path()),
            _site: site,
            report_dir,
            out,
            took: started.elapsed(),
        }
    })
}

fn report(run: &QuickRun) -> Value {
    let path = run.report_dir.path().join("report.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{} missing ({e}); simulate said:\n{}\n{}",
            path.display(),
            String::from_utf8_lossy(&run.out.stdout),
            String::from_utf8_lossy(&run.out.stderr)
        )
    });
    serde_json::from_str(&text).unwrap()
}

fn fault<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["faults"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no fault {name} in {report:#}"))
}

/// One quick run of the guestbook, checked four ways. One test, not four: the test runner
/// (cargo-nextest) gives every test a process of its own, so four tests would each pay for a
/// run of their own, at once, on the same two cores.
#[test]
fn one_quick_run_of_the_guestbook() {
    a_quick_run_on_the_guestbook_holds_every_target_and_reports_it_field_by_field();
    each_fault_really_happened_and_was_undone_as_lifeboat_itself_recorded();
    nothing_of_the_sandbox_is_left_after_a_run();
    the_html_report_opens_in_headless_chromium();
}

fn a_quick_run_on_the_guestbook_holds_every_target_and_reports_it_field_by_field() {
    let run = quick_run();
    let r = report(run);
    let stdout = String::from_utf8_lossy(&run.out.stdout);
    assert!(
        run.out.status.success(),
        "a healthy guestbook with 3 replicas passes; stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&run.out.stderr)
    );
    // The promise: 60 s on this 2-core machine (45 s measured with the other tests of this
    // file running beside it).
    assert!(
        run.took < Duration::from_secs(60),
        "--quick took {:?}",
        run.took
    );
    assert_eq!(r["version"], 1);
    assert_eq!(r["site"], "guestbook");
    assert_eq!(r["passed"], true);
    assert_eq!(r["quick"], true);
    assert!(
        r["availability"].as_f64().unwrap() >= 0.9,
        "{}",
        r["availability"]
    );
    assert_eq!(r["lost_acknowledged_writes"], 0);
    assert!(
        r["capacity_rps"].as_f64().unwrap() > 40.0,
        "capacity {}",
        r["capacity_rps"]
    );
    let writes = &r["writes"];
    let acked = writes["acknowledged"].as_u64().unwrap();
    assert!(acked > 20, "write probes were acknowledged: {writes}");
    assert_eq!(
        acked,
        writes["found"].as_u64().unwrap() + writes["discarded_by_rewind"].as_u64().unwrap(),
        "every acknowledged write was found, or given up by a rewind on purpose: {writes}"
    );
    assert!(r["baseline"]["p99_ms"].as_f64().unwrap() > 0.0);
    assert!(r["requests"].as_u64().unwrap() > 500);
    let names: Vec<&str> = r["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "usage-spike",
            "kill-instance",
            "hang-instance",
            "kill-all-instances",
            "slow-clients",
            "credential-stuffing",
            "vault-destination-down",
            "disk-full",
            "slow-disk",
            "kill-lifeboat",
            "virus",
            "corruption"
        ]
    );
    let root = nix::unistd::Uid::effective().is_root();
    for f in r["faults"].as_array().unwrap() {
        if (f["name"] == "disk-full" || f["name"] == "slow-disk") && !root {
            // They need root to mount the state's small disk, and say so.
            assert!(
                f["skipped"].as_str().unwrap().contains("needs root"),
                "{f:#}"
            );
            continue;
        }
        assert_eq!(f["skipped"], Value::Null, "{f:#}");
        assert_eq!(f["passed"], true, "{f:#}");
        assert_eq!(f["undone"], true, "{f:#}");
        assert!(
            f["undone_at_s"].as_f64() >= f["injected_at_s"].as_f64(),
            "{f:#}"
        );
        assert!(f["requests"].as_u64().unwrap() > 0, "{f:#}");
    }
    let virus = fault(&r, "virus");
    assert_eq!(virus["removed_by_rewind"], true);
    assert_eq!(virus["on_timeline"], true);
    assert!(virus["rto_s"].as_f64().unwrap() > 0.0);
    assert!(virus["rpo_s"].as_f64().unwrap() >= 0.0);
    let corruption = fault(&r, "corruption");
    assert!(corruption["rto_s"].as_f64().unwrap() > 0.0);
    assert_eq!(corruption["upload_restored"], true, "{corruption:#}");
    assert!(
        fault(&r, "kill-all-instances")["recovered_after_s"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let scorecard = r["scorecard"].as_array().unwrap();
    assert!(
        scorecard.iter().all(|l| l["passed"] != false),
        "{scorecard:#?}"
    );
    assert!(stdout.contains("every target held"), "{stdout}");
    assert!(
        !r["timeseries"]["t"].as_array().unwrap().is_empty()
            && r["timeseries"]["t"].as_array().unwrap().len()
                == r["timeseries"]["ok_rps"].as_array().unwrap().len()
    );
}

fn each_fault_really_happened_and_was_undone_as_lifeboat_itself_recorded() {
    let r = report(quick_run());
    let events: Vec<String> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["text"].as_str().unwrap().to_string())
        .collect();
    let count = |needle: &str| events.iter().filter(|e| e.contains(needle)).count();
    // kill-instance (1) + kill-all-instances (3): Lifeboat saw them die by signal 9.
    assert!(count("signal 9") >= 4, "instances killed -9: {events:#?}");
    // kill-lifeboat: the sandbox's Lifeboat came up twice.
    assert!(count("site up") >= 2, "lifeboat restarted: {events:#?}");
    // virus and corruption: two rewinds done.
    assert!(count("rewind") >= 2, "two rewinds: {events:#?}");
    let hang = fault(&r, "hang-instance");
    assert!(
        hang["evidence"].as_str().unwrap().contains("state is T"),
        "{hang:#}"
    );
    assert!(
        hang["undo_evidence"]
            .as_str()
            .unwrap()
            .contains("runs again"),
        "{hang:#}"
    );
    let slow = fault(&r, "slow-clients");
    assert!(
        slow["evidence"].as_str().unwrap().starts_with("100 of 100"),
        "{slow:#}"
    );
    let stuffing = fault(&r, "credential-stuffing");
    let sent: u64 = stuffing["undo_evidence"]
        .as_str()
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(sent > 100, "{stuffing:#}");
    // Lifeboat recorded the attack (its front door counts the 401s per visitor).
    assert!(
        stuffing["detected_by"]
            .as_str()
            .is_some_and(|by| by.contains("refused as unauthorized")),
        "{stuffing:#}"
    );
    let down = fault(&r, "vault-destination-down");
    assert!(
        down["evidence"].as_str().unwrap().contains("s3s-fs, pid"),
        "{down:#}"
    );
    assert!(
        down["undo_evidence"]
            .as_str()
            .unwrap()
            .contains("caught up"),
        "{down:#}"
    );
    let corruption = fault(&r, "corruption");
    let evidence = corruption["evidence"].as_str().unwrap();
    assert!(
        evidence.contains("overwritten") && evidence.contains("truncated to 32768 bytes"),
        "{corruption:#}"
    );
    let full = fault(&r, "disk-full");
    // The disk-full fault needs root (a non-root run says so, checked in the test above).
    if nix::unistd::Uid::effective().is_root() {
        assert!(
            full["evidence"]
                .as_str()
                .unwrap()
                .ends_with("; 0 bytes left"),
            "{full:#}"
        );
        assert!(
            full["read_availability"].as_f64().unwrap() >= 0.9,
            "reads went on: {full:#}"
        );
        assert!(
            full["undo_evidence"]
                .as_str()
                .unwrap()
                .contains("a write was acknowledged"),
            "{full:#}"
        );
    }
}

fn nothing_of_the_sandbox_is_left_after_a_run() {
    let run = quick_run();
    assert!(
        !run.sandbox.exists(),
        "{} was removed",
        run.sandbox.display()
    );
    let left = processes_naming(&run.sandbox);
    assert!(left.is_empty(), "still running: {left:?}");
    let mounted = mounts_under(&run.sandbox);
    assert!(mounted.is_empty(), "still mounted: {mounted:?}");
}

fn the_html_report_opens_in_headless_chromium() {
    let run = quick_run();
    opens_in_chromium(&run.report_dir.path().join("report.html"));
}

/// The report's HTML is self-contained and headless chromium draws it.
fn opens_in_chromium(html: &Path) {
    let page = std::fs::read_to_string(html).unwrap();
    assert!(page.contains("<svg") && page.contains("Scorecard"));
    assert!(!page.contains("<script"), "self-contained and script-free");
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
        .expect("chromium is missing: install it with scripts/install-test-deps (apt-get install chromium)");
    let shot = html.with_file_name("report.png");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1100,1600",
        ])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", html.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("a screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real picture: {} bytes",
        png.len()
    );
}

#[test]
fn a_fragile_site_fails_with_the_advice_to_add_a_replica() {
    let site = captured_site(1, false, "");
    let report_dir = tempfile::tempdir().unwrap();
    let out = simulate(
        site.path(),
        &[
            "--quick",
            "--only",
            "kill-instance",
            "--report",
            report_dir.path().to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed target fails the run:\n{stdout}"
    );
    let r: Value =
        serde_json::from_slice(&std::fs::read(report_dir.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(r["passed"], false);
    let kill = fault(&r, "kill-instance");
    assert_eq!(kill["passed"], false, "{kill:#}");
    assert!(kill["availability"].as_f64().unwrap() < 0.99, "{kill:#}");
    let line = r["scorecard"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["passed"] == false)
        .expect("a failed line");
    let advice = line["advice"].as_str().unwrap();
    assert!(
        advice.starts_with("with 1 replica, killing it drops")
            && advice.contains("set replicas = 2"),
        "{advice}"
    );
    assert!(
        stdout.contains("set replicas = 2"),
        "the advice is printed:\n{stdout}"
    );
}

/// Starts `simulate` and waits until its sandbox serves (its run file names a lifeboat that
/// is alive); returns the child and that lifeboat's pid.
fn start_and_wait_for_sandbox(site: &Path) -> (std::process::Child, u32) {
    let mut child = simulate(site, &["--quick", "--report", "/dev/null/none"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run_file = sandbox_of(site).join(".lifeboat/simulate/run.json");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let pid = std::fs::read(&run_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["lifeboat_pids"][0].as_u64())
            .map(|p| p as u32);
        if let Some(pid) = pid.filter(|&p| alive(p)) {
            return (child, pid);
        }
        assert!(Instant::now() < deadline, "the sandbox never started");
        assert!(child.try_wait().unwrap().is_none(), "simulate ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_kill_9_of_simulate_leaves_nothing_running_and_the_next_run_cleans_up() {
    let site = captured_site(1, true, "");
    let sandbox = sandbox_of(site.path());
    let (mut child, lifeboat) = start_and_wait_for_sandbox(site.path());
    let killed = child.id();
    kill(Pid::from_raw(killed as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    wait_until("the sandbox's lifeboat to die with simulate", || {
        !alive(lifeboat)
    });
    wait_until("every process of the sandbox to end", || {
        processes_naming(&sandbox).is_empty()
    });
    assert!(sandbox.exists(), "a kill -9 cannot remove the dir");
    if nix::unistd::Uid::effective().is_root() {
        assert!(
            !mounts_under(&sandbox).is_empty(),
            "the state's small disk is still mounted after a kill -9"
        );
        assert!(
            netns_exists(killed),
            "the sandbox's network namespace is left after a kill -9"
        );
    }
    // The next run cleans up what it finds, then runs.
    let report_dir = tempfile::tempdir().unwrap();
    let out = simulate(
        site.path(),
        &[
            "--quick",
            "--only",
            "kill-instance",
            "--report",
            report_dir.path().to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert!(
        report_dir.path().join("report.json").exists(),
        "the next run ran ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!sandbox.exists(), "and removed the sandbox");
    assert!(mounts_under(&sandbox).is_empty(), "and what it had mounted");
    assert!(
        !netns_exists(killed),
        "and the network namespace it had made"
    );
}

#[test]
fn ctrl_c_stops_the_run_and_removes_the_sandbox_at_once() {
    let site = captured_site(1, true, "");
    let sandbox = sandbox_of(site.path());
    let (mut child, lifeboat) = start_and_wait_for_sandbox(site.path());
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(
        !alive(lifeboat),
        "the sandbox's lifeboat is gone when simulate exits"
    );
    assert!(!sandbox.exists(), "the sandbox dir is removed");
    assert!(mounts_under(&sandbox).is_empty(), "nothing stays mounted");
    assert!(processes_naming(&sandbox).is_empty());
    assert!(
        !netns_exists(child.id()),
        "its network namespace is deleted"
    );
}

/// `simulate ARGS` with its stdout/stderr; also its pid (its network namespace is named after it).
fn simulate_output(site: &Path, args: &[&str], env: &[(&str, &str)]) -> (u32, Output) {
    let child = simulate(site, args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    (pid, child.wait_with_output().unwrap())
}

fn report_in(dir: &Path, out: &Output) -> Value {
    let path = dir.join("report.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{} missing ({e}); simulate said:\n{}\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(&text).unwrap()
}

/// A run's output and report, for a failed assertion.
fn what_it_said(out: &Output, r: &Value) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}\nreport:\n{r:#}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn netns_exists(simulate_pid: u32) -> bool {
    Path::new(&format!("/run/netns/lbsim-{simulate_pid}")).exists()
}

/// The vault's second destination is the sandbox's own S3 server; the fault kills it while
/// the probes write and starts it again: no acknowledged write is lost, and the vault ships
/// its backlog there once it is back.
#[test]
fn the_sandboxs_s3_server_killed_during_writes_loses_no_write_and_the_vault_catches_up() {
    let site = captured_site(1, true, SIMULATE);
    let report_dir = tempfile::tempdir().unwrap();
    let (_, out) = simulate_output(
        site.path(),
        &[
            "--quick",
            "--only",
            "vault-destination-down",
            "--report",
            report_dir.path().to_str().unwrap(),
        ],
        &[],
    );
    let r = report_in(report_dir.path(), &out);
    assert!(out.status.success(), "{:#}", r["scorecard"]);
    assert_eq!(
        r["sandbox"]["second_destination"], "s3",
        "s3s-fs is installed by scripts/install-test-deps: {:#}",
        r["sandbox"]
    );
    let down = fault(&r, "vault-destination-down");
    assert_eq!(down["skipped"], Value::Null, "{down:#}");
    assert_eq!(down["destination"], "s3", "{down:#}");
    let evidence = down["evidence"].as_str().unwrap();
    assert!(
        evidence.contains("s3s-fs, pid") && evidence.contains("its port refuses connections"),
        "{down:#}"
    );
    // Lifeboat's S3 client retries a failed write with random backoff before it reports the
    // destination down: within the quick run's 3 s it may not have. When it has, the writes of
    // the meantime were behind, and the vault shipped them once the server was back.
    if let Some(after) = down["detected_after_s"].as_f64() {
        assert!(
            evidence.contains("Lifeboat reports it unreachable")
                && down["vault_backlog_objects"].as_u64().unwrap() > 0,
            "reported down after {after} s: {down:#}"
        );
    } else {
        assert!(
            evidence.contains("did not report it down within 3 s"),
            "{down:#}"
        );
    }
    let undo = down["undo_evidence"].as_str().unwrap();
    assert!(
        undo.contains("s3s-fs started again") && undo.contains("caught up"),
        "{down:#}"
    );
    assert_eq!(down["undone"], true, "{down:#}");
    assert_eq!(down["passed"], true, "{down:#}");
    let catch_up = down["vault_catch_up_s"].as_f64().unwrap();
    assert!((0.0..30.0).contains(&catch_up), "{down:#}");
    assert_eq!(down["lost_acknowledged_writes"], 0, "{down:#}");
    assert_eq!(r["lost_acknowledged_writes"], 0);
    assert!(r["writes"]["acknowledged"].as_u64().unwrap() > 5);
    let sandbox = sandbox_of(site.path());
    assert!(
        processes_naming(&sandbox).is_empty(),
        "s3s-fs stopped with the sandbox"
    );
}

/// Without s3s-fs the fault falls back to a local folder, and says so.
#[test]
fn without_s3s_fs_a_local_folder_is_taken_down_and_the_report_says_so() {
    let site = captured_site(1, true, SIMULATE);
    let report_dir = tempfile::tempdir().unwrap();
    let (_, out) = simulate_output(
        site.path(),
        &[
            "--quick",
            "--only",
            "vault-destination-down",
            "--report",
            report_dir.path().to_str().unwrap(),
        ],
        &[("LIFEBOAT_S3S_FS", "/nonexistent/s3s-fs")],
    );
    let r = report_in(report_dir.path(), &out);
    assert!(out.status.success(), "{:#}", r["scorecard"]);
    assert_eq!(r["sandbox"]["second_destination"], "local-folder");
    let down = fault(&r, "vault-destination-down");
    assert_eq!(down["destination"], "local-folder", "{down:#}");
    assert!(
        down["evidence"]
            .as_str()
            .unwrap()
            .contains("no S3 server in the sandbox (s3s-fs was not found"),
        "{down:#}"
    );
    assert!(
        down["undo_evidence"]
            .as_str()
            .unwrap()
            .contains("caught up"),
        "{down:#}"
    );
    let note = r["scorecard"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| {
            l["text"]
                .as_str()
                .unwrap()
                .contains("a local folder, not an S3 server")
        })
        .unwrap_or_else(|| panic!("a note on the fallback: {:#}", r["scorecard"]));
    assert!(note["advice"].as_str().unwrap().contains("install s3s-fs"));
}

/// The host's first IPv4 address that is not loopback, if it has one.
fn host_address() -> Option<String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|cidr| cidr.split('/').next())
        .map(str::to_string)
        .next()
}

/// The sandbox runs in a network namespace with only loopback: an instance that tries to reach
/// a listener on the host (on 127.0.0.1 and on the host's own address) fails, while the
/// simulation's load reaches the front door. The same instance, run by the real site on the
/// host, does reach it (so the test can tell).
#[test]
fn the_sandbox_sends_no_traffic_outside_itself() {
    sandbox_reaches_nothing_outside(None);
}

/// The same, with `simulate` run by an ordinary user: its sandbox's network is a namespace
/// inside a user namespace of its own, which the sandbox's processes join through the shim
/// and the load's sockets are made in.
#[test]
fn an_ordinary_users_sandbox_sends_no_traffic_outside_itself() {
    let Some(user) = common::OsUser::ensure("lifeboat-tester") else {
        eprintln!(
            "skipped: this test runs simulate as an ordinary user it creates, which needs root \
             (running as uid {}); the test above covers this user",
            nix::unistd::geteuid()
        );
        return;
    };
    sandbox_reaches_nothing_outside(Some(&user));
}

/// `simulate` is run by `user` when given (the site is given to it first), else by this
/// process's user.
fn sandbox_reaches_nothing_outside(user: Option<&common::OsUser>) {
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let reached = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let reached = reached.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                reached.lock().unwrap().push(conn.peer_addr().ok());
            }
        });
    }
    let notes_dir = tempfile::tempdir().unwrap();
    open_to_the_site_user(notes_dir.path());
    let notes = notes_dir.path().join("outbound.log");
    std::fs::write(&notes, "").unwrap();
    std::fs::set_permissions(&notes, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let mut addresses = vec!["127.0.0.1".to_string()];
    addresses.extend(host_address());
    // Before it serves, each instance tries every address and notes what happened.
    let script = format!(
        "#!/bin/bash\nfor addr in {addrs}; do\n  if timeout 3 bash -c \"exec 3<>/dev/tcp/$addr/{port}\" 2>/dev/null; then r=reached; else r=blocked; fi\n  echo \"$PWD $addr $r\" >> {notes}\ndone\nexec {guestbook} \"$@\"\n",
        addrs = addresses.join(" "),
        notes = notes.display(),
        guestbook = guestbook_command()
    );
    let site = captured_site_running(
        "./outbound.sh",
        &[("outbound.sh", &script)],
        1,
        true,
        SIMULATE,
    );
    let on_host = reached.lock().unwrap().len();
    assert!(
        on_host >= addresses.len(),
        "run on the host, the instance reached the listener ({on_host} connections): {}",
        std::fs::read_to_string(&notes).unwrap()
    );
    let report_dir = tempfile::tempdir().unwrap();
    let args = [
        "--quick",
        "--only",
        "kill-instance",
        "--report",
        report_dir.path().to_str().unwrap(),
    ];
    let (pid, out) = match user {
        None => simulate_output(site.path(), &args, &[]),
        Some(user) => {
            user.give(site.path());
            user.give(report_dir.path());
            let mut cmd = user.command(&lifeboat_bin());
            cmd.arg("simulate").args(args).arg("-C").arg(site.path());
            let child = cmd
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (child.id(), child.wait_with_output().unwrap())
        }
    };
    let r = report_in(report_dir.path(), &out);
    assert_eq!(r["sandbox"]["network_isolated"], true, "{:#}", r["sandbox"]);
    let network = r["sandbox"]["network"].as_str().unwrap();
    let as_root = user.is_none() && nix::unistd::Uid::effective().is_root();
    assert!(
        network.contains(if as_root {
            "network namespace lbsim-"
        } else {
            "user namespace of its own"
        }),
        "{network}"
    );
    assert!(!network.contains("  "), "{network:?}");
    assert!(out.status.success(), "{:#}", r["scorecard"]);
    assert!(
        r["requests"].as_u64().unwrap() > 100,
        "the load got through"
    );
    assert!(r["availability"].as_f64().unwrap() >= 0.9);
    let text = std::fs::read_to_string(&notes).unwrap();
    let in_sandbox: Vec<&str> = text.lines().filter(|l| l.contains(".simulate")).collect();
    // The instance started with the sandbox, and the one Lifeboat restarted after the kill.
    assert!(
        in_sandbox.len() >= 2 * addresses.len(),
        "the sandbox's instances tried: {text}"
    );
    assert!(
        in_sandbox.iter().all(|l| l.ends_with(" blocked")),
        "the sandbox reached outside: {text}"
    );
    assert_eq!(
        reached.lock().unwrap().len(),
        on_host,
        "no connection came from the sandbox: {text}"
    );
    assert!(!netns_exists(pid), "its network namespace was deleted");
    // An ordinary user's network holder ends with the run (the heavy tests run one at a time,
    // so no other simulation's holder is about).
    let deadline = Instant::now() + Duration::from_secs(10);
    let holders = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&p| alive(p))
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__sim-sockets"))
            })
            .count()
    };
    while holders() > 0 {
        assert!(
            Instant::now() < deadline,
            "the network holder outlived the run"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The blkio cgroup the slow-disk fault of the simulation `pid` makes (beside this process's).
fn slow_disk_cgroup(pid: u32) -> PathBuf {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let rel = own
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == "blkio")
                .then(|| path.trim_start_matches('/').to_string())
        })
        .unwrap_or_default();
    Path::new("/sys/fs/cgroup/blkio")
        .join(rel)
        .join(format!("lbsim-{pid}"))
}

/// As root the state's small disk is a loop device; the fault throttles it for the sandbox's
/// processes (an fsync'd write takes many times longer), and setting it back makes it fast
/// again and removes the cgroup.
#[test]
fn the_states_disk_made_slow_is_throttled_for_its_phase_and_set_back() {
    let site = captured_site(1, true, SIMULATE);
    let report_dir = tempfile::tempdir().unwrap();
    let (pid, out) = simulate_output(
        site.path(),
        &[
            "--quick",
            "--only",
            "slow-disk",
            "--report",
            report_dir.path().to_str().unwrap(),
        ],
        &[],
    );
    let r = report_in(report_dir.path(), &out);
    let slow = fault(&r, "slow-disk");
    if !nix::unistd::Uid::effective().is_root() {
        assert!(
            slow["skipped"].as_str().unwrap().contains("needs root"),
            "{slow:#}"
        );
        return;
    }
    assert_eq!(slow["skipped"], Value::Null, "{slow:#}");
    let evidence = slow["evidence"].as_str().unwrap();
    assert!(
        evidence.contains("throttled to 20 writes and 50 reads a second"),
        "{slow:#}"
    );
    let before = slow["fsync_ms_before"].as_f64().unwrap();
    let during = slow["fsync_ms_during"].as_f64().unwrap();
    let after = slow["fsync_ms_after"].as_f64().unwrap();
    assert!(
        during > 5.0 * before && during >= 5.0,
        "the disk was slow: {before} ms before, {during} ms during: {slow:#}"
    );
    assert!(after < during / 2.0, "and fast again: {after} ms after");
    assert_eq!(slow["undone"], true, "{slow:#}");
    assert!(
        slow["undo_evidence"]
            .as_str()
            .unwrap()
            .contains("limits lifted"),
        "{slow:#}"
    );
    assert!(slow["requests"].as_u64().unwrap() > 0);
    assert_eq!(r["lost_acknowledged_writes"], 0);
    assert!(
        !slow_disk_cgroup(pid).exists(),
        "the cgroup {} was removed",
        slow_disk_cgroup(pid).display()
    );
    assert!(
        mounts_under(&sandbox_of(site.path())).is_empty(),
        "nothing stays mounted"
    );
}

/// The guestbook captured on one node, whose manifest then says it runs on several
/// (`[cluster]`, `durability = "sync"`, an etcd nobody runs): the live site does not run, so
/// the copy gets the default three nodes in three zones.
fn captured_cluster_site() -> SiteDir {
    captured_cluster_site_with("sync")
}

/// [`captured_cluster_site`] with `durability` (`sync` or `async`).
fn captured_cluster_site_with(durability: &str) -> SiteDir {
    let site = captured_site(2, true, SIMULATE);
    let path = site.path().join("lifeboat.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "\n[cluster]\netcd = [\"http://192.0.2.1:2379\"]\ndurability = \"{durability}\"\n"
    ));
    std::fs::write(&path, text).unwrap();
    site
}

/// Network namespaces and links (bridges, cables) whose name starts with `prefix`.
fn net_names(prefix: &str) -> Vec<String> {
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    let mut names: Vec<String> = String::from_utf8_lossy(&netns.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    names.extend(
        String::from_utf8_lossy(&links.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string()),
    );
    names.retain(|n| n.starts_with(prefix));
    names
}

/// A site on three nodes: the copy runs on three virtual hosts (the default, as the live
/// site does not run) with an etcd of its own; the primary's machine dies, is cut off, loses
/// its zone and an etcd member, a standby's machine dies, the primary's link turns slow and
/// lossy, one phase each, under sync writes. No acknowledged write is lost, the takeover is
/// timed, the old primary follows as a standby once back, a lost standby leaves the primary
/// leading in its term and follows again, the slow link drops packets and is set back, a
/// fault that makes no sense on a cluster says why it was not run, the HTML shows each node's
/// roles, and nothing of the LAN is left.
#[test]
fn a_site_on_three_nodes_survives_node_zone_etcd_and_network_loss() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: virtual hosts need root");
        return;
    }
    let site = captured_cluster_site();
    let report_dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    // Every fault: those of one node first, on the primary, then the cluster's.
    let out = simulate(
        site.path(),
        &["--quick", "--report", report_dir.path().to_str().unwrap()],
    )
    .output()
    .unwrap();
    let took = started.elapsed();
    let r = report_in(report_dir.path(), &out);
    let said = what_it_said(&out, &r);
    eprintln!(
        "the cluster run took {took:?}; it said:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    if let Ok(keep) = std::env::var("LIFEBOAT_KEEP_REPORT") {
        let _ = std::fs::copy(report_dir.path().join("report.json"), &keep);
        let html = Path::new(&keep).with_extension("html");
        let _ = std::fs::copy(report_dir.path().join("report.html"), html);
    }
    // Two failures are allowed, each with its reason in the advice. A standby's machine that
    // also holds etcd's leader can make the primary pause while etcd elects another (it
    // cannot renew its lease, and serves on without etcd only with every member's
    // confirmation, the lost one's too; 1 of ~10 phases: 0.75 s of 503 from the primary). A
    // 1 mbit/s lossy link is a stress, not a promise: whether visitors get answers within
    // 2 s depends on what else crosses it then (77-100% over 7 runs).
    let standby_leader_lost = fault(&r, "standby-loss")["etcd_leader_lost"] == true;
    let failed: Vec<&Value> = r["scorecard"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["passed"] == false)
        .collect();
    let allowed = |l: &&Value| {
        let (text, advice) = (
            l["text"].as_str().unwrap(),
            l["advice"].as_str().unwrap_or_default(),
        );
        (standby_leader_lost
            && text.starts_with("a standby's machine dies")
            && advice.contains("also held etcd's leader"))
            || (text.starts_with("the primary's network link slow")
                && advice.contains("slow, lossy link"))
    };
    assert!(failed.iter().all(allowed), "a sync cluster holds; {said}");
    if failed.is_empty() {
        assert!(out.status.success(), "{said}");
        assert_eq!(r["passed"], true);
    }
    assert!(took < Duration::from_secs(120), "took {took:?}");

    let cluster = &r["sandbox"]["cluster"];
    let nodes = cluster["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{said}");
    let zones: Vec<&str> = nodes.iter().map(|n| n["zone"].as_str().unwrap()).collect();
    assert_eq!(zones, ["z1", "z2", "z3"]);
    assert!(nodes.iter().all(|n| n["etcd_member"] == true));
    assert!(
        cluster["topology"].as_str().unwrap().contains("default"),
        "{said}"
    );
    assert_eq!(cluster["durability"], "sync");
    assert_eq!(r["sandbox"]["network_isolated"], true);

    // Sync durability: nothing acknowledged is lost, whatever died.
    assert_eq!(r["lost_acknowledged_writes"], 0, "{said}");
    let writes = &r["writes"];
    assert!(writes["acknowledged"].as_u64().unwrap() > 20, "{said}");
    assert!(
        writes["discarded_by_rewind"].as_u64().unwrap() > 0,
        "the rewinds gave up what came after their restore points: {said}"
    );
    assert_eq!(
        writes["acknowledged"].as_u64().unwrap(),
        writes["found"].as_u64().unwrap() + writes["discarded_by_rewind"].as_u64().unwrap(),
        "every acknowledged write was found, or given up by a rewind on purpose: {said}"
    );

    for name in ["node-loss", "partition", "zone-loss"] {
        let f = fault(&r, name);
        assert_eq!(f["skipped"], Value::Null, "{name}: {said}");
        assert_eq!(f["passed"], true, "{name}: {said}");
        assert_eq!(f["undone"], true, "{name}: {said}");
        assert_eq!(f["lost_acknowledged_writes"], 0, "{name}");
        let took = f["recovered_after_s"].as_f64().unwrap();
        assert!(took > 0.0 && took <= 30.0, "{name}: {took}");
        let old = f["node"].as_str().unwrap();
        let new = f["new_primary"].as_str().unwrap();
        assert_ne!(old, new, "{name}: another node took over");
        assert_eq!(f["rejoined_as_standby"], true, "{name}");
        assert!(f["rejoined_after_s"].as_f64().unwrap() >= 0.0);
        assert!(f["zone"].as_str().unwrap().starts_with('z'));
    }
    assert!(
        fault(&r, "node-loss")["evidence"]
            .as_str()
            .unwrap()
            .contains("SIGKILL to every process of the host")
    );
    let partition = fault(&r, "partition");
    assert!(
        partition["evidence"]
            .as_str()
            .unwrap()
            .contains("unplugged")
    );
    assert_eq!(partition["old_primary_fenced"], true, "{said}");
    // Every node's events are in the report, by time: the cut-off primary's own record that
    // it stopped writing is there, with its name.
    let events = r["events"].as_array().unwrap();
    let recorders: BTreeSet<&str> = events.iter().filter_map(|e| e["node"].as_str()).collect();
    assert!(
        recorders.len() >= 2,
        "events of one node only: {recorders:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["node"].is_string()
                && e["text"].as_str().unwrap().contains("stopped writing")),
        "no node's record of being fenced: {said}"
    );
    let times: Vec<f64> = events.iter().map(|e| e["t_s"].as_f64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "events by time");
    assert!(
        partition["undo_evidence"]
            .as_str()
            .unwrap()
            .contains("plugged back in")
    );
    let etcd = fault(&r, "etcd-member-loss");
    assert_eq!(etcd["passed"], true, "{said}");
    assert_eq!(etcd["primary_unchanged"], true);
    assert!(etcd["availability"].as_f64().unwrap() >= 0.9);
    assert!(etcd["undo_evidence"].as_str().unwrap().contains("healthy"));

    // A standby's machine dies during writes: the primary serves on in the same term, the
    // other standby (another zone) confirms the sync writes, and the lost one follows again.
    let standby = fault(&r, "standby-loss");
    eprintln!(
        "standby-loss: {}; undone: {}; writes {} sent, {} acknowledged, longest {} s; \
         availability {}",
        standby["evidence"],
        standby["undo_evidence"],
        standby["writes_during"],
        standby["writes_acknowledged_during"],
        standby["longest_write_s"],
        standby["availability"]
    );
    assert_eq!(standby["skipped"], Value::Null, "{said}");
    assert_eq!(standby["undone"], true, "{said}");
    let evidence = standby["evidence"].as_str().unwrap();
    assert!(
        evidence.contains(if standby_leader_lost {
            "its etcd member led etcd"
        } else {
            "etcd's leader was elsewhere"
        }),
        "{evidence}"
    );
    if !standby_leader_lost {
        assert_eq!(standby["passed"], true, "{said}");
        assert!(standby["availability"].as_f64().unwrap() >= 0.9);
    }
    assert!(
        evidence.contains("SIGKILL to every process of the host of standby")
            && evidence.contains("is left to confirm writes in another zone"),
        "{evidence}"
    );
    assert_eq!(standby["primary_unchanged"], true, "{said}");
    assert_eq!(standby["new_primary"], Value::Null, "{said}");
    assert!(
        !evidence.contains(&format!(
            "the primary is node {} ",
            standby["node"].as_str().unwrap()
        )),
        "the node lost was not the primary: {evidence}"
    );
    assert_eq!(standby["rejoined_as_standby"], true, "{said}");
    assert!(standby["rejoined_after_s"].as_f64().unwrap() <= 30.0);
    assert_eq!(standby["lost_acknowledged_writes"], 0);
    assert!(standby["writes_during"].as_u64().unwrap() > 0, "{said}");
    assert!(
        standby["writes_acknowledged_during"].as_u64().unwrap() > 0,
        "the other standby confirmed writes: {said}"
    );
    assert!(
        standby["undo_evidence"]
            .as_str()
            .unwrap()
            .contains("still leads in term")
    );

    // The primary's link slow and lossy: packets really dropped, the link set back.
    let slow = fault(&r, "slow-link");
    eprintln!(
        "slow-link: {}; undone: {}; availability {}, p99 {} ms; writes {} sent, {} \
         acknowledged, longest {} s",
        slow["evidence"],
        slow["undo_evidence"],
        slow["availability"],
        slow["p99_ms"],
        slow["writes_during"],
        slow["writes_acknowledged_during"],
        slow["longest_write_s"]
    );
    assert_eq!(
        slow["skipped"],
        Value::Null,
        "nft is installed here: {said}"
    );
    assert_eq!(slow["undone"], true, "{said}");
    assert_eq!(
        slow["passed"],
        slow["availability"].as_f64().unwrap() >= 0.9,
        "judged by availability: {said}"
    );
    let evidence = slow["evidence"].as_str().unwrap();
    assert!(
        evidence.contains("tbf qdisc on eth0") && evidence.contains("the table lbsim_slow_link"),
        "{evidence}"
    );
    assert!(slow["link_dropped_packets"].as_u64().unwrap() > 0, "{said}");
    let undo = slow["undo_evidence"].as_str().unwrap();
    assert!(
        undo.contains("the tbf qdisc and the table lbsim_slow_link removed")
            && undo.contains("every other node follows it as a streaming standby after"),
        "{undo}"
    );
    assert_eq!(slow["lost_acknowledged_writes"], 0);

    // The HTML says what each node was and what the faults did to it.
    let html = report_dir.path().join("report.html");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("The cluster's nodes"), "{page}");
    for n in nodes {
        assert!(
            n["role_at_start"]
                .as_str()
                .unwrap()
                .starts_with(if n["name"] == "n1" {
                    "primary (term"
                } else {
                    "standby of n1"
                }),
            "{n}"
        );
        assert!(!n["role_at_end"].as_str().unwrap().is_empty(), "{n}");
    }
    assert!(page.contains("standby-loss: its machine died as a standby, back as a standby after"));
    assert!(page.contains("node-loss: its machine died as the primary, back as a standby after"));
    assert!(page.contains("slow-link: its link slow and lossy as the primary"));
    opens_in_chromium(&html);

    // The faults of one node run on the primary; those that make no sense here say why.
    for name in [
        "usage-spike",
        "kill-instance",
        "hang-instance",
        "kill-all-instances",
        "slow-clients",
        "credential-stuffing",
        "vault-destination-down",
        "virus",
        "corruption",
    ] {
        assert_eq!(fault(&r, name)["skipped"], Value::Null, "{name}: {said}");
        assert_eq!(fault(&r, name)["passed"], true, "{name}: {said}");
    }
    // The primary rewinds; its standbys take the rewound state from the vault.
    for name in ["virus", "corruption"] {
        let f = fault(&r, name);
        assert!(
            f["undo_evidence"]
                .as_str()
                .unwrap()
                .contains("every standby follows the rewound state again"),
            "{name}: {said}"
        );
    }
    assert_eq!(fault(&r, "virus")["removed_by_rewind"], true, "{said}");
    for (name, why) in [
        ("disk-full", "cluster"),
        ("slow-disk", "cluster"),
        ("kill-lifeboat", "node-loss"),
    ] {
        let skipped = fault(&r, name)["skipped"].as_str().unwrap_or_default();
        assert!(skipped.contains(why), "{name}: {skipped}; {said}");
    }
    assert_eq!(r["faults"].as_array().unwrap().len(), 18);
    // The scorecard says who took over.
    let lines = r["scorecard"].as_array().unwrap();
    assert!(
        lines.iter().any(|l| l["text"]
            .as_str()
            .unwrap()
            .contains("followed as a standby")),
        "{said}"
    );

    // Nothing is left: processes, dirs, hosts, the bridge.
    let sandbox = sandbox_of(site.path());
    assert!(
        processes_naming(&sandbox).is_empty(),
        "{:?}",
        processes_naming(&sandbox)
    );
    assert!(!sandbox.exists());
    for k in 2..=3 {
        let dir = sandbox.with_file_name(format!(
            "{}.n{k}",
            sandbox.file_name().unwrap().to_string_lossy()
        ));
        assert!(!dir.exists(), "{} left", dir.display());
    }
    let bridge = cluster["bridge"].as_str().unwrap();
    let stem = bridge.trim_end_matches("br");
    assert!(net_names(stem).is_empty(), "left: {:?}", net_names(stem));
}

/// A site on two nodes with `durability = "async"` (`--nodes n1=z1,n2=z2`): its only standby
/// dies and comes back with the primary leading on; the primary's machine dies and the other
/// node takes over. A write acknowledged but not yet shipped may be lost with async: whatever
/// this run lost is counted exactly (found + lost = acknowledged), a loss fails the run with
/// the advice to make it sync, and the scorecard says what async risks even when nothing was
/// lost. With `nft` missing (`LIFEBOAT_NFT` names none) the slow link is skipped with the
/// reason, not failed.
#[test]
fn a_site_on_two_async_nodes_is_told_what_a_takeover_may_lose() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: virtual hosts need root");
        return;
    }
    let site = captured_cluster_site_with("async");
    let report_dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = simulate(
        site.path(),
        &[
            "--quick",
            "--nodes",
            "n1=z1,n2=z2",
            "--only",
            "standby-loss,slow-link,node-loss",
            "--report",
            report_dir.path().to_str().unwrap(),
        ],
    )
    .env("LIFEBOAT_NFT", "/nonexistent/nft")
    .output()
    .unwrap();
    let took = started.elapsed();
    let r = report_in(report_dir.path(), &out);
    let said = what_it_said(&out, &r);
    eprintln!(
        "the 2-node async run took {took:?}; it said:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let cluster = &r["sandbox"]["cluster"];
    let nodes = cluster["nodes"].as_array().unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["n1", "n2"], "{said}");
    assert!(
        cluster["topology"].as_str().unwrap().contains("--nodes"),
        "{said}"
    );
    assert_eq!(cluster["durability"], "async");
    assert_eq!(
        cluster["etcd_on_services_host"], true,
        "two nodes get a witness member"
    );

    // The only standby lost: async writes do not wait for it; the primary leads on.
    let standby = fault(&r, "standby-loss");
    eprintln!(
        "standby-loss: {}; undone: {}; writes {} sent, {} acknowledged, longest {} s",
        standby["evidence"],
        standby["undo_evidence"],
        standby["writes_during"],
        standby["writes_acknowledged_during"],
        standby["longest_write_s"]
    );
    assert_eq!(standby["skipped"], Value::Null, "{said}");
    assert!(
        standby["evidence"]
            .as_str()
            .unwrap()
            .contains("no other standby in another zone is left"),
        "{said}"
    );
    assert_eq!(standby["node"], "n2");
    assert_eq!(standby["primary_unchanged"], true, "{said}");
    assert_eq!(standby["rejoined_as_standby"], true, "{said}");
    assert_eq!(standby["undone"], true, "{said}");
    // Unless its machine also held etcd's leader: the primary then pauses until etcd has
    // elected another (1 of 2 CI runs: 11 of 16 writes answered meanwhile).
    if standby["etcd_leader_lost"] != true {
        assert_eq!(
            standby["writes_acknowledged_during"], standby["writes_during"],
            "async writes do not wait for a standby: {said}"
        );
    }

    // No nft: skipped with the reason, not failed.
    let slow = fault(&r, "slow-link");
    assert!(
        slow["skipped"].as_str().unwrap_or_default().contains("nft"),
        "{said}"
    );
    assert_eq!(slow["passed"], true);

    // The primary's machine dies: n2 takes over; what async may lose is said.
    let loss = fault(&r, "node-loss");
    eprintln!(
        "node-loss: {}; lost {}; unconfirmed before {}",
        loss["evidence"], loss["lost_acknowledged_writes"], loss["unconfirmed_changes"]
    );
    assert_eq!(loss["skipped"], Value::Null, "{said}");
    assert_eq!(loss["node"], "n1");
    assert_eq!(loss["new_primary"], "n2", "{said}");
    assert!(
        loss["recovered_after_s"].as_f64().unwrap() <= 30.0,
        "{said}"
    );
    assert_eq!(loss["rejoined_as_standby"], true, "{said}");
    assert!(
        loss["evidence"]
            .as_str()
            .unwrap()
            .contains("durability async"),
        "{said}"
    );
    assert!(loss["unconfirmed_changes"].is_u64(), "{said}");

    // Honest accounting: every acknowledged write is found or counted lost.
    let lost = r["lost_acknowledged_writes"].as_u64().unwrap();
    let w = &r["writes"];
    assert_eq!(
        w["found"].as_u64().unwrap() + lost,
        w["acknowledged"].as_u64().unwrap(),
        "{said}"
    );
    let lines = r["scorecard"].as_array().unwrap();
    let note = lines
        .iter()
        .find(|l| {
            l["text"]
                .as_str()
                .unwrap()
                .contains("durability = \"async\"")
        })
        .unwrap_or_else(|| panic!("the scorecard says what async risks: {said}"));
    assert!(
        note["advice"]
            .as_str()
            .unwrap()
            .contains("durability = \"sync\""),
        "{note}"
    );
    if lost > 0 {
        assert_eq!(r["passed"], false, "a lost write fails the run: {said}");
        assert!(!out.status.success());
        assert_eq!(loss["passed"], false);
        assert!(lines.iter().any(|l| {
            l["passed"] == false
                && l["advice"]
                    .as_str()
                    .is_some_and(|a| a.contains("durability = \"sync\""))
        }));
    } else {
        assert!(out.status.success(), "{said}");
    }
    // Nothing is left.
    let sandbox = sandbox_of(site.path());
    assert!(processes_naming(&sandbox).is_empty());
    let stem = cluster["bridge"].as_str().unwrap().trim_end_matches("br");
    assert!(net_names(stem).is_empty(), "left: {:?}", net_names(stem));
}

/// A site on two nodes with `durability = "sync"`: when its only standby (the only other
/// zone) dies, the primary leads on but cannot confirm a write anywhere, so writes stall until
/// the standby is back (or get 503 after `sync_timeout`): none is acknowledged and then lost,
/// and the phase says that writes stalled and for how long.
#[test]
fn a_site_on_two_sync_nodes_holds_writes_while_its_only_standby_is_down() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: virtual hosts need root");
        return;
    }
    let site = captured_cluster_site_with("sync");
    let report_dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = simulate(
        site.path(),
        &[
            "--quick",
            "--nodes",
            "n1=z1,n2=z2",
            "--only",
            "standby-loss",
            "--report",
            report_dir.path().to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    let took = started.elapsed();
    let r = report_in(report_dir.path(), &out);
    let said = what_it_said(&out, &r);
    let f = fault(&r, "standby-loss");
    eprintln!(
        "the 2-node sync run took {took:?}; standby-loss: {}; undone: {}; writes {} sent, {} \
         acknowledged, longest {} s; availability {}",
        f["evidence"],
        f["undo_evidence"],
        f["writes_during"],
        f["writes_acknowledged_during"],
        f["longest_write_s"],
        f["availability"]
    );
    assert_eq!(r["sandbox"]["cluster"]["durability"], "sync", "{said}");
    assert_eq!(f["skipped"], Value::Null, "{said}");
    assert!(
        f["evidence"]
            .as_str()
            .unwrap()
            .contains("no other standby in another zone is left to confirm sync writes"),
        "{said}"
    );
    assert_eq!(f["primary_unchanged"], true, "{said}");
    assert_eq!(f["rejoined_as_standby"], true, "{said}");
    assert_eq!(f["undone"], true, "{said}");
    // Held: a write sent just after the kill waits until the standby is back (the fault's
    // hold, 1.5 s, and its restart), where on three nodes the other standby confirms it at once.
    assert!(f["writes_during"].as_u64().unwrap() > 0, "{said}");
    let longest = f["longest_write_s"].as_f64().unwrap();
    assert!(longest >= 1.0, "writes stalled: {longest} s; {said}");
    let line = r["scorecard"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| {
            l["text"]
                .as_str()
                .unwrap()
                .starts_with("a standby's machine dies")
        })
        .unwrap();
    assert!(
        line["text"].as_str().unwrap().contains("writes stalled"),
        "{line}"
    );
    // Never acknowledged and then lost.
    assert_eq!(r["lost_acknowledged_writes"], 0, "{said}");
    assert_eq!(r["writes"]["found"], r["writes"]["acknowledged"], "{said}");
}

/// `simulate` started on `site`, once run.json names `nodes` lifeboats that run; the child
/// and run.json.
fn start_and_wait_for_nodes(site: &Path, nodes: usize) -> (std::process::Child, Value) {
    let mut child = simulate(site, &["--quick", "--report", "/dev/null/none"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run_file = sandbox_of(site).join(".lifeboat/simulate/run.json");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let run = std::fs::read(&run_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        if let Some(run) = run {
            let running = run["lifeboat_pids"].as_array().map_or(0, |p| {
                p.iter()
                    .filter(|p| alive(p.as_u64().unwrap() as u32))
                    .count()
            });
            if running >= nodes {
                return (child, run);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the cluster sandbox never started"
        );
        assert!(child.try_wait().unwrap().is_none(), "simulate ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A kill -9 of `simulate` while its cluster copy runs: every node, etcd member and the S3
/// server die with it; the LAN stays until the next run, which removes it and its node dirs;
/// a Ctrl-C of that run removes everything at once.
#[test]
fn a_cluster_copy_dies_with_simulate_and_leaves_no_host_behind() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: virtual hosts need root");
        return;
    }
    let site = captured_cluster_site();
    let sandbox = sandbox_of(site.path());
    let (mut child, run) = start_and_wait_for_nodes(site.path(), 3);
    let stem = run["lan"]["bridge"]
        .as_str()
        .unwrap()
        .trim_end_matches("br")
        .to_string();
    assert_eq!(run["etcd_pids"].as_array().unwrap().len(), 3, "{run:#}");
    assert_eq!(run["node_dirs"].as_array().unwrap().len(), 2, "{run:#}");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    wait_until("every process of the cluster copy to end", || {
        processes_naming(&sandbox).is_empty()
    });
    assert!(
        !net_names(&stem).is_empty(),
        "a kill -9 cannot remove the LAN"
    );
    // The next run cleans up first; a Ctrl-C then removes its own at once.
    let (mut child, run) = start_and_wait_for_nodes(site.path(), 3);
    assert!(
        net_names(&stem).is_empty(),
        "the old LAN is gone: {:?}",
        net_names(&stem)
    );
    let stem = run["lan"]["bridge"]
        .as_str()
        .unwrap()
        .trim_end_matches("br")
        .to_string();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert!(
        processes_naming(&sandbox).is_empty(),
        "{:?}",
        processes_naming(&sandbox)
    );
    assert!(net_names(&stem).is_empty(), "left: {:?}", net_names(&stem));
    assert!(!sandbox.exists());
    for dir in run["node_dirs"].as_array().unwrap() {
        assert!(!Path::new(dir.as_str().unwrap()).exists(), "{dir} left");
    }
}
