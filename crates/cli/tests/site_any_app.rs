//! Any app, unchanged, as a user runs it: relative paths from another directory, an app that
//! knows nothing of Lifeboat (its data where it always keeps it), data outside `[state]` named
//! out loud, `lifeboat exec`, WAL mode switched on request, and health reasons that stay
//! current. The real `lifeboat` binary, the real guestbook, real files.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Lifeboat, guestbook_bin, lifeboat_bin, wait_until};
use serde_json::Value;

const INITIAL_PASSWORD: &str = "initial-admin-pw";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A scratch dir holding a site dir named `site`, whose manifest runs the guestbook.
/// `web_env` is the `[processes.web] env` table (TOML inline), `extra` more manifest text.
fn scratch_site(web_env: &str, extra: &str) -> (tempfile::TempDir, PathBuf) {
    let scratch = tempfile::Builder::new()
        .prefix("lifeboat-any-app")
        .tempdir()
        .unwrap();
    common::open_to_the_site_user(scratch.path());
    let site = scratch.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(
        site.join("lifeboat.toml"),
        format!(
            r#"[site]
name = "guestbook"

[processes.web]
command = "{guestbook}"
replicas = 2
stop_timeout = "10s"
env = {web_env}
health = {{ path = "/healthz", interval = "200ms", timeout = "2s" }}

[state]
sqlite = ["data/guestbook.db"]
dirs = ["data/uploads"]

[proxy]
listen = "127.0.0.1:0"
{extra}"#,
            guestbook = guestbook_bin().display(),
        ),
    )
    .unwrap();
    (scratch, site)
}

const VAULT: &str = r#"
[vault]
destinations = [".lifeboat/vault"]
segment_interval = "250ms"
"#;

/// `lifeboat ARGS` run from `cwd`, as typed there.
fn run_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(lifeboat_bin())
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run lifeboat")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

