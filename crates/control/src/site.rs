//! The running site inside the daemon: the manifest, the store, the front door and the
//! supervisor, and the operations the API offers on them (status, scale, maintenance, events).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use lifeboat_core::plan::parse_instance_id;
use lifeboat_core::status::{Health, RunState, instance_state};
use lifeboat_core::{Event, EventKind, Manifest};
use lifeboat_proxy::{BackendHealth, Maintenance, Proxy};
use lifeboat_supervisor::{InstanceState as SupState, Supervisor};
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::api::{
    InstanceReport, LimitsReport, MaintenanceReport, MaintenanceRequest, ScaleChange, StatusReport,
    UsageReport,
};
use crate::capture::Capture;
use crate::state_use::Finding;
use crate::store::{MaintenanceState, StatesRecord, Store};
use crate::{ControlError, SitePaths};

pub(crate) struct Site {
    pub(crate) manifest: Manifest,
    pub(crate) paths: SitePaths,
    pub(crate) store: Arc<Store>,
    pub(crate) proxy: Proxy,
    pub(crate) supervisor: Supervisor,
    /// Desired instances per process: the manifest, overridden by `lifeboat scale`.
    desired: Mutex<BTreeMap<String, u32>>,
    /// Serializes changes to the maintenance switch.
    maintenance: tokio::sync::Mutex<MaintenanceState>,
    /// Whether maintenance is on, readable without waiting for a change in progress.
    maintenance_on: AtomicBool,
    pub(crate) reconcile: Notify,
    pub(crate) shutdown: CancellationToken,
    shutdown_reason: Mutex<String>,
    events_tx: mpsc::UnboundedSender<(OffsetDateTime, EventKind)>,
    /// Events the owner should hear of at once ([`EventKind::is_alert`]), as sentences.
    alerts: tokio::sync::broadcast::Sender<String>,
    /// The last stored event's seq, for `events --follow`.
    last_seq: watch::Receiver<u64>,
    /// Continuous capture, when the manifest has a `[vault]`.
    pub(crate) capture: OnceLock<Arc<Capture>>,
    /// This node's part in a cluster, when the manifest has `[cluster]`.
    pub(crate) node: OnceLock<Arc<crate::node::Node>>,
    /// The site's MariaDB servers, when the manifest has `[state] mariadb`.
    pub(crate) database: OnceLock<Arc<crate::mariadb::SiteDatabase>>,
    /// The live state's name (`site` or a restored copy), as stored.
    live_state: Mutex<String>,
    /// Held by a rewind from start to end: one at a time.
    pub(crate) rewinding: tokio::sync::Mutex<()>,
    /// Held by each reconcile pass, and by a rewind while two sets of instances run.
    pub(crate) reconcile_lock: tokio::sync::Mutex<()>,
    /// How the site's processes are launched on this machine.
    pub(crate) launcher: crate::isolation::Launcher,
    /// The state each running instance serves (during a rewind two sets run side by side).
    pub(crate) instance_states: Mutex<HashMap<String, String>>,
    /// Keeps the site dir's databases (the mount points of restored states) from losing their
    /// `-wal` and `-shm` files (`view.rs`).
    db_holder: Mutex<Option<crate::view::DatabaseHolder>>,
    /// What the open-file watcher found wrong, per instance (`state_use.rs`).
    findings: Mutex<BTreeMap<String, (String, BTreeSet<Finding>)>>,
}

/// The event writer: the receiving end the daemon runs in [`write_events`].
pub(crate) struct EventWriter {
    rx: mpsc::UnboundedReceiver<(OffsetDateTime, EventKind)>,
    last_seq: watch::Sender<u64>,
    /// Cancelled at the very end of shutdown: store what is queued, then stop.
    pub(crate) close: CancellationToken,
}

