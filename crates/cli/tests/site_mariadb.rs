//! A site whose state is a MariaDB database, end to end: the real `lifeboat up` runs a real
//! `mariadbd` as part of the site and a small web app on it (Python, talking to the database
//! with the `mariadb` command-line client, so the test needs no driver: it shows that any app
//! reading the `LIFEBOAT_MARIADB_*` variables works, as WordPress's `wp-config.php` does).
//! MariaDB must be installed (`scripts/install-test-deps`); the tests fail, never skip,
//! without it.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{DEADLINE, Lifeboat, SiteDir, wait_until};
use serde_json::Value;

fn app_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mariadb_app.py")
}

/// A site running the MariaDB app, with `extra` appended to its manifest.
fn mariadb_site(replicas: u32, extra: &str) -> SiteDir {
    let site = SiteDir::with_manifest(&format!(
        r#"[site]
name = "blog"

[processes.web]
command = "python3 app.py"
replicas = {replicas}
stop_timeout = "10s"
health = {{ path = "/healthz", interval = "200ms", timeout = "5s" }}

[state]
mariadb = {{ database = "blog", user = "blogger" }}
dirs = ["uploads"]

[proxy]
listen = "127.0.0.1:0"
{extra}"#
    ));
    std::fs::copy(app_script(), site.path().join("app.py")).expect("copy the app");
    site
}

/// One HTTP/1.1 request over a new connection (`Connection: close`): status and body.
fn http(method: &str, url: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").ok_or("not an http URL")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut conn = std::net::TcpStream::connect(host).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").ok_or("no response head")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no status")?;
    Ok((code, body.to_string()))
}

fn write_row(proxy: &str, n: u64) -> bool {
    matches!(http("POST", &format!("{proxy}/rows/{n}")), Ok((200, _)))
}

