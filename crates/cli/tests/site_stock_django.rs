//! A stock third-party app under Lifeboat, put there as a new user would: a project made by
//! `django-admin startproject` and left unchanged (SQLite at `BASE_DIR/db.sqlite3`, admin and
//! auth, DEBUG as generated), served by gunicorn with two pre-forked workers per instance, with
//! only `lifeboat.toml` and a credential rotation hook (`tests/fixtures/django/`) put next to it.
//! Lifeboat runs with a relative site dir from the project's parent directory. Through the front
//! door, a client logs into the Django admin, creates auth groups and reads them back.
//!
//! Needs the Django + gunicorn venv that `scripts/install-test-deps` makes in `.tools/django-venv`.

#[path = "fixtures/django/admin_client.rs"]
mod admin_client;
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use admin_client::AdminSession;
use common::{DEADLINE, Lifeboat, cli_from};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The project's name and its dir under the parent dir lifeboat is run from.
const SITE: &str = "mysite";
const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "the-owners-first-password";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv with Django and gunicorn.
fn venv() -> PathBuf {
    let venv = workspace().join(".tools/django-venv");
    assert!(
        venv.join("bin/gunicorn").exists() && venv.join("bin/django-admin").exists(),
        "{} has no Django or gunicorn; run scripts/install-test-deps",
        venv.display()
    );
    venv.canonicalize().expect("venv path")
}