impl Site {
    pub(crate) fn new(
        manifest: Manifest,
        paths: SitePaths,
        store: Store,
        proxy: Proxy,
        supervisor: Supervisor,
        maintenance: MaintenanceState,
        launcher: crate::isolation::Launcher,
    ) -> Result<(Site, EventWriter, tokio::sync::broadcast::Receiver<String>), ControlError> {
        let mut desired = manifest.replicas();
        for (process, n) in store.scale()? {
            if let Some(d) = desired.get_mut(&process) {
                *d = n;
            }
        }
        let last = store.last_events(1)?.first().map(|e| e.seq).unwrap_or(0);
        let live_state = store.states()?.live;
        let (events_tx, rx) = mpsc::unbounded_channel();
        let (seq_tx, last_seq) = watch::channel(last);
        // Subscribed from the start, so the alerts of `up` itself reach its terminal.
        let (alerts, first_alerts) = tokio::sync::broadcast::channel(256);
        let site = Site {
            manifest,
            paths,
            store: Arc::new(store),
            proxy,
            supervisor,
            desired: Mutex::new(desired),
            maintenance_on: AtomicBool::new(maintenance.on),
            maintenance: tokio::sync::Mutex::new(maintenance),
            reconcile: Notify::new(),
            shutdown: CancellationToken::new(),
            shutdown_reason: Mutex::new(String::new()),
            events_tx,
            alerts,
            last_seq,
            capture: OnceLock::new(),
            node: OnceLock::new(),
            database: OnceLock::new(),
            live_state: Mutex::new(live_state),
            rewinding: tokio::sync::Mutex::new(()),
            reconcile_lock: tokio::sync::Mutex::new(()),
            launcher,
            instance_states: Mutex::new(HashMap::new()),
            findings: Mutex::new(BTreeMap::new()),
            db_holder: Mutex::new(None),
        };
        Ok((
            site,
            EventWriter {
                rx,
                last_seq: seq_tx,
                close: CancellationToken::new(),
            },
            first_alerts,
        ))
    }

    /// Records an event; it is stored durably by the event writer, in order.
    pub(crate) fn record(&self, what: EventKind) {
        if what.is_alert() {
            let _ = self.alerts.send(what.describe());
        }
        // The writer only stops after the site is dropped; a failed send means shutdown.
        let _ = self.events_tx.send((OffsetDateTime::now_utc(), what));
    }

    /// A recorder for events recorded outside the site (capture): they go through
    /// [`Site::record`] too.
    pub(crate) fn recorder(self: &std::sync::Arc<Self>) -> crate::capture::Recorder {
        let site = std::sync::Arc::downgrade(self);
        std::sync::Arc::new(move |at: OffsetDateTime, what: EventKind| {
            if let Some(site) = site.upgrade() {
                if what.is_alert() {
                    let _ = site.alerts.send(what.describe());
                }
                let _ = site.events_tx.send((at, what));
            }
        })
    }

    /// The live state's name.
    pub(crate) fn live_state(&self) -> String {
        self.live_state.lock().expect("state lock").clone()
    }

    /// How a process of kind `process` sees the state named `state` (its environment and
    /// private mounts), with the mount points made ready.
    pub(crate) fn view(
        &self,
        state: &str,
        process: Option<&str>,
    ) -> Result<crate::view::ProcessView, ControlError> {
        crate::view::process_view(&self.paths, &self.manifest, state, process, &self.launcher)
    }

    /// (Re)starts the holder of the site dir's databases, before instances whose private
    /// mounts sit on them start; the new holder takes its locks before the old one lets go.
    /// Without private mounts there is nothing to protect.
    pub(crate) fn hold_site_databases(&self) {
        let (Some(shim), Ok(())) = (&self.launcher.shim, &self.launcher.private_mounts) else {
            return;
        };
        match crate::view::DatabaseHolder::start(shim, &self.paths, &self.manifest) {
            Ok(holder) => {
                // The new one holds its locks already: the old one may go.
                let old = self.db_holder.lock().expect("holder lock").replace(holder);
                drop(old);
            }
            Err(e) => tracing::warn!("could not start the holder of the site's databases: {e}"),
        }
    }

