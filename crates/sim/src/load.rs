//! Open-model load: requests leave at a fixed arrival rate whatever the answers take, and each
//! one's latency is measured from the moment it was meant to leave (wrk2's semantics), so a
//! stall of the site shows as latency instead of silently slowing the load down.
//!
//! Every request becomes an [`Outcome`] in the [`Recorder`]; the figures are computed from
//! them afterwards (`checker.rs`). Write probes carry a unique token that a read-back must
//! find (`read_back_tokens`). This module never prints.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use tokio::task::JoinHandle;

use crate::netns::Dialer;

/// How long one request may take before it counts as unanswered.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A visitor's read.
    Read,
    /// A write probe (a visitor's write that carries a token).
    Write,
    /// An attacker's request (credential stuffing): not a visitor, not in availability.
    Attack,
}

/// One request and how it went.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// When it was meant to leave, since the run started.
    pub intended: Duration,
    /// From `intended` to the whole answer (or the failure).
    pub latency: Duration,
    /// The HTTP status; 0 when there was no answer (refused, reset, timed out).
    pub status: u16,
    pub kind: Kind,
    /// The probe's number, for a write.
    pub probe: Option<u64>,
}

impl Outcome {
    /// Answered 2xx or 3xx.
    pub fn ok(&self) -> bool {
        (200..400).contains(&self.status)
    }
}

/// One request of a scenario.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub method: Method,
    pub path: String,
    /// Body; `{id}` is replaced by the probe's token, `{password}` by a random password.
    pub body: Option<String>,
    pub content_type: Option<String>,
    pub kind: Kind,
    pub weight: u32,
}

/// Requests by weight.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub requests: Vec<RequestSpec>,
}

impl Scenario {
    fn pick(&self, roll: u32) -> &RequestSpec {
        let total: u32 = self.requests.iter().map(|r| r.weight).sum();
        let mut roll = roll % total.max(1);
        for r in &self.requests {
            if roll < r.weight {
                return r;
            }
            roll -= r.weight;
        }
        &self.requests[0]
    }
}

/// Every outcome of a run, and the clock they are measured on.
pub struct Recorder {
    pub start: Instant,
    outcomes: Mutex<Vec<Outcome>>,
    /// Run id in probe tokens: `lbsim-RUN-00000042`.
    pub run_id: String,
    next_probe: AtomicU64,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        let run_id: String = (0..6)
            .map(|_| char::from(b'a' + rand::rng().random_range(0..26u8)))
            .collect();
        Arc::new(Recorder {
            start: Instant::now(),
            outcomes: Mutex::new(Vec::new()),
            run_id,
            next_probe: AtomicU64::new(0),
        })
    }

    /// Time since the run started.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// The token of probe `n`. Fixed width, so no token is a prefix of another.
    pub fn token(&self, n: u64) -> String {
        format!("lbsim-{}-{n:08}", self.run_id)
    }

    /// Every outcome so far, in the order they ended.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().expect("recorder lock").clone()
    }

    /// Requests ended so far, and how many of them failed.
    pub fn counts(&self) -> (u64, u64) {
        let o = self.outcomes.lock().expect("recorder lock");
        let failed = o
            .iter()
            .filter(|o| !o.ok() && o.kind != Kind::Attack)
            .count();
        (o.len() as u64, failed as u64)
    }

    fn push(&self, outcome: Outcome) {
        self.outcomes.lock().expect("recorder lock").push(outcome);
    }
}

/// An HTTP/1.1 client with a connection pool, for the site's front doors: one, or on a
/// cluster every node's, used the way a client with every node's address in DNS uses them
/// (each request starts at the next address; one that cannot connect tries the following).
#[derive(Clone)]
pub struct Http {
    client: Client<Dialer, Full<Bytes>>,
    bases: Arc<Vec<String>>,
    next: Arc<AtomicU64>,
}

impl Http {
    /// A client whose connections `dialer` opens (in the sandbox's network).
    pub fn new(front_door: SocketAddr, dialer: Dialer) -> Http {
        Http::to_any(&[front_door], dialer)
    }

