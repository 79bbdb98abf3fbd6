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

/// `mariadb` logged in as the app's user with `password` over `socket`: the rows of `t`, or
/// the client's error.
fn rows_as_app(socket: &str, password: &str) -> Result<Vec<u64>, String> {
    let out = std::process::Command::new("mariadb")
        .args([
            "--batch",
            "--skip-column-names",
            "--protocol=socket",
            "-S",
            socket,
        ])
        .args(["-u", "blogger", "blog", "-e", "SELECT n FROM t ORDER BY n"])
        .env("MYSQL_PWD", password)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect())
}

fn rfc(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn ok_json(lifeboat: &Lifeboat, args: &[&str]) -> Value {
    let out = lifeboat.cli(args);
    assert!(
        out.status.success(),
        "lifeboat {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One write of the test's writer: the row, when it was sent and when its 200 came back.
struct Sent {
    n: u64,
    sent: time::OffsetDateTime,
    acked: Option<time::OffsetDateTime>,
}

#[test]
fn rewind_to_t_under_load_has_exactly_the_rows_acknowledged_before_t_and_a_new_database_password() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    let site = mariadb_site(2, VAULT);
    let lifeboat = Lifeboat::up(site.path());
    lifeboat.wait_healthy(2);
    lifeboat.wait_for_status("a first checkpoint (with a MariaDB base)", |s| {
        !s["capture"]["last_checkpoint"].is_null()
    });
    let proxy = lifeboat.proxy.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let log = Arc::new(Mutex::new(Vec::<Sent>::new()));
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, next, log, proxy) = (stop.clone(), next.clone(), log.clone(), proxy.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let n = next.fetch_add(1, Ordering::SeqCst) + 1;
                    let sent = time::OffsetDateTime::now_utc();
                    let ok = write_row(&proxy, n);
                    let acked = ok.then(time::OffsetDateTime::now_utc);
                    log.lock().unwrap().push(Sent { n, sent, acked });
                }
            })
        })
        .collect();
    let acked_count = |log: &Mutex<Vec<Sent>>| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|s| s.acked.is_some())
            .count()
    };
    wait_until("writes before T", || acked_count(&log) >= 40);
    let t = time::OffsetDateTime::now_utc();
    let before = acked_count(&log);
    wait_until("writes after T", || acked_count(&log) >= before + 40);
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let log = std::mem::take(&mut *log.lock().unwrap());
    let all_acked: Vec<u64> = {
        let mut v: Vec<u64> = log
            .iter()
            .filter(|s| s.acked.is_some())
            .map(|s| s.n)
            .collect();
        v.sort();
        v
    };
    assert_eq!(rows(&proxy), all_acked, "every acknowledged row is live");
    let live_status = lifeboat.status();
    let old_socket = database(&live_status)["socket"]
        .as_str()
        .unwrap()
        .to_string();
    let old_password =
        std::fs::read_to_string(site.path().join(".lifeboat/mariadb/site/app-password")).unwrap();
    let old_password = old_password.trim().to_string();
    // Everything up to now durable in the vault.
    lifeboat.wait_for_status("capture of every write", |s| {
        gtid_seq(s["capture"]["mariadb"]["confirmed"].as_str().unwrap_or(""))
            >= all_acked.len() as u64
    });

    let started = Instant::now();
    let report = ok_json(
        &lifeboat,
        &[
            "rewind",
            "--to",
            &rfc(t),
            "--rotate-credentials",
            "--yes",
            "--json",
        ],
    );
    let took = started.elapsed();
    let state = report["state"].as_str().unwrap().to_string();
    assert_ne!(state, "site");
    assert!(
        report["credentials"]
            .as_str()
            .unwrap_or("")
            .contains("rotated: mariadb user blogger"),
        "{report:#}"
    );
    // Exactly the rows acknowledged before T; none sent after it.
    let restored = rows(&proxy);
    let must: Vec<u64> = log
        .iter()
        .filter(|s| s.acked.is_some_and(|a| a < t))
        .map(|s| s.n)
        .collect();
    let missing: Vec<_> = must.iter().filter(|n| !restored.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged before T but not restored: {missing:?}"
    );
    let late: Vec<_> = log
        .iter()
        .filter(|s| s.sent > t && restored.contains(&s.n))
        .map(|s| s.n)
        .collect();
    assert!(late.is_empty(), "sent after T but restored: {late:?}");
    assert!(restored.len() < all_acked.len());
    eprintln!(
        "rewind of {} rows (of {}) with a new database password took {took:?}",
        restored.len(),
        all_acked.len()
    );
    // The restored server: its own socket; the old password fails, the new one works.
    let status = lifeboat.status();
    assert_eq!(status["state"], state.as_str());
    let dbs = status["databases"].as_array().unwrap();
    assert_eq!(
        dbs.len(),
        1,
        "the old server stopped after the switch: {status:#}"
    );
    let socket = dbs[0]["socket"].as_str().unwrap().to_string();
    assert_ne!(socket, old_socket);
    let new_password = std::fs::read_to_string(
        site.path()
            .join(format!(".lifeboat/mariadb/{state}/app-password")),
    )
    .unwrap();
    let new_password = new_password.trim().to_string();
    assert_ne!(new_password, old_password);
    let refused = rows_as_app(&socket, &old_password).unwrap_err();
    assert!(refused.contains("Access denied"), "{refused}");
    assert_eq!(rows_as_app(&socket, &new_password).unwrap(), restored);
    assert!(
        !everything_recorded(&lifeboat).contains(&new_password),
        "the new database password leaked"
    );
    // The app writes on the restored database, and capture follows it.
    assert!(write_row(&proxy, 1_000_000));
    // Capture follows the restored server from where its binlog starts (the restore point's
    // GTID position, not 1): no gap, the new write durable.
    let min_seq = restored.len() as u64 + 1;
    lifeboat.wait_for_status("capture of the restored server", |s| {
        let m = &s["capture"]["mariadb"];
        m["connected"] == true
            && s["capture"]["last_error"].is_null()
            && gtid_seq(m["confirmed"].as_str().unwrap_or("")) > min_seq
    });

    // Undo: the later rows are back, on the old state's server (restarted).
    let undone = ok_json(&lifeboat, &["rewind", "--undo", "--yes", "--json"]);
    assert_eq!(undone["state"], "site");
    assert_eq!(rows(&proxy), all_acked);

    // restore-site into another dir: the database as of T.
    let into = tempfile::tempdir().unwrap();
    let copy = into.path().join("copy");
    ok_json(
        &lifeboat,
        &[
            "restore-site",
            "--to",
            &rfc(t),
            "--into",
            copy.to_str().unwrap(),
            "--json",
        ],
    );
    let run = tempfile::Builder::new()
        .prefix("lbt")
        .tempdir_in("/tmp")
        .unwrap();
    let mut spec =
        lifeboat_mariadb::ServerSpec::new(&copy.join("mariadb"), run.path(), None).unwrap();
    spec.config_dir = copy.join(".lifeboat/mariadb/site");
    let admin = spec.admin_password().expect("the copy has its admin login");
    spec.write_config(&admin).unwrap();
    let server = spec
        .start(Duration::from_secs(60))
        .expect("the copy's server starts");
    let out = std::process::Command::new("mariadb")
        .arg(format!("--defaults-file={}", spec.config_path().display()))
        .args([
            "--batch",
            "--skip-column-names",
            "blog",
            "-e",
            "SELECT n FROM t ORDER BY n",
        ])
        .output()
        .unwrap();
    server.stop(Duration::from_secs(60)).unwrap();
    let copied: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(copied, restored, "{}", String::from_utf8_lossy(&out.stderr));

    // After all that, the timeline still rewinds: a write on the site again, then to latest.
    assert!(write_row(&proxy, 2_000_000));
    let mut want = all_acked.clone();
    want.push(2_000_000);
    lifeboat.wait_for_status("capture of the last write", |s| {
        s["capture"]["lag_ms"] == 0 && s["capture"]["last_error"].is_null()
    });
    ok_json(&lifeboat, &["rewind", "--to", "latest", "--yes", "--json"]);
    assert_eq!(rows(&proxy), want, "rewound to latest");

    // The restored copy is a site: `lifeboat up` on it serves the rows as of T (its admin
    // login came with the copy; the app's user gets a new password at its first start).
    drop(lifeboat);
    std::fs::copy(app_script(), copy.join("app.py")).unwrap();
    let again = Lifeboat::up(&copy);
    again.wait_healthy(2);
    assert_eq!(
        rows(&again.proxy),
        restored,
        "the restored site serves the rows as of T"
    );
}

