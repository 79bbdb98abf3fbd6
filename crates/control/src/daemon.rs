//! `lifeboat up`: the daemon that runs one site in the foreground. It loads the manifest,
//! starts the front door and the supervisor, serves the local API, keeps the instances at their
//! desired scale, records every lifecycle fact as an event, and on shutdown drains the front
//! door before stopping the instances.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lifeboat_core::plan::{Action, ObservedInstance, plan};
use lifeboat_core::{EventKind, Manifest, ManifestError};
use lifeboat_proxy::{HealthCheckConfig, Proxy, ProxyConfig, ProxyEvent, Timeouts};
use lifeboat_supervisor::{
    BackoffPolicy, InstanceSpec, ResourceLimits, Shim, Supervisor, SupervisorConfig,
    SupervisorEvent,
};
use tokio::net::UnixListener;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::capture::Capture;
use crate::site::{Site, write_events};
use crate::store::{DaemonRecord, Store};
use crate::{ControlError, SitePaths};

/// How `lifeboat up` was asked to run the site.
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    /// Overrides `[proxy] listen` (port 0 picks a free port).
    pub listen: Option<SocketAddr>,
    /// The program that wraps each instance so it dies with lifeboat (`lifeboat __instance`).
    pub shim: Option<PathBuf>,
    /// Switch declared databases that are not in WAL mode to it, so they can be captured.
    pub enable_wal: bool,
    /// Who this node is, for a manifest with `[cluster]` (required then).
    pub node: Option<crate::node::NodeOptions>,
}

/// A site that is up. Call [`RunningSite::run_until`] to keep it up until a signal.
pub struct RunningSite {
    site: Arc<Site>,
    alerts: Option<broadcast::Receiver<String>>,
    vault_key_created: Option<PathBuf>,
    tasks: JoinSet<()>,
    forwarders: JoinSet<()>,
    forwarders_done: CancellationToken,
    event_writer: tokio::task::JoinHandle<()>,
    close_events: CancellationToken,
}

