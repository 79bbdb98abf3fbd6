//! Header rules between client and instance: requests nginx refuses with a 400 (no or two
//! `Host` headers, `CONNECT`) are refused before they reach the site; hop-by-hop headers
//! (RFC 9110 §7.6.1) are removed in both directions; `X-Forwarded-For/-Proto/-Host` are set on
//! the way in, passing on what a trusted proxy said; and an HTTP upgrade (WebSocket) keeps its
//! `Connection: upgrade` / `Upgrade` pair.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, never the message (besides `Connection` itself and
/// `Upgrade`, handled apart). Pre-parsed names: parsing them per request showed in profiles.
fn hop_by_hop() -> [&'static HeaderName; 7] {
    [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
    ]
}

/// What one pass over a request's header names found. The request path looks at every header
/// once here instead of looking each of these up by name (a hashed lookup each, which together
/// showed in instruction counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Scan {
    /// `Host` lines.
    hosts: u8,
    /// The (last) `Host` is a host name by nginx's rule.
    host_valid: bool,
    /// A hop-by-hop header (or `Connection` / `Upgrade`) is present.
    pub(crate) hop_by_hop: bool,
    /// The owner's token may be present: the bypass header, or a cookie naming it.
    pub(crate) owner_token: bool,
}

/// Looks at every header of a request once; see [`Scan`].
pub(crate) fn scan(headers: &HeaderMap) -> Scan {
    let mut found = Scan::default();
    for (name, value) in headers {
        if name == header::HOST {
            found.hosts = found.hosts.saturating_add(1);
            found.host_valid = is_valid_host(value.as_bytes());
        } else if name == header::COOKIE {
            found.owner_token |= crate::maintenance::may_hold_bypass_cookie(value);
        } else if name == crate::maintenance::BYPASS_HEADER_NAME {
            found.owner_token = true;
        } else if is_hop_by_hop(name) {
            found.hop_by_hop = true;
        }
    }
    found
}

/// Why the front door answers a request with a 400 instead of forwarding it, as nginx does;
/// `None` for a request it forwards. RFC 9112 §3.2: an HTTP/1.1 request needs exactly one
/// valid `Host` (an HTTP/1.0 one may have none); an app behind a proxy is rarely ready for a
/// request without one, and with two, the app and the front door could each read another
/// (the maintenance and preview rules do not depend on Host, but the app's own routing does).
/// `CONNECT` asks for a tunnel to anywhere: the front door is not a forward proxy.
pub(crate) fn refusal(method: &Method, version: Version, headers: &Scan) -> Option<&'static str> {
    if method == Method::CONNECT {
        return Some("CONNECT is not served here");
    }
    match headers.hosts {
        0 if version >= Version::HTTP_11 => Some("an HTTP/1.1 request needs a Host header"),
        0 => None,
        1 if !headers.host_valid => Some("the Host header is not a host name"),
        1 => None,
        _ => Some("the request has more than one Host header"),
    }
}

/// nginx's rule for a Host (`ngx_http_validate_host`): not empty (a final dot aside), no `..`,
/// no `/` or `\`, no space or control character. One pass over the bytes.
fn is_valid_host(host: &[u8]) -> bool {
    let host = host.strip_suffix(b".").unwrap_or(host);
    let mut previous = 0u8;
    for &b in host {
        if b <= b' ' || b == 0x7f || b == b'/' || b == b'\\' || (b == b'.' && previous == b'.') {
            return false;
        }
        previous = b;
    }
    !host.is_empty()
}

/// Whether the headers ask to switch protocols (`Connection: upgrade` plus `Upgrade`).
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|value| {
            value
                .as_bytes()
                .split(|b| *b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
}

/// Whether `name` is a hop-by-hop header (or `Connection` / `Upgrade`).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION || name == header::UPGRADE || hop_by_hop().contains(&name)
}

/// Removes hop-by-hop headers, including those named by `Connection`. With `keep_upgrade`, the
/// `Upgrade` header survives and `Connection: upgrade` is set again.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none: one pass of cheap name comparisons instead of a hashed removal
    // per hop-by-hop name (this showed in instruction counts).
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // `remove` with a &str looks the name up without allocating.
    if let header::Entry::Occupied(entry) = headers.entry(header::CONNECTION) {
        let (_, values) = entry.remove_entry_mult();
        let values: Vec<HeaderValue> = values.collect();
        for value in &values {
            for token in value.as_bytes().split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.is_empty() || (keep_upgrade && token.eq_ignore_ascii_case(b"upgrade")) {
                    continue;
                }
                if let Ok(name) = std::str::from_utf8(token) {
                    headers.remove(name);
                }
            }
        }
    }
    let upgrade = headers.remove(header::UPGRADE).filter(|_| keep_upgrade);
    for name in hop_by_hop() {
        headers.remove(name);
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Sets `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host` for the instance. From a
/// The visitor's address: the connection's, or, when the connection comes from a trusted proxy
/// (a TLS terminator in `trusted_proxies`), the last address in the `X-Forwarded-For` it sent
/// (the one that proxy saw). Used for the maintenance gate's `allow` list: behind a terminator
/// the connection's address is the terminator's, for every visitor.
pub(crate) fn visitor_ip(headers: &HeaderMap, connection_ip: IpAddr, trusted: bool) -> IpAddr {
    if !trusted {
        return connection_ip;
    }
    headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|last| last.trim().parse().ok())
        .unwrap_or(connection_ip)
}