/// Runs a command to its end and panics with its output when it fails.
fn run_ok(what: &str, cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A stock Django project in `PARENT/mysite`, migrated, with a superuser `admin`.
struct DjangoSite {
    parent: tempfile::TempDir,
}

impl DjangoSite {
    /// `django-admin startproject`, the fixture's manifest and hook next to it, then
    /// `manage.py migrate` and `createsuperuser --noinput`, as the project's README would say.
    fn generate() -> DjangoSite {
        let venv = venv();
        let parent = tempfile::Builder::new()
            .prefix("lifeboat-django")
            .tempdir()
            .expect("temp dir");
        common::open_to_the_site_user(parent.path());
        let dir = parent.path().join(SITE);
        std::fs::create_dir(&dir).unwrap();
        run_ok(
            "django-admin startproject",
            Command::new(venv.join("bin/django-admin"))
                .current_dir(parent.path())
                .args(["startproject", SITE, SITE]),
        );
        let fixtures = workspace().join("crates/cli/tests/fixtures/django");
        let manifest = std::fs::read_to_string(fixtures.join("lifeboat.toml"))
            .unwrap()
            .replace("@VENV@", venv.to_str().unwrap());
        std::fs::write(dir.join("lifeboat.toml"), manifest).unwrap();
        // fs::copy keeps the mode, so the hook stays executable.
        std::fs::copy(
            fixtures.join("rotate-credentials.sh"),
            dir.join("rotate-credentials.sh"),
        )
        .unwrap();
        let site = DjangoSite { parent };
        site.manage(&["migrate", "--noinput"], &[]);
        site.manage(
            &[
                "createsuperuser",
                "--noinput",
                "--username",
                ADMIN,
                "--email",
                "admin@example.com",
            ],
            &[("DJANGO_SUPERUSER_PASSWORD", ADMIN_PASSWORD)],
        );
        site
    }

    fn parent(&self) -> &Path {
        self.parent.path()
    }

    fn dir(&self) -> PathBuf {
        self.parent().join(SITE)
    }

    /// `python manage.py ARGS` in the project dir.
    fn manage(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        run_ok(
            &format!("manage.py {}", args.join(" ")),
            Command::new(venv().join("bin/python"))
                .current_dir(self.dir())
                .arg("manage.py")
                .args(args)
                .envs(env.iter().copied()),
        )
    }

    /// Django makes its database in rollback-journal mode; capture reads the WAL. WAL mode is
    /// stored in the database file, so this once is enough (what `up --enable-wal` is for).
    fn enable_wal_by_hand(&self) {
        let conn = rusqlite::Connection::open(self.dir().join("db.sqlite3")).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    /// `lifeboat up mysite ARGS` from the parent dir; waits for two healthy instances.
    fn up(&self, args: &[&str]) -> Lifeboat {
        let lifeboat = Lifeboat::up_from(self.parent(), SITE, args, &[]);
        lifeboat.wait_healthy(2);
        lifeboat
    }

    /// `lifeboat -C mysite ARGS` from the parent dir.
    fn lifeboat(&self, args: &[&str]) -> Output {
        let mut all = vec!["-C", SITE];
        all.extend_from_slice(args);
        cli_from(self.parent(), &all)
    }

    /// `lifeboat -C mysite ARGS --json`, which must succeed.
    fn lifeboat_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.lifeboat(&all);
        assert!(
            out.status.success(),
            "lifeboat -C {SITE} {} failed ({}):\n{}{}",
            all.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "lifeboat {all:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// The group names in a copy of the site's database (`restore-site --into DIR`).
    fn groups_in_copy(copy: &Path) -> BTreeSet<String> {
        let conn = rusqlite::Connection::open(copy.join("db.sqlite3")).unwrap();
        let integrity: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(integrity, "ok", "the restored database is damaged");
        let mut stmt = conn.prepare("SELECT name FROM auth_group").unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    /// `lifeboat restore-site --to TO --into DIR` (the live site untouched): the groups at that
    /// moment, or what lifeboat said when it could not restore.
    fn groups_at(&self, to: &str) -> Result<BTreeSet<String>, String> {
        let into = self.parent().join(format!(
            "restored-{}",
            OffsetDateTime::now_utc().unix_timestamp_nanos()
        ));
        let out = self.lifeboat(&["restore-site", "--to", to, "--into", into.to_str().unwrap()]);
        if !out.status.success() {
            return Err(format!(
                "restore-site failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(DjangoSite::groups_in_copy(&into))
    }

    /// Waits until the newest restorable moment has the group `name` (capture has seen and
    /// shipped its commit); returns that moment's groups.
    fn wait_captured(&self, lifeboat: &Lifeboat, name: &str) -> BTreeSet<String> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let latest = self.groups_at("latest");
            if let Ok(groups) = &latest
                && groups.contains(name)
            {
                return groups.clone();
            }
            assert!(
                Instant::now() < deadline,
                "the group {name} never reached the vault; the newest restorable moment: \
                 {latest:?}; lifeboat status: {:#}\nlifeboat's output:\n{}",
                lifeboat.status(),
                lifeboat.output()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Waits until lifeboat reports capture running on the live state.
fn wait_capturing(lifeboat: &Lifeboat) {
    lifeboat.wait_for_status("capture to run", |s| s["capture"]["running"] == true);
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// Today's time travel needs the database in WAL mode; a stock project's is not, so this test
/// switches it by hand before `up`. Everything else is as a new user does it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_django_project_serves_its_admin_through_the_front_door() {
    let site = DjangoSite::generate();
    site.enable_wal_by_hand();
    let lifeboat = site.up(&[]);
    let proxy = lifeboat.proxy.clone();

    let status = site.lifeboat(&["status"]);
    assert!(
        status.status.success() && String::from_utf8_lossy(&status.stdout).contains("web-2"),
        "lifeboat -C {SITE} status: {}{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        AdminSession::login(&proxy, ADMIN, "not-the-password")
            .await
            .is_none(),
        "a wrong password logs in"
    );
    let mut owner = AdminSession::login(&proxy, ADMIN, ADMIN_PASSWORD)
        .await
        .expect("the owner logs in through the front door");
    owner.add_group("editors").await;
    owner.add_group("reviewers").await;
    assert_eq!(owner.group_names().await, set(&["editors", "reviewers"]));
    // A second session (its requests spread over both instances) sees the same database.
    let mut other = AdminSession::login(&proxy, ADMIN, ADMIN_PASSWORD)
        .await
        .expect("a second login");
    for _ in 0..4 {
        assert_eq!(other.group_names().await, set(&["editors", "reviewers"]));
    }
}

/// What the admin writes through the front door reaches the vault: the newest restorable moment
/// has it. (WAL switched on by hand, as above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_created_in_the_admin_are_captured_into_the_vault() {
    let site = DjangoSite::generate();
    site.enable_wal_by_hand();
    let lifeboat = site.up(&[]);
    wait_capturing(&lifeboat);
    let mut owner = AdminSession::login(&lifeboat.proxy, ADMIN, ADMIN_PASSWORD)
        .await
        .expect("the owner logs in");
    owner.add_group("captured").await;
    assert_eq!(
        site.wait_captured(&lifeboat, "captured"),
        set(&["captured"])
    );
}

/// The whole promise on a stock app: an intruder's change is rewound away with the rest of the
/// site, the admin password is new (the old one and every old session are locked out), capture
/// follows the rewound state, and `--undo` brings back what was live before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewinding_a_stock_django_site_removes_the_intruders_group_and_rotates_the_admin_password()
{
    let site = DjangoSite::generate();
    // As a user would: let lifeboat put the stock database in WAL mode.
    let lifeboat = site.up(&["--enable-wal"]);
    wait_capturing(&lifeboat);
    let proxy = lifeboat.proxy.clone();

    let mut owner = AdminSession::login(&proxy, ADMIN, ADMIN_PASSWORD)
        .await
        .expect("the owner logs in");
    owner.add_group("before").await;
    // T: once `before` is in the vault, so certainly after capture stamped its commit (with the
    // time it saw it), and before the intruder's.
    site.wait_captured(&lifeboat, "before");
    let t = OffsetDateTime::now_utc();

    // Someone with the admin password adds a group.
    let mut intruder = AdminSession::login(&proxy, ADMIN, ADMIN_PASSWORD)
        .await
        .expect("the intruder logs in");
    intruder.add_group("intruder").await;
    assert_eq!(owner.group_names().await, set(&["before", "intruder"]));

    let report = site.lifeboat_json(&[
        "rewind",
        "--to",
        &t.format(&Rfc3339).unwrap(),
        "--yes",
        "--rotate-credentials",
    ]);
    let hook_output = report["credentials"]
        .as_str()
        .unwrap_or_else(|| panic!("the rewind report shows no credentials: {report:#}"));
    let new_password = hook_output
        .lines()
        .find_map(|l| l.strip_prefix("new admin password: "))
        .unwrap_or_else(|| panic!("the hook printed no new password: {hook_output:?}"))
        .trim()
        .to_string();

    // What the front door serves now, in one picture for the assertions below.
    let old_password_works = AdminSession::login(&proxy, ADMIN, ADMIN_PASSWORD)
        .await
        .is_some();
    let old_session_works = intruder.signed_in().await;
    let new_login = AdminSession::login(&proxy, ADMIN, &new_password).await;
    let mut groups = None;
    if let Some(mut session) = new_login {
        groups = Some(session.group_names().await);
    }
    let seen = format!(
        "after the rewind to {}: the old password logs in: {old_password_works}; the intruder's \
         session still works: {old_session_works}; the new password logs in: {}; groups: \
         {groups:?}; rewind report: {report:#}",
        t.format(&Rfc3339).unwrap(),
        groups.is_some()
    );
    assert!(
        groups.is_some(),
        "the new password does not log in ({seen})"
    );
    assert_eq!(groups.as_ref().unwrap(), &set(&["before"]), "{seen}");
    assert!(
        !old_password_works,
        "the old password still logs in ({seen})"
    );
    assert!(
        !old_session_works,
        "the intruder's session survived ({seen})"
    );

    // Capture follows the rewound state: a group made now is in the newest restorable moment.
    let mut owner = AdminSession::login(&proxy, ADMIN, &new_password)
        .await
        .expect("the new password logs in");
    owner.add_group("after-rewind").await;
    assert_eq!(
        site.wait_captured(&lifeboat, "after-rewind"),
        set(&["before", "after-rewind"]),
        "the vault's newest moment is not the live (rewound) state"
    );

    // Undo serves exactly the state that was live before the rewind: the intruder's group, not
    // the group made since, and the password from before (the hook changed only the copy).
    let undo = site.lifeboat_json(&["rewind", "--undo", "--yes"]);
    assert_eq!(undo["state"], "site", "{undo:#}");
    let mut owner = AdminSession::login(&proxy, ADMIN, ADMIN_PASSWORD)
        .await
        .expect("after undo the password from before the rewind logs in again");
    assert_eq!(owner.group_names().await, set(&["before", "intruder"]));
}

/// After a rewind the site dir's own database is the state kept for `--undo`, no longer the live
/// one; the owner reading it (here: opening and closing it, as `sqlite3 db.sqlite3` does) must
/// change neither what the site serves and captures nor what `--undo` brings back. (WAL switched
/// on by hand: this is not about how WAL gets enabled.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_the_site_dirs_database_after_a_rewind_loses_nothing() {
    let site = DjangoSite::generate();
    site.enable_wal_by_hand();
    let lifeboat = site.up(&[]);
    wait_capturing(&lifeboat);
    let proxy = lifeboat.proxy.clone();
    let mut owner = AdminSession::login(&proxy, ADMIN, ADMIN_PASSWORD)
        .await
        .expect("the owner logs in");
    owner.add_group("before").await;
    site.wait_captured(&lifeboat, "before");
    let t = OffsetDateTime::now_utc();
    owner.add_group("intruder").await;
    site.lifeboat_json(&["rewind", "--to", &t.format(&Rfc3339).unwrap(), "--yes"]);

    // The owner looks at the database in the site dir, the way they always have.
    let names = DjangoSite::groups_in_copy(&site.dir());
    assert_eq!(
        names,
        set(&["before", "intruder"]),
        "the state kept for undo"
    );

    let mut owner = AdminSession::login(&proxy, ADMIN, ADMIN_PASSWORD)
        .await
        .expect("the owner logs in after the rewind");
    owner.add_group("after-rewind").await;
    assert_eq!(owner.group_names().await, set(&["before", "after-rewind"]));
    let undo = site.lifeboat_json(&["rewind", "--undo", "--yes"]);
    assert_eq!(undo["state"], "site", "{undo:#}");
    // Just before the undo: every write to the rewound state was captured by then (the undo
    // ships the old state's last writes before capture moves on).
    let timeline = site.lifeboat_json(&["timeline"]);
    let undone = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["kind"] == "rewind-undone")
        .unwrap_or_else(|| panic!("no rewind-undone event: {timeline:#}"));

    let mut owner = AdminSession::login(&proxy, ADMIN, ADMIN_PASSWORD)
        .await
        .expect("the owner logs in after undo");
    let after_undo = owner.group_names().await;
    let captured = site.groups_at(&format!("before-event:{}", undone["seq"]));
    let seen = format!(
        "after undo the site serves {after_undo:?}; the vault just before the undo holds \
         {captured:?}"
    );
    assert_eq!(after_undo, set(&["before", "intruder"]), "{seen}");
    assert_eq!(captured, Ok(set(&["before", "after-rewind"])), "{seen}");
}
