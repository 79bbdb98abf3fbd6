//! The timers of a client connection: its idle timeout, the response-header timeout of the
//! request it is serving, and the two timeouts that keep a slow client from holding anything
//! for ever: the send timeout (the client accepts no more of its response) and the body timeout
//! (the client stopped sending its request body).
//!
//! A connection is closed once, for the whole idle timeout, no request began or ended on it and
//! none was open (a response still being sent counts as open). That also bounds how long a
//! client may take to send a request's head, so a client that trickles a header byte now and
//! then cannot hold a connection for ever. A request whose instance has not sent its response
//! head within the response-header timeout gets a 504.
//!
//! The send and body timeouts count only time in which the client is the one holding things
//! up, as nginx's `send_timeout` and `client_body_timeout` do: the send timeout runs while a
//! write to the client's socket is blocked (its buffer is full because the client does not
//! read) and restarts whenever a blocked write goes through; the body timeout runs while the
//! request body waits for the client's next bytes and restarts with every piece that arrives.
//! A slow but steady client is never cut. A connection whose send timeout passes is closed
//! (the response is abandoned, the instance's in-flight count drops). A request whose body
//! times out gets a 408 with `Connection: close` if its response has not begun (the request to
//! the instance is dropped, which aborts it), or its connection is closed.
//!
//! One coarse timer per connection, which fires four times per the shortest timeout, serves
//! them all. It replaces hyper's header-read timer and a `tokio::time::timeout` around every
//! request sent to an instance: each was armed and disarmed for every request, and together they
//! cost ~10 % of the instructions of a proxied request (callgrind, `bench/README.md`). The
//! request path only bumps counters; the timer compares them between ticks. A connection
//! therefore closes between 1 and 1.25 idle timeouts after its last activity, a response head
//! is given up on between 1 and 1.25 response-header timeouts after the request was sent, and
//! likewise a stalled send or body between 1 and 1.25 of its timeout after it stalled.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

use crate::config::Timeouts;

/// Ticks per the shorter timeout.
const TICKS: u32 = 4;

/// The tick of every client connection's timer, and each timeout counted in ticks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    tick: Duration,
    /// Quiet ticks after which a connection is idle.
    idle_ticks: u64,
    /// Ticks after which a response head is given up on, counted from the tick that was
    /// current when the request was sent (so one more than the whole ticks in the timeout).
    header_ticks: u64,
    /// Whole ticks a write to the client may stay blocked, counted from the first tick that saw
    /// it blocked.
    send_ticks: u64,
    /// Whole ticks a request body may wait for the client, counted likewise.
    body_ticks: u64,
}

impl Clock {
    pub(crate) fn new(timeouts: &Timeouts) -> Self {
        let shortest = timeouts
            .idle
            .min(timeouts.response_headers)
            .min(timeouts.send)
            .min(timeouts.body);
        let tick = (shortest / TICKS).max(Duration::from_millis(1));
        let whole_ticks = |timeout: Duration| timeout.as_nanos().div_ceil(tick.as_nanos()) as u64;
        Clock {
            tick,
            idle_ticks: whole_ticks(timeouts.idle),
            header_ticks: whole_ticks(timeouts.response_headers) + 1,
            send_ticks: whole_ticks(timeouts.send),
            body_ticks: whole_ticks(timeouts.body),
        }
    }
}

/// What one client connection is doing. Written by the request path (cheap relaxed counters,
/// all on the connection's serving thread), read by the connection's timer.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// Requests begun plus requests ended: any change means the connection was in use.
    changes: AtomicU64,
    open: AtomicUsize,
    /// Ticks of the connection's timer so far.
    ticks: AtomicU64,
    /// Requests waiting for an instance's response head or for their body to be read in.
    waiting: AtomicUsize,
    /// The last write to the client's socket could not go through (its buffer is full).
    write_blocked: AtomicBool,
    /// Blocked writes that went through since: progress for the send timeout.
    unblocked: AtomicU64,
    /// The request body is waiting for the client's next bytes.
    body_waiting: AtomicBool,
    /// Pieces of request body received: progress for the body timeout.
    body_pieces: AtomicU64,
    /// The body timeout passed: the request waiting on that body gives up.
    body_timed_out: AtomicBool,
    /// Which instance (its `Backend::serial`) the open request was sent to, 0 for none: an
    /// instance whose requests are cut closes the connections serving them.
    upstream: AtomicU64,
}