    /// How long instance `id` gets to finish its requests when it is stopped: its process's
    /// `stop_timeout` (the longest of all for an unknown id).
    pub(crate) fn stop_timeout_of(&self, id: &str) -> Duration {
        parse_instance_id(id)
            .and_then(|(process, _)| self.manifest.processes.get(process))
            .map(|p| p.stop_timeout)
            .unwrap_or_else(|| self.longest_stop_timeout())
    }

    /// The longest `stop_timeout` of the site's processes: what a drain of all of them gets.
    pub(crate) fn longest_stop_timeout(&self) -> Duration {
        self.manifest
            .processes
            .values()
            .map(|p| p.stop_timeout)
            .max()
            .unwrap_or(Duration::from_secs(10))
    }

    /// Takes instance `id` out of the front door and waits for its requests, at most its stop
    /// timeout; then closes the connections of the requests still running (a client that never
    /// reads its response must not hold a scale-down, a rewind or `down` for ever).
    pub(crate) async fn drain(&self, id: &str) {
        let drained = self
            .proxy
            .remove_backend(id)
            .within(self.stop_timeout_of(id))
            .await;
        if drained.cut > 0 {
            tracing::warn!(
                "{id}: {} request(s) still running after its stop timeout were cut",
                drained.cut
            );
        }
    }

    /// The state instance `id` serves (the live one unless it was started on another).
    pub(crate) fn state_of(&self, id: &str) -> String {
        self.instance_states
            .lock()
            .expect("instance states lock")
            .get(id)
            .cloned()
            .unwrap_or_else(|| self.live_state())
    }

    /// Takes the watcher's latest look at every instance: findings not seen before become
    /// events; instances that are gone are forgotten.
    pub(crate) fn set_findings(&self, checked: Vec<(String, String, BTreeSet<Finding>)>) {
        let mut new_events = Vec::new();
        {
            let mut findings = self.findings.lock().expect("findings lock");
            let running: BTreeSet<&String> = checked.iter().map(|(id, _, _)| id).collect();
            findings.retain(|id, _| running.contains(id));
            for (id, state, found) in &checked {
                let before = findings.get(id).map(|(_, f)| f.clone()).unwrap_or_default();
                for finding in found.difference(&before) {
                    new_events.push(crate::state_use::event_of(id, state, finding));
                }
                findings.insert(id.clone(), (state.clone(), found.clone()));
            }
        }
        for event in new_events {
            self.record(event);
        }
    }