/// Loads the site in `dir` and starts it: front door listening, instances starting, API up.
/// Nothing is started when the manifest is wrong or the listen port is taken.
pub async fn start_site(dir: &Path, options: UpOptions) -> Result<RunningSite, ControlError> {
    let paths = SitePaths::new(dir);
    let mut manifest = load_manifest(&paths)?;
    if let Some(listen) = options.listen {
        manifest.proxy.listen = listen;
        manifest.proxy.listen_location = None;
    }
    check_page_exists(&paths, &manifest)?;
    paths.create()?;
    let store = Store::open(&paths.store(), dir)?;
    check_listen_free(&paths, &manifest)?;
    let live = store.states()?.live;
    let live_dir = paths.state_dir(&live);
    if !live_dir.is_dir() {
        return Err(ControlError::Rewind(format!(
            "the live state `{live}` recorded by the last rewind is missing ({}); nothing was started. \
             Put it back, or run `lifeboat rewind --undo` after starting from the previous state",
            live_dir.display()
        )));
    }
    // The vault before anything runs: a lost or wrong key must stop `up`, not a half site.
    if manifest.cluster.is_some() && manifest.vault.is_none() {
        return Err(ControlError::Refused(
            "lifeboat.toml has [cluster] but no [vault]: a node joins from the vault and \
             standbys catch up from it; add a [vault] whose destinations every node reaches \
             (e.g. an S3 bucket), and give every node the same .lifeboat/vault.key"
                .into(),
        ));
    }
    let vault = match &manifest.vault {
        Some(spec) => Some(crate::vault_key::open_site_vault(&paths, spec).await?),
        None => None,
    };

    // How the site's processes run here (their user, sandbox, environment), decided once.
    let launcher =
        crate::isolation::Launcher::prepare(&paths, &manifest, options.shim.clone()).await?;
    let stop_timeout = manifest
        .processes
        .values()
        .map(|p| p.stop_timeout)
        .max()
        .unwrap_or(Duration::from_secs(10));
    let supervisor = Supervisor::new(SupervisorConfig {
        site: manifest.site.clone(),
        // Absolute, so instances run in the site dir whatever the daemon's cwd becomes.
        site_dir: paths.dir.clone(),
        log_dir: paths.logs(),
        stop_timeout,
        log_max_bytes: 10 * 1024 * 1024,
        log_keep: 3,
        backoff: BackoffPolicy::default(),
        shim: options.shim.clone().map(|program| Shim {
            program,
            args: vec!["__instance".to_string()],
        }),
        base_env: Some(launcher.base_env.clone()),
    })
    .map_err(|e| ControlError::Supervisor(e.to_string()))?;
    let reaped = supervisor
        .reap_leftovers()
        .map_err(|e| ControlError::Supervisor(e.to_string()))?;

    let proxy = Proxy::start(proxy_config(&manifest))
        .await
        .map_err(|e| ControlError::Proxy(e.to_string()))?;
    let maintenance = store.maintenance()?;
    let (site, writer, alerts) = Site::new(
        manifest,
        paths.clone(),
        store,
        proxy,
        supervisor,
        maintenance,
        launcher,
    )?;
    let site = Arc::new(site);
    let close_events = writer.close.clone();
    let event_writer = tokio::spawn(write_events(site.store.clone(), writer));
    if !reaped.is_empty() {
        site.record(EventKind::LeftoversReaped { pids: reaped });
    }
    create_missing_dirs(&site, &live);
    // The database before capture and instances: both need it answering.
    if let Some(db) =
        crate::mariadb::SiteDatabase::new(&site.paths, &site.manifest, &site.launcher)?
    {
        let _ = site.database.set(db.clone());
        // In a cluster the server runs on the primary only (the node starts it when it
        // promotes); a standby's copy is changed by its replica alone.
        if site.manifest.cluster.is_none() {
            db.ensure_running(&live).await?;
        }
    }
    let mut vault_key_created = None;
    if let Some(vault) = vault {
        if vault.key_created {
            let path = site.paths.vault_key();
            site.record(EventKind::VaultKeyCreated {
                path: path.display().to_string(),
            });
            vault_key_created = Some(path);
        }
        let capture = Arc::new(Capture::new(
            vault.repo,
            site.paths.clone(),
            site.manifest.clone(),
            site.recorder(),
            options.enable_wal,
        ));
        if let Some(db) = site.database.get() {
            capture.set_database(db.clone());
        }
        // In a cluster only the primary captures (in its term); the node starts it.
        if site.manifest.cluster.is_none() {
            capture.start(&live);
        }
        let _ = site.capture.set(capture);
    }
    site.restore_maintenance().await?;

    // On a standby nothing may hold the replica's databases open (it appends to their logs
    // behind SQLite's back); the primary of a cluster starts the holder when it is promoted.
    if site.manifest.cluster.is_none() {
        let site = site.clone();
        let _ = tokio::task::spawn_blocking(move || site.hold_site_databases()).await;
    }
    let listener = bind_socket(&paths)?;
    let mut tasks = JoinSet::new();
    tasks.spawn(serve_api(site.clone(), listener));
    let forwarders_done = CancellationToken::new();
    let mut forwarders = JoinSet::new();
    // Subscribe before the first instance starts, so no lifecycle fact is missed.
    let (supervisor_rx, proxy_rx) = (site.supervisor.subscribe(), site.proxy.subscribe());
    forwarders.spawn(forward_supervisor_events(
        site.clone(),
        supervisor_rx,
        forwarders_done.clone(),
    ));
    forwarders.spawn(forward_proxy_events(
        site.clone(),
        proxy_rx,
        forwarders_done.clone(),
    ));
    if let Some(spec) = &site.manifest.cluster {
        // A node of a cluster: nothing runs here until the election says this node leads.
        let Some(options) = &options.node else {
            return Err(ControlError::Refused(
                "lifeboat.toml has [cluster], so this node needs a name and a zone: run `lifeboat up DIR --node NAME --zone ZONE --advertise IP` (or set LIFEBOAT_NODE, LIFEBOAT_ZONE, LIFEBOAT_ADVERTISE)".into(),
            ));
        };
        // Joined in the background: etcd may come up after this node (a whole site starting
        // at once); until then this node runs nothing and says why in `status`.
        tasks.spawn(crate::node::join_and_run(
            site.clone(),
            spec.clone(),
            options.clone(),
        ));
    }
    tasks.spawn(reconcile_loop(site.clone()));
    tasks.spawn(crate::state_use::watch(site.clone()));
    if let Err(why) = &site.launcher.private_mounts {
        site.record(EventKind::PrivateMountsUnavailable { why: why.clone() });
    }
    for missing in site.launcher.protections().missing {
        tracing::warn!("{missing}");
    }
    let record = DaemonRecord {
        pid: std::process::id(),
        proxy: format!("http://{}", site.proxy.local_addr()),
        started_at: time::OffsetDateTime::now_utc(),
    };
    site.store.set_daemon(&record)?;
    site.record(EventKind::SiteUp {
        proxy: format!("http://{}", site.proxy.local_addr()),
    });
    Ok(RunningSite {
        site,
        alerts: Some(alerts),
        vault_key_created,
        tasks,
        forwarders,
        forwarders_done,
        event_writer,
        close_events,
    })
}

