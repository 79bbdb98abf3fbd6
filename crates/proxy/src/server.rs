//! The front door's listener and its handle, [`Proxy`]: accepts client connections, serves
//! HTTP/1.1 on them with keep-alive, runs a health-check task per instance, and shuts down
//! gracefully (stop accepting, let every connection finish its current request).
//!
//! Serving is thread-per-core: the accept loop (on the caller's runtime) hands each client
//! connection to the serving thread with the fewest open connections; each serving thread runs
//! its own single-threaded runtime and keeps its own instance connections, so a request, its
//! instance connection and their tasks stay on one thread and never wake another one.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::backend::{Backend, BackendStatus, ProxyEvent, Registry};
use crate::config::{Maintenance, ProxyConfig};
use crate::error::ProxyError;
use crate::forward::{self, Client};
use crate::health::{self, HealthTracker};
use crate::idle::{Activity, Clock, IdleWatch};
use crate::maintenance::MaintenanceGate;

/// State shared by the handle, the listener and every request.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ProxyConfig,
    pub(crate) registry: Registry,
    pub(crate) maintenance: ArcSwapOption<MaintenanceGate>,
    /// Token that sends a request to the staged instances (see [`Proxy::set_preview_token`]).
    pub(crate) preview_token: ArcSwapOption<Box<[u8]>>,
    http: http1::Builder,
    /// The timer tick of client connections (idle and response-header timeouts).
    pub(crate) clock: Clock,
    shutdown: watch::Sender<bool>,
    /// Set just before `shutdown` is sent; cheap to read on every poll of a connection.
    stopping: AtomicBool,
    connections: AtomicUsize,
    connections_done: Notify,
    /// Open client connections per serving thread.
    workers: Box<[WorkerLoad]>,
}

#[derive(Debug, Default)]
struct WorkerLoad {
    open: AtomicUsize,
    idle: Notify,
}

/// A client connection on its way from the accept loop to a serving thread.
type Handoff = (std::net::TcpStream, SocketAddr);

