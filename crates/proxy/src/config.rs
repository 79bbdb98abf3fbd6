//! Settings of the front door: where it listens, how it checks instances, its timeouts and
//! limits, whom it trusts, and the maintenance page. Plain data with sensible defaults; nothing
//! here does I/O.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Everything [`crate::Proxy::start`] needs.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Address to listen on; port 0 picks a free port (see [`crate::Proxy::local_addr`]).
    pub listen: SocketAddr,
    /// How instances are health-checked.
    pub health: HealthCheckConfig,
    /// Connect, response-header, idle, send and body timeouts.
    pub timeouts: Timeouts,
    /// Value of `Retry-After` on maintenance, "no healthy instance" and "too many connections"
    /// responses.
    pub retry_after: Duration,
    /// Most client connections open at once (default 4096). One more gets a `503` with
    /// `Retry-After` and is closed at once. Each connection may also hold a connection to an
    /// instance, so the front door raises the process's open-file limit to about twice this
    /// (never above the hard limit; see [`crate::Proxy::max_connections`]).
    pub max_connections: usize,
    /// Client addresses allowed to say, in `X-Forwarded-For/-Proto/-Host`, whom and what they
    /// forward (a TLS terminator or load balancer in front of the front door). Their values are
    /// passed on (the client address appended to `X-Forwarded-For`); anyone else's are replaced.
    /// Empty by default: nobody is trusted.
    pub trusted_proxies: Vec<IpRange>,
    /// When requests refused as unauthorized (401/403) from one visitor make a
    /// [`crate::ProxyEvent::AuthFailures`] (password guessing); `None`: never.
    pub auth_failure_alert: Option<crate::AuthFailureAlert>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            health: HealthCheckConfig::default(),
            timeouts: Timeouts::default(),
            retry_after: Duration::from_secs(30),
            max_connections: 4096,
            trusted_proxies: Vec::new(),
            auth_failure_alert: Some(crate::AuthFailureAlert::default()),
        }
    }
}

/// Active health checks: `GET path` on every instance every `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// Path requested on the instance, e.g. `/healthz`. A 2xx or 3xx answer is healthy.
    pub path: String,
    /// `Host` header of the checks, e.g. `example.com`; `None` sends the instance's own
    /// address (`127.0.0.1:PORT`), which apps that check the Host (Django's `ALLOWED_HOSTS`,
    /// name-based virtual hosts) answer with a 400.
    pub host: Option<String>,
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
            host: None,
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
    /// How long an unused keep-alive connection stays open: a client's; one to an instance
    /// at most 10 s (it is on this machine, a new one is cheap; see `pool.rs`).
    pub idle: Duration,
    /// How long a client may take to accept any more of a response it is being sent (its
    /// socket buffer stays full) before its connection is closed, like nginx's
    /// `send_timeout`. A client that reads slowly but steadily is never cut.
    pub send: Duration,
    /// How long a client may pause while sending a request body before the request is given
    /// up, like nginx's `client_body_timeout`: the client gets a `408` (or its connection is
    /// closed, if the response had begun) and the request to the instance is aborted.
    pub body: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            response_headers: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            send: Duration::from_secs(60),
            body: Duration::from_secs(60),
        }
    }
}

/// A block of addresses written `addr/prefix_len` (CIDR): `10.0.0.0/8`, `2001:db8::/32`; one
/// address is `/32` (IPv4) or `/128` (IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    /// Any address of the block; the bits past `prefix_len` are ignored.
    pub addr: IpAddr,
    /// Leading bits that every address of the block shares: at most 32 for IPv4, 128 for IPv6.
    pub prefix_len: u8,
}

impl IpRange {
    /// The block holding exactly `addr`.
    pub fn single(addr: IpAddr) -> IpRange {
        let prefix_len = if addr.is_ipv4() { 32 } else { 128 };
        IpRange { addr, prefix_len }
    }

    /// Whether `ip` is in the block. An IPv4 client seen as an IPv4-mapped IPv6 address (on a
    /// dual-stack listener) is matched as the IPv4 address it is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr.to_canonical(), ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => same_prefix(
                net.to_bits().into(),
                ip.to_bits().into(),
                self.prefix_len,
                32,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                same_prefix(net.to_bits(), ip.to_bits(), self.prefix_len, 128)
            }
            _ => false,
        }
    }

    /// Whether `prefix_len` fits the address family.
    pub(crate) fn is_valid(&self) -> bool {
        let bits = if self.addr.to_canonical().is_ipv4() {
            32
        } else {
            128
        };
        self.prefix_len <= bits
    }
}

/// Whether the first `prefix_len` of the `width` low bits of `a` and `b` agree.
fn same_prefix(a: u128, b: u128, prefix_len: u8, width: u32) -> bool {
    let prefix_len = u32::from(prefix_len).min(width);
    if prefix_len == 0 {
        return true;
    }
    let shift = width - prefix_len;
    (a >> shift) == (b >> shift)
}

/// Maintenance mode: every request gets a 503 with this page, served by the front door itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// The HTML body of the 503 answer.
    pub page_html: String,
    /// Secret that lets the owner reach the real site: header `X-Lifeboat-Bypass: <token>` or
    /// cookie `lifeboat_bypass=<token>`. An empty token never matches. Neither ever reaches
    /// the site.
    pub bypass_token: String,
    /// Client addresses that reach the real site during maintenance.
    pub allow_ips: Vec<IpAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> IpRange {
        let (addr, prefix_len) = text.split_once('/').unwrap();
        IpRange {
            addr: addr.parse().unwrap(),
            prefix_len: prefix_len.parse().unwrap(),
        }
    }

    #[test]
    fn an_address_block_holds_the_addresses_that_share_its_prefix() {
        let private = range("10.0.0.0/8");
        assert!(private.contains("10.200.3.4".parse().unwrap()));
        assert!(!private.contains("11.0.0.1".parse().unwrap()));
        assert!(
            private.contains("::ffff:10.1.2.3".parse().unwrap()),
            "mapped"
        );
        let v6 = range("2001:db8::/32");
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!(range("0.0.0.0/0").contains("192.0.2.1".parse().unwrap()));
        let one = IpRange::single("192.0.2.7".parse().unwrap());
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
    }

    #[test]
    fn a_prefix_longer_than_the_address_is_invalid() {
        assert!(range("10.0.0.0/32").is_valid());
        assert!(!range("10.0.0.0/33").is_valid());
        assert!(range("::/128").is_valid());
        assert!(!range("::/129").is_valid());
    }
}
