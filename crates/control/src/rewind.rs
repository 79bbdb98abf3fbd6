//! `lifeboat rewind`: the site as of a moment, built beside the live state, checked, given
//! new credentials if asked, started where only the owner can reach it, and switched to only
//! once it is healthy. Nothing is overwritten: the state that was live stays for `--undo`.
//!
//! Order (a failure at any step before the switch leaves the live site exactly as it was):
//! 1. resolve the target time (an event id becomes the moment just before it), refuse times in
//!    the future or before the first capture;
//! 2. ship what capture holds, so the vault has the site up to now;
//! 3. restore into `.lifeboat/states/.partial-NAME` (every database passes
//!    `PRAGMA integrity_check`, every file its hash), then rename it to `NAME`;
//! 4. run the credential rotation hook on it, if asked;
//! 5. start one instance per desired instance on it, reachable only with the preview token,
//!    and wait until every one is healthy;
//! 6. switch: the front door sends every new request to them, the new state is recorded as
//!    live (durably) with the old one as previous, the old instances drain and stop;
//! 7. capture moves to the new state.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_core::EventKind;
use lifeboat_core::plan::{instance_id, parse_instance_id};
use lifeboat_supervisor::InstanceState as SupState;
use lifeboat_timeline::{RestoreTarget, TimelineError, restore_site_with};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ControlError;
use crate::site::Site;
use crate::store::StatesRecord;
use crate::timespec::TimeSpec;

/// How long restored instances get to become healthy before the rewind is abandoned.
const HEALTHY_DEADLINE: Duration = Duration::from_secs(60);
/// How long the credential rotation hook may run.
const HOOK_DEADLINE: Duration = Duration::from_secs(120);

/// `lifeboat rewind --to ...`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RewindRequest {
    pub to: TimeSpec,
    #[serde(default)]
    pub rotate_credentials: bool,
}

/// One restored database in [`RewindReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewoundDatabase {
    pub name: String,
    pub commits_applied: usize,
}

/// What a rewind (or its undo) did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewindReport {
    /// The moment the site now shows (for an undo: none, it shows what was live before).
    #[serde(with = "time::serde::rfc3339::option")]
    pub restored_time: Option<OffsetDateTime>,
    /// The state now live, and its directory.
    pub state: String,
    pub state_dir: String,
    /// The state that was live before, kept for `rewind --undo`.
    pub previous: String,
    pub previous_dir: String,
    pub databases: Vec<RewoundDatabase>,
    pub files: u64,
    pub file_bytes: u64,
    /// What the credential rotation hook printed (new secrets, shown once, never stored).
    pub credentials: Option<String>,
    /// The instances now serving.
    pub instances: Vec<String>,
    pub took_ms: u64,
    /// Where the time went, step by step (milliseconds, in order).
    #[serde(default)]
    pub phases_ms: Vec<(String, u64)>,
    /// From the command to the front door serving the restored copy (milliseconds): the
    /// recovery time. The old state's instances, capture and server are stopped after it.
    #[serde(default)]
    pub serving_ms: u64,
    /// When the front door switched (to compute `serving_ms`).
    #[serde(skip)]
    pub switched_at: Option<Instant>,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Resolves the owner's time spec against the site's events and the clock.
async fn resolve(site: &Site, spec: TimeSpec) -> Result<RestoreTarget, ControlError> {
    match spec {
        TimeSpec::Latest => Ok(RestoreTarget::Latest),
        TimeSpec::At { time } => {
            let now = OffsetDateTime::now_utc();
            if time > now {
                return Err(ControlError::Refused(format!(
                    "{} is in the future (it is now {}); choose a moment that has happened",
                    rfc3339(time),
                    rfc3339(now)
                )));
            }
            Ok(RestoreTarget::Time(time))
        }
        TimeSpec::BeforeEvent { id } => {
            let event = site.event(id).await?.ok_or_else(|| {
                ControlError::Refused(format!(
                    "there is no event {id}; `lifeboat timeline` lists the events and their ids"
                ))
            })?;
            Ok(RestoreTarget::Time(
                event.at - time::Duration::nanoseconds(1),
            ))
        }
    }
}

