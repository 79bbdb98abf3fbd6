//! Errors the front door reports to its owner (not to HTTP clients, who get status codes).

use std::net::SocketAddr;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listen address could not be bound.
    #[error(
        "cannot listen on {addr}: {source}; pick another address or port (port 0 picks a free one), \
         or stop the program that already uses it"
    )]
    Bind {
        /// The address from the configuration.
        addr: SocketAddr,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error("invalid proxy configuration: {0}")]
    Config(String),
    /// The serving threads could not be started.
    #[error(
        "cannot start the front door's serving threads: {0}; the system is out of threads or \
         memory, raise the limits (ulimit -u) or stop other programs"
    )]
    Runtime(#[source] std::io::Error),
}
