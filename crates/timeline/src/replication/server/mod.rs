//! [`StreamServer`]: the primary's side of the stream. It accepts standbys on a listener the
//! daemon gives it, sends each the batches it lacks from the feed's window (or tells it to
//! resync from the vault when the window no longer holds them), tracks the position each
//! acknowledged (applied and durable there) and the heartbeats each confirmed, and answers
//! [`StreamServer::wait_acked`] for the front door's `durability = "sync"`.
//!
//! Fencing: every frame a standby sends carries the highest term it has seen. One above this
//! primary's means a newer primary exists: the server stops streaming, fails every waiting
//! [`wait_acked`](StreamServer::wait_acked) with [`StreamError::Superseded`], and reports it
//! ([`StreamServer::superseded`]); the daemon must stop writing.
//!
//! A standby that reads nothing holds nothing up: the feed never waits for a sender, a
//! sender whose standby has been silent for `standby_timeout` is closed, and one whose
//! next batch left the window is told to resync.

mod connection;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::Position;
use super::error::StreamError;
use super::feed::{ChangeFeed, FeedInner, FeedStatus};

/// How the server talks to standbys.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// How often each standby gets a heartbeat (which it confirms).
    pub heartbeat_interval: Duration,
    /// A standby silent this long (no ack, no confirmation) is disconnected.
    pub standby_timeout: Duration,
    /// How long a new connection may take to say hello.
    pub hello_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            heartbeat_interval: Duration::from_millis(500),
            standby_timeout: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(10),
        }
    }
}

/// Who this primary is.
#[derive(Debug, Clone)]
pub struct StreamServerConfig {
    /// The site (`[site] name`): standbys of another site are refused.
    pub site: String,
    /// This node's name.
    pub node: String,
    /// This node's zone.
    pub zone: String,
    /// The key standbys must prove they hold (derived from the site's vault key).
    pub key: crate::replication::StreamKey,
    /// Timings.
    pub options: ServerOptions,
}

/// What a [`StreamServer::wait_acked`] rule sees of a standby.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyInfo {
    /// Its node name.
    pub node: String,
    /// Its zone.
    pub zone: String,
}

/// The standby whose acknowledgement satisfied a [`StreamServer::wait_acked`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckedBy {
    /// Its node name.
    pub node: String,
    /// Its zone.
    pub zone: String,
    /// What it had acknowledged.
    pub acked: Position,
}

/// One standby as the primary sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyStatus {
    /// Its node name.
    pub node: String,
    /// Its zone.
    pub zone: String,
    /// Where it connected from (its last connection).
    pub address: SocketAddr,
    /// Whether it is connected now.
    pub connected: bool,
    /// Since when (its last connection).
    pub connected_since: Instant,
    /// The last position it acknowledged as applied and durable, in this term.
    pub acked: Option<Position>,
    /// Batches published after `acked`.
    pub lag_batches: u64,
    /// Bytes of those still in the window.
    pub lag_bytes: u64,
    /// Age of the oldest batch it has not acknowledged (zero when caught up).
    pub lag_time: Duration,
    /// When it last sent anything.
    pub last_heard: Instant,
    /// When this primary *sent* the latest heartbeat the standby confirmed ("I still see you
    /// as primary"): the value failsafe mode counts from
    /// (`lifeboat_core::cluster::FailsafeInput::confirmations`).
    pub last_confirmed_request_sent: Option<Instant>,
    /// Why it refused to confirm the last heartbeat, if it did.
    pub confirmation_refused: Option<String>,
    /// Why it was last told to resync from the vault, if it was.
    pub resync_told: Option<String>,
    /// The last error on its connection.
    pub last_error: Option<String>,
}

/// Where the server stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamServerStatus {
    /// This primary's term.
    pub term: u64,
    /// The address standbys connect to.
    pub listening: SocketAddr,
    /// The change feed.
    pub feed: FeedStatus,
    /// A newer term seen from a standby: this primary must stop writing.
    pub superseded_by: Option<u64>,
    /// Every standby that connected since the server started, by node name.
    pub standbys: Vec<StandbyStatus>,
}

type Rule = Box<dyn Fn(&StandbyInfo) -> bool + Send + Sync>;

struct Waiter {
    id: u64,
    position: Position,
    rule: Rule,
    tx: oneshot::Sender<Result<AckedBy, StreamError>>,
}

