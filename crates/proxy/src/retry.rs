//! When a failed upstream attempt may be tried again on another instance, and which request
//! bodies the front door keeps so that it can send them again.
//!
//! The rule follows pingora's failover guide: a request that never reached an instance (connect
//! refused, or a pooled connection that was already closed before anything was written) can
//! always go elsewhere. Once bytes were sent, a request may be replayed only if repeating it is
//! harmless and the front door still holds its whole body, and only once, so a dying instance
//! cannot make one request hit every instance. Repeating is harmless for an idempotent method
//! (RFC 9110 §9.2.2) and for a request carrying an `Idempotency-Key` header (IETF draft "The
//! Idempotency-Key HTTP Header Field"): the site promises to act on one key at most once.
//!
//! This module decides; it never reads a body or touches a socket.

use http::{HeaderMap, HeaderName, Method};

/// Longest request body the front door keeps in memory to replay a keyed request. Anything
/// larger streams through and is never replayed.
pub(crate) const MAX_REPLAYABLE_BODY: usize = 64 * 1024;

/// The request header by which a client promises that repeating its request is harmless.
/// Pre-parsed: looking a `&str` name up parses it on every request.
pub(crate) static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// How far an attempt got before it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Nothing of the request was written to the instance.
    NotSent,
    /// The request was (at least partly) written, and no response headers came back.
    SentNoResponse,
    /// The response headers did not arrive within the configured timeout.
    HeadersTimedOut,
    /// While the request waited, health checks found the instance hung (or it was ejected).
    InstanceWentDown,
}

/// What the front door does with a request body before sending it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyHandling {
    /// There is no body.
    Empty,
    /// Read the body into memory (at most [`MAX_REPLAYABLE_BODY`] bytes; a body that turns out
    /// larger streams on from where the reading stopped) so the request can be sent again.
    Keep,
    /// Stream the body frame by frame; the request cannot be sent again once sent.
    Stream,
}

/// The facts about a request that decide whether it may be sent twice.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replay<'a> {
    pub(crate) method: &'a Method,
    /// The request carries a non-empty `Idempotency-Key` header.
    pub(crate) has_idempotency_key: bool,
    /// The front door holds the whole body (it is empty or was kept in memory).
    pub(crate) body_held: bool,
}

impl Replay<'_> {
    /// Whether sending this request a second time is harmless and possible.
    pub(crate) fn is_possible(&self) -> bool {
        self.body_held && (is_idempotent(self.method) || self.has_idempotency_key)
    }
}

/// Whether the method is idempotent (RFC 9110 §9.2.2): repeating it has the same effect.
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether the request carries an `Idempotency-Key` header with a value.
pub(crate) fn has_idempotency_key(headers: &HeaderMap) -> bool {
    headers
        .get(&IDEMPOTENCY_KEY)
        .is_some_and(|value| !value.is_empty())
}

/// Decides what to do with a request body.
///
/// `empty` says the body has already ended; `length` is its exact length when known (a
/// `Content-Length`), `None` for a chunked body.
pub(crate) fn body_handling(
    has_idempotency_key: bool,
    empty: bool,
    length: Option<u64>,
) -> BodyHandling {
    if empty {
        return BodyHandling::Empty;
    }
    if !has_idempotency_key {
        // Nothing would make a replay safe, so keeping the body would only cost memory and
        // latency.
        return BodyHandling::Stream;
    }
    match length {
        Some(length) if length > MAX_REPLAYABLE_BODY as u64 => BodyHandling::Stream,
        // A chunked body of unknown length is read up to the cap; most are small.
        _ => BodyHandling::Keep,
    }
}

