//! The instances behind the front door and which of them receive traffic.
//!
//! Writers (health results, ejections, add/remove) take the registry lock and publish a fresh
//! routing snapshot; the request path only loads that snapshot (no lock) and counts itself in
//! the chosen instance's in-flight number, which is what draining waits on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, broadcast, watch};

use crate::health::{BackendHealth, HealthTracker, reason_of};
use crate::pool::{Pool, Sender};

/// What the front door knows about one instance, for status displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStatus {
    /// The id given to [`crate::Proxy::add_backend`], e.g. `web-1`.
    pub id: String,
    /// Where the instance listens.
    pub addr: SocketAddr,
    /// Result of the health checks.
    pub health: BackendHealth,
    /// Taken out of rotation by a failed connect or [`crate::Proxy::mark_down`]; it returns once
    /// its health checks pass again.
    pub ejected: bool,
    /// Requests sent to it whose responses have not finished yet.
    pub in_flight: usize,
    /// Added with [`crate::Proxy::add_staged_backend`] and not promoted yet: it serves only
    /// requests carrying the preview token.
    pub staged: bool,
    /// The last health check's result in words, `None` before the first check: `health check
    /// passed`, or why it failed: `GET /healthz (Host: 127.0.0.1:40001) answered 400 Bad
    /// Request`, `GET /healthz took longer than 500ms`, `connect to 127.0.0.1:40001 failed:
    /// Connection refused (os error 111)`. Always the latest check, so it says why an
    /// unhealthy instance is unhealthy now.
    pub last_check: Option<String>,
}

/// Something that changed about an instance, as told to [`crate::Proxy::subscribe`]rs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyEvent {
    /// Health checks changed their verdict (or an ejected instance came back), or an unhealthy
    /// instance now fails its checks for another reason than the one last told (confirmed by
    /// as many failed checks in a row as make an instance unhealthy); then `healthy` is false
    /// again and `reason` is the new one.
    HealthChanged {
        /// Instance id.
        id: String,
        /// Whether it now receives traffic.
        healthy: bool,
        /// Why, in words: the result of the check that decided.
        reason: String,
    },
    /// Taken out of rotation at once, without waiting for health checks.
    Ejected {
        /// Instance id.
        id: String,
        /// Why, in words.
        reason: String,
    },
    /// One visitor address had this many requests refused as unauthorized (401/403) within
    /// `within` (password guessing?); at most once per address per cooldown.
    AuthFailures {
        /// The visitor's address (from X-Forwarded-For only behind a trusted proxy).
        client: std::net::IpAddr,
        /// Refused requests counted.
        failures: u32,
        /// Over how long.
        within: std::time::Duration,
        /// The path of the last one.
        path: String,
    },
}

#[derive(Debug)]
struct Verdict {
    tracker: HealthTracker,
    ejected: bool,
    last_check: Option<String>,
}

/// Serial numbers of instances, unique for the life of the process: a connection remembers the
/// instance its request went to by number (a relaxed store per request, no reference count).
static SERIALS: AtomicU64 = AtomicU64::new(1);

/// One instance.
#[derive(Debug)]
pub(crate) struct Backend {
    pub(crate) id: String,
    pub(crate) addr: SocketAddr,
    /// Unique for the life of the process, never 0.
    pub(crate) serial: u64,
    verdict: Mutex<Verdict>,
    removed: AtomicBool,
    /// Serves only preview traffic; cleared (under the registry lock) by a promotion.
    staged: AtomicBool,
    in_flight: AtomicUsize,
    drained: Notify,
    /// Parked connections, one pool per serving thread: a request and its instance connection
    /// stay on one thread.
    pools: Box<[Pool]>,
    stop_checks: watch::Sender<bool>,
    /// Woken when the instance is found unhealthy or ejected: a request waiting on it that
    /// may safely be sent again goes to another instance instead of waiting for a hung one.
    pub(crate) went_down: Notify,
}

impl Backend {
    pub(crate) fn new(
        id: &str,
        addr: SocketAddr,
        tracker: HealthTracker,
        staged: bool,
        workers: usize,
    ) -> Arc<Self> {
        Arc::new(Backend {
            id: id.to_string(),
            addr,
            serial: SERIALS.fetch_add(1, Ordering::Relaxed),
            verdict: Mutex::new(Verdict {
                tracker,
                ejected: false,
                last_check: None,
            }),
            removed: AtomicBool::new(false),
            staged: AtomicBool::new(staged),
            in_flight: AtomicUsize::new(0),
            drained: Notify::new(),
            pools: (0..workers.max(1)).map(|_| Pool::default()).collect(),
            stop_checks: watch::channel(false).0,
            went_down: Notify::new(),
        })
    }

    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop_checks.subscribe()
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    fn is_staged(&self) -> bool {
        self.staged.load(Ordering::SeqCst)
    }

