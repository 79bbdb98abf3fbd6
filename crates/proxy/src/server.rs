//! The front door's handle, [`Proxy`]: starts the listener and the serving threads
//! (`connection.rs`), runs a health-check task per instance, adds, removes and drains
//! instances, and shuts down gracefully (stop accepting, let every connection finish its
//! current request), with a deadline if asked.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::HeaderValue;
use hyper::server::conn::http1;
use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::backend::{Backend, BackendStatus, ProxyEvent, Registry};
use crate::config::{Maintenance, ProxyConfig};
use crate::connection::{WorkerLoad, accept_loop, serve};
use crate::drain::{CUT_GRACE, Drain};
use crate::error::ProxyError;
use crate::health::{self, HealthTracker};
use crate::idle::{Activity, Clock};
use crate::limits;
use crate::maintenance::MaintenanceGate;

/// State shared by the handle, the listener and every request.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ProxyConfig,
    pub(crate) registry: Registry,
    pub(crate) maintenance: ArcSwapOption<MaintenanceGate>,
    /// While true, new requests wait before they are routed (see [`Proxy::hold_requests`]).
    pub(crate) held: watch::Sender<bool>,
    /// What answers to writes wait for (see [`Proxy::set_write_gate`]).
    pub(crate) write_gate: ArcSwapOption<Box<dyn crate::WriteGate>>,
    /// Token that sends a request to the staged instances (see [`Proxy::set_preview_token`]).
    pub(crate) preview_token: ArcSwapOption<Box<[u8]>>,
    pub(crate) http: http1::Builder,
    /// How long a connection to an instance stays parked unused ([`crate::pool::parked_idle`]).
    pub(crate) parked_idle: Duration,
    /// The timer tick of client connections (idle, response-header, send and body timeouts).
    pub(crate) clock: Clock,
    /// Client connections allowed at once: the configured cap, lowered to what the open-file
    /// limit allows.
    pub(crate) max_connections: usize,
    /// The whole answer to a connection past the cap.
    pub(crate) busy_response: Bytes,
    /// Connections past the cap being answered and closed.
    pub(crate) turning_away: AtomicUsize,
    /// Tells the listener, health checks and idle eviction to stop.
    pub(crate) shutdown: watch::Sender<bool>,
    /// Open client connections, and a wake-up when the last one closes.
    pub(crate) connections: AtomicUsize,
    pub(crate) connections_done: Notify,
    /// Open client connections per serving thread.
    pub(crate) workers: Box<[WorkerLoad]>,
    /// What open client connections must do, told through [`Shared::signal`].
    signals: ConnectionSignals,
    /// Counts visitors' refused requests (password guessing).
    pub(crate) auth_watch: crate::auth_watch::AuthWatch,
}

/// What the owner tells every open client connection: finish and close (shutdown), close now
/// (a shutdown's deadline passed), or close if your request runs on one of these instances (a
/// drain's deadline passed). A connection polls the `Notify` once to register and then reads
/// only `epoch`, one atomic load per wake-up: polling the notification on every wake-up of a
/// busy connection showed in instruction counts.
#[derive(Debug, Default)]
struct ConnectionSignals {
    notify: Notify,
    /// Raised after every change below, before the notification.
    epoch: AtomicU64,
    stopping: AtomicBool,
    force: AtomicBool,
    /// Serials of instances whose requests are being cut.
    cuts: Mutex<Vec<u64>>,
}

/// What a client connection must do after a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// Carry on.
    Serve,
    /// Finish the request being served, then close.
    Finish,
    /// Close now, abandoning the request being served.
    Close,
}

impl Shared {
    fn stop(&self) {
        self.signals.stopping.store(true, Ordering::SeqCst);
        self.signal();
        let _ = self.shutdown.send(true);
    }

    /// Closes every client connection now.
    fn force_close(&self) {
        self.signals.force.store(true, Ordering::SeqCst);
        self.signal();
    }

    /// Closes the client connections whose request runs on one of these instances.
    pub(crate) fn cut(&self, serials: &[u64]) {
        self.lock_cuts().extend_from_slice(serials);
        self.signal();
    }