/// `trusted` client (a proxy in `trusted_proxies`, e.g. a TLS terminator) what it said is
/// passed on: its `X-Forwarded-For` with the client's address appended, its
/// `X-Forwarded-Proto` (so an app behind TLS knows it is `https` and does not redirect for
/// ever) and its `X-Forwarded-Host`. From anyone else these would be lies the app believes
/// (a forged client address, a forged scheme): they are replaced by the client's address,
/// `http` and the request's Host.
pub(crate) fn add_forwarded(headers: &mut HeaderMap, client_ip: &HeaderValue, trusted: bool) {
    // Room for the three at once: the map of a small request would otherwise grow twice.
    headers.reserve(3);
    match headers.entry(&X_FORWARDED_FOR) {
        header::Entry::Occupied(mut earlier) if trusted => {
            // Every line of the header, in order, then the client: one comma-separated list.
            let mut joined = Vec::with_capacity(64);
            for value in earlier.iter() {
                joined.extend_from_slice(value.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(client_ip.as_bytes());
            if let Ok(value) = HeaderValue::from_bytes(&joined) {
                earlier.insert(value);
            }
        }
        header::Entry::Occupied(mut forged) => {
            forged.insert(client_ip.clone());
        }
        header::Entry::Vacant(slot) => {
            slot.insert(client_ip.clone());
        }
    }
    if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if trusted && headers.contains_key(&X_FORWARDED_HOST) {
        return;
    }
    match headers.get(header::HOST).cloned() {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut headers = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("accept", "text/html"),
        ]);
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["accept"], "text/html");
    }

    #[test]
    fn an_upgrade_request_keeps_its_upgrade_headers() {
        let mut headers = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(wants_upgrade(&headers));
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "upgrade");
    }

    #[test]
    fn forwarded_headers_from_an_untrusted_client_are_replaced() {
        let ip = HeaderValue::from_static("10.0.0.7");
        let mut headers = map(&[("host", "example.org")]);
        add_forwarded(&mut headers, &ip, false);
        assert_eq!(headers["x-forwarded-for"], "10.0.0.7");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "example.org");

        let mut headers = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "spoof"),
        ]);
        add_forwarded(&mut headers, &ip, false);
        assert_eq!(headers["x-forwarded-for"], "10.0.0.7");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert!(!headers.contains_key("x-forwarded-host"));
    }

    #[test]
    fn behind_a_trusted_proxy_the_visitor_is_the_last_forwarded_address() {
        let terminator: IpAddr = "10.0.0.5".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_static("203.0.113.9, 198.51.100.7"),
        );
        assert_eq!(
            visitor_ip(&headers, terminator, true),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(visitor_ip(&headers, terminator, false), terminator);
        assert_eq!(visitor_ip(&HeaderMap::new(), terminator, true), terminator);
        headers.insert(X_FORWARDED_FOR.clone(), HeaderValue::from_static("garbage"));
        assert_eq!(visitor_ip(&headers, terminator, true), terminator);
    }

    #[test]
    fn a_trusted_proxy_is_believed_and_appended_to() {
        let ip = HeaderValue::from_static("10.0.0.2");
        let mut headers = map(&[
            ("host", "example.org"),
            ("x-forwarded-for", "203.0.113.5"),
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "www.example.org"),
        ]);
        add_forwarded(&mut headers, &ip, true);
        let chain: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
        assert_eq!(chain, ["203.0.113.5, 198.51.100.1, 10.0.0.2"]);
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "www.example.org");

        // A trusted proxy that says nothing gets the same headers as anyone.
        let mut headers = map(&[("host", "example.org")]);
        add_forwarded(&mut headers, &ip, true);
        assert_eq!(headers["x-forwarded-for"], "10.0.0.2");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "example.org");
    }

    #[test]
    fn one_pass_finds_hop_by_hop_headers_and_the_owner_token() {
        let plain = scan(&map(&[("host", "a.example"), ("accept", "*/*")]));
        assert!(!plain.hop_by_hop && !plain.owner_token);
        assert!(scan(&map(&[("connection", "close")])).hop_by_hop);
        assert!(scan(&map(&[("te", "trailers")])).hop_by_hop);
        assert!(scan(&map(&[("x-lifeboat-bypass", "t")])).owner_token);
        assert!(scan(&map(&[("cookie", "a=1; lifeboat_bypass=t")])).owner_token);
        assert!(!scan(&map(&[("cookie", "a=1; b=2")])).owner_token);
    }

    #[test]
    fn requests_nginx_refuses_are_refused() {
        let refused = |method: Method, version, pairs: &[(&'static str, &'static str)]| {
            refusal(&method, version, &scan(&map(pairs))).is_some()
        };
        let http11 = Version::HTTP_11;
        assert!(!refused(Method::GET, http11, &[("host", "example.org")]));
        assert!(!refused(
            Method::GET,
            http11,
            &[("host", "example.org:8080")]
        ));
        assert!(!refused(Method::GET, http11, &[("host", "[::1]:8080")]));
        assert!(!refused(Method::GET, http11, &[("host", "example.org.")]));
        assert!(refused(Method::GET, http11, &[]));
        assert!(
            !refused(Method::GET, Version::HTTP_10, &[]),
            "HTTP/1.0 may omit it"
        );
        assert!(refused(
            Method::GET,
            http11,
            &[("host", "a.example"), ("host", "b.example")]
        ));
        for bad in ["", ".", "a..b", "a/b", "a\\b", "a b"] {
            assert!(refused(Method::GET, http11, &[("host", bad)]), "{bad:?}");
        }
        assert!(refused(
            Method::CONNECT,
            http11,
            &[("host", "example.org:443")]
        ));
    }
}