    fn routable(&self) -> bool {
        let verdict = self.verdict.lock().unwrap_or_else(|e| e.into_inner());
        !self.removed.load(Ordering::SeqCst)
            && !verdict.ejected
            && verdict.tracker.health() == BackendHealth::Healthy
    }

    fn status(&self) -> BackendStatus {
        let verdict = self.verdict.lock().unwrap_or_else(|e| e.into_inner());
        BackendStatus {
            id: self.id.clone(),
            addr: self.addr,
            health: verdict.tracker.health(),
            ejected: verdict.ejected,
            in_flight: self.in_flight(),
            staged: self.is_staged(),
            last_check: verdict.last_check.clone(),
        }
    }

    /// A connection parked by serving thread `worker`, if any.
    pub(crate) fn pooled_connection(
        &self,
        worker: usize,
        idle_timeout: Duration,
    ) -> Option<Sender> {
        self.pools[worker % self.pools.len()].take(idle_timeout)
    }

    /// Parks a connection of serving thread `worker` whose last response was read to the end.
    pub(crate) fn return_connection(&self, worker: usize, sender: Sender) {
        if !self.removed.load(Ordering::Relaxed) {
            self.pools[worker % self.pools.len()].put(sender);
        }
    }

    /// Closes parked connections: after an error on one, the others are suspect too.
    pub(crate) fn forget_connections(&self) {
        for pool in &self.pools {
            pool.clear();
        }
    }

    pub(crate) fn evict_idle(&self, idle_timeout: Duration) {
        for pool in &self.pools {
            pool.evict_idle(idle_timeout);
        }
    }

