//! WordPress on MariaDB under the real `lifeboat up`: Debian's WordPress served by Apache with
//! mod_php (examples/wordpress, two instances), its MariaDB run and captured by Lifeboat. Posts
//! and a medium are made through WordPress's REST API with an application password; at T the
//! site is good; then the attack: posts deleted, a rogue administrator, the title defaced, a
//! `.php` planted in uploads; `lifeboat rewind --to T --rotate-credentials` brings everything
//! back, and nothing the attacker holds (password, login cookie, application password, the
//! database password) opens anything.
//!
//! Needs `scripts/install-test-deps` (MariaDB, WordPress, Apache, PHP) and curl; fails, never
//! skips, without them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Lifeboat;
use serde_json::Value;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/wordpress")
}

/// A copy of examples/wordpress in a new dir (front door on a free port), with WordPress's
/// code in place (`setup.sh --no-install`).
fn wordpress_site() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("lifeboat-wp")
        .tempdir()
        .unwrap();
    let site = dir.path();
    std::fs::set_permissions(site, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let src = example();
    std::fs::create_dir_all(site.join("tools")).unwrap();
    std::fs::create_dir_all(site.join("wp-content/mu-plugins")).unwrap();
    for f in [
        "setup.sh",
        "run.sh",
        "rotate-credentials.sh",
        "wp-config.php",
        "lifeboat-health.php",
    ] {
        std::fs::copy(src.join(f), site.join(f)).unwrap();
    }
    for entry in std::fs::read_dir(src.join("tools")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), site.join("tools").join(entry.file_name())).unwrap();
    }
    std::fs::copy(
        src.join("wp-content/mu-plugins/lifeboat.php"),
        site.join("wp-content/mu-plugins/lifeboat.php"),
    )
    .unwrap();
    let manifest = std::fs::read_to_string(src.join("lifeboat.toml"))
        .unwrap()
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
        .replace(
            "segment_interval = \"500ms\"",
            "segment_interval = \"250ms\"",
        );
    std::fs::write(site.join("lifeboat.toml"), manifest).unwrap();
    let out = Command::new(site.join("setup.sh"))
        .arg("--no-install")
        .output()
        .expect("run setup.sh");
    assert!(
        out.status.success(),
        "setup.sh --no-install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// `curl ARGS URL`: the status and the body.
fn curl(url: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The value of the line `KEY: value` in `text`.
fn line<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
        .next_back()
}

/// Logs in through wp-login.php; the cookie jar when WordPress gave a login cookie.
fn login(front: &str, jar: &Path, user: &str, password: &str) -> bool {
    let _ = std::fs::remove_file(jar);
    let jar_s = jar.to_str().unwrap();
    curl(
        &format!("{front}/wp-login.php"),
        &[
            "-c",
            jar_s,
            "-b",
            "wordpress_test_cookie=WP%20Cookie%20check",
            "--data-urlencode",
            &format!("log={user}"),
            "--data-urlencode",
            &format!("pwd={password}"),
            "-d",
            "testcookie=1",
        ],
    );
    std::fs::read_to_string(jar).is_ok_and(|j| j.contains("wordpress_logged_in_"))
}

fn dashboard(front: &str, jar: &Path) -> u16 {
    curl(
        &format!("{front}/wp-admin/"),
        &["-b", jar.to_str().unwrap()],
    )
    .0
}

/// Waits until capture shipped something after `since` and holds nothing unshipped.
fn wait_shipped(lifeboat: &Lifeboat, since: time::OffsetDateTime) {
    lifeboat.wait_for_status("capture to ship the last changes", |s| {
        let shipped = s["capture"]["last_shipped_at"].as_str().and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        });
        shipped.is_some_and(|t| t > since) && s["capture"]["lag_ms"] == 0
    });
}