    /// What the owner must know about the site now, in sentences: state the instances use
    /// that is not backed up or not the live copy, and what this machine cannot do.
    pub(crate) fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(why) = &self.launcher.private_mounts {
            out.push(EventKind::PrivateMountsUnavailable { why: why.clone() }.describe());
        }
        let findings = self.findings.lock().expect("findings lock");
        for (id, (state, found)) in findings.iter() {
            for finding in found {
                out.push(crate::state_use::event_of(id, state, finding).describe());
            }
        }
        out
    }

    pub(crate) fn set_live_state(&self, state: &str) {
        *self.live_state.lock().expect("state lock") = state.to_string();
    }

    pub(crate) fn states(&self) -> Result<StatesRecord, ControlError> {
        self.store.states()
    }

    pub(crate) async fn set_states(&self, record: StatesRecord) -> Result<(), ControlError> {
        let store = self.store.clone();
        blocking(move || store.set_states(&record)).await
    }

    pub(crate) async fn event(&self, seq: u64) -> Result<Option<Event>, ControlError> {
        let store = self.store.clone();
        blocking(move || store.event(seq)).await
    }

    pub(crate) fn desired(&self) -> BTreeMap<String, u32> {
        self.desired.lock().expect("desired lock").clone()
    }

    /// What should run on this node now: the desired instances, or none on a node of a cluster
    /// that is not the primary (a standby, or a primary that must stop writing).
    pub(crate) fn desired_here(&self) -> BTreeMap<String, u32> {
        let mut desired = self.desired();
        let here = match self.node.get() {
            Some(node) => node.runs_instances(),
            // A node of a cluster that has not joined yet runs nothing.
            None => self.manifest.cluster.is_none(),
        };
        if !here {
            desired.values_mut().for_each(|n| *n = 0);
        }
        desired
    }

    pub(crate) fn request_shutdown(&self, reason: &str) {
        let mut r = self.shutdown_reason.lock().expect("reason lock");
        if r.is_empty() {
            *r = reason.to_string();
        }
        self.shutdown.cancel();
    }

    pub(crate) fn shutdown_reason(&self) -> String {
        self.shutdown_reason.lock().expect("reason lock").clone()
    }

    pub(crate) fn status(&self) -> StatusReport {
        let backends: HashMap<String, lifeboat_proxy::BackendStatus> = self
            .proxy
            .backends()
            .into_iter()
            .map(|b| (b.id.clone(), b))
            .collect();
        let mut instances: Vec<InstanceReport> = self
            .supervisor
            .instances()
            .into_iter()
            .map(|i| {
                let backend = backends.get(&i.id);
                let serves_http = self
                    .manifest
                    .processes
                    .get(&i.process)
                    .is_none_or(|p| p.http);
                let health = match backend.map(|b| b.health) {
                    // A worker has no health check: running is all there is to know.
                    _ if !serves_http => Health::Healthy,
                    Some(BackendHealth::Healthy) => Health::Healthy,
                    Some(BackendHealth::Unhealthy) => Health::Unhealthy,
                    _ => Health::Unknown,
                };
                let run = match i.state {
                    SupState::Starting => RunState::Starting,
                    SupState::Running => RunState::Running,
                    SupState::Backoff => RunState::Backoff,
                    SupState::CrashLooping => RunState::CrashLooping,
                    SupState::Stopping => RunState::Stopping,
                    SupState::Exited => RunState::Exited,
                };
                let ejected = backend.is_some_and(|b| b.ejected);
                let (limits, usage) = (limits_report(&i), usage_report(&i));
                InstanceReport {
                    state: instance_state(run, health, ejected),
                    pid: i.pid,
                    port: i.port,
                    restarts: i.restarts,
                    last_exit: i.last_exit.map(|e| match (e.code, e.signal) {
                        (_, Some(s)) => format!("signal {s}"),
                        (Some(c), None) => format!("code {c}"),
                        (None, None) => "unknown".to_string(),
                    }),
                    next_restart_in_ms: i.next_restart_in.map(|d| d.as_millis() as u64),
                    last_error: i.last_error,
                    health_check: backend.and_then(|b| b.last_check.clone()),
                    serves: Some(self.state_of(&i.id)),
                    limits: Some(limits),
                    usage: Some(usage),
                    id: i.id,
                    process: i.process,
                }
            })
            .collect();
        instances.sort_by_key(|i| {
            let n = parse_instance_id(&i.id).map(|(_, n)| n).unwrap_or(0);
            (i.process.clone(), n)
        });
        let maintenance = self.maintenance_on.load(Ordering::SeqCst);
        let mut warnings = self.warnings();
        // Once for the site, not per instance: the reason is the machine's.
        if let Some(why) = instances
            .iter()
            .find_map(|i| i.limits.as_ref()?.not_enforced_because.clone())
        {
            warnings.push(format!(
                "not every resource limit (memory, cpu, pids) is enforced: {why}"
            ));
        }
        StatusReport {
            site: self.manifest.site.clone(),
            proxy: format!("http://{}", self.proxy.local_addr()),
            maintenance,
            desired: self.desired(),
            instances,
            state: self.live_state(),
            capture: None,
            warnings,
            isolation: Some(self.launcher.protections()),
            node: self.node.get().map(|n| n.info.node.clone()),
            role: self.node.get().map(|n| n.role()),
            nodes: self.node.get().map(|n| n.members()).unwrap_or_default(),
            election: self.node.get().and_then(|n| n.waiting()),
            replica: self.node.get().and_then(|n| n.replica_report()),
            databases: self.database.get().map(|d| d.report()).unwrap_or_default(),
            loss_window: match (self.node.get(), self.manifest.cluster.as_ref()) {
                (Some(n), Some(spec)) => n.loss_window(spec.durability),
                _ => None,
            },
        }
    }

    pub(crate) async fn scale(
        &self,
        scale: BTreeMap<String, u32>,
    ) -> Result<Vec<ScaleChange>, ControlError> {
        if scale.is_empty() {
            return Err(ControlError::Refused(
                "nothing to scale; write it like `lifeboat scale web=3`".into(),
            ));
        }
        let known: Vec<&str> = self.manifest.processes.keys().map(String::as_str).collect();
        for (process, n) in &scale {
            if !self.manifest.processes.contains_key(process) {
                return Err(ControlError::Refused(format!(
                    "the manifest has no process `{process}`; the processes are: {}",
                    known.join(", ")
                )));
            }
            if !(1..=1000).contains(n) {
                return Err(ControlError::Refused(format!(
                    "{process}={n}: the count must be between 1 and 1000"
                )));
            }
        }
        let (changes, stored) = {
            let mut desired = self.desired.lock().expect("desired lock");
            let mut changes = Vec::new();
            for (process, &to) in &scale {
                let from = desired.insert(process.clone(), to).unwrap_or(0);
                changes.push(ScaleChange {
                    process: process.clone(),
                    from,
                    to,
                });
            }
            (changes, desired.clone())
        };
        let store = self.store.clone();
        blocking(move || store.set_scale(&stored)).await?;
        for c in &changes {
            if c.from != c.to {
                self.record(EventKind::Scaled {
                    process: c.process.clone(),
                    from: c.from,
                    to: c.to,
                });
            }
        }
        self.reconcile.notify_one();
        Ok(changes)
    }

    pub(crate) async fn set_maintenance(
        &self,
        req: MaintenanceRequest,
    ) -> Result<MaintenanceReport, ControlError> {
        let mut current = self.maintenance.lock().await;
        let mut next = current.clone();
        if req.on {
            next.message = req
                .message
                .clone()
                .unwrap_or_else(|| self.manifest.maintenance.message.clone());
            next.allow = req.allow.clone();
            if !current.on || next.bypass_token.is_empty() {
                next.bypass_token = new_token();
            }
            // Read the page before anything changes, so a missing page file changes nothing.
            let page = self.page_html(&next, req.message.is_some())?;
            next.on = true;
            let store = self.store.clone();
            let saved = next.clone();
            blocking(move || store.set_maintenance(&saved)).await?;
            self.proxy.set_maintenance(Some(Maintenance {
                page_html: page,
                bypass_token: next.bypass_token.clone(),
                allow_ips: next.allow.clone(),
            }));
            self.record(EventKind::MaintenanceOn {
                message: next.message.clone(),
            });
        } else {
            next.on = false;
            let store = self.store.clone();
            let saved = next.clone();
            blocking(move || store.set_maintenance(&saved)).await?;
            self.proxy.set_maintenance(None);
            if current.on {
                self.record(EventKind::MaintenanceOff);
            }
        }
        self.maintenance_on.store(next.on, Ordering::SeqCst);
        *current = next.clone();
        Ok(MaintenanceReport {
            on: next.on,
            message: next.message,
            bypass_token: next.on.then_some(next.bypass_token),
            allow: next.allow,
        })
    }

    /// Puts the stored maintenance state into the front door (at start-up).
    pub(crate) async fn restore_maintenance(&self) -> Result<(), ControlError> {
        let state = self.maintenance.lock().await.clone();
        if state.on {
            let page = self.page_html(&state, false)?;
            self.proxy.set_maintenance(Some(Maintenance {
                page_html: page,
                bypass_token: state.bypass_token,
                allow_ips: state.allow,
            }));
        }
        Ok(())
    }

    /// The manifest's page file, unless a message was given on the command line.
    fn page_html(
        &self,
        state: &MaintenanceState,
        message_given: bool,
    ) -> Result<String, ControlError> {
        match &self.manifest.maintenance.page {
            Some(page) if !message_given => {
                let path = self.paths.dir.join(page);
                std::fs::read_to_string(&path)
                    .map_err(ControlError::io("read the maintenance page", path))
            }
            _ => Ok(builtin_page(&self.manifest.site, &state.message)),
        }
    }

    pub(crate) async fn events_after(
        &self,
        after: u64,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<Event>, ControlError> {
        let mut seq = self.last_seq.clone();
        if *seq.borrow() <= after && !wait.is_zero() {
            let _ = tokio::time::timeout(wait, seq.wait_for(|s| *s > after)).await;
        }
        let store = self.store.clone();
        blocking(move || store.events_after(after, limit)).await
    }

    pub(crate) async fn last_events(&self, n: usize) -> Result<Vec<Event>, ControlError> {
        let store = self.store.clone();
        blocking(move || store.last_events(n)).await
    }
}