impl RunningSite {
    /// The front door's real address (useful with port 0).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.site.proxy.local_addr()
    }

    /// Where the site's vault key was created, when this `up` created it (the owner must be
    /// told to copy it somewhere safe).
    pub fn vault_key_created(&self) -> Option<&Path> {
        self.vault_key_created.as_deref()
    }

    /// What the owner should hear of at once, as sentences, from the start of `up` on
    /// (capture that can not run, data not backed up, instances that can not start). Once.
    pub fn take_alerts(&mut self) -> Option<broadcast::Receiver<String>> {
        self.alerts.take()
    }

    /// The site's name from the manifest.
    pub fn name(&self) -> &str {
        &self.site.manifest.site
    }

    /// Keeps the site up until `signal` resolves or `lifeboat down` is called, then stops it
    /// gracefully: the front door finishes in-flight requests, then the instances are stopped.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = String>,
    ) -> Result<(), ControlError> {
        tokio::select! {
            reason = signal => self.site.request_shutdown(&reason),
            _ = self.site.shutdown.cancelled() => {}
        }
        let site = self.site;
        // Front door first: no new request may reach an instance that is being stopped. Its
        // open requests get the longest stop timeout to finish; a client that never reads its
        // response must not keep `down` waiting.
        let cut = site
            .proxy
            .shutdown_within(site.longest_stop_timeout())
            .await;
        if cut > 0 {
            tracing::warn!("{cut} connection(s) still busy after the stop timeout were closed");
        }
        site.supervisor.stop_all().await;
        // The last writes of the stopped instances are shipped before lifeboat exits.
        if let Some(capture) = site.capture.get() {
            capture.stop().await;
        }
        // The database last: capture has read everything the instances committed.
        if let Some(db) = site.database.get() {
            db.stop_all().await;
        }
        // The forwarders record what is already broadcast (the last stops), then end.
        self.forwarders_done.cancel();
        while self.forwarders.join_next().await.is_some() {}
        site.record(EventKind::SiteDown {
            reason: site.shutdown_reason(),
        });
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.close_events.cancel();
        let _ = self.event_writer.await;
        // Last: the socket's absence tells `lifeboat down` that everything has stopped.
        let _ = std::fs::remove_file(site.paths.socket());
        Ok(())
    }
}

pub(crate) fn load_manifest(paths: &SitePaths) -> Result<Manifest, ControlError> {
    let path = paths.manifest();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ControlError::NoManifest { path });
        }
        Err(cause) => return Err(ControlError::ReadManifest { path, cause }),
    };
    Ok(Manifest::parse(&path.display().to_string(), &text)?)
}

/// A maintenance page named in the manifest must exist before anything starts: it is needed
/// the moment the owner switches maintenance on.
fn check_page_exists(paths: &SitePaths, manifest: &Manifest) -> Result<(), ControlError> {
    let Some(page) = &manifest.maintenance.page else {
        return Ok(());
    };
    let path = paths.dir.join(page);
    if path.is_file() {
        return Ok(());
    }
    Err(ManifestError::at(
        &paths.manifest().display().to_string(),
        None,
        "maintenance.page",
        format!("the maintenance page {} is not a readable file", path.display()),
        format!(
            "create {} with the HTML to show, or remove `page` to use the built-in page with `message`",
            page.display()
        ),
    )
    .into())
}

/// Checks the front door's port is free before anything starts, so the user gets a manifest
/// error pointing at `listen` instead of a half-started site.
fn check_listen_free(paths: &SitePaths, manifest: &Manifest) -> Result<(), ControlError> {
    let listen = manifest.proxy.listen;
    if listen.port() == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind(listen) {
        Ok(_) => Ok(()),
        // `up --listen` gave the address (the manifest's location was cleared): say so.
        Err(e) if manifest.proxy.listen_location.is_none() => Err(ControlError::Refused(format!(
            "the front door can not listen on {listen} (from --listen): {e}; {}",
            listen_advice(&e, listen)
        ))),
        Err(e) => {
            let mut next = listen;
            next.set_port(listen.port().wrapping_add(1).max(1024));
            Err(ManifestError::at(
                &paths.manifest().display().to_string(),
                manifest.proxy.listen_location,
                "proxy.listen",
                format!("the front door can not listen on {listen}: {e}"),
                format!(
                    "{}, or write another address, e.g. listen = \"{next}\" (or run `lifeboat up --listen 127.0.0.1:0` for any free port)",
                    listen_advice(&e, listen)
                ),
            )
            .into())
        }
    }
}

