//! Lifeboat's front door: an HTTP/1.1 reverse proxy that spreads requests over the healthy
//! instances of a site, retries only when it is safe, streams bodies, passes WebSocket upgrades
//! through, and can answer everything itself with a maintenance page.
//!
//! It knows nothing about processes or manifests: its owner adds and removes instances by id
//! and address ([`Proxy::add_backend`], [`Proxy::remove_backend`], [`Proxy::mark_down`]),
//! stages new instances that only the owner reaches until they replace the live ones at once
//! ([`Proxy::add_staged_backend`], [`Proxy::promote_staged`]), and listens to what it observes
//! ([`Proxy::subscribe`]). It never prints; it logs with `tracing`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod auth_watch;
mod backend;
mod body;
mod client_io;
mod config;
mod connection;
mod drain;
mod error;
mod forward;
mod headers;
mod health;
mod idle;
mod limits;
mod maintenance;
mod pool;
mod retry;
mod server;
mod write_gate;

pub use auth_watch::AuthFailureAlert;
pub use backend::{BackendStatus, ProxyEvent};
pub use body::ProxyBody;
pub use config::{HealthCheckConfig, IpRange, Maintenance, ProxyConfig, Timeouts};
pub use drain::{Drain, Drained};
pub use error::ProxyError;
pub use health::BackendHealth;
pub use maintenance::{BYPASS_COOKIE, BYPASS_HEADER};
pub use server::Proxy;
pub use write_gate::WriteGate;
