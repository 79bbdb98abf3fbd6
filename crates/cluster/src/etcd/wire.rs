//! The JSON shapes of etcd's gRPC gateway (etcd 3.4's `/v3/...`), checked against a real
//! etcd 3.4.23: keys and values are base64, int64 fields are strings (numbers are accepted
//! too), fields with their zero value are left out (`succeeded` false, `count` 0, a watch
//! event's `type` PUT), and a streamed message is wrapped as `{"result": ...}` or
//! `{"error": ...}`, one per line. Private to the client: nothing outside `etcd` sees JSON.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `Vec<u8>` as base64, both ways.
pub mod b64 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        B64.decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("bad base64: {e}")))
    }
}

/// `i64` as etcd writes it: a string, or (leniently) a number.
pub mod int64 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum StrOrNum {
        Str(String),
        Num(i64),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        match StrOrNum::deserialize(d)? {
            StrOrNum::Num(n) => Ok(n),
            StrOrNum::Str(s) => s
                .parse()
                .map_err(|e| serde::de::Error::custom(format!("bad int64 {s:?}: {e}"))),
        }
    }
}

/// The response header. Its `cluster_id` and `member_id` are uint64s that may not fit an i64;
/// nothing here needs them, so they are not read.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Header {
    #[serde(default, with = "int64")]
    pub revision: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct KeyValue {
    #[serde(default, with = "b64")]
    pub key: Vec<u8>,
    #[serde(default, with = "int64")]
    pub create_revision: i64,
    #[serde(default, with = "int64")]
    pub mod_revision: i64,
    #[serde(default, with = "int64")]
    pub version: i64,
    #[serde(default, with = "b64")]
    pub value: Vec<u8>,
    #[serde(default, with = "int64")]
    pub lease: i64,
}

#[derive(Debug, Serialize)]
pub struct RangeRequest {
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    #[serde(with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub range_end: Vec<u8>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RangeResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub kvs: Vec<KeyValue>,
}

#[derive(Debug, Serialize)]
pub struct PutRequest {
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    #[serde(with = "b64")]
    pub value: Vec<u8>,
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub lease: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

#[derive(Debug, Default, Deserialize)]
pub struct PutResponse {
    #[serde(default)]
    pub header: Header,
}

#[derive(Debug, Serialize)]
pub struct DeleteRangeRequest {
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    #[serde(with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub range_end: Vec<u8>,
}

#[derive(Debug, Default, Deserialize)]
pub struct DeleteRangeResponse {
    #[serde(default, with = "int64")]
    pub deleted: i64,
}

#[derive(Debug, Serialize)]
pub struct Compare {
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    /// CREATE, MOD, VERSION, VALUE, LEASE
    pub target: &'static str,
    /// EQUAL, GREATER, LESS, NOT_EQUAL
    pub result: &'static str,
    #[serde(flatten)]
    pub operand: CompareOperand,
}

#[derive(Debug, Serialize)]
pub enum CompareOperand {
    #[serde(rename = "create_revision", with = "int64")]
    CreateRevision(i64),
    #[serde(rename = "mod_revision", with = "int64")]
    ModRevision(i64),
    #[serde(rename = "version", with = "int64")]
    Version(i64),
    #[serde(rename = "value", with = "b64")]
    Value(Vec<u8>),
    #[serde(rename = "lease", with = "int64")]
    Lease(i64),
}

#[derive(Debug, Serialize)]
pub enum RequestOp {
    #[serde(rename = "request_range")]
    Range(RangeRequest),
    #[serde(rename = "request_put")]
    Put(PutRequest),
    #[serde(rename = "request_delete_range")]
    DeleteRange(DeleteRangeRequest),
}

#[derive(Debug, Serialize)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

#[derive(Debug, Deserialize)]
pub enum ResponseOp {
    #[serde(rename = "response_range")]
    Range(RangeResponse),
    #[serde(rename = "response_put")]
    Put(serde::de::IgnoredAny),
    #[serde(rename = "response_delete_range")]
    DeleteRange(DeleteRangeResponse),
    /// A nested transaction (never sent by this client).
    #[serde(rename = "response_txn")]
    Txn(serde::de::IgnoredAny),
}

#[derive(Debug, Default, Deserialize)]
pub struct TxnResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub succeeded: bool,
    #[serde(default)]
    pub responses: Vec<ResponseOp>,
}

#[derive(Debug, Serialize)]
pub struct LeaseGrantRequest {
    #[serde(rename = "TTL", with = "int64")]
    pub ttl: i64,
}

#[derive(Debug, Deserialize)]
pub struct LeaseGrantResponse {
    #[serde(rename = "ID", with = "int64")]
    pub id: i64,
    #[serde(rename = "TTL", default, with = "int64")]
    pub ttl: i64,
    #[serde(default)]
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct LeaseIdRequest {
    #[serde(rename = "ID", with = "int64")]
    pub id: i64,
}

#[derive(Debug, Deserialize)]
pub struct LeaseKeepAliveResponse {
    /// 0 (left out) when the lease does not exist any more.
    #[serde(rename = "TTL", default, with = "int64")]
    pub ttl: i64,
}

#[derive(Debug, Serialize)]
pub struct WatchCreateRequest {
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    #[serde(with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub range_end: Vec<u8>,
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub start_revision: i64,
}

#[derive(Debug, Serialize)]
pub struct WatchRequest {
    pub create_request: WatchCreateRequest,
}

#[derive(Debug, Default, Deserialize)]
pub struct Event {
    /// Left out for PUT.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub kv: KeyValue,
}

#[derive(Debug, Default, Deserialize)]
pub struct WatchResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub created: bool,
    #[serde(default)]
    pub canceled: bool,
    #[serde(default, with = "int64")]
    pub compact_revision: i64,
    #[serde(default)]
    pub cancel_reason: String,
    #[serde(default)]
    pub events: Vec<Event>,
}

/// A unary call's error body: `{"error": "...", "message": "...", "code": 5}`.
#[derive(Debug, Deserialize)]
pub struct UnaryError {
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub code: i32,
}

/// One message of a streamed call.
#[derive(Debug, Deserialize)]
pub struct StreamMessage<T> {
    pub result: Option<T>,
    pub error: Option<StreamError>,
}

#[derive(Debug, Deserialize)]
pub struct StreamError {
    #[serde(default)]
    pub grpc_code: i32,
    #[serde(default)]
    pub message: String,
}