impl Activity {
    /// Counts a request from the moment its head was read until the guard is dropped (with
    /// the response body, once it was sent to the end or abandoned).
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.changes.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        self.upstream.store(0, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Whether a request is open on the connection.
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed) > 0
    }

    /// The open request was sent to the instance with this serial.
    pub(crate) fn sent_to(&self, serial: u64) {
        self.upstream.store(serial, Ordering::Relaxed);
    }

    /// The instance the open request was sent to (its serial), 0 for none.
    pub(crate) fn upstream(&self) -> u64 {
        self.upstream.load(Ordering::Relaxed)
    }

    /// A write to the client's socket could not go through.
    pub(crate) fn write_blocked(&self) {
        if !self.write_blocked.load(Ordering::Relaxed) {
            self.write_blocked.store(true, Ordering::Relaxed);
        }
    }

    /// A write to the client's socket went through. One relaxed load when no write was blocked,
    /// which is nearly always.
    pub(crate) fn wrote(&self) {
        if self.write_blocked.load(Ordering::Relaxed) {
            self.write_blocked.store(false, Ordering::Relaxed);
            self.unblocked.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The request body waits for the client (`true`), or got a piece or ended (`false`).
    pub(crate) fn body_waiting(&self, waiting: bool) {
        if !waiting {
            self.body_pieces.fetch_add(1, Ordering::Relaxed);
        }
        if self.body_waiting.load(Ordering::Relaxed) != waiting {
            self.body_waiting.store(waiting, Ordering::Relaxed);
        }
    }

    /// Whether the body timeout passed for the request being read.
    pub(crate) fn body_timed_out(&self) -> bool {
        self.body_timed_out.load(Ordering::Relaxed)
    }

    /// Runs `send` (a request sent to an instance, resolving with its response head) until it
    /// resolves, or gives up once the response-header timeout has passed or the request's body
    /// timed out. No timer of its own: the connection's timer wakes the connection, and with
    /// it this future, on every tick while a request waits. `send` is taken pinned in place
    /// (`Pin<&mut _>`): moving a whole request into this future showed as copies in
    /// instruction counts.
    pub(crate) async fn within_timeouts<F: Future + Unpin>(
        &self,
        clock: &Clock,
        mut send: F,
    ) -> Result<F::Output, GaveUp> {
        let _waiting = Waiting::new(self);
        let started = self.ticks.load(Ordering::Relaxed);
        std::future::poll_fn(|cx| match Pin::new(&mut send).poll(cx) {
            Poll::Ready(output) => Poll::Ready(Ok(output)),
            Poll::Pending if self.body_timed_out() => Poll::Ready(Err(GaveUp::BodyTimedOut)),
            Poll::Pending if self.ticks.load(Ordering::Relaxed) - started >= clock.header_ticks => {
                Poll::Ready(Err(GaveUp::HeadTimedOut))
            }
            Poll::Pending => Poll::Pending,
        })
        .await
    }

    /// Runs `read` (reading the request body in) with the connection's timer waking it on
    /// every tick, so that it sees the body timeout pass.
    pub(crate) async fn woken_by_ticks<F: Future>(&self, read: F) -> F::Output {
        let _waiting = Waiting::new(self);
        read.await
    }
}

/// Why a request stopped waiting for its response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GaveUp {
    /// The instance did not answer within the response-header timeout.
    HeadTimedOut,
    /// The client stopped sending the request body for the body timeout.
    BodyTimedOut,
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

/// A request waiting for its response head (see [`Activity::within_timeouts`]).
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

/// Why a connection's timer closes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    /// Nothing happened on it for the idle timeout.
    Idle,
    /// The client accepted none of its response for the send timeout.
    Send,
    /// The client sent none of its request body for the body timeout.
    Body,
}

/// Something that may stall (a blocked write, a body waiting for the client), watched tick by
/// tick: how many whole ticks it has been stalled without progress.
#[derive(Debug, Default)]
struct Stall {
    /// It was stalled at the last tick.
    armed: bool,
    /// The progress counter at the tick that armed it.
    seen: u64,
    quiet_ticks: u64,
}