struct Standby {
    info: StandbyInfo,
    address: SocketAddr,
    /// Identifies the connection serving it; a new connection of the same node replaces it.
    conn: u64,
    connected: bool,
    connected_since: Instant,
    acked: Option<Position>,
    last_heard: Instant,
    heartbeats: VecDeque<(u64, Instant)>,
    last_confirmed_request_sent: Option<Instant>,
    confirmation_refused: Option<String>,
    resync_told: Option<String>,
    last_error: Option<String>,
    /// Closes the connection serving it (when another replaces it).
    kick: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    standbys: BTreeMap<String, Standby>,
    waiters: Vec<Waiter>,
    next_id: u64,
}

struct Shared {
    config: StreamServerConfig,
    feed: Arc<FeedInner>,
    term: u64,
    listening: SocketAddr,
    state: Mutex<State>,
    members: Mutex<Vec<String>>,
    superseded: watch::Sender<Option<u64>>,
    shutdown: watch::Sender<bool>,
}

/// The primary's side of the stream. See the module doc.
pub struct StreamServer {
    shared: Arc<Shared>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl StreamServer {
    /// Starts serving standbys on `listener` from `feed`.
    pub fn start(
        listener: TcpListener,
        feed: ChangeFeed,
        config: StreamServerConfig,
    ) -> Result<StreamServer, StreamError> {
        let listening = listener
            .local_addr()
            .map_err(|source| StreamError::Network {
                action: "read the address of",
                peer: "the stream listener".into(),
                source,
            })?;
        let shared = Arc::new(Shared {
            term: feed.inner.term,
            feed: feed.inner,
            config,
            listening,
            state: Mutex::new(State::default()),
            members: Mutex::new(Vec::new()),
            superseded: watch::channel(None).0,
            shutdown: watch::channel(false).0,
        });
        let accept = tokio::spawn(connection::accept_loop(shared.clone(), listener));
        Ok(StreamServer {
            shared,
            accept: Mutex::new(Some(accept)),
        })
    }

    /// This primary's term.
    pub fn term(&self) -> u64 {
        self.shared.term
    }

    /// The address standbys connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.listening
    }

    /// The members failsafe heartbeats name (the leader's last known registry, other than
    /// itself), so each standby can check it is counted on.
    pub fn set_failsafe_members(&self, members: Vec<String>) {
        *self.shared.members.lock().unwrap() = members;
    }

