//! An etcd v3 client over etcd's JSON gateway (plain HTTP/1.1 and JSON, as Patroni does): no
//! gRPC, no protoc. Several endpoints, each request bounded by a short timeout, moving on to
//! the next endpoint when one can not be reached or can not serve (no leader, timed out), and
//! remembering the one that answered.
//!
//! This module never retries a request etcd *answered* (a refused transaction is an answer),
//! never waits without a bound (except on an open watch, which the caller bounds), and never
//! interprets keys: the cluster's key layout lives in `keys`.

mod error;
mod watch;
mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

pub use error::{EndpointFailure, EtcdError, FailureCause, code};
pub use watch::{Watch, WatchBatch, WatchEvent};

/// A lease's id, as etcd gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// Where etcd is and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs of etcd's members, `http://HOST:PORT` or `https://HOST:PORT`.
    pub endpoints: Vec<String>,
    /// The longest one attempt at one endpoint may take, connection included. Short: a member
    /// that does not answer within it is treated as down and the next one is tried.
    pub request_timeout: Duration,
    /// The longest a TCP connection may take to open.
    pub connect_timeout: Duration,
    /// TLS settings for `https://` endpoints (`None`: the system's roots, no client
    /// certificate).
    pub tls: Option<EtcdTls>,
}

/// TLS to etcd: whom to trust, and who this client is.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EtcdTls {
    /// PEM of the CA (or CAs) that signed etcd's server certificates; with it, only these are
    /// trusted (not the system's roots).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM of this client's certificate followed by its private key, for etcd's
    /// `--client-cert-auth`.
    pub identity_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca", &self.ca_pem.is_some())
            .field("identity", &self.identity_pem.as_ref().map(|_| "<secret>"))
            .finish()
    }
}

impl EtcdConfig {
    /// Default timeouts: 500 ms per attempt (etcd answers in milliseconds; a member that takes
    /// longer is overloaded or cut off, and the lease's renewal budget is only TTL/4), 200 ms to
    /// connect.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> EtcdConfig {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            request_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(200),
            tls: None,
        }
    }
}

/// One key's state in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The revision at which the key was created (0 for a deleted key in a watch event).
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

impl From<wire::KeyValue> for KeyValue {
    fn from(kv: wire::KeyValue) -> Self {
        KeyValue {
            key: kv.key,
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: (kv.lease != 0).then_some(LeaseId(kv.lease)),
        }
    }
}

/// The answer to a range: the keys, and the store's revision when they were read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub revision: i64,
    pub kvs: Vec<KeyValue>,
}

/// A lease etcd granted: its id and the TTL etcd really gave it (etcd raises a TTL below its
/// minimum, 2 s with its default election timeout of 1 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    pub id: LeaseId,
    pub ttl: Duration,
}

/// The answer to a lease renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// Renewed: the lease lives `ttl` from when etcd's leader received the renewal.
    Alive { ttl: Duration },
    /// The lease does not exist any more (expired or revoked); keys under it are gone.
    Gone,
}

/// A condition of a transaction.
#[derive(Debug)]
pub struct Compare(wire::Compare);

impl Compare {
    /// The key's create revision equals `revision` (0: the key does not exist).
    pub fn create_revision(key: impl Into<Vec<u8>>, revision: i64) -> Compare {
        Compare(wire::Compare {
            key: key.into(),
            target: "CREATE",
            result: "EQUAL",
            operand: wire::CompareOperand::CreateRevision(revision),
        })
    }

    /// The key's mod revision equals `revision`.
    pub fn mod_revision(key: impl Into<Vec<u8>>, revision: i64) -> Compare {
        Compare(wire::Compare {
            key: key.into(),
            target: "MOD",
            result: "EQUAL",
            operand: wire::CompareOperand::ModRevision(revision),
        })
    }

    /// The key is attached to `lease`.
    pub fn lease(key: impl Into<Vec<u8>>, lease: LeaseId) -> Compare {
        Compare(wire::Compare {
            key: key.into(),
            target: "LEASE",
            result: "EQUAL",
            operand: wire::CompareOperand::Lease(lease.0),
        })
    }