fn timeline_refusal(e: TimelineError) -> ControlError {
    match e {
        TimelineError::NothingCaptured
        | TimelineError::BeforeFirstCapture { .. }
        | TimelineError::InFuture { .. } => ControlError::Refused(e.to_string()),
        other => ControlError::Rewind(format!("restoring failed: {other}")),
    }
}

/// A fresh name for a restored state: when it was made and what it shows.
fn state_name(target: &RestoreTarget) -> String {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let shows = match target {
        RestoreTarget::Time(t) => t.format(fmt).unwrap_or_default(),
        RestoreTarget::Latest => "latest".into(),
    };
    let made = OffsetDateTime::now_utc().format(fmt).unwrap_or_default();
    format!(
        "{made}-at-{shows}-{}",
        hex::encode(rand::random::<[u8; 2]>())
    )
}

/// On a cluster only the primary runs the site, so only it rewinds (its standbys follow):
/// anywhere else the rewind is refused, naming the primary when this node knows it.
fn only_on_the_primary(site: &Site, what: &str) -> Result<(), ControlError> {
    use crate::node::NodeRole;
    let Some(node) = site.node.get() else {
        return Ok(());
    };
    let me = &node.info.node;
    let (is, primary) = match node.role() {
        NodeRole::Primary { .. } => return Ok(()),
        NodeRole::Standby { leader, .. } => (format!("a standby of {leader}"), leader),
        NodeRole::Joining => ("joining the cluster".to_string(), "the primary".to_string()),
        NodeRole::Fenced { .. } => ("fenced".to_string(), "the primary".to_string()),
        NodeRole::HandingOver { to, .. } => (format!("handing the primary role over to {to}"), to),
    };
    Err(ControlError::Refused(format!(
        "this node ({me}) is {is}, and on a cluster only the primary rewinds (its standbys \
         follow): run `lifeboat {what}` on {primary} (`lifeboat status` shows who leads); \
         nothing was changed"
    )))
}