/// What to do when the front door's address can not be taken: a port below 1024 needs root
/// (or the capability), a taken one its program stopped.
fn listen_advice(e: &std::io::Error, listen: SocketAddr) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied if listen.port() < 1024 => {
            "ports below 1024 need root: run lifeboat as root, or use a port from 1024 up behind a proxy"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "that address is not one of this machine's: use one it has, e.g. 127.0.0.1 or 0.0.0.0"
        }
        _ => "stop the program using it",
    }
}

/// A data dir declared in `[state]` that does not exist yet is created empty (and said): the
/// app may create it later, but until then a missing dir must not keep anything else from
/// being captured, and an owner who mistyped it hears of it.
fn create_missing_dirs(site: &Site, live: &str) {
    let state_dir = site.paths.state_dir(live);
    for dir in &site.manifest.state.dirs {
        let path = state_dir.join(dir);
        if path.exists() {
            continue;
        }
        match std::fs::create_dir_all(&path) {
            Ok(()) => site.record(EventKind::StateDirCreated {
                path: path.display().to_string(),
            }),
            Err(e) => site.record(EventKind::CaptureError {
                message: format!(
                    "{} (a data dir in [state]) is missing and could not be created: {e}",
                    path.display()
                ),
            }),
        }
    }
}

fn proxy_config(manifest: &Manifest) -> ProxyConfig {
    // One front door for the site: it checks every instance with the health settings of the
    // `web` process (or the first process serving HTTP when there is no `web`).
    let health = manifest
        .processes
        .get("web")
        .filter(|p| p.http)
        .or_else(|| manifest.processes.values().find(|p| p.http))
        .map(|p| p.health.clone());
    let proxy = &manifest.proxy;
    let mut config = ProxyConfig {
        listen: proxy.listen,
        retry_after: proxy.retry_after,
        timeouts: Timeouts {
            send: proxy.send_timeout,
            body: proxy.body_timeout,
            ..Timeouts::default()
        },
        health: HealthCheckConfig::default(),
        max_connections: proxy.max_connections as usize,
        trusted_proxies: proxy
            .trusted_proxies
            .iter()
            .map(|range| lifeboat_proxy::IpRange {
                addr: range.addr,
                prefix_len: range.prefix_len,
            })
            .collect(),
        auth_failure_alert: (proxy.auth_failure_alert > 0).then(|| {
            lifeboat_proxy::AuthFailureAlert {
                failures: proxy.auth_failure_alert,
                ..Default::default()
            }
        }),
    };
    if let Some(h) = health {
        config.health = HealthCheckConfig {
            path: h.path,
            host: h.host,
            interval: h.interval,
            timeout: h.timeout,
            healthy_threshold: h.healthy_threshold,
            unhealthy_threshold: h.unhealthy_threshold,
        };
    }
    config
}

fn bind_socket(paths: &SitePaths) -> Result<UnixListener, ControlError> {
    let socket = paths.socket();
    // We hold the store's lock, so no other daemon of this site is alive: a socket file left
    // here is stale (a lifeboat that was killed).
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ControlError::io("remove the stale socket", &socket)(e)),
    }
    let listener = UnixListener::bind(&socket).map_err(ControlError::io("listen on", &socket))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(ControlError::io("set permissions of", &socket))?;
    Ok(listener)
}

async fn serve_api(site: Arc<Site>, listener: UnixListener) {
    let shutdown = site.shutdown.clone();
    let app = crate::api::router(site);
    let listener = crate::api_listener::OwnerListener::new(listener);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!("the local API stopped: {e}");
    }
}

