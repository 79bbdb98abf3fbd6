//! The maintenance gate: while it is on, the front door answers every request itself with a 503
//! page, except for the owner (bypass header, cookie or allowed address). The gate is read once
//! per request from an atomic snapshot, so switching never drops a connection and never splits
//! one request between the two modes.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use crate::body::ProxyBody;
use crate::config::Maintenance;

/// Request header carrying the bypass token.
pub const BYPASS_HEADER: &str = "x-lifeboat-bypass";
/// Cookie carrying the bypass token.
pub const BYPASS_COOKIE: &str = "lifeboat_bypass";

pub(crate) static BYPASS_HEADER_NAME: HeaderName = HeaderName::from_static(BYPASS_HEADER);

/// A [`Maintenance`] prepared for serving: the page is shared bytes, headers are pre-built.
#[derive(Debug)]
pub(crate) struct MaintenanceGate {
    settings: Maintenance,
    page: Bytes,
    retry_after: HeaderValue,
}

impl MaintenanceGate {
    pub(crate) fn new(settings: Maintenance, retry_after: Duration) -> Self {
        let page = Bytes::from(settings.page_html.clone());
        let retry_after = HeaderValue::from(retry_after.as_secs().max(1));
        MaintenanceGate {
            settings,
            page,
            retry_after,
        }
    }

    /// Whether this request may pass to the real site.
    pub(crate) fn lets_through(&self, headers: &HeaderMap, client_ip: IpAddr) -> bool {
        is_bypassed(&self.settings, headers, client_ip)
    }

    /// The 503 answer: the page, `Retry-After`, `Cache-Control: no-store`.
    pub(crate) fn response(&self) -> Response<ProxyBody> {
        let mut response = Response::new(ProxyBody::full(self.page.clone()));
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let headers = response.headers_mut();
        headers.insert(header::RETRY_AFTER, self.retry_after.clone());
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        response
    }
}

/// Bypass rule: header `X-Lifeboat-Bypass: <token>`, cookie `lifeboat_bypass=<token>`, or a
/// client address in `allow_ips`. An empty token never matches.
pub(crate) fn is_bypassed(settings: &Maintenance, headers: &HeaderMap, client_ip: IpAddr) -> bool {
    if settings.allow_ips.iter().any(|ip| same_ip(*ip, client_ip)) {
        return true;
    }
    carries_token(headers, settings.bypass_token.as_bytes())
}

/// Whether the request carries `token` in the `X-Lifeboat-Bypass` header or the
/// `lifeboat_bypass` cookie (compared in constant time). An empty token never matches.
pub(crate) fn carries_token(headers: &HeaderMap, token: &[u8]) -> bool {
    if token.is_empty() {
        return false;
    }
    if headers
        .get_all(&BYPASS_HEADER_NAME)
        .iter()
        .any(|value| constant_time_eq(value.as_bytes().trim_ascii(), token))
    {
        return true;
    }
    headers.get_all(header::COOKIE).iter().any(|value| {
        value.as_bytes().split(|b| *b == b';').any(|pair| {
            let pair = pair.trim_ascii();
            match pair.iter().position(|b| *b == b'=') {
                Some(eq) => {
                    pair[..eq].trim_ascii() == BYPASS_COOKIE.as_bytes()
                        && constant_time_eq(pair[eq + 1..].trim_ascii(), token)
                }
                None => false,
            }
        })
    })
}

/// Whether a `Cookie` header may carry the bypass cookie (its name appears in it).
pub(crate) fn may_hold_bypass_cookie(value: &HeaderValue) -> bool {
    contains(value.as_bytes(), BYPASS_COOKIE.as_bytes())
}

