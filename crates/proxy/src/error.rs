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
}