    /// The key's value equals `value`.
    pub fn value(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Compare {
        Compare(wire::Compare {
            key: key.into(),
            target: "VALUE",
            result: "EQUAL",
            operand: wire::CompareOperand::Value(value.into()),
        })
    }

    /// The key's version (number of puts since creation) equals `version`.
    pub fn version(key: impl Into<Vec<u8>>, version: i64) -> Compare {
        Compare(wire::Compare {
            key: key.into(),
            target: "VERSION",
            result: "EQUAL",
            operand: wire::CompareOperand::Version(version),
        })
    }
}

/// An operation inside a transaction.
#[derive(Debug)]
pub struct Op(wire::RequestOp);

impl Op {
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: Option<LeaseId>) -> Op {
        Op(wire::RequestOp::Put(wire::PutRequest {
            key: key.into(),
            value: value.into(),
            lease: lease.map_or(0, |l| l.0),
        }))
    }

    pub fn get(key: impl Into<Vec<u8>>) -> Op {
        Op(wire::RequestOp::Range(wire::RangeRequest {
            key: key.into(),
            range_end: Vec::new(),
        }))
    }

    pub fn delete(key: impl Into<Vec<u8>>) -> Op {
        Op(wire::RequestOp::DeleteRange(wire::DeleteRangeRequest {
            key: key.into(),
            range_end: Vec::new(),
        }))
    }
}

/// A transaction: if every comparison holds, the `success` operations, else the `failure` ones,
/// all at one revision.
#[derive(Debug, Default)]
pub struct Txn {
    compare: Vec<Compare>,
    success: Vec<Op>,
    failure: Vec<Op>,
}

impl Txn {
    pub fn new() -> Txn {
        Txn::default()
    }

    pub fn when(mut self, compare: Compare) -> Txn {
        self.compare.push(compare);
        self
    }

    pub fn and_then(mut self, op: Op) -> Txn {
        self.success.push(op);
        self
    }

    pub fn or_else(mut self, op: Op) -> Txn {
        self.failure.push(op);
        self
    }
}

/// The result of one operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    Get(Vec<KeyValue>),
    Put,
    Delete { deleted: i64 },
}

/// A transaction's outcome: which branch ran, at which revision (the revision of its writes
/// when it wrote), and each operation's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnOutcome {
    pub succeeded: bool,
    pub revision: i64,
    pub results: Vec<OpResult>,
}

/// The end of the range of every key starting with `prefix` (etcd's `range_end`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: the range runs to the end of the key space.
    vec![0]
}

/// An etcd client. Cheap to clone; clones share connections and the endpoint that answered
/// last.
#[derive(Debug, Clone)]
pub struct EtcdClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    endpoints: Vec<String>,
    /// The endpoint that answered last: requests start there.
    preferred: AtomicUsize,
    request_timeout: Duration,
}

/// How one attempt at one endpoint ended, when it did not give an answer.
enum AttemptError {
    /// Try the next endpoint.
    Failed(FailureCause),
    /// etcd answered; another endpoint would answer the same.
    Final(EtcdError),
}

