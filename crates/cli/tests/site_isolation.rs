//! A compromised app must not reach what undoes its attack: a hostile instance (a script run as
//! one of the site's processes) tries to read the vault key, find Lifeboat's secrets in its
//! environment and in Lifeboat's, drive the control socket (directly and through other
//! processes' views of the machine), write into the vault, rename Lifeboat's directory and
//! signal Lifeboat. Every attempt must fail and the site must keep serving: with Lifeboat run
//! as root (the site gets a user of its own) and as an ordinary user (namespaces, Landlock).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{DEADLINE, lifeboat_bin};
use serde_json::Value;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile/hostile.py")
}

/// The hostile site in `dir`: one instance of the hostile script, a data dir it may write
/// (where it puts its report), and a local vault.
fn hostile_site(dir: &Path) {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(
        dir.join("lifeboat.toml"),
        format!(
            r#"[site]
name = "hostile"

[processes.web]
command = "python3 {}"
env = {{ REPORT = "data/report.json" }}
health = {{ path = "/", interval = "200ms", timeout = "2s" }}

[state]
dirs = ["data"]

[proxy]
listen = "127.0.0.1:0"

[vault]
destinations = [".lifeboat/vault"]
"#,
            fixture().display()
        ),
    )
    .unwrap();
}

/// `lifeboat up` of the hostile site, as `owner` (uid, gid) when given, with Lifeboat's
/// secrets in its environment. Killed (with its process group) on drop.
struct Up {
    child: Child,
    dir: PathBuf,
}

impl Up {
    fn start(dir: &Path, owner: Option<(u32, u32)>) -> Up {
        let log = std::fs::File::create(dir.join("lifeboat-up.log")).unwrap();
        let mut command = match owner {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg(lifeboat_bin());
                c
            }
            None => Command::new(lifeboat_bin()),
        };
        command
            .args(["up", "--listen", "127.0.0.1:0"])
            .arg(dir)
            .env("LIFEBOAT_PASSWORD", "the-owners-vault-password")
            .env("AWS_ACCESS_KEY_ID", "AKIAOWNER")
            .env("AWS_SECRET_ACCESS_KEY", "the-owners-s3-secret")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        Up {
            child: command.spawn().expect("start lifeboat"),
            dir: dir.to_path_buf(),
        }
    }

    fn status(&self) -> Option<Value> {
        let out = common::cli(&self.dir, &["status", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("lifeboat-up.log")).unwrap_or_default()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Runs the hostile site and returns the hostile script's report, after checking the site
/// still serves and Lifeboat's directory is whole.
fn attack(dir: &Path, owner: Option<(u32, u32)>) -> serde_json::Map<String, Value> {
    let up = Up::start(dir, owner);
    let report_path = dir.join("data/report.json");
    let deadline = Instant::now() + DEADLINE;
    while !report_path.exists() {
        assert!(
            Instant::now() < deadline,
            "the hostile instance never reported; lifeboat's output:\n{}",
            up.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap())
        .expect("the report is JSON");
    // The site keeps serving, and Lifeboat keeps answering its owner.
    let status = loop {
        if let Some(s) = up.status()
            && s["instances"][0]["state"] == "healthy"
        {
            break s;
        }
        assert!(Instant::now() < deadline, "{}", up.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    let proxy = status["proxy"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(proxy).unwrap();
    use std::io::{Read, Write};
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("still serving"), "{answer}");
    assert!(dir.join(".lifeboat/vault.key").is_file());
    assert!(!dir.join(".lifeboat/vault/planted").exists());
    assert!(
        status["isolation"]["clean_environment"] == true,
        "status reports the protections: {status:#}"
    );
    report.as_object().unwrap().clone()
}

fn assert_every_attempt_failed(report: &serde_json::Map<String, Value>) {
    assert!(report.len() >= 10, "{report:#?}");
    let succeeded: Vec<String> = report
        .iter()
        .filter(|(_, v)| !v.as_str().unwrap().starts_with("failed"))
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    assert!(
        succeeded.is_empty(),
        "the compromised app got through: {succeeded:#?}"
    );
}

#[test]
fn a_compromised_app_reaches_nothing_that_undoes_its_attack() {
    let scratch = tempfile::tempdir().unwrap();
    common::open_to_the_site_user(scratch.path());
    let dir = scratch.path().join("site");
    hostile_site(&dir);
    let report = attack(&dir, None);
    assert_every_attempt_failed(&report);
}

/// The same attack on a site Lifeboat runs as an ordinary user, while another process of that
/// user (the owner's shell, say) is running: its view of the machine must not lead in either.
#[test]
fn a_compromised_app_reaches_nothing_when_lifeboat_is_an_ordinary_user() {
    let scratch = tempfile::tempdir().unwrap();
    common::open_to_the_site_user(scratch.path());
    let dir = scratch.path().join("site");
    hostile_site(&dir);
    let me = nix::unistd::Uid::effective();
    let owner = if me.is_root() {
        let name = "lifeboat-test-owner";
        let _ = Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home", name])
            .output();
        let user = nix::unistd::User::from_name(name)
            .unwrap()
            .expect("the test owner user exists");
        for entry in walk(&dir) {
            std::os::unix::fs::chown(&entry, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .unwrap();
        }
        Some((user.uid.as_raw(), user.gid.as_raw()))
    } else {
        None
    };
    // A bystander: a long-lived process of the owner's, outside any namespace of Lifeboat's.
    let mut bystander = match owner {
        Some((uid, gid)) => Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--clear-groups",
            ])
            .args(["sleep", "600"])
            .spawn()
            .unwrap(),
        None => Command::new("sleep").arg("600").spawn().unwrap(),
    };
    let report = attack(&dir, owner);
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert_every_attempt_failed(&report);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if dir.is_dir() {
        for entry in std::fs::read_dir(dir).unwrap() {
            out.extend(walk(&entry.unwrap().path()));
        }
    }
    out
}
