//! Bodies that stream through the front door without being buffered.
//!
//! [`RequestBody`] goes to an instance: the client's body as it arrives, or nothing (which makes
//! the request replayable). [`ProxyBody`] goes to the client: an instance's body frame by frame,
//! or a small page the front door answers itself. An instance body also carries the request's
//! in-flight mark (so draining waits for the body to end) and its connection, which goes back to
//! the pool only when the body was read to the end.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::backend::{Backend, InFlight};
use crate::pool::Sender;

/// Body sent to an instance.
#[derive(Debug)]
pub(crate) enum RequestBody {
    /// No body: the request can be rebuilt and sent again.
    Empty,
    /// The client's body, streamed.
    Streaming(Incoming),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Streaming(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Streaming(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Streaming(body) => body.size_hint(),
        }
    }
}

/// Body sent to the client.
#[derive(Debug)]
pub struct ProxyBody {
    inner: Inner,
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
    reuse: Option<(Sender, Arc<Backend>)>,
    _in_flight: InFlight,
}

impl ProxyBody {
    /// A complete body the front door answers itself.
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        ProxyBody {
            inner: Inner::Full((!bytes.is_empty()).then_some(bytes)),
        }
    }

    /// An instance's body; `reuse` is the connection to pool again once the body has ended.
    pub(crate) fn upstream(
        body: Incoming,
        in_flight: InFlight,
        reuse: Option<(Sender, Arc<Backend>)>,
    ) -> Self {
        ProxyBody {
            inner: Inner::Upstream(UpstreamBody {
                body,
                finished: false,
                reuse,
                _in_flight: in_flight,
            }),
        }
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
            && let Some((sender, backend)) = self.reuse.take()
        {
            backend.return_connection(sender);
        }
    }
}