    /// Waits until a standby for which `rule` holds (e.g. `|s| s.zone != my_zone`) has
    /// acknowledged `position` (applied and durable there), or `timeout` passes
    /// ([`StreamError::NotAcknowledged`]). Fails at once with [`StreamError::Superseded`]
    /// once a newer term was seen. `rule` runs under the server's lock: keep it cheap.
    pub async fn wait_acked(
        &self,
        position: Position,
        rule: impl Fn(&StandbyInfo) -> bool + Send + Sync + 'static,
        timeout: Duration,
    ) -> Result<AckedBy, StreamError> {
        let shared = &self.shared;
        if position.term != shared.term {
            return Err(StreamError::Invalid(format!(
                "position {position} is not of this primary's term {}",
                shared.term
            )));
        }
        let started = Instant::now();
        let (id, mut rx) = {
            let mut st = shared.state.lock().unwrap();
            if let Some(newer) = *shared.superseded.borrow() {
                return Err(StreamError::Superseded {
                    term: shared.term,
                    newer,
                });
            }
            if *shared.shutdown.borrow() {
                return Err(StreamError::Stopped);
            }
            for s in st.standbys.values() {
                if s.acked.is_some_and(|a| a >= position) && rule(&s.info) {
                    return Ok(acked_by(s));
                }
            }
            let (tx, rx) = oneshot::channel();
            st.next_id += 1;
            let id = st.next_id;
            st.waiters.push(Waiter {
                id,
                position,
                rule: Box::new(rule),
                tx,
            });
            (id, rx)
        };
        match tokio::time::timeout(timeout, &mut rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StreamError::Stopped),
            Err(_) => {
                let mut st = shared.state.lock().unwrap();
                let waiter = st
                    .waiters
                    .iter()
                    .position(|w| w.id == id)
                    .map(|i| st.waiters.swap_remove(i));
                // Answered while the timer fired: the answer stands.
                if let Ok(result) = rx.try_recv() {
                    return result;
                }
                let rule = waiter.map(|w| w.rule);
                let standbys: Vec<String> = st
                    .standbys
                    .values()
                    .filter(|s| rule.as_ref().is_none_or(|r| r(&s.info)))
                    .map(|s| {
                        format!(
                            "{} in {}: {}, acknowledged {}",
                            s.info.node,
                            s.info.zone,
                            if s.connected {
                                "connected"
                            } else {
                                "disconnected"
                            },
                            s.acked.map_or("nothing".into(), |a| a.to_string())
                        )
                    })
                    .collect();
                Err(StreamError::NotAcknowledged {
                    position,
                    waited: started.elapsed(),
                    standbys: if standbys.is_empty() {
                        "no standby matching the rule has connected".into()
                    } else {
                        standbys.join("; ")
                    },
                })
            }
        }
    }

    /// Where the server and every standby stand.
    pub fn status(&self) -> StreamServerStatus {
        let shared = &self.shared;
        let st = shared.state.lock().unwrap();
        let standbys = st
            .standbys
            .values()
            .map(|s| {
                let (lag_batches, lag_bytes, lag_time) = match s.acked {
                    Some(a) if a.term == shared.term => shared.feed.lag_after(a.seq),
                    _ => shared.feed.lag_after(shared.feed.first_seq - 1),
                };
                StandbyStatus {
                    node: s.info.node.clone(),
                    zone: s.info.zone.clone(),
                    address: s.address,
                    connected: s.connected,
                    connected_since: s.connected_since,
                    acked: s.acked,
                    lag_batches,
                    lag_bytes,
                    lag_time,
                    last_heard: s.last_heard,
                    last_confirmed_request_sent: s.last_confirmed_request_sent,
                    confirmation_refused: s.confirmation_refused.clone(),
                    resync_told: s.resync_told.clone(),
                    last_error: s.last_error.clone(),
                }
            })
            .collect();
        StreamServerStatus {
            term: shared.term,
            listening: shared.listening,
            feed: shared.feed.status(),
            superseded_by: *shared.superseded.borrow(),
            standbys,
        }
    }

    /// Resolves with the newer term once a standby shows one (this primary must then stop
    /// writing); never while none does.
    pub async fn superseded(&self) -> u64 {
        let mut rx = self.shared.superseded.subscribe();
        loop {
            if let Some(t) = *rx.borrow_and_update() {
                return t;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Stops accepting, tells every standby, closes every connection, and fails waiting
    /// [`wait_acked`](Self::wait_acked) calls with [`StreamError::Stopped`].
    pub async fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        self.shared.fail_waiters(|| StreamError::Stopped);
        let accept = self.accept.lock().unwrap().take();
        if let Some(task) = accept {
            let _ = task.await;
        }
    }
}

impl Drop for StreamServer {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        if let Some(task) = self.accept.lock().unwrap().take() {
            task.abort();
        }
    }
}

fn acked_by(s: &Standby) -> AckedBy {
    AckedBy {
        node: s.info.node.clone(),
        zone: s.info.zone.clone(),
        acked: s.acked.unwrap_or_default(),
    }
}

impl Shared {
    fn fail_waiters(&self, err: impl Fn() -> StreamError) {
        let waiters = std::mem::take(&mut self.state.lock().unwrap().waiters);
        for w in waiters {
            let _ = w.tx.send(Err(err()));
        }
    }

    /// A standby showed a newer term: stop streaming and say so.
    fn supersede(&self, newer: u64) {
        if newer <= self.term {
            return;
        }
        self.superseded.send_if_modified(|s| {
            if s.is_none_or(|t| t < newer) {
                *s = Some(newer);
                true
            } else {
                false
            }
        });
        self.shutdown.send_replace(true);
        let term = self.term;
        self.fail_waiters(|| StreamError::Superseded { term, newer });
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Records `node`'s acknowledgement and answers the waits it satisfies.
    fn acked(&self, node: &str, conn: u64, position: Position) {
        let mut st = self.state.lock().unwrap();
        let State {
            standbys, waiters, ..
        } = &mut *st;
        let Some(s) = standbys.get_mut(node).filter(|s| s.conn == conn) else {
            return;
        };
        if s.acked.is_some_and(|a| a >= position) {
            return;
        }
        s.acked = Some(position);
        let mut i = 0;
        while i < waiters.len() {
            if waiters[i].position <= position && (waiters[i].rule)(&s.info) {
                let w = waiters.swap_remove(i);
                let _ = w.tx.send(Ok(acked_by(s)));
            } else {
                i += 1;
            }
        }
    }

    fn with_standby(&self, node: &str, conn: u64, f: impl FnOnce(&mut Standby)) {
        let mut st = self.state.lock().unwrap();
        if let Some(s) = st.standbys.get_mut(node).filter(|s| s.conn == conn) {
            f(s);
        }
    }
}