pub(crate) async fn rewind(
    site: &Arc<Site>,
    req: RewindRequest,
) -> Result<RewindReport, ControlError> {
    let started = Instant::now();
    only_on_the_primary(site, "rewind")?;
    let Some(capture) = site.capture.get().cloned() else {
        return Err(ControlError::Refused(
            "this site has no [vault] section in lifeboat.toml, so nothing was captured to rewind to; add one (see crates/core/MANIFEST.md)".into(),
        ));
    };
    let rotate = match (&site.manifest.credentials.rotate, req.rotate_credentials) {
        (Some(cmd), true) => Some(cmd.clone()),
        // A MariaDB site's database password is rotated by Lifeboat itself.
        (None, true) if site.manifest.state.mariadb.is_some() => None,
        (None, true) => {
            return Err(ControlError::Refused(
                "--rotate-credentials needs a hook: add `[credentials] rotate = \"./rotate-credentials.sh\"` to lifeboat.toml".into(),
            ));
        }
        (_, false) => None,
    };
    let _busy = site.rewinding.try_lock().map_err(|_| {
        ControlError::Refused("a rewind is already running for this site; wait for it".into())
    })?;
    let target = resolve(site, req.to).await?;
    let to_text = match target {
        RestoreTarget::Time(t) => rfc3339(t),
        RestoreTarget::Latest => "latest".into(),
    };
    let mut phases: Vec<(String, u64)> = Vec::new();
    let mut clock = Instant::now();
    let mut lap = |name: &str, phases: &mut Vec<(String, u64)>| {
        phases.push((name.to_string(), clock.elapsed().as_millis() as u64));
        clock = Instant::now();
    };
    // Everything captured so far must be in the vault before it is read.
    if let Err(e) = capture.ship_now().await {
        tracing::warn!("rewind: {e}");
    }
    lap("ship", &mut phases);
    site.record(EventKind::RewindStarted {
        to: to_text.clone(),
    });
    let fail = |site: &Site, err: ControlError| {
        site.record(EventKind::RewindFailed {
            to: to_text.clone(),
            why: err.to_string(),
        });
        err
    };

    let name = state_name(&target);
    let states = site.paths.states();
    std::fs::create_dir_all(&states).map_err(ControlError::io("create", &states))?;
    let partial = states.join(format!(".partial-{name}"));
    let database = site.database.get().cloned();
    // The restored server's app login: the live one's password, or a new one when the
    // credentials are rotated (the old one then fails on the restored copy).
    let app_password = database.as_ref().map(|db| {
        match (req.rotate_credentials, db.app_password(&site.live_state())) {
            (false, Some(live)) => live,
            _ => crate::mariadb::new_password(),
        }
    });
    let options = match (&database, &app_password) {
        (Some(db), Some(pw)) => db.restore_options(&name, pw),
        _ => lifeboat_timeline::MariaDbRestoreOptions::fresh(),
    };
    let restored = match restore_site_with(&capture.repo, target, &partial, options).await {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            if let Some(db) = &database {
                db.forget(&name);
            }
            return Err(fail(site, timeline_refusal(e)));
        }
    };
    lap("restore", &mut phases);
    phases.pop();
    phases.extend(
        restored
            .phases_ms
            .iter()
            .map(|(n, ms)| (format!("restore {n}"), *ms)),
    );
    let state_dir = states.join(&name);
    if let Err(e) = finish_restore(&partial, &state_dir) {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(fail(site, e));
    }
    if let (Some(db), Some(pw)) = (&database, &app_password) {
        if restored.mariadb.is_none() {
            return Err(fail(
                site,
                ControlError::Rewind(format!(
                    "the checkpoint restored holds no base of the MariaDB database (it was taken before Lifeboat stored them); choose a moment after the next checkpoint (`lifeboat timeline`); the restored copy is in {}",
                    state_dir.display()
                )),
            ));
        }
        // The restored copy's server, on its own socket and port, before the hook (which may
        // change what is in the database) and the staged instances.
        let started = match db.set_app_password(&name, pw) {
            Ok(()) => db.ensure_running(&name).await,
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            db.stop(&name).await;
            return Err(fail(
                site,
                ControlError::Rewind(format!(
                    "the restored copy's MariaDB server did not start: {e}; the live site is unchanged, the restored copy is in {}",
                    state_dir.display()
                )),
            ));
        }
    }

    lap("database start", &mut phases);
    let credentials = match &rotate {
        Some(cmd) => match run_hook(site, cmd, &name, &state_dir).await {
            Ok(out) => Some(out),
            Err(e) => {
                if let Some(db) = &database {
                    db.stop(&name).await;
                }
                // What the hook printed may hold secrets: the owner sees it once in the
                // answer, the stored event only says that it failed.
                site.record(EventKind::RewindFailed {
                    to: to_text.clone(),
                    why: format!(
                        "the credential rotation hook `{cmd}` failed (what it printed was shown to the owner and is not stored); the restored copy is in {}",
                        state_dir.display()
                    ),
                });
                return Err(e);
            }
        },
        None => None,
    };

    if rotate.is_some() {
        lap("credentials hook", &mut phases);
    }
    let mut report = switch_to(site, &name, &state_dir)
        .await
        .map_err(|e| fail(site, e))?;
    lap("", &mut phases);
    phases.pop();
    phases.append(&mut report.phases_ms);
    report.phases_ms = phases;
    if let Some(at) = report.switched_at {
        report.serving_ms = at.duration_since(started).as_millis() as u64;
    }
    report.restored_time = Some(restored.restored_time);
    report.databases = restored
        .databases
        .iter()
        .map(|d| RewoundDatabase {
            name: d.name.clone(),
            commits_applied: d.commits_applied,
        })
        .chain(restored.mariadb.iter().map(|m| RewoundDatabase {
            name: m.name.clone(),
            commits_applied: m.transactions_replayed,
        }))
        .collect();
    report.files = restored.files;
    report.file_bytes = restored.file_bytes;
    report.credentials = match (&database, req.rotate_credentials, credentials) {
        // The new password itself is never shown: only the new instances get it.
        (Some(db), true, hook) => Some(
            std::iter::once(format!(
                "rotated: mariadb user {} (new database password given to the new instances)",
                db.spec.user
            ))
            .chain(hook)
            .collect::<Vec<_>>()
            .join("\n"),
        ),
        (_, _, hook) => hook,
    };
    report.took_ms = started.elapsed().as_millis() as u64;
    site.record(EventKind::RewindDone {
        to: rfc3339(restored.restored_time),
        state: report.state.clone(),
        previous: report.previous.clone(),
        credentials_rotated: report.credentials.is_some(),
        rotated: report
            .credentials
            .as_deref()
            .map(rotated_accounts)
            .unwrap_or_default(),
    });
    Ok(report)
}