async fn post_entry(proxy: &str, text: &str) {
    let response = reqwest::Client::new()
        .post(format!("{proxy}/entries"))
        .form(&[("text", text)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "POST /entries {text}");
}

async fn entries(proxy: &str) -> Vec<String> {
    let list: Vec<Value> = reqwest::get(format!("{proxy}/api/entries"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list.iter()
        .map(|e| e["text"].as_str().unwrap().to_string())
        .collect()
}

async fn upload(proxy: &str, name: &str, body: &str) {
    let boundary = "lifeboat-test-boundary";
    let form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
         Content-Type: text/plain\r\n\r\n{body}\r\n--{boundary}--\r\n"
    );
    let response = reqwest::Client::new()
        .post(format!("{proxy}/upload"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "upload {name}");
}

/// The body of `/uploads/NAME`, or `None` for a 404.
async fn download(proxy: &str, name: &str) -> Option<String> {
    let response = reqwest::get(format!("{proxy}/uploads/{name}"))
        .await
        .unwrap();
    if response.status() == 404 {
        return None;
    }
    assert_eq!(response.status(), 200);
    Some(response.text().await.unwrap())
}

async fn login(proxy: &str, password: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{proxy}/login"))
        .json(&serde_json::json!({ "password": password }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A moment between two writes, so a rewind to it has one and not the other.
async fn moment() -> String {
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let t = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    t
}

/// The guestbook finds its data through `$LIFEBOAT_STATE_DIR` by default. Started as the
/// README says (`lifeboat up SITE` from another directory, the site dir relative), the whole
/// flow must use the site's own files: the rewound site serves the rewound entries, new writes
/// land in the captured live state, the hook changes the live copy's password, undo goes
/// back, and nothing is created under a doubled `site/site` path.
#[tokio::test(flavor = "multi_thread")]
async fn a_relative_site_dir_from_another_directory_survives_write_rewind_rotate_and_undo() {
    let hook = workspace().join("examples/guestbook/rotate-credentials.sh");
    let (scratch, site) = scratch_site(
        &format!("{{ GUESTBOOK_ADMIN_PASSWORD = {INITIAL_PASSWORD:?} }}"),
        &format!(
            "{VAULT}\n[credentials]\nrotate = \"GUESTBOOK_BIN={} {}\"\n",
            guestbook_bin().display(),
            hook.display()
        ),
    );
    let cwd = scratch.path();
    let lifeboat = Lifeboat::up_as_user_would(Some(cwd), Path::new("site"), &[], &[]);
    lifeboat.wait_healthy(2);
    lifeboat.wait_for_status("capture to run", |s| s["capture"]["running"] == true);
    let proxy = lifeboat.proxy.clone();

    post_entry(&proxy, "before").await;
    let t = moment().await;
    post_entry(&proxy, "intruder").await;

    let out = ok(
        run_in(
            cwd,
            &[
                "rewind",
                "-C",
                "site",
                "--to",
                &t,
                "--yes",
                "--rotate-credentials",
                "--json",
            ],
        ),
        "rewind",
    );
    let report: Value = serde_json::from_str(&out).unwrap();
    let state_dir = PathBuf::from(report["state_dir"].as_str().unwrap());
    assert!(state_dir.is_absolute(), "{state_dir:?}");
    assert!(state_dir.starts_with(site.canonicalize().unwrap().join(".lifeboat/states")));
    assert_eq!(entries(&proxy).await, ["before"], "the rewound site serves");

    let printed = report["credentials"].as_str().unwrap();
    let password = printed
        .strip_prefix("new admin password: ")
        .unwrap_or_else(|| panic!("the hook printed {printed:?}"));
    assert_eq!(login(&proxy, INITIAL_PASSWORD).await, 401, "old password");
    assert_eq!(login(&proxy, password).await, 200, "new password");

    post_entry(&proxy, "after").await;
    assert_eq!(entries(&proxy).await, ["before", "after"]);
    let live = rusqlite::Connection::open(state_dir.join("data/guestbook.db")).unwrap();
    let count: i64 = live
        .query_row(
            "SELECT count(*) FROM entries WHERE text = 'after'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        count, 1,
        "the new write is in the live copy, which capture follows"
    );
    wait_until("capture to follow the live copy", || {
        lifeboat.status()["capture"]["state"] == report["state"]
    });

    let status = ok(run_in(cwd, &["status", "-C", "site"]), "status");
    let checkpoint = status
        .split("last checkpoint ")
        .nth(1)
        .expect("status names the last checkpoint");
    assert!(
        checkpoint.len() > 20 && checkpoint.as_bytes()[10] == b'T',
        "RFC 3339 time in: {status}"
    );

    ok(
        run_in(cwd, &["rewind", "-C", "site", "--undo", "--yes"]),
        "undo",
    );
    assert_eq!(entries(&proxy).await, ["before", "intruder"]);
    for doubled in [
        site.join("site"),
        cwd.join("site/site"),
        site.join(".lifeboat/site"),
    ] {
        assert!(!doubled.exists(), "{} was created", doubled.display());
    }
    drop(lifeboat);
}

/// An app that knows nothing of Lifeboat opens `data/guestbook.db` and `data/uploads` relative
/// to its working directory, as most apps do. A rewind must still give it the rewound data
/// (database and files), and the credentials hook runs like an instance: with the process's
/// environment and the restored copy at the usual paths.
#[tokio::test(flavor = "multi_thread")]
async fn an_app_that_knows_nothing_of_lifeboat_is_rewound_at_its_usual_paths() {
    let (_scratch, site) = scratch_site(
        &format!(
            "{{ GUESTBOOK_DATA = \"data\", GUESTBOOK_ADMIN_PASSWORD = {INITIAL_PASSWORD:?}, HOOK_SEES = \"the web env\" }}"
        ),
        &format!(
            "{VAULT}\n[credentials]\nrotate = \"echo rotated: admin; echo \\\"hook env: $HOOK_SEES\\\"; ls data/uploads\"\n"
        ),
    );
    let lifeboat = Lifeboat::up(&site);
    lifeboat.wait_healthy(2);
    lifeboat.wait_for_status("capture to run", |s| s["capture"]["running"] == true);
    let proxy = lifeboat.proxy.clone();

    post_entry(&proxy, "kept").await;
    upload(&proxy, "kept.txt", "kept file").await;
    let t = moment().await;
    post_entry(&proxy, "vandalism").await;
    upload(&proxy, "defaced.txt", "defaced").await;

    let report: Value = serde_json::from_str(&ok(
        lifeboat.cli(&[
            "rewind",
            "--to",
            &t,
            "--yes",
            "--rotate-credentials",
            "--json",
        ]),
        "rewind",
    ))
    .unwrap();
    assert_eq!(entries(&proxy).await, ["kept"]);
    assert_eq!(
        download(&proxy, "kept.txt").await.as_deref(),
        Some("kept file")
    );
    assert_eq!(download(&proxy, "defaced.txt").await, None);
    let hook_said = report["credentials"].as_str().unwrap();
    assert!(
        hook_said.contains("hook env: the web env") && hook_said.contains("kept.txt"),
        "the hook runs with the web process's env and sees the restored uploads: {hook_said:?}"
    );
    assert!(!hook_said.contains("defaced.txt"), "{hook_said:?}");
    let done = lifeboat.wait_for_event("the rewind-done event", |e| e["kind"] == "rewind-done");
    assert_eq!(done["rotated"], serde_json::json!(["admin"]));

    // The site dir's own files are untouched: they still hold what was live before.
    let site_db = rusqlite::Connection::open(site.join("data/guestbook.db")).unwrap();
    let vandalism: i64 = site_db
        .query_row(
            "SELECT count(*) FROM entries WHERE text = 'vandalism'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(vandalism, 1);
    drop(site_db);

    // New writes and uploads go to the live copy, at the paths the app uses.
    post_entry(&proxy, "new").await;
    upload(&proxy, "new.txt", "new file").await;
    let state_dir = PathBuf::from(report["state_dir"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(state_dir.join("data/uploads/new.txt")).unwrap(),
        "new file"
    );
    assert!(!site.join("data/uploads/new.txt").exists());
    let status = lifeboat.status();
    assert_eq!(status["warnings"], serde_json::json!([]), "{status:#}");
    // The instances hold the live copy's database, as the watcher sees it.
    for i in status["instances"].as_array().unwrap() {
        assert_eq!(i["serves"], report["state"]);
    }
    drop(lifeboat);
}

/// An app that writes its database somewhere the manifest does not declare is not backed up:
/// `status` and `events` must say so, naming the instance and the file.
#[test]
fn writes_outside_the_declared_state_are_named_in_status_and_events() {
    let (_scratch, site) = scratch_site(
        "{ GUESTBOOK_DATA = \"elsewhere\", GUESTBOOK_ADMIN_PASSWORD = \"initial-admin-pw\" }",
        "",
    );
    let lifeboat = Lifeboat::up(&site);
    lifeboat.wait_healthy(2);
    let status = lifeboat.wait_for_status("a warning about elsewhere/guestbook.db", |s| {
        s["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("elsewhere/guestbook.db"))
    });
    let warning = status["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .find(|w| w.contains("elsewhere/guestbook.db"))
        .unwrap()
        .to_string();
    assert!(
        warning.starts_with("web-") && warning.contains("not in [state]: it is not backed up"),
        "{warning}"
    );
    let event = lifeboat.wait_for_event("a writes-outside-state event", |e| {
        e["kind"] == "writes-outside-state"
            && e["path"]
                .as_str()
                .unwrap()
                .ends_with("elsewhere/guestbook.db")
    });
    assert_eq!(event["sqlite"], true);
    let log = std::fs::read_to_string(site.join("lifeboat-up.log")).unwrap();
    assert!(
        log.contains("elsewhere/guestbook.db, which is not in [state]"),
        "up says it on its terminal: {log}"
    );
}

/// Without private mounts an app that ignores `$LIFEBOAT_STATE_DIR` would go on serving the
/// database the rewind is meant to undo. The rewind must see that (the new instances hold the
/// live copy, not the restored one) and call the switch off, leaving the site as it was.
#[tokio::test(flavor = "multi_thread")]
async fn a_rewind_is_called_off_when_the_new_instances_do_not_use_the_restored_copy() {
    let (_scratch, site) = scratch_site(
        "{ GUESTBOOK_DATA = \"data\", GUESTBOOK_ADMIN_PASSWORD = \"initial-admin-pw\" }",
        &format!("{VAULT}\n[isolation]\nprivate_mounts = false\n"),
    );
    let lifeboat = Lifeboat::up(&site);
    lifeboat.wait_healthy(2);
    lifeboat.wait_for_status("capture to run", |s| s["capture"]["running"] == true);
    let proxy = lifeboat.proxy.clone();
    let status = lifeboat.status();
    assert!(
        status["warnings"][0]
            .as_str()
            .unwrap()
            .contains("private_mounts = false"),
        "status says restored states are not shown at the usual paths: {status:#}"
    );
    post_entry(&proxy, "before").await;
    let t = moment().await;
    post_entry(&proxy, "after").await;
    let out = lifeboat.cli(&["rewind", "--to", &t, "--yes"]);
    assert!(!out.status.success(), "the rewind must not switch");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("not the restored copy") && said.contains("data/guestbook.db"),
        "{said}"
    );
    assert!(said.contains("the live site is unchanged"), "{said}");
    assert_eq!(entries(&proxy).await, ["before", "after"]);
    assert_eq!(lifeboat.status()["state"], "site");
}

/// `lifeboat exec -- CMD` runs a command the way the site's processes see the live state:
/// from the site dir, with the process's environment, and after a rewind with the restored
/// copy at the usual paths, whether or not lifeboat runs.
#[tokio::test(flavor = "multi_thread")]
async fn lifeboat_exec_runs_commands_on_the_live_state_as_the_processes_see_it() {
    let (scratch, site) = scratch_site(
        "{ GUESTBOOK_DATA = \"data\", GUESTBOOK_ADMIN_PASSWORD = \"initial-admin-pw\", GREETING = \"hello from web\" }",
        VAULT,
    );
    let mut lifeboat = Lifeboat::up(&site);
    lifeboat.wait_healthy(2);
    lifeboat.wait_for_status("capture to run", |s| s["capture"]["running"] == true);
    let proxy = lifeboat.proxy.clone();
    upload(&proxy, "note.txt", "old note").await;
    let t = moment().await;
    upload(&proxy, "note2.txt", "new note").await;
    ok(lifeboat.cli(&["rewind", "--to", &t, "--yes"]), "rewind");

    let script = "echo \"$GREETING\"; pwd; ls data/uploads";
    let exec = |cwd: &Path| run_in(cwd, &["exec", "-C", "site", "--", "sh", "-c", script]);
    let said = ok(exec(scratch.path()), "exec while lifeboat runs");
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines[0], "hello from web");
    assert_eq!(Path::new(lines[1]), site.canonicalize().unwrap());
    assert_eq!(&lines[2..], ["note.txt"], "the restored uploads: {said}");

    ok(lifeboat.cli(&["down"]), "down");
    assert!(lifeboat.wait_exit(), "lifeboat stops");
    let said = ok(exec(scratch.path()), "exec while lifeboat is down");
    assert_eq!(&said.lines().collect::<Vec<_>>()[2..], ["note.txt"]);

    let failed = run_in(
        scratch.path(),
        &["exec", "-C", "site", "--", "sh", "-c", "exit 7"],
    );
    assert_eq!(
        failed.status.code(),
        Some(7),
        "the command's exit code is exec's"
    );
    let unknown = run_in(
        scratch.path(),
        &["exec", "-C", "site", "--process", "nope", "--", "true"],
    );
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no process `nope`"));
}

/// A database in rollback-journal mode cannot be captured. `up` must say so on its terminal
/// (not only in `status`), and `up --enable-wal` switches it, with an event.
#[test]
fn up_names_a_database_not_in_wal_mode_and_enable_wal_switches_it() {
    let scratch = tempfile::tempdir().unwrap();
    common::open_to_the_site_user(scratch.path());
    let site = scratch.path().join("site");
    std::fs::create_dir_all(site.join("data")).unwrap();
    std::fs::write(
        site.join("lifeboat.toml"),
        format!(
            "[site]\nname = \"quiet\"\n[processes.worker]\ncommand = \"sleep 600\"\nhttp = false\n\
             [state]\nsqlite = [\"data/app.db\"]\ndirs = [\"data/uploads\"]\n[proxy]\nlisten = \"127.0.0.1:0\"\n{VAULT}"
        ),
    )
    .unwrap();
    let db = site.join("data/app.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    let mode = || -> String {
        rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(mode(), "delete");

    let mut lifeboat = Lifeboat::up(&site);
    lifeboat.wait_for_event("the not-wal-mode event", |e| e["kind"] == "not-wal-mode");
    wait_until("up to name the database on its terminal", || {
        std::fs::read_to_string(site.join("lifeboat-up.log"))
            .unwrap()
            .contains("data/app.db is in delete journal mode")
    });
    let log = std::fs::read_to_string(site.join("lifeboat-up.log")).unwrap();
    assert!(log.contains("lifeboat up --enable-wal"), "{log}");
    assert!(
        log.contains("data/uploads (a data dir in [state]) was missing; created it empty"),
        "{log}"
    );
    assert!(site.join("data/uploads").is_dir());
    assert_eq!(mode(), "delete", "nothing is switched without asking");
    ok(lifeboat.cli(&["down"]), "down");
    assert!(lifeboat.wait_exit());

    let lifeboat = Lifeboat::up_as_user_would(None, &site, &["--enable-wal"], &[]);
    lifeboat.wait_for_event("the wal-enabled event", |e| {
        e["kind"] == "wal-enabled" && e["previous"] == "delete"
    });
    lifeboat.wait_for_status("capture to run", |s| s["capture"]["running"] == true);
    assert_eq!(mode(), "wal");
}

/// The reason shown for an unhealthy instance is the latest check's, in words.
#[test]
fn status_says_why_an_instance_is_unhealthy_now() {
    let scratch = tempfile::tempdir().unwrap();
    common::open_to_the_site_user(scratch.path());
    std::fs::write(
        scratch.path().join("lifeboat.toml"),
        "[site]\nname = \"static\"\n[processes.web]\n\
         command = \"python3 -m http.server $PORT --bind 127.0.0.1\"\n\
         health = { path = \"/no-such-page\", interval = \"200ms\", timeout = \"2s\" }\n\
         [proxy]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let lifeboat = Lifeboat::up(scratch.path());
    let status = lifeboat.wait_for_status("a health check result", |s| {
        s["instances"][0]["health_check"]
            .as_str()
            .is_some_and(|c| c.contains("answered"))
    });
    let check = status["instances"][0]["health_check"].as_str().unwrap();
    assert!(check.contains("404"), "{check}");
    let text = String::from_utf8_lossy(&lifeboat.cli(&["status"]).stdout).to_string();
    assert!(
        text.contains("last health check: GET /no-such-page"),
        "{text}"
    );
}
