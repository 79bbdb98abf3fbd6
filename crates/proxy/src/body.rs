//! Bodies that stream through the front door; only a small keyed request body is held.
//!
//! [`RequestBody`] goes to an instance: the client's body as it arrives, nothing, or — for a
//! request the client marked safe to repeat with an `Idempotency-Key` — a small body held in
//! memory; the last two make the request replayable. The client's body is read through
//! [`ClientBody`], which tells the connection's timer when it waits for the client (the body
//! timeout, `idle.rs`). [`ProxyBody`] goes to the client: an instance's body frame by frame, or
//! a small page the front door answers itself. An instance body also carries the request's
//! in-flight mark (so draining waits for the body to end) and its connection, which goes back to
//! the pool only when the body was read to the end.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::backend::{Backend, InFlight};
use crate::idle::Activity;
use crate::pool::Sender;

/// Why a client's request body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientBodyError {
    /// The connection broke or the body was malformed.
    #[error("the client's request body could not be read: {0}")]
    Read(#[from] hyper::Error),
    /// The client sent nothing more for the body timeout.
    #[error("the client stopped sending its request body")]
    TimedOut,
}

/// A client's request body as it arrives, watched by the body timeout.
#[derive(Debug)]
pub(crate) struct ClientBody {
    body: Incoming,
    activity: Arc<Activity>,
}

impl ClientBody {
    pub(crate) fn new(body: Incoming, activity: Arc<Activity>) -> Self {
        ClientBody { body, activity }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        if this.activity.body_timed_out() {
            return Poll::Ready(Some(Err(ClientBodyError::TimedOut)));
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Pending => {
                this.activity.body_waiting(true);
                Poll::Pending
            }
            Poll::Ready(frame) => {
                this.activity.body_waiting(false);
                Poll::Ready(frame.map(|f| f.map_err(ClientBodyError::from)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        // Nobody waits for this body any more (it ended, or the request was abandoned).
        self.activity.body_waiting(false);
    }
}

/// Body sent to an instance.
#[derive(Debug)]
pub(crate) enum RequestBody {
    /// No body: the request can be rebuilt and sent again.
    Empty,
    /// A small body held in memory (see [`keep_up_to`]): the request can be sent again.
    Kept(KeptBody),
    /// The client's body, streamed; `prefix` is what was already read while trying to keep it.
    Streaming {
        prefix: Option<Bytes>,
        rest: ClientBody,
    },
}

/// A whole request body in memory; cloning it is cheap (reference-counted bytes).
#[derive(Debug, Clone, Default)]
pub(crate) struct KeptBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

/// The outcome of trying to keep a request body in memory.
#[derive(Debug)]
pub(crate) enum Kept {
    /// The whole body, within the limit.
    Whole(KeptBody),
    /// The body is longer than the limit: it streams on, starting with what was read.
    TooLong(RequestBody),
}

/// Reads `body` into memory if it holds at most `limit` bytes. A longer body is not read past
/// the frame that crossed the limit, so it can still stream without holding more than that.
pub(crate) async fn keep_up_to(
    mut body: ClientBody,
    limit: usize,
) -> Result<Kept, ClientBodyError> {
    let mut data = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(chunk) => {
                data.extend_from_slice(&chunk);
                if data.len() > limit {
                    return Ok(Kept::TooLong(RequestBody::Streaming {
                        prefix: Some(data.freeze()),
                        rest: body,
                    }));
                }
            }
            Err(frame) => {
                if let Ok(found) = frame.into_trailers() {
                    trailers = Some(found);
                }
            }
        }
    }
    let data = data.freeze();
    Ok(Kept::Whole(KeptBody {
        data: (!data.is_empty()).then_some(data),
        trailers,
    }))
}

impl RequestBody {
    /// The client's body as it arrives.
    pub(crate) fn streaming(body: ClientBody) -> Self {
        RequestBody::Streaming {
            prefix: None,
            rest: body,
        }
    }

    /// A copy to send again, if the whole body is held.
    pub(crate) fn copy(&self) -> Option<RequestBody> {
        match self {
            RequestBody::Empty => Some(RequestBody::Empty),
            RequestBody::Kept(kept) => Some(RequestBody::Kept(kept.clone())),
            RequestBody::Streaming { .. } => None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Kept(kept) => Poll::Ready(
                kept.data
                    .take()
                    .map(Frame::data)
                    .or_else(|| kept.trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            RequestBody::Streaming { prefix, rest } => match prefix.take() {
                Some(prefix) => Poll::Ready(Some(Ok(Frame::data(prefix)))),
                None => Pin::new(rest).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Kept(kept) => kept.data.is_none() && kept.trailers.is_none(),
            RequestBody::Streaming { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Kept(kept) => {
                SizeHint::with_exact(kept.data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestBody::Streaming { prefix, rest } => {
                let before = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let after = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(before + after.lower());
                if let Some(upper) = after.upper() {
                    hint.set_upper(before + upper);
                }
                hint
            }
        }
    }
}

/// A connection to park again once the response on it has ended: which instance, and which
/// serving thread's pool.
#[derive(Debug)]
pub(crate) struct Reuse {
    pub(crate) sender: Sender,
    pub(crate) backend: Arc<Backend>,
    pub(crate) worker: usize,
}

/// Body sent to the client.
#[derive(Debug)]
pub struct ProxyBody {
    inner: Inner,
    /// Keeps the client connection counted as busy until the body is sent or dropped.
    _busy: Option<crate::idle::Busy>,
}

#[derive(Debug)]
enum Inner {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
}

#[derive(Debug)]
struct UpstreamBody {
    body: Incoming,
    finished: bool,
    reuse: Option<Reuse>,
    _in_flight: InFlight,
}

impl ProxyBody {
    /// A complete body the front door answers itself.
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        ProxyBody {
            inner: Inner::Full((!bytes.is_empty()).then_some(bytes)),
            _busy: None,
        }
    }

    /// An instance's body; `reuse` is the connection to pool again once the body has ended.
    pub(crate) fn upstream(body: Incoming, in_flight: InFlight, reuse: Option<Reuse>) -> Self {
        ProxyBody {
            inner: Inner::Upstream(UpstreamBody {
                body,
                finished: false,
                reuse,
                _in_flight: in_flight,
            }),
            _busy: None,
        }
    }

    /// The same body, keeping its client connection busy until it is dropped.
    pub(crate) fn held_by(mut self, busy: crate::idle::Busy) -> Self {
        self._busy = Some(busy);
        self
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().inner {
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream(upstream) => {
                let polled = Pin::new(&mut upstream.body).poll_frame(cx);
                if let Poll::Ready(None) = polled {
                    upstream.finished = true;
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(bytes) => bytes.is_none(),
            Inner::Upstream(upstream) => upstream.finished || upstream.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
            Inner::Upstream(upstream) => upstream.body.size_hint(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A connection whose response was not read to the end cannot carry another request;
        // dropping its sender closes it.
        if (self.finished || self.body.is_end_stream())
            && let Some(reuse) = self.reuse.take()
        {
            reuse.backend.return_connection(reuse.worker, reuse.sender);
        }
    }
}
