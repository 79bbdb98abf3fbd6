//! Holding the answer to a request that may have written until its owner says the write is
//! safe (a cluster's `durability = "sync"`: stored on a standby in another zone).
//!
//! The front door knows nothing of what "safe" means: its owner installs a [`WriteGate`]
//! ([`crate::Proxy::set_write_gate`]), and every response to a request whose method may write
//! (anything but GET, HEAD, OPTIONS and TRACE) waits, after the instance sent its head and
//! before the client sees any of it, for [`WriteGate::hold`]. Whatever the instance committed
//! before its head arrived is then covered. When the gate refuses, the client gets a 503 that
//! says the write was not confirmed, never the instance's answer.

use std::future::Future;
use std::pin::Pin;

/// What the front door waits for before it lets the answer to a write go out.
pub trait WriteGate: Send + Sync + std::fmt::Debug + 'static {
    /// Resolves once everything committed until now is safe (`Ok`), or it cannot be made
    /// safe in time (`Err` with the reason the client is told). Called when an instance's
    /// response head to a request that may write has arrived. The future may run on any
    /// runtime: it must not depend on the caller's (spawn on the owner's and wait on a
    /// channel).
    fn hold(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
}

/// Whether a request with this method may change the site's state (its answer is held).
pub(crate) fn may_write(method: &http::Method) -> bool {
    !matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS | http::Method::TRACE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_methods_that_may_write_are_held() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE"] {
            assert!(!may_write(&m.parse().unwrap()), "{m}");
        }
        for m in ["POST", "PUT", "PATCH", "DELETE", "PROPFIND"] {
            assert!(may_write(&m.parse().unwrap()), "{m}");
        }
    }
}
