//! The client's request body on its way upstream: streamed, never buffered whole, but cut off
//! when it grows past `limit.request-body` or stalls for `timeout.client-body`. Such a cut is
//! the client's fault and is never counted against an upstream. The body of a request that
//! expects `100-continue` is held back until the upstream asks for it.
//!
//! A body also keeps a [`ClientWait`]: how long it has waited for the client so far, so that
//! `timeout.request` (the upstream's time) does not run while the client is still uploading.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::config::ClientPolicy;

/// How a client's request body went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientFault {
    /// More bytes than `limit.request-body` (413).
    #[error("request body larger than the limit")]
    TooLarge,
    /// No body data for `timeout.client-body` (408).
    #[error("request body stalled")]
    Idle,
    /// Broken framing, such as a bad chunk size, or the client went away (400).
    #[error("malformed or aborted request body")]
    Malformed,
}

impl ClientFault {
    /// The status and short text the client is answered with.
    pub fn answer(self) -> (http::StatusCode, &'static str) {
        use http::StatusCode;
        match self {
            ClientFault::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
            ClientFault::Idle => (
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time\n",
            ),
            ClientFault::Malformed => (StatusCode::BAD_REQUEST, "malformed request body\n"),
        }
    }
}

/// A request body with the client policy applied.
pub struct RequestBody {
    /// The client's body; `None` for a bodiless request rebuilt to be sent again.
    inner: Option<Incoming>,
    /// A frame already read (to validate framing before any byte goes upstream); boxed, as
    /// only requests with a body have one and the body is moved several times.
    first: Option<Box<Frame<Bytes>>>,
    /// Bytes still allowed, if there is a limit.
    remaining: Option<u64>,
    timeout: Duration,
    /// Armed the first time the body has nothing to give; boxed only for bodies that wait.
    idle: Option<Pin<Box<Sleep>>>,
    /// Set while the body waits for the upstream's `100 Continue`.
    expect: Option<Arc<Continue>>,
    /// Time spent waiting for the client, shared with the exchange's `timeout.request`; only
    /// for bodies that have something to send.
    wait: Option<Arc<ClientWait>>,
}

/// How long a request body has waited for the client: the part of an exchange's time that is
/// not the upstream's.
#[derive(Debug, Default)]
pub struct ClientWait {
    /// When the current wait began (ms on the exchange clock, plus 1), or 0 when not waiting.
    since: AtomicU64,
    /// Milliseconds of waits that have ended.
    waited: AtomicU64,
}

impl ClientWait {
    /// The time waited for the client so far, the current wait included.
    pub fn waited(&self) -> Duration {
        let since = self.since.load(Relaxed);
        let current = if since == 0 {
            0
        } else {
            now_ms().saturating_sub(since - 1)
        };
        Duration::from_millis(self.waited.load(Relaxed) + current)
    }

    fn begin(&self) {
        if self.since.load(Relaxed) == 0 {
            self.since.store(now_ms() + 1, Relaxed);
        }
    }

    fn end(&self) {
        let since = self.since.swap(0, Relaxed);
        if since != 0 {
            self.waited
                .fetch_add(now_ms().saturating_sub(since - 1), Relaxed);
        }
    }
}

/// Milliseconds on a process-wide monotonic clock.
fn now_ms() -> u64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    ORIGIN
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// How long a body waits for an upstream's `100 Continue` before it is sent anyway, as
/// RFC 9110 §10.1.1 lets a client do with a server that ignores the expectation (curl waits
/// as long).
const CONTINUE_WAIT: Duration = Duration::from_secs(1);

const WAITING: u8 = 0;
const GO: u8 = 1;
const REFUSED: u8 = 2;

/// Whether an `Expect: 100-continue` request's body may go: the upstream's 100 lets it go;
/// a final response before it refuses it for good.
#[derive(Debug, Default)]
pub struct Continue {
    state: AtomicU8,
    /// The body task waiting for the 100 (only requests that expect one ever lock it).
    waker: Mutex<Option<Waker>>,
}

impl Continue {
    /// The upstream asked for the body.
    pub fn go(&self) {
        if self
            .state
            .compare_exchange(WAITING, GO, Relaxed, Relaxed)
            .is_ok()
            && let Some(waker) = self.waker.lock().expect("not poisoned").take()
        {
            waker.wake();
        }
    }

