//! Settings of the front door: where it listens, how it checks instances, its timeouts, and the
//! maintenance page. Plain data with sensible defaults; nothing here does I/O.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Everything [`crate::Proxy::start`] needs.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Address to listen on; port 0 picks a free port (see [`crate::Proxy::local_addr`]).
    pub listen: SocketAddr,
    /// How instances are health-checked.
    pub health: HealthCheckConfig,
    /// Connect, response-header and idle timeouts.
    pub timeouts: Timeouts,
    /// Value of `Retry-After` on maintenance and "no healthy instance" responses.
    pub retry_after: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            health: HealthCheckConfig::default(),
            timeouts: Timeouts::default(),
            retry_after: Duration::from_secs(30),
        }
    }
}

/// Active health checks: `GET path` on every instance every `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// Path requested on the instance, e.g. `/healthz`. A 2xx or 3xx answer is healthy.
    pub path: String,
    /// Time between two checks of a healthy instance; a quarter of it while the last check
    /// failed or the instance is out of rotation.
    pub interval: Duration,
    /// A check that takes longer than this fails.
    pub timeout: Duration,
    /// Consecutive passed checks before an instance receives traffic (default 1).
    pub healthy_threshold: u32,
    /// Consecutive failed checks before an instance stops receiving traffic (default 2).
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            path: "/healthz".to_string(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            healthy_threshold: 1,
            unhealthy_threshold: 2,
        }
    }
}

/// Timeouts of the front door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Opening a TCP connection to an instance.
    pub connect: Duration,
    /// From sending a request to an instance until its response headers arrive.
    pub response_headers: Duration,
    /// How long an unused keep-alive connection (client side or instance side) stays open.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            response_headers: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        }
    }
}

/// Maintenance mode: every request gets a 503 with this page, served by the front door itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// The HTML body of the 503 answer.
    pub page_html: String,
    /// Secret that lets the owner reach the real site: header `X-Lifeboat-Bypass: <token>` or
    /// cookie `lifeboat_bypass=<token>`. An empty token never matches.
    pub bypass_token: String,
    /// Client addresses that reach the real site during maintenance.
    pub allow_ips: Vec<IpAddr>,
}
