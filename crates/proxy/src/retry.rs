//! When a failed upstream attempt may be tried again on another instance.
//!
//! The rule follows pingora's failover guide: a request that never reached an instance (connect
//! refused, or a pooled connection that was already closed before anything was written) can
//! always go elsewhere. Once bytes were sent, only an idempotent request whose body we still hold
//! (an empty body) may be replayed, and only once, so a dying instance cannot make one request
//! hit every instance.

use http::Method;

/// How far an attempt got before it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Nothing of the request was written to the instance.
    NotSent,
    /// The request was (at least partly) written, and no response headers came back.
    SentNoResponse,
    /// The response headers did not arrive within the configured timeout.
    HeadersTimedOut,
}

/// Whether the method is idempotent (RFC 9110 §9.2.2): repeating it has the same effect.
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Decides whether to try the request again on another instance.
///
/// `replayable` says the request body is empty, so the request can be rebuilt; `retried_after_send`
/// says a sent request was already retried once.
pub(crate) fn may_retry(
    failure: Failure,
    method: &Method,
    replayable: bool,
    retried_after_send: bool,
) -> bool {
    match failure {
        Failure::NotSent => true,
        Failure::SentNoResponse => is_idempotent(method) && replayable && !retried_after_send,
        // The instance may still be working on it; a second copy would double the load that
        // made it slow. The client gets a 504 and decides.
        Failure::HeadersTimedOut => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_that_never_reached_an_instance_is_always_retried() {
        assert!(may_retry(Failure::NotSent, &Method::POST, false, false));
        assert!(may_retry(Failure::NotSent, &Method::POST, false, true));
    }

    #[test]
    fn an_idempotent_request_that_lost_its_instance_is_retried_once() {
        assert!(may_retry(
            Failure::SentNoResponse,
            &Method::GET,
            true,
            false
        ));
        assert!(!may_retry(
            Failure::SentNoResponse,
            &Method::GET,
            true,
            true
        ));
    }

    #[test]
    fn a_sent_post_is_never_retried() {
        assert!(!may_retry(
            Failure::SentNoResponse,
            &Method::POST,
            true,
            false
        ));
        assert!(!may_retry(
            Failure::SentNoResponse,
            &Method::PATCH,
            true,
            false
        ));
    }

    #[test]
    fn a_sent_request_whose_body_is_gone_is_not_retried() {
        assert!(!may_retry(
            Failure::SentNoResponse,
            &Method::PUT,
            false,
            false
        ));
    }

    #[test]
    fn a_timed_out_request_is_not_retried() {
        assert!(!may_retry(
            Failure::HeadersTimedOut,
            &Method::GET,
            true,
            false
        ));
    }
}
