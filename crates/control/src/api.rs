//! The local API between the `lifeboat` command and the daemon: JSON over HTTP/1.1 on the
//! site's unix socket `.lifeboat/control.sock` (mode 0600, in a 0700 dir, so only the owner can
//! drive the site). This module holds the wire types and the server's routes.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lifeboat_core::{Event, EventKind};
use lifeboat_timeline::RestorePoints;

use crate::capture::CaptureReport;
use crate::rewind::{RewindReport, RewindRequest};
use crate::states::{DropReport, DropRequest, StateInfo};
use lifeboat_core::status::InstanceState;
use serde::{Deserialize, Serialize};

use crate::ControlError;
use crate::site::Site;

/// What `lifeboat status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub site: String,
    /// The front door, e.g. `http://127.0.0.1:8080`.
    pub proxy: String,
    pub maintenance: bool,
    /// Desired number of instances per process.
    pub desired: BTreeMap<String, u32>,
    pub instances: Vec<InstanceReport>,
    /// The live state: `site` (the site dir) or a restored copy made by `rewind`.
    #[serde(default)]
    pub state: String,
    /// Continuous capture, when the manifest has a `[vault]`.
    #[serde(default)]
    pub capture: Option<CaptureReport>,
    /// What the owner must know now, in sentences: data the instances use that is not backed
    /// up or is not the live copy, capture that cannot run, protections this machine lacks.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// How the site's processes are kept away from Lifeboat's files and secrets.
    #[serde(default)]
    pub isolation: Option<crate::isolation::Protections>,
    /// This node's name, in a cluster.
    #[serde(default)]
    pub node: Option<String>,
    /// This node's role as it carries it out, in a cluster.
    #[serde(default)]
    pub role: Option<crate::node::NodeRole>,
    /// Every node of the cluster as etcd last showed them.
    #[serde(default)]
    pub nodes: Vec<crate::node::NodeReport>,
    /// Why this node does not take over now, while no node leads.
    #[serde(default)]
    pub election: Option<String>,
    /// This node's copy of the primary's state, while it is a standby.
    #[serde(default)]
    pub replica: Option<crate::node::ReplicaReport>,
    /// The site's MariaDB servers (`[state] mariadb`), one per state that runs one.
    #[serde(default)]
    pub databases: Vec<crate::mariadb::DatabaseReport>,
    /// `durability = "async"`, on the primary: what losing this node now would lose.
    #[serde(default)]
    pub loss_window: Option<crate::node::LossWindow>,
}

/// What `lifeboat timeline` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineReport {
    pub site: String,
    /// The live state and the one `rewind --undo` goes back to.
    pub state: String,
    pub previous_state: Option<String>,
    pub capture: Option<CaptureReport>,
    /// The moments the site can be restored to.
    pub restore_points: RestorePoints,
    /// What happened: restarts, maintenance, captures, rewinds (oldest first).
    pub events: Vec<Event>,
}

/// Whether an event belongs on the timeline (lifecycle noise such as every start or health
/// flip stays in `lifeboat events`).
pub fn on_timeline(kind: &EventKind) -> bool {
    !matches!(
        kind,
        EventKind::InstanceStarted { .. }
            | EventKind::InstanceStopped { .. }
            | EventKind::HealthChanged { .. }
            | EventKind::Scaled { .. }
    )
}

/// One instance in [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceReport {
    pub id: String,
    pub process: String,
    pub pid: Option<u32>,
    pub port: u16,
    pub state: InstanceState,
    pub restarts: u32,
    /// How the last run ended, e.g. "code 1" or "signal 9".
    pub last_exit: Option<String>,
    /// When the next restart happens, for instances in backoff.
    pub next_restart_in_ms: Option<u64>,
    /// Why the last start failed, when the command could not even be spawned.
    #[serde(default)]
    pub last_error: Option<String>,
    /// The front door's last health check of it, in words: `passed`, or what failed now
    /// ("GET /healthz answered 400 Bad Request", "connect ... refused", "took longer than
    /// 2s"). Always the latest check, never an older reason.
    #[serde(default)]
    pub health_check: Option<String>,
    /// The state it serves: the live one, or during a rewind's switch the one it is leaving
    /// or the restored copy it is about to serve.
    #[serde(default)]
    pub serves: Option<String>,
    /// What it may use (the manifest's `memory`, `cpu`, `pids`), and whether that holds.
    #[serde(default)]
    pub limits: Option<LimitsReport>,
    /// What it uses now.
    #[serde(default)]
    pub usage: Option<UsageReport>,
}

