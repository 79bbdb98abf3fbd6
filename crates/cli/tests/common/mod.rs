//! Helpers for the end-to-end tests: a temporary site running the real guestbook, the real
//! `lifeboat` binary started on it, a load generator, and waiting on conditions with deadlines.
//! Every process started here is killed when the guard drops, even when a test panics.
#![allow(
    dead_code,
    reason = "each test file uses a different part of the helpers"
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::Value;

/// Generous: the machine running the tests may be loaded.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn lifeboat_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lifeboat"))
}

/// The guestbook binary built next to lifeboat (`cargo test --workspace` builds it).
pub fn guestbook_bin() -> PathBuf {
    let path = lifeboat_bin()
        .parent()
        .expect("binary dir")
        .join("guestbook");
    assert!(
        path.exists(),
        "{} is missing; build it first with `cargo build -p guestbook` (cargo test --workspace does)",
        path.display()
    );
    path
}

/// A temporary site dir with a manifest running the guestbook.
pub struct SiteDir {
    pub dir: tempfile::TempDir,
}

impl SiteDir {
    /// A guestbook site whose `web` process runs `command` (use [`guestbook_command`]).
    pub fn with_command(command: &str, replicas: u32) -> SiteDir {
        SiteDir::with_manifest(&format!(
            r#"[site]
name = "guestbook"

[processes.web]
command = "{command}"
replicas = {replicas}
stop_timeout = "10s"
health = {{ path = "/healthz", interval = "200ms", timeout = "2s" }}

[state]
sqlite = ["data/guestbook.db"]
dirs = ["data/uploads"]

[proxy]
listen = "127.0.0.1:0"

[maintenance]
message = "Upgrading the database, back in 10 minutes"
"#
        ))
    }

    pub fn guestbook(replicas: u32) -> SiteDir {
        SiteDir::with_command(&guestbook_command(), replicas)
    }