/// `rewind --undo`: the state that was live before the last rewind serves again (the one
/// it replaces is kept, so undoing again goes back).
pub(crate) async fn undo(site: &Arc<Site>) -> Result<RewindReport, ControlError> {
    let started = Instant::now();
    only_on_the_primary(site, "rewind --undo")?;
    let _busy = site.rewinding.try_lock().map_err(|_| {
        ControlError::Refused("a rewind is already running for this site; wait for it".into())
    })?;
    let states = site.states()?;
    let Some(previous) = states.previous.clone() else {
        return Err(ControlError::Refused(
            "there is no state to go back to: the site was never rewound, or the state it served before was dropped (`lifeboat states`)".into(),
        ));
    };
    let dir = site.paths.state_dir(&previous);
    if !dir.is_dir() {
        return Err(ControlError::Refused(format!(
            "the state that was live before the last rewind ({}) is gone, so the rewind can not be undone",
            dir.display()
        )));
    }
    for db in &site.manifest.state.sqlite {
        check_database(&dir.join(db))?;
    }
    let mut report = switch_to(site, &previous, &dir).await?;
    report.took_ms = started.elapsed().as_millis() as u64;
    site.record(EventKind::RewindUndone {
        state: report.state.clone(),
        previous: report.previous.clone(),
    });
    Ok(report)
}

/// Makes the restored copy a state dir: the manifest it had at that moment is kept beside
/// (for inspection; the live manifest rules), then the directory gets its final name.
fn finish_restore(partial: &Path, state_dir: &Path) -> Result<(), ControlError> {
    let manifest = partial.join(lifeboat_core::MANIFEST_FILE);
    if manifest.exists() {
        let kept = partial.join("lifeboat.toml.at-restore-point");
        std::fs::rename(&manifest, &kept).map_err(ControlError::io("rename", &manifest))?;
    }
    std::fs::rename(partial, state_dir).map_err(ControlError::io("rename", partial))?;
    if let Some(parent) = state_dir.parent() {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(ControlError::io("fsync", parent))?;
    }
    Ok(())
}

/// `PRAGMA quick_check` of a database about to go live again.
fn check_database(path: &Path) -> Result<(), ControlError> {
    if !path.exists() {
        return Ok(());
    }
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| ControlError::Rewind(format!("could not open {}: {e}", path.display())))?;
    let verdict: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| ControlError::Rewind(format!("could not check {}: {e}", path.display())))?;
    if verdict != "ok" {
        return Err(ControlError::Rewind(format!(
            "{} fails its integrity check ({verdict}); nothing was switched",
            path.display()
        )));
    }
    Ok(())
}

