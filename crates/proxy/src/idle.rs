//! The idle timeout of client connections. A connection is closed once, for the whole idle
//! timeout, no request began or ended on it and none was open (a response still being sent counts as
//! open). That also bounds how long a client may take to send a request's head, so a client
//! that trickles a header byte now and then cannot hold a connection for ever.
//!
//! One coarse timer per connection, which fires four times per timeout, replaces hyper's
//! header-read timer: that one was armed and disarmed for every request, which cost ~5 % of the
//! instructions of a proxied request (callgrind, `bench/README.md`). A connection therefore
//! closes between 1 and 1.25 idle timeouts after its last activity.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

/// Checks per idle timeout.
const TICKS: u32 = 4;

/// What one client connection is doing.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// Requests begun plus requests ended: any change means the connection was in use.
    changes: AtomicU64,
    open: AtomicUsize,
}

impl Activity {
    /// Counts a request from the moment its head was read until the guard is dropped (with
    /// the response body, once it was sent to the end or abandoned).
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.changes.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }
}

/// One open request of a client connection; see [`Activity::begin`].
#[derive(Debug)]
pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.changes.fetch_add(1, Ordering::Relaxed);
    }
}

/// Watches one connection's [`Activity`].
pub(crate) struct IdleWatch {
    activity: Arc<Activity>,
    tick: Duration,
    sleep: Pin<Box<Sleep>>,
    armed: bool,
    seen: u64,
    quiet_ticks: u32,
}

impl IdleWatch {
    pub(crate) fn new(activity: Arc<Activity>, idle: Duration) -> Self {
        let tick = (idle / TICKS).max(Duration::from_millis(1));
        IdleWatch {
            activity,
            tick,
            sleep: Box::pin(tokio::time::sleep(tick)),
            armed: false,
            seen: 0,
            quiet_ticks: 0,
        }
    }

    /// Ready once the connection has been idle for the timeout. Cheap when the timer has not
    /// fired (one atomic load), so it can be called on every wake-up of the connection.
    pub(crate) fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.armed && !self.sleep.is_elapsed() {
            return Poll::Pending;
        }
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                self.armed = true;
                return Poll::Pending;
            }
            let changes = self.activity.changes.load(Ordering::Relaxed);
            if changes != self.seen || self.activity.open.load(Ordering::Relaxed) > 0 {
                self.seen = changes;
                self.quiet_ticks = 0;
            } else {
                self.quiet_ticks += 1;
                if self.quiet_ticks >= TICKS {
                    return Poll::Ready(());
                }
            }
            let next = self.sleep.deadline() + self.tick;
            self.sleep.as_mut().reset(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    const IDLE: Duration = Duration::from_secs(60);

    /// How long after `start` the watch says idle, driving the paused clock; `during` runs at
    /// every simulated second.
    async fn idle_after(activity: Arc<Activity>, mut during: impl FnMut(u64)) -> Duration {
        let start = Instant::now();
        let mut watch = IdleWatch::new(activity, IDLE);
        for second in 0..1000 {
            during(second);
            if std::future::poll_fn(|cx| Poll::Ready(watch.poll_idle(cx)))
                .await
                .is_ready()
            {
                return start.elapsed();
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        panic!("never idle");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_idle_after_the_timeout() {
        let waited = idle_after(Arc::new(Activity::default()), |_| {}).await;
        assert!(waited >= IDLE && waited <= IDLE + IDLE / 4, "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn requests_keep_it_open_and_the_timeout_counts_from_the_last_one() {
        let activity = Arc::new(Activity::default());
        let a = activity.clone();
        let waited = idle_after(activity, move |second| {
            if second < 200 && second % 30 == 0 {
                drop(a.begin());
            }
        })
        .await;
        let after_last = waited - Duration::from_secs(180);
        assert!(
            after_last >= IDLE && after_last <= IDLE + IDLE / 4,
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_response_is_not_cut() {
        let activity = Arc::new(Activity::default());
        let mut download = Some(activity.begin());
        let waited = idle_after(activity, move |second| {
            if second == 300 {
                download.take();
            }
        })
        .await;
        let after_end = waited - Duration::from_secs(300);
        assert!(
            after_end >= IDLE && after_end <= IDLE + IDLE / 4,
            "{waited:?}"
        );
    }
}
