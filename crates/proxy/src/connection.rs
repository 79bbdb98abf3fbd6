//! Client connections: the accept loop (with the cap on open connections), the serving threads,
//! and one connection's life: HTTP/1.1 with keep-alive, its timer (`idle.rs`), and what the
//! owner orders (finish and close on shutdown, close now when a deadline passed).
//!
//! Serving is thread-per-core: the accept loop (on the caller's runtime) hands each client
//! connection to the serving thread with the fewest open connections; each serving thread runs
//! its own single-threaded runtime and keeps its own instance connections, so a request, its
//! instance connection and their tasks stay on one thread and never wake another one.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

use crate::client_io::ClientIo;
use crate::forward::{self, Client};
use crate::idle::{Activity, IdleWatch};
use crate::limits::{self, MAX_TURNING_AWAY};
use crate::server::{Order, Shared};

/// Open client connections of one serving thread.
#[derive(Debug, Default)]
pub(crate) struct WorkerLoad {
    pub(crate) open: AtomicUsize,
    idle: Notify,
}

/// A client connection on its way from the accept loop to a serving thread.
pub(crate) type Handoff = (std::net::TcpStream, SocketAddr);

pub(crate) async fn accept_loop(
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
            Ok((stream, _))
                if shared.connections.load(Ordering::SeqCst) >= shared.max_connections =>
            {
                turn_away(&shared, stream);
            }
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

/// Answers a connection past the cap with a 503 and closes it, on the accept loop's runtime
/// (the serving threads never see it).
fn turn_away(shared: &Arc<Shared>, stream: TcpStream) {
    tracing::debug!(
        max = shared.max_connections,
        "too many client connections; one turned away"
    );
    if shared.turning_away.fetch_add(1, Ordering::SeqCst) >= MAX_TURNING_AWAY {
        // Already closing many: answer in one non-blocking write and close at once.
        shared.turning_away.fetch_sub(1, Ordering::SeqCst);
        let _ = stream.try_write(&shared.busy_response);
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        limits::turn_away(stream, shared.busy_response.clone()).await;
        shared.turning_away.fetch_sub(1, Ordering::SeqCst);
    });
}

/// One serving thread: serves the connections handed to it until the accept loop stops, then
/// until they have finished.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    index: usize,
    mut incoming: mpsc::UnboundedReceiver<Handoff>,
) {
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

/// Why a connection ended before hyper was done with it.
#[derive(Debug)]
enum Ended {
    /// Its timer closed it (idle, send or body timeout).
    Expired(crate::idle::Expired),
    /// The owner closed it (a shutdown's or a drain's deadline passed).
    Closed,
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, index: usize) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::default());
    let mut idle = IdleWatch::new(activity.clone(), shared.clock);
    let trusted = shared
        .config
        .trusted_proxies
        .iter()
        .any(|range| range.contains(peer.ip()));
    let client = Arc::new(Client::new(peer.ip(), trusted, index, activity.clone()));
    let service_shared = shared.clone();
    let service = service_fn(move |request| {
        let busy = client.activity.begin();
        let handled = forward::handle(service_shared.clone(), client.clone(), request);
        async move {
            let response = handled.await?;
            Ok::<_, Infallible>(response.map(|body| body.held_by(busy)))
        }
    });
    let io = TokioIo::new(ClientIo::new(stream, activity.clone()));
    // The connection lives in this block, so that a closed one (and the requests in it) is
    // dropped before it is counted as closed: a drain or shutdown then finds nothing in flight.
    let finished = {
        let connection = shared.http.serve_connection(io, service).with_upgrades();
        let mut connection = pin!(connection);
        let mut signal = pin!(shared.next_signal());
        let mut registered = false;
        // 0 is before any signal: a connection accepted while a shutdown began still sees it.
        let mut seen_epoch = 0;
        let mut finishing = false;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                return Poll::Ready(Ok(result));
            }
            if let Poll::Ready(expired) = idle.poll_idle(cx) {
                // Idle: nothing is in flight, closing loses nothing. Send or body timeout: the
                // client stopped taking part; its request is abandoned.
                return Poll::Ready(Err(Ended::Expired(expired)));
            }
            loop {
                if !registered {
                    // Registers this task for the next signal; the epoch is read after, so a
                    // signal sent before the registration is still seen below.
                    if signal.as_mut().poll(cx).is_ready() {
                        signal.set(shared.next_signal());
                        continue;
                    }
                    registered = true;
                }
                let epoch = shared.signal_epoch();
                if epoch == seen_epoch {
                    return Poll::Pending;
                }
                seen_epoch = epoch;
                registered = false;
                signal.set(shared.next_signal());
                match shared.order_for(&activity) {
                    Order::Serve => {}
                    Order::Close => return Poll::Ready(Err(Ended::Closed)),
                    Order::Finish if !finishing => {
                        finishing = true;
                        connection.as_mut().graceful_shutdown();
                        // An idle connection may now be done at once.
                        cx.waker().wake_by_ref();
                    }
                    Order::Finish => {}
                }
            }
        })
        .await
    };
    match finished {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%peer, %error, "client connection ended with an error"),
        Err(Ended::Expired(timeout)) => {
            tracing::debug!(%peer, ?timeout, "client connection closed: its timeout passed");
        }
        Err(Ended::Closed) => tracing::debug!(%peer, "client connection closed by the owner"),
    }
    connection_closed(&shared, index);
}
