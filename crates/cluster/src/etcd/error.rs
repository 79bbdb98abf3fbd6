//! What can go wrong talking to etcd, said so that the reader knows which endpoint, what
//! failed and what to do. Never matched by text: callers match on variants and helpers.

use std::fmt;
use std::time::Duration;

/// Why one endpoint did not answer; the client then tries the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureCause {
    /// The TCP connection could not be made (refused, no route, ...).
    Connect(String),
    /// No complete answer within the time allowed for this attempt.
    Timeout(Duration),
    /// The member answered that it can not serve the request now (no leader, request timed out
    /// inside etcd, too many requests): another member may be on the majority side.
    Unavailable { code: i32, message: String },
    /// The connection broke while sending or reading.
    Io(String),
}

impl fmt::Display for FailureCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureCause::Connect(e) => write!(f, "could not connect: {e}"),
            FailureCause::Timeout(t) => write!(f, "no answer within {}ms", t.as_millis()),
            FailureCause::Unavailable { code, message } => {
                write!(f, "unavailable: {message} (gRPC code {code})")
            }
            FailureCause::Io(e) => write!(f, "connection failed: {e}"),
        }
    }
}

/// One endpoint's failure within a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointFailure {
    pub endpoint: String,
    pub cause: FailureCause,
}

fn list(attempts: &[EndpointFailure]) -> String {
    if attempts.is_empty() {
        return "not within the time allowed".into();
    }
    attempts
        .iter()
        .map(|a| format!("{}: {}", a.endpoint, a.cause))
        .collect::<Vec<_>>()
        .join("; ")
}

/// gRPC status codes etcd uses, as they appear in the gateway's `code` field.
pub mod code {
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

fn advice(code: i32) -> &'static str {
    match code {
        code::NOT_FOUND => "the lease has expired or was revoked; grant a new one",
        code::PERMISSION_DENIED | code::UNAUTHENTICATED => {
            "etcd has authentication enabled, which Lifeboat does not use yet; give Lifeboat an \
             etcd without auth, or one where the root role is not required"
        }
        code::RESOURCE_EXHAUSTED => {
            "etcd refuses writes (is its NOSPACE alarm raised? compact and defragment it, then \
             `etcdctl alarm disarm`)"
        }
        _ => "see that member's log for details",
    }
}

/// An error from the etcd client.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("no etcd endpoint is configured; list etcd's client URLs (e.g. http://10.0.1.5:2379)")]
    NoEndpoints,

    #[error(
        "{url:?} is not an etcd client URL ({reason}); write http://HOST:PORT or \
         https://HOST:PORT (etcd's client port, 2379 by default)"
    )]
    BadEndpoint { url: String, reason: String },

    #[error("could not build the HTTP client for etcd: {0}")]
    Client(#[source] reqwest::Error),

    #[error("TLS to etcd: {0}; check [cluster] etcd_ca, etcd_cert and etcd_key")]
    BadTls(String),

    #[error(
        "could not {op}: no etcd endpoint answered ({}); check that etcd runs, that a majority \
         of its members is up, and that this node can reach them",
        list(.attempts)
    )]
    Unreachable {
        op: &'static str,
        attempts: Vec<EndpointFailure>,
    },

    #[error(
        "etcd at {endpoint} refused to {op}: {message} (gRPC code {code}); {}",
        advice(*.code)
    )]
    Refused {
        endpoint: String,
        op: &'static str,
        code: i32,
        message: String,
    },

    #[error(
        "etcd at {endpoint} answered {op} with something this client does not understand \
         ({detail}); is this an etcd 3.4 or later client URL, with its JSON gateway?"
    )]
    BadResponse {
        endpoint: String,
        op: &'static str,
        detail: String,
    },

    #[error(
        "the watch at {endpoint} was cancelled by etcd ({reason}); watch again from the \
         current revision"
    )]
    WatchCanceled {
        endpoint: String,
        reason: String,
        /// Set when the revision asked for was compacted away.
        compact_revision: Option<i64>,
    },

    #[error(
        "the watch at {endpoint} ended ({reason}); the member may have stopped or lost its \
         leader: watch again (the client moves to another endpoint)"
    )]
    WatchEnded { endpoint: String, reason: String },
}

impl EtcdError {
    /// The request may not have reached etcd, or etcd could not serve it: trying again later
    /// (or elsewhere) is the remedy.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            EtcdError::Unreachable { .. } | EtcdError::WatchEnded { .. }
        )
    }

    /// etcd answered that a lease does not exist (expired or revoked): the only thing etcd's
    /// KV and lease calls answer "not found" for (a missing key is an empty range).
    pub fn is_lease_not_found(&self) -> bool {
        matches!(self, EtcdError::Refused { code, .. } if *code == code::NOT_FOUND)
    }
}