/// Removes the owner's token from a request before it goes to the site: the
/// `X-Lifeboat-Bypass` header and the `lifeboat_bypass` cookie (other cookies are kept, in
/// order), whatever their value. The site is untrusted (it must never learn the maintenance
/// bypass or the rewind preview token, which would let it, or whoever reads its logs, past
/// the owner's gates). Call it after the gate and the preview lane have been decided, for a
/// request whose [`crate::headers::Scan`] found a token (the others have none to remove).
pub(crate) fn strip_owner_tokens(headers: &mut HeaderMap) {
    headers.remove(&BYPASS_HEADER_NAME);
    let carries_cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .any(may_hold_bypass_cookie);
    if !carries_cookie {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| {
            let pairs: Vec<&[u8]> = value
                .as_bytes()
                .split(|b| *b == b';')
                .map(|pair| pair.trim_ascii())
                .filter(|pair| !pair.is_empty() && !is_bypass_cookie(pair))
                .collect();
            if pairs.is_empty() {
                return None;
            }
            HeaderValue::from_bytes(&pairs.join(&b"; "[..])).ok()
        })
        .collect();
    headers.remove(header::COOKIE);
    for value in kept {
        headers.append(header::COOKIE, value);
    }
}

/// Whether a `name=value` cookie pair is the bypass cookie.
fn is_bypass_cookie(pair: &[u8]) -> bool {
    let name = pair.split(|b| *b == b'=').next().unwrap_or(pair);
    name.trim_ascii() == BYPASS_COOKIE.as_bytes()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// IPv4 clients may arrive as IPv4-mapped IPv6 addresses on a dual-stack listener.
fn same_ip(allowed: IpAddr, client: IpAddr) -> bool {
    allowed == client || allowed.to_canonical() == client.to_canonical()
}

/// Compares without an early exit on the first differing byte, so the token cannot be guessed
/// byte by byte from response times.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Maintenance {
        Maintenance {
            page_html: "<h1>Back soon</h1>".into(),
            bypass_token: "s3cret".into(),
            allow_ips: vec!["10.1.1.1".parse().unwrap()],
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    const STRANGER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 9));

    #[test]
    fn strangers_get_the_maintenance_page() {
        assert!(!is_bypassed(&settings(), &headers(&[]), STRANGER));
        assert!(!is_bypassed(
            &settings(),
            &headers(&[("x-lifeboat-bypass", "wrong")]),
            STRANGER
        ));
        assert!(!is_bypassed(
            &settings(),
            &headers(&[("cookie", "lifeboat_bypass=s3cre")]),
            STRANGER
        ));
    }

    #[test]
    fn the_owner_passes_with_header_cookie_or_allowed_address() {
        assert!(is_bypassed(
            &settings(),
            &headers(&[("x-lifeboat-bypass", "s3cret")]),
            STRANGER
        ));
        assert!(is_bypassed(
            &settings(),
            &headers(&[("cookie", "theme=dark; lifeboat_bypass=s3cret")]),
            STRANGER
        ));
        let mapped: IpAddr = "::ffff:10.1.1.1".parse().unwrap();
        assert!(is_bypassed(&settings(), &headers(&[]), mapped));
    }

    #[test]
    fn an_empty_token_lets_nobody_through() {
        let open = Maintenance {
            bypass_token: String::new(),
            ..settings()
        };
        assert!(!is_bypassed(
            &open,
            &headers(&[("x-lifeboat-bypass", "")]),
            STRANGER
        ));
        assert!(!is_bypassed(
            &open,
            &headers(&[("cookie", "lifeboat_bypass=")]),
            STRANGER
        ));
    }

    #[test]
    fn the_owner_token_is_removed_and_other_cookies_kept() {
        let mut map = headers(&[
            ("x-lifeboat-bypass", "s3cret"),
            ("cookie", "theme=dark; lifeboat_bypass=s3cret; lang=en"),
            ("cookie", "lifeboat_bypass=other"),
            ("accept", "text/html"),
        ]);
        strip_owner_tokens(&mut map);
        assert!(!map.contains_key("x-lifeboat-bypass"));
        let cookies: Vec<_> = map.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["theme=dark; lang=en"]);
        assert_eq!(map["accept"], "text/html");

        let mut map = headers(&[("cookie", "not_lifeboat_bypass_really=1; a=2")]);
        strip_owner_tokens(&mut map);
        assert_eq!(
            map["cookie"], "not_lifeboat_bypass_really=1; a=2",
            "only that exact cookie name"
        );
    }

    #[test]
    fn the_maintenance_answer_is_an_uncached_503_with_retry_after() {
        let gate = MaintenanceGate::new(settings(), Duration::from_secs(120));
        let response = gate.response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "120");
        assert_eq!(response.headers()["cache-control"], "no-store");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
    }
}