impl Stall {
    /// Whole ticks stalled so far, given whether it is stalled now and its progress counter.
    fn observe(&mut self, stalled: bool, progress: u64) -> u64 {
        if stalled && self.armed && progress == self.seen {
            self.quiet_ticks += 1;
        } else {
            self.armed = stalled;
            self.seen = progress;
            self.quiet_ticks = 0;
        }
        self.quiet_ticks
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
    send: Stall,
    body: Stall,
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
            send: Stall::default(),
            body: Stall::default(),
        }
    }

    /// Ready once the connection must be closed: idle for the idle timeout, or a send or body
    /// stalled for its timeout while nothing can be answered any more. Cheap when the timer has
    /// not fired (one atomic load), so it can be called on every wake-up of the connection.
    /// Poll it after the connection: on a tick while a request waits for its response head, it
    /// wakes the connection again so that the request sees the tick.
    pub(crate) fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<Expired> {
        if self.armed && !self.sleep.is_elapsed() {
            return Poll::Pending;
        }
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                self.armed = true;
                return Poll::Pending;
            }
            if let Some(expired) = self.tick(cx) {
                return Poll::Ready(expired);
            }
            let next = self.sleep.deadline() + self.clock.tick;
            self.sleep.as_mut().reset(next);
        }
    }

    /// One tick of the timer.
    fn tick(&mut self, cx: &mut Context<'_>) -> Option<Expired> {
        let activity = &*self.activity;
        activity.ticks.fetch_add(1, Ordering::Relaxed);
        let open = activity.open.load(Ordering::Relaxed) > 0;

        let stalled_body = self.body.observe(
            activity.body_waiting.load(Ordering::Relaxed),
            activity.body_pieces.load(Ordering::Relaxed),
        );
        if stalled_body >= self.clock.body_ticks {
            activity.body_timed_out.store(true, Ordering::Relaxed);
        }
        let waiting = activity.waiting.load(Ordering::Relaxed) > 0;
        if waiting {
            cx.waker().wake_by_ref();
        }
        if activity.body_timed_out() && (!waiting || !open) {
            // Nobody is left to answer the client (the response had begun, or the 408 has been
            // sent): the rest of the body would never be read.
            return Some(Expired::Body);
        }

        let stalled_send = self.send.observe(
            activity.write_blocked.load(Ordering::Relaxed),
            activity.unblocked.load(Ordering::Relaxed),
        );
        if stalled_send >= self.clock.send_ticks {
            return Some(Expired::Send);
        }

        let changes = activity.changes.load(Ordering::Relaxed);
        if changes != self.seen || open {
            self.seen = changes;
            self.quiet_ticks = 0;
        } else {
            self.quiet_ticks += 1;
            if self.quiet_ticks >= self.clock.idle_ticks {
                return Some(Expired::Idle);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use tokio::time::Instant;

    const IDLE: Duration = Duration::from_secs(60);

    fn timeouts(idle: Duration, response_headers: Duration) -> Timeouts {
        Timeouts {
            idle,
            response_headers,
            send: IDLE,
            body: IDLE,
            ..Timeouts::default()
        }
    }

    /// How long after `start` the watch closes the connection, and why, driving the paused
    /// clock; `during` runs at every simulated second.
    async fn expires_after(
        activity: Arc<Activity>,
        clock: Clock,
        mut during: impl FnMut(u64),
    ) -> (Expired, Duration) {
        let start = Instant::now();
        let mut watch = IdleWatch::new(activity, clock);
        for second in 0..1000 {
            during(second);
            if let Poll::Ready(expired) =
                std::future::poll_fn(|cx| Poll::Ready(watch.poll_idle(cx))).await
            {
                return (expired, start.elapsed());
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        panic!("never closed");
    }

    async fn idle_after(activity: Arc<Activity>, during: impl FnMut(u64)) -> Duration {
        let (expired, waited) =
            expires_after(activity, Clock::new(&timeouts(IDLE, IDLE)), during).await;
        assert_eq!(expired, Expired::Idle);
        waited
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
    async fn wait_for_head(answer: Duration, timeout: Duration) -> (Result<(), GaveUp>, Duration) {
        let activity = Arc::new(Activity::default());
        let clock = Clock::new(&timeouts(IDLE, timeout));
        let mut watch = IdleWatch::new(activity.clone(), clock);
        let start = Instant::now();
        let _busy = activity.begin();
        // The connection's task: the request, then the watch, polled in that order.
        let answered = pin!(tokio::time::sleep(answer));
        let mut head = pin!(activity.within_timeouts(&clock, answered));
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
        assert_eq!(outcome, Err(GaveUp::HeadTimedOut));
        assert!(
            waited >= timeout && waited <= timeout + timeout / 4,
            "{waited:?}"
        );

        let (outcome, waited) = wait_for_head(Duration::from_millis(9_900), timeout).await;
        assert_eq!(outcome, Ok(()), "answered within the timeout");
        assert_eq!(waited, Duration::from_millis(9_900));
    }

    #[test]
    fn the_tick_serves_the_shortest_timeout() {
        let clock = Clock::new(&timeouts(
            Duration::from_secs(60),
            Duration::from_millis(300),
        ));
        assert_eq!(clock.tick, Duration::from_millis(75));
        assert_eq!(clock.idle_ticks, 800);
        assert_eq!(clock.header_ticks, 5);
        let clock = Clock::new(&timeouts(Duration::from_secs(60), Duration::from_secs(90)));
        assert_eq!(clock.tick, Duration::from_secs(15));
        assert_eq!((clock.idle_ticks, clock.header_ticks), (4, 7));
        let clock = Clock::new(&Timeouts {
            send: Duration::from_secs(2),
            body: Duration::from_secs(4),
            ..Timeouts::default()
        });
        assert_eq!(clock.tick, Duration::from_millis(500));
        assert_eq!((clock.send_ticks, clock.body_ticks), (4, 8));
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

    const SEND: Duration = Duration::from_secs(20);

    fn send_clock() -> Clock {
        Clock::new(&Timeouts {
            send: SEND,
            body: SEND,
            ..Timeouts::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_cut_after_the_send_timeout() {
        let activity = Arc::new(Activity::default());
        let a = activity.clone();
        let _download = activity.begin();
        let (expired, waited) = expires_after(activity, send_clock(), move |second| {
            if second == 100 {
                a.write_blocked();
            }
        })
        .await;
        assert_eq!(expired, Expired::Send);
        let stalled = waited - Duration::from_secs(100);
        assert!(stalled >= SEND && stalled <= SEND + SEND / 4, "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_taking_bytes_is_not_cut() {
        let activity = Arc::new(Activity::default());
        let a = activity.clone();
        let mut download = Some(activity.begin());
        // Blocked most of the time, but a write goes through every 15 s (less than the send
        // timeout) for 300 s; then the download ends and the connection idles out.
        let (expired, waited) = expires_after(activity, send_clock(), move |second| {
            if second < 300 {
                if second % 15 == 0 {
                    a.wrote();
                }
                a.write_blocked();
            } else {
                a.wrote();
                download.take();
            }
        })
        .await;
        assert_eq!(expired, Expired::Idle);
        assert!(waited >= Duration::from_secs(300) + IDLE, "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out_and_a_trickling_one_does_not() {
        // A body that gets a piece every 15 s for 300 s, then stops.
        let activity = Arc::new(Activity::default());
        let a = activity.clone();
        let _upload = activity.begin();
        let (expired, waited) = expires_after(activity.clone(), send_clock(), move |second| {
            if second < 300 && second % 15 == 0 {
                a.body_waiting(false);
            }
            a.body_waiting(true);
        })
        .await;
        // No request waits for a response head here, so nobody can answer 408: the timer
        // closes the connection itself.
        assert_eq!(expired, Expired::Body);
        assert!(activity.body_timed_out());
        let stalled = waited - Duration::from_secs(285);
        assert!(stalled >= SEND && stalled <= SEND + SEND / 4, "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waiting_for_its_head_gives_up_when_its_body_times_out() {
        let activity = Arc::new(Activity::default());
        let clock = send_clock();
        let mut watch = IdleWatch::new(activity.clone(), clock);
        let start = Instant::now();
        let _busy = activity.begin();
        activity.body_waiting(true);
        let never = pin!(std::future::pending::<()>());
        let mut head = pin!(activity.within_timeouts(&clock, never));
        let outcome = std::future::poll_fn(|cx| {
            let polled = head.as_mut().poll(cx);
            assert!(watch.poll_idle(cx).is_pending(), "the request answers");
            polled
        })
        .await;
        assert_eq!(outcome, Err(GaveUp::BodyTimedOut));
        let waited = start.elapsed();
        assert!(waited >= SEND && waited <= SEND + SEND / 4, "{waited:?}");
    }
}