impl EtcdClient {
    /// A client for `config`'s endpoints. Connects lazily: this never touches the network.
    pub fn new(config: EtcdConfig) -> Result<EtcdClient, EtcdError> {
        if config.endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        let mut endpoints = Vec::new();
        for url in &config.endpoints {
            endpoints.push(check_endpoint(url)?);
        }
        let https = endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        if https > 0 && https < endpoints.len() {
            return Err(EtcdError::BadEndpoint {
                url: endpoints.join(", "),
                reason: "some endpoints are https:// and some http://; give every member with the same scheme".into(),
            });
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            // etcd is reached directly; an HTTP proxy from the environment must not sit between
            // a lease and its renewals.
            .no_proxy()
            .https_only(https > 0);
        if let Some(tls) = &config.tls {
            if https == 0 {
                return Err(EtcdError::BadEndpoint {
                    url: endpoints.join(", "),
                    reason: "TLS settings are given but the endpoints are http://; write them as https://".into(),
                });
            }
            builder = builder.use_rustls_tls();
            if let Some(ca) = &tls.ca_pem {
                let certs = reqwest::Certificate::from_pem_bundle(ca).map_err(|e| {
                    EtcdError::BadTls(format!("the etcd CA is not a PEM certificate: {e}"))
                })?;
                if certs.is_empty() {
                    return Err(EtcdError::BadTls(
                        "the etcd CA file holds no PEM certificate".into(),
                    ));
                }
                builder = builder.tls_built_in_root_certs(false);
                for c in certs {
                    builder = builder.add_root_certificate(c);
                }
            }
            if let Some(identity) = &tls.identity_pem {
                let identity = reqwest::Identity::from_pem(identity).map_err(|e| {
                    EtcdError::BadTls(format!(
                        "the client certificate and key are not a PEM certificate followed by its PEM private key: {e}"
                    ))
                })?;
                builder = builder.identity(identity);
            }
        }
        let http = builder.build().map_err(EtcdError::Client)?;
        Ok(EtcdClient {
            inner: Arc::new(Inner {
                http,
                endpoints,
                preferred: AtomicUsize::new(0),
                request_timeout: config.request_timeout,
            }),
        })
    }

    /// The endpoints, as normalised URLs.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// The longest one attempt at one endpoint may take.
    pub fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// One key (linearizable read).
    pub async fn get(&self, key: &[u8]) -> Result<Range, EtcdError> {
        self.range(key, Vec::new(), "read a key").await
    }

    /// Every key starting with `prefix` (linearizable read), in key order.
    pub async fn get_prefix(&self, prefix: &[u8]) -> Result<Range, EtcdError> {
        self.range(prefix, prefix_end(prefix), "read keys").await
    }

    async fn range(
        &self,
        key: &[u8],
        range_end: Vec<u8>,
        op: &'static str,
    ) -> Result<Range, EtcdError> {
        let req = wire::RangeRequest {
            key: key.to_vec(),
            range_end,
        };
        let resp: wire::RangeResponse = self.call(op, "/v3/kv/range", &req, None).await?;
        Ok(Range {
            revision: resp.header.revision,
            kvs: resp.kvs.into_iter().map(KeyValue::from).collect(),
        })
    }

    /// Writes `value` at `key`, attached to `lease` if given; returns the revision of the write.
    pub async fn put(
        &self,
        key: &[u8],
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<i64, EtcdError> {
        let req = wire::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease: lease.map_or(0, |l| l.0),
        };
        let resp: wire::PutResponse = self.call("write a key", "/v3/kv/put", &req, None).await?;
        Ok(resp.header.revision)
    }

    /// Deletes `key`; returns how many keys were deleted (0 or 1).
    pub async fn delete(&self, key: &[u8]) -> Result<i64, EtcdError> {
        let req = wire::DeleteRangeRequest {
            key: key.to_vec(),
            range_end: Vec::new(),
        };
        let resp: wire::DeleteRangeResponse = self
            .call("delete a key", "/v3/kv/deleterange", &req, None)
            .await?;
        Ok(resp.deleted)
    }

    /// Runs a transaction.
    pub async fn txn(&self, txn: Txn) -> Result<TxnOutcome, EtcdError> {
        let req = wire::TxnRequest {
            compare: txn.compare.into_iter().map(|c| c.0).collect(),
            success: txn.success.into_iter().map(|o| o.0).collect(),
            failure: txn.failure.into_iter().map(|o| o.0).collect(),
        };
        let resp: wire::TxnResponse = self
            .call("run a transaction", "/v3/kv/txn", &req, None)
            .await?;
        let results = resp
            .responses
            .into_iter()
            .filter_map(|r| match r {
                wire::ResponseOp::Range(r) => Some(OpResult::Get(
                    r.kvs.into_iter().map(KeyValue::from).collect(),
                )),
                wire::ResponseOp::Put(_) => Some(OpResult::Put),
                wire::ResponseOp::DeleteRange(d) => Some(OpResult::Delete { deleted: d.deleted }),
                wire::ResponseOp::Txn(_) => None,
            })
            .collect();
        Ok(TxnOutcome {
            succeeded: resp.succeeded,
            revision: resp.header.revision,
            results,
        })
    }

    /// Grants a lease of `ttl` (whole seconds, rounded up; etcd may raise it to its minimum).
    pub async fn lease_grant(&self, ttl: Duration) -> Result<LeaseGrant, EtcdError> {
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let req = wire::LeaseGrantRequest {
            ttl: i64::try_from(secs.max(1)).unwrap_or(i64::MAX),
        };
        let resp: wire::LeaseGrantResponse = self
            .call("grant a lease", "/v3/lease/grant", &req, None)
            .await?;
        if !resp.error.is_empty() || resp.ttl <= 0 {
            return Err(EtcdError::Refused {
                endpoint: self.preferred_endpoint(),
                op: "grant a lease",
                code: 0,
                message: resp.error,
            });
        }
        Ok(LeaseGrant {
            id: LeaseId(resp.id),
            ttl: Duration::from_secs(resp.ttl as u64),
        })
    }

    /// Renews `lease` once, trying endpoints for at most `budget` in all (a renewal must never
    /// take longer than a fraction of the TTL: a late answer is worth nothing to the fence).
    pub async fn lease_keepalive(
        &self,
        lease: LeaseId,
        budget: Duration,
    ) -> Result<KeepAlive, EtcdError> {
        let req = wire::LeaseIdRequest { id: lease.0 };
        // A streamed call: the gateway answers each request object of the body with one
        // `{"result": ...}` line and ends the stream when the body ends.
        let msg: wire::StreamMessage<wire::LeaseKeepAliveResponse> = self
            .call("renew a lease", "/v3/lease/keepalive", &req, Some(budget))
            .await?;
        match (msg.result, msg.error) {
            (Some(r), _) if r.ttl > 0 => Ok(KeepAlive::Alive {
                ttl: Duration::from_secs(r.ttl as u64),
            }),
            (Some(_), _) => Ok(KeepAlive::Gone),
            (None, Some(e)) if e.grpc_code == code::NOT_FOUND => Ok(KeepAlive::Gone),
            (None, Some(e)) => Err(EtcdError::Refused {
                endpoint: self.preferred_endpoint(),
                op: "renew a lease",
                code: e.grpc_code,
                message: e.message,
            }),
            (None, None) => Err(EtcdError::BadResponse {
                endpoint: self.preferred_endpoint(),
                op: "renew a lease",
                detail: "neither a result nor an error".into(),
            }),
        }
    }

    /// Revokes `lease`, deleting every key attached to it. A lease already gone is not an
    /// error: the result is the same.
    pub async fn lease_revoke(&self, lease: LeaseId) -> Result<(), EtcdError> {
        let req = wire::LeaseIdRequest { id: lease.0 };
        match self
            .call::<_, serde_json::Value>("revoke a lease", "/v3/lease/revoke", &req, None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_lease_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Watches `key` (or every key under it, with `prefix`) from `start_revision` (0: from now).
    /// Returns once etcd confirmed the watch; events then come from [`Watch::next`].
    pub async fn watch(
        &self,
        key: &[u8],
        prefix: bool,
        start_revision: i64,
    ) -> Result<Watch, EtcdError> {
        let req = wire::WatchRequest {
            create_request: wire::WatchCreateRequest {
                key: key.to_vec(),
                range_end: if prefix { prefix_end(key) } else { Vec::new() },
                start_revision,
            },
        };
        let body = serde_json::to_vec(&req).expect("a watch request serialises");
        let mut attempts = Vec::new();
        for idx in self.endpoint_order() {
            let endpoint = &self.inner.endpoints[idx];
            let t = self.inner.request_timeout;
            let open = watch::open(&self.inner.http, endpoint, body.clone());
            match tokio::time::timeout(t, open).await {
                Ok(Ok(w)) => {
                    self.inner.preferred.store(idx, Ordering::Relaxed);
                    return Ok(w);
                }
                Ok(Err(watch::OpenError::Failed(cause))) => attempts.push(EndpointFailure {
                    endpoint: endpoint.clone(),
                    cause,
                }),
                Ok(Err(watch::OpenError::Final(e))) => return Err(e),
                Err(_) => attempts.push(EndpointFailure {
                    endpoint: endpoint.clone(),
                    cause: FailureCause::Timeout(t),
                }),
            }
        }
        Err(EtcdError::Unreachable {
            op: "watch keys",
            attempts,
        })
    }

    fn preferred_endpoint(&self) -> String {
        let idx = self.inner.preferred.load(Ordering::Relaxed);
        self.inner.endpoints[idx % self.inner.endpoints.len()].clone()
    }

    /// Every endpoint once, starting with the one that answered last.
    fn endpoint_order(&self) -> impl Iterator<Item = usize> + use<> {
        let n = self.inner.endpoints.len();
        let first = self.inner.preferred.load(Ordering::Relaxed) % n;
        (0..n).map(move |i| (first + i) % n)
    }

    /// Sends `req` to `path`, moving through the endpoints until one answers, each attempt
    /// bounded by the request timeout and all of them by `budget` if given.
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        op: &'static str,
        path: &str,
        req: &Req,
        budget: Option<Duration>,
    ) -> Result<Resp, EtcdError> {
        let body = serde_json::to_vec(req).expect("etcd requests serialise");
        let started = Instant::now();
        let mut attempts = Vec::new();
        for idx in self.endpoint_order() {
            let endpoint = &self.inner.endpoints[idx];
            let mut t = self.inner.request_timeout;
            if let Some(budget) = budget {
                t = t.min(budget.saturating_sub(started.elapsed()));
                if t.is_zero() {
                    break;
                }
            }
            let attempt = self.attempt(endpoint, path, body.clone(), op);
            let outcome = match tokio::time::timeout(t, attempt).await {
                Err(_) => Err(AttemptError::Failed(FailureCause::Timeout(t))),
                Ok(r) => r,
            };
            match outcome {
                Ok(bytes) => {
                    self.inner.preferred.store(idx, Ordering::Relaxed);
                    return parse(&bytes, endpoint, op);
                }
                Err(AttemptError::Final(e)) => {
                    self.inner.preferred.store(idx, Ordering::Relaxed);
                    return Err(e);
                }
                Err(AttemptError::Failed(cause)) => {
                    tracing::debug!(%endpoint, op, %cause, "etcd endpoint failed; trying the next");
                    attempts.push(EndpointFailure {
                        endpoint: endpoint.clone(),
                        cause,
                    });
                }
            }
        }
        Err(EtcdError::Unreachable { op, attempts })
    }

    /// One POST to one endpoint: the body of a 200 answer, or why there is none.
    async fn attempt(
        &self,
        endpoint: &str,
        path: &str,
        body: Vec<u8>,
        op: &'static str,
    ) -> Result<bytes::Bytes, AttemptError> {
        let resp = self
            .inner
            .http
            .post(format!("{endpoint}{path}"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| AttemptError::Failed(transport_cause(&e)))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| AttemptError::Failed(transport_cause(&e)))?;
        if status.is_success() {
            return Ok(bytes);
        }
        Err(answered_error(endpoint, op, status, &bytes))
    }
}

/// Turns an error answer into "try elsewhere" or "this is the answer".
fn answered_error(
    endpoint: &str,
    op: &'static str,
    status: reqwest::StatusCode,
    bytes: &[u8],
) -> AttemptError {
    match serde_json::from_slice::<wire::UnaryError>(bytes) {
        Ok(e) => {
            let message = if e.message.is_empty() {
                e.error
            } else {
                e.message
            };
            // A member without a leader, or whose request timed out inside raft, can not serve
            // now; a member on the majority side can.
            if e.code == code::UNAVAILABLE || e.code == code::DEADLINE_EXCEEDED {
                AttemptError::Failed(FailureCause::Unavailable {
                    code: e.code,
                    message,
                })
            } else {
                AttemptError::Final(EtcdError::Refused {
                    endpoint: endpoint.to_string(),
                    op,
                    code: e.code,
                    message,
                })
            }
        }
        Err(_) if status.is_server_error() => AttemptError::Failed(FailureCause::Unavailable {
            code: 0,
            message: format!("HTTP {status}"),
        }),
        Err(_) => AttemptError::Final(EtcdError::BadResponse {
            endpoint: endpoint.to_string(),
            op,
            detail: format!("HTTP {status}: {}", snippet(bytes)),
        }),
    }
}

fn parse<Resp: DeserializeOwned>(
    bytes: &[u8],
    endpoint: &str,
    op: &'static str,
) -> Result<Resp, EtcdError> {
    // A streamed answer may carry several lines; the calls made here expect the first.
    let first = bytes
        .split(|&b| b == b'\n')
        .find(|l| !l.iter().all(u8::is_ascii_whitespace))
        .unwrap_or(bytes);
    serde_json::from_slice(first).map_err(|e| EtcdError::BadResponse {
        endpoint: endpoint.to_string(),
        op,
        detail: format!("{e}: {}", snippet(first)),
    })
}

fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut s: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        s.push('…');
    }
    s
}