fn rfc(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// A WordPress installed under a running `lifeboat up`, both instances healthy.
struct WordPress {
    lifeboat: Lifeboat,
    /// The front door, without a trailing `/`.
    front: String,
    /// `admin:APPLICATION-PASSWORD`, for the REST API.
    admin: String,
    // Last: the site dir outlives lifeboat.
    dir: tempfile::TempDir,
}

impl WordPress {
    fn site(&self) -> &Path {
        self.dir.path()
    }
}

/// examples/wordpress under `lifeboat up`, installed by `setup.sh` (admin `admin` with
/// `admin_password`, title "Lifeboat Blog") once Lifeboat's MariaDB runs and capture stored
/// its first checkpoint.
fn installed_wordpress(admin_password: &str) -> WordPress {
    let dir = wordpress_site();
    let site = dir.path();
    let lifeboat = Lifeboat::up(site);
    // Healthy only once WordPress is installed in the database: the server first.
    lifeboat.wait_for_status("MariaDB runs", |s| s["databases"][0]["pid"].is_u64());
    let front = lifeboat.proxy.trim_end_matches('/').to_string();
    lifeboat.wait_for_status("a first checkpoint", |s| {
        !s["capture"]["last_checkpoint"].is_null()
    });

    // WordPress installed into Lifeboat's database (through `lifeboat exec`).
    let out = Command::new(site.join("setup.sh"))
        .env("LIFEBOAT", common::lifeboat_bin())
        .env("WP_ADMIN_USER", "admin")
        .env("WP_ADMIN_PASSWORD", admin_password)
        .env("WP_TITLE", "Lifeboat Blog")
        .env("WP_URL", &front)
        .output()
        .expect("run setup.sh");
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "setup.sh: {printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app_password = line(&printed, "application password")
        .expect("an application password")
        .to_string();
    lifeboat.wait_healthy(2);
    WordPress {
        lifeboat,
        front,
        admin: format!("admin:{app_password}"),
        dir,
    }
}

#[test]
fn rewind_with_new_credentials_undoes_an_attack_on_wordpress() {
    let admin_password = "Lifeboat-admin-0123456789";
    let wp = installed_wordpress(admin_password);
    let (site, lifeboat, front, admin) = (wp.site(), &wp.lifeboat, &wp.front, &wp.admin);

    // Content through the REST API.
    let mut posts = Vec::new();
    for i in 1..=3 {
        let (code, body) = curl(
            &format!("{front}/wp-json/wp/v2/posts"),
            &[
                "-u",
                admin,
                "-H",
                "Content-Type: application/json",
                "-d",
                &format!(
                    r#"{{"title":"Post {i}","content":"Kept by Lifeboat.","status":"publish"}}"#
                ),
            ],
        );
        assert_eq!(code, 201, "{body}");
        posts.push(json(&body)["id"].as_u64().unwrap());
    }
    let pixel = site.join("pixel.png");
    std::fs::write(&pixel, b"\x89PNG\r\n\x1a\n lifeboat test medium").unwrap();
    let (code, body) = curl(
        &format!("{front}/wp-json/wp/v2/media"),
        &[
            "-u",
            admin,
            "-H",
            "Content-Type: image/png",
            "-H",
            "Content-Disposition: attachment; filename=\"lifeboat-pixel.png\"",
            "--data-binary",
            &format!("@{}", pixel.display()),
        ],
    );
    assert_eq!(code, 201, "{body}");
    let media_url = json(&body)["source_url"].as_str().unwrap().to_string();
    let media_path = media_url
        .split_once("/wp-content/uploads/")
        .unwrap()
        .1
        .to_string();
    // Everything so far durable in the vault (capture of the database and of uploads).
    wait_shipped(lifeboat, time::OffsetDateTime::now_utc());
    let t = time::OffsetDateTime::now_utc();

    // The attack.
    for id in &posts[..2] {
        let (code, body) = curl(
            &format!("{front}/wp-json/wp/v2/posts/{id}?force=true"),
            &["-u", admin, "-X", "DELETE"],
        );
        assert_eq!(code, 200, "delete {id}: {body}");
    }
    let rogue_password = "Rogue-admin-password-42";
    let (code, body) = curl(
        &format!("{front}/wp-json/wp/v2/users"),
        &[
            "-u",
            admin,
            "-H",
            "Content-Type: application/json",
            "-d",
            &format!(
                r#"{{"username":"rogue","email":"rogue@example.com","password":"{rogue_password}","roles":["administrator"]}}"#
            ),
        ],
    );
    assert_eq!(code, 201, "rogue admin: {body}");
    let (code, body) = curl(
        &format!("{front}/wp-json/wp/v2/settings"),
        &[
            "-u",
            admin,
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"title":"Hacked by nobody"}"#,
        ],
    );
    assert_eq!(code, 200, "deface: {body}");
    let planted = site.join("wp-content/uploads/2020/01/shell.php");
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::fs::write(&planted, "<?php echo 'PLANTED';\n").unwrap();
    let rogue_jar = site.join("rogue.jar");
    assert!(login(front, &rogue_jar, "rogue", rogue_password));
    assert_eq!(dashboard(front, &rogue_jar), 200, "the attacker is in");
    let old_db_password =
        std::fs::read_to_string(site.join(".lifeboat/mariadb/site/app-password")).unwrap();
    wait_shipped(lifeboat, time::OffsetDateTime::now_utc());

    // The rewind.
    let started = std::time::Instant::now();
    let out = lifeboat.cli(&[
        "rewind",
        "--to",
        &rfc(t),
        "--rotate-credentials",
        "--yes",
        "--json",
    ]);
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "rewind: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let creds = report["credentials"].as_str().expect("credentials printed");
    let new_admin_password = line(creds, "admin password").expect("a new admin password");
    let new_app_password = line(creds, "application password").expect("a new app password");
    assert!(creds.contains("rotated: mariadb user wordpress"), "{creds}");
    eprintln!("WordPress rewind with new credentials took {took:?}");

    // Every post and the medium are back; the title is right.
    for id in &posts {
        let (code, body) = curl(&format!("{front}/wp-json/wp/v2/posts/{id}"), &[]);
        assert_eq!(code, 200, "post {id}: {body}");
    }
    let (code, _) = curl(&format!("{front}/wp-content/uploads/{media_path}"), &[]);
    assert_eq!(code, 200, "the medium");
    let (_, body) = curl(&format!("{front}/wp-json"), &[]);
    assert_eq!(json(&body)["name"], "Lifeboat Blog");
    // The planted file and the rogue administrator are gone.
    let state_dir = PathBuf::from(report["state_dir"].as_str().unwrap());
    assert!(
        !state_dir
            .join("wp-content/uploads/2020/01/shell.php")
            .exists()
    );
    let (code, _) = curl(
        &format!("{front}/wp-content/uploads/2020/01/shell.php"),
        &[],
    );
    assert_ne!(code, 200, "the planted .php");
    let new_admin = format!("admin:{new_app_password}");
    let (code, body) = curl(
        &format!("{front}/wp-json/wp/v2/users?search=rogue&context=edit"),
        &["-u", &new_admin],
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body).as_array().map(Vec::len), Some(0), "{body}");
    // Nothing the attacker held opens anything; the new admin password does.
    assert!(!login(
        front,
        &site.join("rogue2.jar"),
        "rogue",
        rogue_password
    ));
    assert_eq!(dashboard(front, &rogue_jar), 302, "the old cookie");
    let (code, _) = curl(&format!("{front}/wp-json/wp/v2/users/me"), &["-u", admin]);
    assert_eq!(code, 401, "the old application password");
    assert!(!login(
        front,
        &site.join("old.jar"),
        "admin",
        admin_password
    ));
    let new_jar = site.join("new.jar");
    assert!(login(front, &new_jar, "admin", new_admin_password));
    assert_eq!(dashboard(front, &new_jar), 200);
    // The database password changed: the old one is refused by the restored server.
    let status = lifeboat.status();
    let socket = status["databases"][0]["socket"].as_str().unwrap();
    let refused = Command::new("mariadb")
        .args([
            "--no-defaults",
            "--socket",
            socket,
            "-uwordpress",
            "-e",
            "SELECT 1",
        ])
        .env("MYSQL_PWD", old_db_password.trim())
        .output()
        .unwrap();
    assert!(!refused.status.success(), "the old database password");
}

