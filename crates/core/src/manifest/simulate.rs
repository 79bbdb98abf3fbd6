//! `[simulate]`: what `lifeboat simulate` sends to the site's copy and what it must hold. Every
//! key is optional: without the section the simulator reads the first web process's health
//! path at 50 requests/s and checks the default targets; without `probe` it counts no writes.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Validator;

/// The load, the write probe, the login path and the targets of `lifeboat simulate`.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulateSpec {
    /// Baseline arrival rate in requests/s (`rate`, default 50, 1..=5000). The spike phase
    /// ramps it to ten times this.
    pub rate: u32,
    /// GET paths read by the load, each with its weight (`reads`); empty: the health path.
    pub reads: Vec<WeightedPath>,
    /// A write that carries a unique id, and the read that must find it (`probe`).
    pub probe: Option<ProbeSpec>,
    /// The login form attacked by credential stuffing (`login`); absent: that fault is skipped.
    pub login: Option<LoginSpec>,
    /// What must hold (`targets`).
    pub targets: Targets,
}

impl Default for SimulateSpec {
    fn default() -> Self {
        SimulateSpec {
            rate: DEFAULT_RATE,
            reads: Vec::new(),
            probe: None,
            login: None,
            targets: Targets::default(),
        }
    }
}

/// A GET path and how often it is sent relative to the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedPath {
    pub path: String,
    pub weight: u32,
}

/// The write probe: `method path` with `body`, where `{id}` is replaced by a unique id; a
/// `GET read_back` answer must contain that id once the write was acknowledged (2xx).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub method: String,
    pub path: String,
    pub body: String,
    pub content_type: String,
    pub read_back: String,
    /// Its weight among the reads (`weight`, default: a tenth of the reads' total, at least 1).
    pub weight: Option<u32>,
}

/// The login form: `POST path` with `body`, where `{password}` is replaced by a wrong password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginSpec {
    pub path: String,
    pub body: String,
    pub content_type: String,
}

/// The promises a simulation checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Targets {
    /// Share of requests answered 2xx/3xx within `response_time`, per phase (default 0.99).
    pub availability: f64,
    /// How long an answer may take and still count as available (default 2s).
    pub response_time: Duration,
    /// Latency p99 of the baseline phase (default 500ms).
    pub p99: Duration,
    /// Acknowledged writes that may be lost (default 0).
    pub lost_writes: u64,
    /// Longest time to serve again after a fault that takes the whole site down (default 30s).
    pub rto: Duration,
}

impl Default for Targets {
    fn default() -> Self {
        Targets {
            availability: 0.99,
            response_time: Duration::from_secs(2),
            p99: Duration::from_millis(500),
            lost_writes: 0,
            rto: Duration::from_secs(30),
        }
    }
}