    /// Forgets a cut once its connections are gone.
    pub(crate) fn uncut(&self, serials: &[u64]) {
        self.lock_cuts().retain(|s| !serials.contains(s));
    }

    fn signal(&self) {
        self.signals.epoch.fetch_add(1, Ordering::SeqCst);
        self.signals.notify.notify_waiters();
    }

    fn lock_cuts(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.signals.cuts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The signal epoch: a connection that saw this value has nothing new to act on.
    pub(crate) fn signal_epoch(&self) -> u64 {
        self.signals.epoch.load(Ordering::SeqCst)
    }

    /// A notification of the next signal; poll it once to register.
    pub(crate) fn next_signal(&self) -> tokio::sync::futures::Notified<'_> {
        self.signals.notify.notified()
    }

    /// What a connection doing `activity` must do now.
    pub(crate) fn order_for(&self, activity: &Activity) -> Order {
        if self.signals.force.load(Ordering::SeqCst) {
            return Order::Close;
        }
        let upstream = activity.upstream();
        if activity.is_open() && upstream != 0 && self.lock_cuts().contains(&upstream) {
            return Order::Close;
        }
        if self.signals.stopping.load(Ordering::SeqCst) {
            return Order::Finish;
        }
        Order::Serve
    }

    /// Resolves once no client connection is open.
    async fn connections_closed(&self) {
        loop {
            let done = self.connections_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.connections.load(Ordering::SeqCst) == 0 {
                return;
            }
            done.await;
        }
    }
}

/// Handle to a running front door. Cheap to clone; all clones control the same proxy. When the
/// last clone is dropped the proxy stops as if [`Proxy::shutdown`] had been called (without
/// waiting for it).
#[derive(Debug, Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    listener_task: Arc<Mutex<Option<JoinHandle<()>>>>,
    _stop_on_drop: Arc<StopOnDrop>,
}

/// Stops the listener and the health checks when the last [`Proxy`] handle goes away, so a
/// forgotten proxy does not keep its port and its tasks for the life of the process.
#[derive(Debug)]
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
        self.0.registry.remove_all();
    }
}

/// Refuses a configuration the front door cannot run with, before anything is bound.
fn check(config: &ProxyConfig) -> Result<(), ProxyError> {
    if !config.health.path.starts_with('/') {
        return Err(ProxyError::Config(format!(
            "health check path {:?} must start with '/', e.g. \"/healthz\"",
            config.health.path
        )));
    }
    if let Some(host) = &config.health.host
        && (host.is_empty() || HeaderValue::from_str(host).is_err())
    {
        return Err(ProxyError::Config(format!(
            "health check host {host:?} is not a usable Host header; write a host name, e.g. \
             \"example.com\" or \"example.com:8000\""
        )));
    }
    let timeouts = [
        ("timeouts.connect", config.timeouts.connect),
        (
            "timeouts.response_headers",
            config.timeouts.response_headers,
        ),
        ("timeouts.idle", config.timeouts.idle),
        ("timeouts.send", config.timeouts.send),
        ("timeouts.body", config.timeouts.body),
        ("health.interval", config.health.interval),
        ("health.timeout", config.health.timeout),
    ];
    if let Some((name, _)) = timeouts.iter().find(|(_, d)| d.is_zero()) {
        return Err(ProxyError::Config(format!(
            "{name} is zero; give it a duration above zero, e.g. 1s"
        )));
    }
    if config.max_connections == 0 {
        return Err(ProxyError::Config(
            "max_connections is zero; allow at least one client connection, e.g. 4096".into(),
        ));
    }
    if let Some(range) = config.trusted_proxies.iter().find(|r| !r.is_valid()) {
        return Err(ProxyError::Config(format!(
            "trusted proxy {}/{} has a prefix longer than its address; write at most /32 for \
             IPv4 and /128 for IPv6",
            range.addr, range.prefix_len
        )));
    }
    Ok(())
}