/// One request of the WordPress load: what was asked and what came back.
struct Answer {
    what: String,
    /// The HTTP status, or the transport error.
    result: Result<u16, String>,
    body: String,
}

/// What the load asks for.
#[derive(Clone, Copy, PartialEq)]
enum Mix {
    /// The home page (a theme's HTML, streamed while PHP renders it), posts through the REST
    /// API, and writes.
    Pages,
    /// Posts through the REST API (answered in one piece when done) and writes.
    Rest,
    /// Only writes; a failed one is followed by a pause of 50 ms (the database may be down).
    Writes,
}

/// Clients reading WordPress (the home page, the posts through the REST API) and writing
/// posts through the REST API with the application password, each write with an
/// `Idempotency-Key` (so the front door may send it again when its instance died before
/// answering). Every post's title is `load C-N`.
struct WordPressLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    done: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Requests answered with a 2xx.
    ok: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Answer>>>,
}

impl WordPressLoad {
    /// `clients` tasks asking for `mix`; `tag` makes the titles of this load's posts unique.
    fn start(front: &str, admin: &str, clients: usize, mix: Mix, tag: &str) -> WordPressLoad {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ok = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (user, password) = admin.split_once(':').unwrap();
        let run = std::process::id();
        let tasks = (0..clients)
            .map(|c| {
                let (stop, done, ok, front) =
                    (stop.clone(), done.clone(), ok.clone(), front.to_string());
                let (user, password) = (user.to_string(), password.to_string());
                let tag = tag.to_string();
                tokio::spawn(async move {
                    let http = reqwest::Client::builder()
                        .timeout(std::time::Duration::from_secs(60))
                        .build()
                        .unwrap();
                    let mut answers = Vec::new();
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        n += 1;
                        let kind = match mix {
                            Mix::Writes => 0,
                            Mix::Rest => n % 2,
                            Mix::Pages => n % 3,
                        };
                        let (what, req) = match kind {
                            0 => {
                                let title = format!("load {tag}{c}-{n}");
                                (
                                    format!("POST {title}"),
                                    http.post(format!("{front}/wp-json/wp/v2/posts"))
                                        .basic_auth(&user, Some(&password))
                                        .header("Idempotency-Key", format!("{run}-{tag}{c}-{n}"))
                                        .json(&serde_json::json!({
                                            "title": title,
                                            "content": "Written under load.",
                                            "status": "publish",
                                        })),
                                )
                            }
                            1 => (
                                "GET /wp-json/wp/v2/posts".to_string(),
                                http.get(format!("{front}/wp-json/wp/v2/posts?per_page=3")),
                            ),
                            _ => ("GET /".to_string(), http.get(format!("{front}/"))),
                        };
                        let (result, body) = match req.send().await {
                            Ok(resp) => {
                                let status = resp.status().as_u16();
                                match resp.text().await {
                                    Ok(body) => (Ok(status), body),
                                    Err(e) => {
                                        (Err(format!("reading the body: {e}")), String::new())
                                    }
                                }
                            }
                            Err(e) => (Err(format!("{e:?}")), String::new()),
                        };
                        if matches!(result, Ok(200..=299)) {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        if mix == Mix::Writes && result != Ok(201) {
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                        answers.push(Answer { what, result, body });
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    answers
                })
            })
            .collect();
        WordPressLoad {
            stop,
            done,
            ok,
            tasks,
        }
    }

    /// Waits until `more` further requests were answered (or failed).
    async fn wait_for_requests(&self, more: usize) {
        use std::sync::atomic::Ordering;
        let target = self.done.load(Ordering::SeqCst) + more;
        let deadline = std::time::Instant::now() + common::DEADLINE;
        while self.done.load(Ordering::SeqCst) < target {
            assert!(
                std::time::Instant::now() < deadline,
                "the load made no progress"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Waits until `more` further requests were answered with a 2xx.
    async fn wait_for_successes(&self, more: usize) {
        use std::sync::atomic::Ordering;
        let target = self.ok.load(Ordering::SeqCst) + more;
        let deadline = std::time::Instant::now() + common::DEADLINE;
        while self.ok.load(Ordering::SeqCst) < target {
            assert!(
                std::time::Instant::now() < deadline,
                "no further request succeeded"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) -> Vec<Answer> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut answers = Vec::new();
        for task in self.tasks {
            answers.extend(task.await.expect("load task"));
        }
        answers
    }
}

/// The pids of the children of `pid` (an Apache master's workers).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// `sql` run by the app's user on the live database; the rows, tab-separated.
fn app_query(wp: &WordPress, sql: &str) -> String {
    let status = wp.lifeboat.status();
    let socket = status["databases"][0]["socket"]
        .as_str()
        .unwrap()
        .to_string();
    let state = status["state"].as_str().unwrap().to_string();
    let password = std::fs::read_to_string(
        wp.site()
            .join(format!(".lifeboat/mariadb/{state}/app-password")),
    )
    .unwrap();
    let out = Command::new("mariadb")
        .args([
            "--no-defaults",
            "--batch",
            "--skip-column-names",
            "--socket",
            &socket,
            "-uwordpress",
            "wordpress",
            "-e",
            sql,
        ])
        .env("MYSQL_PWD", password.trim())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kill_9(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_php_instance_or_its_workers_under_load_fails_no_request() {
    use tokio::task::block_in_place;
    let wp = block_in_place(|| installed_wordpress("Lifeboat-admin-0123456789"));
    let lifeboat = &wp.lifeboat;
    let pid_of = |s: &Value, id: &str| {
        s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id)
            .and_then(|i| i["pid"].as_u64())
            .unwrap() as u32
    };

    // The Apache master of web-2, while its workers render pages (streamed as PHP writes
    // them) and answer REST reads and writes: they get Apache's graceful stop signal and
    // finish what they are writing before the instance starts again.
    let master = pid_of(&lifeboat.status(), "web-2");
    let load = WordPressLoad::start(&wp.front, &wp.admin, 6, Mix::Pages, "a");
    load.wait_for_requests(30).await;
    // And slow writes without a key (a form posted from a browser: the front door may never
    // send one twice), some of them on web-2 when its master dies.
    let started = tempfile::Builder::new()
        .prefix("lifeboat-wp-slow")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(
        started.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    std::fs::write(
        wp.site().join("public/lifeboat-test-slow.php"),
        format!(
            "<?php\nfile_put_contents('{}/' . getmypid(), '');\nusleep(2500000);\necho \"slow done\\n\";\n",
            started.path().display()
        ),
    )
    .unwrap();
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let url = format!("{}/lifeboat-test-slow.php", wp.front);
            tokio::spawn(async move {
                let answer = reqwest::Client::new().post(url).body("x").send().await;
                match answer {
                    Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                    Err(e) => (0, format!("{e:?}")),
                }
            })
        })
        .collect();
    // Once every one runs in PHP (one still waiting in web-2's listen queue would be lost
    // with the queue when its workers stop listening: the front door cannot tell it from one
    // a worker took, so it may not send it again).
    let deadline = std::time::Instant::now() + common::DEADLINE;
    loop {
        let workers = children(master);
        let running: Vec<u32> = std::fs::read_dir(started.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        if running.len() == slow.len() && running.iter().any(|pid| workers.contains(pid)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slow writes did not all start, some on web-2"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    kill_9(master);
    block_in_place(|| {
        lifeboat.wait_for_status("web-2 back and healthy with a new master", |s| {
            s["instances"].as_array().unwrap().iter().any(|i| {
                i["id"] == "web-2"
                    && i["state"] == "healthy"
                    && i["pid"].as_u64().is_some_and(|p| p as u32 != master)
            })
        })
    });
    load.wait_for_requests(30).await;
    let mut answers = load.stop().await;
    for task in slow {
        let (status, body) = task.await.unwrap();
        assert_eq!(
            (status, body.as_str()),
            (200, "slow done\n"),
            "a slow write without a key was cut"
        );
    }

    // Every worker of web-1 (its master forks new ones) in the middle of REST requests: each
    // one that died before answering is sent again by the front door (reads, and writes with
    // their Idempotency-Key), and WordPress does a keyed write once.
    let master1 = pid_of(&lifeboat.status(), "web-1");
    let load = WordPressLoad::start(&wp.front, &wp.admin, 6, Mix::Rest, "b");
    load.wait_for_requests(30).await;
    let workers = children(master1);
    assert!(!workers.is_empty(), "web-1 has no workers");
    for w in &workers {
        kill_9(*w);
    }
    load.wait_for_requests(30).await;
    answers.extend(load.stop().await);

    let failed: Vec<String> = answers
        .iter()
        .filter(|a| !matches!(a.result, Ok(200..=299)))
        .map(|a| {
            let body: String = a.body.chars().take(300).collect();
            format!("{}: {:?} {body}", a.what, a.result)
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:#?}\nlifeboat's output:\n{}",
        failed.len(),
        answers.len(),
        failed.iter().take(5).collect::<Vec<_>>(),
        lifeboat.output()
    );
    // Every acknowledged post is stored, once.
    let mut written: Vec<String> = answers
        .iter()
        .filter_map(|a| a.what.strip_prefix("POST ").map(str::to_string))
        .collect();
    written.sort_unstable();
    let stored = block_in_place(|| load_posts(&wp));
    assert_eq!(stored, written, "the acknowledged posts, each stored once");
    eprintln!(
        "{} requests ({} posts) across a kill of web-2's master and of web-1's {} workers: none failed",
        answers.len(),
        written.len(),
        workers.len()
    );
}

/// The GTID position of the live server's binlog (`@@gtid_binlog_pos`).
fn server_gtid_pos(wp: &WordPress) -> String {
    app_query(wp, "SELECT @@global.gtid_binlog_pos")
        .trim()
        .to_string()
}

/// The titles of the posts of the load (`load C-N`), sorted.
fn load_posts(wp: &WordPress) -> Vec<String> {
    let mut titles: Vec<String> = app_query(
        wp,
        "SELECT post_title FROM wp_posts WHERE post_type = 'post' AND post_title LIKE 'load %'",
    )
    .lines()
    .map(str::to_string)
    .collect();
    titles.sort_unstable();
    titles
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_mariadbd_keeps_every_acknowledged_wordpress_post_and_capture_has_no_gap() {
    use tokio::task::block_in_place;
    let wp = block_in_place(|| installed_wordpress("Lifeboat-admin-0123456789"));
    let lifeboat = &wp.lifeboat;
    let db_pid = lifeboat.status()["databases"][0]["pid"].as_u64().unwrap() as u32;
    let acked = |answers: &[Answer]| -> Vec<String> {
        let mut titles: Vec<String> = answers
            .iter()
            .filter(|a| a.result == Ok(201))
            .filter_map(|a| a.what.strip_prefix("POST ").map(str::to_string))
            .collect();
        titles.sort_unstable();
        titles
    };

    let load = WordPressLoad::start(&wp.front, &wp.admin, 3, Mix::Writes, "");
    load.wait_for_requests(20).await;
    kill_9(db_pid);
    block_in_place(|| {
        lifeboat.wait_for_status("mariadbd restarted", |s| {
            let db = &s["databases"][0];
            db["restarts"].as_u64() >= Some(1)
                && db["pid"].as_u64().is_some_and(|p| p as u32 != db_pid)
        });
    });
    // Writes resume on the restarted server.
    load.wait_for_successes(20).await;
    let answers = load.stop().await;
    let acked = acked(&answers);

    // Every acknowledged post is in the restarted server, once (a write that failed while
    // the server was down may be there too: its commit can precede the crash).
    let stored = block_in_place(|| load_posts(&wp));
    let missing: Vec<_> = acked.iter().filter(|t| !stored.contains(t)).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    let mut unique = stored.clone();
    unique.dedup();
    assert_eq!(unique, stored, "a post stored twice");

    // Capture reconnected by itself and confirmed everything the server committed as durable:
    // a GTID it missed would have stopped it with a gap error.
    // The server's position is read again at each look: WordPress itself may commit after
    // the load stopped (its cron, transients), and capture must confirm those too.
    let status = block_in_place(|| {
        lifeboat.wait_for_status("capture of every transaction", |s| {
            let m = &s["capture"]["mariadb"];
            m["connected"] == true && m["confirmed"] == server_gtid_pos(&wp).as_str()
        })
    });
    assert!(
        status["capture"]["mariadb"]["reconnects"].as_u64() >= Some(1),
        "{status:#}"
    );
    assert!(status["capture"]["last_error"].is_null(), "{status:#}");

    // End to end: the timeline replays every transaction from the base to now with no gap
    // (a restore refuses a missing one), so a rewind to now has every post.
    let out = block_in_place(|| lifeboat.cli(&["rewind", "--to", "latest", "--yes", "--json"]));
    assert!(
        out.status.success(),
        "rewind: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rewound = block_in_place(|| load_posts(&wp));
    assert_eq!(
        rewound, stored,
        "the rewound site has every post of the live one"
    );
    eprintln!(
        "{} posts acknowledged of {} writes across a kill -9 of mariadbd; all stored, captured without a gap and rewound",
        acked.len(),
        answers.len()
    );
}