    /// A client of several front doors (a cluster's nodes).
    pub fn to_any(front_doors: &[SocketAddr], dialer: Dialer) -> Http {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .build(dialer);
        Http {
            client,
            bases: Arc::new(front_doors.iter().map(|a| format!("http://{a}")).collect()),
            next: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Sends one request; the status and the whole body, or why there was none.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(String, &str)>,
    ) -> Result<(u16, Bytes), String> {
        let n = self.bases.len().max(1);
        let first = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        let fut = async {
            let mut last = String::from("no front door");
            for k in 0..n {
                let base = &self.bases[(first + k) % n];
                let mut req = Request::builder()
                    .method(method.clone())
                    .uri(format!("{base}{path}"));
                let body = match &body {
                    Some((b, content_type)) => {
                        req = req.header(header::CONTENT_TYPE, *content_type);
                        Full::new(Bytes::from(b.clone()))
                    }
                    None => Full::new(Bytes::new()),
                };
                let req = req.body(body).map_err(|e| e.to_string())?;
                let resp = match self.client.request(req).await {
                    Ok(resp) => resp,
                    // Nothing was sent: the next address, as a client with several would.
                    Err(e) if e.is_connect() => {
                        last = e.to_string();
                        continue;
                    }
                    Err(e) => return Err(e.to_string()),
                };
                let status = resp.status().as_u16();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                return Ok::<_, String>((status, body));
            }
            Err(last)
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
        }
    }
}

/// A running load: a fixed arrival rate that can be changed while it runs.
pub struct Load {
    /// Arrivals per second × 1000.
    rate_milli: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl Load {
    /// Starts sending `scenario` at `rate` requests/s.
    pub fn start(http: Http, recorder: Arc<Recorder>, scenario: Scenario, rate: f64) -> Load {
        let rate_milli = Arc::new(AtomicU64::new((rate * 1000.0) as u64));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(arrivals(
            http,
            recorder,
            Arc::new(scenario),
            rate_milli.clone(),
            stop.clone(),
        ));
        Load {
            rate_milli,
            stop,
            task: Some(task),
        }
    }

    /// Changes the arrival rate from now on.
    pub fn set_rate(&self, rate: f64) {
        self.rate_milli
            .store((rate.max(0.001) * 1000.0) as u64, Ordering::Relaxed);
    }

    /// Stops sending; requests under way still end and are recorded.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn arrivals(
    http: Http,
    recorder: Arc<Recorder>,
    scenario: Arc<Scenario>,
    rate_milli: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let mut next = recorder.now();
    let mut under_way = tokio::task::JoinSet::new();
    while !stop.load(Ordering::Relaxed) {
        let now = recorder.now();
        if next > now {
            tokio::time::sleep(next - now).await;
        }
        let intended = next;
        let rate = rate_milli.load(Ordering::Relaxed).max(1) as f64 / 1000.0;
        next += Duration::from_secs_f64(1.0 / rate);
        let spec = scenario.pick(rand::rng().random()).clone();
        let (http, recorder) = (http.clone(), recorder.clone());
        under_way.spawn(one_request(http, recorder, spec, intended));
        while under_way.try_join_next().is_some() {}
    }
    while under_way.join_next().await.is_some() {}
}

async fn one_request(http: Http, recorder: Arc<Recorder>, spec: RequestSpec, intended: Duration) {
    let probe =
        (spec.kind == Kind::Write).then(|| recorder.next_probe.fetch_add(1, Ordering::Relaxed));
    let body = spec.body.as_ref().map(|b| {
        let mut b = b.clone();
        if let Some(n) = probe {
            b = b.replace("{id}", &recorder.token(n));
        }
        if b.contains("{password}") {
            let guess: String = (0..12)
                .map(|_| char::from(b'a' + rand::rng().random_range(0..26u8)))
                .collect();
            b = b.replace("{password}", &guess);
        }
        (
            b,
            spec.content_type
                .as_deref()
                .unwrap_or("application/x-www-form-urlencoded"),
        )
    });
    let status = match http.send(spec.method.clone(), &spec.path, body).await {
        Ok((status, _)) => status,
        Err(_) => 0,
    };
    let latency = recorder.now().saturating_sub(intended);
    recorder.push(Outcome {
        intended,
        latency,
        status,
        kind: spec.kind,
        probe,
    });
}

/// The probe numbers of this run found in one answer of the read-back.
pub fn tokens_in(body: &[u8], run_id: &str) -> BTreeSet<u64> {
    let text = String::from_utf8_lossy(body);
    let prefix = format!("lbsim-{run_id}-");
    text.match_indices(&prefix)
        .filter_map(|(at, _)| {
            let digits = text.get(at + prefix.len()..at + prefix.len() + 8)?;
            digits.parse().ok()
        })
        .collect()
}

/// Reads `path` (the probe's read-back) and returns the probes it shows, retrying for a while
/// when the site does not answer 2xx.
pub async fn read_back_tokens(
    http: &Http,
    path: &str,
    run_id: &str,
) -> Result<BTreeSet<u64>, String> {
    let mut last = String::new();
    for _ in 0..20 {
        match http.send(Method::GET, path, None).await {
            Ok((status, body)) if (200..300).contains(&status) => {
                return Ok(tokens_in(&body, run_id));
            }
            Ok((status, _)) => last = format!("GET {path} answered {status}"),
            Err(e) => last = format!("GET {path}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_exactly_and_never_by_prefix() {
        let body = br#"[{"text":"lbsim-abc-00000012"},{"text":"lbsim-abc-00000123"},{"text":"lbsim-xyz-00000001"}]"#;
        assert_eq!(tokens_in(body, "abc"), BTreeSet::from([12, 123]));
    }

    #[test]
    fn requests_are_picked_by_weight() {
        let spec = |w, kind| RequestSpec {
            method: Method::GET,
            path: "/".into(),
            body: None,
            content_type: None,
            kind,
            weight: w,
        };
        let s = Scenario {
            requests: vec![spec(9, Kind::Read), spec(1, Kind::Write)],
        };
        let writes = (0..1000u32)
            .filter(|&r| s.pick(r).kind == Kind::Write)
            .count();
        assert_eq!(writes, 100);
    }
}
