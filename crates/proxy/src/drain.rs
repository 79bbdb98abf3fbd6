//! Waiting for instances taken out of rotation to finish the requests they were serving, with
//! or without a deadline.
//!
//! A [`Drain`] is what [`crate::Proxy::remove_backend`], [`crate::Proxy::promote_staged`] and
//! [`crate::Proxy::discard_staged`] return: awaited as it is, it waits as long as the requests
//! take. A client that never reads its large download would keep it waiting for ever (the send
//! timeout ends that eventually, but only after a minute by default), so the owner can bound
//! it with [`Drain::within`]: at the deadline, the client connections of the requests still
//! running on those instances are closed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::backend::Backend;
use crate::server::Shared;

/// How long cut connections get to close once told to (their serving threads drop them at
/// their next turn, normally within milliseconds); past it, a bounded drain stops waiting
/// rather than break its promise of a deadline.
pub(crate) const CUT_GRACE: Duration = Duration::from_secs(1);

/// Instances taken out of rotation, draining: resolves with `T` once every request they were
/// serving has finished (response bodies included). The instances were removed when the
/// `Drain` was made; dropping it only stops waiting. See [`Drain::within`] for a bounded wait.
#[must_use = "a drain does nothing unless awaited; the instances are already out of rotation"]
pub struct Drain<T> {
    shared: Arc<Shared>,
    backends: Vec<Arc<Backend>>,
    value: Option<T>,
    drained: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// How a bounded drain ([`Drain::within`]) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drained<T> {
    /// What awaiting the drain gives (the removed ids, for [`crate::Proxy::promote_staged`]).
    pub value: T,
    /// Requests still running at the deadline whose client connections were closed; 0 when
    /// every request finished in time.
    pub cut: usize,
}

impl<T> std::fmt::Debug for Drain<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.backends.iter().map(|b| b.id.as_str()).collect();
        f.debug_struct("Drain").field("instances", &ids).finish()
    }
}

impl<T> Drain<T> {
    pub(crate) fn new(shared: Arc<Shared>, backends: Vec<Arc<Backend>>, value: T) -> Self {
        let waited = backends.clone();
        Drain {
            shared,
            backends,
            value: Some(value),
            drained: Box::pin(async move { all_drained(&waited).await }),
        }
    }

    /// Waits for the drain for at most `grace`; then closes the client connections of the
    /// requests still running on these instances (each loses its response, or gets none) and
    /// resolves once they are gone, so that stopping the instances afterwards loses nothing
    /// more. `Duration::ZERO` cuts at once. Resolves by `grace` plus a moment (the serving
    /// threads' next turn, at most a second), whatever the clients do.
    pub async fn within(self, grace: Duration) -> Drained<T> {
        let Drain {
            shared,
            backends,
            value,
            drained,
        } = self;
        let value = value.expect("a drain resolves once, and `within` takes it whole");
        if tokio::time::timeout(grace, drained).await.is_ok() {
            return Drained { value, cut: 0 };
        }
        let cut = backends.iter().map(|b| b.in_flight()).sum();
        let serials: Vec<u64> = backends.iter().map(|b| b.serial).collect();
        shared.cut(&serials);
        if tokio::time::timeout(CUT_GRACE, all_drained(&backends))
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = backends.iter().map(|b| b.in_flight()).sum::<usize>(),
                "cut requests did not end within {CUT_GRACE:?}; not waiting for them any more"
            );
        }
        shared.uncut(&serials);
        Drained { value, cut }
    }
}

impl<T: Unpin> Future for Drain<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.get_mut();
        match this.drained.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(
                this.value
                    .take()
                    .expect("a drain is not polled after it resolved"),
            ),
            Poll::Pending => Poll::Pending,
        }
    }
}

async fn all_drained(backends: &[Arc<Backend>]) {
    for backend in backends {
        backend.drained().await;
    }
}