#[test]
fn a_rewind_whose_hook_fails_changes_nothing_and_stops_the_restored_server() {
    let site = mariadb_site(
        1,
        &format!("{VAULT}\n[credentials]\nrotate = \"echo no >&2; exit 3\"\n"),
    );
    let lifeboat = Lifeboat::up(site.path());
    lifeboat.wait_healthy(1);
    lifeboat.wait_for_status("a first checkpoint (with a MariaDB base)", |s| {
        !s["capture"]["last_checkpoint"].is_null()
    });
    for n in 1..=5 {
        assert!(write_row(&lifeboat.proxy, n));
    }
    let before = lifeboat.status();
    let out = lifeboat.cli(&["rewind", "--to", "latest", "--rotate-credentials", "--yes"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the live site is unchanged"), "{err}");
    let after = lifeboat.status();
    assert_eq!(after["state"], "site");
    let dbs = after["databases"].as_array().unwrap();
    assert_eq!(dbs.len(), 1, "only the live server runs: {after:#}");
    assert_eq!(dbs[0]["pid"], database(&before)["pid"]);
    assert_eq!(rows(&lifeboat.proxy), (1..=5).collect::<Vec<_>>());
    assert!(write_row(&lifeboat.proxy, 6));
}

#[test]
fn a_rewound_site_is_checkpointed_and_rewinds_again_with_its_new_rows() {
    let site = mariadb_site(1, VAULT);
    let lifeboat = Lifeboat::up(site.path());
    lifeboat.wait_healthy(1);
    lifeboat.wait_for_status("a first checkpoint (with a MariaDB base)", |s| {
        !s["capture"]["last_checkpoint"].is_null()
    });
    for n in 1..=5 {
        assert!(write_row(&lifeboat.proxy, n));
    }
    lifeboat.wait_for_status("capture of every write", |s| {
        gtid_seq(s["capture"]["mariadb"]["confirmed"].as_str().unwrap_or("")) >= 5
    });
    let first = ok_json(&lifeboat, &["rewind", "--to", "latest", "--yes", "--json"]);
    let rewound_at = time::OffsetDateTime::now_utc();
    assert_eq!(rows(&lifeboat.proxy), (1..=5).collect::<Vec<_>>());

    // The restored state's capture starts with a base of the restored server: of its own data
    // dir, although that server sees it at the site's own path in its mount namespace.
    let status = lifeboat.wait_for_status("a checkpoint of the rewound state", |s| {
        s["state"] == first["state"]
            && s["capture"]["last_checkpoint"]["time"]
                .as_str()
                .and_then(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .is_some_and(|t| t > rewound_at)
            || !s["capture"]["last_error"].is_null()
    });
    assert!(status["capture"]["last_error"].is_null(), "{status:#}");

    for n in 6..=8 {
        assert!(write_row(&lifeboat.proxy, n));
    }
    lifeboat.wait_for_status("capture of the new rows", |s| {
        s["capture"]["lag_ms"] == 0
            && gtid_seq(s["capture"]["mariadb"]["confirmed"].as_str().unwrap_or("")) >= 8
    });
    let second = ok_json(&lifeboat, &["rewind", "--to", "latest", "--yes", "--json"]);
    assert_ne!(second["state"], first["state"]);
    assert_eq!(rows(&lifeboat.proxy), (1..=8).collect::<Vec<_>>());
}

/// `sql` run as the site's MariaDB admin (the login in the config Lifeboat keeps in
/// `.lifeboat/mariadb/site/`): its output, one row a line.
fn admin_sql(site: &Path, sql: &str) -> String {
    let out = std::process::Command::new("mariadb")
        .arg(format!(
            "--defaults-file={}",
            site.join(".lifeboat/mariadb/site/my.cnf").display()
        ))
        .args(["--batch", "--skip-column-names", "-e", sql])
        .output()
        .expect("run mariadb");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The binlog files in the live server's data dir, oldest first.
fn binlog_files_on_disk(site: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(site.join("mariadb"))
        .expect("the data dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.strip_prefix("binlog.")
                .is_some_and(|s| s.chars().all(|c| c.is_ascii_digit()))
        })
        .collect();
    files.sort();
    files
}

/// Writes rows from `first` on, one after the other, until stopped: the rows acknowledged.
struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(proxy: &str, first: u64) -> Writer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let thread = {
            let (stop, acked, proxy) = (stop.clone(), acked.clone(), proxy.to_string());
            std::thread::spawn(move || {
                let mut n = first;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if write_row(&proxy, n) {
                        acked.lock().unwrap().push(n);
                    }
                    n += 1;
                }
            })
        };
        Writer {
            stop,
            acked,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn stop(mut self) -> Vec<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        self.acked.lock().unwrap().clone()
    }
}

/// Waits until capture has every transaction the live server wrote durable in the vault.
fn wait_captured(lifeboat: &Lifeboat) -> Value {
    let site = lifeboat.site.clone();
    let live = gtid_seq(&admin_sql(&site, "SELECT @@GLOBAL.gtid_binlog_pos"));
    lifeboat.wait_for_status("capture of every write", |s| {
        let m = &s["capture"]["mariadb"];
        s["capture"]["lag_ms"] == 0
            && m["connected"] == true
            && gtid_seq(m["confirmed"].as_str().unwrap_or("")) >= live
    })
}

const VAULT_FREQUENT_CHECKPOINTS: &str = r#"
[vault]
destinations = [".lifeboat/vault"]
segment_interval = "250ms"
checkpoint_interval = "1s"
"#;

#[test]
fn binlog_files_a_durable_checkpoint_covers_are_purged_and_a_rewind_before_it_stays_exact() {
    let site = mariadb_site(1, VAULT_FREQUENT_CHECKPOINTS);
    let lifeboat = Lifeboat::up(site.path());
    lifeboat.wait_healthy(1);
    lifeboat.wait_for_status("a first checkpoint (with a MariaDB base)", |s| {
        !s["capture"]["last_checkpoint"].is_null()
    });
    for n in 1..=10 {
        assert!(write_row(&lifeboat.proxy, n), "write {n}");
    }
    wait_captured(&lifeboat);
    let t = time::OffsetDateTime::now_utc();
    let files_at_t = binlog_files_on_disk(site.path());
    assert!(!files_at_t.is_empty());
    // Writes go on (a checkpoint is taken only when something changed) until checkpoints
    // after T have covered every file the server had at T.
    let writer = Writer::start(&lifeboat.proxy, 11);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = binlog_files_on_disk(site.path());
        if files_at_t.iter().all(|f| !now.contains(f)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the binlog files of T are still there: {now:?} (at T: {files_at_t:?}); status: {:#}",
            lifeboat.status()["capture"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let after_t = writer.stop();
    assert!(!after_t.is_empty());
    let status = wait_captured(&lifeboat);
    let m = &status["capture"]["mariadb"];
    assert!(m["binlog_files_purged"].as_u64() >= Some(1), "{status:#}");
    assert!(m["binlog_purge_error"].is_null(), "{status:#}");
    let kept = binlog_files_on_disk(site.path());
    assert_eq!(
        m["oldest_binlog"].as_str(),
        kept.first().map(String::as_str)
    );
    eprintln!(
        "{} binlog files purged after T, {} kept ({:?}), {} rows written meanwhile",
        m["binlog_files_purged"],
        kept.len(),
        kept,
        after_t.len()
    );
    // The server itself knows only the files kept.
    let listed: Vec<String> = admin_sql(site.path(), "SHOW BINARY LOGS")
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect();
    assert_eq!(listed, kept);
    // The site still serves everything.
    let mut all: Vec<u64> = (1..=10).chain(after_t.iter().copied()).collect();
    all.sort();
    assert_eq!(rows(&lifeboat.proxy), all);

    // A rewind to T, before the checkpoints that purged those files, reads only the vault.
    ok_json(&lifeboat, &["rewind", "--to", &rfc(t), "--yes", "--json"]);
    assert_eq!(rows(&lifeboat.proxy), (1..=10).collect::<Vec<_>>());
    // And back to latest: every row.
    ok_json(&lifeboat, &["rewind", "--undo", "--yes", "--json"]);
    assert_eq!(rows(&lifeboat.proxy), all);
}

/// Purges the live server's binlog under capture's feet: capture's stream is cut, a row is
/// written and the file holding it purged before capture is back (its reconnection waits at
/// least 50 ms), so the server no longer has what capture asks for. Returns the row written.
fn purge_binlog_while_capture_reconnects(site: &Path, row: u64) -> bool {
    let dump = admin_sql(
        site,
        "SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'",
    );
    let Some(id) = dump.lines().next().map(str::trim).filter(|l| !l.is_empty()) else {
        return false;
    };
    let before = binlog_files_on_disk(site);
    admin_sql(
        site,
        &format!(
            "KILL CONNECTION {id}; INSERT INTO blog.t VALUES ({row}); FLUSH BINARY LOGS; \
             PURGE BINARY LOGS BEFORE NOW() + INTERVAL 1 DAY;"
        ),
    );
    // Done when the file that held the row is gone (a dump thread still reading it keeps it).
    let after = binlog_files_on_disk(site);
    before.last().is_some_and(|f| !after.contains(f))
}

#[test]
fn capture_purged_by_hand_under_writes_continues_from_a_new_base_and_says_what_is_lost() {
    let site = mariadb_site(1, VAULT);
    let lifeboat = Lifeboat::up(site.path());
    lifeboat.wait_healthy(1);
    lifeboat.wait_for_status("a first checkpoint (with a MariaDB base)", |s| {
        !s["capture"]["last_checkpoint"].is_null()
    });
    let writer = Writer::start(&lifeboat.proxy, 1);
    wait_until("writes before the purge", || writer.count() >= 20);
    let purged_at = time::OffsetDateTime::now_utc();
    let deadline = Instant::now() + DEADLINE;
    let mut row = 900_000;
    // Loud: the gap, then capture on from a new base. Capture reconnects at once, and when it
    // read the row before the purge nothing is lost and there is no gap (1 of ~4 CI runs):
    // then the purge is tried again.
    let (gap, purge_done) = loop {
        assert!(
            Instant::now() < deadline,
            "no capture gap after purging under capture; events: {:#?}",
            lifeboat.events()
        );
        if purge_binlog_while_capture_reconnects(site.path(), row) {
            // (Under load this loop can take a while: what the span must cover is the row
            // of the attempt that made the gap, written before this moment.)
            let purge_done = time::OffsetDateTime::now_utc();
            let noticed_by = Instant::now() + Duration::from_secs(15);
            let gap = loop {
                let gap = lifeboat
                    .events()
                    .into_iter()
                    .find(|e| e["kind"] == "mariadb-capture-gap");
                if gap.is_some() || Instant::now() > noticed_by {
                    break gap;
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            if let Some(gap) = gap {
                break (gap, purge_done);
            }
        }
        row += 1;
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        gap["why"]
            .as_str()
            .unwrap()
            .contains("no longer holds the binary logs"),
        "{gap:#}"
    );
    let resumed = lifeboat.wait_for_event("capture resumed", |e| {
        e["kind"] == "mariadb-capture-resumed"
    });
    assert_eq!(resumed["last_captured"], gap["last_captured"]);
    let until = time::OffsetDateTime::parse(
        resumed["unrestorable_until"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let from = time::OffsetDateTime::parse(
        resumed["unrestorable_from"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(
        from <= purge_done && from < until,
        "the span no rewind reaches ({from} to {until}) must begin before the purge ended ({purge_done})"
    );
    let at = |e: &Value| {
        time::OffsetDateTime::parse(
            e["at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    eprintln!(
        "gap found {:?} after the purge; capture resumed from a new base {:?} later; no rewind reaches {:?}",
        at(&gap) - purged_at,
        at(&resumed) - at(&gap),
        until - from
    );
    // Capture goes on: writes after the new base are captured.
    let at_resume = writer.count();
    wait_until("writes after the new base", || {
        writer.count() >= at_resume + 20
    });
    let acked = writer.stop();
    wait_captured(&lifeboat);
    let t = time::OffsetDateTime::now_utc();
    let status = lifeboat.status();
    assert!(status["capture"]["last_error"].is_null(), "{status:#}");

    // `lifeboat timeline` shows the span no rewind reaches, and a rewind into it is refused.
    let timeline = ok_json(&lifeboat, &["timeline", "--json"]);
    let gaps = timeline["restore_points"]["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{timeline:#}");
    assert!(
        timeline["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "mariadb-capture-resumed"),
        "{timeline:#}"
    );
    let text = lifeboat.cli(&["timeline"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("NOT restorable from"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    let inside = from + (until - from) / 2;
    let refused = lifeboat.cli(&["rewind", "--to", &rfc(inside), "--yes"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("MariaDB capture lost transactions"), "{err}");

    // A rewind to after the new base is exact: every row acknowledged, and those written by
    // hand (in the new base although their binlog was purged before capture read it).
    let live = rows(&lifeboat.proxy);
    ok_json(&lifeboat, &["rewind", "--to", &rfc(t), "--yes", "--json"]);
    let restored = rows(&lifeboat.proxy);
    assert_eq!(restored, live);
    let lost: Vec<_> = acked.iter().filter(|n| !restored.contains(n)).collect();
    assert!(lost.is_empty(), "acknowledged but not restored: {lost:?}");
    assert!(restored.contains(&row));
}

/// The uid a process runs as.
fn uid_of(pid: u64) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}"))
        .expect("the process runs")
        .uid()
}

#[test]
fn a_mariadb_site_run_by_an_ordinary_user_serves_captures_and_rewinds() {
    let Some(user) = common::OsUser::ensure("lifeboat-tester") else {
        eprintln!(
            "skipped: this test creates an ordinary user to run lifeboat as, which needs root (running as uid {})",
            nix::unistd::geteuid()
        );
        return;
    };
    let site = mariadb_site(1, VAULT);
    user.give(site.path());
    let lifeboat = Lifeboat::up_as(&user, site.path());
    lifeboat.wait_healthy(1);
    let status = lifeboat.wait_for_status("a first checkpoint (with a MariaDB base)", |s| {
        !s["capture"]["last_checkpoint"].is_null() || !s["capture"]["last_error"].is_null()
    });
    assert!(status["capture"]["last_error"].is_null(), "{status:#}");
    let pid = database(&status)["pid"].as_u64().expect("mariadbd runs");
    assert_eq!(
        uid_of(pid),
        user.uid,
        "mariadbd runs as the user of lifeboat"
    );
    // Its run dir (socket) is in the user's own TMPDIR.
    let socket = database(&status)["socket"].as_str().unwrap().to_string();
    assert!(
        Path::new(&socket).starts_with(user.tmpdir()),
        "{socket} is not in {}",
        user.tmpdir().display()
    );
    for n in 1..=5 {
        assert!(write_row(&lifeboat.proxy, n), "write {n}");
    }
    wait_captured(&lifeboat);
    let t = time::OffsetDateTime::now_utc();
    for n in 6..=8 {
        assert!(write_row(&lifeboat.proxy, n), "write {n}");
    }
    wait_captured(&lifeboat);

    let report = ok_json(
        &lifeboat,
        &[
            "rewind",
            "--to",
            &rfc(t),
            "--rotate-credentials",
            "--yes",
            "--json",
        ],
    );
    assert_eq!(rows(&lifeboat.proxy), (1..=5).collect::<Vec<_>>());
    let status = lifeboat.status();
    assert_eq!(status["state"], report["state"]);
    let pid = database(&status)["pid"]
        .as_u64()
        .expect("the restored mariadbd runs");
    assert_eq!(uid_of(pid), user.uid);
    // Capture follows the restored server, as that user too.
    assert!(write_row(&lifeboat.proxy, 100));
    let status = lifeboat.wait_for_status("capture of the restored server", |s| {
        let m = &s["capture"]["mariadb"];
        (m["connected"] == true && gtid_seq(m["confirmed"].as_str().unwrap_or("")) >= 6)
            || !s["capture"]["last_error"].is_null()
    });
    assert!(status["capture"]["last_error"].is_null(), "{status:#}");
    ok_json(&lifeboat, &["rewind", "--undo", "--yes", "--json"]);
    assert_eq!(rows(&lifeboat.proxy), (1..=8).collect::<Vec<_>>());
}

#[test]
fn a_binlog_reset_by_hand_under_writes_is_a_gap_and_rewinds_on_both_sides_of_it_are_exact() {
    let site = mariadb_site(1, VAULT);
    let lifeboat = Lifeboat::up(site.path());
    lifeboat.wait_healthy(1);
    lifeboat.wait_for_status("a first checkpoint (with a MariaDB base)", |s| {
        !s["capture"]["last_checkpoint"].is_null()
    });
    for n in 1..=10 {
        assert!(write_row(&lifeboat.proxy, n), "write {n}");
    }
    wait_captured(&lifeboat);
    let before = time::OffsetDateTime::now_utc();
    // Under writes, the binlog is reset: the server numbers transactions from 1 again.
    let writer = Writer::start(&lifeboat.proxy, 11);
    wait_until("writes before the reset", || writer.count() >= 10);
    admin_sql(site.path(), "RESET MASTER");
    lifeboat.wait_for_event("the capture gap", |e| e["kind"] == "mariadb-capture-gap");
    let resumed = lifeboat.wait_for_event("capture resumed", |e| {
        e["kind"] == "mariadb-capture-resumed"
    });
    let at_resume = writer.count();
    wait_until("writes after the new base", || {
        writer.count() >= at_resume + 20
    });
    let acked = writer.stop();
    wait_captured(&lifeboat);
    let live = rows(&lifeboat.proxy);
    let lost: Vec<_> = acked.iter().filter(|n| !live.contains(n)).collect();
    assert!(lost.is_empty(), "acknowledged but not live: {lost:?}");
    let status = lifeboat.status();
    assert!(status["capture"]["last_error"].is_null(), "{status:#}");
    assert!(!resumed["base_gtid"].as_str().unwrap_or("").is_empty());

    // After the new base: exactly the live rows (the new history, numbered from 1 again, is
    // never mixed with the old one's numbers).
    ok_json(&lifeboat, &["rewind", "--to", "latest", "--yes", "--json"]);
    assert_eq!(rows(&lifeboat.proxy), live);
    // Before the reset: exactly the rows of then.
    ok_json(
        &lifeboat,
        &["rewind", "--to", &rfc(before), "--yes", "--json"],
    );
    assert_eq!(rows(&lifeboat.proxy), (1..=10).collect::<Vec<_>>());
}