    /// Waits until no request sent to this instance is still running.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Marks one request as running on a backend until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Backend>);

impl InFlight {
    /// Counts a request on `backend`, unless it was removed meanwhile. The counter is raised
    /// before `removed` is read, and `remove` sets `removed` before reading the counter
    /// (both SeqCst), so a drain can never miss a request that went ahead.
    pub(crate) fn enter(backend: &Arc<Backend>) -> Option<InFlight> {
        backend.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(backend.clone());
        if backend.removed.load(Ordering::SeqCst) {
            return None;
        }
        Some(guard)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

/// Which set of instances a request may go to, decided once per request (see
/// [`Registry::lane`]) so that its retries stay in the same set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lane {
    preview: bool,
    /// The promotion count when the lane was decided: after a promotion the staged instances
    /// are the live ones, and every request goes to them.
    generation: u64,
}

/// The instances that receive traffic, published as one snapshot so that a promotion switches
/// both sets at once.
#[derive(Debug, Default)]
struct Routes {
    live: Vec<Arc<Backend>>,
    staged: Vec<Arc<Backend>>,
    generation: u64,
}

/// All instances, and the snapshot of those that receive traffic.
#[derive(Debug)]
pub(crate) struct Registry {
    all: Mutex<Vec<Arc<Backend>>>,
    routes: ArcSwap<Routes>,
    events: broadcast::Sender<ProxyEvent>,
}

impl Registry {
    pub(crate) fn new() -> Self {
        Registry {
            all: Mutex::new(Vec::new()),
            routes: ArcSwap::from_pointee(Routes::default()),
            events: broadcast::channel(1024).0,
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<ProxyEvent> {
        self.events.subscribe()
    }

    /// Where events go (for watchers outside the registry).
    pub(crate) fn events(&self) -> &broadcast::Sender<ProxyEvent> {
        &self.events
    }

    /// The lane of a new request: the staged instances when it `wants_preview` and at least one
    /// of them is healthy, the live ones otherwise. `wants_preview` is only called when some
    /// staged instance is healthy.
    pub(crate) fn lane(&self, wants_preview: impl FnOnce() -> bool) -> Lane {
        let routes = self.routes.load();
        Lane {
            preview: !routes.staged.is_empty() && wants_preview(),
            generation: routes.generation,
        }
    }

    /// How many live instances take requests now (healthy, not ejected).
    pub(crate) fn serving(&self) -> usize {
        self.routes.load().live.len()
    }

    /// Picks an instance of `lane` for a request, skipping `tried`, in round-robin order.
    ///
    /// Plain round-robin, the default of nginx, HAProxy and Envoy. Sending each request to the
    /// less busy of two neighbours (by requests in flight) widened the latency tail two to three
    /// times on a loaded machine: the benchmark's p99 went from nginx's ~9 ms to ~27 ms, and
    /// sometimes one instance got 2 % of the requests while the other two were overloaded
    /// (`bench/README.md`, session 5). Passing over an instance only when it had more than twice
    /// its neighbour's requests in flight did as badly. Dead and hung instances are still taken
    /// out by failed connects and health checks.
    pub(crate) fn pick(&self, lane: Lane, tried: &[Arc<Backend>]) -> Option<Arc<Backend>> {
        let routes = self.routes.load();
        let routes = if lane.preview && lane.generation == routes.generation {
            &routes.staged
        } else {
            &routes.live
        };
        let n = routes.len();
        if n == 0 {
            return None;
        }
        // Each serving thread keeps its own round-robin cursor: a shared one was a cache line
        // written by every request on every core.
        thread_local! {
            static NEXT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
        }
        let start = NEXT.with(|next| {
            let start = next.get();
            next.set(start.wrapping_add(1));
            start
        });
        (0..n)
            .map(|i| &routes[(start + i) % n])
            .find(|b| !tried.iter().any(|t| Arc::ptr_eq(t, b)))
            .cloned()
    }

    /// Makes every staged instance live and retires every live one, in one snapshot; returns
    /// the retired ones so the caller can wait for their drain.
    pub(crate) fn promote_staged(&self) -> Vec<Arc<Backend>> {
        let mut all = self.lock_all();
        let (staged, live): (Vec<_>, Vec<_>) = all.drain(..).partition(|b| b.is_staged());
        for backend in &staged {
            backend.staged.store(false, Ordering::SeqCst);
        }
        *all = staged;
        let generation = self.routes.load().generation + 1;
        // The new snapshot first, then the retirement: a request that meets a retired instance
        // then always finds the new ones on its next pick (the other order left a moment in
        // which every instance it could pick was retired, and it got a 503).
        self.publish_generation(&all, generation);
        for backend in &live {
            retire(backend);
        }
        live
    }

    /// Retires every staged instance; returns them so the caller can wait for their drain.
    pub(crate) fn discard_staged(&self) -> Vec<Arc<Backend>> {
        let mut all = self.lock_all();
        let (staged, live): (Vec<_>, Vec<_>) = all.drain(..).partition(|b| b.is_staged());
        *all = live;
        self.publish(&all);
        for backend in &staged {
            retire(backend);
        }
        staged
    }

    pub(crate) fn statuses(&self) -> Vec<BackendStatus> {
        self.lock_all().iter().map(|b| b.status()).collect()
    }

    /// Adds (or replaces) an instance; returns the replaced one.
    pub(crate) fn add(&self, backend: Arc<Backend>) -> Option<Arc<Backend>> {
        let mut all = self.lock_all();
        let replaced = all
            .iter()
            .position(|b| b.id == backend.id)
            .map(|i| all.remove(i));
        all.push(backend);
        self.publish(&all);
        if let Some(old) = &replaced {
            retire(old);
        }
        replaced
    }

    /// Stops routing to an instance at once; returns it so the caller can wait for its drain.
    pub(crate) fn remove(&self, id: &str) -> Option<Arc<Backend>> {
        let mut all = self.lock_all();
        let backend = all.iter().position(|b| b.id == id).map(|i| all.remove(i))?;
        self.publish(&all);
        retire(&backend);
        Some(backend)
    }

    pub(crate) fn remove_all(&self) {
        let mut all = self.lock_all();
        let removed: Vec<_> = all.drain(..).collect();
        self.publish(&all);
        for backend in &removed {
            retire(backend);
        }
    }

    /// Applies one health check result; answers whether all is well (the check passed and the
    /// instance is in rotation).
    pub(crate) fn record_check(&self, backend: &Arc<Backend>, result: Result<(), String>) -> bool {
        let passed = result.is_ok();
        let all = self.lock_all();
        if backend.removed.load(Ordering::SeqCst) {
            return true;
        }
        let event = {
            let mut verdict = backend.verdict.lock().unwrap_or_else(|e| e.into_inner());
            verdict.last_check = Some(reason_of(&result));
            let was_ejected = verdict.ejected;
            let told = verdict.tracker.record_result(&result);
            if verdict.tracker.health() == BackendHealth::Healthy {
                verdict.ejected = false;
            }
            let readmitted = was_ejected && !verdict.ejected;
            match (told, readmitted) {
                (Some(told), _) => Some(ProxyEvent::HealthChanged {
                    id: backend.id.clone(),
                    healthy: told.health == BackendHealth::Healthy,
                    reason: told.reason,
                }),
                (None, true) => Some(ProxyEvent::HealthChanged {
                    id: backend.id.clone(),
                    healthy: true,
                    reason: reason_of(&result),
                }),
                (None, false) => None,
            }
        };
        if let Some(event) = event {
            if matches!(event, ProxyEvent::HealthChanged { healthy: false, .. }) {
                backend.forget_connections();
                backend.went_down.notify_waiters();
            }
            self.publish(&all);
            let _ = self.events.send(event);
        }
        passed && backend.routable()
    }

    /// Takes an instance out of rotation now (failed connect, or its owner saw it die).
    pub(crate) fn eject(&self, backend: &Arc<Backend>, reason: String) {
        let all = self.lock_all();
        if backend.removed.load(Ordering::SeqCst) {
            return;
        }
        {
            let mut verdict = backend.verdict.lock().unwrap_or_else(|e| e.into_inner());
            if verdict.ejected {
                return;
            }
            verdict.ejected = true;
            verdict.tracker.eject(&reason);
        }
        backend.forget_connections();
        backend.went_down.notify_waiters();
        self.publish(&all);
        let _ = self.events.send(ProxyEvent::Ejected {
            id: backend.id.clone(),
            reason,
        });
    }

    pub(crate) fn find(&self, id: &str) -> Option<Arc<Backend>> {
        self.lock_all().iter().find(|b| b.id == id).cloned()
    }

    pub(crate) fn each(&self, mut f: impl FnMut(&Arc<Backend>)) {
        for backend in self.lock_all().iter() {
            f(backend);
        }
    }

    fn lock_all(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Backend>>> {
        self.all.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes the routing snapshot; called with the registry lock held so snapshots are
    /// published in the order the changes happened.
    fn publish(&self, all: &[Arc<Backend>]) {
        self.publish_generation(all, self.routes.load().generation);
    }

    fn publish_generation(&self, all: &[Arc<Backend>], generation: u64) {
        let (staged, live) = all
            .iter()
            .filter(|b| b.routable())
            .cloned()
            .partition(|b| b.is_staged());
        self.routes.store(Arc::new(Routes {
            live,
            staged,
            generation,
        }));
    }
}

fn retire(backend: &Backend) {
    backend.removed.store(true, Ordering::SeqCst);
    let _ = backend.stop_checks.send(true);
    backend.forget_connections();
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: Lane = Lane {
        preview: false,
        generation: 0,
    };

    fn backend(id: &str, port: u16) -> Arc<Backend> {
        Backend::new(
            id,
            SocketAddr::from(([127, 0, 0, 1], port)),
            HealthTracker::new(1, 2),
            false,
            1,
        )
    }

    fn staged(registry: &Registry, id: &str, port: u16) -> Arc<Backend> {
        let b = Backend::new(
            id,
            SocketAddr::from(([127, 0, 0, 1], port)),
            HealthTracker::new(1, 2),
            true,
            1,
        );
        registry.add(b.clone());
        b
    }

    fn healthy_registry(ids: &[&str]) -> (Registry, Vec<Arc<Backend>>) {
        let registry = Registry::new();
        let backends: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| backend(id, 1000 + i as u16))
            .collect();
        for b in &backends {
            registry.add(b.clone());
            registry.record_check(b, Ok(()));
        }
        (registry, backends)
    }

    #[test]
    fn a_new_instance_gets_no_traffic_until_its_first_check_passes() {
        let registry = Registry::new();
        let b = backend("web-1", 1);
        registry.add(b.clone());
        assert!(registry.pick(LIVE, &[]).is_none());
        registry.record_check(&b, Ok(()));
        assert_eq!(registry.pick(LIVE, &[]).unwrap().id, "web-1");
    }

    #[test]
    fn traffic_is_spread_evenly_over_all_healthy_instances() {
        let (registry, backends) = healthy_registry(&["a", "b", "c"]);
        // Requests still running on an instance do not change its share.
        let _busy: Vec<_> = (0..5)
            .map(|_| InFlight::enter(&backends[0]).unwrap())
            .collect();
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..30 {
            *seen
                .entry(registry.pick(LIVE, &[]).unwrap().id.clone())
                .or_insert(0) += 1;
        }
        assert_eq!(
            seen,
            [
                ("a".to_string(), 10),
                ("b".to_string(), 10),
                ("c".to_string(), 10)
            ]
            .into(),
        );
    }

    #[test]
    fn an_ejected_instance_is_skipped_at_once_and_returns_after_a_passed_check() {
        let (registry, backends) = healthy_registry(&["a", "b"]);
        let mut events = registry.subscribe();
        registry.eject(&backends[0], "connect refused".into());
        assert!(matches!(events.try_recv(), Ok(ProxyEvent::Ejected { id, .. }) if id == "a"));
        for _ in 0..10 {
            assert_eq!(registry.pick(LIVE, &[]).unwrap().id, "b");
        }
        assert!(registry.statuses()[0].ejected);
        registry.record_check(&backends[0], Ok(()));
        assert!(matches!(
            events.try_recv(),
            Ok(ProxyEvent::HealthChanged { id, healthy: true, .. }) if id == "a"
        ));
        assert!(!registry.statuses()[0].ejected);
        assert!((0..10).any(|_| registry.pick(LIVE, &[]).unwrap().id == "a"));
    }

    #[test]
    fn tried_instances_are_not_picked_again() {
        let (registry, backends) = healthy_registry(&["a", "b"]);
        for _ in 0..10 {
            assert_eq!(registry.pick(LIVE, &backends[..1]).unwrap().id, "b");
        }
        assert!(registry.pick(LIVE, &backends).is_none());
    }

    #[test]
    fn a_removed_instance_takes_no_new_request() {
        let (registry, backends) = healthy_registry(&["a"]);
        let removed = registry.remove("a").unwrap();
        assert!(registry.pick(LIVE, &[]).is_none());
        assert!(InFlight::enter(&backends[0]).is_none());
        assert_eq!(removed.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn draining_waits_for_the_last_request() {
        let (registry, backends) = healthy_registry(&["a"]);
        let request = InFlight::enter(&backends[0]).unwrap();
        let removed = registry.remove("a").unwrap();
        let drain = tokio::spawn(async move { removed.drained().await });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!drain.is_finished());
        drop(request);
        tokio::time::timeout(Duration::from_secs(1), drain)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn staged_instances_serve_only_preview_requests_once_healthy() {
        let (registry, _) = healthy_registry(&["a"]);
        let s = staged(&registry, "s", 2000);
        assert!(
            !registry.lane(|| true).preview,
            "no healthy staged instance yet"
        );
        registry.record_check(&s, Ok(()));
        let preview = registry.lane(|| true);
        let live = registry.lane(|| false);
        for _ in 0..10 {
            assert_eq!(registry.pick(preview, &[]).unwrap().id, "s");
            assert_eq!(registry.pick(live, &[]).unwrap().id, "a");
        }
        assert!(
            registry.pick(preview, &[s]).is_none(),
            "no fall-over to live"
        );
        assert!(registry.statuses()[1].staged);
    }

    #[test]
    fn promotion_swaps_the_sets_at_once() {
        let (registry, backends) = healthy_registry(&["a", "b"]);
        let s = staged(&registry, "s", 2000);
        registry.record_check(&s, Ok(()));
        let preview = registry.lane(|| true);
        let removed = registry.promote_staged();
        let ids: Vec<_> = removed.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(InFlight::enter(&backends[0]).is_none());
        for lane in [LIVE, preview, registry.lane(|| true)] {
            assert_eq!(registry.pick(lane, &[]).unwrap().id, "s");
        }
        assert!(!registry.statuses()[0].staged);
    }

    #[test]
    fn discarding_removes_only_staged_instances() {
        let (registry, _) = healthy_registry(&["a"]);
        let s = staged(&registry, "s", 2000);
        registry.record_check(&s, Ok(()));
        let removed = registry.discard_staged();
        assert_eq!(removed.len(), 1);
        assert!(!registry.lane(|| true).preview);
        assert_eq!(registry.pick(LIVE, &[]).unwrap().id, "a");
        assert_eq!(registry.statuses().len(), 1);
    }
}