    /// The upstream answered without asking for the body; `true` if the body was never
    /// sent, so its connection is left mid-request and must not carry another.
    pub fn refuse(&self) -> bool {
        self.state
            .compare_exchange(WAITING, REFUSED, Relaxed, Relaxed)
            .is_ok()
    }
}

impl RequestBody {
    /// Wraps `inner` with `policy`'s limit and idle timeout.
    pub fn new(inner: Incoming, policy: &ClientPolicy) -> RequestBody {
        let wait = (!inner.is_end_stream()).then(Arc::default);
        RequestBody {
            inner: Some(inner),
            first: None,
            remaining: policy.max_body,
            timeout: policy.body_timeout,
            idle: None,
            expect: None,
            wait,
        }
    }

    /// The body's waits for the client, if it has anything to send.
    pub fn client_wait(&self) -> Option<Arc<ClientWait>> {
        self.wait.clone()
    }

    /// No body: for a bodiless request sent again on another connection.
    pub fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            first: None,
            remaining: None,
            timeout: Duration::ZERO,
            idle: None,
            expect: None,
            wait: None,
        }
    }

    /// Holds the body back (and so the client's `100 Continue`, which hyper sends when the
    /// body is first read) until the upstream asks for it through [`RequestBody::expectation`].
    pub fn hold_until_continue(&mut self) {
        self.expect = Some(Arc::default());
    }

    /// The expectation the body waits on, if it does.
    pub fn expectation(&self) -> Option<&Arc<Continue>> {
        self.expect.as_ref()
    }

    /// `Ready` once the body may be read; an upstream that stays silent past
    /// [`CONTINUE_WAIT`] gets it anyway, one that refused it never does.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(expect) = &self.expect else {
            return Poll::Ready(());
        };
        if expect.state.load(Relaxed) == WAITING {
            *expect.waker.lock().expect("not poisoned") = Some(cx.waker().clone());
            // Looked at again: a 100 that came while the waker was being stored woke no one.
            if expect.state.load(Relaxed) == WAITING {
                let wait = self
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(CONTINUE_WAIT)));
                ready!(wait.as_mut().poll(cx));
                expect.go();
            }
            self.idle = None;
        }
        if expect.state.load(Relaxed) == REFUSED {
            return Poll::Pending;
        }
        self.expect = None;
        Poll::Ready(())
    }

    /// Reads the first frame now, so that broken framing or a stalled client is answered
    /// before the request is sent anywhere. A body with no frames is left as it is.
    pub async fn read_first(&mut self) -> Result<(), ClientFault> {
        if self.is_end_stream() {
            return Ok(());
        }
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *self).poll_frame(cx)).await;
        match frame {
            Some(Ok(frame)) => {
                self.first = Some(Box::new(frame));
                Ok(())
            }
            Some(Err(fault)) => Err(fault),
            None => Ok(()),
        }
    }

    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<ClientFault> {
        let timeout = self.timeout;
        let idle = self
            .idle
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(idle.as_mut().poll(cx));
        Poll::Ready(ClientFault::Idle)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientFault;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientFault>>> {
        if let Some(frame) = self.first.take() {
            return Poll::Ready(Some(Ok(*frame)));
        }
        ready!(self.poll_continue(cx));
        let Some(inner) = &mut self.inner else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Some(wait) = &self.wait {
            match polled {
                Poll::Pending => wait.begin(),
                Poll::Ready(_) => wait.end(),
            }
        }
        let frame = match polled {
            Poll::Pending => return self.stalled(cx).map(|fault| Some(Err(fault))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Err(_))) => return Poll::Ready(Some(Err(ClientFault::Malformed))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        let timeout = self.timeout;
        if let Some(idle) = &mut self.idle {
            idle.as_mut().reset(Instant::now() + timeout);
        }
        if let (Some(remaining), Some(data)) = (&mut self.remaining, frame.data_ref()) {
            match remaining.checked_sub(data.len() as u64) {
                Some(left) => *remaining = left,
                None => return Poll::Ready(Some(Err(ClientFault::TooLarge))),
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let first = self
            .first
            .as_deref()
            .and_then(Frame::data_ref)
            .map_or(0, |d| d.len() as u64);
        let inner = self
            .inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint);
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + first);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + first);
        }
        hint
    }
}
