//! The response body the client gets: the upstream's body streamed through, or a short local
//! body for errors the proxy answers itself.
//!
//! An upstream exchange is accounted when its body ends, so a long stream (gRPC server
//! streaming, SSE) counts in the moment it finishes and a body the upstream breaks off (a reset,
//! a short body, bad chunking, or silence for `timeout.response-idle`) counts as a failure of its
//! color. A client that leaves early costs the upstream nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::accounting::Outcome;
use crate::lean::relay::{RelayError, Relayed};
use crate::metrics::ErrorKind;
use crate::route::Choice;
use crate::runtime::Current;
use crate::upstream::Lease;
use crate::upstream::endpoints::Served;

/// A response body.
pub enum ResponseBody {
    /// Streamed from an upstream.
    Upstream(Streamed),
    /// Answered by the proxy; `None` once sent.
    Local(Option<Bytes>),
}

/// Why a streamed response body ended early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The upstream broke the body off.
    #[error("the upstream broke the response body: {0}")]
    Upstream(#[from] hyper::Error),
    /// The upstream broke off a body read on the lean path's connection.
    #[error(transparent)]
    Relayed(#[from] RelayError),
    /// The upstream sent nothing for `timeout.response-idle`.
    #[error("the upstream sent no response body data for {0:?}")]
    Idle(Duration),
}

/// Where an upstream body is read from.
pub enum Source {
    /// hyper's client.
    Hyper(Incoming),
    /// The lean path's connection (see [`crate::lean::relay`]); boxed, as it is larger than
    /// hyper's handle.
    Relayed(Box<Relayed>),
}

impl Source {
    fn is_end_stream(&self) -> bool {
        match self {
            Source::Hyper(body) => body.is_end_stream(),
            Source::Relayed(body) => body.ended(),
        }
    }
}

/// An upstream body, with the connection it came on and the exchange still to account.
pub struct Streamed {
    body: Source,
    /// Returned to the pool when the body has been read to its end (a relayed body returns
    /// its own).
    lease: Option<Lease>,
    /// The exchange to account when the body ends; `None` once accounted.
    pending: Option<Pending>,
    /// Armed the first time the upstream has nothing to give; boxed only for bodies that wait.
    idle: Option<Pin<Box<Sleep>>>,
}

/// What accounting an exchange at its end needs.
pub struct Pending {
    /// The runtime and the routing table of the request.
    pub current: Arc<Current>,
    /// Where the request went, and whether it is evidence.
    pub choice: Choice,
    /// The response's status.
    pub status: u16,
    /// Time to the response headers.
    pub latency: Duration,
    /// How the exchange's success is judged.
    pub judged: Judged,
    /// The endpoint that answered, counting the exchange in flight until it is accounted.
    pub served: Served,
}

/// How an exchange's success is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judged {
    /// By its HTTP status.
    Status,
    /// By the `grpc-status` of its trailers, still to come.
    GrpcTrailers,
    /// By a `grpc-status` already read from its headers (a trailers-only response).
    Grpc(u32),
}

impl Streamed {
    fn settle(&mut self, end: End) {
        if let Some(p) = self.pending.take() {
            let outcome = end.outcome(p.status, p.judged);
            let Current { runtime, table } = &*p.current;
            runtime.account(table, p.choice, Some(&p.served), outcome, p.latency);
        }
    }

    /// The body's next frame from wherever it is read.
    fn poll_source(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.body {
            Source::Hyper(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(BodyError::from))),
            Source::Relayed(body) => {
                let upstream = self.pending.as_ref().map(|p| &p.served.endpoint().upstream);
                body.poll_frame(cx, upstream)
                    .map(|frame| frame.map(|f| f.map_err(BodyError::from)))
            }
        }
    }

    /// The response-idle timer: `Ready` once the upstream has been silent for too long.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<Duration> {
        let Some(timeout) = self
            .pending
            .as_ref()
            .map(|p| p.current.table.config.timeouts.response_idle)
        else {
            return Poll::Pending;
        };
        let idle = self
            .idle
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        idle.as_mut().poll(cx).map(|()| timeout)
    }

    fn progressed(&mut self) {
        if let (Some(idle), Some(p)) = (&mut self.idle, &self.pending) {
            idle.as_mut()
                .reset(Instant::now() + p.current.table.config.timeouts.response_idle);
        }
    }
}

/// How a response body ended, for its accounting (on either HTTP/1.1 path).
#[derive(Clone, Copy, Debug)]
pub enum End {
    /// Read to its end.
    Clean,
    /// Ended with trailers carrying this `grpc-status`.
    Trailers(u32),
    /// Broken off by the upstream.
    Cut(ErrorKind),
    /// Left by the client before its end.
    Abandoned,
}

impl End {
    /// The outcome of an exchange whose `status` response, judged by `judged`, ended so.
    pub fn outcome(self, status: u16, judged: Judged) -> Outcome {
        match (self, judged) {
            (End::Cut(kind), _) => Outcome::Cut(status, kind),
            (End::Trailers(code), Judged::GrpcTrailers) => Outcome::Grpc(code),
            // A gRPC stream must end with a status; ending without one is a fault.
            (End::Clean, Judged::GrpcTrailers) => Outcome::Cut(status, ErrorKind::Reset),
            (_, Judged::Grpc(code)) => Outcome::Grpc(code),
            _ => Outcome::Response(status),
        }
    }
}

impl ResponseBody {
    /// Streams `body` from an upstream; `pending` is the exchange to account at its end.
    pub fn upstream(body: Source, lease: Option<Lease>, pending: Pending) -> Self {
        let mut streamed = Streamed {
            body,
            lease,
            pending: Some(pending),
            idle: None,
        };
        // Nothing to read (HEAD, 204, 304, an empty body): over already.
        if streamed.body.is_end_stream() {
            streamed.settle(End::Clean);
        }
        ResponseBody::Upstream(streamed)
    }

    /// A body the proxy wrote.
    pub fn local(text: impl Into<Bytes>) -> Self {
        ResponseBody::Local(Some(text.into()))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ResponseBody::Local(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
            ResponseBody::Upstream(s) => match s.poll_source(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    s.progressed();
                    if let Some(trailers) = frame.trailers_ref() {
                        s.settle(End::Trailers(crate::proxy::grpc_status(trailers)));
                    } else if s.body.is_end_stream() {
                        // The last piece: accounted before the client can have it, so whoever
                        // got the response also sees it counted.
                        s.settle(End::Clean);
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(None) => {
                    s.settle(End::Clean);
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(e))) => {
                    // The client sees the error as a broken stream, never a clean end.
                    s.lease = None;
                    s.settle(End::Cut(ErrorKind::Reset));
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Pending => match s.stalled(cx) {
                    Poll::Ready(after) => {
                        s.lease = None;
                        s.settle(End::Cut(ErrorKind::Timeout));
                        Poll::Ready(Some(Err(BodyError::Idle(after))))
                    }
                    Poll::Pending => Poll::Pending,
                },
            },
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
            ResponseBody::Upstream(s) => match &s.body {
                Source::Hyper(body) => body.size_hint(),
                Source::Relayed(_) => SizeHint::default(),
            },
        }
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        // A body with nothing to read (HEAD, 204, 304, an empty body) may never be polled.
        let end = if self.body.is_end_stream() {
            End::Clean
        } else {
            End::Abandoned
        };
        self.settle(end);
        // Only a connection whose response was read to the end can carry another request.
        if let Some(lease) = self.lease.take()
            && self.body.is_end_stream()
        {
            lease.release();
        }
    }
}
