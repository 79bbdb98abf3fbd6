//! Active health checks: the pure threshold logic ([`HealthTracker`]) and the loop that probes one
//! instance every interval. The loop only reports results; what they mean for routing is decided
//! by the tracker and applied by the backend registry.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http::header::{self, HeaderValue};
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
///
/// It also keeps the reason told for an unhealthy verdict current: an instance that stays
/// unhealthy but now fails for another reason (it timed out while starting, and now answers
/// 400) is reported again once the new reason has been seen `unhealthy_threshold` checks in a
/// row, the same confirmation a verdict needs; a reason that flaps from check to check is not
/// repeated into the event log.
#[derive(Debug, Clone)]
pub(crate) struct HealthTracker {
    health: BackendHealth,
    passes: u32,
    failures: u32,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    /// The reason told for the current unhealthy verdict.
    reported: Option<String>,
    /// A different failure reason and how many checks in a row gave it.
    candidate: Option<(String, u32)>,
}

/// A verdict to tell the owner: the instance's health and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) health: BackendHealth,
    pub(crate) reason: String,
}

/// A check result in words, as reported in events and `BackendStatus::last_check`.
pub(crate) fn reason_of(result: &Result<(), String>) -> String {
    match result {
        Ok(()) => "health check passed".to_string(),
        Err(reason) => reason.clone(),
    }
}

