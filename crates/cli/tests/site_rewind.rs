//! Time travel end to end: the real `lifeboat up` capturing the real guestbook into a vault on a
//! local directory and a real S3-compatible server (s3s-fs), then `lifeboat rewind`,
//! `rewind --undo`, `restore-site` and `timeline` as a user runs them.

mod common;
#[path = "../../vault/tests/common/s3.rs"]
mod s3;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{DEADLINE, Lifeboat, SiteDir, guestbook_bin, lifeboat_bin, wait_until};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const INITIAL_PASSWORD: &str = "initial-admin-pw";
const ATTACKER_PASSWORD: &str = "attacker-owns-you";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A guestbook site capturing into `destinations`.
fn site(destinations: &[String], quorum: Option<usize>) -> SiteDir {
    let dests = destinations
        .iter()
        .map(|d| format!("{d:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let quorum = quorum
        .map(|q| format!("quorum = {q}\n"))
        .unwrap_or_default();
    let hook = workspace().join("examples/guestbook/rotate-credentials.sh");
    SiteDir::with_manifest(&format!(
        r#"[site]
name = "guestbook"

[processes.web]
command = "{guestbook}"
replicas = 2
stop_timeout = "10s"
health = {{ path = "/healthz", interval = "200ms", timeout = "2s" }}

[state]
sqlite = ["data/guestbook.db"]
dirs = ["data/uploads"]

[proxy]
listen = "127.0.0.1:0"

[vault]
destinations = [{dests}]
{quorum}segment_interval = "250ms"
integrity_check_interval = "1s"

[credentials]
rotate = "GUESTBOOK_BIN={guestbook} {hook}"

[isolation]
pass_env = ["GUESTBOOK_ADMIN_PASSWORD"]   # the only variable of lifeboat's the app gets
"#,
        guestbook = guestbook_bin().display(),
        hook = hook.display(),
    ))
}

/// A guestbook site capturing into one local destination, `vault` under `scratch`.
fn local_vault_site(scratch: &Path) -> SiteDir {
    site(&[scratch.join("vault").display().to_string()], None)
}

fn up(site: &Path) -> Lifeboat {
    Lifeboat::up_with_env(
        site,
        &[
            ("GUESTBOOK_ADMIN_PASSWORD", INITIAL_PASSWORD),
            ("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY),
        ],
    )
}

/// [`up`], once the instances are healthy and capture runs.
fn capturing(site: &Path) -> Lifeboat {
    let lifeboat = up(site);
    lifeboat.wait_healthy(2);
    lifeboat.wait_for_status("capture to run", |s| s["capture"]["running"] == true);
    lifeboat
}

/// The entry ids in a restored copy's database.
fn restored_ids(dir: &Path) -> Vec<i64> {
    let conn = rusqlite::Connection::open(dir.join("data/guestbook.db")).unwrap();
    let mut stmt = conn.prepare("SELECT id FROM entries ORDER BY id").unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

/// `lifeboat restore-site --to latest --into INTO`; returns INTO.
fn restore_latest(site: &Path, into: &Path) -> PathBuf {
    ok_json(
        site,
        &[
            "restore-site",
            "--to",
            "latest",
            "--into",
            into.to_str().unwrap(),
            "--json",
        ],
    );
    into.to_path_buf()
}

/// The command `lifeboat ARGS -C SITE` with the S3 test credentials.
fn command(site: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(lifeboat_bin());
    command
        .args(args)
        .arg("-C")
        .arg(site)
        .env("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY);
    command
}

/// Runs `lifeboat ARGS -C SITE` with the S3 test credentials.
fn run(site: &Path, args: &[&str]) -> Output {
    command(site, args).output().expect("run lifeboat")
}

/// kill -9 of lifeboat, then waits until every instance it ran has died with it.
fn kill_9_with_its_instances(mut lifeboat: Lifeboat) {
    lifeboat.kill_9();
    let pids = lifeboat.seen_pids();
    wait_until("the instances die with lifeboat", || {
        pids.iter().all(|p| !common::alive(*p))
    });
}

fn ok_json(site: &Path, args: &[&str]) -> Value {
    let out = run(site, args);
    assert!(
        out.status.success(),
        "lifeboat {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "lifeboat {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn rfc(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap()
}

/// One POST /entries: when it was sent, when its `201` came back, and the id.
#[derive(Debug, Clone)]
struct Write {
    id: i64,
    text: String,
    sent: OffsetDateTime,
    acked: OffsetDateTime,
}

/// Posts entries one after another until stopped, recording each acknowledged one.
struct Writer {
    stop: Arc<AtomicBool>,
    writes: Arc<Mutex<Vec<Write>>>,
    failures: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(proxy: &str, label: &'static str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (s, w, f, proxy) = (
            stop.clone(),
            writes.clone(),
            failures.clone(),
            proxy.to_string(),
        );
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut n = 0;
            while !s.load(Ordering::SeqCst) {
                n += 1;
                let sent = now();
                let text = format!("{label} {n}");
                let res = http
                    .post(format!("{proxy}/entries"))
                    .header(
                        "Idempotency-Key",
                        format!("{label}-{n}-{}", sent.unix_timestamp_nanos()),
                    )
                    .json(&serde_json::json!({ "text": text.clone() }))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status().as_u16() == 201 => {
                        let body: Value = r.json().await.unwrap();
                        w.lock().unwrap().push(Write {
                            id: body["id"].as_i64().unwrap(),
                            text,
                            sent,
                            acked: now(),
                        });
                    }
                    Ok(r) => f.lock().unwrap().push(format!("HTTP {}", r.status())),
                    Err(e) => f.lock().unwrap().push(format!("{e:?}")),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Writer {
            stop,
            writes,
            failures,
            task,
        }
    }

    fn count(&self) -> usize {
        self.writes.lock().unwrap().len()
    }

    async fn wait_for(&self, more: usize) {
        let target = self.count() + more;
        let deadline = Instant::now() + DEADLINE;
        while self.count() < target {
            assert!(Instant::now() < deadline, "the writer made no progress");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) -> (Vec<Write>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        let writes = self.writes.lock().unwrap().clone();
        let failures = self.failures.lock().unwrap().clone();
        (writes, failures)
    }
}

/// The texts of the entries the site shows. (Ids are not stable across a rewind: the
/// restored database hands out the ids of the entries it does not have again.)
async fn entry_texts(proxy: &str) -> std::collections::BTreeSet<String> {
    let entries: Vec<Value> = reqwest::get(format!("{proxy}/api/entries"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    entries
        .iter()
        .map(|e| e["text"].as_str().unwrap().to_string())
        .collect()
}

async fn entry_ids(proxy: &str) -> Vec<i64> {
    let entries: Vec<Value> = reqwest::get(format!("{proxy}/api/entries"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ids: Vec<i64> = entries.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    ids.sort();
    ids
}

/// How much later than its commit capture may record a transaction's time: it notices
/// commits by polling (every 50 ms), and this machine may be loaded.
const PRECISION: time::Duration = time::Duration::milliseconds(250);

/// Every write acknowledged at or before `t` (less capture's [`PRECISION`]) is in `ids`; none
/// sent after `t` is. (A write in flight at `t` committed at some moment between sending and
/// the answer: either is right.)
fn assert_exact_cut(
    texts: &std::collections::BTreeSet<String>,
    writes: &[Write],
    t: OffsetDateTime,
) {
    for w in writes {
        if w.acked <= t - PRECISION {
            assert!(
                texts.contains(&w.text),
                "{:?} acknowledged at {} <= {} is missing",
                w.text,
                rfc(w.acked),
                rfc(t)
            );
        }
        if w.sent > t {
            assert!(
                !texts.contains(&w.text),
                "{:?} sent at {} > {} is there",
                w.text,
                rfc(w.sent),
                rfc(t)
            );
        }
    }
}

async fn upload(proxy: &str, name: &str, data: &[u8]) {
    let boundary = "lifeboat-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let r = reqwest::Client::new()
        .post(format!("{proxy}/upload"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "upload {name}");
}

async fn download(proxy: &str, name: &str) -> Option<Vec<u8>> {
    let r = reqwest::get(format!("{proxy}/uploads/{name}"))
        .await
        .unwrap();
    match r.status().as_u16() {
        200 => Some(r.bytes().await.unwrap().to_vec()),
        404 => None,
        other => panic!("GET /uploads/{name}: HTTP {other}"),
    }
}

async fn login(proxy: &str, password: &str) -> Option<String> {
    let r = reqwest::Client::new()
        .post(format!("{proxy}/login"))
        .json(&serde_json::json!({ "password": password }))
        .send()
        .await
        .unwrap();
    if r.status().as_u16() != 200 && r.status().as_u16() != 204 && r.status().as_u16() != 303 {
        return None;
    }
    r.headers()
        .get("set-cookie")
        .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_string())
}

/// Waits until capture has shipped a segment holding what changed up to `since` (the time of
/// the last change) and holds nothing unshipped.
fn wait_shipped(lifeboat: &Lifeboat, since: OffsetDateTime) {
    lifeboat.wait_for_status("capture to ship the last changes", |s| {
        let shipped = s["capture"]["last_shipped_at"]
            .as_str()
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
        shipped.is_some_and(|t| t > since) && s["capture"]["lag_ms"] == 0
    });
}

fn live_db(lifeboat: &Lifeboat) -> PathBuf {
    let state = lifeboat.status()["state"].as_str().unwrap().to_string();
    let dir = if state == "site" {
        lifeboat.site.clone()
    } else {
        lifeboat.site.join(".lifeboat/states").join(state)
    };
    dir.join("data/guestbook.db")
}

fn integrity(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// The whole story of the issue: continuous writes and uploads, a moment T, an attack
/// (bad entries, deleted and altered uploads, a stolen admin password), then a rewind to T
/// with new credentials while visitors keep reading, then undo and redo.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewind_brings_back_exactly_the_moment_before_the_attack_with_new_credentials() {
    let scratch = tempfile::tempdir().unwrap();
    common::open_to_the_site_user(scratch.path());
    let s3 = s3::S3Server::start(&scratch.path().join("s3"), "backups");
    let local = scratch.path().join("vault-local");
    let site = site(
        &[local.display().to_string(), s3.url("backups", "guestbook")],
        None,
    );
    let lifeboat = capturing(site.path());
    let proxy = lifeboat.proxy.clone();

    // Visitors read all along; not one of their requests may fail.
    let readers = common::Load::start(&proxy, 2, None);
    let writer = Writer::start(&proxy, "good");
    upload(&proxy, "keep.txt", b"kept as it was").await;
    upload(&proxy, "alter.txt", b"the original text").await;
    upload(&proxy, "delete.txt", b"deleted by the attacker").await;
    writer.wait_for(40).await;
    let t = now();
    writer.wait_for(20).await;
    let (good, failures) = writer.stop().await;
    assert!(failures.is_empty(), "writes failed: {failures:?}");
    assert!(
        good.iter().any(|w| w.sent > t),
        "the writer kept writing after T"
    );

    // The attack.
    let cookie = login(&proxy, INITIAL_PASSWORD)
        .await
        .expect("the owner's password works");
    let r = reqwest::Client::new()
        .post(format!("{proxy}/admin/password"))
        .header("cookie", &cookie)
        .json(&serde_json::json!({ "password": ATTACKER_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "the attacker changes the password: {}",
        r.status()
    );
    let bad = Writer::start(&proxy, "spam");
    bad.wait_for(20).await;
    let (spam, _) = bad.stop().await;
    let uploads = lifeboat.site.join("data/uploads");
    std::fs::write(uploads.join("alter.txt"), b"defaced").unwrap();
    std::fs::remove_file(uploads.join("delete.txt")).unwrap();
    upload(&proxy, "malware.exe", b"MZ evil").await;
    assert!(login(&proxy, ATTACKER_PASSWORD).await.is_some());
    let last_change = now();
    wait_shipped(&lifeboat, last_change);

    // Rewind to T with new credentials.
    let report = ok_json(
        site.path(),
        &[
            "rewind",
            "--to",
            &rfc(t),
            "--rotate-credentials",
            "--yes",
            "--json",
        ],
    );
    let creds = report["credentials"]
        .as_str()
        .expect("the hook's output is shown");
    let new_password = creds
        .strip_prefix("new admin password: ")
        .unwrap_or_else(|| panic!("hook output: {creds}"))
        .trim()
        .to_string();
    assert_eq!(report["previous"], "site");
    // The report says when the copy began serving and where the time went.
    let serving = report["serving_ms"].as_u64().unwrap();
    assert!(
        serving > 0 && serving <= report["took_ms"].as_u64().unwrap(),
        "{report}"
    );
    let phases: Vec<&str> = report["phases_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_str().unwrap())
        .collect();
    for phase in [
        "ship",
        "restore vault",
        "restore databases",
        "credentials hook",
        "staged instances healthy, switch",
        "old state stopped",
    ] {
        assert!(phases.contains(&phase), "{phase} missing: {phases:?}");
    }
    let outcomes = readers.stop().await;
    common::assert_no_failures_or_show_log(&outcomes, &lifeboat.output());

    let texts = entry_texts(&proxy).await;
    assert_exact_cut(&texts, &good, t);
    for w in &spam {
        assert!(
            !texts.contains(&w.text),
            "attacker entry {} survived the rewind",
            w.id
        );
    }
    assert_eq!(
        download(&proxy, "keep.txt").await.as_deref(),
        Some(&b"kept as it was"[..])
    );
    assert_eq!(
        download(&proxy, "alter.txt").await.as_deref(),
        Some(&b"the original text"[..])
    );
    assert_eq!(
        download(&proxy, "delete.txt").await.as_deref(),
        Some(&b"deleted by the attacker"[..])
    );
    assert_eq!(download(&proxy, "malware.exe").await, None);
    assert_eq!(integrity(&live_db(&lifeboat)), "ok");
    assert!(
        login(&proxy, ATTACKER_PASSWORD).await.is_none(),
        "the attacker's password still works"
    );
    assert!(
        login(&proxy, INITIAL_PASSWORD).await.is_none(),
        "the old password still works"
    );
    assert!(
        login(&proxy, &new_password).await.is_some(),
        "the new password does not work"
    );
    // The live state before the rewind is untouched, for --undo.
    assert_eq!(
        std::fs::read(lifeboat.site.join("data/uploads/alter.txt")).unwrap(),
        b"defaced"
    );

    // The timeline shows the rewind; undo goes back to the attacked state, undo again returns.
    let timeline = ok_json(site.path(), &["timeline", "--json"]);
    let kinds: Vec<&str> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"rewind-done"), "{kinds:?}");
    assert!(kinds.contains(&"checkpoint-taken"), "{kinds:?}");
    assert_eq!(timeline["previous_state"], "site");
    let undo = ok_json(site.path(), &["rewind", "--undo", "--yes", "--json"]);
    assert_eq!(undo["state"], "site");
    let after_undo = entry_texts(&proxy).await;
    assert!(
        spam.iter().all(|w| after_undo.contains(&w.text)),
        "undo brings the live state back"
    );
    assert_eq!(
        download(&proxy, "alter.txt").await.as_deref(),
        Some(&b"defaced"[..])
    );
    ok_json(site.path(), &["rewind", "--undo", "--yes", "--json"]);
    assert_eq!(entry_texts(&proxy).await, texts);
    drop(lifeboat);
}

/// Bad `--to` values change nothing: no new state, the same entries, a clear message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rewind_target_is_refused_and_changes_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    common::open_to_the_site_user(scratch.path());
    let site = local_vault_site(scratch.path());
    let lifeboat = capturing(site.path());
    let writer = Writer::start(&lifeboat.proxy, "e");
    writer.wait_for(5).await;
    writer.stop().await;
    let before = entry_ids(&lifeboat.proxy).await;
    let cases = [
        ("2020-01-01T00:00:00Z", "before the first capture"),
        ("2999-01-01T00:00:00Z", "in the future"),
        ("last tuesday", "cannot read the time"),
        ("2026-11-27 10:15", "cannot read the time"),
        ("before-event:999999", "there is no event 999999"),
    ];
    for (to, expected) in cases {
        let out = run(site.path(), &["rewind", "--to", to, "--yes"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{to}: accepted");
        assert!(err.contains(expected), "{to}: {err}");
    }
    // Without --yes and without a terminal, nothing happens either.
    let out = run(site.path(), &["rewind", "--to", "1 second ago"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert_eq!(lifeboat.status()["state"], "site");
    assert_eq!(entry_ids(&lifeboat.proxy).await, before);
    let states = lifeboat.site.join(".lifeboat/states");
    let made = std::fs::read_dir(&states).map(|d| d.count()).unwrap_or(0);
    assert_eq!(made, 0, "a refused rewind left a state behind");
}

/// kill -9 of lifeboat under write load: after `up` again the timeline has no gap, and a
/// rewind to a moment before the kill is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_lifeboat_mid_capture_leaves_no_gap_in_the_timeline() {
    let scratch = tempfile::tempdir().unwrap();
    common::open_to_the_site_user(scratch.path());
    let site = local_vault_site(scratch.path());
    let lifeboat = capturing(site.path());
    let writer = Writer::start(&lifeboat.proxy, "before");
    writer.wait_for(30).await;
    let t1 = now();
    writer.wait_for(30).await;
    kill_9_with_its_instances(lifeboat);
    let (before, _) = writer.stop().await;

    let lifeboat = up(site.path());
    lifeboat.wait_healthy(2);
    lifeboat.wait_for_status("capture to run again", |s| s["capture"]["running"] == true);
    let writer = Writer::start(&lifeboat.proxy, "after");
    writer.wait_for(30).await;
    let (after, _) = writer.stop().await;
    let last_change = after.last().unwrap().acked;
    wait_shipped(&lifeboat, last_change);

    let timeline = ok_json(site.path(), &["timeline", "--json"]);
    let runs = timeline["restore_points"]["segments"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "the timeline has a gap: {runs:?}");

    // Everything acknowledged before the kill survived it, and the rewind is exact.
    let latest = restore_latest(site.path(), &scratch.path().join("latest"));
    let restored = restored_ids(&latest);
    for w in before.iter().chain(&after) {
        assert!(
            restored.contains(&w.id),
            "entry {} acknowledged is not in the vault",
            w.id
        );
    }
    ok_json(
        site.path(),
        &["rewind", "--to", &rfc(t1), "--yes", "--json"],
    );
    let texts = entry_texts(&lifeboat.proxy).await;
    assert_exact_cut(&texts, &before, t1);
    assert!(after.iter().all(|w| !texts.contains(&w.text)));
}

/// The app checkpoints its own WAL (TRUNCATE) while capture runs: no acknowledged transaction
/// is lost from the timeline (or capture says it lost continuity and took a fresh image).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_apps_own_wal_checkpoint_loses_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    common::open_to_the_site_user(scratch.path());
    let site = local_vault_site(scratch.path());
    let lifeboat = capturing(site.path());
    let writer = Writer::start(&lifeboat.proxy, "w");
    let db = lifeboat.site.join("data/guestbook.db");
    for _ in 0..5 {
        writer.wait_for(10).await;
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let _: (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
    }
    writer.wait_for(10).await;
    let (writes, failures) = writer.stop().await;
    assert!(failures.is_empty(), "{failures:?}");
    let last_change = writes.last().unwrap().acked;
    wait_shipped(&lifeboat, last_change);
    let into = restore_latest(site.path(), &scratch.path().join("restored"));
    // Capture's pinned read transaction keeps the app's TRUNCATE from resetting the log
    // under it, so nothing is lost (not even to a fresh image).
    let restored = restored_ids(&into);
    for w in &writes {
        assert!(
            restored.contains(&w.id),
            "acknowledged entry {} was lost",
            w.id
        );
    }
}

/// One destination (S3) down, then back: the site keeps capturing on the other (quorum 1),
/// the S3 destination catches up from the spool, and the site restores from either alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_destination_that_was_down_catches_up_and_restores_alone() {
    let scratch = tempfile::tempdir().unwrap();
    common::open_to_the_site_user(scratch.path());
    let mut s3 = s3::S3Server::start(&scratch.path().join("s3"), "backups");
    let local = scratch.path().join("vault-local");
    let s3_url = s3.url("backups", "guestbook");
    let site = site(&[local.display().to_string(), s3_url.clone()], Some(1));
    let lifeboat = capturing(site.path());
    let writer = Writer::start(&lifeboat.proxy, "w");
    writer.wait_for(10).await;
    s3.stop();
    let down_since = Instant::now();
    lifeboat.wait_for_status("the S3 destination to fall behind", |s| {
        s["capture"]["destinations"].as_array().is_some_and(|d| {
            d.iter().any(|d| {
                d["objects_behind"].as_u64().unwrap_or(0) > 0
                    && d["bytes_behind"].as_u64().unwrap_or(0) > 0
                    && d["reachable"] == false
            })
        })
    });
    // Down for a minute while the site keeps writing.
    while down_since.elapsed() < Duration::from_secs(60) {
        writer.wait_for(10).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (writes, failures) = writer.stop().await;
    assert!(failures.is_empty(), "{failures:?}");
    let last_change = writes.last().unwrap().acked;
    wait_shipped(&lifeboat, last_change);
    s3.restart();
    lifeboat.wait_for_status("the S3 destination to catch up", |s| {
        s["capture"]["destinations"].as_array().is_some_and(|d| {
            d.iter().all(|d| {
                d["objects_behind"].as_u64() == Some(0) && d["bytes_behind"].as_u64() == Some(0)
            })
        })
    });

    let key = ok_json(site.path(), &["vault", "key", "export", "--json"]);
    let key_file = scratch.path().join("key");
    std::fs::write(&key_file, key["key"].as_str().unwrap()).unwrap();
    let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (name, repo) in [
        ("local", local.display().to_string()),
        ("s3", s3_url.clone()),
    ] {
        let into = scratch.path().join(format!("from-{name}"));
        ok_json(
            site.path(),
            &[
                "restore-site",
                "--repo",
                &repo,
                "--password-file",
                key_file.to_str().unwrap(),
                "--to",
                "latest",
                "--into",
                into.to_str().unwrap(),
                "--json",
            ],
        );
        let ids = restored_ids(&into);
        for w in &writes {
            assert!(ids.contains(&w.id), "{name}: entry {} is missing", w.id);
        }
        seen.insert(name.into(), ids);
    }
    assert_eq!(seen["local"], seen["s3"]);
}

/// A corrupted page in the live database is reported as an event, and a rewind to just before
/// that event gives a database that passes its integrity check.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupted_live_database_is_reported_and_rewinding_before_it_is_clean() {
    let scratch = tempfile::tempdir().unwrap();
    common::open_to_the_site_user(scratch.path());
    let site = local_vault_site(scratch.path());
    let lifeboat = capturing(site.path());
    let writer = Writer::start(&lifeboat.proxy, "w");
    writer.wait_for(200).await;
    let (writes, _) = writer.stop().await;
    let last_change = writes.last().unwrap().acked;
    wait_shipped(&lifeboat, last_change);
    // The app copies its log into the database file (a passive checkpoint, as SQLite's
    // auto-checkpoint does): from then on pages are read from the file, so damage there is
    // what the site and the check see.
    // Capture pins the log until its own checkpoint, which follows a shipment at most every
    // 5 s: one more write makes it run, unless the last checkpoint was less than 5 s before.
    // So: one write, then up to 7 s for the checkpoint, and again if it did not come (a single
    // write after a fixed wait was not enough on a loaded machine).
    let mut writes = writes;
    let db = lifeboat.site.join("data/guestbook.db");
    let passive_checkpoint_complete = || {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        // (busy, frames in the log, frames copied); the frame counts are both -1 when the
        // checkpoint could not run (e.g. capture's own was running), which is not complete.
        let (busy, log, done): (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        busy == 0 && log >= 0 && log == done
    };
    let deadline = Instant::now() + DEADLINE;
    'checkpointed: for round in 0.. {
        let label: &'static str = Box::leak(format!("more-{round}").into_boxed_str());
        let one = Writer::start(&lifeboat.proxy, label);
        one.wait_for(1).await;
        writes.extend(one.stop().await.0);
        let wait = Instant::now() + Duration::from_secs(7);
        while Instant::now() < wait {
            if passive_checkpoint_complete() {
                break 'checkpointed;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for a complete passive checkpoint of the log"
        );
    }
    // Scribble over the header of the entries table's root page.
    let root: u64 = {
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        conn.query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = 'entries'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    {
        use std::io::{Seek, SeekFrom};
        let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        let page_size = 4096u64;
        f.seek(SeekFrom::Start((root - 1) * page_size)).unwrap();
        std::io::Write::write_all(&mut f, &[0xA5; 64]).unwrap();
        f.sync_all().unwrap();
    }
    let event = lifeboat.wait_for_event("the corruption to be reported", |e| {
        e["kind"] == "integrity-failed"
    });
    let id = event["seq"].as_u64().unwrap();
    let report = ok_json(
        site.path(),
        &[
            "rewind",
            "--to",
            &format!("before-event:{id}"),
            "--yes",
            "--json",
        ],
    );
    assert_ne!(report["state"], "site");
    assert_eq!(integrity(&live_db(&lifeboat)), "ok");
    let ids = entry_ids(&lifeboat.proxy).await;
    for w in &writes {
        assert!(
            ids.contains(&w.id),
            "entry {} is missing after the rewind",
            w.id
        );
    }
}

/// `timeline forget` keeps what the rules say (and the newest checkpoint), drops older
/// history, and the latest state still restores in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forgetting_old_history_keeps_the_latest_restorable() {
    let scratch = tempfile::tempdir().unwrap();
    common::open_to_the_site_user(scratch.path());
    let site = local_vault_site(scratch.path());
    let manifest = site.path().join("lifeboat.toml");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "segment_interval = \"250ms\"",
        "segment_interval = \"250ms\"\ncheckpoint_interval = \"1s\"",
    );
    std::fs::write(&manifest, text).unwrap();
    let lifeboat = up(site.path());
    lifeboat.wait_healthy(2);
    let writer = Writer::start(&lifeboat.proxy, "w");
    wait_until("three checkpoints", || {
        let t = ok_json(site.path(), &["timeline", "--json"]);
        t["restore_points"]["checkpoints"].as_array().unwrap().len() >= 3
    });
    let (writes, _) = writer.stop().await;
    let last_change = writes.last().unwrap().acked;
    wait_shipped(&lifeboat, last_change);
    let out = run(site.path(), &["timeline", "forget", "--yes-i-mean-nothing"]);
    assert!(!out.status.success(), "unknown flags are refused");
    let out = run(site.path(), &["timeline", "forget"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("say what to keep"));
    let report = ok_json(
        site.path(),
        &[
            "timeline",
            "forget",
            "--keep-last",
            "1",
            "--prune",
            "--json",
        ],
    );
    assert!(
        !report["retention"]["forgotten"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{report}"
    );
    let t = ok_json(site.path(), &["timeline", "--json"]);
    let kept = t["restore_points"]["checkpoints"].as_array().unwrap();
    assert!(!kept.is_empty());
    let into = restore_latest(site.path(), &scratch.path().join("latest"));
    let restored = restored_ids(&into);
    for w in &writes {
        assert!(restored.contains(&w.id), "entry {} is missing", w.id);
    }
}

/// Rewinds leave states behind; `lifeboat states` lists them with their role and size, the
/// live one can never be dropped, `states prune` deletes the ones neither live nor kept for
/// undo, dropping the previous one ends undo, the site keeps serving throughout, and listing
/// and dropping also work while lifeboat is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn old_states_are_listed_and_dropped_but_never_the_live_one() {
    let scratch = tempfile::tempdir().unwrap();
    common::open_to_the_site_user(scratch.path());
    let site = local_vault_site(scratch.path());
    let mut lifeboat = capturing(site.path());
    let writer = Writer::start(&lifeboat.proxy, "s");
    writer.wait_for(3).await;
    writer.stop().await;
    let served = entry_ids(&lifeboat.proxy).await;
    let first = ok_json(
        site.path(),
        &["rewind", "--to", "latest", "--yes", "--json"],
    );
    let first = first["state"].as_str().unwrap().to_string();
    let second = ok_json(
        site.path(),
        &["rewind", "--to", "latest", "--yes", "--json"],
    );
    let second = second["state"].as_str().unwrap().to_string();
    assert_ne!(first, second);

    let listed = ok_json(site.path(), &["states", "--json"]);
    let roles: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["role"].as_str().unwrap()))
        .collect();
    assert_eq!(
        roles,
        [
            (second.as_str(), "live"),
            (first.as_str(), "previous"),
            ("site", "kept")
        ]
    );
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["bytes"].as_u64().unwrap() > 0),
        "{listed}"
    );

    let out = run(site.path(), &["states", "drop", &second, "--yes"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is the live state"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(site.path(), &["states", "drop", "../..", "--yes"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no state named"));
    let pruned = ok_json(site.path(), &["states", "prune", "--yes", "--json"]);
    let dropped: Vec<&str> = pruned["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(dropped, ["site"]);
    assert_eq!(pruned["previous"], first.as_str());
    // Emptied in place (it is a mount point of the live state's instances), not deleted.
    assert_eq!(
        std::fs::metadata(site.path().join("data/guestbook.db"))
            .unwrap()
            .len(),
        0
    );
    assert!(
        site.path().join("lifeboat.toml").exists(),
        "only state is deleted"
    );
    assert!(site.path().join(".lifeboat/states").join(&first).is_dir());

    // The previous state goes only with consent, and then there is nothing to undo to.
    let out = run(site.path(), &["states", "drop", &first]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert!(site.path().join(".lifeboat/states").join(&first).is_dir());
    let dropped = ok_json(site.path(), &["states", "drop", &first, "--yes", "--json"]);
    assert_eq!(dropped["previous"], Value::Null);
    assert!(!site.path().join(".lifeboat/states").join(&first).exists());
    let out = run(site.path(), &["rewind", "--undo", "--yes"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no state to go back to"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lifeboat.status()["state"], second.as_str());
    assert_eq!(entry_ids(&lifeboat.proxy).await, served);
    lifeboat.wait_for_event("the drop event", |e| e["kind"] == "states-dropped");

    // Lifeboat down: the store is read (and written) directly.
    assert!(run(site.path(), &["down"]).status.success());
    assert!(lifeboat.wait_exit());
    std::fs::create_dir_all(site.path().join(".lifeboat/states/.partial-leftover/data")).unwrap();
    let listed = ok_json(site.path(), &["states", "--json"]);
    let roles: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["live", "incomplete"], "{listed}");
    ok_json(site.path(), &["states", "prune", "--yes", "--json"]);
    let listed = ok_json(site.path(), &["states", "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["name"], second.as_str());
}

/// The names in `.lifeboat/states` (none before the first rewind).
fn state_dirs(site: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(site.join(".lifeboat/states"))
        .map(|dir| {
            dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// lifeboat is killed -9 in the middle of a rewind, after the restored copy got its name and
/// while its instances start: the next `up` serves one whole state (never a mix), lists the
/// interrupted copy so it can be pruned, and the same rewind run again is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_lifeboat_mid_rewind_leaves_one_whole_state_live() {
    let scratch = tempfile::tempdir().unwrap();
    common::open_to_the_site_user(scratch.path());
    let site = local_vault_site(scratch.path());
    let lifeboat = capturing(site.path());
    let writer = Writer::start(&lifeboat.proxy, "w");
    writer.wait_for(20).await;
    let t1 = now();
    writer.wait_for(20).await;
    let (writes, failures) = writer.stop().await;
    assert!(failures.is_empty(), "{failures:?}");
    wait_shipped(&lifeboat, writes.last().unwrap().acked);
    let before = entry_texts(&lifeboat.proxy).await;
    let existing = state_dirs(site.path());

    // The rewind runs in the daemon; the CLI only waits for its answer.
    let mut rewind = command(
        site.path(),
        &["rewind", "--to", &rfc(t1), "--yes", "--json"],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let interrupted = loop {
        let new: Vec<String> = state_dirs(site.path())
            .difference(&existing)
            .filter(|name| !name.starts_with('.'))
            .cloned()
            .collect();
        if let Some(name) = new.into_iter().next() {
            break name;
        }
        assert!(Instant::now() < deadline, "the rewind restored nothing");
        // Polled this often (not `wait_until`'s 100 ms) so that the kill lands while the
        // restored copy's instances are still starting, before the switch.
        std::thread::sleep(Duration::from_millis(5));
    };
    kill_9_with_its_instances(lifeboat);
    assert!(
        !rewind.wait().unwrap().success(),
        "the rewind lost its daemon"
    );

    let lifeboat = up(site.path());
    lifeboat.wait_healthy(2);
    let live = lifeboat.status()["state"]
        .as_str()
        .unwrap_or("site")
        .to_string();
    let texts = entry_texts(&lifeboat.proxy).await;
    if live == interrupted {
        // Killed after the switch was recorded: the rewound state, whole.
        assert_exact_cut(&texts, &writes, t1);
    } else {
        assert_eq!(texts, before, "the state live before the rewind, whole");
    }
    let listed = ok_json(site.path(), &["states", "--json"]);
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&interrupted.as_str()), "{listed}");

    // Run again, the same rewind is exact; pruning then keeps only what undo needs.
    ok_json(
        site.path(),
        &["rewind", "--to", &rfc(t1), "--yes", "--json"],
    );
    assert_exact_cut(&entry_texts(&lifeboat.proxy).await, &writes, t1);
    ok_json(site.path(), &["states", "prune", "--yes", "--json"]);
    let listed = ok_json(site.path(), &["states", "--json"]);
    let roles: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["live", "previous"], "{listed}");
    assert_exact_cut(&entry_texts(&lifeboat.proxy).await, &writes, t1);
}