fn rows(proxy: &str) -> Vec<u64> {
    let (code, body) = http("GET", &format!("{proxy}/rows")).expect("GET /rows");
    assert_eq!(code, 200, "GET /rows: {body}");
    body.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

fn database(status: &Value) -> &Value {
    &status["databases"][0]
}

/// Everything lifeboat stored or printed that a password must never be in.
fn everything_recorded(lifeboat: &Lifeboat) -> String {
    let mut all = serde_json::to_string(&lifeboat.events()).unwrap();
    all.push_str(&lifeboat.output());
    for dir in ["logs", "mariadb/logs"] {
        let dir = lifeboat.site.join(".lifeboat").join(dir);
        for entry in walkdir(&dir) {
            all.push_str(&String::from_utf8_lossy(
                &std::fs::read(entry).unwrap_or_default(),
            ));
        }
    }
    all
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walkdir(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn up_runs_mariadb_for_the_site_and_the_app_finds_it_through_its_environment() {
    let site = mariadb_site(2, "");
    let lifeboat = Lifeboat::up(site.path());
    let status = lifeboat.wait_healthy(2);
    let db = database(&status);
    assert_eq!(db["state"], "site", "{status:#}");
    assert_eq!(db["database"], "blog");
    let pid = db["pid"].as_u64().expect("mariadbd runs") as u32;
    // Not root: the site's user, like the app.
    let uid = std::fs::metadata(format!("/proc/{pid}")).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    assert_ne!(uid.unwrap(), 0, "mariadbd must not run as root");
    for n in 1..=20 {
        assert!(write_row(&lifeboat.proxy, n), "write {n}");
    }
    assert_eq!(rows(&lifeboat.proxy), (1..=20).collect::<Vec<_>>());
    // The data dir is in the site's state; the app's password is Lifeboat's, and nowhere else.
    assert!(site.path().join("mariadb/ibdata1").is_file());
    let password =
        std::fs::read_to_string(site.path().join(".lifeboat/mariadb/site/app-password")).unwrap();
    assert!(password.trim().len() >= 24);
    assert!(
        !everything_recorded(&lifeboat).contains(password.trim()),
        "the database password leaked into events, logs or output"
    );
    // `lifeboat exec` gets the same facts.
    let out = std::process::Command::new(common::lifeboat_bin())
        .args(["exec", "-C"])
        .arg(site.path())
        .args(["--", "sh", "-c"])
        .arg("echo $LIFEBOAT_MARIADB_USER@$LIFEBOAT_MARIADB_HOST:$LIFEBOAT_MARIADB_PORT/$LIFEBOAT_MARIADB_DATABASE")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        printed.trim(),
        format!("blogger@127.0.0.1:{}/blog", db["port"]),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const VAULT: &str = r#"
[vault]
destinations = [".lifeboat/vault"]
segment_interval = "250ms"
"#;

/// The sequence number of the GTID `D-S-N` of domain 0 in a position.
fn gtid_seq(pos: &str) -> u64 {
    pos.split(',')
        .find(|g| g.starts_with("0-"))
        .and_then(|g| g.rsplit('-').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_killed_mariadbd_is_restarted_keeps_every_acknowledged_write_and_capture_has_no_gap() {
    let site = mariadb_site(2, VAULT);
    let lifeboat = Lifeboat::up(site.path());
    let status = lifeboat.wait_healthy(2);
    let pid = database(&status)["pid"].as_u64().unwrap() as i32;
    let proxy = lifeboat.proxy.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = {
        let (stop, acked, proxy) = (stop.clone(), acked.clone(), proxy.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                if write_row(&proxy, n) {
                    acked.lock().unwrap().push(n);
                }
            }
        })
    };
    wait_until("some writes", || acked.lock().unwrap().len() >= 20);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let restarted = lifeboat.wait_for_status("mariadbd restarted", |s| {
        let db = database(s);
        db["restarts"].as_u64() >= Some(1) && db["pid"].as_u64().is_some_and(|p| p as i32 != pid)
    });
    let before = acked.lock().unwrap().len();
    let deadline = Instant::now() + DEADLINE;
    while acked.lock().unwrap().len() < before + 20 {
        assert!(
            Instant::now() < deadline,
            "writes did not resume after the restart"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    let stored = rows(&proxy);
    let acked = acked.lock().unwrap().clone();
    let lost: Vec<_> = acked.iter().filter(|n| !stored.contains(n)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(database(&restarted)["restarts"].as_u64().unwrap() >= 1);
    // Capture reconnected by itself and has every transaction durable in the vault, in
    // order: a gap would have stopped it with an error.
    let status = lifeboat.wait_for_status("capture of every write", |s| {
        let m = &s["capture"]["mariadb"];
        m["connected"] == true
            && gtid_seq(m["confirmed"].as_str().unwrap_or("")) >= stored.len() as u64
    });
    let m = &status["capture"]["mariadb"];
    assert!(m["reconnects"].as_u64().unwrap() >= 1, "{status:#}");
    assert!(status["capture"]["last_error"].is_null(), "{status:#}");
    // Until restoring the database is wired in, a rewind says so and changes nothing.
    let out = lifeboat.cli(&["rewind", "--to", "latest", "--yes"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not built yet") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(lifeboat.status()["state"], "site");
}

#[test]
fn a_manifest_naming_a_bad_database_is_refused_before_anything_starts() {
    let site = SiteDir::with_manifest(
        r#"[site]
name = "blog"

[processes.web]
command = "python3 app.py"

[state]
mariadb = { database = "my blog" }
"#,
    );
    let out = common::cli(site.path(), &["up", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lifeboat.toml:8:"), "{err}");
    assert!(err.contains("state.mariadb.database"), "{err}");
    assert!(!site.path().join("mariadb").exists());
}

#[test]
fn an_existing_database_is_imported_from_a_dump_and_the_app_serves_it() {
    let site = mariadb_site(1, VAULT);
    let lifeboat = Lifeboat::up(site.path());
    lifeboat.wait_healthy(1);
    // What `mariadb-dump --single-transaction blog` writes for the old site's table.
    let dump = site.path().join("old-site.sql");
    std::fs::write(
        &dump,
        "DROP TABLE IF EXISTS `t`;\n\
         CREATE TABLE `t` (`n` int(11) NOT NULL, PRIMARY KEY (`n`)) ENGINE=InnoDB;\n\
         INSERT INTO `t` VALUES (1001),(1002),(1003);\n",
    )
    .unwrap();
    let out = std::process::Command::new(common::lifeboat_bin())
        .args(["import-db", "--json", "--dump"])
        .arg(&dump)
        .arg("-C")
        .arg(site.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["database"], "blog");
    assert_eq!(rows(&lifeboat.proxy), vec![1001, 1002, 1003]);
    assert!(write_row(&lifeboat.proxy, 1004));
    assert_eq!(rows(&lifeboat.proxy), vec![1001, 1002, 1003, 1004]);
}
