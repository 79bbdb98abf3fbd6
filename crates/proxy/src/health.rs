//! Active health checks: the pure threshold logic ([`HealthTracker`]) and the loop that probes one
//! instance every interval. The loop only reports results; what they mean for routing is decided
//! by the tracker and applied by the backend registry.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// What the front door believes about an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendHealth {
    /// Added, but no check has decided yet; receives no traffic.
    Unknown,
    /// Passed its checks; receives traffic unless ejected.
    Healthy,
    /// Failed its checks (or was ejected); receives no traffic.
    Unhealthy,
}

/// Consecutive-result thresholds: an instance becomes healthy after `healthy_threshold` passed
/// checks in a row and unhealthy after `unhealthy_threshold` failed checks in a row.
#[derive(Debug, Clone)]
pub(crate) struct HealthTracker {
    health: BackendHealth,
    passes: u32,
    failures: u32,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
}

impl HealthTracker {
    pub(crate) fn new(healthy_threshold: u32, unhealthy_threshold: u32) -> Self {
        HealthTracker {
            health: BackendHealth::Unknown,
            passes: 0,
            failures: 0,
            healthy_threshold: healthy_threshold.max(1),
            unhealthy_threshold: unhealthy_threshold.max(1),
        }
    }

    pub(crate) fn health(&self) -> BackendHealth {
        self.health
    }

    /// Records one check result; returns the new health when it changed.
    pub(crate) fn record(&mut self, passed: bool) -> Option<BackendHealth> {
        let next = if passed {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
            (self.passes >= self.healthy_threshold).then_some(BackendHealth::Healthy)
        } else {
            self.passes = 0;
            self.failures = self.failures.saturating_add(1);
            (self.failures >= self.unhealthy_threshold).then_some(BackendHealth::Unhealthy)
        };
        match next {
            Some(health) if health != self.health => {
                self.health = health;
                Some(health)
            }
            _ => None,
        }
    }

    /// Passive ejection: the instance is unhealthy at once and must pass `healthy_threshold`
    /// checks again. Returns whether the health changed.
    pub(crate) fn eject(&mut self) -> bool {
        self.passes = 0;
        self.failures = self.unhealthy_threshold;
        let changed = self.health != BackendHealth::Unhealthy;
        self.health = BackendHealth::Unhealthy;
        changed
    }
}

/// Probes `GET path` on `addr` over a fresh connection; Ok for a 2xx or 3xx answer within
/// `timeout`, otherwise the reason in words.
pub(crate) async fn probe_http(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(), String> {
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr} failed: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {addr} failed: {e}"))?;
        let conn = tokio::spawn(conn);
        let request = Request::get(path)
            .header(header::HOST, addr.to_string())
            .header(header::CONNECTION, "close")
            .header(header::USER_AGENT, "lifeboat-health-check")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("invalid health check path {path:?}: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("GET {path} failed: {e}"));
        conn.abort();
        let status = response?.status();
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!("GET {path} answered {status}"))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("GET {path} took longer than {timeout:?}")),
    }
}

/// How long to wait before the next check: the configured interval while all is well, a
/// quarter of it while something is wrong (the last check failed, or the instance is not in
/// rotation), so a failing instance is confirmed dead and a recovered one readmitted quickly,
/// like HAProxy's `fastinter`.
pub(crate) fn next_check_in(interval: Duration, all_well: bool) -> Duration {
    let interval = interval.max(Duration::from_millis(1));
    if all_well {
        interval
    } else {
        (interval / 4).max(Duration::from_millis(1))
    }
}

/// Runs `probe` at once and then again after [`next_check_in`] until `stop` turns true (or its
/// sender is dropped), handing every result to `report`, which answers whether all is well.
pub(crate) async fn run_checks<P, F, R>(
    interval: Duration,
    mut probe: P,
    mut stop: watch::Receiver<bool>,
    mut report: R,
) where
    P: FnMut() -> F,
    F: Future<Output = Result<(), String>>,
    R: FnMut(Result<(), String>) -> bool,
{
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = crate::health::stopped(&mut stop) => return,
        }
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            result = probe() => result,
            _ = crate::health::stopped(&mut stop) => return,
        };
        next = started + next_check_in(interval, report(result));
    }
}