/// Keeps the instances at the desired scale: on every change (scale command) and every few
/// seconds, plans and carries out starts and drained stops.
async fn reconcile_loop(site: Arc<Site>) {
    loop {
        let pass = site.reconcile_lock.lock().await;
        let observed: Vec<ObservedInstance> = site
            .supervisor
            .instances()
            .into_iter()
            .map(|i| ObservedInstance {
                id: i.id,
                process: i.process,
            })
            .collect();
        let actions = plan(&site.desired_here(), &observed);
        let mut stops = JoinSet::new();
        for action in actions {
            match action {
                Action::Stop { id } => {
                    let site = site.clone();
                    stops.spawn(async move {
                        // Out of the balancer first; stop only once its requests are done.
                        // (A no-op for instances that never were in the front door.)
                        site.drain(&id).await;
                        site.supervisor.stop(&id).await;
                    });
                }
                Action::Start { id, process } => start_instance(&site, id, &process),
            }
        }
        while stops.join_next().await.is_some() {}
        drop(pass);
        tokio::select! {
            _ = site.reconcile.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = site.shutdown.cancelled() => return,
        }
    }
}

fn start_instance(site: &Site, id: String, process: &str) {
    let state = site.live_state();
    if let Err(e) = start_instance_in(site, id.clone(), process, &state, false) {
        tracing::error!("{id} could not start: {e}");
        site.record(EventKind::InstanceStartFailed {
            instance: id,
            why: format!("the live state `{state}` could not be prepared: {e}"),
        });
    }
}

/// Starts an instance serving the state named `state` (shown at the site's own paths, see
/// `view.rs`); a `staged` one gets only the owner's preview traffic until the front door
/// promotes it.
pub(crate) fn start_instance_in(
    site: &Site,
    id: String,
    process: &str,
    state: &str,
    staged: bool,
) -> Result<(), ControlError> {
    let Some(spec) = site.manifest.processes.get(process) else {
        return Ok(());
    };
    let view = site.view(state, Some(process))?;
    let port =
        free_port().map_err(|e| ControlError::Supervisor(format!("no free port for {id}: {e}")))?;
    site.instance_states
        .lock()
        .expect("instance states lock")
        .insert(id.clone(), state.to_string());
    site.supervisor.start(InstanceSpec {
        id: id.clone(),
        process: process.to_string(),
        command: spec.command.clone(),
        port,
        sandbox: view.sandbox(),
        env: view.env,
        limits: resource_limits(&spec.limits),
        // The manifest accepts only names of STOP_SIGNALS, which nix knows.
        stop_signal: spec.stop_signal.parse().ok(),
    });
    if spec.http {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if staged {
            site.proxy.add_staged_backend(&id, addr);
        } else {
            site.proxy.add_backend(&id, addr);
        }
    }
    Ok(())
}

/// The manifest's `memory`, `cpu` and `pids` of a process, as the supervisor enforces them on
/// each of its instances.
fn resource_limits(limits: &lifeboat_core::manifest::ResourceLimits) -> ResourceLimits {
    ResourceLimits {
        memory_bytes: limits.memory,
        cpu_millis: limits.cpu_millis,
        pids: Some(limits.pids),
    }
}

/// A loopback port nobody listens on right now.
pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Receives the next broadcast event; once `done` is cancelled, only what is already queued.
async fn next_event<T: Clone>(
    rx: &mut broadcast::Receiver<T>,
    done: &CancellationToken,
) -> Option<T> {
    loop {
        let received = tokio::select! {
            biased;
            r = rx.recv() => r,
            _ = done.cancelled() => match rx.try_recv() {
                Ok(e) => Ok(e),
                Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                Err(_) => return None,
            },
        };
        match received {
            Ok(e) => return Some(e),
            Err(RecvError::Lagged(n)) => {
                tracing::warn!("{n} lifecycle events were missed (too many at once)")
            }
            Err(RecvError::Closed) => return None,
        }
    }
}

async fn forward_supervisor_events(
    site: Arc<Site>,
    mut rx: broadcast::Receiver<SupervisorEvent>,
    done: CancellationToken,
) {
    while let Some(event) = next_event(&mut rx, &done).await {
        let what = match event {
            SupervisorEvent::Started { id, pid } => {
                EventKind::InstanceStarted { instance: id, pid }
            }
            SupervisorEvent::Exited {
                id,
                pid,
                code,
                signal,
            } => {
                // The process is gone: no request may be sent to it while it restarts.
                site.proxy.mark_down(&id);
                EventKind::InstanceExited {
                    instance: id,
                    pid,
                    code,
                    signal,
                }
            }
            SupervisorEvent::Restarting { id, attempt, delay } => EventKind::InstanceRestarting {
                instance: id,
                attempt,
                delay_ms: delay.as_millis() as u64,
            },
            SupervisorEvent::CrashLooping { id, delay } => EventKind::InstanceCrashLooping {
                instance: id,
                delay_ms: delay.as_millis() as u64,
            },
            SupervisorEvent::Stopped { id } => EventKind::InstanceStopped { instance: id },
            SupervisorEvent::OutOfMemory {
                id,
                killed,
                limit_bytes,
            } => EventKind::InstanceOutOfMemory {
                instance: id,
                killed,
                limit_bytes,
            },
        };
        site.record(what);
    }
}