/// An instance's resource limits in [`InstanceReport`]. `None`: no limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitsReport {
    /// RAM and swap together, in bytes.
    pub memory_bytes: Option<u64>,
    /// Cores, as the manifest writes them (`1.5`).
    pub cpu: Option<f64>,
    /// Processes and threads at once.
    pub pids: Option<u32>,
    /// Whether the kernel holds the instance to them (through its cgroup).
    pub enforced: bool,
    /// Why not, when not: no cgroups here, no permission, a controller missing.
    pub not_enforced_because: Option<String>,
}

/// What an instance uses in [`InstanceReport`]: all its processes together where it has a
/// cgroup; without one, memory and CPU time of its main process only, and no process count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    pub memory_bytes: Option<u64>,
    pub pids: Option<u32>,
    pub cpu_time_ms: Option<u64>,
    /// Processes of it the kernel killed for going over its memory limit, over all its runs.
    pub oom_kills: u32,
}

/// `lifeboat scale web=5`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleRequest {
    pub scale: BTreeMap<String, u32>,
}

/// One process whose scale was set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleChange {
    pub process: String,
    pub from: u32,
    pub to: u32,
}

/// `lifeboat maintenance on|off`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MaintenanceRequest {
    pub on: bool,
    pub message: Option<String>,
    #[serde(default)]
    pub allow: Vec<IpAddr>,
}

/// The maintenance switch after a change. `bypass_token` is only sent to the owner here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaintenanceReport {
    pub on: bool,
    pub message: String,
    pub bypass_token: Option<String>,
    pub allow: Vec<IpAddr>,
}

/// Which events to list: the last `last`, or those after `after` (waiting up to `wait_ms` for
/// one to arrive, for `--follow`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventsQuery {
    pub after: Option<u64>,
    pub last: Option<usize>,
    pub wait_ms: Option<u64>,
}

/// Error body of every refused request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

