//! The timers of a client connection: its idle timeout and the response-header timeout of the
//! request it is serving.
//!
//! A connection is closed once, for the whole idle timeout, no request began or ended on it and
//! none was open (a response still being sent counts as open). That also bounds how long a
//! client may take to send a request's head, so a client that trickles a header byte now and
//! then cannot hold a connection for ever. A request whose instance has not sent its response
//! head within the response-header timeout gets a 504.
//!
//! One coarse timer per connection, which fires four times per the shorter of the two timeouts,
//! serves both. It replaces hyper's header-read timer and a `tokio::time::timeout` around every
//! request sent to an instance: each was armed and disarmed for every request, and together they
//! cost ~10 % of the instructions of a proxied request (callgrind, `bench/README.md`). A
//! connection therefore closes between 1 and 1.25 idle timeouts after its last activity, and a
//! response head is given up on between 1 and 1.25 response-header timeouts after the request
//! was sent.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

/// Ticks per the shorter timeout.
const TICKS: u32 = 4;

/// The tick of every client connection's timer, and both timeouts counted in ticks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    tick: Duration,
    /// Quiet ticks after which a connection is idle.
    idle_ticks: u64,
    /// Ticks after which a response head is given up on, counted from the tick that was
    /// current when the request was sent (so one more than the whole ticks in the timeout).
    header_ticks: u64,
}

impl Clock {
    pub(crate) fn new(idle: Duration, response_headers: Duration) -> Self {
        let tick = (idle.min(response_headers) / TICKS).max(Duration::from_millis(1));
        let whole_ticks = |timeout: Duration| timeout.as_nanos().div_ceil(tick.as_nanos()) as u64;
        Clock {
            tick,
            idle_ticks: whole_ticks(idle),
            header_ticks: whole_ticks(response_headers) + 1,
        }
    }
}

/// What one client connection is doing.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// Requests begun plus requests ended: any change means the connection was in use.
    changes: AtomicU64,
    open: AtomicUsize,
    /// Ticks of the connection's timer so far.
    ticks: AtomicU64,
    /// Requests waiting for an instance's response head.
    waiting: AtomicUsize,
}

impl Activity {
    /// Counts a request from the moment its head was read until the guard is dropped (with
    /// the response body, once it was sent to the end or abandoned).
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.changes.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Runs `send` (a request sent to an instance, resolving with its response head) until it
    /// resolves, or gives up with `None` once the response-header timeout has passed. No timer
    /// of its own: the connection's timer wakes the connection, and with it this future, on
    /// every tick while a request waits. `send` is taken pinned in place (`Pin<&mut _>`): moving
    /// a whole request into this future showed as copies in instruction counts.
    pub(crate) async fn within_header_timeout<F: Future + Unpin>(
        &self,
        clock: &Clock,
        mut send: F,
    ) -> Option<F::Output> {
        let _waiting = Waiting::new(self);
        let started = self.ticks.load(Ordering::Relaxed);
        std::future::poll_fn(|cx| match Pin::new(&mut send).poll(cx) {
            Poll::Ready(output) => Poll::Ready(Some(output)),
            Poll::Pending if self.ticks.load(Ordering::Relaxed) - started >= clock.header_ticks => {
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        })
        .await
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

/// A request waiting for its response head (see [`Activity::within_header_timeout`]).
struct Waiting<'a>(&'a Activity);

impl<'a> Waiting<'a> {
    fn new(activity: &'a Activity) -> Self {
        activity.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(activity)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The timer of one connection, watching its [`Activity`].
pub(crate) struct IdleWatch {
    activity: Arc<Activity>,
    clock: Clock,
    sleep: Pin<Box<Sleep>>,
    armed: bool,
    seen: u64,
    quiet_ticks: u64,
}

impl IdleWatch {
    pub(crate) fn new(activity: Arc<Activity>, clock: Clock) -> Self {
        IdleWatch {
            activity,
            clock,
            sleep: Box::pin(tokio::time::sleep(clock.tick)),
            armed: false,
            seen: 0,
            quiet_ticks: 0,
        }
    }

    /// Ready once the connection has been idle for the timeout. Cheap when the timer has not
    /// fired (one atomic load), so it can be called on every wake-up of the connection. Poll it
    /// after the connection: on a tick while a request waits for its response head, it wakes
    /// the connection again so that the request sees the tick.
    pub(crate) fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.armed && !self.sleep.is_elapsed() {
            return Poll::Pending;
        }
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                self.armed = true;
                return Poll::Pending;
            }
            self.activity.ticks.fetch_add(1, Ordering::Relaxed);
            if self.activity.waiting.load(Ordering::Relaxed) > 0 {
                cx.waker().wake_by_ref();
            }
            let changes = self.activity.changes.load(Ordering::Relaxed);
            if changes != self.seen || self.activity.open.load(Ordering::Relaxed) > 0 {
                self.seen = changes;
                self.quiet_ticks = 0;
            } else {
                self.quiet_ticks += 1;
                if self.quiet_ticks >= self.clock.idle_ticks {
                    return Poll::Ready(());
                }
            }
            let next = self.sleep.deadline() + self.clock.tick;
            self.sleep.as_mut().reset(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use tokio::time::Instant;

    const IDLE: Duration = Duration::from_secs(60);

    /// How long after `start` the watch says idle, driving the paused clock; `during` runs at
    /// every simulated second.
    async fn idle_after(activity: Arc<Activity>, mut during: impl FnMut(u64)) -> Duration {
        let start = Instant::now();
        let mut watch = IdleWatch::new(activity, Clock::new(IDLE, IDLE));
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

    /// What waiting for a response head that arrives after `answer` gives, and when.
    async fn wait_for_head(answer: Duration, timeout: Duration) -> (Option<()>, Duration) {
        let activity = Arc::new(Activity::default());
        let clock = Clock::new(IDLE, timeout);
        let mut watch = IdleWatch::new(activity.clone(), clock);
        let start = Instant::now();
        let _busy = activity.begin();
        // The connection's task: the request, then the watch, polled in that order.
        let answered = pin!(tokio::time::sleep(answer));
        let mut head = pin!(activity.within_header_timeout(&clock, answered));
        let outcome = std::future::poll_fn(|cx| {
            let polled = head.as_mut().poll(cx);
            assert!(
                watch.poll_idle(cx).is_pending(),
                "idle while a request is open"
            );
            polled
        })
        .await;
        (outcome, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_head_is_given_up_on_after_the_timeout_and_not_before() {
        let timeout = Duration::from_secs(10);
        let (outcome, waited) = wait_for_head(Duration::from_secs(3600), timeout).await;
        assert_eq!(outcome, None);
        assert!(
            waited >= timeout && waited <= timeout + timeout / 4,
            "{waited:?}"
        );

        let (outcome, waited) = wait_for_head(Duration::from_millis(9_900), timeout).await;
        assert_eq!(outcome, Some(()), "answered within the timeout");
        assert_eq!(waited, Duration::from_millis(9_900));
    }

    #[test]
    fn the_tick_serves_the_shorter_timeout() {
        let clock = Clock::new(Duration::from_secs(60), Duration::from_millis(300));
        assert_eq!(clock.tick, Duration::from_millis(75));
        assert_eq!(clock.idle_ticks, 800);
        assert_eq!(clock.header_ticks, 5);
        let clock = Clock::new(Duration::from_secs(60), Duration::from_secs(90));
        assert_eq!(clock.tick, Duration::from_secs(15));
        assert_eq!((clock.idle_ticks, clock.header_ticks), (4, 7));
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
