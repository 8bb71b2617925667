//! The response body the client gets: the upstream's body streamed through, or a short local
//! body for errors the proxy answers itself.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::accounting::Outcome;
use crate::config::Color;
use crate::metrics::ErrorKind;
use crate::route::RouteTable;
use crate::runtime::Runtime;
use crate::upstream::Lease;

/// A response body.
pub enum ResponseBody {
    /// Streamed from an upstream.
    Upstream(Streamed),
    /// Answered by the proxy; `None` once sent.
    Local(Option<Bytes>),
}

/// An upstream body, with the connection it came on and the color to blame for a reset.
pub struct Streamed {
    body: Incoming,
    /// Returned to the pool when the body has been read to its end.
    lease: Option<Lease>,
    /// Counts a reset mid-body against `color`.
    runtime: Arc<Runtime>,
    color: Color,
    /// A gRPC response's accounting, done when its `grpc-status` trailer arrives.
    pending: Option<Pending>,
}

/// What deferred accounting needs: the table the request was routed by, and the latency to
/// the response headers.
pub struct Pending {
    /// The routing table of the request.
    pub table: Arc<RouteTable>,
    /// When the exchange began.
    pub started: Instant,
    /// Time to the response headers.
    pub latency: Duration,
}

impl Streamed {
    fn settle(&mut self, outcome: Outcome) {
        if let Some(p) = self.pending.take() {
            self.runtime
                .account(&p.table, self.color, outcome, p.started, p.latency);
        }
    }
}

impl ResponseBody {
    /// Streams `body` from `color`'s upstream; `pending` is a gRPC exchange still to account.
    pub fn upstream(
        body: Incoming,
        lease: Lease,
        runtime: Arc<Runtime>,
        color: Color,
        pending: Option<Pending>,
    ) -> Self {
        ResponseBody::Upstream(Streamed {
            body,
            lease: Some(lease),
            runtime,
            color,
            pending,
        })
    }

    /// A body the proxy wrote.
    pub fn local(text: impl Into<Bytes>) -> Self {
        ResponseBody::Local(Some(text.into()))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ResponseBody::Local(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
            ResponseBody::Upstream(s) => {
                let polled = Pin::new(&mut s.body).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(trailers) = frame.trailers_ref() {
                            s.settle(Outcome::Grpc(crate::proxy::grpc_status(trailers)));
                        }
                    }
                    // A gRPC stream must end with a status; ending without one is a fault.
                    Poll::Ready(None) => s.settle(Outcome::NoResponse(ErrorKind::Reset)),
                    Poll::Ready(Some(Err(_))) => {
                        // The client sees the error as a broken stream, never a clean end.
                        s.lease = None;
                        if s.pending.is_some() {
                            s.settle(Outcome::NoResponse(ErrorKind::Reset));
                        } else {
                            s.runtime.metrics.color(s.color).error(ErrorKind::Reset);
                        }
                    }
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Local(text) => text.is_none(),
            ResponseBody::Upstream(s) => s.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Local(Some(text)) => SizeHint::with_exact(text.len() as u64),
            ResponseBody::Local(None) => SizeHint::with_exact(0),
            ResponseBody::Upstream(s) => s.body.size_hint(),
        }
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        // The client went away before the status: not the upstream's fault.
        self.settle(Outcome::Response(200));
        // Only a connection whose response was read to the end can carry another request.
        if let Some(lease) = self.lease.take()
            && self.body.is_end_stream()
        {
            lease.release();
        }
    }
}