fn transport_cause(e: &reqwest::Error) -> FailureCause {
    // The innermost cause says what really happened (refused, reset); reqwest's own text only
    // says "error sending request".
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if e.is_connect() {
        FailureCause::Connect(detail)
    } else if e.is_timeout() {
        FailureCause::Timeout(Duration::ZERO)
    } else {
        FailureCause::Io(detail)
    }
}

fn check_endpoint(url: &str) -> Result<String, EtcdError> {
    let text = url.trim().trim_end_matches('/');
    let bad = |reason: &str| EtcdError::BadEndpoint {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let parsed = reqwest::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => return Err(bad(&format!("the scheme {other} is not http or https"))),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() {
        return Err(bad("an etcd client URL has no path"));
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_end_is_the_next_key_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"/a/members/"), b"/a/members0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn endpoints_are_checked_and_normalised() {
        assert_eq!(
            check_endpoint("http://127.0.0.1:2379/").unwrap(),
            "http://127.0.0.1:2379"
        );
        let e = check_endpoint("127.0.0.1:2379").unwrap_err().to_string();
        assert!(e.contains("write http://HOST:PORT"), "{e}");
        let e = check_endpoint("https://etcd:2379").unwrap_err().to_string();
        assert!(e.contains("TLS to etcd is not supported yet"), "{e}");
        assert!(matches!(
            EtcdClient::new(EtcdConfig::new(Vec::<String>::new())),
            Err(EtcdError::NoEndpoints)
        ));
    }

    #[test]
    fn a_member_without_a_leader_sends_the_client_elsewhere() {
        let body =
            br#"{"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14}"#;
        let e = answered_error(
            "http://e",
            "read a key",
            reqwest::StatusCode::SERVICE_UNAVAILABLE,
            body,
        );
        assert!(matches!(
            e,
            AttemptError::Failed(FailureCause::Unavailable { code: 14, .. })
        ));
        let body = br#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#;
        let AttemptError::Final(e) = answered_error(
            "http://e",
            "write a key",
            reqwest::StatusCode::NOT_FOUND,
            body,
        ) else {
            panic!("a refusal is final")
        };
        assert!(e.is_lease_not_found());
        assert_eq!(
            e.to_string(),
            "etcd at http://e refused to write a key: etcdserver: requested lease not found \
             (gRPC code 5); the lease has expired or was revoked; grant a new one"
        );
    }
}