impl HealthTracker {
    pub(crate) fn new(healthy_threshold: u32, unhealthy_threshold: u32) -> Self {
        HealthTracker {
            health: BackendHealth::Unknown,
            passes: 0,
            failures: 0,
            healthy_threshold: healthy_threshold.max(1),
            unhealthy_threshold: unhealthy_threshold.max(1),
            reported: None,
            candidate: None,
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

    /// Records one check result; returns the verdict to tell when the health changed, or when
    /// the instance stays unhealthy for a new reason (see the type's docs).
    pub(crate) fn record_result(&mut self, result: &Result<(), String>) -> Option<Verdict> {
        let changed = self.record(result.is_ok());
        let reason = match result {
            Ok(()) => {
                self.candidate = None;
                self.reported = None;
                return changed.map(|health| Verdict {
                    health,
                    reason: reason_of(result),
                });
            }
            Err(reason) => reason,
        };
        if changed.is_some() {
            self.candidate = None;
            self.reported = Some(reason.clone());
            return changed.map(|health| Verdict {
                health,
                reason: reason.clone(),
            });
        }
        if self.health != BackendHealth::Unhealthy || self.reported.as_ref() == Some(reason) {
            self.candidate = None;
            return None;
        }
        let streak = match &mut self.candidate {
            Some((candidate, streak)) if candidate == reason => {
                *streak += 1;
                *streak
            }
            _ => {
                self.candidate = Some((reason.clone(), 1));
                1
            }
        };
        if streak < self.unhealthy_threshold {
            return None;
        }
        self.candidate = None;
        self.reported = Some(reason.clone());
        Some(Verdict {
            health: BackendHealth::Unhealthy,
            reason: reason.clone(),
        })
    }

    /// Passive ejection: the instance is unhealthy at once, for `reason`, and must pass
    /// `healthy_threshold` checks again. Returns whether the health changed.
    pub(crate) fn eject(&mut self, reason: &str) -> bool {
        self.reported = Some(reason.to_string());
        self.candidate = None;
        self.passes = 0;
        self.failures = self.unhealthy_threshold;
        let changed = self.health != BackendHealth::Unhealthy;
        self.health = BackendHealth::Unhealthy;
        changed
    }
}

/// Probes `GET path` on `addr` over a fresh connection with `host` as its `Host` header; Ok for
/// a 2xx or 3xx answer within `timeout`, otherwise the reason in words: the status it answered
/// (with the Host it was sent, the usual culprit of a 400), that it took too long, or why the
/// connection failed.
/// A health check that asks another Lifeboat front door whether it serves, which it answers
/// itself from its own view of its instances ([`FRONT_DOOR_CHECK`]), rather than passing the
/// check to one instance of its own: a standby checks its primary's front door this way, so
/// that one hung instance there does not make the whole primary look down.
pub(crate) async fn probe_front_door(
    addr: SocketAddr,
    path: &str,
    host: &HeaderValue,
    timeout: Duration,
) -> Result<(), String> {
    probe(addr, path, host, timeout, true).await
}

/// The header of a front-door check, and its value.
pub const FRONT_DOOR_CHECK: (&str, &str) = ("x-lifeboat-check", "front-door");

pub(crate) async fn probe_http(
    addr: SocketAddr,
    path: &str,
    host: &HeaderValue,
    timeout: Duration,
) -> Result<(), String> {
    probe(addr, path, host, timeout, false).await
}

async fn probe(
    addr: SocketAddr,
    path: &str,
    host: &HeaderValue,
    timeout: Duration,
    front_door: bool,
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
        let mut request = Request::get(path)
            .header(header::HOST, host.clone())
            .header(header::CONNECTION, "close")
            .header(header::USER_AGENT, "lifeboat-health-check");
        if front_door {
            request = request.header(FRONT_DOOR_CHECK.0, FRONT_DOOR_CHECK.1);
        }
        let request = request
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
            let host = String::from_utf8_lossy(host.as_bytes());
            Err(format!("GET {path} (Host: {host}) answered {status}"))
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
        assert!(tracker.eject("connect refused"));
        assert_eq!(tracker.health(), BackendHealth::Unhealthy);
        assert!(
            !tracker.eject("connect refused"),
            "ejecting twice changes nothing"
        );
        assert_eq!(tracker.record(true), None);
        assert_eq!(tracker.record(true), Some(BackendHealth::Healthy));
    }

    fn failed(reason: &str) -> Result<(), String> {
        Err(reason.to_string())
    }

    fn verdict(health: BackendHealth, reason: &str) -> Option<Verdict> {
        Some(Verdict {
            health,
            reason: reason.to_string(),
        })
    }

    #[test]
    fn an_unhealthy_instance_is_reported_again_when_it_fails_for_a_new_reason() {
        use BackendHealth::*;
        let mut tracker = HealthTracker::new(1, 2);
        let timeout = failed("GET /healthz took longer than 500ms");
        let refused = failed("GET /healthz (Host: 127.0.0.1:8000) answered 400 Bad Request");
        assert_eq!(tracker.record_result(&timeout), None);
        assert_eq!(
            tracker.record_result(&timeout),
            verdict(Unhealthy, "GET /healthz took longer than 500ms")
        );
        assert_eq!(tracker.record_result(&timeout), None, "nothing new");
        assert_eq!(tracker.record_result(&refused), None, "not confirmed yet");
        assert_eq!(
            tracker.record_result(&refused),
            verdict(
                Unhealthy,
                "GET /healthz (Host: 127.0.0.1:8000) answered 400 Bad Request"
            ),
            "the new reason, confirmed like a verdict"
        );
        assert_eq!(tracker.record_result(&refused), None);
        assert_eq!(
            tracker.record_result(&Ok(())),
            verdict(Healthy, "health check passed")
        );
    }

    #[test]
    fn a_reason_that_changes_at_every_check_is_not_repeated() {
        let mut tracker = HealthTracker::new(1, 2);
        tracker.record_result(&failed("a"));
        tracker.record_result(&failed("a"));
        for _ in 0..10 {
            assert_eq!(tracker.record_result(&failed("b")), None);
            assert_eq!(tracker.record_result(&failed("c")), None);
        }
    }

    #[test]
    fn checks_that_fail_after_an_ejection_tell_why_once_confirmed() {
        let mut tracker = HealthTracker::new(1, 2);
        tracker.record_result(&Ok(()));
        assert!(tracker.eject("connect to 127.0.0.1:8000 failed: Connection refused"));
        let refused = failed("connect to 127.0.0.1:8000 failed: Connection refused");
        assert_eq!(tracker.record_result(&refused), None, "already told");
        let error =
            failed("GET /healthz (Host: 127.0.0.1:8000) answered 500 Internal Server Error");
        assert_eq!(tracker.record_result(&error), None);
        assert_eq!(
            tracker.record_result(&error),
            verdict(
                BackendHealth::Unhealthy,
                "GET /healthz (Host: 127.0.0.1:8000) answered 500 Internal Server Error"
            )
        );
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
        let host = HeaderValue::from_str(&addr.to_string()).unwrap();
        let result = probe_http(addr, "/healthz", &host, Duration::from_millis(500)).await;
        assert!(result.unwrap_err().contains("longer than"));
        drop(listener);
    }
}
