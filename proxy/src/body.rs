//! The response body the client gets: the upstream's body streamed through, or a short local
//! body for errors the proxy answers itself.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::config::Color;
use crate::metrics::ErrorKind;
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
}

impl ResponseBody {
    /// Streams `body` from `color`'s upstream.
    pub fn upstream(body: Incoming, lease: Lease, runtime: Arc<Runtime>, color: Color) -> Self {
        ResponseBody::Upstream(Streamed {
            body,
            lease: Some(lease),
            runtime,
            color,
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
                if let Poll::Ready(Some(Err(_))) = &polled {
                    // The client sees the error as a broken stream, never a clean end.
                    s.runtime.metrics.color(s.color).error(ErrorKind::Reset);
                    s.lease = None;
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
        // Only a connection whose response was read to the end can carry another request.
        if let Some(lease) = self.lease.take()
            && self.body.is_end_stream()
        {
            lease.release();
        }
    }
}
