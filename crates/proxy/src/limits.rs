//! The cap on open client connections, and what it takes from the operating system.
//!
//! Every client connection is a file descriptor, and while its request runs it usually holds a
//! second one, the connection to the instance. A process that runs out of descriptors cannot
//! accept, connect, open a log or its store: everything freezes at once. So the front door
//! counts its client connections, turns away the one past the cap with a short `503` (never a
//! hang), and makes sure the cap fits in the process's open-file limit: it raises the soft
//! limit (the default on many systems is 1024) towards the hard one, as Go's runtime does at
//! start, and lowers the cap if the hard limit is too small.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Descriptors one client connection may need: its own and its instance connection.
const FDS_PER_CONNECTION: u64 = 2;
/// Descriptors kept for everything else: the listener, health checks, idle instance
/// connections, the owner's store, logs and sockets.
const RESERVED_FDS: u64 = 256;
/// Turned-away connections being closed at once; past this, they are dropped without the
/// lingering read (see [`turn_away`]).
pub(crate) const MAX_TURNING_AWAY: usize = 256;
/// How long a turned-away client gets to read its 503 and close.
const LINGER: Duration = Duration::from_secs(1);

/// How many client connections fit, at most `wanted`, after raising the soft open-file limit
/// as far as needed and allowed.
pub(crate) fn fit_connections(wanted: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return wanted;
    };
    let needed = (wanted as u64)
        .saturating_mul(FDS_PER_CONNECTION)
        .saturating_add(RESERVED_FDS);
    let mut limit = soft;
    if soft < needed {
        let raised = needed.min(hard);
        match setrlimit(Resource::RLIMIT_NOFILE, raised, hard) {
            Ok(()) => limit = raised,
            Err(error) => tracing::warn!(%error, soft, hard, "raising the open-file limit failed"),
        }
    }
    let fit = usize::try_from(limit.saturating_sub(RESERVED_FDS) / FDS_PER_CONNECTION)
        .unwrap_or(usize::MAX)
        .max(1);
    if fit < wanted {
        tracing::warn!(
            wanted,
            fit,
            open_file_limit = limit,
            "the open-file limit allows fewer client connections than configured; raise the \
             hard limit (ulimit -Hn, LimitNOFILE= for systemd) to serve more"
        );
        return fit;
    }
    wanted
}

/// The whole answer to a connection past the cap: `503`, `Retry-After`, closed.
pub(crate) fn busy_response(retry_after: Duration) -> Bytes {
    let body = "The site is busy: too many open connections. Try again shortly.\n";
    Bytes::from(format!(
        "HTTP/1.1 503 Service Unavailable\r\n\
         content-type: text/plain; charset=utf-8\r\n\
         retry-after: {}\r\n\
         cache-control: no-store\r\n\
         connection: close\r\n\
         content-length: {}\r\n\r\n{body}",
        retry_after.as_secs().max(1),
        body.len()
    ))
}

/// Answers a connection past the cap and closes it. Closing a socket whose request was not read
/// makes the kernel send a reset, and the client may then lose the 503 before reading it; so
/// the front door stops writing, reads (and drops) what the client still sends for a moment,
/// and closes then, like nginx's lingering close.
pub(crate) async fn turn_away(mut stream: TcpStream, response: Bytes) {
    let _ = stream.set_nodelay(true);
    let _ = tokio::time::timeout(LINGER, async {
        // A fresh socket's send buffer is empty: the short answer goes out at once.
        stream.write_all(&response).await?;
        stream.shutdown().await?;
        let mut buf = [0u8; 4096];
        while stream.read(&mut buf).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}