/// Stores recorded events in order, batching what arrived meanwhile into one transaction.
/// Ends when `close` is cancelled, after storing everything queued by then.
pub(crate) async fn write_events(store: Arc<Store>, mut writer: EventWriter) {
    loop {
        let mut batch = Vec::new();
        let closing = tokio::select! {
            biased;
            first = writer.rx.recv() => match first {
                Some(first) => {
                    batch.push(first);
                    false
                }
                None => true,
            },
            _ = writer.close.cancelled() => true,
        };
        while let Ok(more) = writer.rx.try_recv() {
            batch.push(more);
        }
        if batch.is_empty() && closing {
            return;
        }
        let store = store.clone();
        match blocking(move || store.append_events(batch)).await {
            Ok(stored) => {
                if let Some(last) = stored.last() {
                    writer.last_seq.send_replace(last.seq);
                }
            }
            Err(err) => tracing::error!("could not store events: {err}"),
        }
        if closing {
            return;
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ControlError> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("store task does not panic")
}

fn new_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn builtin_page(site: &str, message: &str) -> String {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{site} - maintenance</title></head>\n\
         <body style=\"font-family: sans-serif; max-width: 40em; margin: 4em auto\">\n\
         <h1>Down for maintenance</h1>\n<p>{}</p>\n</body></html>\n",
        escape(message),
        site = escape(site)
    )
}

/// An instance's limits as `status` reports them.
fn limits_report(i: &lifeboat_supervisor::InstanceStatus) -> LimitsReport {
    LimitsReport {
        memory_bytes: i.limits.memory_bytes,
        cpu: i.limits.cpu_millis.map(|m| f64::from(m) / 1000.0),
        pids: i.limits.pids,
        enforced: i.limits_not_enforced.is_none(),
        not_enforced_because: i.limits_not_enforced.clone(),
    }
}

/// What an instance uses now, as `status` reports it.
fn usage_report(i: &lifeboat_supervisor::InstanceStatus) -> UsageReport {
    UsageReport {
        memory_bytes: i.memory_bytes,
        pids: i.pids,
        cpu_time_ms: i.cpu_time.map(|d| d.as_millis() as u64),
        oom_kills: i.oom_kills,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_page_shows_the_message_as_text_not_html() {
        let page = builtin_page("blog", "Back at 5 <script>alert(1)</script> & more");
        assert!(page.contains("Back at 5 &lt;script&gt;alert(1)&lt;/script&gt; &amp; more"));
        assert!(!page.contains("<script>"));
    }

    #[test]
    fn bypass_tokens_are_long_and_fresh() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