async fn forward_proxy_events(
    site: Arc<Site>,
    mut rx: broadcast::Receiver<ProxyEvent>,
    done: CancellationToken,
) {
    while let Some(event) = next_event(&mut rx, &done).await {
        let what = match event {
            ProxyEvent::HealthChanged {
                id,
                healthy,
                reason,
            } => EventKind::HealthChanged {
                instance: id,
                healthy,
                reason,
            },
            ProxyEvent::Ejected { id, reason } => EventKind::InstanceEjected {
                instance: id,
                reason,
            },
            ProxyEvent::AuthFailures {
                client,
                failures,
                within,
                path,
            } => EventKind::AuthFailures {
                client: client.to_string(),
                failures,
                seconds: within.as_secs_f64(),
                path,
            },
        };
        site.record(what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_front_door_checks_health_like_the_web_process_says() {
        let manifest = Manifest::parse(
            "lifeboat.toml",
            r#"
[site]
name = "blog"
[processes.worker]
command = "./worker"
http = false
health = { path = "/worker" }
[processes.web]
command = "./web"
health = { path = "/healthz", host = "blog.example", interval = "3s", timeout = "1s", unhealthy_threshold = 4 }
[proxy]
listen = "127.0.0.1:0"
retry_after = "2m"
send_timeout = "20s"
body_timeout = "15s"
max_connections = 512
trusted_proxies = ["10.0.0.0/8"]
"#,
        )
        .unwrap();
        let config = proxy_config(&manifest);
        assert_eq!(config.health.path, "/healthz");
        assert_eq!(config.health.host.as_deref(), Some("blog.example"));
        assert_eq!(config.health.interval, Duration::from_secs(3));
        assert_eq!(config.health.timeout, Duration::from_secs(1));
        assert_eq!(config.health.unhealthy_threshold, 4);
        assert_eq!(config.retry_after, Duration::from_secs(120));
        assert_eq!(config.timeouts.send, Duration::from_secs(20));
        assert_eq!(config.timeouts.body, Duration::from_secs(15));
        assert_eq!(config.max_connections, 512);
        assert_eq!(
            config.trusted_proxies,
            [lifeboat_proxy::IpRange {
                addr: "10.0.0.0".parse().unwrap(),
                prefix_len: 8
            }]
        );
    }

    #[test]
    fn a_taken_port_given_with_listen_names_the_flag_not_the_manifest() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut manifest = Manifest::parse(
            "lifeboat.toml",
            "[site]\nname = \"blog\"\n[processes.web]\ncommand = \"x\"\n",
        )
        .unwrap();
        manifest.proxy.listen = taken.local_addr().unwrap();
        manifest.proxy.listen_location = None;
        let err = check_listen_free(&SitePaths::new("/site"), &manifest)
            .unwrap_err()
            .to_string();
        assert!(err.contains("(from --listen)"), "{err}");
        assert!(!err.contains("lifeboat.toml"), "{err}");
        assert!(err.contains("stop the program using it"), "{err}");
    }

    #[test]
    fn a_taken_port_is_a_manifest_error_at_the_listen_key() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let text = format!(
            "[site]\nname = \"blog\"\n[processes.web]\ncommand = \"x\"\n[proxy]\nlisten = \"127.0.0.1:{port}\"\n"
        );
        let manifest = Manifest::parse("lifeboat.toml", &text).unwrap();
        let paths = SitePaths::new("/site");
        let err = check_listen_free(&paths, &manifest)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "/site/lifeboat.toml:6:10: proxy.listen: the front door can not listen on"
            ),
            "{err}"
        );
        assert!(err.ends_with("nothing was started"), "{err}");
    }

    #[test]
    fn every_stop_signal_the_manifest_accepts_is_a_signal_the_supervisor_can_send() {
        for name in lifeboat_core::manifest::STOP_SIGNALS {
            assert!(
                name.parse::<nix::sys::signal::Signal>().is_ok(),
                "{name} would silently become SIGTERM"
            );
        }
    }
}