impl Proxy {
    /// Binds the listen address (port 0 picks a free one) and starts serving and health-checking
    /// on the current tokio runtime. Until instances are added, every request gets a 503.
    /// Raises the process's soft open-file limit if `max_connections` needs it (see
    /// [`Proxy::max_connections`]).
    pub async fn start(config: ProxyConfig) -> Result<Proxy, ProxyError> {
        check(&config)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ProxyError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| ProxyError::Bind {
            addr: config.listen,
            source,
        })?;
        let mut http = http1::Builder::new();
        // No hyper timer: client connections get one coarse timer each (idle.rs) instead of a
        // header-read timer per request. Flattened writes (head and body copied into one
        // buffer, one write): responses are mostly small, and this costs fewer instructions than
        // gathering a vectored write.
        http.keep_alive(true).writev(false);
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut runtimes = Vec::with_capacity(workers);
        for _ in 0..workers {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(ProxyError::Runtime)?;
            runtimes.push(runtime);
        }
        let clock = Clock::new(&config.timeouts);
        let parked_idle = crate::pool::parked_idle(config.timeouts.idle);
        let max_connections = limits::fit_connections(config.max_connections);
        let busy_response = limits::busy_response(config.retry_after);
        let auth_watch = crate::auth_watch::AuthWatch::new(config.auth_failure_alert);
        let shared = Arc::new(Shared {
            auth_watch,
            config,
            registry: Registry::new(),
            maintenance: ArcSwapOption::empty(),
            write_gate: ArcSwapOption::empty(),
            held: watch::channel(false).0,
            preview_token: ArcSwapOption::empty(),
            http,
            parked_idle,
            clock,
            max_connections,
            busy_response,
            turning_away: AtomicUsize::new(0),
            shutdown: watch::channel(false).0,
            connections: AtomicUsize::new(0),
            connections_done: Notify::new(),
            workers: (0..workers).map(|_| WorkerLoad::default()).collect(),
            signals: ConnectionSignals::default(),
        });
        let mut handoffs = Vec::with_capacity(workers);
        for (index, runtime) in runtimes.into_iter().enumerate() {
            let (handoff, incoming) = mpsc::unbounded_channel();
            handoffs.push(handoff);
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("lifeboat-proxy-{index}"))
                .spawn(move || runtime.block_on(serve(shared, index, incoming)))
                .map_err(ProxyError::Runtime)?;
        }
        let listener_task = tokio::spawn(accept_loop(shared.clone(), listener, handoffs));
        tokio::spawn(evict_idle_connections(shared.clone()));
        Ok(Proxy {
            _stop_on_drop: Arc::new(StopOnDrop(shared.clone())),
            shared,
            local_addr,
            listener_task: Arc::new(Mutex::new(Some(listener_task))),
        })
    }

    /// The address the proxy really listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Client connections served at once: the configured `max_connections`, or fewer when the
    /// process's hard open-file limit does not allow two descriptors per connection (a warning
    /// is logged then).
    pub fn max_connections(&self) -> usize {
        self.shared.max_connections
    }

    /// Adds an instance (or replaces the one with the same id, live or staged). It is
    /// health-checked at once and receives traffic once its first check passes.
    pub fn add_backend(&self, id: &str, addr: SocketAddr) {
        self.add(id, addr, false, false);
    }

    /// Adds another Lifeboat front door as a backend (a standby's primary): its health checks
    /// ask that front door whether it has an instance that serves, which it answers itself,
    /// instead of passing them to one of its instances (a hung one there would make the whole
    /// primary look down from here).
    pub fn add_front_door_backend(&self, id: &str, addr: SocketAddr) {
        self.add(id, addr, false, true);
    }

    /// Adds a backend that gets only preview traffic until [`Proxy::promote_staged`] (requests
    /// carrying the token of [`Proxy::set_preview_token`]); it is health-checked like the
    /// others (its first passing check makes it healthy). Replaces an instance with the same id,
    /// live or staged.
    pub fn add_staged_backend(&self, id: &str, addr: SocketAddr) {
        self.add(id, addr, true, false);
    }

    fn add(&self, id: &str, addr: SocketAddr, staged: bool, front_door: bool) {
        let health = &self.shared.config.health;
        let backend = Backend::new(
            id,
            addr,
            HealthTracker::new(health.healthy_threshold, health.unhealthy_threshold),
            staged,
            self.shared.workers.len(),
        );
        self.shared.registry.add(backend.clone());
        let shared = self.shared.clone();
        let stop = backend.stop_signal();
        tokio::spawn(async move {
            let health = shared.config.health.clone();
            let path = health.path.clone();
            // Checked by `Proxy::start`; the instance's own address otherwise.
            let host = health
                .host
                .as_deref()
                .and_then(|host| HeaderValue::from_str(host).ok())
                .unwrap_or_else(|| {
                    HeaderValue::from_str(&backend.addr.to_string())
                        .expect("a socket address is a valid header value")
                });
            health::run_checks(
                health.interval,
                || async {
                    if front_door {
                        health::probe_front_door(backend.addr, &path, &host, health.timeout).await
                    } else {
                        health::probe_http(backend.addr, &path, &host, health.timeout).await
                    }
                },
                stop,
                |result| shared.registry.record_check(&backend, result),
            )
            .await;
        });
    }

    /// Requests carrying this token (the `X-Lifeboat-Bypass` header or `lifeboat_bypass`
    /// cookie, same rules as the maintenance bypass, constant-time compare) go to the staged
    /// backends while any staged backend is healthy; `None` turns preview routing off.
    /// Independent of maintenance mode (when maintenance is on and the request bypasses it, the
    /// same rule picks staged vs live). An empty token never matches. A preview request is
    /// retried only on staged backends, a live one only on live backends. The token never
    /// reaches an instance: the header and the cookie are removed from every request.
    pub fn set_preview_token(&self, token: Option<String>) {
        self.shared
            .preview_token
            .store(token.map(|t| Arc::new(t.into_bytes().into_boxed_slice())));
    }

    /// Atomically makes every staged backend live and takes every previously live backend out
    /// of the balancer: every request routed after the call goes to the new set only. The
    /// returned [`Drain`] resolves, with the removed ids, once the old backends' in-flight
    /// requests are done (same drain as [`Proxy::remove_backend`]; bound it with
    /// [`Drain::within`]). Turns the preview token off. Promoting staged backends that are not
    /// healthy yet leaves the site without a healthy instance (503) until they pass a check:
    /// wait for them first.
    pub fn promote_staged(&self) -> Drain<Vec<String>> {
        let removed = self.shared.registry.promote_staged();
        self.shared.preview_token.store(None);
        let ids = removed.iter().map(|b| b.id.clone()).collect();
        Drain::new(self.shared.clone(), removed, ids)
    }

    /// Removes all staged backends (a cancelled rewind), draining them: the returned
    /// [`Drain`] resolves once their in-flight requests are done. The preview token stays as it
    /// is; requests carrying it go to the live backends.
    pub fn discard_staged(&self) -> Drain<()> {
        let removed = self.shared.registry.discard_staged();
        Drain::new(self.shared.clone(), removed, ())
    }

    /// The owner knows the instance died (its process exited): no new request goes to it from
    /// now on; it returns once its health checks pass again.
    pub fn mark_down(&self, id: &str) {
        if let Some(backend) = self.shared.registry.find(id) {
            self.shared
                .registry
                .eject(&backend, "marked down by its owner".to_string());
        }
    }

    /// Stops routing new requests to the instance now. The returned [`Drain`] resolves once the
    /// requests it was already serving have finished, response bodies included (at once for an
    /// unknown id); then it is safe to stop the instance. A client that reads a long response
    /// slowly keeps it waiting: bound the wait with [`Drain::within`], e.g.
    /// `proxy.remove_backend("web-3").within(stop_timeout).await`, which closes the
    /// connections of the requests still running at the deadline. Open WebSocket tunnels are
    /// not waited for.
    pub fn remove_backend(&self, id: &str) -> Drain<()> {
        let removed = self.shared.registry.remove(id);
        Drain::new(self.shared.clone(), removed.into_iter().collect(), ())
    }

    /// Turns maintenance mode on (`Some`) or off (`None`). Each request sees either the old or
    /// the new setting, whole; open connections are kept.
    pub fn set_maintenance(&self, maintenance: Option<Maintenance>) {
        let gate =
            maintenance.map(|m| Arc::new(MaintenanceGate::new(m, self.shared.config.retry_after)));
        self.shared.maintenance.store(gate);
    }

    /// Holds every new request before it is routed (`true`) until released (`false`), for at
    /// most [`crate::forward::MAX_HOLD`] each: the owner moves where requests go (a cluster's
    /// switchover) without failing any. Requests already routed are not affected.
    pub fn hold_requests(&self, hold: bool) {
        self.shared.held.send_replace(hold);
    }

    /// Whether new requests are being held ([`Proxy::hold_requests`]).
    pub fn requests_held(&self) -> bool {
        *self.shared.held.borrow()
    }

    /// Makes every answer to a request that may write (not GET, HEAD, OPTIONS, TRACE) wait
    /// for `gate` once the instance sent its head; `None` lets them through at once. Requests
    /// already waiting keep the gate they found.
    pub fn set_write_gate(&self, gate: Option<Box<dyn crate::WriteGate>>) {
        self.shared.write_gate.store(gate.map(Arc::new));
    }

    /// Whether maintenance mode is on.
    pub fn maintenance_on(&self) -> bool {
        self.shared.maintenance.load().is_some()
    }

    /// Every instance and what the front door knows about it, in the order they were added.
    pub fn backends(&self) -> Vec<BackendStatus> {
        self.shared.registry.statuses()
    }

    /// Health changes and ejections from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ProxyEvent> {
        self.shared.registry.subscribe()
    }

    /// Stops accepting connections, lets every open connection finish the request it is
    /// serving, then stops health checks. The serving threads end once their connections are
    /// done; open WebSocket tunnels end with them. Idempotent. A client that never reads its
    /// response keeps this waiting until the send timeout closes it: bound the wait with
    /// [`Proxy::shutdown_within`].
    pub async fn shutdown(&self) {
        self.stop_accepting().await;
        self.shared.connections_closed().await;
        self.shared.registry.remove_all();
    }

    /// Like [`Proxy::shutdown`], but waits for open connections for at most `grace`; then
    /// closes the ones still open (their requests lose their responses) and resolves once they
    /// are gone, at most a moment later. Returns how many connections were closed that way (0
    /// when all finished in time).
    pub async fn shutdown_within(&self, grace: Duration) -> usize {
        self.stop_accepting().await;
        let mut cut = 0;
        if tokio::time::timeout(grace, self.shared.connections_closed())
            .await
            .is_err()
        {
            cut = self.shared.connections.load(Ordering::SeqCst);
            self.shared.force_close();
            if tokio::time::timeout(CUT_GRACE, self.shared.connections_closed())
                .await
                .is_err()
            {
                tracing::warn!(
                    open = self.shared.connections.load(Ordering::SeqCst),
                    "client connections did not close within {CUT_GRACE:?}; not waiting for them"
                );
            }
        }
        self.shared.registry.remove_all();
        cut
    }

    async fn stop_accepting(&self) {
        self.shared.stop();
        let listener_task = self
            .listener_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = listener_task {
            let _ = task.await;
        }
    }
}

/// Closes instance connections that stayed parked unused longer than [`Shared::parked_idle`].
async fn evict_idle_connections(shared: Arc<Shared>) {
    let idle = shared.parked_idle;
    let mut shutdown = shared.shutdown.subscribe();
    // A parked connection is closed between `idle` and 1.25 x `idle` after its last use.
    let mut ticker = tokio::time::interval((idle / 4).max(Duration::from_millis(100)));
    loop {
        tokio::select! {
            _ = ticker.tick() => shared.registry.each(|backend| backend.evict_idle(idle)),
            _ = crate::health::stopped(&mut shutdown) => return,
        }
    }
}