/// Resolves once `stop` turns true or its sender is gone.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn one_passed_check_makes_a_new_instance_healthy_by_default() {
        let mut tracker = HealthTracker::new(1, 2);
        assert_eq!(tracker.health(), BackendHealth::Unknown);
        assert_eq!(tracker.record(true), Some(BackendHealth::Healthy));
        assert_eq!(tracker.record(true), None);
    }

    #[test]
    fn a_single_failed_check_does_not_take_a_healthy_instance_out() {
        let mut tracker = HealthTracker::new(1, 2);
        tracker.record(true);
        assert_eq!(tracker.record(false), None);
        assert_eq!(tracker.health(), BackendHealth::Healthy);
        assert_eq!(
            tracker.record(true),
            None,
            "a pass resets the failure count"
        );
        assert_eq!(tracker.record(false), None);
        assert_eq!(tracker.record(false), Some(BackendHealth::Unhealthy));
    }

    #[test]
    fn healthy_threshold_needs_consecutive_passes() {
        let mut tracker = HealthTracker::new(3, 1);
        assert_eq!(tracker.record(true), None);
        assert_eq!(tracker.record(true), None);
        assert_eq!(tracker.record(false), Some(BackendHealth::Unhealthy));
        assert_eq!(tracker.record(true), None);
        assert_eq!(tracker.record(true), None);
        assert_eq!(tracker.record(true), Some(BackendHealth::Healthy));
    }

    #[test]
    fn an_ejected_instance_comes_back_only_after_passing_checks() {
        let mut tracker = HealthTracker::new(2, 2);
        tracker.record(true);
        tracker.record(true);
        assert!(tracker.eject());
        assert_eq!(tracker.health(), BackendHealth::Unhealthy);
        assert!(!tracker.eject(), "ejecting twice changes nothing");
        assert_eq!(tracker.record(true), None);
        assert_eq!(tracker.record(true), Some(BackendHealth::Healthy));
    }

    #[test]
    fn a_failing_instance_is_checked_four_times_as_often() {
        let second = Duration::from_secs(1);
        assert_eq!(next_check_in(second, true), second);
        assert_eq!(next_check_in(second, false), Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn checks_run_at_once_then_every_interval_until_stopped() {
        let (stop_tx, stop_rx) = watch::channel(false);
        let results = Arc::new(Mutex::new(Vec::new()));
        let started = tokio::time::Instant::now();
        let seen = results.clone();
        let task = tokio::spawn(run_checks(
            Duration::from_secs(1),
            || async { Err("down".to_string()) },
            stop_rx,
            move |r| {
                seen.lock().unwrap().push((started.elapsed(), r));
                true
            },
        ));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        let times: Vec<_> = results
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| t.as_secs())
            .collect();
        assert_eq!(times, vec![0, 1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_instance_that_stops_answering_turns_unhealthy_on_the_second_failed_check() {
        // The probe passes for the first two checks (t = 0s, 1s), then fails (t = 2s); with the
        // default thresholds the tracker flips to unhealthy on the second failure, which comes
        // a quarter interval later (t = 2.25s), not before.
        let (stop_tx, stop_rx) = watch::channel(false);
        let transitions = Arc::new(Mutex::new(Vec::new()));
        let started = tokio::time::Instant::now();
        let mut tracker = HealthTracker::new(1, 2);
        let mut calls = 0;
        let seen = transitions.clone();
        let task = tokio::spawn(run_checks(
            Duration::from_secs(1),
            move || {
                calls += 1;
                let passed = calls <= 2;
                async move {
                    if passed {
                        Ok(())
                    } else {
                        Err("refused".into())
                    }
                }
            },
            stop_rx,
            move |r| {
                if let Some(h) = tracker.record(r.is_ok()) {
                    seen.lock()
                        .unwrap()
                        .push((started.elapsed().as_millis(), h));
                }
                r.is_ok() && tracker.health() == BackendHealth::Healthy
            },
        ));
        tokio::time::sleep(Duration::from_millis(4500)).await;
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(
            *transitions.lock().unwrap(),
            vec![
                (0, BackendHealth::Healthy),
                (2250, BackendHealth::Unhealthy)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_slower_than_its_timeout_fails() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // The listener accepts (kernel backlog) but never answers.
        let result = probe_http(addr, "/healthz", Duration::from_millis(500)).await;
        assert!(result.unwrap_err().contains("longer than"));
        drop(listener);
    }
}
