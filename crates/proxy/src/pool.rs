//! Keep-alive connections to one instance. Connections are opened here and parked between
//! requests; a parked connection is reused most-recently-used first and dropped once it has been
//! idle longer than the idle timeout or was closed by the instance.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::RequestBody;

/// Sending half of one HTTP/1.1 connection to an instance.
pub(crate) type Sender = http1::SendRequest<RequestBody>;

/// Parked connections beyond this number are closed instead.
const MAX_IDLE: usize = 512;

/// The longest a parked connection is kept unused (shorter if the client idle timeout is).
/// Instances run on this machine, so a new connection costs tens of microseconds, while a
/// parked one holds about 50 KiB here (hyper's buffers, the connection's task) and its share
/// in the instance. Steady traffic takes the most recently parked connections first, so the
/// ones left this long were not needed at the current load. After a burst of 32 clients, the
/// ~120 connections it left parked for the whole minute of the client idle timeout held 5 MiB
/// of heap; an idle `lifeboat up` went from 32.3 to 26.8 MiB RSS with this limit
/// (bench/idle-rss.sh).
const PARKED_IDLE_MAX: Duration = Duration::from_secs(10);

/// How long a connection may stay parked, given the client idle timeout.
pub(crate) fn parked_idle(client_idle: Duration) -> Duration {
    client_idle.min(PARKED_IDLE_MAX)
}

#[derive(Debug, Default)]
pub(crate) struct Pool {
    idle: Mutex<Vec<(Sender, Instant)>>,
}

impl Pool {
    /// A parked connection that is still open and was used within `idle_timeout`.
    pub(crate) fn take(&self, idle_timeout: Duration) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((sender, since)) = idle.pop() {
            if !sender.is_closed() && since.elapsed() < idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    pub(crate) fn put(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((sender, Instant::now()));
        }
    }

    /// Closes every parked connection (the instance died or left).
    pub(crate) fn clear(&self) {
        let drained = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        drop(drained);
    }

    /// Closes connections parked longer than `idle_timeout`.
    pub(crate) fn evict_idle(&self, idle_timeout: Duration) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|(sender, since)| !sender.is_closed() && since.elapsed() < idle_timeout);
    }
}

/// Why a new connection could not be opened; nothing of the request was sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect to {addr} failed: {source}")]
    Refused {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connect to {addr} took longer than {timeout:?}")]
    TimedOut { addr: SocketAddr, timeout: Duration },
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

/// Opens a new HTTP/1.1 connection; its I/O runs in its own task until the sender is dropped or
/// the instance closes it.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Sender, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(ConnectError::Refused { addr, source }),
        Err(_) => return Err(ConnectError::TimedOut { addr, timeout }),
    };
    let _ = stream.set_nodelay(true);
    // Flattened writes, as on the client side (see server.rs).
    let (sender, connection) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ConnectError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%addr, %error, "connection to instance ended");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_stays_parked_at_most_ten_seconds_or_the_shorter_client_idle_timeout() {
        assert_eq!(
            parked_idle(Duration::from_secs(60)),
            Duration::from_secs(10)
        );
        assert_eq!(
            parked_idle(Duration::from_millis(500)),
            Duration::from_millis(500)
        );
    }
}