    pub fn with_manifest(manifest: &str) -> SiteDir {
        let dir = tempfile::Builder::new()
            .prefix("lifeboat-e2e")
            .tempdir()
            .expect("temp dir");
        open_to_the_site_user(dir.path());
        std::fs::write(dir.path().join("lifeboat.toml"), manifest).expect("write manifest");
        SiteDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

pub fn guestbook_command() -> String {
    guestbook_bin().display().to_string()
}

/// A running `lifeboat up`. Dropping it kills lifeboat and every instance it reported.
pub struct Lifeboat {
    child: Option<Child>,
    pub site: PathBuf,
    pub proxy: String,
    seen_pids: Mutex<BTreeSet<u32>>,
    /// The ordinary user lifeboat and its CLI run as ([`Lifeboat::up_as`]); `None`: ours.
    user: Option<OsUser>,
}

impl Lifeboat {
    /// Starts `lifeboat up SITE --listen 127.0.0.1:0` and waits until its API answers.
    pub fn up(site: &Path) -> Lifeboat {
        Lifeboat::up_with_env(site, &[])
    }

    /// [`Lifeboat::up`] with extra environment for lifeboat (and so its instances).
    pub fn up_with_env(site: &Path, env: &[(&str, &str)]) -> Lifeboat {
        Lifeboat::up_as_user_would(None, site, &[], env)
    }

    /// `lifeboat up SITE_ARG --listen 127.0.0.1:0 EXTRA...` run from `cwd` (SITE_ARG may then be
    /// relative to it, as a user types it), with extra environment. Its output goes to
    /// `lifeboat-up.log` in the site dir.
    pub fn up_as_user_would(
        cwd: Option<&Path>,
        site_arg: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Lifeboat {
        let site = match cwd {
            Some(cwd) => cwd.join(site_arg),
            None => site_arg.to_path_buf(),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(site.join("lifeboat-up.log"))
            .expect("log file");
        let mut cmd = Command::new(lifeboat_bin());
        cmd.arg("up")
            .arg(site_arg)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra);
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        cmd.envs(env.iter().copied());
        cmd.stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("start lifeboat");
        let mut lifeboat = Lifeboat {
            child: Some(child),
            site,
            proxy: String::new(),
            seen_pids: Mutex::new(BTreeSet::new()),
            user: None,
        };
        let status = lifeboat.wait_for_status("the control API to answer", |_| true);
        lifeboat.proxy = status["proxy"]
            .as_str()
            .expect("status has a proxy address")
            .to_string();
        lifeboat
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("lifeboat runs").id()
    }

    /// Runs `lifeboat ARGS -C SITE` (as the user lifeboat runs as).
    pub fn cli(&self, args: &[&str]) -> Output {
        match &self.user {
            None => cli(&self.site, args),
            Some(user) => user
                .command(&lifeboat_bin())
                .args(args)
                .arg("-C")
                .arg(&self.site)
                .output()
                .expect("run lifeboat"),
        }
    }

    /// Starts `lifeboat up SITE --listen 127.0.0.1:0` as the ordinary `user` (its own HOME
    /// and TMPDIR), and waits until its API answers. The CLI calls run as that user too.
    pub fn up_as(user: &OsUser, site: &Path) -> Lifeboat {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(site.join("lifeboat-up.log"))
            .expect("log file");
        user.give(&site.join("lifeboat-up.log"));
        let mut cmd = user.command(&lifeboat_bin());
        cmd.arg("up").arg(site).args(["--listen", "127.0.0.1:0"]);
        cmd.stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("start lifeboat");
        let mut lifeboat = Lifeboat {
            child: Some(child),
            site: site.to_path_buf(),
            proxy: String::new(),
            seen_pids: Mutex::new(BTreeSet::new()),
            user: Some(user.clone()),
        };
        let status = lifeboat.wait_for_status("the control API to answer", |_| true);
        lifeboat.proxy = status["proxy"]
            .as_str()
            .expect("status has a proxy address")
            .to_string();
        lifeboat
    }

    /// `lifeboat status --json`, or None while the API does not answer.
    pub fn try_status(&self) -> Option<Value> {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        let status: Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
        let mut seen = self.seen_pids.lock().unwrap();
        // And the site's MariaDB servers: run as the site's user, they lose the parent-death
        // signal that takes instances down with a killed lifeboat, and would outlive the test.
        for i in status["instances"]
            .as_array()
            .into_iter()
            .chain(status["databases"].as_array())
            .flatten()
        {
            if let Some(pid) = i["pid"].as_u64() {
                seen.insert(pid as u32);
            }
        }
        Some(status)
    }

    pub fn status(&self) -> Value {
        self.try_status().unwrap_or_else(|| {
            panic!(
                "lifeboat status failed; lifeboat's output:\n{}",
                self.output()
            )
        })
    }

    /// Polls `status --json` until `cond` holds; panics with the last status after [`DEADLINE`].
    pub fn wait_for_status(&self, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        let mut last = None;
        loop {
            if let Some(status) = self.try_status() {
                if cond(&status) {
                    return status;
                }
                last = Some(status);
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; last status: {last:#?}\nlifeboat's output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until every instance of the site is healthy and there are `n` of them.
    pub fn wait_healthy(&self, n: usize) -> Value {
        self.wait_for_status(&format!("{n} healthy instances"), |s| {
            let instances = s["instances"].as_array().unwrap();
            instances.len() == n && instances.iter().all(|i| i["state"] == "healthy")
        })
    }

    /// `lifeboat events --json`.
    pub fn events(&self) -> Vec<Value> {
        let out = self.cli(&["events", "--json", "-n", "10000"]);
        assert!(
            out.status.success(),
            "events failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("events --json is a JSON list")
    }

    /// Polls the events until one matches.
    pub fn wait_for_event(&self, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let events = self.events();
            if let Some(e) = events.iter().find(|e| cond(e)) {
                return e.clone();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the event {what}; events: {events:#?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What lifeboat printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.site.join("lifeboat-up.log")).unwrap_or_default()
    }

    /// Kills lifeboat itself with SIGKILL (not its instances) and reaps it.
    pub fn kill_9(&mut self) {
        let mut child = self.child.take().expect("lifeboat runs");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).expect("kill lifeboat");
        child.wait().expect("reap lifeboat");
    }

    /// Waits for lifeboat to exit by itself (after `lifeboat down`); returns whether it succeeded.
    pub fn wait_exit(&mut self) -> bool {
        let mut child = self.child.take().expect("lifeboat runs");
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("wait lifeboat") {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("lifeboat did not exit; output:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn seen_pids(&self) -> Vec<u32> {
        self.seen_pids.lock().unwrap().iter().copied().collect()
    }
}

impl Drop for Lifeboat {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
        // Instances run in their own process groups; they die with lifeboat, but make sure.
        for pid in self.seen_pids.lock().map(|s| s.clone()).unwrap_or_default() {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        // Every MariaDB server of this site, also one started after the last status (a
        // rewound state's): run as the site's user, mariadbd loses the parent-death signal.
        for pid in site_mariadb_servers(&self.site) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// The pids of the `mariadbd` processes whose config lies in `site`'s `.lifeboat/mariadb/`.
fn site_mariadb_servers(site: &Path) -> Vec<u32> {
    let needle = format!("--defaults-file={}/.lifeboat/mariadb/", site.display());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|b| *b == 0)
                    .any(|arg| arg.starts_with(needle.as_bytes()))
            })
        })
        .collect()
}

/// Runs `lifeboat ARGS -C SITE` and returns what it printed.
pub fn cli(site: &Path, args: &[&str]) -> Output {
    Command::new(lifeboat_bin())
        .args(args)
        .arg("-C")
        .arg(site)
        .output()
        .expect("run lifeboat")
}

/// True while a process with this pid exists (and is not a zombie of ours).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Waits for a condition, polling; panics with `what` after [`DEADLINE`].
pub fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One request of the load.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub started: Instant,
    pub finished: Instant,
    pub method: &'static str,
    /// HTTP status, or the transport error.
    pub result: Result<u16, String>,
    pub body: String,
    pub bypass: bool,
}

/// Client tasks sending GET / , GET /api/entries and POST /entries continuously.
pub struct Load {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `clients` tasks; with `bypass`, every other client sends the bypass header.
    pub fn start(proxy: &str, clients: usize, bypass: Option<Arc<Mutex<Option<String>>>>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (stop, outcomes, proxy) = (stop.clone(), outcomes.clone(), proxy.to_string());
            let bypass = if c % 2 == 1 { bypass.clone() } else { None };
            tasks.push(tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                let mut n = 0u64;
                let started_ns = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos();
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let token = bypass.as_ref().and_then(|b| b.lock().unwrap().clone());
                    let (method, req) = match n % 3 {
                        0 => (
                            "POST",
                            // The key lets the front door replay the POST on another
                            // instance if its instance dies before answering, and lets the
                            // guestbook answer a replay with the first id instead of a copy.
                            http.post(format!("{proxy}/entries"))
                                .header("Idempotency-Key", format!("load-{c}-{n}-{started_ns}"))
                                .json(
                                    &serde_json::json!({"text": format!("client {c} entry {n}")}),
                                ),
                        ),
                        1 => ("GET", http.get(format!("{proxy}/api/entries"))),
                        _ => ("GET", http.get(format!("{proxy}/"))),
                    };
                    let req = match &token {
                        Some(t) => req.header("X-Lifeboat-Bypass", t),
                        None => req,
                    };
                    let started = Instant::now();
                    let (result, body) = match req.send().await {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            match resp.text().await {
                                Ok(body) => (Ok(status), body.chars().take(2000).collect()),
                                Err(e) => (Err(format!("reading the body: {e}")), String::new()),
                            }
                        }
                        Err(e) => (Err(format!("{e:?}")), String::new()),
                    };
                    outcomes.lock().unwrap().push(Outcome {
                        started,
                        finished: Instant::now(),
                        method,
                        result,
                        body,
                        bypass: token.is_some(),
                    });
                }
            }));
        }
        Load {
            stop,
            outcomes,
            tasks,
        }
    }

    pub fn count(&self) -> usize {
        self.outcomes.lock().unwrap().len()
    }

    /// Waits until `more` further requests completed (so the load really overlaps an action).
    pub async fn wait_for_requests(&self, more: usize) {
        let target = self.count() + more;
        let deadline = Instant::now() + DEADLINE;
        while self.count() < target {
            assert!(Instant::now() < deadline, "the load made no progress");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the outcomes so far satisfy `cond` (e.g. enough requests of one kind).
    pub async fn wait_for(&self, what: &str, cond: impl Fn(&[Outcome]) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !cond(&self.outcomes.lock().unwrap()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the load: {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("client task");
        }
        Arc::try_unwrap(self.outcomes)
            .expect("tasks done")
            .into_inner()
            .unwrap()
    }
}

/// The requests that did not get the answer a healthy site gives (2xx).
pub fn failures(outcomes: &[Outcome]) -> Vec<&Outcome> {
    outcomes
        .iter()
        .filter(|o| !matches!(o.result, Ok(200..=299)))
        .collect()
}

pub fn assert_no_failures(outcomes: &[Outcome]) {
    let failed = failures(outcomes);
    assert!(
        outcomes.len() > 50,
        "the load sent only {} requests",
        outcomes.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:#?}",
        failed.len(),
        outcomes.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
}

/// Like [`assert_no_failures`], and shows lifeboat's own log when a request failed.
pub fn assert_no_failures_or_show_log(outcomes: &[Outcome], lifeboat_output: &str) {
    let failed = failures(outcomes);
    assert!(
        outcomes.len() > 50,
        "the load sent only {} requests",
        outcomes.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:#?}\nlifeboat's output:\n{lifeboat_output}",
        failed.len(),
        outcomes.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
}

/// Kills a helper process (e.g. `lifeboat events --follow`) when dropped.
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0 as i32), Signal::SIGKILL);
    }
}

impl Lifeboat {
    /// Starts `lifeboat up SITE ARGS --listen 127.0.0.1:0` with `cwd` as its working directory,
    /// as a user types it (`SITE` may be relative to `cwd`), and waits until its API answers.
    /// Panics with lifeboat's output as soon as it exits instead (a refused flag, a bad manifest).
    pub fn up_from(cwd: &Path, site: &str, args: &[&str], env: &[(&str, &str)]) -> Lifeboat {
        let site_dir = cwd.join(site);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(site_dir.join("lifeboat-up.log"))
            .expect("log file");
        let mut cmd = Command::new(lifeboat_bin());
        cmd.current_dir(cwd)
            .arg("up")
            .arg(site)
            .args(args)
            .args(["--listen", "127.0.0.1:0"]);
        cmd.envs(env.iter().copied());
        cmd.stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("start lifeboat");
        let mut lifeboat = Lifeboat {
            child: Some(child),
            site: site_dir,
            proxy: String::new(),
            seen_pids: Mutex::new(BTreeSet::new()),
            user: None,
        };
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = lifeboat.try_status() {
                break status;
            }
            let child = lifeboat.child.as_mut().expect("lifeboat runs");
            if let Some(exit) = child.try_wait().expect("wait lifeboat") {
                lifeboat.child = None;
                panic!(
                    "`lifeboat up {site} {}` (from {}) exited ({exit}) before its API answered; its output:\n{}",
                    args.join(" "),
                    cwd.display(),
                    lifeboat.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "lifeboat's API did not answer; its output:\n{}",
                lifeboat.output()
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        lifeboat.proxy = status["proxy"]
            .as_str()
            .expect("status has a proxy address")
            .to_string();
        lifeboat
    }
}

/// Runs `lifeboat ARGS` with `cwd` as its working directory (no `-C` added).
pub fn cli_from(cwd: &Path, args: &[&str]) -> Output {
    Command::new(lifeboat_bin())
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("run lifeboat")
}

/// Run as root, lifeboat runs the site's processes as an unprivileged user, who must be able
/// to enter the site dir (temp dirs are made 0700).
pub fn open_to_the_site_user(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
}

/// An ordinary (not root) user of this machine that tests run lifeboat as, created when
/// missing (which needs root), with a home of its own that holds its TMPDIR.
#[derive(Debug, Clone)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl OsUser {
    /// The user `name`, created (`useradd --create-home`) when it does not exist. `None`
    /// when the tests do not run as root (creating users and switching to them needs it).
    pub fn ensure(name: &str) -> Option<OsUser> {
        if !nix::unistd::Uid::effective().is_root() {
            return None;
        }
        if nix::unistd::User::from_name(name).ok().flatten().is_none() {
            let out = Command::new("useradd")
                .args(["--create-home", "--shell", "/bin/sh", "--user-group", name])
                .output()
                .expect("run useradd");
            // Another test may have created it meanwhile.
            assert!(
                out.status.success() || nix::unistd::User::from_name(name).ok().flatten().is_some(),
                "useradd {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let user = nix::unistd::User::from_name(name)
            .expect("read the user database")
            .expect("the user exists");
        let home = user.dir.clone();
        std::fs::create_dir_all(&home).expect("create the home");
        let os = OsUser {
            name: name.to_string(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home,
        };
        os.give(&os.home);
        std::fs::create_dir_all(os.tmpdir()).expect("create its TMPDIR");
        os.give(&os.tmpdir());
        Some(os)
    }

    /// Its own temporary dir (`TMPDIR` of the processes run as it).
    pub fn tmpdir(&self) -> PathBuf {
        self.home.join("tmp")
    }

    /// `program` run as this user (`setpriv`: the same process, so a kill of it is a kill of
    /// the program), with its HOME, USER and TMPDIR and nothing of ours but PATH.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(program)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name)
            .env("TMPDIR", self.tmpdir());
        cmd
    }

    /// Gives `path` (and everything under it) to this user.
    pub fn give(&self, path: &Path) {
        let out = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", self.uid, self.gid))
            .arg(path)
            .output()
            .expect("run chown");
        assert!(out.status.success(), "chown {}", path.display());
    }
}