/// Runs the credential rotation hook on the restored copy in the state named `state`, the way
/// an instance of the site's web process would see it: from the site dir, with the process's
/// environment, the copy shown at the site's own paths. Returns what it printed on stdout.
async fn run_hook(
    site: &Site,
    cmd: &str,
    state: &str,
    state_dir: &Path,
) -> Result<String, ControlError> {
    let view = site.view(state, crate::view::default_process(&site.manifest))?;
    let script = [std::ffi::OsString::from("sh"), "-c".into(), cmd.into()];
    let mut command = match &site.launcher.shim {
        Some(shim) => {
            let mut c = tokio::process::Command::new(shim);
            c.args(view.shim_args(&script));
            c
        }
        None => {
            let mut c = tokio::process::Command::new(&script[0]);
            c.args(&script[1..]);
            c
        }
    };
    command
        .current_dir(&view.dir)
        .env_clear()
        .envs(view.full_env())
        .env("LIFEBOAT_SUPERVISOR_PID", std::process::id().to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(HOOK_DEADLINE, command.output())
        .await
        .map_err(|_| {
            ControlError::Rewind(format!(
                "the credential rotation hook `{cmd}` did not finish within {}s; the live site is unchanged, the restored copy is in {}",
                HOOK_DEADLINE.as_secs(),
                state_dir.display()
            ))
        })?
        .map_err(|e| ControlError::Rewind(format!("could not run the credential rotation hook `{cmd}`: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String = stderr
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        return Err(ControlError::Rewind(format!(
            "the credential rotation hook `{cmd}` failed ({}): {tail}; the live site is unchanged, the restored copy is in {}",
            out.status,
            state_dir.display()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
}

/// The accounts a credentials hook says it rotated: its `rotated: NAME` lines. Names only;
/// the rest of what it printed (new passwords) is never stored.
fn rotated_accounts(printed: &str) -> Vec<String> {
    printed
        .lines()
        .filter_map(|l| l.strip_prefix("rotated:"))
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .collect()
}

/// Starts the site's instances on `state_dir` where only the owner reaches them, waits until
/// they are healthy, then switches the front door, the live-state record and capture to them.
async fn switch_to(
    site: &Arc<Site>,
    state: &str,
    state_dir: &Path,
) -> Result<RewindReport, ControlError> {
    let began = Instant::now();
    // No scale change may start or stop instances while two sets run.
    let _reconcile = site.reconcile_lock.lock().await;
    // The state's MariaDB server (a rewind started it; an undo restarts the old state's).
    let database = site.database.get().cloned();
    if let Some(db) = &database
        && let Err(e) = db.ensure_running(state).await
    {
        db.stop(state).await;
        return Err(ControlError::Rewind(format!(
            "the MariaDB server of {} did not start: {e}; the live site is unchanged",
            state_dir.display()
        )));
    }
    {
        // The site dir's databases are about to be mount points under the new instances.
        let site = site.clone();
        let _ = tokio::task::spawn_blocking(move || site.hold_site_databases()).await;
    }
    let old: Vec<String> = site
        .supervisor
        .instances()
        .into_iter()
        .map(|i| i.id)
        .collect();
    let taken: BTreeSet<String> = old.iter().cloned().collect();
    let token = hex::encode(rand::random::<[u8; 16]>());
    site.proxy.set_preview_token(Some(token));
    let mut staged = Vec::new();
    let mut used = taken.clone();
    for (process, want) in site.desired() {
        let mut n = 1;
        for _ in 0..want {
            while used.contains(&instance_id(&process, n)) {
                n += 1;
            }
            let id = instance_id(&process, n);
            used.insert(id.clone());
            if let Err(e) =
                crate::daemon::start_instance_in(site, id.clone(), &process, state, true)
            {
                abandon(site, &staged, state).await;
                return Err(ControlError::Rewind(format!(
                    "{id} could not be started on the restored copy: {e}; the live site is unchanged"
                )));
            }
            staged.push(id);
        }
    }
    let checked = match wait_healthy(site, &staged).await {
        Ok(()) => serves_the_copy(site, &staged, state).await,
        Err(e) => Err(e),
    };
    if let Err(e) = checked {
        abandon(site, &staged, state).await;
        return Err(ControlError::Rewind(format!(
            "{e}; the live site is unchanged, the restored copy stays in {} for inspection",
            state_dir.display()
        )));
    }
    let previous = site.live_state();
    let record = StatesRecord {
        live: state.to_string(),
        previous: Some(previous.clone()),
    };
    // Durable before the switch: a crash right after comes back on the new state.
    if let Err(e) = site.set_states(record).await {
        abandon(site, &staged, state).await;
        return Err(e);
    }
    site.set_live_state(state);
    let drained = site.proxy.promote_staged();
    let switched_at = Instant::now();
    let capture = site.capture.get().cloned();
    // The old instances' requests get the stop timeout to finish, not for ever.
    drained.within(site.longest_stop_timeout()).await;
    let mut stops = tokio::task::JoinSet::new();
    for id in old {
        let site = site.clone();
        stops.spawn(async move {
            site.drain(&id).await;
            site.supervisor.stop(&id).await;
        });
    }
    while stops.join_next().await.is_some() {}
    if let Some(capture) = capture {
        // The old state's last writes are shipped, then capture follows the site.
        capture.stop().await;
        // On a cluster's primary, in its term, with the stream to the standbys.
        if !crate::node::follow_rewind(site, state).await {
            capture.start(state);
        }
    }
    // The old state's server last: its instances are gone and capture has read its binlog.
    if let Some(db) = &database {
        db.stop(&previous).await;
    }
    Ok(RewindReport {
        phases_ms: vec![
            (
                "staged instances healthy, switch".to_string(),
                switched_at.duration_since(began).as_millis() as u64,
            ),
            (
                "old state stopped".to_string(),
                switched_at.elapsed().as_millis() as u64,
            ),
        ],
        serving_ms: switched_at.duration_since(began).as_millis() as u64,
        switched_at: Some(switched_at),
        restored_time: None,
        state: state.to_string(),
        state_dir: state_dir.display().to_string(),
        previous: previous.clone(),
        previous_dir: site.paths.state_dir(&previous).display().to_string(),
        databases: Vec::new(),
        files: 0,
        file_bytes: 0,
        credentials: None,
        instances: staged,
        took_ms: 0,
    })
}

/// Takes the staged instances out of the front door and stops them: the switch is off and
/// the live site stays as it was.
async fn abandon(site: &Site, staged: &[String], state: &str) {
    site.proxy
        .discard_staged()
        .within(site.longest_stop_timeout())
        .await;
    site.proxy.set_preview_token(None);
    for id in staged {
        site.supervisor.stop(id).await;
    }
    // The state is not live: its MariaDB server stops with its instances.
    if let Some(db) = site.database.get() {
        db.stop(state).await;
    }
}

/// Checks, from outside, that the staged instances use the restored copy: they see it at the
/// site's own paths, and none holds a database of the state that is another copy (an app that
/// opened the live database by another path would go on serving the data the rewind is meant
/// to undo). An instance that has not opened its database yet passes; the watcher keeps
/// looking after the switch.
async fn serves_the_copy(site: &Arc<Site>, staged: &[String], state: &str) -> Result<(), String> {
    let pids: Vec<(String, u32)> = site
        .supervisor
        .instances()
        .into_iter()
        .filter(|i| staged.contains(&i.id))
        .filter_map(|i| Some((i.id, i.pid?)))
        .collect();
    let (site, state) = (site.clone(), state.to_string());
    let wrong = tokio::task::spawn_blocking(move || {
        pids.into_iter()
            .flat_map(|(id, pid)| {
                crate::state_use::check_instance(&site, pid, &state)
                    .into_iter()
                    .filter(|f| matches!(f, crate::state_use::Finding::WrongCopy { .. }))
                    .map(move |f| (id.clone(), f))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| format!("checking what the restored instances use failed: {e}"))?;
    match wrong.first() {
        None => Ok(()),
        Some((id, crate::state_use::Finding::WrongCopy { path })) => Err(format!(
            "{id} uses {} but not the restored copy's (it opens its data somewhere Lifeboat did not put the restored state; declare that path in [state])",
            path.display()
        )),
        Some(_) => Ok(()),
    }
}

/// Waits until every staged instance passes its health check (workers: runs).
async fn wait_healthy(site: &Site, staged: &[String]) -> Result<(), String> {
    let deadline = Instant::now() + HEALTHY_DEADLINE;
    loop {
        let backends = site.proxy.backends();
        let instances = site.supervisor.instances();
        let mut pending = Vec::new();
        for id in staged {
            let inst = instances.iter().find(|i| &i.id == id);
            if let Some(i) = inst
                && matches!(i.state, SupState::CrashLooping)
            {
                return Err(format!(
                    "{id} keeps crashing on the restored copy (see `lifeboat logs {id}`)"
                ));
            }
            let http = parse_instance_id(id)
                .and_then(|(p, _)| site.manifest.processes.get(p))
                .is_none_or(|p| p.http);
            let ok = if http {
                backends.iter().any(|b| {
                    &b.id == id && b.staged && b.health == lifeboat_proxy::BackendHealth::Healthy
                })
            } else {
                inst.is_some_and(|i| matches!(i.state, SupState::Running))
            };
            if !ok {
                pending.push(id.clone());
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not become healthy on the restored copy within {}s (see `lifeboat logs {}`)",
                pending.join(", "),
                HEALTHY_DEADLINE.as_secs(),
                pending[0]
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