impl Shared {
    fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
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

impl Proxy {
    /// Binds the listen address (port 0 picks a free one) and starts serving and health-checking
    /// on the current tokio runtime. Until instances are added, every request gets a 503.
    pub async fn start(config: ProxyConfig) -> Result<Proxy, ProxyError> {
        if !config.health.path.starts_with('/') {
            return Err(ProxyError::Config(format!(
                "health check path {:?} must start with '/', e.g. \"/healthz\"",
                config.health.path
            )));
        }
        let timeouts = [
            ("timeouts.connect", config.timeouts.connect),
            (
                "timeouts.response_headers",
                config.timeouts.response_headers,
            ),
            ("timeouts.idle", config.timeouts.idle),
            ("health.interval", config.health.interval),
            ("health.timeout", config.health.timeout),
        ];
        if let Some((name, _)) = timeouts.iter().find(|(_, d)| d.is_zero()) {
            return Err(ProxyError::Config(format!(
                "{name} is zero; give it a duration above zero, e.g. 1s"
            )));
        }
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
        // No hyper timer: client connections get one coarse idle watch each (idle.rs) instead
        // of a header-read timer per request. Flattened writes (head and body copied into one buffer, one write): responses are
        // mostly small, and this costs fewer instructions than gathering a vectored write.
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
        let clock = Clock::new(config.timeouts.idle, config.timeouts.response_headers);
        let shared = Arc::new(Shared {
            config,
            registry: Registry::new(),
            maintenance: ArcSwapOption::empty(),
            preview_token: ArcSwapOption::empty(),
            http,
            clock,
            shutdown: watch::channel(false).0,
            stopping: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            connections_done: Notify::new(),
            workers: (0..workers).map(|_| WorkerLoad::default()).collect(),
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

    /// Adds an instance (or replaces the one with the same id, live or staged). It is
    /// health-checked at once and receives traffic once its first check passes.
    pub fn add_backend(&self, id: &str, addr: SocketAddr) {
        self.add(id, addr, false);
    }

    /// Adds a backend that gets only preview traffic until [`Proxy::promote_staged`] (requests
    /// carrying the token of [`Proxy::set_preview_token`]); it is health-checked like the
    /// others (its first passing check makes it healthy). Replaces an instance with the same id,
    /// live or staged.
    pub fn add_staged_backend(&self, id: &str, addr: SocketAddr) {
        self.add(id, addr, true);
    }

    fn add(&self, id: &str, addr: SocketAddr, staged: bool) {
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
            health::run_checks(
                health.interval,
                || health::probe_http(backend.addr, &path, health.timeout),
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
    /// retried only on staged backends, a live one only on live backends.
    pub fn set_preview_token(&self, token: Option<String>) {
        self.shared
            .preview_token
            .store(token.map(|t| Arc::new(t.into_bytes().into_boxed_slice())));
    }

    /// Atomically makes every staged backend live and takes every previously live backend out
    /// of the balancer: every request routed after the call goes to the new set only. The
    /// returned future resolves, with the removed ids, once the old backends' in-flight
    /// requests are done (same drain as [`Proxy::remove_backend`]). Turns the preview token
    /// off. Promoting staged backends that are not healthy yet leaves the site without a
    /// healthy instance (503) until they pass a check: wait for them first.
    pub fn promote_staged(&self) -> impl Future<Output = Vec<String>> + Send + 'static {
        let removed = self.shared.registry.promote_staged();
        self.shared.preview_token.store(None);
        async move {
            for backend in &removed {
                backend.drained().await;
            }
            removed.iter().map(|b| b.id.clone()).collect()
        }
    }

    /// Removes all staged backends (a cancelled rewind), draining them: the returned future
    /// resolves once their in-flight requests are done. The preview token stays as it is;
    /// requests carrying it go to the live backends.
    pub fn discard_staged(&self) -> impl Future<Output = ()> + Send + 'static {
        let removed = self.shared.registry.discard_staged();
        async move {
            for backend in &removed {
                backend.drained().await;
            }
        }
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

    /// Stops routing new requests to the instance now. The returned future resolves once the
    /// requests it was already serving have finished, response bodies included (at once for an
    /// unknown id); then it is safe to stop the instance. A client streaming a long response
    /// keeps it waiting: bound the wait with your stop timeout. Open WebSocket tunnels are not
    /// waited for.
    pub fn remove_backend(&self, id: &str) -> impl Future<Output = ()> + Send + 'static {
        let removed = self.shared.registry.remove(id);
        async move {
            if let Some(backend) = removed {
                backend.drained().await;
            }
        }
    }

    /// Turns maintenance mode on (`Some`) or off (`None`). Each request sees either the old or
    /// the new setting, whole; open connections are kept.
    pub fn set_maintenance(&self, maintenance: Option<Maintenance>) {
        let gate =
            maintenance.map(|m| Arc::new(MaintenanceGate::new(m, self.shared.config.retry_after)));
        self.shared.maintenance.store(gate);
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
    /// done; open WebSocket tunnels end with them. Idempotent.
    pub async fn shutdown(&self) {
        self.shared.stop();
        let listener_task = self
            .listener_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = listener_task {
            let _ = task.await;
        }
        loop {
            let done = self.shared.connections_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.shared.connections.load(Ordering::SeqCst) == 0 {
                break;
            }
            done.await;
        }
        self.shared.registry.remove_all();
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    handoffs: Vec<mpsc::UnboundedSender<Handoff>>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut next = 0;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = crate::health::stopped(&mut shutdown) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                // The least busy serving thread; ties go round-robin.
                next += 1;
                let n = shared.workers.len();
                let index = (0..n)
                    .map(|i| (next + i) % n)
                    .min_by_key(|&i| shared.workers[i].open.load(Ordering::Relaxed))
                    .unwrap_or(0);
                // Counted before it is handed over, so a shutdown waits for it.
                shared.connections.fetch_add(1, Ordering::SeqCst);
                shared.workers[index].open.fetch_add(1, Ordering::SeqCst);
                let handed = stream
                    .into_std()
                    .map_err(|error| tracing::warn!(%error, "handing a connection over failed"))
                    .ok()
                    .and_then(|stream| handoffs[index].send((stream, peer)).ok());
                if handed.is_none() {
                    connection_closed(&shared, index);
                }
            }
            Err(error) => {
                // Out of file descriptors or a connection reset during accept: keep serving the
                // connections we have and try again shortly.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// One serving thread: serves the connections handed to it until the accept loop stops, then
/// until they have finished.
async fn serve(shared: Arc<Shared>, index: usize, mut incoming: mpsc::UnboundedReceiver<Handoff>) {
    while let Some((stream, peer)) = incoming.recv().await {
        match TcpStream::from_std(stream) {
            Ok(stream) => {
                tokio::spawn(serve_connection(shared.clone(), stream, peer, index));
            }
            Err(error) => {
                tracing::warn!(%error, "taking over a client connection failed");
                connection_closed(&shared, index);
            }
        }
    }
    let load = &shared.workers[index];
    loop {
        let idle = load.idle.notified();
        tokio::pin!(idle);
        idle.as_mut().enable();
        if load.open.load(Ordering::SeqCst) == 0 {
            return;
        }
        idle.await;
    }
}

fn connection_closed(shared: &Shared, index: usize) {
    let load = &shared.workers[index];
    if load.open.fetch_sub(1, Ordering::SeqCst) == 1 {
        load.idle.notify_waiters();
    }
    if shared.connections.fetch_sub(1, Ordering::SeqCst) == 1 {
        shared.connections_done.notify_waiters();
    }
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, index: usize) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::default());
    let mut idle = IdleWatch::new(activity.clone(), shared.clock);
    let client = Arc::new(Client::new(peer.ip(), index, activity));
    let service_shared = shared.clone();
    let service = service_fn(move |request| {
        let busy = client.activity.begin();
        let handled = forward::handle(service_shared.clone(), client.clone(), request);
        async move {
            let response = handled.await?;
            Ok::<_, Infallible>(response.map(|body| body.held_by(busy)))
        }
    });
    let connection = shared
        .http
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let mut shutdown = shared.shutdown.subscribe();
    let stopped = crate::health::stopped(&mut shutdown);
    tokio::pin!(stopped);
    // The shutdown signal is polled once to register this task, then only once `stopping` is
    // set: polling it on every wake-up of a busy connection showed in instruction counts.
    let mut registered = false;
    let finished = std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = connection.as_mut().poll(cx) {
            return Poll::Ready(Some(result));
        }
        if idle.poll_idle(cx).is_ready() {
            // Nothing is in flight: closing the connection loses nothing.
            return Poll::Ready(Some(Ok(())));
        }
        if (!registered || shared.stopping.load(Ordering::SeqCst))
            && stopped.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(None);
        }
        registered = true;
        Poll::Pending
    })
    .await;
    let result = match finished {
        Some(result) => result,
        None => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "client connection ended with an error");
    }
    connection_closed(&shared, index);
}

/// Closes instance connections that stayed unused longer than the idle timeout.
async fn evict_idle_connections(shared: Arc<Shared>) {
    let idle = shared.config.timeouts.idle;
    let mut shutdown = shared.shutdown.subscribe();
    let mut ticker = tokio::time::interval((idle / 2).max(Duration::from_millis(100)));
    loop {
        tokio::select! {
            _ = ticker.tick() => shared.registry.each(|backend| backend.evict_idle(idle)),
            _ = crate::health::stopped(&mut shutdown) => return,
        }
    }
}