/// Decides whether to try the request again on another instance.
///
/// `retried_after_send` says a sent request was already retried once.
pub(crate) fn may_retry(failure: Failure, request: Replay<'_>, retried_after_send: bool) -> bool {
    match failure {
        Failure::NotSent => true,
        Failure::SentNoResponse => request.is_possible() && !retried_after_send,
        // The instance may still be working on it; a second copy would double the load that
        // made it slow. The client gets a 504 and decides.
        Failure::HeadersTimedOut => false,
        // Hung, not slow: the copy it holds will not be answered while it is stopped, and a
        // request that may be sent twice is answered by another instance now.
        Failure::InstanceWentDown => request.is_possible() && !retried_after_send,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(method: &Method, body_held: bool) -> Replay<'_> {
        Replay {
            method,
            has_idempotency_key: false,
            body_held,
        }
    }

    fn keyed(method: &Method, body_held: bool) -> Replay<'_> {
        Replay {
            method,
            has_idempotency_key: true,
            body_held,
        }
    }

    #[test]
    fn a_request_that_never_reached_an_instance_is_always_retried() {
        assert!(may_retry(
            Failure::NotSent,
            plain(&Method::POST, false),
            false
        ));
        assert!(may_retry(
            Failure::NotSent,
            plain(&Method::POST, false),
            true
        ));
    }

    #[test]
    fn an_idempotent_request_that_lost_its_instance_is_retried_once() {
        let get = plain(&Method::GET, true);
        assert!(may_retry(Failure::SentNoResponse, get, false));
        assert!(!may_retry(Failure::SentNoResponse, get, true));
    }

    #[test]
    fn a_request_on_a_hung_instance_moves_once_and_only_when_it_may_be_sent_twice() {
        let get = plain(&Method::GET, true);
        assert!(may_retry(Failure::InstanceWentDown, get, false));
        assert!(!may_retry(Failure::InstanceWentDown, get, true));
        assert!(!may_retry(
            Failure::InstanceWentDown,
            plain(&Method::POST, true),
            false
        ));
        assert!(may_retry(
            Failure::InstanceWentDown,
            keyed(&Method::POST, true),
            false
        ));
    }

    #[test]
    fn a_sent_post_without_a_key_is_never_retried() {
        assert!(!may_retry(
            Failure::SentNoResponse,
            plain(&Method::POST, true),
            false
        ));
        assert!(!may_retry(
            Failure::SentNoResponse,
            plain(&Method::PATCH, true),
            false
        ));
    }

    #[test]
    fn a_sent_post_with_a_key_and_a_kept_body_is_retried_once() {
        let post = keyed(&Method::POST, true);
        assert!(may_retry(Failure::SentNoResponse, post, false));
        assert!(!may_retry(Failure::SentNoResponse, post, true));
        assert!(may_retry(
            Failure::SentNoResponse,
            keyed(&Method::PATCH, true),
            false
        ));
    }

    #[test]
    fn a_sent_request_whose_body_is_gone_is_not_retried_even_with_a_key() {
        assert!(!may_retry(
            Failure::SentNoResponse,
            plain(&Method::PUT, false),
            false
        ));
        assert!(!may_retry(
            Failure::SentNoResponse,
            keyed(&Method::POST, false),
            false
        ));
    }

    #[test]
    fn a_timed_out_request_is_not_retried() {
        assert!(!may_retry(
            Failure::HeadersTimedOut,
            plain(&Method::GET, true),
            false
        ));
        assert!(!may_retry(
            Failure::HeadersTimedOut,
            keyed(&Method::POST, true),
            false
        ));
    }

    #[test]
    fn only_a_small_body_of_a_keyed_request_is_kept() {
        let cap = MAX_REPLAYABLE_BODY as u64;
        assert_eq!(body_handling(true, false, Some(12)), BodyHandling::Keep);
        assert_eq!(body_handling(true, false, Some(cap)), BodyHandling::Keep);
        assert_eq!(
            body_handling(true, false, Some(cap + 1)),
            BodyHandling::Stream
        );
        assert_eq!(
            body_handling(true, false, None),
            BodyHandling::Keep,
            "a chunked body is read up to the cap"
        );
    }

    #[test]
    fn a_body_without_a_key_always_streams() {
        assert_eq!(body_handling(false, false, Some(12)), BodyHandling::Stream);
        assert_eq!(body_handling(false, false, None), BodyHandling::Stream);
    }

    #[test]
    fn an_ended_body_is_empty_whatever_the_key() {
        assert_eq!(body_handling(true, true, Some(0)), BodyHandling::Empty);
        assert_eq!(body_handling(false, true, Some(0)), BodyHandling::Empty);
    }

    #[test]
    fn only_a_non_empty_idempotency_key_header_counts() {
        let mut headers = HeaderMap::new();
        assert!(!has_idempotency_key(&headers));
        headers.insert(IDEMPOTENCY_KEY.clone(), "".parse().unwrap());
        assert!(!has_idempotency_key(&headers));
        headers.insert("Idempotency-Key", "order-7".parse().unwrap());
        assert!(has_idempotency_key(&headers));
    }
}