const DEFAULT_RATE: u32 = 50;
const MAX_RATE: i64 = 5000;
const FORM: &str = "application/x-www-form-urlencoded";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSimulate {
    rate: Option<Spanned<i64>>,
    #[serde(default)]
    reads: Vec<Spanned<RawRead>>,
    probe: Option<Spanned<RawProbe>>,
    login: Option<Spanned<RawLogin>>,
    targets: Option<Spanned<RawTargets>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawRead {
    Path(String),
    Weighted { path: String, weight: i64 },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    method: Option<String>,
    path: Option<String>,
    body: Option<String>,
    content_type: Option<String>,
    read_back: Option<String>,
    weight: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogin {
    path: Option<String>,
    body: Option<String>,
    content_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTargets {
    availability: Option<f64>,
    response_time: Option<Spanned<String>>,
    p99: Option<Spanned<String>>,
    lost_writes: Option<i64>,
    rto: Option<Spanned<String>>,
}

impl Validator<'_> {
    pub(super) fn simulate(&mut self, raw: RawSimulate) -> SimulateSpec {
        let d = SimulateSpec::default();
        let rate = match raw.rate {
            None => d.rate,
            Some(r) if (1..=MAX_RATE).contains(r.get_ref()) => *r.get_ref() as u32,
            Some(r) => {
                self.problem(
                    Some(r.span()),
                    "simulate.rate",
                    format!(
                        "the rate must be between 1 and {MAX_RATE} requests/s, found {}",
                        r.get_ref()
                    ),
                    format!("write rate = {DEFAULT_RATE}"),
                );
                d.rate
            }
        };
        let mut reads = Vec::new();
        for read in raw.reads {
            let span = read.span();
            let (path, weight) = match read.into_inner() {
                RawRead::Path(p) => (p, 1),
                RawRead::Weighted { path, weight } => (path, weight),
            };
            if !path.starts_with('/') {
                self.problem(
                    Some(span.clone()),
                    "simulate.reads",
                    format!("the read {path:?} does not start with '/'"),
                    format!("write the path the site serves, e.g. \"/{path}\""),
                );
            }
            if !(1..=1000).contains(&weight) {
                self.problem(
                    Some(span),
                    "simulate.reads",
                    format!("the weight of {path:?} must be between 1 and 1000, found {weight}"),
                    format!("write {{ path = \"{path}\", weight = 1 }}"),
                );
            }
            reads.push(WeightedPath {
                path,
                weight: weight.clamp(1, 1000) as u32,
            });
        }
        let probe = raw.probe.map(|p| self.probe(p));
        let login = raw.login.map(|l| self.login(l));
        let targets = raw.targets.map(|t| self.targets(t)).unwrap_or_default();
        SimulateSpec {
            rate,
            reads,
            probe,
            login,
            targets,
        }
    }

    fn path_key(
        &mut self,
        span: &std::ops::Range<usize>,
        key: &str,
        value: Option<String>,
        example: &str,
    ) -> String {
        match value {
            Some(p) if p.starts_with('/') => p,
            Some(p) => {
                self.problem(
                    Some(span.clone()),
                    key,
                    format!("{p:?} does not start with '/'"),
                    format!("write {} = \"/{p}\"", key.rsplit('.').next().unwrap_or(key)),
                );
                p
            }
            None => {
                self.problem(
                    Some(span.clone()),
                    key,
                    format!("`{key}` is missing"),
                    format!("add it, e.g. {example}"),
                );
                String::new()
            }
        }
    }

    fn probe(&mut self, raw: Spanned<RawProbe>) -> ProbeSpec {
        let span = raw.span();
        let raw = raw.into_inner();
        let method = raw
            .method
            .unwrap_or_else(|| "POST".into())
            .to_ascii_uppercase();
        if !["POST", "PUT", "PATCH"].contains(&method.as_str()) {
            self.problem(
                Some(span.clone()),
                "simulate.probe.method",
                format!("{method:?} is not a method that writes"),
                "write method = \"POST\" (or PUT, PATCH)".into(),
            );
        }
        let path = self.path_key(
            &span,
            "simulate.probe.path",
            raw.path,
            "path = \"/entries\"",
        );
        let body = raw.body.unwrap_or_default();
        if !body.contains("{id}") {
            self.problem(
                Some(span.clone()),
                "simulate.probe.body",
                "the probe's body does not carry {id}, so its read-back cannot find it".into(),
                "put {id} where the site stores it, e.g. body = \"text=probe {id}\"".into(),
            );
        }
        let read_back = self.path_key(
            &span,
            "simulate.probe.read_back",
            raw.read_back,
            "read_back = \"/api/entries\" (a GET whose answer lists what was written)",
        );
        let weight = match raw.weight {
            None => None,
            Some(w) if (1..=1000).contains(&w) => Some(w as u32),
            Some(w) => {
                self.problem(
                    Some(span),
                    "simulate.probe.weight",
                    format!("the weight must be between 1 and 1000, found {w}"),
                    "write weight = 1".into(),
                );
                None
            }
        };
        ProbeSpec {
            method,
            path,
            body,
            content_type: raw.content_type.unwrap_or_else(|| FORM.into()),
            read_back,
            weight,
        }
    }

    fn login(&mut self, raw: Spanned<RawLogin>) -> LoginSpec {
        let span = raw.span();
        let raw = raw.into_inner();
        let path = self.path_key(&span, "simulate.login.path", raw.path, "path = \"/login\"");
        let body = raw.body.unwrap_or_else(|| "password={password}".into());
        if !body.contains("{password}") {
            self.problem(
                Some(span),
                "simulate.login.body",
                "the login body does not carry {password}".into(),
                "put {password} where the form sends it, e.g. body = \"user=admin&password={password}\"".into(),
            );
        }
        LoginSpec {
            path,
            body,
            content_type: raw.content_type.unwrap_or_else(|| FORM.into()),
        }
    }

    fn targets(&mut self, raw: Spanned<RawTargets>) -> Targets {
        let span = raw.span();
        let raw = raw.into_inner();
        let d = Targets::default();
        let availability = match raw.availability {
            None => d.availability,
            Some(a) if a > 0.0 && a <= 1.0 => a,
            Some(a) => {
                self.problem(
                    Some(span.clone()),
                    "simulate.targets.availability",
                    format!("availability is a share between 0 and 1, found {a}"),
                    "write availability = 0.99 for 99%".into(),
                );
                d.availability
            }
        };
        let lost_writes = match raw.lost_writes {
            None => d.lost_writes,
            Some(n) if n >= 0 => n as u64,
            Some(n) => {
                self.problem(
                    Some(span),
                    "simulate.targets.lost_writes",
                    format!("lost_writes is a count, found {n}"),
                    "write lost_writes = 0".into(),
                );
                d.lost_writes
            }
        };
        Targets {
            availability,
            response_time: self.duration(
                "simulate.targets.response_time",
                raw.response_time,
                d.response_time,
            ),
            p99: self.duration("simulate.targets.p99", raw.p99, d.p99),
            lost_writes,
            rto: self.duration("simulate.targets.rto", raw.rto, d.rto),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::manifest::Manifest;

    fn parse(section: &str) -> Result<Manifest, crate::manifest::ManifestError> {
        Manifest::parse(
            "lifeboat.toml",
            &format!("[site]\nname = \"s\"\n[processes.web]\ncommand = \"./run\"\n{section}"),
        )
    }

    #[test]
    fn a_full_section_is_read_with_its_values() {
        let m = parse(
            r#"[simulate]
rate = 20
reads = ["/healthz", { path = "/api/entries", weight = 3 }]
probe = { path = "/entries", body = "text=probe {id}", read_back = "/api/entries" }
login = { path = "/login" }
targets = { availability = 0.95, p99 = "300ms", rto = "10s" }
"#,
        )
        .unwrap();
        let s = m.simulate.unwrap();
        assert_eq!(s.rate, 20);
        assert_eq!(s.reads[1].weight, 3);
        let probe = s.probe.unwrap();
        assert_eq!(probe.method, "POST");
        assert_eq!(probe.content_type, "application/x-www-form-urlencoded");
        assert_eq!(s.login.unwrap().body, "password={password}");
        assert_eq!(s.targets.availability, 0.95);
        assert_eq!(s.targets.p99, std::time::Duration::from_millis(300));
        assert_eq!(s.targets.lost_writes, 0);
    }

    #[test]
    fn a_probe_without_its_id_is_refused_with_the_fix() {
        let err = parse("[simulate]\nprobe = { path = \"/entries\", body = \"text=x\", read_back = \"/api\" }\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("simulate.probe.body"), "{err}");
        assert!(err.contains("{id}"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_their_key() {
        let err =
            parse("[simulate]\nrate = 0\ntargets = { availability = 99 }\nreads = [\"healthz\"]\n")
                .unwrap_err()
                .to_string();
        for key in [
            "simulate.rate",
            "simulate.targets.availability",
            "simulate.reads",
        ] {
            assert!(err.contains(key), "{key} missing from {err}");
        }
    }
}
