//! A watch over etcd's JSON gateway: one long POST whose answer streams one JSON object per
//! line, each a batch of events. Never retried here: a watch that ends is reported, and the
//! caller reads the current state and watches again from there.

use futures::StreamExt;
use futures::stream::BoxStream;

use super::error::{EtcdError, FailureCause};
use super::wire;
use super::{KeyValue, answered_error, snippet, transport_cause};

/// What happened to a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Created or changed.
    Put(KeyValue),
    /// Deleted (or its lease ran out). Only `key` and `mod_revision` (the revision of the
    /// deletion) are set.
    Delete(KeyValue),
}

impl WatchEvent {
    pub fn kv(&self) -> &KeyValue {
        match self {
            WatchEvent::Put(kv) | WatchEvent::Delete(kv) => kv,
        }
    }
}

/// One message of a watch: the store's revision when it was sent, and the events in it (none
/// for a progress notification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    pub revision: i64,
    pub events: Vec<WatchEvent>,
}

/// An open watch. Dropping it closes the connection, which ends the watch in etcd.
pub struct Watch {
    endpoint: String,
    body: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

pub(super) enum OpenError {
    Failed(FailureCause),
    Final(EtcdError),
}

/// Opens a watch at one endpoint and waits for etcd's "created" message.
pub(super) async fn open(
    http: &reqwest::Client,
    endpoint: &str,
    body: Vec<u8>,
) -> Result<Watch, OpenError> {
    let resp = http
        .post(format!("{endpoint}/v3/watch"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        // gRPC metadata `hasleader`: a member that loses its raft leader cancels this watch
        // instead of going silent, so a standby watching through a cut-off member hears of it.
        .header("Grpc-Metadata-hasleader", "true")
        .body(body)
        .send()
        .await
        .map_err(|e| OpenError::Failed(transport_cause(&e)))?;
    let status = resp.status();
    if !status.is_success() {
        let bytes = resp.bytes().await.unwrap_or_default();
        return Err(
            match answered_error(endpoint, "watch keys", status, &bytes) {
                super::AttemptError::Failed(c) => OpenError::Failed(c),
                super::AttemptError::Final(e) => OpenError::Final(e),
            },
        );
    }
    let mut watch = Watch {
        endpoint: endpoint.to_string(),
        body: resp.bytes_stream().boxed(),
        buf: Vec::new(),
    };
    match watch.next_message().await {
        Ok(m) if m.created => Ok(watch),
        Ok(_) => Err(OpenError::Final(EtcdError::BadResponse {
            endpoint: endpoint.to_string(),
            op: "watch keys",
            detail: "the first message did not confirm the watch".into(),
        })),
        Err(EtcdError::WatchEnded { reason, .. }) => {
            Err(OpenError::Failed(FailureCause::Io(reason)))
        }
        Err(e) => Err(OpenError::Final(e)),
    }
}

impl Watch {
    /// The endpoint this watch runs on.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The next batch of events. Waits as long as nothing happens: bound it with a timeout.
    pub async fn next(&mut self) -> Result<WatchBatch, EtcdError> {
        let m = self.next_message().await?;
        let events = m
            .events
            .into_iter()
            .map(|e| {
                let kv = KeyValue::from(e.kv);
                match e.kind.as_deref() {
                    Some("DELETE") => WatchEvent::Delete(kv),
                    _ => WatchEvent::Put(kv),
                }
            })
            .collect();
        Ok(WatchBatch {
            revision: m.header.revision,
            events,
        })
    }

    async fn next_message(&mut self) -> Result<wire::WatchResponse, EtcdError> {
        loop {
            if let Some(line) = self.take_line() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let msg: wire::StreamMessage<wire::WatchResponse> =
                    serde_json::from_slice(&line).map_err(|e| EtcdError::BadResponse {
                        endpoint: self.endpoint.clone(),
                        op: "watch keys",
                        detail: format!("{e}: {}", snippet(&line)),
                    })?;
                return match (msg.result, msg.error) {
                    (Some(r), _) if r.canceled => Err(EtcdError::WatchCanceled {
                        endpoint: self.endpoint.clone(),
                        reason: if r.compact_revision > 0 {
                            format!("revision {} was compacted", r.compact_revision)
                        } else if r.cancel_reason.is_empty() {
                            "no reason given".into()
                        } else {
                            r.cancel_reason
                        },
                        compact_revision: (r.compact_revision > 0).then_some(r.compact_revision),
                    }),
                    (Some(r), _) => Ok(r),
                    (None, Some(e)) => Err(EtcdError::WatchEnded {
                        endpoint: self.endpoint.clone(),
                        reason: format!("{} (gRPC code {})", e.message, e.grpc_code),
                    }),
                    (None, None) => Err(EtcdError::BadResponse {
                        endpoint: self.endpoint.clone(),
                        op: "watch keys",
                        detail: "neither a result nor an error".into(),
                    }),
                };
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(EtcdError::WatchEnded {
                        endpoint: self.endpoint.clone(),
                        reason: transport_cause(&e).to_string(),
                    });
                }
                None => {
                    return Err(EtcdError::WatchEnded {
                        endpoint: self.endpoint.clone(),
                        reason: "the connection was closed".into(),
                    });
                }
            }
        }
    }

    fn take_line(&mut self) -> Option<Vec<u8>> {
        let pos = self.buf.iter().position(|&b| b == b'\n')?;
        let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
        line.pop();
        Some(line)
    }
}