impl From<ControlError> for Refusal {
    fn from(err: ControlError) -> Refusal {
        let code = match err {
            ControlError::Refused(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Refusal(code, err.to_string())
    }
}

pub(crate) fn router(site: Arc<Site>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/scale", post(scale))
        .route("/v1/maintenance", post(maintenance))
        .route("/v1/events", get(events))
        .route("/v1/down", post(down))
        .route("/v1/timeline", get(timeline))
        .route("/v1/ship", post(ship))
        .route("/v1/rewind", post(rewind))
        .route("/v1/rewind/undo", post(undo))
        .route("/v1/states", get(states))
        .route("/v1/states/drop", post(drop_states))
        .route("/v1/exec", post(exec_view))
        .route("/v1/switchover", post(switchover))
        .with_state(site)
}

async fn status(State(site): State<Arc<Site>>) -> Json<StatusReport> {
    let mut report = site.status();
    if let Some(capture) = site.capture.get() {
        report.capture = Some(capture.report().await);
    }
    Json(report)
}

fn no_vault() -> Refusal {
    Refusal(
        StatusCode::BAD_REQUEST,
        "this site has no [vault] section in lifeboat.toml, so nothing is captured; add one (see crates/core/MANIFEST.md)".into(),
    )
}

async fn timeline(State(site): State<Arc<Site>>) -> Result<Json<TimelineReport>, Refusal> {
    let Some(capture) = site.capture.get().cloned() else {
        return Err(no_vault());
    };
    let restore_points = lifeboat_timeline::list_restore_points(&capture.repo)
        .await
        .map_err(|e| ControlError::Vault(format!("could not list restore points: {e}")))?;
    let states = site.states()?;
    let events = site
        .last_events(5000)
        .await?
        .into_iter()
        .filter(|e| on_timeline(&e.what))
        .collect();
    Ok(Json(TimelineReport {
        site: site.manifest.site.clone(),
        state: states.live,
        previous_state: states.previous,
        capture: Some(capture.report().await),
        restore_points,
        events,
    }))
}

async fn ship(State(site): State<Arc<Site>>) -> Result<StatusCode, Refusal> {
    let Some(capture) = site.capture.get().cloned() else {
        return Err(no_vault());
    };
    capture.ship_now().await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn rewind(
    State(site): State<Arc<Site>>,
    Json(req): Json<RewindRequest>,
) -> Result<Json<RewindReport>, Refusal> {
    Ok(Json(crate::rewind::rewind(&site, req).await?))
}

async fn undo(State(site): State<Arc<Site>>) -> Result<Json<RewindReport>, Refusal> {
    Ok(Json(crate::rewind::undo(&site).await?))
}

async fn states(State(site): State<Arc<Site>>) -> Result<Json<Vec<StateInfo>>, Refusal> {
    let record = site.states()?;
    Ok(Json(crate::states::list(
        &site.paths,
        &site.manifest.state,
        &record,
    )?))
}

/// Deletes states; never while a rewind runs (it may be writing a new one, or about to
/// switch to the previous one).
async fn drop_states(
    State(site): State<Arc<Site>>,
    Json(req): Json<DropRequest>,
) -> Result<Json<DropReport>, Refusal> {
    let _busy = site.rewinding.try_lock().map_err(|_| {
        ControlError::Refused("a rewind is running for this site; drop states after it".into())
    })?;
    let record = site.states()?;
    let states = crate::states::list(&site.paths, &site.manifest.state, &record)?;
    let (chosen, new_record) = crate::states::plan_drop(&states, &record, &req)?;
    if chosen.is_empty() {
        return Ok(Json(DropReport {
            previous: record.previous,
            ..DropReport::default()
        }));
    }
    if new_record != record {
        site.set_states(new_record.clone()).await?;
    }
    let (paths, spec) = (site.paths.clone(), site.manifest.state.clone());
    let report = tokio::task::spawn_blocking(move || {
        crate::states::delete(&paths, &spec, chosen, new_record.previous)
    })
    .await
    .map_err(|e| ControlError::Refused(format!("dropping states stopped: {e}")))??;
    site.record(EventKind::StatesDropped {
        names: report.dropped.iter().map(|s| s.name.clone()).collect(),
        freed_bytes: report.freed_bytes,
    });
    Ok(Json(report))
}

/// How `lifeboat exec` must run a command: the live state as the site's processes see it.
async fn exec_view(
    State(site): State<Arc<Site>>,
    Json(req): Json<crate::view::ExecRequest>,
) -> Result<Json<crate::view::ProcessView>, Refusal> {
    let process = match &req.process {
        Some(p) if !site.manifest.processes.contains_key(p) => {
            return Err(ControlError::Refused(format!(
                "the manifest has no process `{p}`; the processes are: {}",
                site.manifest
                    .processes
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into());
        }
        Some(p) => Some(p.as_str()),
        None => crate::view::default_process(&site.manifest),
    };
    Ok(Json(site.view(&site.live_state(), process)?))
}

async fn scale(
    State(site): State<Arc<Site>>,
    Json(req): Json<ScaleRequest>,
) -> Result<Json<Vec<ScaleChange>>, Refusal> {
    Ok(Json(site.scale(req.scale).await?))
}

async fn maintenance(
    State(site): State<Arc<Site>>,
    Json(req): Json<MaintenanceRequest>,
) -> Result<Json<MaintenanceReport>, Refusal> {
    Ok(Json(site.set_maintenance(req).await?))
}

async fn events(
    State(site): State<Arc<Site>>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Vec<Event>>, Refusal> {
    const PAGE: usize = 1000;
    if let Some(after) = q.after {
        let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(60_000));
        return Ok(Json(site.events_after(after, PAGE, wait).await?));
    }
    Ok(Json(site.last_events(q.last.unwrap_or(PAGE)).await?))
}

/// `lifeboat switchover --to NODE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwitchoverRequest {
    pub to: String,
}

async fn switchover(
    State(site): State<Arc<Site>>,
    Json(req): Json<SwitchoverRequest>,
) -> Result<Json<crate::node::SwitchoverReport>, Refusal> {
    let Some(node) = site.node.get().cloned() else {
        return Err(crate::ControlError::Refused(
            "this site runs on one machine (no [cluster] in lifeboat.toml): there is no other node to switch over to"
                .into(),
        )
        .into());
    };
    Ok(Json(crate::node::switchover(&site, &node, &req.to).await?))
}

async fn down(State(site): State<Arc<Site>>) -> StatusCode {
    site.request_shutdown("lifeboat down");
    StatusCode::ACCEPTED
}
