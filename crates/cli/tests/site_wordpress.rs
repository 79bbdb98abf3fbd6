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

#[test]
fn rewind_with_new_credentials_undoes_an_attack_on_wordpress() {
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
    let admin_password = "Lifeboat-admin-0123456789";
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
    let admin = format!("admin:{app_password}");
    lifeboat.wait_healthy(2);

    // Content through the REST API.
    let mut posts = Vec::new();
    for i in 1..=3 {
        let (code, body) = curl(
            &format!("{front}/wp-json/wp/v2/posts"),
            &[
                "-u",
                &admin,
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
            &admin,
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
    wait_shipped(&lifeboat, time::OffsetDateTime::now_utc());
    let t = time::OffsetDateTime::now_utc();

    // The attack.
    for id in &posts[..2] {
        let (code, body) = curl(
            &format!("{front}/wp-json/wp/v2/posts/{id}?force=true"),
            &["-u", &admin, "-X", "DELETE"],
        );
        assert_eq!(code, 200, "delete {id}: {body}");
    }
    let rogue_password = "Rogue-admin-password-42";
    let (code, body) = curl(
        &format!("{front}/wp-json/wp/v2/users"),
        &[
            "-u",
            &admin,
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
            &admin,
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
    assert!(login(&front, &rogue_jar, "rogue", rogue_password));
    assert_eq!(dashboard(&front, &rogue_jar), 200, "the attacker is in");
    let old_db_password =
        std::fs::read_to_string(site.join(".lifeboat/mariadb/site/app-password")).unwrap();
    wait_shipped(&lifeboat, time::OffsetDateTime::now_utc());

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
        &front,
        &site.join("rogue2.jar"),
        "rogue",
        rogue_password
    ));
    assert_eq!(dashboard(&front, &rogue_jar), 302, "the old cookie");
    let (code, _) = curl(&format!("{front}/wp-json/wp/v2/users/me"), &["-u", &admin]);
    assert_eq!(code, 401, "the old application password");
    assert!(!login(
        &front,
        &site.join("old.jar"),
        "admin",
        admin_password
    ));
    let new_jar = site.join("new.jar");
    assert!(login(&front, &new_jar, "admin", new_admin_password));
    assert_eq!(dashboard(&front, &new_jar), 200);
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
