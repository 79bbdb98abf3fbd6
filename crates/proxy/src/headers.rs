//! Header rewriting between client and instance: hop-by-hop headers (RFC 9110 §7.6.1) are
//! removed in both directions, `X-Forwarded-For/-Proto/-Host` are set on the way in, and an
//! HTTP upgrade (WebSocket) keeps its `Connection: upgrade` / `Upgrade` pair.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

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

/// Sets `X-Forwarded-For` (appending the client to any earlier proxies), `X-Forwarded-Proto`
/// and `X-Forwarded-Host` (the Host the client asked for).
pub(crate) fn add_forwarded(headers: &mut HeaderMap, client_ip: &HeaderValue) {
    // Room for the three at once: the map of a small request would otherwise grow twice.
    headers.reserve(3);
    match headers.entry(&X_FORWARDED_FOR) {
        header::Entry::Occupied(mut earlier) => {
            let earlier_value = earlier.get();
            let mut joined = Vec::with_capacity(earlier_value.len() + 2 + client_ip.len());
            joined.extend_from_slice(earlier_value.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client_ip.as_bytes());
            if let Ok(value) = HeaderValue::from_bytes(&joined) {
                earlier.insert(value);
            }
        }
        header::Entry::Vacant(slot) => {
            slot.insert(client_ip.clone());
        }
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
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
    fn forwarded_headers_name_the_client_and_append_to_earlier_proxies() {
        let ip = HeaderValue::from_static("10.0.0.7");
        let mut headers = map(&[("host", "example.org")]);
        add_forwarded(&mut headers, &ip);
        assert_eq!(headers["x-forwarded-for"], "10.0.0.7");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "example.org");

        let mut headers = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-host", "spoof"),
        ]);
        add_forwarded(&mut headers, &ip);
        assert_eq!(headers["x-forwarded-for"], "1.2.3.4, 10.0.0.7");
        assert!(!headers.contains_key("x-forwarded-host"));
    }
}
